#!/usr/bin/env bash
# Soak test (`make soak`): streams opening, moving data, half-closing and resetting in a loop,
# against each reactor backend in turn (epoll, then io_uring), each with a relay and a forwarder
# of its own, through to one echo server in a pod's network namespace. The driver is
# scripts/soak.py (its docstring lists the mix and the checks); this script sets up, runs it per
# backend, and cleans up.
#
# Passes when, for both backends: no byte lost or corrupted, no unexpected error, relay and
# forwarder still running with nothing on stderr, descriptors back to the baseline after the
# traffic, and RSS flat (see SOAK_RSS_GROWTH). Otherwise exits 1 with one line per failure.
#
# Needs root (network namespaces). Writes soak-results/soak-<time>-<backend>.{csv,json,log},
# the processes' output (…-<backend>-relay.out, …), and soak-results/latest.txt (the summaries).
#
# Knobs: PORTFORWARD (binary), SOAK_SECONDS (600: traffic time in all, half per backend; setup,
# drain and the idle wait come on top, about 30 s per backend), SOAK_CONNECTIONS (500 in flight),
# SOAK_BACKENDS ("epoll uring"), SOAK_COPY (the relay's and forwarder's --copy; default theirs),
# SOAK_RSS_GROWTH (10: percent the last third's median RSS may exceed the first third's),
# SOAK_FD_SLACK (4), SOAK_MIX (the busy kinds' weights, "echo=45,halfclose=30,reset=25"), SOAK_SEED (the driver's random seed; default random, printed).
set -euo pipefail

cd "$(dirname "$0")/.."
bin=${PORTFORWARD:-.build/release/portforward}
total_seconds=${SOAK_SECONDS:-600}
connections=${SOAK_CONNECTIONS:-500}
backends=(${SOAK_BACKENDS:-epoll uring})
rss_growth=${SOAK_RSS_GROWTH:-10}
fd_slack=${SOAK_FD_SLACK:-4}
seed=${SOAK_SEED:-$RANDOM$RANDOM}
copy_args=()
[ -n "${SOAK_COPY:-}" ] && copy_args=(--copy "$SOAK_COPY")
out_dir=soak-results
ns=pf-soak
echo_port=7300

fail() { printf 'soak: %s\n' "$*" >&2; exit 1; }
note() { printf 'soak: %s\n' "$*" >&2; }

[ -x "$bin" ] || fail "$bin not found or not executable: run 'make build' first (or set PORTFORWARD)"
bin=$(realpath "$bin")
[ "$(id -u)" -eq 0 ] || fail "needs root: the echo server runs in a network namespace"
for tool in ip python3; do
    command -v "$tool" >/dev/null || fail "$tool is missing: run 'make deps'"
