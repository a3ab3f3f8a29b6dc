#!/usr/bin/env bash
# The peer benchmark: tpvs side by side with a direct connection, kube-proxy-style nftables DNAT
# and HAProxy, in one run, in one namespace lab (scripts/lab). See benches/README.md.
#
#   benches/peer.sh [--quick] [--duration SECS] [--reps N] [--connections N] [--threads N]
#                   [--policy cluster|local] [--peers LIST] [--tpvs PATH] [--no-build]
#                   [--out FILE] [--keep-going] [--tpvs-args ARGS] [--rps]
#                   [--open-rate R] [--open-connections N] [--loadtest PATH] [--only LIST]
#
#   --quick            2 s per measurement, 3 repetitions (the default is 5 s, 3 repetitions)
#   --duration SECS    length of each measurement
#   --reps N           repetitions of every measurement (at least 3; medians are reported)
#   --connections N    concurrent wrk connections (default 64)
#   --threads N        wrk threads (default: number of CPUs)
#   --policy P         cluster (default): the proxies connect from the node's address;
#                      local: they connect from the client's address (tpvs: traffic policy
#                      Local; HAProxy: `usesrc clientip`). DNAT always keeps the client address.
#   --peers LIST       comma-separated subset of direct,dnat,haproxy,tpvs (default: all)
#   --tpvs PATH        the tpvs binary to run (default: build it with cargo, release profile)
#   --no-build         use target/release/tpvs as it is
#   --out FILE         results file (default benches/results-<date>.md)
#   --keep-going       a peer that fails to start is reported "not available" (the default
#                      for tpvs; any other peer failing aborts the run without this flag)
#   --tpvs-args ARGS   extra flags for `tpvs run` (e.g. "--worker-steering cpu")
#   --rps              spread the node's receive processing over all CPUs by flow hash (RPS
#                      on its veths), as a multi-queue NIC's RSS does on a real node; without
#                      it a veth handles a packet on the sender's CPU
#   --open-rate R      the open-loop latency row's fixed rate, the same for every peer
#                      (default 20000 req/s: well under every peer's keep-alive knee)
#   --open-connections N  its keep-alive connections (default: --connections)
#   --loadtest PATH    the tpvs-loadtest binary for that row (default: build it, release)
#   --only LIST        comma-separated subset of keepalive,openloop,close,bulk to measure (default: all);
#                      the others show n/a (e.g. `--only bulk` for the bulk path alone)
#
# Needs root (it builds network namespaces). Every byte stays inside the lab's namespaces.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DURATION=5
REPS=3
CONNS=64
THREADS=$(nproc)
POLICY=cluster
PEERS=direct,dnat,haproxy,tpvs
TPVS_BIN=${TPVS_BIN:-}
BUILD=1
OUT=
KEEP_GOING=0
WARMUP=1
TPVS_ARGS=
RPS=0
OPEN_RATE=20000
OPEN_CONNS=
LOADTEST_BIN=

ONLY=keepalive,openloop,close,bulk

usage() {
    # The header comment, up to its first non-comment line.
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DURATION=2; REPS=3; WARMUP=1 ;;
        --duration) DURATION=${2:?}; shift ;;
        --reps) REPS=${2:?}; shift ;;
        --connections) CONNS=${2:?}; shift ;;
        --threads) THREADS=${2:?}; shift ;;
        --policy) POLICY=${2:?}; shift ;;
        --peers) PEERS=${2:?}; shift ;;
        --tpvs) TPVS_BIN=${2:?}; BUILD=0; shift ;;
        --no-build) BUILD=0 ;;
        --out) OUT=${2:?}; shift ;;
        --keep-going) KEEP_GOING=1 ;;
        --tpvs-args) TPVS_ARGS=${2?}; shift ;;
        --rps) RPS=1 ;;
        --open-rate) OPEN_RATE=${2:?}; shift ;;
        --open-connections) OPEN_CONNS=${2:?}; shift ;;
        --loadtest) LOADTEST_BIN=${2:?}; shift ;;
        --only) ONLY=${2:?}; shift ;;
        -h | --help) usage ;;
        *) echo "benches/peer.sh: unknown argument $1" >&2; usage ;;
    esac
    shift
done
[[ $DURATION =~ ^[0-9]+$ ]] && [ "$DURATION" -ge 1 ] || { echo "--duration: whole seconds >= 1" >&2; exit 2; }
[[ $REPS =~ ^[0-9]+$ ]] && [ "$REPS" -ge 3 ] || { echo "--reps: at least 3" >&2; exit 2; }
[[ $CONNS =~ ^[0-9]+$ ]] && [ "$CONNS" -ge 1 ] || { echo "--connections: a positive number" >&2; exit 2; }
[[ $THREADS =~ ^[0-9]+$ ]] && [ "$THREADS" -ge 1 ] && [ "$THREADS" -le "$CONNS" ] ||
    { echo "--threads: between 1 and --connections" >&2; exit 2; }
[[ $OPEN_RATE =~ ^[0-9]+$ ]] && [ "$OPEN_RATE" -ge 1 ] || { echo "--open-rate: requests per second >= 1" >&2; exit 2; }
OPEN_CONNS=${OPEN_CONNS:-$CONNS}
[[ $OPEN_CONNS =~ ^[0-9]+$ ]] && [ "$OPEN_CONNS" -ge 1 ] || { echo "--open-connections: a positive number" >&2; exit 2; }
case "$POLICY" in cluster | local) ;; *) echo "--policy: cluster or local" >&2; exit 2 ;; esac
IFS=, read -r -a PEER_LIST <<<"$PEERS"
for p in "${PEER_LIST[@]}"; do
    case "$p" in direct | dnat | haproxy | tpvs) ;; *) echo "--peers: unknown peer $p" >&2; exit 2 ;; esac
done
IFS=, read -r -a ONLY_LIST <<<"$ONLY"
[ "${#ONLY_LIST[@]}" -ge 1 ] || { echo "--only: at least one of keepalive,openloop,close,bulk" >&2; exit 2; }
for m in "${ONLY_LIST[@]}"; do
    case "$m" in keepalive | openloop | close | bulk) ;; *) echo "--only: unknown measurement $m" >&2; exit 2 ;; esac
done
wanted() { [[ ",$ONLY," == *",$1,"* ]]; } # wanted MEASUREMENT: listed in --only

if [ "$(id -u)" -ne 0 ]; then
    echo "benches/peer.sh: the lab needs root (network namespaces, nftables)" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# Lab layout (scripts/lab) and the benchmark's Services
# ---------------------------------------------------------------------------------------------
P=pb$$
NS_CLIENT=$P-client
NS_NODE=$P-node
WORK=$(mktemp -d /tmp/tpvs-peer.XXXXXX)
VIP_WEB=10.96.1.10      # :80   -> be1:8080, be2:8080
VIP_BULK=10.96.1.20     # :5201 -> be1:5201 (iperf3 needs its control and data connections on one backend)
BE1=10.1.1.2
BE2=10.1.2.2
HAPROXY_PORT=15002      # HAProxy's transparent listener
TPVS_PORT=15001         # tpvs's transparent listener (--proxy-port)
HAPROXY_MARK=0x1        # DESIGN's verified TPROXY setup: mark 1, routing table 100
HAPROXY_TABLE=100
NCPU=$(nproc)

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf 'benches/peer.sh: %s\n' "$*" >&2; exit 1; }
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
    "$ROOT/scripts/lab" down "$P" >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "benches/peer.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR

