#!/usr/bin/env bash
# System calls per forwarded connection (issue 13): a relay and a client (`portforward forward`)
# to the C echo server in a pod namespace, serial connections from the C client
# (Benchmarks/c), `strace -c -f -p` on both processes; prints calls per connection.
# Usage (root): scripts/syscalls-per-connection.sh [BINARY] [IO]  (defaults: the release build, epoll)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-.build/release/portforward}")
io=${2:-epoll}
[ "$(id -u)" -eq 0 ] || { echo "needs root (a network namespace)" >&2; exit 1; }
work=$(mktemp -d)
ns=pf-syscalls-$$
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cc -O2 -o "$work/connrate" Benchmarks/c/connrate.c
cc -O2 -o "$work/echo-server" Benchmarks/c/echo-server.c
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" "$work/echo-server" 7400 & pids+=($!)
printf 'pods:\n  - {namespace: bench, name: target, netns: /run/netns/%s}\n' "$ns" >"$work/pods.yaml"
relay_port=$((20000 + RANDOM % 10000)); local_port=$((relay_port + 1))
"$bin" relay --listen "127.0.0.1:$relay_port" --node bench --pods "$work/pods.yaml" --io "$io" >"$work/relay.log" 2>&1 & relay=$!; pids+=($relay)
sleep 0.5
"$bin" forward --server "http://127.0.0.1:$relay_port" --io "$io" --address 127.0.0.1 -n bench target "$local_port:7400" \
    >"$work/forward.log" 2>&1 & client=$!; pids+=($client)
sleep 0.8
"$work/connrate" 127.0.0.1 "$local_port" 0.3 0 1 >/dev/null   # warm-up: pools, pipes
strace -c -f -p "$relay" -o "$work/relay.strace" 2>/dev/null & s1=$!
strace -c -f -p "$client" -o "$work/forward.strace" 2>/dev/null & s2=$!
sleep 0.5
seconds=2
rate=$("$work/connrate" 127.0.0.1 "$local_port" "$seconds" 0 1 | cut -d' ' -f1)
sleep 0.2
kill -INT "$s1" "$s2"; wait "$s1" "$s2" 2>/dev/null || true
connections=$((rate * seconds))
echo "$bin, $io: $connections connections"
for side in relay forward; do
    awk -v n="$connections" -v side="$side" 'NR > 2 && $1 !~ /^-/ && NF >= 5 { printf "%-8s %-16s %7.2f\n", side, $NF, $4 / n }' \
        "$work/$side.strace"
done
