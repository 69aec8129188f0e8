#!/usr/bin/env bash
# Side-by-side benchmark (`make bench`): the same loads through
#   direct loopback (no relay), a socat relay, the reference design (socat -> nsenter + socat),
#   ssh -L (aes128-gcm; when sshd can be installed), portforward (relay + forward) with epoll,
#   and with io_uring,
# interleaved (every round runs each figure on every row in turn, so machine drift hits all rows
# alike), BENCH_ROUNDS rounds (3), and prints the medians with ratios to the reference design.
#
# Figures: iperf3 throughput with 1 and 8 connections (client -> server), and with 1 the other way
# (down1: iperf3 -R, server -> client); connection rate (connect, 4-byte echo,
# close) serial and 4 in parallel, measured by a minimal C client (Benchmarks/c/connrate.c,
# blocking calls, one process per parallel connection; built here with cc) through the row's
# local port (for portforward rows: through the `portforward forward` client, a new TCP
# connection and so a new stream each time); fan-out for portforward rows
# (`portforward bench fanout` straight to the relay: 10,000 streams on one connection).
# The target servers (iperf3 -s, and a minimal C epoll echo server, Benchmarks/c/echo-server.c)
# run in a network
# namespace. Rows that are a single plain hop (direct, socat, ssh -L) run client, relay and
# server on the namespace's loopback; the reference design and portforward cross from the host
# into the namespace, as they do in real use.
#
# Needs root (network namespaces). Writes bench-results/bench-<time>.{txt,json} and
# bench-results/latest.{txt,json}.
#
# Knobs: PORTFORWARD (binary), BENCH_ROUNDS (3), BENCH_SECONDS (3, per iperf3 run),
# BENCH_RATE_SECONDS (2, per connection-rate run), BENCH_FANOUT (10000 streams),
# BENCH_ROWS (space-separated subset of: direct socat reference ssh pf-epoll pf-uring pf-tls-epoll pf-tls-uring
# kubectl-ws kubectl-spdy kubectl-ws-nsenter kubectl-spdy-nsenter),
# BENCH_FIGURES (space-separated subset of: tput1 down1 tput8 rate1 rate4 fanout; all by default: the
# others are left out, for quicker A/B runs of one figure),
# BENCH_COPY (the relay's and client's --copy; default: their own default),
# BENCH_BASELINE (another portforward binary, e.g. an older commit's: adds the rows base-epoll and
# base-uring, its relay and client under the same loads in the same rounds; the load generators
# stay this binary's).
# BENCH_ROWS may name base-epoll, base-uring, base-tls-epoll and base-tls-uring (the baseline over TLS,
# as pf-tls-*) only with BENCH_BASELINE.
# kubectl-ws, kubectl-spdy (in the default rows): kubectl (BENCH_KUBECTL; default: the machine's
# 1.32, /usr/lib/google-cloud-sdk/bin/kubectl.1.32, else the venv's from `make venv`, else the PATH's) port-forwarding
# through a relay (epoll, the same binary as pf-epoll's) in each of its modes, WebSocket tunnel and
# plain SPDY; skipped with a reason when kubectl is not installed. Not run by default:
# kubectl-ws-nsenter, kubectl-spdy-nsenter (the same with the relay's nsenter+socat connector, the
# reference design's node side).
# For rows with a relay and a client process (portforward's, kubectl's): their CPU per GB over the
# one-connection runs and per connection over the serial connection-rate runs.
# pf-tls-epoll, pf-tls-uring (in the default rows): portforward over TLS (certificates made for the
# run with openssl; TLS 1.3 with TLS_AES_128_GCM_SHA256 only, to compare with ssh -L's
# aes128-gcm); no fan-out figure (the load generator speaks h2c only).
set -euo pipefail

cd "$(dirname "$0")/.."
bin=${PORTFORWARD:-.build/release/portforward}
rounds=${BENCH_ROUNDS:-3}
seconds=${BENCH_SECONDS:-3}
rate_seconds=${BENCH_RATE_SECONDS:-2}
fanout_streams=${BENCH_FANOUT:-10000}
figures_wanted=${BENCH_FIGURES:-tput1 down1 tput8 rate1 rate4 fanout}
baseline=${BENCH_BASELINE:-}
default_rows="direct socat reference ssh pf-epoll pf-uring pf-tls-epoll pf-tls-uring kubectl-ws kubectl-spdy"
[ -n "$baseline" ] && default_rows+=" base-epoll base-uring"
rows=(${BENCH_ROWS:-$default_rows})
copy_args=()
[ -n "${BENCH_COPY:-}" ] && copy_args=(--copy "$BENCH_COPY")
out_dir=bench-results
# Per run: two bench runs at once (another checkout, another user) must not delete each other's namespace.
ns=pf-bench-side-$$
iperf_port=5201
echo_port=7300

