#!/usr/bin/env bash
# The gateway, side by side with the node relay it fronts (`make bench-gateway`, and part of
# `make bench`): docs/PERFORMANCE.md, "The gateway (issue 11)".
#
# A cluster on one machine: three node hosts (network namespaces, each joined by a veth to a
# bridge in the root namespace; the bridge holds the gateway's address), each running a node
# relay (`portforward relay --listen NODEIP:10250 --node node-X --insecure`) for one pod, a
# network namespace of its own with the bench's target server (`portforward bench --serve all`:
# echo 7100, discard 7101, source 7102) and the C echo server (Benchmarks/c/echo-server.c, 7300).
# In the root namespace: the gateway, with its ONE HTTP/2 connection to every node relay (and,
# with GW_BASELINE, a second gateway from another binary, e.g. an older commit's).
#
# Rows: "node" (straight to node-a's relay over the veth), "gw" (the same pod, pod-a, through the
# gateway) and "gw-base" (through the baseline's gateway), with the same clients. Every round runs each figure on every row in turn:
#   up, down   `portforward bench throughput -d upload|download`, one stream on one connection,
#              Gbit/s; with the CPU (utime+stime from /proc/PID/stat before and after) of the
#              gateway and of node-a's relay per GB moved (--warmup 0: the CPU and the bytes
#              cover the same time).
#   rate       connections per second, serial, through `portforward forward` (a new TCP
#              connection, so a new stream, each time; Benchmarks/c/connrate.c: connect, 4-byte
#              echo, close), its p50, and the gateway's and node-a's relay's CPU per connection.
#   rr         `portforward bench rr`: 64-byte round trips on one stream, per second, and p50.
#   fanout     `portforward bench fanout`: GW_FANOUT streams held on one connection, through a
#              gateway spread over the three nodes' pods (round robin), straight to node-a's pod
#              alone for "node"; the held process's RSS before and while they are held (--rss-pid),
#              its open descriptors at the peak, and the churn rate (open, echo, close; 100 in
#              flight) after.
#
# GW_HOLD=FILE: set up, write the rows' URLs, process ids and forward ports to FILE (shell
# assignments), and wait until killed (TERM tears down): for profiling one process by hand.
#
# Needs root. Knobs: PORTFORWARD (binary), GW_ROUNDS (3), GW_SECONDS (3, per throughput run),
# GW_RATE_SECONDS (2), GW_FANOUT (10000), GW_IO (epoll; the backend of every portforward
# process), GW_BASELINE (another portforward binary: its gateway is the row gw-base; the
# relays and load generators stay this binary's), GW_FIGURES (subset of: up down rate rr fanout). Writes
# bench-results/gateway-<time>.{txt,json} and bench-results/gateway-latest.{txt,json}.
set -euo pipefail

cd "$(dirname "$0")/.."
bin=$(realpath "${PORTFORWARD:-.build/release/portforward}")
rounds=${GW_ROUNDS:-3}
seconds=${GW_SECONDS:-3}
rate_seconds=${GW_RATE_SECONDS:-2}
fanout_streams=${GW_FANOUT:-10000}
io=${GW_IO:-epoll}
baseline=${GW_BASELINE:-}
[ -z "$baseline" ] || baseline=$(realpath "$baseline")
figures_wanted=${GW_FIGURES:-up down rate rr fanout}
out_dir=bench-results

fail() { printf 'bench-gateway: %s\n' "$*" >&2; exit 1; }
note() { printf 'bench-gateway: %s\n' "$*" >&2; }

[ -x "$bin" ] || fail "$bin not found: run 'make build' first (or set PORTFORWARD)"
[ -f "$bin" ] || fail "$bin is not a file"
[ "$(id -u)" -eq 0 ] || fail "needs root: the nodes and pods are network namespaces"
for tool in ip python3 timeout; do command -v "$tool" >/dev/null || fail "$tool is missing: run 'make deps'"; done