# ---------------------------------------------------------------------------------------------
# Peers: each has up (install its interception, start its process, wait until the VIP answers)
# and down (remove everything it installed). Only one peer intercepts at a time.
# ---------------------------------------------------------------------------------------------
probe() { # probe URL SECONDS: waits until URL answers with a backend's line
    local url=$1 tries=$(($2 * 10)) i
    for ((i = 0; i < tries; i++)); do
        if client curl -s --max-time 1 "$url" 2>/dev/null | grep -q '^be[0-9]'; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Fails if anything still answers on the VIP: the previous peer's interception is gone.
assert_no_interception() {
    if client curl -s --max-time 1 -o /dev/null "http://$VIP_WEB/" 2>/dev/null; then
        die "the VIP $VIP_WEB still answers after $1 was torn down"
    fi
}

# Every peer and every new-connection run starts from the same state: no TIME_WAIT sockets
# left by the previous one in the node or the backends (they hold the same client ports and
# would steer or delay its SYNs), and an empty conntrack table. Best effort: a kernel without
# socket destruction keeps its TIME_WAIT sockets.
reset_lab_state() {
    local ns
    for ns in "$NS_NODE" "$P-be1" "$P-be2"; do
        nsx "$ns" ss -K state time-wait >/dev/null 2>&1 || true
    done
    node conntrack -F >/dev/null 2>&1 || true
}

stop_pid() { # TERM, up to 5 s, then KILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "benches/peer.sh: pid $pid did not exit on SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
}

# direct: the client talks to one backend itself.
# direct: the client talks to the backends themselves (both at once, like the proxies spread
# their load); bulk goes to be1 as for every peer.
peer_up_direct() { URLS=("http://$BE1:8080/" "http://$BE2:8080/"); BULK_HOST=$BE1; }
peer_down_direct() { :; }

# dnat: kube-proxy's nftables mode, reduced to what the benchmark needs: a service map
# (address . protocol . port -> verdict), one chain per Service choosing an endpoint chain with
# `numgen random mod N`, one DNAT per endpoint. Conntrack un-NATs the replies, which come back
# through the node because the backends route via it.
peer_up_dnat() {
    cat >"$WORK/dnat.nft" <<EOF
table ip tpvs-bench-dnat {
	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { $VIP_WEB . tcp . 80 : goto svc-web, $VIP_BULK . tcp . 5201 : goto svc-bulk }
	}
	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr . meta l4proto . th dport vmap @service-ips
	}
	chain svc-web {
		numgen random mod 2 vmap { 0 : goto sep-web-be1, 1 : goto sep-web-be2 }
	}
	chain sep-web-be1 {
		meta l4proto tcp dnat to $BE1:8080
	}
	chain sep-web-be2 {
		meta l4proto tcp dnat to $BE2:8080
	}
	chain svc-bulk {
		numgen random mod 1 vmap { 0 : goto sep-bulk-be1 }
	}
	chain sep-bulk-be1 {
		meta l4proto tcp dnat to $BE1:5201
	}
}
EOF
    node nft -f "$WORK/dnat.nft"
    node conntrack -F >/dev/null 2>&1 || true
    URLS=("http://$VIP_WEB/")
    BULK_HOST=$VIP_BULK
    probe "${URLS[0]}" 5
}
peer_down_dnat() {
    node nft delete table ip tpvs-bench-dnat 2>/dev/null || true
    # Entries in TIME_WAIT would otherwise keep steering the next peer's packets.
    node conntrack -F >/dev/null 2>&1 || true
}

# haproxy: the Debian package, `mode tcp`, one transparent listener fed by TPROXY (DESIGN §5's
# rule set), the backend chosen by the original destination, as many threads as tpvs runs.
haproxy_maxconn() {
    local hard
    hard=$(ulimit -Hn)
    [ "$hard" = unlimited ] && hard=1048576
    local m=$(((hard - 200) / 2))
    [ "$m" -gt 100000 ] && m=100000
    echo "$m"
}
peer_up_haproxy() {
    local maxconn source_line=""
    maxconn=$(haproxy_maxconn)
    [ "$POLICY" = local ] && source_line="	source 0.0.0.0 usesrc clientip"
    cat >"$WORK/haproxy.cfg" <<EOF
global
	nbthread $NCPU
	maxconn $maxconn
	pidfile $WORK/haproxy.pid
defaults
	mode tcp
	timeout connect 5s
	timeout client 60s
	timeout server 60s
frontend services
	bind 0.0.0.0:$HAPROXY_PORT transparent
	maxconn $maxconn
	use_backend bulk if { dst $VIP_BULK }
	default_backend web
backend web
	balance roundrobin
$source_line
	server be1 $BE1:8080
	server be2 $BE2:8080
backend bulk
$source_line
	server be1 $BE1:5201
EOF
    cat >"$WORK/tproxy.nft" <<EOF
table inet tpvs-bench-tproxy {
	chain prerouting {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto tcp socket transparent 1 meta mark set $HAPROXY_MARK accept
		ip daddr $VIP_WEB tcp dport 80 tproxy ip to 127.0.0.1:$HAPROXY_PORT meta mark set $HAPROXY_MARK accept
		ip daddr $VIP_BULK tcp dport 5201 tproxy ip to 127.0.0.1:$HAPROXY_PORT meta mark set $HAPROXY_MARK accept
	}
}
EOF
    node haproxy -c -q -f "$WORK/haproxy.cfg" || die "haproxy rejected its configuration"
    # Listener first, then the rules: TPROXY to a port nobody listens on is "unreachable".
    # `ip netns exec` execs the program: $! is haproxy itself (for its RSS, CPU and SIGTERM).
    ip netns exec "$NS_NODE" haproxy -f "$WORK/haproxy.cfg" -db </dev/null >"$WORK/haproxy.log" 2>&1 &
    PEER_PID=$!
    local i
    for ((i = 0; i < 50; i++)); do
        node ss -Hltn "sport = :$HAPROXY_PORT" | grep -q . && break
        sleep 0.1
    done
    ip -n "$NS_NODE" rule add fwmark "$HAPROXY_MARK" lookup "$HAPROXY_TABLE"
    ip -n "$NS_NODE" route add local 0.0.0.0/0 dev lo table "$HAPROXY_TABLE"
    node nft -f "$WORK/tproxy.nft"
    URLS=("http://$VIP_WEB/")
    BULK_HOST=$VIP_BULK
    probe "${URLS[0]}" 5 || { cat "$WORK/haproxy.log" >&2; return 1; }
}
peer_down_haproxy() {
    if [ -n "$PEER_PID" ]; then
        stop_pid "$PEER_PID" || true
    fi
    PEER_PID=
    node nft delete table inet tpvs-bench-tproxy 2>/dev/null || true
    ip -n "$NS_NODE" rule del fwmark "$HAPROXY_MARK" lookup "$HAPROXY_TABLE" 2>/dev/null || true
    ip -n "$NS_NODE" route flush table "$HAPROXY_TABLE" 2>/dev/null || true
}

