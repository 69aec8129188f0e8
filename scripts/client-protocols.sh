#!/bin/bash
# 1 GiB each way through one forwarded connection, for each `portforward forward --protocol`
# (h2, spdy, websocket), through the same relay on loopback (its pod: the relay's own network),
# iperf3 as the application; ROUNDS interleaved rounds. Prints Gbit/s each way and the CPU
# seconds the relay and the client spent on the 2 GiB. docs/PERFORMANCE.md, "Our client's protocols".
#
# PORTFORWARD=.build/release/portforward IO=epoll|uring ROUNDS=3 scripts/client-protocols.sh
set -euo pipefail
PORTFORWARD=${PORTFORWARD:-.build/release/portforward}
IO=${IO:-epoll}
ROUNDS=${ROUNDS:-3}
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
gbits() {
    python3 -c 'import json, sys
d = json.load(sys.stdin)
s = d.get("end", {}).get("sum_received")
print("%.2f" % (s["bits_per_second"] / 1e9) if s else "error: %s" % d.get("error"))'
}

target=$(free_port)
iperf3 -s -p "$target" >"$work/iperf3.log" 2>&1 &
pids+=($!)
echo "pods: [{namespace: default, name: local}]" >"$work/pods.yaml"
"$PORTFORWARD" relay --listen 127.0.0.1:0 --pods "$work/pods.yaml" --io "$IO" >"$work/relay.log" 2>&1 &
relay=$!
pids+=($relay)
for _ in $(seq 50); do grep -q "Relay listening on" "$work/relay.log" && break; sleep 0.1; done
server=$(sed -n 's/^Relay listening on \([^ ]*\).*/\1/p' "$work/relay.log")

for round in $(seq "$ROUNDS"); do
    for protocol in h2 spdy websocket; do
        local_port=$(free_port)
        "$PORTFORWARD" forward --server "http://$server" --protocol "$protocol" --io "$IO" local "$local_port:$target" \
            >"$work/forward.log" 2>&1 &
        forwarder=$!
        for _ in $(seq 50); do grep -q "Forwarding from 127.0.0.1" "$work/forward.log" && break; sleep 0.1; done
        relay0=$(cpu "$relay"); client0=$(cpu "$forwarder")
        up=$(iperf3 -c 127.0.0.1 -p "$local_port" -n 1G -J | gbits)
        sleep 0.3  # iperf3's server reopens its listener after each test
        down=$(iperf3 -c 127.0.0.1 -p "$local_port" -n 1G -R -J | gbits)
        sleep 0.3  # and again before the next protocol's upload (else: connection refused, now and then)
        relay1=$(cpu "$relay"); client1=$(cpu "$forwarder")
        kill "$forwarder"; wait "$forwarder" 2>/dev/null || true
        printf 'round %s %-9s up %s Gbit/s, down %s Gbit/s, CPU-s for 2 GiB: relay %.2f, client %.2f\n' \
            "$round" "$protocol" "$up" "$down" "$(echo "$relay1 - $relay0" | bc)" "$(echo "$client1 - $client0" | bc)"
    done
done