# Names of this run: interfaces are at most 15 characters ("pf" + 5 + 2).
suffix=$(printf '%05x' $(( ($$ * 7919 + RANDOM) % 1048576 )))
work=$(mktemp -d "/tmp/pf-gwbench.XXXXXX")
pids=()
namespaces=()
bridge=pf${suffix}br
cleanup() {
    local status=$?
    for (( i=${#pids[@]}-1; i>=0; i-- )); do kill "${pids[i]}" 2>/dev/null || true; done
    sleep 0.3
    for (( i=${#pids[@]}-1; i>=0; i-- )); do kill -KILL "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done
    # Deleting a node namespace deletes its veth, and with it the pair's root-namespace end.
    for name in "${namespaces[@]}"; do ip netns delete "$name" 2>/dev/null || true; done
    ip link delete "$bridge" 2>/dev/null || true
    for node in a b c; do ip link delete "pf${suffix}${node}h" 2>/dev/null || true; done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# An unused private /24: no address or route of this machine's in it (other runs pick theirs).
subnet=""
for _ in $(seq 50); do
    candidate=10.213.$(( RANDOM % 200 + 20 ))
    if ! ip -4 addr | grep -q "inet $candidate\." && [ -z "$(ip -4 route show to match "$candidate.1" | grep -v '^default')" ]; then
        subnet=$candidate; break
    fi
done
[ -n "$subnet" ] || fail "no unused 10.213.x.0/24 found"
gateway_ip=$subnet.1

# A copy of the binary under another name: on a shared machine a `pkill -f "portforward gateway"`
# meant for someone else's processes must not end this run's.
cp "$bin" "$work/pf-gwbench"
bin=$work/pf-gwbench

CC=${CC:-$(command -v cc || command -v clang || echo "$(dirname "$(command -v swift)")/clang")}
"$CC" -O2 -o "$work/connrate" Benchmarks/c/connrate.c || fail "$CC could not build Benchmarks/c/connrate.c"
"$CC" -O2 -o "$work/echo-server" Benchmarks/c/echo-server.c || fail "$CC could not build Benchmarks/c/echo-server.c"

# wait_line FILE PREFIX PID WHAT: up to 15 s for a line starting with PREFIX in FILE.
wait_line() {
    for _ in $(seq 150); do
        grep -q "^$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || fail "$4 exited before it was ready: $(tail -n 3 "$1" "$1.err" 2>/dev/null | tr '\n' ' ')"
        sleep 0.1
    done
    fail "$4 was not ready within 15 s: $(tail -n 3 "$1" "$1.err" 2>/dev/null | tr '\n' ' ')"
}

# --- The cluster ---------------------------------------------------------------------------------
ip link add "$bridge" type bridge
ip addr add "$gateway_ip/24" dev "$bridge"
ip link set "$bridge" up
declare -A node_ip relay_pid
printf 'nodes:\n' >"$work/nodes.yaml"
index=2
for node in a b c; do
    node_ns=pf-gwb-$suffix-node-$node pod_ns=pf-gwb-$suffix-pod-$node
    ip netns add "$node_ns"; namespaces+=("$node_ns")
    ip netns add "$pod_ns"; namespaces+=("$pod_ns")
    ip netns exec "$node_ns" ip link set lo up
    ip netns exec "$pod_ns" ip link set lo up
    ip link add "pf${suffix}${node}h" type veth peer name "pf${suffix}${node}n"
    ip link set "pf${suffix}${node}n" netns "$node_ns"
    ip link set "pf${suffix}${node}h" master "$bridge" up
    node_ip[$node]=$subnet.$index; index=$((index + 1))
    ip netns exec "$node_ns" ip addr add "${node_ip[$node]}/24" dev "pf${suffix}${node}n"
    ip netns exec "$node_ns" ip link set "pf${suffix}${node}n" up
    # The pod: the bench's target server and the C echo server.
    ip netns exec "$pod_ns" "$bin" bench --serve all --port 7100 --io "$io" >"$work/target-$node.log" 2>"$work/target-$node.log.err" &
    pids+=($!); wait_line "$work/target-$node.log" "bench target ready" $! "the target server of pod-$node"
    ip netns exec "$pod_ns" "$work/echo-server" 7300 >"$work/echo-$node.log" 2>&1 &
    pids+=($!)
    printf 'pods:\n  - {namespace: default, name: pod-%s, netns: /run/netns/%s}\n' "$node" "$pod_ns" >"$work/pods-$node.yaml"
    ip netns exec "$node_ns" "$bin" relay --listen "${node_ip[$node]}:10250" --node "node-$node" --pods "$work/pods-$node.yaml" \
        --insecure --io "$io" >"$work/relay-$node.log" 2>"$work/relay-$node.log.err" &
    pids+=($!); relay_pid[$node]=$!
    wait_line "$work/relay-$node.log" "Relay listening on" $! "node-$node's relay"
    printf '  - {name: node-%s, address: "%s:10250"}\n' "$node" "${node_ip[$node]}" >>"$work/nodes.yaml"
done

# The rows: straight to node-a's relay, the gateway, and the baseline's gateway.
declare -A server_of pid_of echo_at forward_pid
rows=(node)
server_of[node]=http://${node_ip[a]}:10250
pid_of[node]=${relay_pid[a]}
declare -A binary_of port_of
restarts=0
start_gateway() {  # ROW: (re)starts the row's gateway, appending to its logs
    local row=$1
    "${binary_of[$row]}" gateway --listen "$gateway_ip:${port_of[$row]}" --nodes "$work/nodes.yaml" \
        --insecure --io "$io" >>"$work/$row.log" 2>>"$work/$row.log.err" &
    pids+=($!); pid_of[$row]=$!
    local ready; ready=$(grep -c "^Gateway listening on" "$work/$row.log" 2>/dev/null || true)
    for _ in $(seq 150); do
        [ "$(grep -c "^Gateway listening on" "$work/$row.log" 2>/dev/null || true)" -gt "${ready:-0}" ] && break
        kill -0 "${pid_of[$row]}" 2>/dev/null || fail "the gateway ($row) exited: $(tail -n 3 "$work/$row.log.err")"
        sleep 0.1
    done
    tail -n 1 "$work/$row.log" | grep -q "3 reachable" || fail "$row: not every node is reachable: $(tail -n 4 "$work/$row.log")"
}
port=6443
gateway_rows=(gw)
binary_of[gw]=$bin
if [ -n "$baseline" ]; then
    # A renamed copy, as for this binary (see above): its processes are told apart by name.
    cp "$baseline" "$work/portforward-base"
    binary_of[gw-base]=$work/portforward-base
    gateway_rows+=(gw-base)
fi
for row in "${gateway_rows[@]}"; do
    port_of[$row]=$port
    start_gateway "$row"
    server_of[$row]=http://$gateway_ip:$port
    rows+=("$row")
    port=$((port + 1))
done
# `portforward forward` for the connection rate, one per row, to pod-a's C echo server.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for row in "${rows[@]}"; do
    echo_at[$row]=$(free_port)
    "$bin" forward --server "${server_of[$row]}" --io "$io" --address 127.0.0.1 -n default pod-a "${echo_at[$row]}:7300" \
        >"$work/forward-$row.log" 2>&1 &
    pids+=($!); forward_pid[$row]=$!
    for _ in $(seq 100); do
        bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "${echo_at[$row]}" 2>/dev/null && break
        kill -0 "${forward_pid[$row]}" 2>/dev/null || fail "forward for $row exited: $(tail -n 3 "$work/forward-$row.log")"
        sleep 0.1
    done
done

if [ -n "${GW_HOLD:-}" ]; then
    {
        printf 'rows="%s"\nrelay_a_pid=%s\n' "${rows[*]}" "${relay_pid[a]}"
        for row in "${rows[@]}"; do
            printf '%s_server=%s\n%s_pid=%s\n%s_echo_port=%s\n' "${row//-/_}" "${server_of[$row]}" "${row//-/_}" "${pid_of[$row]}" \
                "${row//-/_}" "${echo_at[$row]}"
        done
        printf 'connrate=%s\n' "$work/connrate"
    } >"$GW_HOLD"
    note "holding the cluster (GW_HOLD=$GW_HOLD); kill $$ to tear it down"
    while :; do sleep 1; done
fi

# --- The figures -----------------------------------------------------------------------------------
results=$work/results.tsv
: >"$results"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$results"; }
cpu_seconds() { awk -v tck="$(getconf CLK_TCK)" '{ print ($14 + $15) / tck }' "/proc/$1/stat" 2>/dev/null || echo 0; }
json_figure() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["results"].get(sys.argv[2], "nan"))' "$1" "$2" 2>/dev/null || echo nan; }

# alive ROW: its gateway (or relay) still runs. A gateway that is gone is started again (on a
# shared machine another session's `pkill -f gateway` has ended ours mid-run; its log says
# "Draining", the SIGTERM handler's line): a figure it was in the middle of is lost, not the run.
alive() {
    kill -0 "${pid_of[$1]}" 2>/dev/null && return 0
    if [[ $1 == gw* ]]; then
        note "$1: the gateway (${pid_of[$1]}) is gone ($(tail -n 1 "$work/$1.log.err")): starting it again"
        restarts=$((restarts + 1))
        start_gateway "$1"
        sleep 1
        return 0
    fi
    note "$1: process ${pid_of[$1]} is gone; its figures are left out"
    return 1
}

run_throughput() {  # ROW DIRECTION ROUND
    local row=$1 direction=$2 round=$3 json=$work/tput-$1-$2-$3.json
    alive "$row" || return 0
    local figure=${direction/upload/up}; figure=${figure/download/down}
    local gw_before=0 relay_before
    [ "$row" != node ] && gw_before=$(cpu_seconds "${pid_of[$row]}")
    relay_before=$(cpu_seconds "${relay_pid[a]}")
    if timeout $((seconds + 30)) "$bin" bench throughput --server "${server_of[$row]}" --pod default/pod-a --port 7100 \
            --discard-port 7101 --source-port 7102 -d "$direction" -t "$seconds" --warmup 0 --io "$io" -q \
            --json "$json" >"$json.out" 2>&1; then
        local gbps bytes gw_after=0 relay_after
        relay_after=$(cpu_seconds "${relay_pid[a]}")
        [ "$row" != node ] && gw_after=$(cpu_seconds "${pid_of[$row]}")
        gbps=$(json_figure "$json" "${direction}_gbps")
        bytes=$(json_figure "$json" "${direction}_bytes")
        record "$row" "$figure" "$round" "$gbps"
        python3 -c '
import sys
row, figure, rnd, gb, ga, rb, ra, nbytes = sys.argv[1:9]
gigabytes = float(nbytes) / 1e9
if gigabytes > 0:
    if row != "node":
        print(f"{row}\t{figure}_gw_cpu\t{rnd}\t{(float(ga) - float(gb)) / gigabytes}")
    print(f"{row}\t{figure}_relay_cpu\t{rnd}\t{(float(ra) - float(rb)) / gigabytes}")' \
            "$row" "$figure" "$round" "$gw_before" "$gw_after" "$relay_before" "$relay_after" "$bytes" >>"$results"
    else
        note "throughput -d $direction through $row failed: $(tail -n 3 "$json.out" | tr '\n' ' ')"
        record "$row" "$figure" "$round" nan
    fi
    sleep 0.2
}

run_rate() {  # ROW ROUND
    local row=$1 round=$2 out=$work/rate-$1-$2.out
    alive "$row" || return 0
    local gw_before=0 relay_before gw_after=0 relay_after
    [ "$row" != node ] && gw_before=$(cpu_seconds "${pid_of[$row]}")
    relay_before=$(cpu_seconds "${relay_pid[a]}")
    if timeout $((rate_seconds + 30)) "$work/connrate" 127.0.0.1 "${echo_at[$row]}" "$rate_seconds" 0.5 1 >"$out" 2>"$out.err"; then
        [ "$row" != node ] && gw_after=$(cpu_seconds "${pid_of[$row]}")
        relay_after=$(cpu_seconds "${relay_pid[a]}")
        record "$row" rate "$round" "$(cut -d' ' -f1 "$out")"
        record "$row" rate_p50 "$round" "$(cut -d' ' -f2 "$out")"
        # CPU per connection: over the 0.5 s warm-up too, taken to run at the measured rate.
        python3 -c '
import sys
row, rnd, rate, seconds, gb, ga, rb, ra = sys.argv[1:9]
n = float(rate) * (float(seconds) + 0.5)
if n > 0:
    if row != "node":
        print(f"{row}\trate_gw_us\t{rnd}\t{(float(ga) - float(gb)) / n * 1e6}")
    print(f"{row}\trate_relay_us\t{rnd}\t{(float(ra) - float(rb)) / n * 1e6}")' \
            "$row" "$round" "$(cut -d' ' -f1 "$out")" "$rate_seconds" "$gw_before" "$gw_after" "$relay_before" "$relay_after" >>"$results"
    else
        note "connrate through $row failed: $(tail -n 3 "$out" "$out.err" | tr '\n' ' ')"
        record "$row" rate "$round" nan
    fi
}

run_rr() {  # ROW ROUND
    local row=$1 round=$2 json=$work/rr-$1-$2.json
    alive "$row" || return 0
    if timeout 40 "$bin" bench rr --server "${server_of[$row]}" --pod default/pod-a --port 7300 -t 2 --warmup 0.5 \
            --io "$io" -q --json "$json" >"$json.out" 2>&1; then
        record "$row" rr "$round" "$(json_figure "$json" round_trips_per_s)"
        record "$row" rr_p50 "$round" "$(json_figure "$json" rtt_p50_us)"
    else
        note "rr through $row failed: $(tail -n 3 "$json.out" | tr '\n' ' ')"
        record "$row" rr "$round" nan
    fi
}

run_fanout() {  # ROW ROUND
    local row=$1 round=$2 json=$work/fanout-$1-$2.json pods=default/pod-a,default/pod-b,default/pod-c
    [ "$row" = node ] && pods=default/pod-a
    local pid=${pid_of[$row]}
    alive "$row" || return 0
    # The held process's open descriptors, sampled while the run lasts (the bench reports its RSS).
    touch "$work/fanout-running"
    ( peak=0; while [ -e "$work/fanout-running" ]; do
          n=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l || true); [ "$n" -gt "$peak" ] && peak=$n; sleep 0.2
      done; echo "$peak" >"$work/fds-$row-$round" ) &
    local sampler=$!
    local fds_before; fds_before=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l || true)
    timeout 180 "$bin" bench fanout --server "${server_of[$row]}" --pod "$pods" --port 7300 -s "$fanout_streams" -t 2 \
        --hold 0.5 --io "$io" --rss-pid "$pid" -q --json "$json" >"$json.out" 2>&1 || true
    rm -f "$work/fanout-running"; wait "$sampler" 2>/dev/null || true
    if [ -s "$json" ]; then
        python3 - "$json" "$row" "$round" "$fds_before" "$(cat "$work/fds-$row-$round" 2>/dev/null || echo 0)" >>"$results" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))["results"]
row, rnd, fds_before, fds_peak = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
for key, name in (("open_rate_per_s", "fanout_rate"), ("streams_held", "fanout_held"), ("churn_rate_per_s", "churn_rate"),
                  ("ttfb_p99_us", "fanout_ttfb_p99"), ("relay_rss_per_stream_bytes", "rss_per_stream"),
                  ("relay_rss_before_kib", "rss_before"), ("relay_rss_holding_kib", "rss_holding")):
    print(f"{row}\t{name}\t{rnd}\t{d.get(key, 'nan')}")
held = d.get("streams_held") or 0
if held:
    print(f"{row}\tfds_per_stream\t{rnd}\t{(fds_peak - fds_before) / held}")
EOF
        grep -h "problem\|failed\|refused\|answered" "$json.out" | head -3 | sed "s/^/bench-gateway: $row fanout: /" >&2 || true
    else
        note "fanout through $row failed: $(tail -n 3 "$json.out" | tr '\n' ' ')"
    fi
    sleep 1
}

wanted() { [[ " $figures_wanted " == *" $1 "* ]]; }
note "cluster: bridge $bridge $gateway_ip/24, nodes ${node_ip[a]} ${node_ip[b]} ${node_ip[c]}; rows: ${rows[*]}; $rounds rounds; io $io"
loads=()
started=$SECONDS
for round in $(seq "$rounds"); do
    loads+=("$(cut -d' ' -f1-3 /proc/loadavg)")
    for direction in upload download; do
        if [ "$direction" = upload ]; then wanted up || continue; else wanted down || continue; fi
        for row in "${rows[@]}"; do note "round $round/$rounds: throughput $direction: $row"; run_throughput "$row" "$direction" "$round"; done
    done
    if wanted rate; then for row in "${rows[@]}"; do note "round $round/$rounds: connection rate: $row"; run_rate "$row" "$round"; done; fi
    if wanted rr; then for row in "${rows[@]}"; do note "round $round/$rounds: rr: $row"; run_rr "$row" "$round"; done; fi
    if wanted fanout; then for row in "${rows[@]}"; do note "round $round/$rounds: fan-out: $row"; run_fanout "$row" "$round"; done; fi
done
loads+=("$(cut -d' ' -f1-3 /proc/loadavg)")
elapsed=$((SECONDS - started))

# --- The table ---------------------------------------------------------------------------------------
mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%d-%H%M%S)
python3 - "$results" "$out_dir/gateway-$stamp" "$rounds" "$seconds" "$rate_seconds" "$fanout_streams" "$io" "$elapsed" \
    "$(IFS=';'; echo "${loads[*]}")" "${rows[*]}" "$restarts" <<'EOF'
import json, math, statistics, sys
results, base, rounds, seconds, rate_seconds, fanout, io, elapsed, loads, rows, restarts = sys.argv[1:12]
rows = rows.split()
samples = {}
for line in open(results):
    row, figure, rnd, value = line.rstrip("\n").split("\t")
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    samples.setdefault((row, figure), []).append(v)

def values(row, figure):
    return [v for v in samples.get((row, figure), []) if not math.isnan(v)]
def median(row, figure):
    v = values(row, figure)
    return statistics.median(v) if v else None
def fmt(v, digits=None):
    if v is None: return "-"
    if digits is not None: return f"{v:.{digits}f}"
    if abs(v) >= 1000: return f"{v:,.0f}"
    if abs(v) >= 100: return f"{v:.0f}"
    if abs(v) >= 10: return f"{v:.1f}"
    return f"{v:.2f}"
def cell(row, figure, digits=None):
    v = values(row, figure)
    if not v: return "-"
    m = statistics.median(v)
    return f"{fmt(m, digits)} ({fmt(min(v), digits)}-{fmt(max(v), digits)})" if len(v) > 1 else fmt(m, digits)

figures = [
    ("up", "Gbit/s up, 1 stream", None), ("down", "Gbit/s down, 1 stream", None),
    ("up_gw_cpu", "gateway CPU-s/GB up", 3), ("down_gw_cpu", "gateway CPU-s/GB down", 3),
    ("up_relay_cpu", "node relay CPU-s/GB up", 3), ("down_relay_cpu", "node relay CPU-s/GB down", 3),
    ("rate", "conn/s serial (forward)", None), ("rate_p50", "conn p50 us", None),
    ("rate_gw_us", "gateway CPU us per conn", None), ("rate_relay_us", "node relay CPU us per conn", None),
    ("rr", "rr round trips/s", None), ("rr_p50", "rr p50 us", None),
    ("fanout_held", f"fan-out streams held (of {int(fanout):,})", None), ("fanout_rate", "fan-out opens/s", None),
    ("churn_rate", "churn streams/s", None), ("rss_per_stream", "RSS bytes per held stream", None),
    ("fds_per_stream", "descriptors per held stream", 2),
]
out = []
label_width = max(len(t) for _, t, _ in figures) + 2
widths = {r: max(len(r), *(len(cell(r, f, d)) for f, _, d in figures)) + 2 for r in rows}
out.append("".ljust(label_width) + "".join(r.rjust(widths[r]) for r in rows))
for f, title, digits in figures:
    if not any(values(r, f) for r in rows): continue
    out.append(title.ljust(label_width) + "".join(cell(r, f, digits).rjust(widths[r]) for r in rows))
out.append("")
out.append("through the gateway / straight to the node relay (medians):")
for r in rows:
    if r == "node": continue
    parts = []
    for f, title in (("up", "up"), ("down", "down"), ("rate", "conn/s"), ("rr", "rr"), ("churn_rate", "churn"),
                     ("fanout_rate", "fan-out opens/s")):
        a, b = median(r, f), median("node", f)
        if a and b: parts.append(f"{title} {a / b:.2f}x")
    out.append(f"  {r}: " + "; ".join(parts))
    gw = [median(r, f) for f in ("up_gw_cpu", "down_gw_cpu")]
    if all(g is not None for g in gw):
        out.append(f"  {r}: gateway CPU {gw[0]:.3f} s/GB up, {gw[1]:.3f} down (goal <= 0.25); "
                   f"1-stream throughput goal >= 0.8x node")
out.append("")
out.append(f"medians (min-max) of {rounds} interleaved rounds; throughput {seconds} s per run (--warmup 0), one stream on one "
           f"connection to pod-a; conn/s: Benchmarks/c/connrate.c through `portforward forward` ({rate_seconds} s); rr: "
           f"64-byte echoes on one stream; fan-out: `portforward bench fanout`, gateway rows round robin over pod-a/b/c "
           f"on three nodes, node row pod-a; RSS from VmRSS before and with the streams held; io {io}; {int(elapsed)} s")
out.append("load average (1/5/15 min) at each round's start and at the end: " + "; ".join(loads.split(";")))
if int(restarts):
    out.append(f"gateways ended from outside and started again during the run: {restarts} (a figure in progress then is missing or partial)")
text = "\n".join(out)
print(text)
open(base + ".txt", "w").write(text + "\n")
json.dump({"tool": "scripts/bench-gateway.sh", "rounds": int(rounds), "io": io, "load_average": loads.split(";"),
           "rows": {r: {"medians": {f: median(r, f) for (rr, f) in samples if rr == r},
                        "samples": {f: samples[(rr, f)] for (rr, f) in samples if rr == r}} for r in rows}},
          open(base + ".json", "w"), indent=2)
EOF
cp "$out_dir/gateway-$stamp.txt" "$out_dir/gateway-latest.txt"
cp "$out_dir/gateway-$stamp.json" "$out_dir/gateway-latest.json"
note "wrote $out_dir/gateway-$stamp.txt and .json"
