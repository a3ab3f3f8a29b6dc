#!/usr/bin/env bash
# Per-connection cost of tpvs: syscalls and CPU per proxied connection, for comparing data-path
# levers one at a time. Counts are robust to a busy machine; CPU per connection less so (three
# runs, the median is shown).
#
#   benches/per-connection.sh [--tpvs PATH] [--seconds S] [--tpvs-args ARGS] [--keepalive]
#
#   --tpvs PATH        the binary (default target/release/tpvs, built if missing)
#   --seconds S        length of each load run (default 3)
#   --tpvs-args ARGS   extra flags for `tpvs run`
#   --keepalive        per request over keep-alive connections instead of one connection each
#
# Load: wrk from the lab's client, 2 threads, 16 connections, `Connection: close` (one proxied
# connection per request). Syscalls: `strace -c -f` attached to tpvs during one run, divided by
# the connections (or requests) it served in that run. CPU: utime+stime of tpvs over a run
# without strace, per connection, and its user/system split (system time includes the softirq
# work a veth does in the sender's context: the receiving side's TCP processing of the packets
# tpvs sends). Needs root; traffic stays in the lab's namespaces.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TPVS_BIN=$ROOT/target/release/tpvs
SECS=3
TPVS_ARGS=
KEEPALIVE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --tpvs) TPVS_BIN=${2:?}; shift ;;
        --seconds) SECS=${2:?}; shift ;;
        --tpvs-args) TPVS_ARGS=${2?}; shift ;;
        --keepalive) KEEPALIVE=1 ;;
        -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
        *) echo "benches/per-connection.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "benches/per-connection.sh: needs root" >&2; exit 1; }
[ -x "$TPVS_BIN" ] || cargo build --release -q -p tpvs

P=pc$$
WORK=$(mktemp -d /tmp/tpvs-percon.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    "$ROOT/scripts/lab" down "$P" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
node() { ip netns exec "$P-node" "$@"; }
client() { ip netns exec "$P-client" "$@"; }

"$ROOT/scripts/lab" up "$P" >/dev/null
cat >"$WORK/svc.yaml" <<YAML
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: bench}
  spec: {type: ClusterIP, clusterIP: 10.96.1.10, clusterIPs: [10.96.1.10], ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-1, namespace: bench, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: [10.1.1.2], conditions: {ready: true}, nodeName: node-a}
  - {addresses: [10.1.2.2], conditions: {ready: true}, nodeName: node-a}
YAML
# shellcheck disable=SC2086
ip netns exec "$P-node" "$TPVS_BIN" run --manifests "$WORK/svc.yaml" --hostname-override node-a \
    --nodeport-addresses 10.0.0.1/32 $TPVS_ARGS </dev/null >"$WORK/tpvs.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
    client curl -s --max-time 1 http://10.96.1.10/ 2>/dev/null | grep -q '^be' && break
    sleep 0.1
done
client curl -s --max-time 1 http://10.96.1.10/ | grep -q '^be' || { cat "$WORK/tpvs.log" >&2; exit 1; }

metric() { node curl -s --max-time 2 http://127.0.0.1:10249/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
ticks() { awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$PID/stat"; } # utime stime
HDR=(-H 'Connection: close')
[ "$KEEPALIVE" -eq 1 ] && HDR=()
run_load() { # prints the requests wrk completed
    client wrk -t 2 -c 16 -d "${SECS}s" "${HDR[@]}" http://10.96.1.10/ | awk '/requests in/ { print $1 }'
}
unit=connection
[ "$KEEPALIVE" -eq 1 ] && unit=request

# Warm-up (pipes pooled, tables built), then CPU per connection, three times.
run_load >/dev/null
cpu=()
split=()
for _ in 1 2 3; do
    t0=$(ticks)
    n=$(run_load)
    t1=$(ticks)
    cpu+=("$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.1f", (y[1] + y[2] - x[1] - x[2]) / hz * 1e6 / n }')")
    split+=("$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.1f/%.1f", (y[1] - x[1]) / hz * 1e6 / n, (y[2] - x[2]) / hz * 1e6 / n }')")
done
cpu_med=$(printf '%s\n' "${cpu[@]}" | sort -g | sed -n 2p)

# Syscalls per connection, over one run under strace (slower; the counts are what matters).
a0=$(metric tpvs_connections_accepted_total)
strace -c -f -q -p "$PID" -o "$WORK/strace.txt" &
SPID=$!
sleep 0.5
n=$(run_load)
kill -INT "$SPID"
wait "$SPID" 2>/dev/null || true
a1=$(metric tpvs_connections_accepted_total)
per=$n
[ "$KEEPALIVE" -eq 0 ] && per=$(awk -v a="$a0" -v b="$a1" 'BEGIN { print b - a }')

echo "tpvs run ${TPVS_ARGS:-(defaults)}: CPU per $unit ${cpu_med} µs (runs: ${cpu[*]}; user/system: ${split[*]}); under strace: $per ${unit}s"
awk -v n="$per" -v unit="$unit" '
    /^-/ { next }
    $NF == "total" { printf "%-22s %8.2f\n", "syscalls per " unit, $(NF - 2) / n; next }
    NF >= 5 && $1 ~ /^[0-9.]+$/ { calls = $4; name = $NF; errs = (NF == 6 ? $5 : 0)
        printf "  %-20s %8.2f%s\n", name, calls / n, (errs > 0 ? sprintf("  (%.2f failed)", errs / n) : "") }' "$WORK/strace.txt"