fail() { printf 'bench: %s\n' "$*" >&2; exit 1; }
note() { printf 'bench: %s\n' "$*" >&2; }

[ -x "$bin" ] || fail "$bin not found or not executable: run 'make build' first (or set PORTFORWARD)"
bin=$(realpath "$bin")
if [ -n "$baseline" ]; then
    [ -x "$baseline" ] || fail "BENCH_BASELINE=$baseline is not an executable"
    baseline=$(realpath "$baseline")
fi
[ "$(id -u)" -eq 0 ] || fail "needs root: the target servers run in a network namespace"
for tool in ip iperf3 socat nsenter python3 timeout cc; do
    command -v "$tool" >/dev/null || fail "$tool is missing: run 'make deps'"
done

LIB_WORK_PREFIX=pf-bench
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

in_ns=(ip netns exec "$ns")

# The load generator and the echo target: small C programs, so that neither is the bottleneck.
# A C compiler: $CC, else cc, else the clang that comes with the Swift toolchain.
CC=${CC:-$(command -v cc || command -v clang || echo "$(dirname "$(command -v swift)")/clang")}
"$CC" -O2 -o "$work/connrate" Benchmarks/c/connrate.c || fail "$CC could not build Benchmarks/c/connrate.c"
"$CC" -O2 -o "$work/echo-server" Benchmarks/c/echo-server.c || fail "$CC could not build Benchmarks/c/echo-server.c"

# --- The pod: a network namespace with iperf3 and an echo server --------------------------------
ip netns delete "$ns" 2>/dev/null || true
ip netns add "$ns"
"${in_ns[@]}" ip link set lo up
"${in_ns[@]}" iperf3 -s -p "$iperf_port" >"$work/iperf3-server.log" 2>&1 &
pids+=($!); wait_port $! "$iperf_port" "iperf3 -s" "${in_ns[@]}"
"${in_ns[@]}" "$work/echo-server" "$echo_port" >"$work/echo.log" 2>&1 &
pids+=($!); wait_port $! "$echo_port" "the echo server" "${in_ns[@]}"
printf 'pods:\n  - {namespace: bench, name: target, netns: /run/netns/%s}\n' "$ns" >"$work/pods.yaml"

# Per row: where the client runs ("ns" or "host"), and its local ports for iperf3 and echo.
declare -A where iperf_at echo_at relay_at skip_reason pid_of
kubectl_bin=${BENCH_KUBECTL:-}
if [ -z "$kubectl_bin" ]; then
    for candidate in /usr/lib/google-cloud-sdk/bin/kubectl.1.32 .venv/bin/kubectl "$(command -v kubectl || true)"; do
        [ -n "$candidate" ] && [ -x "$candidate" ] && { kubectl_bin=$(realpath "$candidate"); break; }
    done
fi
kubectl_version=$([ -x "$kubectl_bin" ] && "$kubectl_bin" version --client -o json 2>/dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])' 2>/dev/null || echo kubectl)

# direct: no relay, inside the namespace.
where[direct]=ns; iperf_at[direct]=$iperf_port; echo_at[direct]=$echo_port

start_socat_relay() {
    where[socat]=ns; iperf_at[socat]=15201; echo_at[socat]=17300
    "${in_ns[@]}" socat TCP-LISTEN:15201,fork,reuseaddr TCP:127.0.0.1:$iperf_port 2>/dev/null &
    pids+=($!); wait_port $! 15201 "socat" "${in_ns[@]}"
    "${in_ns[@]}" socat TCP-LISTEN:17300,fork,reuseaddr TCP:127.0.0.1:$echo_port 2>/dev/null &
    pids+=($!); wait_port $! 17300 "socat" "${in_ns[@]}"
}

start_reference() {
    where[reference]=host; iperf_at[reference]=$(free_port); echo_at[reference]=$(free_port)
    socat TCP-LISTEN:${iperf_at[reference]},fork,reuseaddr \
        EXEC:"nsenter --net=/run/netns/$ns socat STDIO TCP\:localhost\:$iperf_port" 2>/dev/null &
    pids+=($!); wait_port $! "${iperf_at[reference]}" "socat (reference design)"
    socat TCP-LISTEN:${echo_at[reference]},fork,reuseaddr \
        EXEC:"nsenter --net=/run/netns/$ns socat STDIO TCP\:localhost\:$echo_port" 2>/dev/null &
    pids+=($!); wait_port $! "${echo_at[reference]}" "socat (reference design)"
}