# tpvs: `tpvs run` with the same two Services as manifests; it installs its own interception.
tpvs_manifests() {
    local itp=Cluster
    [ "$POLICY" = local ] && itp=Local
    cat >"$WORK/bench.yaml" <<EOF
# The peer benchmark's Services: the same VIPs and backends the other peers use.
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: bench-web, namespace: bench}
  spec:
    type: ClusterIP
    clusterIP: $VIP_WEB
    clusterIPs: [$VIP_WEB]
    internalTrafficPolicy: $itp
    ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: bench-web-1
    namespace: bench
    labels: {kubernetes.io/service-name: bench-web}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints:
  - {addresses: [$BE1], conditions: {ready: true}, nodeName: node-a}
  - {addresses: [$BE2], conditions: {ready: true}, nodeName: node-a}
- apiVersion: v1
  kind: Service
  metadata: {name: bench-bulk, namespace: bench}
  spec:
    type: ClusterIP
    clusterIP: $VIP_BULK
    clusterIPs: [$VIP_BULK]
    internalTrafficPolicy: $itp
    ports: [{name: iperf, port: 5201, protocol: TCP, targetPort: 5201}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: bench-bulk-1
    namespace: bench
    labels: {kubernetes.io/service-name: bench-bulk}
  addressType: IPv4
  ports: [{name: iperf, port: 5201, protocol: TCP}]
  endpoints:
  - {addresses: [$BE1], conditions: {ready: true}, nodeName: node-a}
EOF
}
peer_up_tpvs() {
    [ -n "$TPVS_BIN" ] || return 1
    ip netns exec "$NS_NODE" "$TPVS_BIN" run --manifests "$WORK/bench.yaml" --hostname-override node-a \
        --nodeport-addresses 10.0.0.1/32 --proxy-port "$TPVS_PORT" $TPVS_ARGS \
        </dev/null >"$WORK/tpvs.log" 2>&1 &
    PEER_PID=$!
    URLS=("http://$VIP_WEB/")
    BULK_HOST=$VIP_BULK
    if ! probe "${URLS[0]}" 20; then
        echo "benches/peer.sh: tpvs did not answer on $VIP_WEB:80; its log:" >&2
        tail -n 20 "$WORK/tpvs.log" >&2
        return 1
    fi
}
peer_down_tpvs() {
    local clean=1
    if [ -n "$PEER_PID" ]; then
        stop_pid "$PEER_PID" || clean=0
    fi
    PEER_PID=
    if node nft list table inet tpvs >/dev/null 2>&1; then
        [ "$clean" -eq 1 ] && echo "benches/peer.sh: tpvs exited but left its nft table behind" >&2
        node "$TPVS_BIN" cleanup >/dev/null 2>&1 || true
        node nft delete table inet tpvs 2>/dev/null || true
    fi
}

# ---------------------------------------------------------------------------------------------
# Measurements. Results go to R[peer:metric] as space-separated values, one per repetition.
# ---------------------------------------------------------------------------------------------
declare -A R=()
declare -A UNAVAILABLE=()
record() { R[$1:$2]="${R[$1:$2]:-} $3"; }

to_ms() { # wrk's "1.23ms" / "870.00us" / "1.02s" -> milliseconds
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else { printf "nan" } }'
}

wrk_errors() { # socket errors + non-2xx responses in a wrk report
    awk '/Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
         /Non-2xx or 3xx responses:/ { n += $NF }
         END { print n + 0 }' "$1"
}

syn_retrans() { # TcpExt TCPSynRetrans of the client namespace
    client awk '/^TcpExt:/ { if (!h) { n = split($0, k); h = 1 } else { split($0, v); for (i = 1; i <= n; i++) if (k[i] == "TCPSynRetrans") print v[i] } }' /proc/net/netstat
}

