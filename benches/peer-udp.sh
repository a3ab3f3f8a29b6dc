#!/usr/bin/env bash
# The UDP peer benchmark: DNS queries/s and UDP echo datagrams/s through tpvs, kube-proxy-style
# nftables DNAT and a direct path, in one run, in one namespace lab (scripts/lab). The UDP
# companion of benches/peer.sh; HAProxy is listed but has no UDP in its community edition.
#
#   benches/peer-udp.sh [--quick] [--duration SECS] [--reps N] [--sockets N] [--window W]
#                       [--dns-clients N] [--dns-outstanding N] [--peers LIST]
#                       [--tpvs PATH] [--no-build] [--out FILE]
#
#   --quick              2 s per measurement, 3 repetitions (the default is 5 s, 3 repetitions)
#   --duration SECS      length of each measurement
#   --reps N             repetitions of every measurement (at least 3; medians are reported)
#   --sockets N          echo load: client sockets, one thread each (default 4)
#   --window W           echo load: datagrams in flight per socket (default 32)
#   --dns-clients N      dnsperf: client sockets (default 4)
#   --dns-outstanding N  dnsperf: queries in flight at most (default 200)
#   --peers LIST         comma-separated subset of direct,dnat,tpvs (default: all)
#   --tpvs PATH          the tpvs binary to run (default: build it with cargo, release profile)
#   --no-build           use target/release/tpvs and target/release/examples/udpload as they are
#   --out FILE           results file (default benches/results-udp-<date>.md)
#
# Needs root (it builds network namespaces). Every datagram stays inside the lab's namespaces;
# every load is bounded in time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DURATION=5
REPS=3
SOCKETS=4
WINDOW=32
DNS_CLIENTS=4
DNS_OUTSTANDING=200
PEERS=direct,dnat,tpvs
TPVS_BIN=${TPVS_BIN:-}
UDPLOAD_BIN=
BUILD=1
OUT=

usage() {
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DURATION=2; REPS=3 ;;
        --duration) DURATION=${2:?}; shift ;;
        --reps) REPS=${2:?}; shift ;;
        --sockets) SOCKETS=${2:?}; shift ;;
        --window) WINDOW=${2:?}; shift ;;
        --dns-clients) DNS_CLIENTS=${2:?}; shift ;;
        --dns-outstanding) DNS_OUTSTANDING=${2:?}; shift ;;
        --peers) PEERS=${2:?}; shift ;;
        --tpvs) TPVS_BIN=${2:?}; shift ;;
        --no-build) BUILD=0 ;;
        --out) OUT=${2:?}; shift ;;
        -h | --help) usage ;;
        *) echo "benches/peer-udp.sh: unknown argument $1" >&2; usage ;;
    esac
    shift
done
for v in DURATION REPS SOCKETS WINDOW DNS_CLIENTS DNS_OUTSTANDING; do
    [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -ge 1 ] || { echo "benches/peer-udp.sh: $v must be a positive number" >&2; exit 2; }
done
[ "$REPS" -ge 3 ] || { echo "--reps: at least 3" >&2; exit 2; }
[ "$DURATION" -le 600 ] || { echo "--duration: at most 600" >&2; exit 2; }
[ "$SOCKETS" -ge 2 ] || { echo "--sockets: at least 2 (direct splits them over two backends)" >&2; exit 2; }
[ "$DNS_CLIENTS" -ge 2 ] || { echo "--dns-clients: at least 2 (direct splits them over two backends)" >&2; exit 2; }
IFS=, read -r -a PEER_LIST <<<"$PEERS"
for p in "${PEER_LIST[@]}"; do
    case "$p" in direct | dnat | tpvs) ;; *) echo "--peers: unknown peer $p (haproxy has no UDP)" >&2; exit 2 ;; esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "benches/peer-udp.sh: the lab needs root (network namespaces, nftables)" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# Lab layout (scripts/lab) and the benchmark's Services