# ssh -L: sshd and the ssh client in the namespace, aes128-gcm, a key made for this run.
start_ssh() {
    local sshd=/usr/sbin/sshd
    if [ ! -x "$sshd" ]; then
        note "installing openssh-server for the ssh -L row (no service is started)"
        local policy_made=false
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy_made=true
        fi
        if ! (export DEBIAN_FRONTEND=noninteractive
              timeout 300 apt-get install -y -q --no-install-recommends openssh-server >"$work/apt.log" 2>&1 \
              || { timeout 120 apt-get update -q >>"$work/apt.log" 2>&1 &&
                   timeout 300 apt-get install -y -q --no-install-recommends openssh-server >>"$work/apt.log" 2>&1; }); then
            $policy_made && rm -f /usr/sbin/policy-rc.d
            skip_reason[ssh]="openssh-server could not be installed (see apt-get install openssh-server)"
            return 1
        fi
        $policy_made && rm -f /usr/sbin/policy-rc.d
    fi
    command -v ssh >/dev/null && command -v ssh-keygen >/dev/null \
        || { skip_reason[ssh]="the ssh client is missing"; return 1; }
    mkdir -p /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$work/user_key"
    cp "$work/user_key.pub" "$work/authorized_keys"
    cat >"$work/sshd_config" <<EOF
Port 2222
ListenAddress 127.0.0.1
HostKey $work/host_key
PidFile $work/sshd.pid
AuthorizedKeysFile $work/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
Ciphers aes128-gcm@openssh.com
EOF
    "${in_ns[@]}" "$sshd" -D -e -f "$work/sshd_config" >"$work/sshd.log" 2>&1 &
    local sshd_pid=$!
    pids+=($sshd_pid)
    for _ in $(seq 50); do accepts 2222 "${in_ns[@]}" && break; sleep 0.1; done
    accepts 2222 "${in_ns[@]}" || { skip_reason[ssh]="sshd did not start: $(tail -n 1 "$work/sshd.log")"; return 1; }
    where[ssh]=ns; iperf_at[ssh]=25201; echo_at[ssh]=27300
    "${in_ns[@]}" ssh -N -F /dev/null -i "$work/user_key" -p 2222 -c aes128-gcm@openssh.com \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
        -o ExitOnForwardFailure=yes -o LogLevel=ERROR \
        -L 127.0.0.1:25201:127.0.0.1:$iperf_port -L 127.0.0.1:27300:127.0.0.1:$echo_port \
        root@127.0.0.1 >"$work/ssh.log" 2>&1 &
    local ssh_pid=$!
    pids+=($ssh_pid)
    for _ in $(seq 50); do accepts 27300 "${in_ns[@]}" && return 0; kill -0 $ssh_pid 2>/dev/null || break; sleep 0.1; done
    skip_reason[ssh]="ssh -L did not come up: $(tail -n 1 "$work/ssh.log")"
    return 1
}

# kubectl port-forward through a relay (epoll): MODE ws (kubectl 1.31+'s default, SPDY inside a
# WebSocket) or spdy (plain SPDY/3.1), CONNECTOR native or nsenter (the reference design's node
# side: nsenter + socat per connection).
start_kubectl() {  # ROW MODE CONNECTOR
    local row=$1 mode=$2 connector=$3
    [ -x "$kubectl_bin" ] || { skip_reason[$row]="no kubectl is installed (BENCH_KUBECTL)"; return 1; }
    local relay_port; relay_port=$(free_port)
    "$bin" relay --listen "127.0.0.1:$relay_port" --node bench --pods "$work/pods.yaml" --io epoll \
        --connector "$connector" "${copy_args[@]}" >"$work/relay-$row.log" 2>&1 &
    pids+=($!); pid_of[relay-$row]=$!; wait_port $! "$relay_port" "portforward relay (for $row)"
    printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: r\n  cluster: {server: "http://127.0.0.1:%s"}\ncontexts:\n- name: r\n  context: {cluster: r, namespace: bench, user: u}\ncurrent-context: r\nusers:\n- name: u\n  user: {}\n' \
        "$relay_port" >"$work/kubeconfig-$row"
    where[$row]=host; relay_at[$row]=$relay_port
    iperf_at[$row]=$(free_port); echo_at[$row]=$(free_port)
    local websockets=true
    [ "$mode" = spdy ] && websockets=false
    HOME=$work KUBECONFIG="$work/kubeconfig-$row" KUBECTL_PORT_FORWARD_WEBSOCKETS=$websockets \
        "$kubectl_bin" --cache-dir "$work/kube-cache-$row" port-forward --address 127.0.0.1 pod/target \
        "${iperf_at[$row]}:$iperf_port" "${echo_at[$row]}:$echo_port" >"$work/kubectl-$row.log" 2>&1 &
    pids+=($!); wait_port $! "${echo_at[$row]}" "kubectl port-forward ($row)"
    pid_of[client-$row]=$!
}

