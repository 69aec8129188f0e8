#!/usr/bin/env bash
# A healthy client's stream-open time while other clients flood the relay (`make bench-flood`).
#
# One relay (release build) with an echo pod; a healthy client (Tests/Peers/h2peer.py latency,
# from 127.0.0.1) opens a stream, waits for its 200, echoes a line and ends it, every 10 ms, for
# FLOOD_SECONDS. Meanwhile FLOOD_CLIENTS attackers (h2peer.py rapid-reset, each from its own
# loopback address 127.0.0.2, .3, ...) open streams and reset them at once, reconnecting whenever
# the relay ends their connection. The attackers run at nice 19: on this 2-core machine they
# stand for clients on other hosts, and must not win the CPU from the relay and the healthy client
# by the scheduler's hand rather than the relay's. Prints the healthy client's p50/p99/max
# stream-open time (HEADERS sent -> 200 received) without and with the flood, and what the
# attackers managed.
#
# Knobs: PORTFORWARD (binary, default .build/release/portforward), FLOOD_SECONDS (10),
# FLOOD_CLIENTS (2), FLOOD_IO (epoll), PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${PORTFORWARD:-.build/release/portforward}")
seconds=${FLOOD_SECONDS:-10}
clients=${FLOOD_CLIENTS:-2}
io=${FLOOD_IO:-epoll}
python=${PYTHON:-.venv/bin/python}
peer=Tests/Peers/h2peer.py
ns=pf-bench-flood-$$
[ -x "$bin" ] || { echo "bench-flood: $bin not found: run 'make build'" >&2; exit 1; }
[ -x "$python" ] || { echo "bench-flood: $python not found: run 'make venv'" >&2; exit 1; }

work=$(mktemp -d /tmp/pf-flood.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.2
    ip netns delete "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns delete "$ns" 2>/dev/null || true
ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" socat TCP-LISTEN:7000,fork,reuseaddr,backlog=1024 EXEC:cat &
pids+=($!)
printf 'pods:\n  - {namespace: default, name: web, netns: /run/netns/%s}\n' "$ns" > "$work/pods.yaml"
"$bin" relay --listen 127.0.0.1:0 --pods "$work/pods.yaml" --node flood --io "$io" > "$work/relay.out" 2> "$work/relay.err" &
relay=$!
pids+=($relay)
for _ in $(seq 100); do grep -q "Relay listening on" "$work/relay.out" && break; sleep 0.1; done
port=$(sed -n 's/^Relay listening on 127.0.0.1:\([0-9]*\) .*/\1/p' "$work/relay.out")
[ -n "$port" ] || { echo "bench-flood: the relay did not start" >&2; cat "$work/relay.err" >&2; exit 1; }
sleep 0.5

echo "relay $bin (io $io), port $port; healthy client every 10 ms for ${seconds}s"
quiet=$("$python" "$peer" latency 127.0.0.1 "$port" --seconds "$seconds" --interval 0.01 --source 127.0.0.1 | tail -1)
echo "no flood:   $quiet"

cpu_before=$(awk '{print $14 + $15}' "/proc/$relay/stat")
attackers=()
for index in $(seq "$clients"); do
    nice -n 19 "$python" "$peer" rapid-reset 127.0.0.1 "$port" --seconds $((seconds + 2)) --source "127.0.0.$((index + 1))" \
        > "$work/attack-$index.json" 2>/dev/null &
    attackers+=($!)
    pids+=($!)
done
sleep 1
flooded=$("$python" "$peer" latency 127.0.0.1 "$port" --seconds "$seconds" --interval 0.01 --source 127.0.0.1 | tail -1)
for pid in "${attackers[@]}"; do wait "$pid" || true; done
cpu_after=$(awk '{print $14 + $15}' "/proc/$relay/stat")
echo "with flood: $flooded"
for index in $(seq "$clients"); do echo "attacker $index (127.0.0.$((index + 1))): $(tail -1 "$work/attack-$index.json")"; done
echo "relay CPU during the flood: $(( (cpu_after - cpu_before) ))0 ms; RSS $(awk '/VmRSS/ {print $2, $3}' "/proc/$relay/status")"
kill -0 "$relay" 2>/dev/null && echo "relay still running" || { echo "bench-flood: the relay died" >&2; exit 1; }