# ---------------------------------------------------------------------------------------------
P=pu$$
NS_CLIENT=$P-client
NS_NODE=$P-node
WORK=$(mktemp -d /tmp/tpvs-peer-udp.XXXXXX)
VIP_DNS=10.96.2.53      # :53 -> be1:53, be2:53 (dnsmasq)
VIP_ECHO=10.96.2.7      # :7  -> be1:7,  be2:7  (udpload echo)
BE1=10.1.1.2
BE2=10.1.2.2
DNS_NAME=bench.tpvs.test
NCPU=$(nproc)

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf 'benches/peer-udp.sh: %s\n' "$*" >&2; exit 1; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
client() { nsx "$NS_CLIENT" "$@"; }
node() { nsx "$NS_NODE" "$@"; }

CURRENT_PEER=
PEER_PID=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$CURRENT_PEER" ]; then
        "peer_down_$CURRENT_PEER" >/dev/null 2>&1 || true
    fi
    # Stops everything running in the lab's namespaces (dnsmasq and the echo servers too).
    "$ROOT/scripts/lab" down "$P" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "benches/peer-udp.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR

# The UDP backends, beside the lab's nginx: dnsmasq answering one name with the backend's own
# address, and the echo server.
backends_up() {
    local name ip
    printf '%s A\n' "$DNS_NAME" >"$WORK/queries.txt"
    for spec in "be1 $BE1" "be2 $BE2"; do
        read -r name ip <<<"$spec"
        cat >"$WORK/dnsmasq-$name.conf" <<EOF
port=53
listen-address=$ip
bind-interfaces
no-resolv
no-hosts
no-poll
pid-file=
log-facility=-
address=/$DNS_NAME/$ip
EOF
        ip netns exec "$P-$name" dnsmasq --keep-in-foreground --user=root --conf-file="$WORK/dnsmasq-$name.conf" \
            </dev/null >"$WORK/dnsmasq-$name.log" 2>&1 &
        ip netns exec "$P-$name" "$UDPLOAD_BIN" echo "$ip:7" --threads 1 </dev/null >"$WORK/echo-$name.log" 2>&1 &
    done
    local i
    for ip in "$BE1" "$BE2"; do
        for ((i = 0; i < 50; i++)); do
            [ "$(nsx "$P-$( [ "$ip" = "$BE1" ] && echo be1 || echo be2)" dig "@$ip" "$DNS_NAME" A +short +time=1 +tries=1 2>/dev/null)" = "$ip" ] && break
            sleep 0.1
        done
        [ "$i" -lt 50 ] || die "dnsmasq on $ip did not answer"
    done
}

# probe_dns SERVER SECONDS: waits until SERVER answers the benchmark's name.
probe_dns() {
    local tries=$(($2 * 10)) i
    for ((i = 0; i < tries; i++)); do
        if client dig "@$1" "$DNS_NAME" A +short +time=1 +tries=1 2>/dev/null | grep -q '^10\.1\.'; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

assert_no_interception() {
    if client dig "@$VIP_DNS" "$DNS_NAME" A +short +time=1 +tries=1 2>/dev/null | grep -q '^10\.1\.'; then
        die "the VIP $VIP_DNS still answers after $1 was torn down"
    fi
}

# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------
peer_up_direct() { DNS_TARGETS="$BE1 $BE2"; ECHO_TARGETS="$BE1:7 $BE2:7"; }
peer_down_direct() { :; }

# dnat: kube-proxy's nftables mode reduced to the two UDP Services (see benches/peer.sh).
peer_up_dnat() {
    cat >"$WORK/dnat.nft" <<EOF
table ip tpvs-bench-dnat-udp {
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { $VIP_DNS . udp . 53 : goto svc-dns, $VIP_ECHO . udp . 7 : goto svc-echo }
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr . meta l4proto . th dport vmap @service-ips
	}
	chain svc-dns {
		numgen random mod 2 vmap { 0 : goto sep-dns-be1, 1 : goto sep-dns-be2 }
	}
	chain sep-dns-be1 {
		meta l4proto udp dnat to $BE1:53
	}
	chain sep-dns-be2 {
		meta l4proto udp dnat to $BE2:53
	}
	chain svc-echo {
		numgen random mod 2 vmap { 0 : goto sep-echo-be1, 1 : goto sep-echo-be2 }
	}
	chain sep-echo-be1 {
		meta l4proto udp dnat to $BE1:7
	}
	chain sep-echo-be2 {
		meta l4proto udp dnat to $BE2:7
	}
}
EOF
    node nft -f "$WORK/dnat.nft"
    node conntrack -F >/dev/null 2>&1 || true
    DNS_TARGETS=$VIP_DNS
    ECHO_TARGETS=$VIP_ECHO:7
    probe_dns "$VIP_DNS" 5
}
peer_down_dnat() {
    node nft delete table ip tpvs-bench-dnat-udp 2>/dev/null || true
    node conntrack -F >/dev/null 2>&1 || true
}