# TLS rows: a CA and a relay certificate for 127.0.0.1, made once per run.
make_tls_files() {
    [ -f "$work/tls-ca.crt" ] && return 0
    command -v openssl >/dev/null || return 1
    printf 'subjectAltName=IP:127.0.0.1\n' >"$work/tls-san.cnf"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/tls-ca.key" \
        -out "$work/tls-ca.crt" -subj /CN=bench-ca -days 1 2>/dev/null &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/tls-relay.key" \
        -out "$work/tls-relay.csr" -subj /CN=relay 2>/dev/null &&
    openssl x509 -req -in "$work/tls-relay.csr" -CA "$work/tls-ca.crt" -CAkey "$work/tls-ca.key" -CAcreateserial \
        -out "$work/tls-relay.crt" -days 1 -extfile "$work/tls-san.cnf" 2>/dev/null
}

# portforward: a relay that knows the pod, and `portforward forward` for both target ports.
# With TLS (4th argument "tls"): the relay's port is TLS, the client's URL https, AES-128-GCM only.
start_portforward() {  # ROW IO [BINARY [tls]]
    local row=$1 io=$2 binary=${3:-$bin} tls=${4:-}
    local relay_port; relay_port=$(free_port)
    local relay_tls=() client_tls=() scheme=http
    if [ "$tls" = tls ]; then
        make_tls_files || { skip_reason[$row]="openssl could not make the certificates"; return 1; }
        relay_tls=(--tls-cert-file "$work/tls-relay.crt" --tls-private-key-file "$work/tls-relay.key"
                   --tls-cipher-suites TLS_AES_128_GCM_SHA256)
        client_tls=(--certificate-authority "$work/tls-ca.crt" --tls-cipher-suites TLS_AES_128_GCM_SHA256)
        scheme=https
    fi
    "$binary" relay --listen "127.0.0.1:$relay_port" --node bench --pods "$work/pods.yaml" --io "$io" \
        "${relay_tls[@]}" "${copy_args[@]}" >"$work/relay-$row.log" 2>&1 &
    pids+=($!); pid_of[relay-$row]=$!; wait_port $! "$relay_port" "portforward relay --io $io"
    where[$row]=host; relay_at[$row]=$relay_port
    iperf_at[$row]=$(free_port); echo_at[$row]=$(free_port)
    # The per-connection "Handling connection" lines go to a file, as a user's terminal would take them.
    "$binary" forward --server "$scheme://127.0.0.1:$relay_port" "${client_tls[@]}" --io "$io" "${copy_args[@]}" --address 127.0.0.1 \
        -n bench target "${iperf_at[$row]}:$iperf_port" "${echo_at[$row]}:$echo_port" \
        >"$work/forward-$row.log" 2>&1 &
    pids+=($!); pid_of[client-$row]=$!; wait_port $! "${echo_at[$row]}" "portforward forward --io $io"
}

active=()
for row in "${rows[@]}"; do
    case $row in
        direct) active+=(direct) ;;
        socat) start_socat_relay && active+=(socat) ;;
        reference) start_reference && active+=(reference) ;;
        ssh) if start_ssh; then active+=(ssh); else note "skipping ssh -L: ${skip_reason[ssh]}"; fi ;;
        pf-epoll) start_portforward pf-epoll epoll && active+=(pf-epoll) ;;
        pf-uring) start_portforward pf-uring uring && active+=(pf-uring) ;;
        pf-tls-epoll|pf-tls-uring)
            if start_portforward "$row" "${row#pf-tls-}" "$bin" tls; then active+=("$row"); else note "skipping $row: ${skip_reason[$row]}"; fi ;;
        base-epoll|base-uring)
            [ -n "$baseline" ] || fail "row $row needs BENCH_BASELINE"
            start_portforward "$row" "${row#base-}" "$baseline" && active+=("$row") ;;
        base-tls-epoll|base-tls-uring)
            [ -n "$baseline" ] || fail "row $row needs BENCH_BASELINE"
            if start_portforward "$row" "${row#base-tls-}" "$baseline" tls; then active+=("$row"); else note "skipping $row: ${skip_reason[$row]}"; fi ;;
        kubectl-ws) start_kubectl "$row" ws native && active+=("$row") ;;
        kubectl-spdy) start_kubectl "$row" spdy native && active+=("$row") ;;
        kubectl-ws-nsenter) start_kubectl "$row" ws nsenter && active+=("$row") ;;
        kubectl-spdy-nsenter) start_kubectl "$row" spdy nsenter && active+=("$row") ;;
        *) fail "unknown row $row (BENCH_ROWS)" ;;
    esac
done

results=$work/results.tsv
: >"$results"

# record ROW FIGURE ROUND VALUE
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"; }

