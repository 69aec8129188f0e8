#!/usr/bin/env bash
# The relay memory an idle TLS connection costs: a TLS relay (epoll), COUNT connections that
# finish their handshakes and stay idle (Tests/Peers/tlspeer.py), the relay's VmRSS before, with
# them, and after they closed. Usage: scripts/tls-idle-memory.sh [BINARY] [COUNT]
# (docs/PERFORMANCE.md "TLS"). Needs python3 and openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-.build/release/portforward} count=${2:-1000}
work=$(mktemp -d /tmp/pf-tls-idle.XXXXXX)
trap 'kill "$relay" 2>/dev/null || true; rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/ca.key" -out "$work/ca.crt" \
    -subj /CN=idle-ca -days 1 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/relay.key" -out "$work/relay.csr" \
    -subj /CN=relay 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$work/san.cnf"
openssl x509 -req -in "$work/relay.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
    -out "$work/relay.crt" -days 1 -extfile "$work/san.cnf" 2>/dev/null
printf 'pods: []\n' >"$work/pods.yaml"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" relay --listen "127.0.0.1:$port" --node idle --pods "$work/pods.yaml" --io epoll \
    --tls-cert-file "$work/relay.crt" --tls-private-key-file "$work/relay.key" >"$work/relay.log" 2>&1 &
relay=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
sleep 0.5
rss() { awk '/VmRSS/ { print $2 }' "/proc/$relay/status"; }
before=$(rss)
coproc idle { python3 Tests/Peers/tlspeer.py idle 127.0.0.1 "$port" "$count" "$work/ca.crt"; }
read -r ready <&"${idle[0]}"
sleep 0.5
during=$(rss)
exec {idle[1]}>&-
wait "$idle_PID" 2>/dev/null || true
sleep 1
after=$(rss)
echo "$count idle TLS connections ($ready): relay RSS $before KiB before, $during with them, $after after;" \
     "$(( (during - before) / count )) KiB per connection"