tpvs_manifests() {
    local svc vip port
    : >"$WORK/services.yaml"
    for spec in "dns $VIP_DNS 53" "echo $VIP_ECHO 7"; do
        read -r svc vip port <<<"$spec"
        cat >>"$WORK/services.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: $svc, namespace: bench}
spec:
  type: ClusterIP
  clusterIP: $vip
  clusterIPs: [$vip]
  ports: [{name: p, port: $port, protocol: UDP, targetPort: $port}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $svc-1
  namespace: bench
  labels: {kubernetes.io/service-name: $svc}
addressType: IPv4
ports: [{name: p, port: $port, protocol: UDP}]
endpoints:
- addresses: [$BE1]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
- addresses: [$BE2]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
---
EOF
    done
}

peer_up_tpvs() {
    # `ip netns exec` execs the program: $! is tpvs itself (for its CPU time and SIGTERM).
    ip netns exec "$NS_NODE" "$TPVS_BIN" run --manifests "$WORK/services.yaml" --hostname-override node-a \
        --nodeport-addresses 10.0.0.1/32 --workers "$NCPU" </dev/null >"$WORK/tpvs.log" 2>&1 &
    PEER_PID=$!
    DNS_TARGETS=$VIP_DNS
    ECHO_TARGETS=$VIP_ECHO:7
    probe_dns "$VIP_DNS" 15 || { tail -n 20 "$WORK/tpvs.log" >&2; return 1; }
}
peer_down_tpvs() {
    [ -n "$PEER_PID" ] || return 0
    kill -TERM "$PEER_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        kill -0 "$PEER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$PEER_PID" 2>/dev/null || true
    wait "$PEER_PID" 2>/dev/null || true
    PEER_PID=
}

# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
declare -A R=()
declare -A UNAVAILABLE=()
record() { R[$1:$2]="${R[$1:$2]:-} $3"; }

cpu_ticks() {
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# Runs one load per target at once (direct spreads the load over both backends, like the
# proxies do), splitting the sockets among them; prints the summed figures.
measure_dns() {
    local peer=$1 n i=0 pids=() t
    read -r -a targets <<<"$DNS_TARGETS"
    n=${#targets[@]}
    for t in "${targets[@]}"; do
        timeout $((DURATION + 30)) ip netns exec "$NS_CLIENT" dnsperf -s "$t" -p 53 -d "$WORK/queries.txt" \
            -l "$DURATION" -c $((DNS_CLIENTS / n)) -q $((DNS_OUTSTANDING / n)) -t 2 >"$WORK/dnsperf-$i.txt" 2>&1 &
        pids+=($!)
        i=$((i + 1))
    done
    for t in "${pids[@]}"; do wait "$t" || { cat "$WORK"/dnsperf-*.txt >&2; return 1; }; done
    local qps lost sent lat
    qps=$(cat "$WORK"/dnsperf-*.txt | awk '/Queries per second:/ { s += $4 } END { printf "%.0f", s }')
    sent=$(cat "$WORK"/dnsperf-*.txt | awk '/Queries sent:/ { s += $3 } END { print s + 0 }')
    lost=$(cat "$WORK"/dnsperf-*.txt | awk '/Queries lost:/ { s += $3 } END { print s + 0 }')
    lat=$(cat "$WORK"/dnsperf-*.txt | awk '/Average Latency/ { s += $4; n++ } END { printf "%.3f", (n ? s / n * 1000 : 0) }')
    rm -f "$WORK"/dnsperf-*.txt
    record "$peer" dns_qps "$qps"
    record "$peer" dns_lat "$lat"
    record "$peer" dns_lost "$(awk -v l="$lost" -v s="$sent" 'BEGIN { printf "%.3f", (s ? 100 * l / s : 0) }')"
    note "$(printf '%-8s DNS        %10s queries/s  avg latency %s ms  lost %s of %s' "$peer" "$qps" "$lat" "$lost" "$sent")"
}

measure_echo() {
    local peer=$1 n i=0 pids=() t t0 t1
    read -r -a targets <<<"$ECHO_TARGETS"
    n=${#targets[@]}
    t0=$(cpu_ticks "$PEER_PID")
    for t in "${targets[@]}"; do
        timeout $((DURATION + 30)) ip netns exec "$NS_CLIENT" "$UDPLOAD_BIN" load "$t" --sockets $((SOCKETS / n)) \
            --window "$WINDOW" --seconds "$DURATION" >"$WORK/echo-$i.txt" 2>&1 &
        pids+=($!)
        i=$((i + 1))
    done
    for t in "${pids[@]}"; do wait "$t" || { cat "$WORK"/echo-[0-9].txt >&2; return 1; }; done
    t1=$(cpu_ticks "$PEER_PID")
    local dps received lost p50 p99
    dps=$(cat "$WORK"/echo-[0-9].txt | awk '/^datagrams\/s/ { s += $2 } END { printf "%.0f", s }')
    received=$(cat "$WORK"/echo-[0-9].txt | awk '/^datagrams\/s/ { s += $6 } END { print s + 0 }')
    lost=$(cat "$WORK"/echo-[0-9].txt | awk '/^datagrams\/s/ { s += $8 } END { print s + 0 }')
    p50=$(cat "$WORK"/echo-[0-9].txt | awk '/^datagrams\/s/ { s += $10; n++ } END { printf "%.0f", (n ? s / n : 0) }')
    p99=$(cat "$WORK"/echo-[0-9].txt | awk '/^datagrams\/s/ { if ($12 > m) m = $12 } END { print m + 0 }')
    rm -f "$WORK"/echo-[0-9].txt
    record "$peer" echo_dps "$dps"
    record "$peer" echo_p50 "$p50"
    record "$peer" echo_p99 "$p99"
    record "$peer" echo_lost "$lost"
    if [ -n "$PEER_PID" ]; then
        # CPU the proxy spent per echoed datagram (both directions), in microseconds.
        local hz
        hz=$(getconf CLK_TCK)
        record "$peer" echo_cpu_us "$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$received" 'BEGIN { printf "%.2f", (n > 0 ? d / hz * 1e6 / n : 0) }')"
    fi
    note "$(printf '%-8s UDP echo   %10s datagrams/s  p50 %s µs  p99 %s µs  lost %s' "$peer" "$dps" "$p50" "$p99" "$lost")"
}

run_peer() {
    local peer=$1
    node conntrack -F >/dev/null 2>&1 || true
    CURRENT_PEER=$peer
    PEER_PID=
    if ! "peer_up_$peer"; then
        "peer_down_$peer" >/dev/null 2>&1 || true
        CURRENT_PEER=
        [ "$peer" = tpvs ] || die "$peer did not start"
        UNAVAILABLE[$peer]="did not start or did not forward"
        note "$peer: not available"
        return 0
    fi
    measure_dns "$peer" && measure_echo "$peer" || die "a measurement through $peer failed"
    "peer_down_$peer"
    CURRENT_PEER=
    [ "$peer" = direct ] || assert_no_interception "$peer"
}

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
median() {
    local vals=${R[$1:$2]:-}
    [ -n "${vals// /}" ] || return 0
    # shellcheck disable=SC2086
    printf '%s\n' $vals | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
med() { [ -n "${UNAVAILABLE[$1]:-}" ] && return 0; median "$1" "$2"; }
fmt() { [ -n "$1" ] || { echo "n/a"; return; }; awk -v v="$1" -v d="$2" 'BEGIN { printf "%.*f", d, v }'; }
cell() {
    if [ -n "${UNAVAILABLE[$1]:-}" ]; then echo "not available"; return; fi
    fmt "$(median "$1" "$2")" "$3"
}
ratio() {
    [ -n "$1" ] && [ -n "$2" ] || { echo "n/a"; return; }
    awk -v a="$1" -v b="$2" -v m="${3:-0}" 'BEGIN { if (b == 0) { print "n/a"; exit } r = a / b; printf "%.2f×%s", r, (m > 0 ? (r >= m ? " ✓" : " ✗") : "") }'
}
cpu_busy_percent() {
    local a b
    a=$(awk '/^cpu / { idle = $5 + $6; t = 0; for (i = 2; i <= NF; i++) t += $i; print idle, t }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { idle = $5 + $6; t = 0; for (i = 2; i <= NF; i++) t += $i; print idle, t }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); dt = y[2] - x[2]; if (dt <= 0) print 0; else printf "%.0f", 100 * (1 - (y[1] - x[1]) / dt) }'
}

report() {
    local machine rev
    machine="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $NCPU CPUs, Linux $(uname -r)"
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$ROOT" diff --quiet HEAD 2>/dev/null || rev="$rev+changes"
    local NO_UDP="no UDP in the community edition"
    cat <<EOF
# tpvs UDP peer benchmark

- date: $(date -u '+%Y-%m-%d %H:%M UTC')
- machine: $machine
- tpvs: ${TPVS_VERSION:-not available} (tree $rev), $NCPU workers
- peers: nftables ${NFT_VERSION} DNAT (\`numgen random\` map, conntrack), tpvs (\`tpvs run\`, TPROXY, one flow per client socket); HAProxy: $NO_UDP
- load: dnsperf ${DNSPERF_VERSION} ($DNS_CLIENTS sockets, at most $DNS_OUTSTANDING queries in flight) against dnsmasq ${DNSMASQ_VERSION} on be1 and be2; UDP echo: udpload ($SOCKETS sockets × $WINDOW datagrams in flight, 64-byte datagrams) against one echo thread per backend
- direct: the same load split over be1 and be2 themselves
- each measurement ${DURATION} s, ${REPS} repetitions, medians shown; everything shares the machine's $NCPU CPUs
- CPU busy before the run (work outside the benchmark): ${BUSY_BEFORE}%${NOISE_NOTE}

| metric | direct | nft DNAT | HAProxy | tpvs | tpvs/DNAT | target |
|---|---:|---:|---|---:|---:|---|
| DNS queries/s | $(cell direct dns_qps 0) | $(cell dnat dns_qps 0) | $NO_UDP | $(cell tpvs dns_qps 0) | $(ratio "$(med tpvs dns_qps)" "$(med dnat dns_qps)" 0.6) | ≥ 0.6× DNAT |
| DNS average latency (ms) | $(cell direct dns_lat 3) | $(cell dnat dns_lat 3) | – | $(cell tpvs dns_lat 3) | $(ratio "$(med tpvs dns_lat)" "$(med dnat dns_lat)") | |
| DNS queries lost (%) | $(cell direct dns_lost 3) | $(cell dnat dns_lost 3) | – | $(cell tpvs dns_lost 3) | | |
| UDP echo datagrams/s | $(cell direct echo_dps 0) | $(cell dnat echo_dps 0) | $NO_UDP | $(cell tpvs echo_dps 0) | $(ratio "$(med tpvs echo_dps)" "$(med dnat echo_dps)" 0.5) | ≥ 0.5× DNAT |
| UDP echo p50 round trip (µs) | $(cell direct echo_p50 0) | $(cell dnat echo_p50 0) | – | $(cell tpvs echo_p50 0) | | |
| UDP echo p99 round trip (µs) | $(cell direct echo_p99 0) | $(cell dnat echo_p99 0) | – | $(cell tpvs echo_p99 0) | | |
| tpvs CPU per echoed datagram (µs) | – | in kernel | – | $(cell tpvs echo_cpu_us 2) | | |
EOF
    local peer
    for peer in "${!UNAVAILABLE[@]}"; do
        printf '\n%s: not available (%s).\n' "$peer" "${UNAVAILABLE[$peer]}"
    done
    printf '\n<details><summary>every repetition</summary>\n\n```\n'
    local key
    for key in $(printf '%s\n' "${!R[@]}" | sort); do
        printf '%-20s %s\n' "$key" "${R[$key]# }"
    done
    printf '```\n</details>\n'
}

# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
"$ROOT/scripts/setup"

if [ -z "$TPVS_BIN" ]; then
    TPVS_BIN=$ROOT/target/release/tpvs
fi
UDPLOAD_BIN=$ROOT/target/release/examples/udpload
if [ "$BUILD" -eq 1 ]; then
    say "building tpvs and the UDP load tool (release)"
    cargo build --release -q -p tpvs --bin tpvs --example udpload || die "the build failed"
fi
[ -x "$UDPLOAD_BIN" ] || die "no load tool at $UDPLOAD_BIN (build it: cargo build --release -p tpvs --example udpload)"
TPVS_VERSION=
if [ -x "$TPVS_BIN" ] && "$TPVS_BIN" run --help 2>/dev/null | grep -q -- --udp-proxy-port; then
    TPVS_VERSION=$("$TPVS_BIN" --version 2>/dev/null | head -n 1)
else
    UNAVAILABLE[tpvs]="no tpvs with a UDP data path at $TPVS_BIN"
fi
NFT_VERSION=$(nft --version 2>/dev/null | awk '{ print $2 }')
DNSPERF_VERSION=$( (dnsperf -h 2>&1 || true) | awk '/^DNS Performance Testing Tool/ { print $NF; exit } /^Version/ { print $2; exit }')
DNSMASQ_VERSION=$(dnsmasq --version 2>/dev/null | awk 'NR == 1 { print $3 }')

say "measuring background CPU use"
BUSY_BEFORE=$(cpu_busy_percent)
NOISE_NOTE=
if [ "$BUSY_BEFORE" -ge 10 ]; then
    NOISE_NOTE=" — **the machine was busy with other work: these numbers are noisy**"
    note "the machine is ${BUSY_BEFORE}% busy with other work: numbers will be noisy"
fi

say "lab $P up"
"$ROOT/scripts/lab" up "$P" >/dev/null
backends_up
tpvs_manifests

for ((rep = 0; rep < REPS; rep++)); do
    say "repetition $((rep + 1))/$REPS (${DURATION} s per measurement)"
    n=${#PEER_LIST[@]}
    for ((i = 0; i < n; i++)); do
        peer=${PEER_LIST[$(((i + rep) % n))]}
        [ -n "${UNAVAILABLE[$peer]:-}" ] && continue
        run_peer "$peer"
    done
done

BUSY_AFTER=$(cpu_busy_percent)
if [ "$BUSY_AFTER" -ge 10 ] && [ -z "$NOISE_NOTE" ]; then
    NOISE_NOTE=" — **other work was running when the run ended (${BUSY_AFTER}% CPU): these numbers are noisy**"
fi

[ -n "$OUT" ] || OUT=$ROOT/benches/results-udp-$(date -u +%Y-%m-%d-%H%M).md
say "results"
report | tee "$OUT"
say "written to ${OUT#"$ROOT"/}"
exit 0