cpu_ticks() { # utime + stime of a process, in clock ticks
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# tpvs's per-worker counters: "accepted busy_seconds" per worker, one line each (worker order).
tpvs_workers() {
    node curl -s --max-time 2 http://127.0.0.1:10249/metrics 2>/dev/null | awk '
        /^tpvs_worker_connections_accepted_total\{/ { match($0, /worker="[0-9]+"/); w = substr($0, RSTART + 8, RLENGTH - 9); a[w] = $NF; if (w + 1 > n) n = w + 1 }
        /^tpvs_worker_busy_seconds_total\{/ { match($0, /worker="[0-9]+"/); w = substr($0, RSTART + 8, RLENGTH - 9); b[w] = $NF }
        END { for (i = 0; i < n; i++) print a[i] + 0, b[i] + 0 }'
}

# record_worker_spread PEER PREFIX BEFORE AFTER: records PREFIX_worker_conns, _busy and _split
# from two readings of the per-worker metrics, and leaves the busiest worker's CPU share and the
# split in BUSY_SHARE and SPLIT (not printed: a subshell would lose the records).
record_worker_spread() {
    local peer=$1 prefix=$2 conn_share
    read -r conn_share BUSY_SHARE SPLIT <<<"$(worker_spread "$3" "$4")"
    record "$peer" "${prefix}_worker_conns" "$conn_share"
    record "$peer" "${prefix}_worker_busy" "$BUSY_SHARE"
    record "$peer" "${prefix}_worker_split" "$SPLIT"
}

# worker_spread BEFORE AFTER: from two tpvs_workers snapshots, the busiest worker's share (%)
# of the connections accepted and of the workers' CPU time in between, and the split itself.
worker_spread() {
    paste -d' ' <(echo "$1") <(echo "$2") | awk '
        { da[NR] = $3 - $1; db[NR] = $4 - $2; ta += da[NR]; tb += db[NR]; if (da[NR] > ma) ma = da[NR]; if (db[NR] > mb) mb = db[NR] }
        END { s = ""; for (i = 1; i <= NR; i++) s = s (i > 1 ? "/" : "") da[i]
              printf "%.1f %.1f %s\n", (ta > 0 ? 100 * ma / ta : 0), (tb > 0 ? 100 * mb / tb : 0), s }'
}

# --- CPU per connection, split (issue 14's diagnostics) --------------------------------------
# Where the gap to DNAT comes from is CPU: every peer shares the node's CPUs with the client and
# the backends, so a peer's new-connection rate is set by how much CPU one connection costs the
# whole lab. A veth does the receiving side's work in the sender's context (the DNAT peer's
# NAT and the backends' TCP run in wrk's system time), so only the sum over the lab is
# comparable between peers: "lab CPU" is the user+system time of every process in the lab's
# namespaces (proxy, nginx, iperf3) plus wrk's own (GNU time around wrk: wrk has exited when
# the run is read) — other engineers' work on the machine is not in it, unlike /proc/stat.
# The proxy's user and system time are shown apart: user is its own code, system the kernel's
# TCP on its two sockets (and on veth the peers' receive processing of what it sends).
lab_ticks() { # user+system clock ticks of every process now in the lab's namespaces
    local ns pid total=0 t
    for ns in "$NS_CLIENT" "$NS_NODE" "$P-be1" "$P-be2"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null) || continue
            total=$((total + ${t:-0}))
        done
    done
    echo "$total"
}
lab_segments() { # TCP segments sent by every namespace of the lab (forwarded packets not counted)
    local ns total=0 n
    for ns in "$NS_CLIENT" "$NS_NODE" "$P-be1" "$P-be2"; do
        n=$(nsx "$ns" awk '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "OutSegs") c = i; h = 1 } else print $c }' /proc/net/snmp)
        total=$((total + ${n:-0}))
    done
    echo "$total"
}
cpu_snapshot() { # cpu_snapshot PID: "lab_ticks utime stime segments" (utime stime 0 without PID)
    local proc="0 0"
    if [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ]; then
        proc=$(awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat")
    fi
    echo "$(lab_ticks) $proc $(lab_segments)"
}
# record_cpu_split PEER PREFIX BEFORE AFTER N WRKPREFIX: records PREFIX_segs (TCP segments the
# lab sent, a count: each one costs a send and a receive), PREFIX_lab_us (the lab's
# processes between the snapshots plus the wrk runs whose GNU time files are
# WRKPREFIX.*.cpu), and with a proxy process PREFIX_user_us and PREFIX_sys_us, each per one
# of N connections or requests (microseconds).
record_cpu_split() {
    local peer=$1 prefix=$2 n=$5 wrk_prefix=$6 hz wrk_s
    hz=$(getconf CLK_TCK)
    local b0 u0 s0 g0 b1 u1 s1 g1
    read -r b0 u0 s0 g0 <<<"$3"
    read -r b1 u1 s1 g1 <<<"$4"
    [ "${n:-0}" -gt 0 ] || return 0
    record "$peer" "${prefix}_segs" "$(awk -v d=$((g1 - g0)) -v n="$n" 'BEGIN { printf "%.2f", d / n }')"
    wrk_s=$(cat "$wrk_prefix".*.cpu 2>/dev/null | awk 'NF == 2 && $1 ~ /^[0-9.]+$/ { s += $1 + $2 } END { print s + 0 }')
    record "$peer" "${prefix}_lab_us" "$(awk -v d=$((b1 - b0)) -v w="$wrk_s" -v hz="$hz" -v n="$n" 'BEGIN { printf "%.1f", (d / hz + w) * 1e6 / n }')"
    if [ -n "$PEER_PID" ]; then
        record "$peer" "${prefix}_user_us" "$(awk -v d=$((u1 - u0)) -v hz="$hz" -v n="$n" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')"
        record "$peer" "${prefix}_sys_us" "$(awk -v d=$((s1 - s0)) -v hz="$hz" -v n="$n" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')"
    fi
}
# every_run_at_most PEER_A PEER_B METRIC: ✓ when A's value is at most B's in every repetition
# (repetitions are paired in order: the peers take turns within one repetition).
every_run_at_most() {
    [ -n "${R[$1:$3]:-}" ] && [ -n "${R[$2:$3]:-}" ] || return 0
    paste -d' ' <(printf '%s\n' ${R[$1:$3]}) <(printf '%s\n' ${R[$2:$3]}) |
        awk '{ if ($1 > $2) bad = 1 } END { printf " %s", (bad ? "✗" : "✓") }'
}
# --- end of the CPU split helpers ------------------------------------------------------------

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# load OUTPREFIX SECONDS [wrk args...]: drives every URL in URLS with wrk at once (the threads
# and connections split evenly between them) and prints "req/s requests p50_ms p99_ms errors",
# summed over the URLs (latencies: their mean). One URL behind a VIP for the proxies; for
# direct, both backends themselves, so the baseline spreads its load like the peers do.
load() {
    local prefix=$1 secs=$2
    shift 2
    local n=${#URLS[@]} i pids=() rc=0
    local t=$((THREADS / n)) c=$((CONNS / n))
    [ "$t" -ge 1 ] || t=1
    [ "$c" -ge "$t" ] || c=$t
    rm -f "$prefix".*.cpu # wrk's CPU time (see record_cpu_split), of this run only
    for ((i = 0; i < n; i++)); do
        timeout $((secs + 30)) ip netns exec "$NS_CLIENT" \
            time -f '%U %S' -o "$prefix.$i.cpu" \
            wrk -t "$t" -c "$c" -d "${secs}s" --timeout 5s --latency "$@" "${URLS[$i]}" >"$prefix.$i" 2>&1 &
        pids+=("$!")
    done
    for i in "${pids[@]}"; do
        wait "$i" || rc=1
    done
    local stats=()
    for ((i = 0; i < n; i++)); do
        local f=$prefix.$i rps req p50 p99 errs
        rps=$(awk '/^Requests\/sec:/ { print $2 }' "$f")
        req=$(awk '/requests in/ { print $1 }' "$f")
        p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$f")")
        p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$f")")
        errs=$(wrk_errors "$f")
        if [ "$rc" -ne 0 ] || [ -z "$rps" ] || [ -z "$req" ]; then
            cat "$f" >&2
            return 1
        fi
        stats+=("$rps $req $p50 $p99 $errs")
    done
    printf '%s\n' "${stats[@]}" | awk '{ r += $1; q += $2; a += $3; b += $4; e += $5 }
        END { printf "%.2f %d %.3f %.3f %d\n", r, q, a / NR, b / NR, e }'
}

measure_keepalive() {
    local peer=$1 t0 t1 out
    load "$WORK/warmup" "$WARMUP" >/dev/null || true
    local w0= w1=
    # The warm-up opened wrk's connections already: these are the measured run's own.
    [ "$peer" = tpvs ] && w0=$(tpvs_workers)
    t0=$(cpu_ticks "$PEER_PID")
    local c0 c1
    c0=$(cpu_snapshot "$PEER_PID")
    out=$(load "$WORK/wrk-ka" "$DURATION") || return 1
    c1=$(cpu_snapshot "$PEER_PID")
    t1=$(cpu_ticks "$PEER_PID")
    [ "$peer" = tpvs ] && w1=$(tpvs_workers)
    if [ -n "$w0" ] && [ -n "$w1" ]; then
        record_worker_spread "$peer" ka "$w0" "$w1"
        note "$(printf '%-8s keep-alive  busiest worker: %s%% of the workers'"'"' CPU; connections per worker %s' "$peer" "$BUSY_SHARE" "$SPLIT")"
    fi
    local rps requests p50 p99 errs
    read -r rps requests p50 p99 errs <<<"$out"
    record "$peer" ka_rps "$rps"
    record "$peer" ka_p50 "$p50"
    record "$peer" ka_p99 "$p99"
    record "$peer" ka_err "$errs"
    record_cpu_split "$peer" ka "$c0" "$c1" "$requests" "$WORK/wrk-ka"
    if [ -n "$PEER_PID" ]; then
        # CPU the proxy process spent per request (microseconds), across all its threads.
        local hz
        hz=$(getconf CLK_TCK)
        record "$peer" ka_cpu_us "$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$requests" 'BEGIN { printf "%.2f", (n > 0 ? d / hz * 1e6 / n : 0) }')"
    fi
    note "$(printf '%-8s keep-alive  %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  errors %s' "$peer" "$rps" "$p50" "$p99" "$errs")"
}

# ---------------------------------------------------------------------------------------------
# Open-loop latency (issue 14): wrk's latency is closed-loop (a slow reply delays the next
# request, so the peer that is slowest also gets the least load). Here every peer gets the same
# fixed offered rate, well under its knee, from tpvs-loadtest: HTTP/1.1 keep-alive GETs on
# persistent connections, each request's latency measured from its scheduled send time
# (coordinated omission corrected), the generator's own error measured per request.
# ---------------------------------------------------------------------------------------------
LOADTEST_AVAILABLE=0

# openloop_one URL RATE CONNS OUTFILE: one open-loop run against URL; prints the summary line.
openloop_one() {
    local hostport=${1#http://}
    hostport=${hostport%%/*}
    [[ $hostport == *:* ]] || hostport=$hostport:80
    timeout $((DURATION + 40)) ip netns exec "$NS_CLIENT" \
        "$LOADTEST_BIN" external --target "$hostport" --protocol http --mode persistent \
        --rate "$2" --connections "$3" --duration "$DURATION" --warmup "$WARMUP" --timeout 5 \
        --label open-loop --quiet --summary-line >"$4" 2>&1
}

# Fields of a summary line: "key=value ..." -> value of key.
summary_field() { awk -v k="$2" '/^summary / { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' "$1"; }

measure_openloop() {
    local peer=$1
    [ "$LOADTEST_AVAILABLE" -eq 1 ] || return 0
    # Like wrk's runs, direct splits the load over both backends (half the rate and connections
    # each); its percentiles are the mean of the two runs'.
    local n=${#URLS[@]} i pids=() rc=0
    local rate=$((OPEN_RATE / n)) c=$((OPEN_CONNS / n))
    [ "$c" -ge 1 ] || c=1
    for ((i = 0; i < n; i++)); do
        openloop_one "${URLS[$i]}" "$rate" "$c" "$WORK/open.$i" &
        pids+=("$!")
    done
    for i in "${pids[@]}"; do
        wait "$i" || rc=1
    done
    local p50=0 p99=0 p999=0 failed=0 sent=0 gen=0 f v
    for ((i = 0; i < n; i++)); do
        f=$WORK/open.$i
        if [ "$rc" -ne 0 ] || [ -z "$(summary_field "$f" p99_ms)" ]; then
            cat "$f" >&2
            return 1
        fi
        p50=$(awk -v a="$p50" -v b="$(summary_field "$f" p50_ms)" -v n="$n" 'BEGIN { printf "%.3f", a + b / n }')
        p99=$(awk -v a="$p99" -v b="$(summary_field "$f" p99_ms)" -v n="$n" 'BEGIN { printf "%.3f", a + b / n }')
        p999=$(awk -v a="$p999" -v b="$(summary_field "$f" p999_ms)" -v n="$n" 'BEGIN { printf "%.3f", a + b / n }')
        failed=$((failed + $(summary_field "$f" failed)))
        sent=$((sent + $(summary_field "$f" sent)))
        # The generator's own error: the worse of the runs (nan when the kernel gave no stamps).
        v=$(summary_field "$f" generator_p99_us)
        gen=$(awk -v a="$gen" -v b="$v" 'BEGIN { if (b == "nan") print a; else printf "%.1f", (b + 0 > a + 0 ? b : a) }')
    done
    record "$peer" ol_p50 "$p50"
    record "$peer" ol_p99 "$p99"
    record "$peer" ol_p999 "$p999"
    record "$peer" ol_err "$failed"
    record "$peer" ol_sent "$sent"
    record "$peer" ol_gen_us "$gen"
    note "$(printf '%-8s open loop   %6d req/s  p50 %7.3f ms  p99 %7.3f ms  p99.9 %7.3f ms  failed %s of %s  generator p99 error %s µs' \
        "$peer" "$OPEN_RATE" "$p50" "$p99" "$p999" "$failed" "$sent" "$gen")"
}

# The open-loop row's cell: "p50 / p99 / p99.9" medians, or why it is missing.
openloop_cell() {
    if [ -n "${UNAVAILABLE[$1]:-}" ]; then echo "not available"; return; fi
    [ "$LOADTEST_AVAILABLE" -eq 1 ] || { echo "no tpvs-loadtest"; return; }
    echo "$(cell "$1" ol_p50 3) / $(cell "$1" ol_p99 3) / $(cell "$1" ol_p999 3)"
}

# Peers whose closed-loop keep-alive req/s (this run's median) stayed under the open-loop rate,
# or that failed open-loop requests: their row measures a queue, not the proxy at equal load.
openloop_notes() {
    [ "$LOADTEST_AVAILABLE" -eq 1 ] || return 0
    local peer rps over=() failing=()
    for peer in "${PEER_LIST[@]}"; do
        [ -z "${UNAVAILABLE[$peer]:-}" ] || continue
        rps=$(med "$peer" ka_rps)
        [ -n "$rps" ] && awk -v r="$rps" -v o="$OPEN_RATE" 'BEGIN { exit !(r < o) }' && over+=("$peer")
        [ "$(printf '%s\n' ${R[$peer:ol_err]:-0} | awk '{ s += $1 } END { print s + 0 }')" -gt 0 ] && failing+=("$peer")
    done
    [ "${#over[@]}" -eq 0 ] ||
        printf '\nOpen loop: %s req/s is above the closed-loop keep-alive throughput of %s in this run: those latencies are queueing behind an overloaded path, not the proxy at equal load (lower --open-rate, or run on a quiet machine).\n' "$OPEN_RATE" "${over[*]}"
    [ "${#failing[@]}" -eq 0 ] ||
        printf '\nOpen loop: requests failed (timed out after 5 s or errors) through %s; see "open-loop failed requests".\n' "${failing[*]}"
}

openloop_errs() {
    [ -n "${UNAVAILABLE[$1]:-}" ] || [ -z "${R[$1:ol_err]:-}" ] && { echo "–"; return; }
    local a b
    a=$(printf '%s\n' ${R[$1:ol_err]} | awk '{ s += $1 } END { print s + 0 }')
    b=$(printf '%s\n' ${R[$1:ol_sent]} | awk '{ s += $1 } END { print s + 0 }')
    echo "$a of $b"
}

measure_close() {
    local peer=$1 s0 s1 out
    reset_lab_state
    local w0= w1=
    [ "$peer" = tpvs ] && w0=$(tpvs_workers)
    s0=$(syn_retrans)
    local c0 c1
    c0=$(cpu_snapshot "$PEER_PID")
    out=$(load "$WORK/wrk-close" "$DURATION" -H 'Connection: close') || return 1
    c1=$(cpu_snapshot "$PEER_PID")
    s1=$(syn_retrans)
    [ "$peer" = tpvs ] && w1=$(tpvs_workers)
    if [ -n "$w0" ] && [ -n "$w1" ]; then record_worker_spread "$peer" cc "$w0" "$w1"; fi
    local cps conns p50 p99 errs tw
    read -r cps conns p50 p99 errs <<<"$out"
    tw=$(node ss -Htan state time-wait | wc -l)
    record "$peer" cc_cps "$cps"
    record "$peer" cc_conns "$conns"
    record "$peer" cc_err "$errs"
    record "$peer" cc_synre "$(awk -v s=$((s1 - s0)) -v n="$conns" 'BEGIN { printf "%.2f", (n > 0 ? 100 * s / n : 0) }')"
    record "$peer" cc_tw "$tw"
    record_cpu_split "$peer" cc "$c0" "$c1" "$conns" "$WORK/wrk-close"
    note "$(printf '%-8s new conns   %10.0f conn/s  SYN retransmits %s  node TIME_WAIT %s  errors %s' "$peer" "$cps" "$((s1 - s0))" "$tw" "$errs")"
}

measure_bulk() {
    local peer=$1 out=$WORK/iperf3.txt gbps
    timeout $((DURATION + 30)) ip netns exec "$NS_CLIENT" \
        iperf3 --client "$BULK_HOST" --port 5201 --time "$DURATION" --format g --connect-timeout 3000 \
        >"$out" 2>&1 || { cat "$out" >&2; return 1; }
    gbps=$(awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Gbits/sec") print $(i - 1) }' "$out" | tail -n 1)
    [ -n "$gbps" ] || { cat "$out" >&2; return 1; }
    record "$peer" bulk "$gbps"
    note "$(printf '%-8s bulk        %10.2f Gbit/s' "$peer" "$gbps")"
}

run_peer() { # one repetition of every measurement through one peer
    local peer=$1
    reset_lab_state
    CURRENT_PEER=$peer
    PEER_PID=
    if ! "peer_up_$peer"; then
        "peer_down_$peer" >/dev/null 2>&1 || true
        CURRENT_PEER=
        if [ "$peer" = tpvs ] || [ "$KEEP_GOING" -eq 1 ]; then
            UNAVAILABLE[$peer]=${UNAVAILABLE[$peer]:-"did not start or did not forward"}
            note "$peer: not available (${UNAVAILABLE[$peer]})"
            return 0
        fi
        die "$peer did not start"
    fi
    local rss0=
    [ -n "$PEER_PID" ] && rss0=$(rss_kb "$PEER_PID")
    { ! wanted keepalive || measure_keepalive "$peer"; } &&
        { ! wanted openloop || measure_openloop "$peer"; } &&
        { ! wanted close || measure_close "$peer"; } &&
        { ! wanted bulk || measure_bulk "$peer"; } ||
        die "a measurement through $peer failed"
    if [ -n "$PEER_PID" ]; then
        local rss1 hwm
        rss1=$(rss_kb "$PEER_PID")
        hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$PEER_PID/status" 2>/dev/null || echo 0)
        record "$peer" rss_idle "$rss0"
        record "$peer" rss_after "$rss1"
        record "$peer" rss_peak "$hwm"
        note "$(printf '%-8s RSS idle %s kB, after the run %s kB (peak %s kB)' "$peer" "$rss0" "$rss1" "$hwm")"
    fi
    "peer_down_$peer"
    CURRENT_PEER=
    assert_no_interception "$peer"
}

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
median() { # median of the values in R[$1:$2], or empty
    local vals=${R[$1:$2]:-}
    [ -n "${vals// /}" ] || return 0
    # shellcheck disable=SC2086
    printf '%s\n' $vals | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
fmt() { # fmt VALUE DECIMALS
    [ -n "$1" ] || { echo "n/a"; return; }
    awk -v v="$1" -v d="$2" 'BEGIN { printf "%.*f", d, v }'
}
meets() { # meets A B MIN: ✓ when A/B >= MIN, ✗ below, nothing when unknown
    [ -n "$1" ] && [ -n "$2" ] || return 0
    awk -v a="$1" -v b="$2" -v m="$3" 'BEGIN { if (b != 0) printf " %s", (a / b >= m ? "✓" : "✗") }'
}
at_most() { # at_most A B: ✓ when A <= B
    [ -n "$1" ] && [ -n "$2" ] || return 0
    awk -v a="$1" -v b="$2" 'BEGIN { printf " %s", (a <= b ? "✓" : "✗") }'
}
ratio() {
    [ -n "$1" ] && [ -n "$2" ] || { echo "n/a"; return; }
    awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f×", a / b }'
}
cell() { # cell PEER METRIC DECIMALS [DIVISOR]
    if [ -n "${UNAVAILABLE[$1]:-}" ]; then echo "not available"; return; fi
    local m
    m=$(median "$1" "$2")
    [ -n "$m" ] && [ -n "${4:-}" ] && m=$(awk -v v="$m" -v d="$4" 'BEGIN { print v / d }')
    fmt "$m" "$3"
}
med() { # median, or empty when the peer is unavailable
    [ -n "${UNAVAILABLE[$1]:-}" ] && return 0
    median "$1" "$2"
}
added_p99() { # p99 minus direct's p99
    local a b
    a=$(med "$1" ka_p99)
    b=$(med direct ka_p99)
    [ -n "$a" ] && [ -n "$b" ] || return 0
    awk -v a="$a" -v b="$b" 'BEGIN { print a - b }'
}

cpu_busy_percent() { # share of CPU time used by everything over one second
    local a b
    a=$(awk '/^cpu / { idle = $5 + $6; t = 0; for (i = 2; i <= NF; i++) t += $i; print idle, t }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { idle = $5 + $6; t = 0; for (i = 2; i <= NF; i++) t += $i; print idle, t }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); dt = y[2] - x[2]; if (dt <= 0) print 0; else printf "%.0f", 100 * (1 - (y[1] - x[1]) / dt) }'
}

report() {
    local date machine
    date=$(date -u '+%Y-%m-%d %H:%M UTC')
    machine="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $NCPU CPUs, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
    local rev
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$ROOT" diff --quiet HEAD 2>/dev/null || rev="$rev+changes"

    local ka_h ka_d ka_t cc_h cc_d cc_t bu_h bu_d bu_t p99_h p99_t ap_h ap_t
    ka_h=$(med haproxy ka_rps); ka_d=$(med dnat ka_rps); ka_t=$(med tpvs ka_rps)
    cc_h=$(med haproxy cc_cps); cc_d=$(med dnat cc_cps); cc_t=$(med tpvs cc_cps)
    bu_h=$(med haproxy bulk); bu_d=$(med dnat bulk); bu_t=$(med tpvs bulk)
    p99_h=$(med haproxy ka_p99); p99_t=$(med tpvs ka_p99)
    ap_h=$(added_p99 haproxy); ap_t=$(added_p99 tpvs)

    cat <<EOF
# tpvs peer benchmark

- date: $date
- machine: $machine
- tpvs: ${TPVS_VERSION:-not available} (tree $rev)
- peers: HAProxy ${HAPROXY_VERSION} (\`mode tcp\`, TPROXY \`bind … transparent\`, nbthread $NCPU, no splicing), nftables ${NFT_VERSION} DNAT (\`numgen random\` map), tpvs (\`tpvs run${TPVS_ARGS:+ $TPVS_ARGS}\`, $NCPU workers)
- load: wrk ${WRK_VERSION}, $THREADS threads, $CONNS connections (direct: split over be1 and be2); iperf3 ${IPERF_VERSION}, one stream; nginx ${NGINX_VERSION} backends (be1, be2; bulk: be1)
- open loop: tpvs-loadtest $OPEN_RATE req/s fixed for every peer, HTTP/1.1 keep-alive GETs over $OPEN_CONNS persistent connections, latency from each request's scheduled send time (coordinated omission corrected; direct: half the rate to each backend, percentiles averaged)
- each measurement ${DURATION} s, ${REPS} repetitions, medians shown; traffic policy: $POLICY$([ "$RPS" -eq 1 ] && echo "; RPS over all CPUs on the node's interfaces")
- CPU busy before the run (work outside the benchmark): ${BUSY_BEFORE}%$NOISE_NOTE

| metric | direct | nft DNAT | HAProxy | tpvs | tpvs/HAProxy | tpvs/DNAT | target |
|---|---:|---:|---:|---:|---:|---:|---|
| keep-alive req/s | $(cell direct ka_rps 0) | $(cell dnat ka_rps 0) | $(cell haproxy ka_rps 0) | $(cell tpvs ka_rps 0) | $(ratio "$ka_t" "$ka_h") | $(ratio "$ka_t" "$ka_d") | ≥ 1.05× HAProxy$(meets "$ka_t" "$ka_h" 1.05) |
| keep-alive p50 latency (ms) | $(cell direct ka_p50 3) | $(cell dnat ka_p50 3) | $(cell haproxy ka_p50 3) | $(cell tpvs ka_p50 3) | $(ratio "$(med tpvs ka_p50)" "$(med haproxy ka_p50)") | $(ratio "$(med tpvs ka_p50)" "$(med dnat ka_p50)") | |
| keep-alive p99 latency (ms) | $(cell direct ka_p99 3) | $(cell dnat ka_p99 3) | $(cell haproxy ka_p99 3) | $(cell tpvs ka_p99 3) | $(ratio "$p99_t" "$p99_h") | $(ratio "$p99_t" "$(med dnat ka_p99)") | ≤ HAProxy's in every repetition$(every_run_at_most tpvs haproxy ka_p99) |
| added p99 vs direct (ms) | – | $(fmt "$(added_p99 dnat)" 3) | $(fmt "$ap_h" 3) | $(fmt "$ap_t" 3) | | | ≤ HAProxy's$(at_most "$ap_t" "$ap_h") |
| open-loop keep-alive at $OPEN_RATE req/s ($OPEN_CONNS connections): p50 / p99 / p99.9 latency (ms) | $(openloop_cell direct) | $(openloop_cell dnat) | $(openloop_cell haproxy) | $(openloop_cell tpvs) | p99: $(ratio "$(med tpvs ol_p99)" "$(med haproxy ol_p99)") | p99: $(ratio "$(med tpvs ol_p99)" "$(med dnat ol_p99)") | |
| new connections/s | $(cell direct cc_cps 0) | $(cell dnat cc_cps 0) | $(cell haproxy cc_cps 0) | $(cell tpvs cc_cps 0) | $(ratio "$cc_t" "$cc_h") | $(ratio "$cc_t" "$cc_d") | ≥ 2× HAProxy$(meets "$cc_t" "$cc_h" 2), ≥ 0.85× DNAT$(meets "$cc_t" "$cc_d" 0.85) |
| bulk throughput (Gbit/s) | $(cell direct bulk 2) | $(cell dnat bulk 2) | $(cell haproxy bulk 2) | $(cell tpvs bulk 2) | $(ratio "$bu_t" "$bu_h") | $(ratio "$bu_t" "$bu_d") | ≥ 1.5× HAProxy$(meets "$bu_t" "$bu_h" 1.5), ≥ 0.9× DNAT$(meets "$bu_t" "$bu_d" 0.9) |
| RSS idle (MB) | – | – | $(cell haproxy rss_idle 1 1024) | $(cell tpvs rss_idle 1 1024) | | | tpvs ≤ 20 MB$(at_most "$(med tpvs rss_idle)" 20480) |
| RSS after the run (MB) | – | – | $(cell haproxy rss_after 1 1024) | $(cell tpvs rss_after 1 1024) | | | |

Diagnostics (medians):

| | direct | nft DNAT | HAProxy | tpvs |
|---|---:|---:|---:|---:|
| proxy CPU per keep-alive request (µs) | – | in kernel | $(cell haproxy ka_cpu_us 1) | $(cell tpvs ka_cpu_us 1) |
| client SYN retransmits per 100 new connections | $(cell direct cc_synre 2) | $(cell dnat cc_synre 2) | $(cell haproxy cc_synre 2) | $(cell tpvs cc_synre 2) |
| node TIME_WAIT sockets after a new-connection run | $(cell direct cc_tw 0) | $(cell dnat cc_tw 0) | $(cell haproxy cc_tw 0) | $(cell tpvs cc_tw 0) |
| wrk errors (keep-alive / close), all runs | $(errs direct) | $(errs dnat) | $(errs haproxy) | $(errs tpvs) |
| open-loop failed requests, all runs | $(openloop_errs direct) | $(openloop_errs dnat) | $(openloop_errs haproxy) | $(openloop_errs tpvs) |
| open loop: the generator's own p99 error (µs; kept out of the latencies above) | $(cell direct ol_gen_us 0) | $(cell dnat ol_gen_us 0) | $(cell haproxy ol_gen_us 0) | $(cell tpvs ol_gen_us 0) |
| peak RSS (MB) | – | – | $(cell haproxy rss_peak 1 1024) | $(cell tpvs rss_peak 1 1024) |
| busiest tpvs worker's share of the workers' CPU, keep-alive / new connections (%; even: $((100 / NCPU))) | – | – | – | $(cell tpvs ka_worker_busy 1) / $(cell tpvs cc_worker_busy 1) |
| busiest tpvs worker's share of new connections (%) | – | – | – | $(cell tpvs cc_worker_conns 1) |
| connections a proxy process had served when "RSS after" was read | – | – | $(cell haproxy cc_conns 0) | $(cell tpvs cc_conns 0) |
| lab CPU per new connection (µs; client, proxy, backends and the kernel's work for them) | $(cell direct cc_lab_us 1) | $(cell dnat cc_lab_us 1) | $(cell haproxy cc_lab_us 1) | $(cell tpvs cc_lab_us 1) |
| proxy process CPU per new connection, user / system (µs) | – | in kernel | $(cell haproxy cc_user_us 1) / $(cell haproxy cc_sys_us 1) | $(cell tpvs cc_user_us 1) / $(cell tpvs cc_sys_us 1) |
| TCP segments sent in the lab per new connection (a count) | $(cell direct cc_segs 2) | $(cell dnat cc_segs 2) | $(cell haproxy cc_segs 2) | $(cell tpvs cc_segs 2) |
| TCP segments sent in the lab per keep-alive request | $(cell direct ka_segs 2) | $(cell dnat ka_segs 2) | $(cell haproxy ka_segs 2) | $(cell tpvs ka_segs 2) |
| lab CPU per keep-alive request (µs) | $(cell direct ka_lab_us 1) | $(cell dnat ka_lab_us 1) | $(cell haproxy ka_lab_us 1) | $(cell tpvs ka_lab_us 1) |
| proxy process CPU per keep-alive request, user / system (µs) | – | in kernel | $(cell haproxy ka_user_us 1) / $(cell haproxy ka_sys_us 1) | $(cell tpvs ka_user_us 1) / $(cell tpvs ka_sys_us 1) |
EOF
    local peer
    for peer in "${!UNAVAILABLE[@]}"; do
        printf '\n%s: not available (%s).\n' "$peer" "${UNAVAILABLE[$peer]}"
    done
    openloop_notes
    printf '\n<details><summary>every repetition</summary>\n\n```\n'
    local key
    for key in $(printf '%s\n' "${!R[@]}" | sort); do
        printf '%-20s %s\n' "$key" "${R[$key]# }"
    done
    printf '```\n</details>\n'
}
errs() {
    [ -n "${UNAVAILABLE[$1]:-}" ] || [ -z "${R[$1:ka_err]:-}" ] && { echo "–"; return; }
    local a b
    a=$(printf '%s\n' ${R[$1:ka_err]:-0} | awk '{ s += $1 } END { print s + 0 }')
    b=$(printf '%s\n' ${R[$1:cc_err]:-0} | awk '{ s += $1 } END { print s + 0 }')
    echo "$a / $b"
}

# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
"$ROOT/scripts/setup"

TPVS_VERSION=
want_tpvs=0
for p in "${PEER_LIST[@]}"; do [ "$p" = tpvs ] && want_tpvs=1; done
if [ "$want_tpvs" -eq 1 ]; then
    if [ -z "$TPVS_BIN" ]; then
        TPVS_BIN=$ROOT/target/release/tpvs
        if [ "$BUILD" -eq 1 ]; then
            say "building tpvs (release)"
            if ! cargo build --release -q -p tpvs; then
                UNAVAILABLE[tpvs]="the build failed"
            fi
        fi
    fi
    if [ -z "${UNAVAILABLE[tpvs]:-}" ]; then
        if [ ! -x "$TPVS_BIN" ]; then
            UNAVAILABLE[tpvs]="no binary at $TPVS_BIN"
        elif ! "$TPVS_BIN" run --help >/dev/null 2>&1; then
            UNAVAILABLE[tpvs]="this build has no \`tpvs run\`"
        else
            TPVS_VERSION=$("$TPVS_BIN" --version 2>/dev/null | head -n 1)
        fi
    fi
    [ -n "${UNAVAILABLE[tpvs]:-}" ] && note "tpvs: not available (${UNAVAILABLE[tpvs]})"
fi

# The open-loop row's generator; without it the row says so and the rest of the run goes on.
if [ -z "$LOADTEST_BIN" ]; then
    LOADTEST_BIN=$ROOT/target/release/tpvs-loadtest
    if [ "$BUILD" -eq 1 ]; then
        say "building tpvs-loadtest (release)"
        cargo build --release -q -p tpvs-loadtest || note "tpvs-loadtest: the build failed"
    fi
fi
if [ -x "$LOADTEST_BIN" ] && "$LOADTEST_BIN" external --help 2>/dev/null | grep -q -- --summary-line; then
    LOADTEST_AVAILABLE=1
else
    note "tpvs-loadtest: no usable binary at $LOADTEST_BIN (needs \`external --protocol http --summary-line\`): no open-loop row"
fi

HAPROXY_VERSION=$(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }')
NFT_VERSION=$(nft --version 2>/dev/null | awk '{ print $2 }')
WRK_VERSION=$( (wrk -v 2>&1 || true) | awk 'NR == 1 { sub(/^.*\//, "", $2); print $2 }')
IPERF_VERSION=$(iperf3 --version 2>/dev/null | awk 'NR == 1 { print $2 }')
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/.*nginx\///')

say "measuring background CPU use"
BUSY_BEFORE=$(cpu_busy_percent)
NOISE_NOTE=
if [ "$BUSY_BEFORE" -ge 10 ]; then
    NOISE_NOTE=" — **the machine was busy with other work: these numbers are noisy**"
    note "the machine is ${BUSY_BEFORE}% busy with other work: numbers will be noisy"
fi

say "lab $P up"
"$ROOT/scripts/lab" up "$P" >/dev/null
if [ "$RPS" -eq 1 ]; then
    # `ip netns exec` mounts the namespace's own /sys, where its interfaces are.
    node sh -c "for q in /sys/class/net/*/queues/rx-*/rps_cpus; do echo $(printf '%x' $(((1 << NCPU) - 1))) >\$q; done"
fi
tpvs_manifests

for ((rep = 0; rep < REPS; rep++)); do
    say "repetition $((rep + 1))/$REPS (${DURATION} s per measurement)"
    # Peers take turns in a rotating order so slow drifts of the machine hit all of them alike.
    n=${#PEER_LIST[@]}
    for ((i = 0; i < n; i++)); do
        peer=${PEER_LIST[$(((i + rep) % n))]}
        if [ -n "${UNAVAILABLE[$peer]:-}" ]; then
            continue
        fi
        run_peer "$peer"
    done
done

BUSY_AFTER=$(cpu_busy_percent)
if [ "$BUSY_AFTER" -ge 10 ] && [ -z "$NOISE_NOTE" ]; then
    NOISE_NOTE=" — **other work was running when the run ended (${BUSY_AFTER}% CPU): these numbers are noisy**"
fi

if [ -z "$OUT" ]; then
    OUT=$ROOT/benches/results-$(date -u +%Y-%m-%d-%H%M).md
fi
say "results"
report | tee "$OUT"
say "written to ${OUT#"$ROOT"/}"

# Sanity: in-kernel DNAT should be close to direct and ahead of a user-space proxy.
ka_dir=$(med direct ka_rps); ka_dnat=$(med dnat ka_rps); ka_hap=$(med haproxy ka_rps)
if [ -n "$ka_dir" ] && [ -n "$ka_dnat" ]; then
    awk -v a="$ka_dnat" -v b="$ka_dir" 'BEGIN { exit !(a < 0.6 * b) }' &&
        note "warning: DNAT reached only $(ratio "$ka_dnat" "$ka_dir") of direct keep-alive req/s: is the machine busy?"
fi
if [ -n "$ka_hap" ] && [ -n "$ka_dnat" ]; then
    awk -v a="$ka_hap" -v b="$ka_dnat" 'BEGIN { exit !(a > 1.1 * b) }' &&
        note "warning: HAProxy beat DNAT on keep-alive req/s: is the machine busy?"
fi
exit 0
