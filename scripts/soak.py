#!/usr/bin/env python3
"""The soak driver (`make soak`, started by scripts/soak.sh once per reactor backend).

Keeps CONNECTIONS TCP connections in flight through a `portforward forward` local port to an echo
server in a pod's network namespace, for SECONDS, replacing each one as it ends, in a mix of:

  echo       send N bytes while reading the echo; once all N are back, close (FIN)
  halfclose  send N bytes, shutdown(SHUT_WR), read until end of file: exactly N bytes must come back
  reset      send part of N (and maybe read part of the echo), then close with SO_LINGER 0 (RST)
  idle       a small echo, then nothing for seconds, then another echo on the same connection

N runs from 0 bytes to 4 MiB (log-uniform in three bands). The bytes are slices of one random
pool at random offsets, and every byte that comes back is compared with the slice it must equal,
so a lost, duplicated, reordered or foreign byte is found at its position (a byte comparison,
stronger than a hash). A reset connection's echo is checked as far as it came.

Every few seconds it samples the relay's, the forwarder's and the echo server's open descriptors
(/proc/PID/fd: sockets, pipes, other) and resident memory (/proc/PID/status VmRSS) into a CSV and
prints one line. After the traffic it waits for the descriptors to settle and checks:

  - no mismatched or lost byte, no unexpected error (resets, early EOF, stalls, refused connects)
    on any connection that was not the one resetting;
  - relay and forwarder still running, their stderr empty, the relay's stdout only its ready line,
    one "Handling connection for" line per connection the driver made;
  - descriptors back to the baseline taken before the traffic: sockets within FD_SLACK, pipes
    within 2 x 64 (each PipePool keeps up to 64 spare pipes open by design) + FD_SLACK, the rest
    within FD_SLACK; the echo server's descriptors back to its baseline (no pod connection left);
  - RSS flat: the median sample of the last third of the traffic not above the median of the
    first third by more than RSS_GROWTH_PERCENT. Medians, not peaks: the relay gives pool pages
    back every 2 s, so its RSS rises and falls with the connections in flight at the moment of a
    sample, while a per-stream leak lifts the whole curve. The growth per 1000 streams between the
    two medians, the peak, and the RSS after the idle wait, are reported too.

--mix weighs the busy kinds (a mix without reset runs the rest while resets are being fixed),
--max-size caps N (small N: many more streams per second, little buffering).

Exits 0 when every check passes, 1 with a one-line reason otherwise. Standard library only.
"""

import argparse
import csv
import errno
import heapq
import json
import os
import random
import resource
import selectors
import socket
import struct
import sys
import time

MiB = 1 << 20
POOL_SIZE = 16 * MiB
MAX_SIZE = 4 * MiB
CHUNK = 256 * 1024
STALL_SECONDS = 30.0      # no progress on a busy connection for this long is an error
DRAIN_SECONDS = 60.0      # how long the connections in flight may take to end after the traffic
SETTLE_SECONDS = 15.0     # how long the descriptors may take to come back after that
MIN_SETTLE_SECONDS = 3.0
PIPE_POOL_KEEP = 64       # Sources/Reactor/PipePool.swift: spare pipes kept open per pool

