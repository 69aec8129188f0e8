#!/usr/bin/env bash
# Allocations on the data path (`make malloc-count`): a relay and a client moving iperf3 traffic
# both ways (two connections each way) into a pod namespace, each run with an LD_PRELOAD malloc
# counter (scripts/malloc-count.c). The counts are read at MALLOC_WARMUP seconds (after set-up
# and the first bursts) and again MALLOC_WINDOW seconds later; the difference is what steady
# relaying allocates. Once per backend and copy mode. Needs root (network namespaces).
#
# Knobs: PORTFORWARD (binary), MALLOC_WARMUP (2), MALLOC_WINDOW (3).
set -euo pipefail

cd "$(dirname "$0")/.."
bin=${PORTFORWARD:-.build/release/portforward}
warmup=${MALLOC_WARMUP:-2}
window=${MALLOC_WINDOW:-3}
ns=pf-malloc
iperf_port=5201

fail() { printf 'malloc-count: %s\n' "$*" >&2; exit 1; }
[ -x "$bin" ] || fail "$bin not found: run 'make build' first (or set PORTFORWARD)"
bin=$(realpath "$bin")
[ "$(id -u)" -eq 0 ] || fail "needs root: the pod is a network namespace"
for tool in ip iperf3 gcc; do command -v "$tool" >/dev/null || fail "$tool is missing: run 'make deps'"; done

LIB_WORK_PREFIX=pf-malloc
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
gcc -O2 -shared -fPIC -o "$work/malloc-count.so" scripts/malloc-count.c -ldl

ip netns delete "$ns" 2>/dev/null || true
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" iperf3 -s -p "$iperf_port" >"$work/iperf3-server.log" 2>&1 &
pids+=($!); wait_port $! "$iperf_port" "iperf3 -s" ip netns exec "$ns"
printf 'pods:\n  - {namespace: bench, name: target, netns: /run/netns/%s}\n' "$ns" >"$work/pods.yaml"

count() {  # PID LOG: the count the process reports on SIGUSR2
    local before; before=$(grep -c '^mallocs ' "$2" || true)
    kill -USR2 "$1"
    for _ in $(seq 50); do
        [ "$(grep -c '^mallocs ' "$2" || true)" -gt "$before" ] && break
        sleep 0.02
    done
    grep '^mallocs ' "$2" | tail -n 1 | cut -d' ' -f2
}

printf '%-8s %-8s %14s %14s %10s\n' backend copy "relay mallocs" "client mallocs" "GB moved"
for io in epoll uring; do
    for copy in splice buffers; do
        relay_port=$(free_port); local_port=$(free_port)
        LD_PRELOAD="$work/malloc-count.so" "$bin" relay --listen "127.0.0.1:$relay_port" --node bench \
            --pods "$work/pods.yaml" --io "$io" --copy "$copy" >"$work/relay.log" 2>&1 &
        relay=$!; pids+=("$relay"); wait_port "$relay" "$relay_port" "portforward relay"
        LD_PRELOAD="$work/malloc-count.so" "$bin" forward --server "http://127.0.0.1:$relay_port" --io "$io" \
            --copy "$copy" --address 127.0.0.1 -n bench target "$local_port:$iperf_port" >"$work/forward.log" 2>&1 &
        client=$!; pids+=("$client"); wait_port "$client" "$local_port" "portforward forward"
        iperf3 -c 127.0.0.1 -p "$local_port" -P 2 --bidir -t $((warmup + window + 1)) -J >"$work/iperf.json" 2>&1 &
        iperf=$!
        sleep "$warmup"
        relay_before=$(count "$relay" "$work/relay.log"); client_before=$(count "$client" "$work/forward.log")
        sleep "$window"
        relay_after=$(count "$relay" "$work/relay.log"); client_after=$(count "$client" "$work/forward.log")
        wait "$iperf" || fail "iperf3 failed: $(tail -n 5 "$work/iperf.json")"
        moved=$(python3 -c '
import json, sys
end = json.load(open(sys.argv[1]))["end"]
total = end["sum_sent"]["bytes"] + end.get("sum_sent_bidir_reverse", {}).get("bytes", 0)
print("%.1f" % (total / 1e9))' "$work/iperf.json")
        printf '%-8s %-8s %14s %14s %10s\n' "$io" "$copy" "$((relay_after - relay_before))" "$((client_after - client_before))" "$moved"
        kill "$client" "$relay" 2>/dev/null || true
        wait "$client" "$relay" 2>/dev/null || true
    done
done
echo "(mallocs counted over ${window} s of steady traffic, after ${warmup} s; GB moved over the whole run, both ways)"