done
per_backend=$(( total_seconds / ${#backends[@]} ))
(( per_backend >= 10 )) || fail "SOAK_SECONDS=$total_seconds leaves under 10 s per backend"

mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%d-%H%M%S)
work=$(mktemp -d /tmp/pf-soak.XXXXXX)
pids=()
cleanup() {
    local status=$?
    for (( i=${#pids[@]}-1; i>=0; i-- )); do kill "${pids[i]}" 2>/dev/null || true; done
    sleep 0.3
    for (( i=${#pids[@]}-1; i>=0; i-- )); do kill -KILL "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# accepts PORT [prefix...]: true once a TCP connect to 127.0.0.1:PORT succeeds.
accepts() {
    local port=$1; shift
    "$@" bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$port" 2>/dev/null
}

# wait_port PID PORT WHAT [prefix...]: up to 10 s.
wait_port() {
    local pid=$1 port=$2 what=$3; shift 3
    for _ in $(seq 100); do
        accepts "$port" "$@" && return 0
        kill -0 "$pid" 2>/dev/null || fail "$what exited before it listened on $port"
        sleep 0.1
    done
    fail "$what did not listen on $port within 10 s"
}

# stop PID: SIGTERM, then SIGKILL after 3 s.
stop() {
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

in_ns=(ip netns exec "$ns")

# --- The pod: a network namespace with an echo server --------------------------------------------
ip netns delete "$ns" 2>/dev/null || true
ip netns add "$ns"
"${in_ns[@]}" ip link set lo up
# `ip netns exec` execs the command, so $! is the server itself (the driver watches its fds).
"${in_ns[@]}" "$bin" bench --serve echo --port "$echo_port" --io epoll >"$work/echo.log" 2>&1 &
echo_pid=$!; pids+=($echo_pid); wait_port $echo_pid "$echo_port" "the echo server" "${in_ns[@]}"
printf 'pods:\n  - {namespace: soak, name: echo, netns: /run/netns/%s}\n' "$ns" >"$work/pods.yaml"

note "${#backends[@]} backends (${backends[*]}), ${per_backend}s of traffic each, $connections connections in flight, seed $seed"
verdicts=()
: >"$work/summaries.txt"
for io in "${backends[@]}"; do
    base=$out_dir/soak-$stamp-$io
    relay_port=$(free_port)
    "$bin" relay --listen "127.0.0.1:$relay_port" --node soak --pods "$work/pods.yaml" --io "$io" \
        "${copy_args[@]}" >"$base-relay.out" 2>"$base-relay.err" &
    relay_pid=$!; pids+=($relay_pid); wait_port $relay_pid "$relay_port" "portforward relay --io $io"
    local_port=$(free_port)
    # Both listeners (127.0.0.1 and ::1): the driver uses each for half of its connections.
    "$bin" forward --server "http://127.0.0.1:$relay_port" --io "$io" "${copy_args[@]}" \
        -n soak echo "$local_port:$echo_port" >"$base-forward.out" 2>"$base-forward.err" &
    forward_pid=$!; pids+=($forward_pid); wait_port $forward_pid "$local_port" "portforward forward --io $io"
    sleep 0.5  # the ::1 listener and the first steps of both processes, before the baseline

    if python3 scripts/soak.py --label "$io" --port "$local_port" --seconds "$per_backend" \
        --connections "$connections" --seed "$seed" ${SOAK_MIX:+--mix "$SOAK_MIX"} \
        --relay-pid "$relay_pid" --forward-pid "$forward_pid" --echo-pid "$echo_pid" \
        --relay-out "$base-relay.out" --relay-err "$base-relay.err" \
        --forward-out "$base-forward.out" --forward-err "$base-forward.err" \
        --csv "$base.csv" --summary "$base.json" \
        --rss-growth-percent "$rss_growth" --fd-slack "$fd_slack" 2>&1 | tee "$base.log"; then
        verdicts+=("$io: pass")
    else
        verdicts+=("$io: FAIL")
    fi
    sed -n '/^$/,$p' "$base.log" | sed '1d' >>"$work/summaries.txt"

    stop "$forward_pid"
    stop "$relay_pid"
    # The "Handling connection for" lines are many: keep their count, not the lines.
    handled=$(grep -c '^Handling connection for ' "$base-forward.out" || true)
    grep -v '^Handling connection for ' "$base-forward.out" >"$work/forward.out" || true
    printf '(%s "Handling connection for" lines)\n' "$handled" >>"$work/forward.out"
    mv "$work/forward.out" "$base-forward.out"
done

{
    printf 'soak %s: %s s of traffic per backend, %s connections in flight, seed %s, copy %s\n' \
        "$stamp" "$per_backend" "$connections" "$seed" "${SOAK_COPY:-default}"
    printf '%s; %s, %s cores\n' "$bin" "$(uname -r)" "$(nproc)"
    cat "$work/summaries.txt"
} >"$out_dir/soak-$stamp.txt"
cp "$out_dir/soak-$stamp.txt" "$out_dir/latest.txt"
note "wrote $out_dir/soak-$stamp.txt (and latest.txt), and per backend .csv, .json, .log and the processes' output"

failed=$(grep -h '^soak [a-z]*: FAIL: ' "$out_dir"/soak-"$stamp"-*.log | sed 's/^soak \([a-z]*\): FAIL: /\1: /' | awk '{ printf "%s%s", (NR > 1 ? " | " : ""), $0 }' || true)
if [ -n "$failed" ]; then
    fail "FAIL: $failed"
fi
note "PASS (${verdicts[*]})"
