# Shared by scripts/bench.sh and scripts/soak.sh (sourced, not run): a work folder and the
# processes started, cleaned up on exit (with the network namespace $ns), and waiting for ports.
# The sourcing script defines `fail`, `ns` and LIB_WORK_PREFIX first.

work=$(mktemp -d "/tmp/${LIB_WORK_PREFIX:-pf}.XXXXXX")
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
