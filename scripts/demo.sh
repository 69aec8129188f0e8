#!/usr/bin/env bash
# Shows portforward working end to end, as a new user would run it:
#   a "pod" (a network namespace running a small HTTP server on port 8080),
#   a relay that knows that pod, and `portforward forward` to it; then a page
#   fetched through the forwarded local port.
# Without root or network namespaces the pod runs in the host network instead.
set -euo pipefail

cd "$(dirname "$0")/.."
bin=${PORTFORWARD:-.build/release/portforward}
netns=pf-demo
timeout=10          # seconds to wait for each process to come up

say()  { printf '\n==> %s\n' "$*"; }
fail() { printf '\ndemo failed: %s\n' "$*" >&2; exit 1; }
show() { printf '    $ %s\n' "$*"; }

[ -x "$bin" ] || fail "$bin not found or not executable: run 'make build' first (or set PORTFORWARD)"
for tool in python3 curl; do
    command -v "$tool" >/dev/null || fail "$tool is missing: run 'make deps'"
done

work=$(mktemp -d /tmp/pf-demo.XXXXXX)
pids=()
netns_created=false

cleanup() {
    local status=$?
    # The forwarder first: on SIGTERM it closes its streams and sends GOAWAY.
    for (( i=${#pids[@]}-1; i>=0; i-- )); do
        stop "${pids[i]}"
    done
    if $netns_created; then ip netns delete "$netns" 2>/dev/null || true; fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop() {  # SIGTERM, then SIGKILL if the process is still there after 3 s
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 30); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# accepts HOST PORT [COMMAND PREFIX...]: true once a TCP connect succeeds.
accepts() {
    local host=$1 port=$2; shift 2
    "$@" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

# wait_for PID CHECK...: runs CHECK every 0.1 s until it succeeds; fails when the process
# dies or $timeout seconds pass.
wait_for() {
    local pid=$1; shift
    local deadline=$(( SECONDS + timeout ))
    until "$@"; do
        kill -0 "$pid" 2>/dev/null || return 1
        (( SECONDS < deadline )) || return 1
        sleep 0.1
    done
}

# why PID: why a wait_for on PID failed.
why() { if kill -0 "$1" 2>/dev/null; then echo "within ${timeout}s"; else echo "before it exited"; fi; }

dump() {  # prints a log file, indented, for a failure report
    [ -s "$1" ] && sed 's/^/    | /' "$1" >&2 || true
}

# still_running PID NAME LOG: fails the demo, showing LOG, when PID has exited.
still_running() {
    kill -0 "$1" 2>/dev/null && return 0
    local status=0
    wait "$1" 2>/dev/null || status=$?
    dump "$3"
    fail "$2 exited (status $status) after the connection, instead of going on serving"
}

mkdir "$work/www"
cat >"$work/www/index.html" <<'EOF'
<!doctype html>
<title>portforward demo</title>
<h1>Hello from pod default/demo</h1>
EOF

# --- The pod ---------------------------------------------------------------------------------
start_pod_in_netns() {
    [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null || return 1
    ip netns delete "$netns" 2>/dev/null || true   # left over from an interrupted run
    ip netns add "$netns" 2>/dev/null || return 1
    netns_created=true
    ip netns exec "$netns" ip link set lo up 2>/dev/null || return 1
    # `ip netns exec` execs the command, so $! is the server itself.
    ip netns exec "$netns" python3 -m http.server 8080 --bind 127.0.0.1 --directory "$work/www" \
        >"$work/pod.log" 2>&1 &
    pod_pid=$!
    pids+=("$pod_pid")
    if ! wait_for "$pod_pid" accepts 127.0.0.1 8080 ip netns exec "$netns"; then
        stop "$pod_pid"
        return 1
    fi
    pod_port=8080
    pod_entry="{namespace: default, name: demo, netns: /run/netns/$netns}"
}

start_pod_on_host() {
    pod_port=$(free_port)
    python3 -m http.server "$pod_port" --bind 127.0.0.1 --directory "$work/www" >"$work/pod.log" 2>&1 &
    pod_pid=$!
    pids+=("$pod_pid")
    wait_for "$pod_pid" accepts 127.0.0.1 "$pod_port" \
        || { dump "$work/pod.log"; fail "the demo HTTP server did not start on 127.0.0.1:$pod_port $(why "$pod_pid")"; }
    pod_entry="{namespace: default, name: demo}"
}

say "Starting pod default/demo: a small HTTP server"
if start_pod_in_netns; then
    echo "    in network namespace $netns, on port 8080:"
    show "ip netns exec $netns python3 -m http.server 8080 --bind 127.0.0.1"
else
    if $netns_created; then ip netns delete "$netns" 2>/dev/null || true; netns_created=false; fi
    echo "    Network namespaces are not available here (they need root and CAP_SYS_ADMIN):"
    start_pod_on_host
    echo "    the pod runs in the host network instead, on port $pod_port."
    show "python3 -m http.server $pod_port --bind 127.0.0.1"
fi

cat >"$work/pods.yaml" <<EOF
pods:
  - $pod_entry
EOF
echo "    Pod registry $work/pods.yaml:"
sed 's/^/      /' "$work/pods.yaml"

# --- The relay (the node side) ---------------------------------------------------------------
relay_port=$(free_port)
say "Starting the relay on 127.0.0.1:$relay_port"
show "portforward relay --listen 127.0.0.1:$relay_port --node demo-node --pods $work/pods.yaml"
"$bin" relay --listen "127.0.0.1:$relay_port" --node demo-node --pods "$work/pods.yaml" \
    >"$work/relay.log" 2>&1 &
relay_pid=$!
pids+=("$relay_pid")
relay_ready() { grep -qs '^Relay listening on' "$work/relay.log" || accepts 127.0.0.1 "$relay_port"; }
wait_for "$relay_pid" relay_ready \
    || { dump "$work/relay.log"; fail "the relay did not become ready on 127.0.0.1:$relay_port $(why "$relay_pid")"; }
sed 's/^/    /' "$work/relay.log"

# --- The client --------------------------------------------------------------------------------
say "Forwarding a free local port to port $pod_port of pod default/demo"
show "portforward forward --server http://127.0.0.1:$relay_port -n default demo :$pod_port"
"$bin" forward --server "http://127.0.0.1:$relay_port" -n default demo ":$pod_port" \
    >"$work/forward.out" 2>"$work/forward.err" &
forward_pid=$!
pids+=("$forward_pid")
forwarding_line() { grep -qsE "^Forwarding from 127\.0\.0\.1:[0-9]+ -> $pod_port\$" "$work/forward.out"; }
if ! wait_for "$forward_pid" forwarding_line; then
    dump "$work/forward.out"; dump "$work/forward.err"
    fail "portforward forward printed no 'Forwarding from 127.0.0.1:PORT -> $pod_port' line $(why "$forward_pid")"
fi
local_port=$(sed -nE "s/^Forwarding from 127\.0\.0\.1:([0-9]+) -> $pod_port\$/\1/p" "$work/forward.out" | head -n 1)

say "Fetching the page through the forwarded port"
show "curl -sS http://127.0.0.1:$local_port/"
page=$(curl -sS --noproxy "*" --max-time 5 "http://127.0.0.1:$local_port/") || {
    dump "$work/forward.err"; dump "$work/relay.log"
    fail "curl through 127.0.0.1:$local_port failed"
}
sed 's/^/    /' <<<"$page"
grep -q 'Hello from pod default/demo' <<<"$page" || fail "the page did not come from the demo pod"

# The forwarder prints its line per connection as it accepts it, naming the local port as
# kubectl does; give it a moment, and the connection's close time to reach both processes (they
# must outlive it).
handled() { grep -qs "^Handling connection for $local_port\$" "$work/forward.out"; }
timeout=2 wait_for "$forward_pid" handled || true
sleep 0.3

say "What portforward forward printed"
sed 's/^/    /' "$work/forward.out"
if [ -s "$work/forward.err" ]; then
    echo "    (stderr)"
    sed 's/^/    /' "$work/forward.err"
fi
handled || fail "portforward forward did not print 'Handling connection for $local_port'"
still_running "$forward_pid" "portforward forward" /dev/null
still_running "$relay_pid" "the relay" "$work/relay.log"

say "What the pod's HTTP server logged"
sed 's/^/    /' "$work/pod.log"

say "Done in ${SECONDS}s: the page went curl -> forward -> relay -> pod and back. Cleaning up."