client() {  # client ROW COMMAND...: runs where the row's client runs
    local row=$1; shift
    if [ "${where[$row]}" = ns ]; then "${in_ns[@]}" "$@"; else "$@"; fi
}

cpu_seconds() {  # PID: utime+stime in seconds (0 when the process is gone)
    awk -v tck="$(getconf CLK_TCK)" '{ print ($14 + $15) / tck }' "/proc/$1/stat" 2>/dev/null || echo 0
}
switches() {  # PID: voluntary + involuntary context switches so far, all its threads (0 when the process is gone)
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'
}

run_iperf() {  # ROW PARALLEL ROUND [down]: down (one connection) is iperf3 -R, server -> client
    local row=$1 parallel=$2 round=$3 down=${4:-} json=$work/iperf-$1-$2-$3${4:-}.json
    local figure=tput$parallel suffix="" reverse=()
    [ -n "$down" ] && { figure=down1; suffix=_down; reverse=(-R); }
    # For rows with a relay and a client process (ours, or kubectl): their CPU over one-connection runs.
    local relay_pid=${pid_of[relay-$row]:-} client_pid=${pid_of[client-$row]:-}
    local relay_before=0 client_before=0 relay_switches=0 client_switches=0
    if [ "$parallel" = 1 ] && [ -n "$relay_pid" ]; then
        relay_before=$(cpu_seconds "$relay_pid"); client_before=$(cpu_seconds "$client_pid")
        relay_switches=$(switches "$relay_pid"); client_switches=$(switches "$client_pid")
    fi
    if client "$row" timeout $((seconds + 30)) iperf3 -c 127.0.0.1 -p "${iperf_at[$row]}" -P "$parallel" \
            -t "$seconds" -O 1 "${reverse[@]}" -J >"$json" 2>"$json.err"; then
        record "$row" "$figure" "$round" "$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(d["end"]["sum_received"]["bits_per_second"] / 1e9)' "$json")"
        if [ "$parallel" = 1 ] && [ -n "$relay_pid" ]; then
            # Bytes of every interval, the omitted first second included, as the CPU counts it.
            python3 -c '
import json, sys
path, row, rnd, sfx, rb, ra, cb, ca, rsb, rsa, csb, csa = sys.argv[1:13]
intervals = json.load(open(path))["intervals"]
gigabytes = sum(i["sum"]["bytes"] for i in intervals) / 1e9
if gigabytes > 0:
    print(f"{row}\trelay_cpu{sfx}\t{rnd}\t{(float(ra) - float(rb)) / gigabytes}")
    print(f"{row}\tclient_cpu{sfx}\t{rnd}\t{(float(ca) - float(cb)) / gigabytes}")
    print(f"{row}\trelay_switches{sfx}\t{rnd}\t{(float(rsa) - float(rsb)) / gigabytes}")
    print(f"{row}\tclient_switches{sfx}\t{rnd}\t{(float(csa) - float(csb)) / gigabytes}")' \
                "$json" "$row" "$round" "$suffix" "$relay_before" "$(cpu_seconds "$relay_pid")" \
                "$client_before" "$(cpu_seconds "$client_pid")" \
                "$relay_switches" "$(switches "$relay_pid")" "$client_switches" "$(switches "$client_pid")" >>"$results"
        fi
    else
        note "iperf3 -P $parallel ${reverse[*]} through $row failed: $(tail -n 3 "$json.err" "$json" 2>/dev/null | tr '\n' ' ' | cut -c1-200)"
        record "$row" "$figure" "$round" nan
    fi
    sleep 0.2
}

run_rate() {  # ROW PARALLEL ROUND
    local row=$1 parallel=$2 round=$3 out=$work/rate-$1-$2-$3.out
    # Serial runs through a relay and a client process: their CPU per connection (warm-up included).
    local relay_pid=${pid_of[relay-$row]:-} client_pid=${pid_of[client-$row]:-} relay_before=0 client_before=0
    if [ "$parallel" = 1 ] && [ -n "$relay_pid" ]; then
        relay_before=$(cpu_seconds "$relay_pid"); client_before=$(cpu_seconds "$client_pid")
    fi
    if client "$row" timeout $((rate_seconds + 30)) "$work/connrate" 127.0.0.1 "${echo_at[$row]}" "$rate_seconds" 0.5 \
            "$parallel" >"$out" 2>"$out.err"; then
        record "$row" "rate$parallel" "$round" "$(cut -d' ' -f1 "$out")"
        record "$row" "p50_$parallel" "$round" "$(cut -d' ' -f2 "$out")"
        if [ "$parallel" = 1 ] && [ -n "$relay_pid" ]; then
            # connrate prints: connections/s, p50 us, connections made (warm-up included).
            local made; made=$(cut -d' ' -f3 "$out")
            if [ -n "$made" ] && [ "$made" -gt 0 ] 2>/dev/null; then
                record "$row" relay_us_per_conn "$round" "$(awk -v a="$relay_before" -v b="$(cpu_seconds "$relay_pid")" -v n="$made" 'BEGIN { print (b - a) * 1e6 / n }')"
                record "$row" client_us_per_conn "$round" "$(awk -v a="$client_before" -v b="$(cpu_seconds "$client_pid")" -v n="$made" 'BEGIN { print (b - a) * 1e6 / n }')"
            fi
        fi
    else
        note "connrate -P $parallel through $row failed: $(tail -n 3 "$out" "$out.err" | tr '\n' ' ')"
        record "$row" "rate$parallel" "$round" nan
    fi
}

