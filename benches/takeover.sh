#!/usr/bin/env bash
# The takeover benchmark: how long a takeover takes with thousands of established
# connections through tpvs, and the longest pause any of them saw. See benches/README.md.
#
#   benches/takeover.sh [--connections N] [--rounds N] [--runs N] [--tpvs PATH] [--no-build]
#
#   --connections N    established connections, each pinging once a second (default 10000;
#                      the hard RLIMIT_NOFILE must leave tpvs's budget room for them)
#   --rounds N         takeovers in a row per run, over the same connections (default 3)
#   --runs N           runs, each in a fresh lab (default 3); medians over every takeover
#   --tpvs PATH        the tpvs binary to run (default: build it with cargo, release profile)
#   --no-build         use target/release/tpvs as it is
#   --tpvs-args ARGS   extra `tpvs run` flags, e.g. "--forward-mode copy --udp-proxy-port 0"
#                      (the whole descriptor budget to TCP connections, for a low hard limit)
#
# Needs root (it builds network namespaces). Every byte stays inside the lab's namespaces.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

CONNS=10000
ROUNDS=3
RUNS=3
TPVS_BIN=${TPVS_BIN:-}
BUILD=1
TPVS_ARGS=

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --connections) CONNS=${2:?}; shift ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --runs) RUNS=${2:?}; shift ;;
        --tpvs) TPVS_BIN=${2:?}; BUILD=0; shift ;;
        --no-build) BUILD=0 ;;
        --tpvs-args) TPVS_ARGS=${2?}; shift ;;
        -h | --help) usage ;;
        *) echo "benches/takeover.sh: unknown argument $1" >&2; usage ;;
    esac
    shift
done
for v in CONNS ROUNDS RUNS; do
    [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || { echo "benches/takeover.sh: $v must be a positive number" >&2; exit 2; }
done
if [ "$(id -u)" -ne 0 ]; then
    echo "benches/takeover.sh: the lab needs root (network namespaces, nftables)" >&2
    exit 1
fi

if [ -z "$TPVS_BIN" ]; then
    TPVS_BIN=$ROOT/target/release/tpvs
    if [ "$BUILD" = 1 ]; then
        cargo build --release -p tpvs
    fi
fi
[ -x "$TPVS_BIN" ] || { echo "benches/takeover.sh: no tpvs binary at $TPVS_BIN" >&2; exit 1; }

# The benchmark's clients and backend run in a release build too (their own delays are part
# of every round trip measured). The soft limit up to the hard one: both ends of every
# connection live in the benchmark's process, and tpvs inherits the limit.
ulimit -n "$(ulimit -Hn)"
echo "tpvs: $("$TPVS_BIN" --version 2>/dev/null || echo "$TPVS_BIN"); connections: $CONNS; runs: $RUNS x $ROUNDS takeovers; RLIMIT_NOFILE $(ulimit -n); flags: ${TPVS_ARGS:-(defaults)}"

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for run in $(seq 1 "$RUNS"); do
    echo "==> run $run"
    TPVS_BIN=$TPVS_BIN TPVS_BENCH_CONNECTIONS=$CONNS TPVS_BENCH_ROUNDS=$ROUNDS TPVS_BENCH_TPVS_ARGS=$TPVS_ARGS \
        cargo test --release --quiet -p tpvs --test bench_takeover -- --ignored --nocapture --test-threads 1 2>&1 |
        tee /dev/stderr | grep '^RESULT' >>"$results" || { echo "benches/takeover.sh: run $run failed" >&2; exit 1; }
done

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { grep "round=" "$results" | sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
echo
echo "| connections | takeovers | takeover time, median (min–max) ms | longest pause, median (min–max) ms | longest round trip without a takeover, median ms |"
echo "|---:|---:|---|---|---:|"
printf '| %s | %s | %s (%s–%s) | %s (%s–%s) | %s |\n' "$CONNS" "$(field takeover_ms | wc -l)" \
    "$(field takeover_ms | median)" "$(field takeover_ms | sort -n | head -1)" "$(field takeover_ms | sort -n | tail -1)" \
    "$(field longest_pause_ms | median)" "$(field longest_pause_ms | sort -n | head -1)" "$(field longest_pause_ms | sort -n | tail -1)" \
    "$(sed -n 's/.*quiet_longest_round_trip_ms=\([0-9.]*\).*/\1/p' "$results" | median)"
