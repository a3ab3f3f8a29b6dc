#!/usr/bin/env bash
# /metrics at scale: `tpvs run` in a network namespace of its own, fed a manifests file of
# SERVICES Services with ENDPOINTS endpoints each, scraped once a second for SECONDS seconds;
# prints the daemon's RSS before and after each scrape, and the scrape's size and time.
#
#   benches/metrics-scale.sh [--services N] [--endpoints N] [--seconds N] [--tpvs PATH] [--extra "FLAGS"]
#
# Defaults: 10 000 Services x 10 endpoints (100 000 endpoints), 60 scrapes. Needs root (it
# builds a network namespace and nftables rules inside it); nothing leaves the namespace.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVICES=10000
ENDPOINTS=10
SECONDS_TOTAL=60
TPVS_BIN=
EXTRA=
while [ $# -gt 0 ]; do
    case "$1" in
        --services) SERVICES=${2:?}; shift ;;
        --endpoints) ENDPOINTS=${2:?}; shift ;;
        --seconds) SECONDS_TOTAL=${2:?}; shift ;;
        --tpvs) TPVS_BIN=${2:?}; shift ;;
        --extra) EXTRA=${2:-}; shift ;;
        *) echo "metrics-scale.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$TPVS_BIN" ]; then
    (cd "$ROOT" && cargo build --release -q -p tpvs)
    TPVS_BIN=$ROOT/target/release/tpvs
fi

NS=tpvs-mscale-$$
DIR=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

# One Service and one EndpointSlice per index; ClusterIPs from 10.96.0.0/16, endpoints from
# 10.128.0.0/9, every endpoint on this node.
awk -v n="$SERVICES" -v m="$ENDPOINTS" 'BEGIN {
    for (i = 0; i < n; i++) {
        printf "apiVersion: v1\nkind: Service\nmetadata: {name: svc-%d, namespace: scale}\n", i
        printf "spec:\n  clusterIP: 10.96.%d.%d\n  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]\n---\n", int(i / 256), i % 256
        printf "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        printf "metadata: {name: svc-%d-1, namespace: scale, labels: {kubernetes.io/service-name: svc-%d}}\n", i, i
        printf "addressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n"
        for (j = 0; j < m; j++) {
            k = i * m + j
            printf "  - addresses: [10.%d.%d.%d]\n    conditions: {ready: true}\n    nodeName: node1\n", 128 + int(k / 65536) % 128, int(k / 256) % 256, k % 256
        }
        printf "---\n"
    }
}' > "$DIR/scale.yaml"

ip netns add "$NS"
ip -n "$NS" link set lo up
# shellcheck disable=SC2086
ip netns exec "$NS" "$TPVS_BIN" run --manifests "$DIR/scale.yaml" --hostname-override node1 $EXTRA >"$DIR/tpvs.log" 2>&1 &
PID=$!

rss() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0; }
scrape() { ip netns exec "$NS" curl -s -o /dev/null -w '%{size_download} %{time_total}\n' --max-time 30 http://127.0.0.1:10249/metrics; }

for _ in $(seq 1 600); do
    if ip netns exec "$NS" curl -s -o /dev/null --max-time 2 http://127.0.0.1:10256/healthz -w '%{http_code}' | grep -q 200; then break; fi
    if ! kill -0 "$PID" 2>/dev/null; then cat "$DIR/tpvs.log" >&2; exit 1; fi
    sleep 0.5
done
echo "# ${SERVICES} Services x ${ENDPOINTS} endpoints; RSS in MiB; tpvs ${TPVS_BIN} ${EXTRA}"
echo "# serving: RSS $(( $(rss) / 1024 )) MiB"
printf '%-4s %-10s %-10s %-12s %s\n' scrape rss_before rss_after bytes seconds
peak=0
first_after=
for i in $(seq 1 "$SECONDS_TOTAL"); do
    before=$(rss)
    read -r size took < <(scrape)
    after=$(rss)
    [ "$after" -gt "$peak" ] && peak=$after
    [ -z "$first_after" ] && first_after=$after
    printf '%-4s %-10s %-10s %-12s %s\n' "$i" $((before / 1024)) $((after / 1024)) "$size" "$took"
    sleep 1
done
echo "# RSS after the first scrape $((first_after / 1024)) MiB, after the last $(( $(rss) / 1024 )) MiB, peak $((peak / 1024)) MiB"