KINDS = ("echo", "halfclose", "reset", "idle")
LABELS = {"relay": "relay", "forward": "forwarder", "echo": "echo server"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="the forwarder's local port")
    p.add_argument("--label", required=True, help="the backend under test, for the output")
    p.add_argument("--seconds", type=float, required=True, help="seconds of traffic")
    p.add_argument("--connections", type=int, default=500, help="connections in flight")
    p.add_argument("--idle-share", type=float, default=0.1, help="share of the connections held idle")
    p.add_argument("--relay-pid", type=int, required=True)
    p.add_argument("--forward-pid", type=int, required=True)
    p.add_argument("--echo-pid", type=int, required=True)
    p.add_argument("--relay-out", required=True)
    p.add_argument("--relay-err", required=True)
    p.add_argument("--forward-out", required=True)
    p.add_argument("--forward-err", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--summary", required=True, help="JSON summary file")
    p.add_argument("--interval", type=float, default=0, help="seconds between samples (0: seconds/30 in 1..5)")
    p.add_argument("--fd-slack", type=int, default=4)
    p.add_argument("--rss-growth-percent", type=float, default=10.0)
    p.add_argument("--mix", default="echo=45,halfclose=30,reset=25",
                   help="weights of the busy kinds (idle connections are --idle-share of the rest)")
    p.add_argument("--max-size", type=int, default=MAX_SIZE, help=f"largest N (at most {MAX_SIZE})")
    p.add_argument("--max-errors", type=int, default=1000,
                   help="stop the traffic early after this many unexpected errors (the checks still run)")
    p.add_argument("--seed", type=int, default=None)
    return p.parse_args()


# --- the processes under watch -----------------------------------------------------------------

def fd_counts(pid):
    """(total, sockets, pipes, other) open descriptors of PID, or None when it is gone."""
    path = f"/proc/{pid}/fd"
    try:
        names = os.listdir(path)
    except OSError:
        return None
    sockets = pipes = other = 0
    for name in names:
        try:
            target = os.readlink(f"{path}/{name}")
        except OSError:
            continue  # closed between the listing and the look
        if target.startswith("socket:"):
            sockets += 1
        elif target.startswith("pipe:"):
            pipes += 1
        else:
            other += 1
    return (sockets + pipes + other, sockets, pipes, other)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def host_available_mib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def running(pid):
    """True when PID exists and is not a zombie (exited, not yet waited for)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- connections -------------------------------------------------------------------------------

def pick_size(rng, largest):
    band = rng.random()
    if band < 0.3:
        low, high = 1, 64
    elif band < 0.7:
        low, high = 64, 64 * 1024
    else:
        low, high = 64 * 1024, MAX_SIZE
    high = min(high, largest)
    low = min(low, high)
    return int(round(low * (high / low) ** rng.random()))


class Conn:
    __slots__ = ("kind", "sock", "offset", "size", "sent", "received", "send_limit", "shut",
                 "reset_at_received", "pause_until", "pause_at", "paused", "last_progress",
                 "events", "connected", "started", "address")

    def __init__(self, kind, sock, offset, size, address):
        self.kind = kind
        self.sock = sock
        self.offset = offset
        self.size = size            # bytes to send (reset: the size it would have had)
        self.sent = 0
        self.received = 0
        self.send_limit = size      # reset: the part sent before the reset; idle: the first echo
        self.shut = False           # halfclose: SHUT_WR done
        self.reset_at_received = 0  # reset: also wait for this much echo first
        self.pause_at = None        # idle: hold once this much has been sent and echoed
        self.pause_until = 0.0
        self.paused = False
        self.last_progress = time.monotonic()
        self.events = 0
        self.connected = False
        self.started = self.last_progress
        self.address = address


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.pool = os.urandom(POOL_SIZE)
        self.pool_view = memoryview(self.pool)
        self.selector = selectors.EpollSelector()
        self.conns = {}  # fd -> Conn
        self.wakeups = []  # heap of (time, sequence, Conn): idle connections to resume
        self.wakeup_count = 0
        self.idle_target = max(1, int(args.connections * args.idle_share)) if args.connections > 1 else 0
        self.idle_open = 0
        self.opened = dict.fromkeys(KINDS, 0)
        self.done = dict.fromkeys(KINDS, 0)
        self.connected = 0
        self.bytes_sent = 0
        self.bytes_verified = 0
        self.mismatches = 0
        self.lost = 0
        self.errors = 0
        self.problems = []  # the first few, word for word
        self.samples = []
        self.accepting = True
        self.mix_kinds, self.mix_weights = [], []
        for part in args.mix.split(","):
            kind, weight = part.split("=")
            if kind not in ("echo", "halfclose", "reset"):
                raise SystemExit(f"soak: --mix: unknown kind {kind!r} (echo, halfclose, reset)")
            self.mix_kinds.append(kind)
            self.mix_weights.append(float(weight))
        self.gone = None  # the process that exited under the traffic, and when
        self.gone_at = 0.0
        self.stopped_early = None  # when the traffic stopped for too many errors
        # The start-up script's readiness probe is a connection too.
        self.handled_before = sum(1 for line in open(args.forward_out, errors="replace")
                                  if line.startswith("Handling connection for "))

    # -- bookkeeping

    def problem(self, counter, conn, text):
        setattr(self, counter, getattr(self, counter) + 1)
        if len(self.problems) < 20:
            self.problems.append(f"{counter}: {conn.kind} conn via {conn.address[0]} "
                                 f"(size {conn.size}, sent {conn.sent}, received {conn.received}): {text}")

    def set_events(self, conn, events):
        if events == conn.events:
            return
        if conn.events == 0:
            self.selector.register(conn.sock, events, conn)
        elif events == 0:
            self.selector.unregister(conn.sock)
        else:
            self.selector.modify(conn.sock, events, conn)
        conn.events = events

    def close(self, conn, reset=False):
        if conn.events:
            self.selector.unregister(conn.sock)
            conn.events = 0
        if reset:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()
        if conn.kind == "idle":
            self.idle_open -= 1

    def finish(self, conn, reset=False):
        self.done[conn.kind] += 1
        self.close(conn, reset=reset)

    def fail(self, conn, counter, text):
        self.problem(counter, conn, text)
        self.close(conn, reset=True)

    # -- opening

    def open_one(self, kind):
        rng = self.rng
        size = pick_size(rng, self.args.max_size)
        if kind == "halfclose" and rng.random() < 0.05:
            size = 0  # a connection that only says end of file
        if kind == "idle":
            size = rng.randint(1, 100) + rng.randint(1, 100)
        family, host = (socket.AF_INET, "127.0.0.1") if rng.random() < 0.5 else (socket.AF_INET6, "::1")
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(kind, sock, rng.randrange(0, POOL_SIZE - MAX_SIZE), size, (host, self.args.port))
        if kind == "reset":
            conn.send_limit = rng.randint(0, size)
            if rng.random() < 0.5:
                conn.reset_at_received = rng.randint(0, conn.send_limit)
        elif kind == "idle":
            conn.pause_at = rng.randint(1, size - 1)
            conn.send_limit = conn.pause_at
            conn.pause_until = rng.uniform(2.0, 20.0)  # seconds, made absolute when it starts
            self.idle_open += 1
        self.opened[kind] += 1
        code = sock.connect_ex(conn.address)
        if code not in (0, errno.EINPROGRESS):
            self.conns[sock.fileno()] = conn
            self.fail(conn, "errors", f"connect: {os.strerror(code)}")
            return
        self.conns[sock.fileno()] = conn
        self.set_events(conn, selectors.EVENT_WRITE)

    def refill(self, deadline):
        if not self.accepting:
            return
        budget = 64  # opens per turn, so a burst of ends does not become a burst of SYNs
        while len(self.conns) < self.args.connections and budget > 0:
            budget -= 1
            if self.idle_open < self.idle_target and time.monotonic() + 25 < deadline:
                self.open_one("idle")
                continue
            self.open_one(self.rng.choices(self.mix_kinds, self.mix_weights)[0])

    # -- moving bytes

    def wanted_events(self, conn):
        if conn.paused:
            return selectors.EVENT_READ  # an idle connection still watches for a surprise
        events = selectors.EVENT_READ
        if conn.sent < conn.send_limit or (conn.kind == "halfclose" and not conn.shut):
            events |= selectors.EVENT_WRITE
        return events

    def on_connected(self, conn):
        code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(conn, "errors", f"connect: {os.strerror(code)}")
            return False
        conn.connected = True
        self.connected += 1
        conn.last_progress = time.monotonic()
        return True

    def handle(self, conn, mask):
        if not conn.connected:
            if not self.on_connected(conn):
                return
        if mask & selectors.EVENT_READ:
            if not self.read(conn):
                return
        if mask & selectors.EVENT_WRITE:
            if not self.write(conn):
                return
        if self.maybe_done(conn):
            return
        self.set_events(conn, self.wanted_events(conn))

    def read(self, conn):
        try:
            data = conn.sock.recv(CHUNK)
        except BlockingIOError:
            return True
        except OSError as e:
            self.fail(conn, "errors", f"recv: {e.strerror or e}")
            return False
        if not data:
            if conn.kind == "halfclose" and conn.shut and conn.received == conn.size:
                self.finish(conn)
            elif conn.received < conn.sent:
                self.fail(conn, "lost", f"end of file with {conn.sent - conn.received} sent bytes not echoed")
            else:
                self.fail(conn, "errors", "end of file before the connection was done")
            return False
        n = len(data)
        if conn.received + n > conn.sent:
            self.fail(conn, "mismatches", f"{conn.received + n - conn.sent} bytes more than were sent")
            return False
        start = conn.offset + conn.received
        if data != self.pool[start:start + n]:
            at = next(i for i in range(n) if data[i] != self.pool[start + i])
            self.fail(conn, "mismatches", f"byte {conn.received + at} differs")
            return False
        conn.received += n
        self.bytes_verified += n
        conn.last_progress = time.monotonic()
        return True

    def write(self, conn):
        if conn.paused:
            return True
        if conn.sent < conn.send_limit:
            end = min(conn.send_limit, conn.sent + CHUNK)
            try:
                n = conn.sock.send(self.pool_view[conn.offset + conn.sent:conn.offset + end])
            except BlockingIOError:
                return True
            except OSError as e:
                self.fail(conn, "errors", f"send: {e.strerror or e}")
                return False
            conn.sent += n
            self.bytes_sent += n
            conn.last_progress = time.monotonic()
        if conn.kind == "halfclose" and conn.sent == conn.size and not conn.shut:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                self.fail(conn, "errors", f"shutdown: {e.strerror or e}")
                return False
            conn.shut = True
        return True

    def maybe_done(self, conn):
        """Ends the connection (or pauses an idle one) when its part is played."""
        if conn.kind == "echo" and conn.received == conn.size:
            self.finish(conn)
            return True
        if conn.kind == "reset" and conn.sent == conn.send_limit and conn.received >= conn.reset_at_received:
            self.finish(conn, reset=True)
            return True
        if conn.kind == "idle":
            if conn.pause_at is not None and conn.received == conn.pause_at:
                conn.pause_at = None
                conn.paused = True
                until = time.monotonic() + conn.pause_until
                conn.pause_until = until
                self.wakeup_count += 1
                heapq.heappush(self.wakeups, (until, self.wakeup_count, conn))
            elif conn.pause_at is None and not conn.paused and conn.received == conn.size:
                self.finish(conn)
                return True
        return False

    def wake_idle(self, now, everyone=False):
        while self.wakeups and (everyone or self.wakeups[0][0] <= now):
            _, _, conn = heapq.heappop(self.wakeups)
            if conn.sock.fileno() < 0 or self.conns.get(conn.sock.fileno()) is not conn:
                continue  # ended during its pause (a failure)
            conn.paused = False
            conn.send_limit = conn.size
            conn.last_progress = now
            self.set_events(conn, self.wanted_events(conn))

    def check_stalls(self, now):
        for conn in list(self.conns.values()):
            if not conn.paused and now - conn.last_progress > STALL_SECONDS:
                what = "connect" if not conn.connected else "bytes"
                self.fail(conn, "errors", f"stalled: no {what} for {STALL_SECONDS:.0f} s")

    # -- sampling

    def sample(self, phase, t0):
        a = self.args
        row = {"backend": a.label, "t_s": round(time.monotonic() - t0, 1), "phase": phase,
               "in_flight": len(self.conns), "connections": self.connected,
               "bytes_verified": self.bytes_verified}
        for name, pid in (("relay", a.relay_pid), ("forward", a.forward_pid), ("echo", a.echo_pid)):
            counts = fd_counts(pid) or (None, None, None, None)
            row[f"{name}_fds"], row[f"{name}_sockets"], row[f"{name}_pipes"], row[f"{name}_other_fds"] = counts
            row[f"{name}_rss_kib"] = rss_kib(pid)
        # The host's available memory: socket and pipe buffers are kernel memory, in no RSS.
        row["host_available_mib"] = host_available_mib()
        self.samples.append(row)
        return row

    def print_sample(self, row, previous):
        def mib(kib):
            return "-" if kib is None else f"{kib / 1024:6.1f}"
        rate = ""
        if previous is not None and row["t_s"] > previous["t_s"]:
            rate = f"{(row['connections'] - previous['connections']) / (row['t_s'] - previous['t_s']):6,.0f}/s"
        print(f"soak {self.args.label:5} {row['phase']:8} t={row['t_s']:6.1f}s  in-flight {row['in_flight']:5}  "
              f"conns {row['connections']:8,} {rate:>9}  verified {row['bytes_verified'] / (1 << 30):7.2f} GiB  "
              f"relay fds {row['relay_fds']} (sock {row['relay_sockets']} pipe {row['relay_pipes']}) rss {mib(row['relay_rss_kib'])} MiB  "
              f"fwd fds {row['forward_fds']} (sock {row['forward_sockets']} pipe {row['forward_pipes']}) rss {mib(row['forward_rss_kib'])} MiB  "
              f"echo fds {row['echo_fds']}  host avail {row['host_available_mib']} MiB", flush=True)

    # -- the run

    def run(self):
        a = self.args
        interval = a.interval or min(5.0, max(1.0, a.seconds / 30))
        t0 = time.monotonic()
        baseline = self.sample("baseline", t0)
        self.print_sample(baseline, None)
        deadline = t0 + a.seconds
        next_sample = t0 + interval
        next_stall_check = t0 + 1
        previous = baseline
        drain_deadline = None
        errors_seen = 0
        while True:
            now = time.monotonic()
            if self.accepting and self.errors + self.lost + self.mismatches >= a.max_errors:
                self.stopped_early = now - t0
            if self.accepting and (now >= deadline or self.stopped_early):
                self.accepting = False
                drain_deadline = now + DRAIN_SECONDS
                self.wake_idle(now, everyone=True)
            if not self.accepting and not self.conns:
                break
            if drain_deadline is not None and now >= drain_deadline:
                for conn in list(self.conns.values()):
                    self.fail(conn, "errors", f"still open {DRAIN_SECONDS:.0f} s after the traffic stopped")
                break
            self.refill(deadline)
            for key, mask in self.selector.select(timeout=0.05):
                conn = key.data
                if self.conns.get(conn.sock.fileno()) is conn:
                    self.handle(conn, mask)
            now = time.monotonic()
            self.wake_idle(now)
            if now >= next_sample:
                row = self.sample("traffic" if self.accepting else "drain", t0)
                self.print_sample(row, previous)
                previous = row
                next_sample += interval
            # A process that died makes every connection fail: look at once when errors appear.
            if now >= next_stall_check or self.errors > errors_seen:
                errors_seen = self.errors
                next_stall_check = now + 1
                self.gone = next((LABELS[name] for name, pid in (("relay", a.relay_pid), ("forward", a.forward_pid))
                                  if not running(pid)), None)
                if self.gone:
                    self.gone_at = now - t0
                    # Everything from here on would fail for the same reason: stop and report.
                    for conn in list(self.conns.values()):
                        self.fail(conn, "errors", f"the {self.gone} exited")
                    break
                self.check_stalls(now)
        traffic_end = time.monotonic()

        # The descriptors should come back once the streams have ended on every side.
        settle_deadline = traffic_end + SETTLE_SECONDS
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            row = self.sample("settle", t0)
            if now - traffic_end >= MIN_SETTLE_SECONDS and not self.fd_failures(baseline, row):
                break
            if now >= settle_deadline:
                break
        row["phase"] = "idle"
        self.print_sample(row, previous)
        self.write_csv()
        return self.verdict(baseline, row, traffic_end - t0)

    def write_csv(self):
        with open(self.args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.samples[0].keys()))
            writer.writeheader()
            for row in self.samples:
                if row["phase"] != "settle":
                    writer.writerow(row)

    # -- the checks

    def fd_failures(self, baseline, final, names=("relay", "forward")):
        slack = self.args.fd_slack
        failures = []
        for name in names:
            if final[f"{name}_fds"] is None:
                continue  # gone: said once, elsewhere
            for kind, allowed in (("sockets", slack), ("pipes", 2 * PIPE_POOL_KEEP + slack), ("other_fds", slack)):
                before, after = baseline[f"{name}_{kind}"], final[f"{name}_{kind}"]
                if after > before + allowed:
                    failures.append(f"{LABELS[name]} {kind.replace('_fds', '')} fds {before} -> {after} "
                                    f"(allowed +{allowed})")
        if final["echo_fds"] is not None and final["echo_fds"] > baseline["echo_fds"]:
            failures.append(f"echo server fds {baseline['echo_fds']} -> {final['echo_fds']}: pod connections left open")
        return failures

    def rss_report(self, name, final):
        """The RSS trend of one process over the traffic, and a failure when it is not flat."""
        traffic = [r for r in self.samples if r["phase"] == "traffic" and r[f"{name}_rss_kib"]]
        if len(traffic) < 3:
            return None, None
        third = len(traffic) // 3
        def median(rows):
            ordered = sorted(rows, key=lambda r: r[f"{name}_rss_kib"])
            return ordered[len(ordered) // 2]
        first = median(traffic[:third])
        last = median(traffic[-third:])
        first_kib, last_kib = first[f"{name}_rss_kib"], last[f"{name}_rss_kib"]
        growth = (last_kib - first_kib) * 100.0 / first_kib
        # Growth per stream tells a per-stream leak (hundreds of bytes each, on and on) from pools
        # reaching their high-water mark (a step or two, then flat).
        streams = last["connections"] - first["connections"]
        per_thousand = (last_kib - first_kib) * 1000.0 / streams if streams > 0 else 0.0
        report = {"first_third_max_kib": first_kib, "last_third_max_kib": last_kib, "growth_percent": round(growth, 1),
                  "kib_per_1000_streams": round(per_thousand, 1),
                  "peak_kib": max(r[f"{name}_rss_kib"] for r in traffic), "after_idle_kib": final[f"{name}_rss_kib"]}
        failure = None
        if growth > self.args.rss_growth_percent:
            failure = (f"{LABELS[name]} RSS grew {growth:.1f}% ({first_kib / 1024:.1f} MiB median in the first third of "
                       f"the traffic, {last_kib / 1024:.1f} MiB in the last; {per_thousand:.0f} KiB per 1000 streams; "
                       f"allowed {self.args.rss_growth_percent:g}%)")
        return report, failure

    def log_failures(self):
        a = self.args
        failures = []
        for path, what in ((a.relay_err, "relay stderr"), (a.forward_err, "forwarder stderr")):
            lines = [l.rstrip("\n") for l in open(path, errors="replace") if l.strip()]
            if lines:
                more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
                failures.append(f"{what}: {lines[0]!r}{more}")
        relay_lines = [l.rstrip("\n") for l in open(a.relay_out, errors="replace") if l.strip()]
        unexpected = [l for l in relay_lines if not l.startswith("Relay listening on")]
        if unexpected:
            failures.append(f"relay stdout has {len(unexpected)} unexpected lines, the first: {unexpected[0]!r}")
        handled = -self.handled_before
        for line in open(a.forward_out, errors="replace"):
            if line.startswith("Handling connection for "):
                handled += 1
            elif line.strip() and not line.startswith("Forwarding from "):
                failures.append(f"forwarder stdout has an unexpected line: {line.rstrip()!r}")
                break
        return failures, handled

    def verdict(self, baseline, final, traffic_seconds):
        a = self.args
        alive = {"relay": running(a.relay_pid), "forward": running(a.forward_pid)}
        failures = []
        for name in ("relay", "forward"):
            if not alive[name]:
                when = f" under the traffic, at {self.gone_at:.0f} s" if self.gone == LABELS[name] else ""
                failures.append(f"the {LABELS[name]} exited{when}")
        log_failures, handled = self.log_failures()
        failures += log_failures
        if self.mismatches:
            failures.append(f"{self.mismatches} connections got corrupted bytes")
        if self.lost:
            failures.append(f"{self.lost} connections lost bytes")
        if self.errors:
            failures.append(f"{self.errors} unexpected errors ({self.problems[0] if self.problems else ''})")
        if self.stopped_early is not None:
            failures.append(f"the traffic stopped early, at {self.stopped_early:.0f} s, after {a.max_errors} failed connections")
        # Descriptors, RSS and the connection count mean something only for a process that lived.
        living = [name for name in ("relay", "forward") if alive[name]]
        failures += self.fd_failures(baseline, final, living)
        rss = {}
        for name in living:
            rss[name], failure = self.rss_report(name, final)
            # A trend over a run cut short says little: shown, not judged.
            if failure and self.stopped_early is None and all(alive.values()):
                failures.append(failure)
        if alive["forward"] and handled != self.connected:
            failures.append(f"the forwarder handled {handled} connections, the driver made {self.connected}")

        def fds(name, row):
            if row[f"{name}_fds"] is None:
                return "gone"
            return f"{row[f'{name}_fds']} (sockets {row[f'{name}_sockets']}, pipes {row[f'{name}_pipes']})"

        def peak(name):
            return max(r[f"{name}_fds"] or 0 for r in self.samples)

        print(f"\nsoak {a.label}: {traffic_seconds:.0f} s, {a.connections} connections in flight")
        print("  connections " + ", ".join(f"{k} {self.done[k]:,}/{self.opened[k]:,}" for k in KINDS)
              + f" (ended as meant / opened); {self.connected:,} connected, the forwarder handled {handled:,}")
        print(f"  bytes sent {self.bytes_sent / (1 << 30):.2f} GiB, echoed and verified {self.bytes_verified / (1 << 30):.2f} GiB; "
              f"mismatches {self.mismatches}, lost {self.lost}, unexpected errors {self.errors}")
        for problem in self.problems[:10]:
            print(f"    {problem}")
        for name in ("relay", "forward"):
            r = rss.get(name)
            rss_text = "-" if r is None else (
                f"{r['first_third_max_kib'] / 1024:.1f} -> {r['last_third_max_kib'] / 1024:.1f} MiB "
                f"({r['growth_percent']:+.1f}%, {r['kib_per_1000_streams']:.0f} KiB/1000 streams; median of the first vs "
                f"the last third), peak {r['peak_kib'] / 1024:.1f}, after idle {(r['after_idle_kib'] or 0) / 1024:.1f} MiB")
            print(f"  {LABELS[name]:9} fds {fds(name, baseline)} -> peak {peak(name)} -> {fds(name, final)} after idle; "
                  f"RSS {rss_text}")
        print(f"  echo      fds {baseline['echo_fds']} -> peak {peak('echo')} -> {final['echo_fds']} after idle")
        summary = {
            "backend": a.label, "traffic_seconds": round(traffic_seconds, 1), "connections_in_flight": a.connections,
            "mix": a.mix, "max_size": a.max_size, "seed": a.seed,
            "opened": self.opened, "ended_as_meant": self.done, "connected": self.connected,
            "forwarder_handled": handled, "bytes_sent": self.bytes_sent, "bytes_verified": self.bytes_verified,
            "mismatches": self.mismatches, "lost": self.lost, "errors": self.errors, "problems": self.problems,
            "baseline": baseline, "after_idle": final, "rss": rss,
            "rss_growth_percent_allowed": a.rss_growth_percent, "fd_slack": a.fd_slack,
            "failures": failures,
        }
        with open(a.summary, "w") as f:
            json.dump(summary, f, indent=2)
        if failures:
            print(f"soak {a.label}: FAIL: {'; '.join(failures)}")
            return 1
        print(f"soak {a.label}: PASS")
        return 0


def main():
    args = parse_args()
    if not 2 <= args.max_size <= MAX_SIZE:
        raise SystemExit(f"soak: --max-size must be 2..{MAX_SIZE}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sys.exit(Soak(args).run())


if __name__ == "__main__":
    main()