run_fanout() {  # ROW ROUND
    local row=$1 round=$2 json=$work/fanout-$1-$2.json io=${1#*-}
    "$bin" bench fanout --server "http://127.0.0.1:${relay_at[$row]}" --pod bench/target --port "$echo_port" \
        --io "$io" -s "$fanout_streams" -t 2 --hold 0.5 -q --json "$json" >"$json.out" 2>&1 || true
    if [ -s "$json" ]; then
        python3 - "$json" "$row" "$round" >>"$results" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))["results"]
for key, name in (("open_rate_per_s", "fanout_rate"), ("streams_held", "fanout_held"),
                  ("churn_rate_per_s", "churn_rate"), ("ttfb_p99_us", "fanout_ttfb_p99")):
    print(f"{sys.argv[2]}\t{name}\t{sys.argv[3]}\t{d.get(key, 'nan')}")
EOF
    else
        note "fanout through $row failed: $(tail -n 3 "$json.out" | tr '\n' ' ')"
    fi
}

note "rows: ${active[*]}; $rounds rounds; iperf3 ${seconds}s (+1s omitted), connection rate ${rate_seconds}s"
started=$SECONDS
wanted() { [[ " $figures_wanted " == *" $1 "* ]]; }
for round in $(seq "$rounds"); do
    for figure in tput1 down1 tput8; do
        wanted "$figure" || continue
        for row in "${active[@]}"; do
            note "round $round/$rounds: $figure: $row"
            case $figure in
                tput1) run_iperf "$row" 1 "$round" ;;
                down1) run_iperf "$row" 1 "$round" down ;;
                tput8) run_iperf "$row" 8 "$round" ;;
            esac
        done
    done
    for parallel in 1 4; do
        wanted "rate$parallel" || continue
        for row in "${active[@]}"; do note "round $round/$rounds: connection rate x$parallel: $row"; run_rate "$row" "$parallel" "$round"; done
    done
    wanted fanout || continue
    for row in "${active[@]}"; do
        case $row in pf-tls-*|base-tls-*) ;; pf-*|base-*) note "round $round/$rounds: fan-out: $row"; run_fanout "$row" "$round" ;; esac
    done
done
elapsed=$((SECONDS - started))

# --- The table and the JSON --------------------------------------------------------------------------
mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%d-%H%M%S)
skipped=""
for row in "${rows[@]}"; do
    [ -n "${skip_reason[$row]:-}" ] && skipped+="$row=${skip_reason[$row]}"$'\n'
done
# The environment (kernel, cores, versions) as `portforward bench` reports it in its JSON.
env_json=$(python3 -c '
import glob, json, sys
for path in sorted(glob.glob(sys.argv[1] + "/rate-*.json")):
    try:
        print(json.dumps(json.load(open(path))["environment"])); break
    except Exception:
        pass
else:
    print("{}")' "$work")
KUBECTL_VERSION=$kubectl_version python3 - "$results" "$out_dir/bench-$stamp" "$rounds" "$seconds" "$rate_seconds" "$fanout_streams" "$elapsed" \
    "$env_json" "$skipped" "${copy_args[*]:-}" "${active[*]}" <<'EOF'
import json, math, os, platform, subprocess, sys, statistics
(results, base, rounds, seconds, rate_seconds, fanout_streams, elapsed,
 env_json, skipped, copy, active) = sys.argv[1:12]
rows_order = ["direct", "socat", "reference", "ssh", "pf-epoll", "pf-uring", "pf-tls-epoll", "pf-tls-uring", "base-epoll", "base-uring",
              "base-tls-epoll", "base-tls-uring",
              "kubectl-ws", "kubectl-spdy", "kubectl-ws-nsenter", "kubectl-spdy-nsenter"]
labels = {"direct": "direct loopback (no relay)", "socat": "socat relay",
          "reference": "reference design (socat -> nsenter + socat)", "ssh": "ssh -L (aes128-gcm)",
          "pf-epoll": "portforward, epoll", "pf-uring": "portforward, io_uring",
          "pf-tls-epoll": "portforward TLS (aes128-gcm), epoll", "pf-tls-uring": "portforward TLS (aes128-gcm), io_uring",
          "base-epoll": "baseline binary, epoll", "base-uring": "baseline binary, io_uring",
          "base-tls-epoll": "baseline binary TLS, epoll", "base-tls-uring": "baseline binary TLS, io_uring",
          "kubectl-ws": "KUBECTL (WebSocket) -> our relay", "kubectl-spdy": "KUBECTL (SPDY) -> our relay",
          "kubectl-ws-nsenter": "KUBECTL (WebSocket) -> relay, nsenter+socat",
          "kubectl-spdy-nsenter": "KUBECTL (SPDY) -> relay, nsenter+socat"}
labels = {row: label.replace("KUBECTL", "kubectl " + os.environ.get("KUBECTL_VERSION", "")) .replace("  ", " ")
          for row, label in labels.items()}
samples = {}
for line in open(results):
    row, figure, rnd, value = line.rstrip("\n").split("\t")
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    samples.setdefault((row, figure), []).append(v)

def median(row, figure):
    values = [v for v in samples.get((row, figure), []) if not math.isnan(v)]
    return statistics.median(values) if values else None

figures = [("tput1", "Gbit/s, 1 conn"), ("down1", "Gbit/s down, 1 conn"), ("tput8", "Gbit/s, 8 conn"), ("rate1", "conn/s serial"),
           ("rate4", "conn/s x4"), ("fanout_rate", "fan-out streams/s")]
rows = [r for r in rows_order if r in active.split()]
ref = {f: median("reference", f) for f, _ in figures}
# Fan-out has no reference row of its own: its ratio is to the reference design's serial
# connection rate (what the issue's target compares it with).
ref["fanout_rate"] = ref["rate1"]

def fmt(v):
    if v is None: return "-"
    if v >= 1000: return f"{v:,.0f}"
    if v >= 100: return f"{v:.0f}"
    if v >= 10: return f"{v:.1f}"
    return f"{v:.2f}"

def ratio(v, r):
    if v is None or not r: return ""
    x = v / r
    return f"({x:.1f}x)" if x < 100 else f"({x:,.0f}x)"

width = max(len(labels[r]) for r in rows) + 2
cells = []
for r in rows:
    line = [labels[r]]
    for f, _ in figures:
        v = median(r, f)
        line.append(f"{fmt(v)} {ratio(v, ref[f])}".strip())
    cells.append(line)
headers = ["", *[t for _, t in figures]]
colw = [max(len(headers[i]), *(len(c[i]) for c in cells)) for i in range(len(headers))]
out = []
out.append("  ".join(h.ljust(colw[i]) if i == 0 else h.rjust(colw[i]) for i, h in enumerate(headers)))
for c in cells:
    out.append("  ".join(x.ljust(colw[i]) if i == 0 else x.rjust(colw[i]) for i, x in enumerate(c)))
for io in ("epoll", "uring", "tls-epoll", "tls-uring"):
    new, old = f"pf-{io}", f"base-{io}"
    if new in rows and old in rows:
        parts = [f"{t} {median(new, f) / median(old, f):.2f}" if median(new, f) and median(old, f) else f"{t} -"
                 for f, t in figures]
        out.append(f"this build / baseline, {io}: " + "; ".join(parts))
for r in rows:
    for sfx, way in (("", "up"), ("_down", "down")):
        relay_cpu, client_cpu = median(r, "relay_cpu" + sfx), median(r, "client_cpu" + sfx)
        if relay_cpu is not None:
            out.append(f"{r}: CPU-s per GB, one connection {way}: relay {relay_cpu:.3f}, client {client_cpu or 0:.3f}; "
                       f"context switches per GB: relay {median(r, 'relay_switches' + sfx) or 0:,.0f}, "
                       f"client {median(r, 'client_switches' + sfx) or 0:,.0f}")
    relay_us, client_us = median(r, "relay_us_per_conn"), median(r, "client_us_per_conn")
    if relay_us is not None:
        out.append(f"{r}: CPU per connection (serial): relay {relay_us:.0f} us, client {client_us or 0:.0f} us")
# Issue 12's goal: our client against kubectl's, through the same relay.
for r in ("pf-epoll", "pf-uring"):
    for k in ("kubectl-ws", "kubectl-spdy"):
        if r in rows and k in rows:
            parts = [f"{t} {median(r, f) / median(k, f):.2f}x" for f, t in
                     (("tput1", "1-conn up"), ("down1", "1-conn down"), ("rate1", "serial conn/s"))
                     if median(r, f) and median(k, f)]
            if parts:
                out.append(f"{r} / {k}: " + "; ".join(parts))
# Issue 13's anchors: the same figures as fractions of direct loopback (and of ssh -L), with the
# spread of the rounds, and the serial connection's median latency.
def spread(row, figure):
    values = [v for v in samples.get((row, figure), []) if not math.isnan(v)]
    return f"{fmt(min(values))}-{fmt(max(values))}" if values else "-"
for r in rows:
    if r == "direct": continue
    parts = []
    for f, t, anchor in (("rate1", "serial conn/s", "direct"), ("rate1", "serial conn/s", "ssh"),
                         ("tput1", "1-conn throughput", "direct")):
        if median(r, f) and median(anchor, f) and anchor != r:
            parts.append(f"{t} {median(r, f) / median(anchor, f):.2f}x {anchor}")
    if parts:
        out.append(f"{r}: " + "; ".join(parts) + f"; serial conn/s {spread(r, 'rate1')} over rounds, "
                   f"p50 {fmt(median(r, 'p50_1'))} us")
if "direct" in rows:
    out.append(f"direct: serial conn/s {spread('direct', 'rate1')} over rounds, p50 {fmt(median('direct', 'p50_1'))} us")
held = [f"{r}: {fmt(median(r, 'fanout_held'))}/{int(fanout_streams):,} held, churn {fmt(median(r, 'churn_rate'))} streams/s, "
        f"open TTFB p99 {fmt((median(r, 'fanout_ttfb_p99') or 0) / 1000)} ms" for r in rows if r.startswith(("pf-", "base-")) and not r.startswith(("pf-tls-", "base-tls-"))
        and median(r, "fanout_held") is not None]
env = json.loads(env_json or "{}")
def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.splitlines()[0] \
            or subprocess.run(cmd, capture_output=True, text=True, timeout=5).stderr.splitlines()[0]
    except Exception:
        return "unknown"
tools = {"iperf3": version(["iperf3", "--version"]), "socat": version(["socat", "-V"])[:80]}
try:
    tools["ssh"] = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
except Exception:
    pass
notes = [
    f"medians of {rounds} interleaved rounds; iperf3 {seconds} s per run (+1 s omitted), client -> server",
    "(down: server -> client, iperf3 -R);",
    f"connection rate: connect, 4-byte echo, close ({rate_seconds} s per run); ratios vs the reference design",
    "(fan-out: vs its serial connection rate). Fan-out: portforward bench fanout, "
    f"{int(fanout_streams):,} streams on one connection, 100 opening at a time.",
]
text = "\n".join(out + [""] + held + [""] + notes)
if skipped.strip():
    text += "\nskipped: " + "; ".join(s for s in skipped.strip().split("\n"))
text += (f"\n{env.get('kernel', platform.release())}, {env.get('cores', os.cpu_count())} cores, "
         f"{env.get('cpu', '')}; relay copy mode: {copy or 'default'}; {int(elapsed)} s")
print(text)
open(base + ".txt", "w").write(text + "\n")
doc = {
    "tool": "scripts/bench.sh",
    "rounds": int(rounds), "iperf3_seconds": int(seconds), "rate_seconds": float(rate_seconds),
    "fanout_streams": int(fanout_streams), "elapsed_s": int(elapsed),
    "rows": {r: {"label": labels[r],
                 "medians": {f: median(r, f) for f in
                             ["tput1", "down1", "tput8", "rate1", "rate4", "fanout_rate", "fanout_held", "churn_rate", "fanout_ttfb_p99",
                              "relay_us_per_conn", "client_us_per_conn"]
                             if (r, f) in samples},
                 "samples": {f: samples[(r, f)] for (rr, f) in samples if rr == r},
                 "ratio_to_reference": {f: (median(r, f) / ref[f]) if median(r, f) is not None and ref[f] else None
                                        for f, _ in figures}}
             for r in rows},
    "units": {"tput1": "Gbit/s", "down1": "Gbit/s", "tput8": "Gbit/s", "relay_us_per_conn": "us", "client_us_per_conn": "us", "rate1": "connections/s", "rate4": "connections/s",
              "fanout_rate": "streams/s", "fanout_held": "streams", "churn_rate": "streams/s",
              "fanout_ttfb_p99": "us"},
    "skipped": {s.split("=", 1)[0]: s.split("=", 1)[1] for s in skipped.strip().split("\n") if "=" in s},
    "relay_copy": copy or "default",
    "environment": env, "tools": tools,
}
json.dump(doc, open(base + ".json", "w"), indent=2)
EOF
cp "$out_dir/bench-$stamp.txt" "$out_dir/latest.txt"
cp "$out_dir/bench-$stamp.json" "$out_dir/latest.json"
note "wrote $out_dir/bench-$stamp.txt and .json (and latest.*)"
