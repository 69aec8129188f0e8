#!/usr/bin/env python3
"""An HTTP/2 peer written with the `h2` library (not ours), for what the end-to-end tests do to a
relay that our own client never would: hostile header blocks, trailers, floods of stream opens
and resets, odd `port` headers. Each subcommand prints one JSON object on its last line.

Usage: h2peer.py COMMAND HOST PORT [options]   (see the argparse set-up at the bottom)
"""
import argparse
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hpack import Encoder


def connect(host, port, timeout=10.0, source=None):
    sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0) if source else None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
                                       validate_inbound_headers=False, normalize_outbound_headers=False)
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def request_headers(path, port, extra=()):
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "relay"), (":path", path)]
    if port is not None:
        headers.append(("port", str(port)))
    return headers + list(extra)


class Outcome:
    """What happened to each stream: status, body, end, reset code; and to the connection."""

    def __init__(self):
        self.streams = {}
        self.goaway = None
        self.closed = False
        self.settings = {}

    def stream(self, sid):
        return self.streams.setdefault(sid, {"status": None, "body": b"", "ended": False, "reset": None, "opened": None,
                                             "answered": None})

    def absorb(self, events):
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                entry = self.stream(event.stream_id)
                entry["status"] = int(dict(event.headers).get(":status", "0"))
                entry["answered"] = time.monotonic()
            elif isinstance(event, h2.events.DataReceived):
                self.stream(event.stream_id)["body"] += event.data
            elif isinstance(event, h2.events.StreamEnded):
                self.stream(event.stream_id)["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                self.stream(event.stream_id)["reset"] = int(event.error_code)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = int(event.error_code)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                for key, change in event.changed_settings.items():
                    self.settings[int(key)] = change.new_value


def pump(sock, conn, outcome, until, deadline):
    """Reads and answers until `until()` or the deadline; returns whether `until()` held."""
    while not until():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(min(remaining, 1.0))
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            outcome.closed = True
            return until()
        if not data:
            outcome.closed = True
            return until()
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            outcome.closed = True
            outcome.goaway = outcome.goaway if outcome.goaway is not None else -1
            return until()
        outcome.absorb(events)
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        pending = conn.data_to_send()
        if pending:
            try:
                sock.sendall(pending)
            except OSError:
                outcome.closed = True
                return until()
    return True


def report(value):
    print(json.dumps(value), flush=True)


def summary(entry):
    return {"status": entry["status"], "body": entry["body"][:200].decode("utf-8", "replace"), "ended": entry["ended"],
            "reset": entry["reset"]}


# --- commands ---------------------------------------------------------------------------------

def cmd_settings(args):
    """The relay's SETTINGS, as it sends them."""
    sock, conn = connect(args.host, args.port)
    outcome = Outcome()
    pump(sock, conn, outcome, lambda: len(outcome.settings) > 0, time.monotonic() + 5)
    report({"settings": {str(key): value for key, value in outcome.settings.items()}})


def hpack_integer(value, prefix_bits, first_byte_flags):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = [first_byte_flags | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def cmd_bomb(args):
    """An HPACK bomb: one 4 KiB literal added to the dynamic table, then 1-byte references to it
    (index 62), in a HEADERS frame and CONTINUATION frames of 16 KiB, on stream 1."""
    sock, conn = connect(args.host, args.port)
    outcome = Outcome()
    pump(sock, conn, outcome, lambda: len(outcome.settings) > 0, time.monotonic() + 5)
    sock.sendall(conn.data_to_send())
    encoder = Encoder()
    # The request's own fields, then the table entry (literal with incremental indexing, new name).
    block = encoder.encode(request_headers(args.path, args.target_port))
    name, value = b"x-bomb", b"v" * 4000
    block += b"\x40" + hpack_integer(len(name), 7, 0) + name + hpack_integer(len(value), 7, 0) + value
    size = 16384
    frames = 1 + args.continuations
    block += b"\xbe" * (size * frames - len(block))
    chunks = [block[i:i + size] for i in range(0, len(block), size)]
    wire = frame(0x1, 0x4 if len(chunks) == 1 else 0x0, 1, chunks[0])  # HEADERS (END_STREAM off)
    for index, chunk in enumerate(chunks[1:]):
        last = index == len(chunks) - 2
        wire += frame(0x9, 0x4 if last else 0x0, 1, chunk)  # CONTINUATION
    started = time.monotonic()
    sock.sendall(wire)
    # The stream is not known to h2 (its frames were written by hand): read raw frames.
    deadline = started + args.timeout
    got = b""
    status_frames = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        got += data
        while len(got) >= 9:
            length = int.from_bytes(got[:3], "big")
            if len(got) < 9 + length:
                break
            kind, flags, stream = got[3], got[4], int.from_bytes(got[5:9], "big") & 0x7FFFFFFF
            payload = got[9:9 + length]
            got = got[9 + length:]
            if stream == 1 and kind in (0x1, 0x3, 0x0):
                status_frames.append({"type": kind, "flags": flags, "payload": payload.hex()[:64]})
            if kind == 0x7:
                status_frames.append({"type": kind, "code": int.from_bytes(payload[4:8], "big")})
        if any(f["type"] in (0x3, 0x7) or (f["type"] == 0x0 and f["flags"] & 1) for f in status_frames):
            break
    report({"bytes_sent": len(wire), "seconds": time.monotonic() - started, "frames": status_frames})


def cmd_trailers(args):
    """DATA, then trailers with END_STREAM: the pod must see the end of the upload."""
    sock, conn = connect(args.host, args.port)
    outcome = Outcome()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, request_headers(args.path, args.target_port))
    conn.send_data(sid, b"hello through trailers\n")
    conn.send_headers(sid, [("x-trailer", "1")], end_stream=True)
    sock.sendall(conn.data_to_send())
    entry = outcome.stream(sid)
    pump(sock, conn, outcome, lambda: entry["ended"] or entry["reset"] is not None, time.monotonic() + args.timeout)
    report(summary(entry))


def cmd_port(args):
    """One stream per `port` header set (values separated by '|', one set per --ports item)."""
    sock, conn = connect(args.host, args.port)
    outcome = Outcome()
    sids = []
    for item in args.ports:
        sid = conn.get_next_available_stream_id()
        extra = [("port", value) for value in item.split("|")] if item != "-" else []
        conn.send_headers(sid, request_headers(args.path, None, extra), end_stream=True)
        sids.append(sid)
    sock.sendall(conn.data_to_send())
    pump(sock, conn, outcome, lambda: all(outcome.stream(s)["status"] is not None or outcome.stream(s)["reset"] is not None
                                          for s in sids), time.monotonic() + args.timeout)
    report({"results": [summary(outcome.stream(s)) for s in sids]})


def cmd_headers(args):
    """One stream per --headers item ("name=value|name=value", "-" for none) to --path and
    --target-port, each sending b"hello" and END_STREAM: its status and body (the pod's echo, or
    the refusal). Names are sent as given, uppercase included (an invalid HTTP/2 header)."""
    sock, conn = connect(args.host, args.port)
    outcome = Outcome()
    sids = []
    for item in args.headers:
        extra = [tuple(pair.split("=", 1)) for pair in item.split("|")] if item != "-" else []
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, request_headers(args.path, args.target_port, extra))
        conn.send_data(sid, b"hello", end_stream=True)
        sids.append(sid)
    sock.sendall(conn.data_to_send())
    pump(sock, conn, outcome, lambda: all(outcome.stream(s)["ended"] or outcome.stream(s)["reset"] is not None
                                          for s in sids), time.monotonic() + args.timeout)
    report({"results": [summary(outcome.stream(s)) for s in sids]})


def cmd_open(args):
    """Opens --count streams at once and never reads their data; reports how many were answered
    200, refused (REFUSED_STREAM) or otherwise, and holds them for --hold seconds."""
    sock, conn = connect(args.host, args.port)
    outcome = Outcome()
    pump(sock, conn, outcome, lambda: len(outcome.settings) > 0, time.monotonic() + 5)
    # Past the relay's MAX_CONCURRENT_STREAMS on purpose: h2 would refuse to send them.
    conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 2 ** 31 - 1
    conn.remote_settings.acknowledge()
    sids = []
    for _ in range(args.count):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, request_headers(args.path, args.target_port))
        sids.append(sid)
        if len(sids) % 500 == 0:
            sock.sendall(conn.data_to_send())
    sock.sendall(conn.data_to_send())
    pump(sock, conn, outcome, lambda: all(outcome.stream(s)["status"] is not None or outcome.stream(s)["reset"] is not None
                                          for s in sids), time.monotonic() + args.timeout)
    counts = {}
    for sid in sids:
        entry = outcome.stream(sid)
        key = str(entry["status"]) if entry["status"] is not None else ("reset-%s" % entry["reset"] if entry["reset"] is not None else "none")
        counts[key] = counts.get(key, 0) + 1
    report({"counts": counts, "goaway": outcome.goaway})
    time.sleep(args.hold)


def cmd_rapid_reset(args):
    """The rapid reset attack: open streams and reset them at once, in batches, reconnecting
    whenever the relay ends the connection, for --seconds."""
    end = time.monotonic() + args.seconds
    streams = connections = 0
    while time.monotonic() < end:
        try:
            sock, conn = connect(args.host, args.port, timeout=2, source=args.source)
        except OSError:
            time.sleep(0.01)
            continue
        connections += 1
        try:
            while time.monotonic() < end:
                for _ in range(100):
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(sid, request_headers(args.path, args.target_port))
                    conn.reset_stream(sid)
                    streams += 1
                sock.sendall(conn.data_to_send())
                sock.setblocking(False)
                try:
                    while True:
                        data = sock.recv(1 << 20)
                        if not data:
                            raise ConnectionResetError()
                        conn.receive_data(data)
                except BlockingIOError:
                    pass
                sock.setblocking(True)
        except (OSError, h2.exceptions.ProtocolError, ConnectionResetError):
            pass
        finally:
            sock.close()
    report({"streams": streams, "connections": connections})


def cmd_latency(args):
    """A healthy client: opens a stream, waits for its 200, sends a line, reads the echo, ends it;
    --count times, one after the other; reports the stream-open times (HEADERS -> 200)."""
    sock, conn = connect(args.host, args.port, source=args.source)
    outcome = Outcome()
    times = []
    failures = 0
    end = time.monotonic() + args.seconds if args.seconds else None
    count = 0
    while (end is None and count < args.count) or (end is not None and time.monotonic() < end):
        count += 1
        sid = conn.get_next_available_stream_id()
        started = time.monotonic()
        conn.send_headers(sid, request_headers(args.path, args.target_port))
        sock.sendall(conn.data_to_send())
        entry = outcome.stream(sid)
        if not pump(sock, conn, outcome, lambda: entry["status"] is not None or entry["reset"] is not None,
                    time.monotonic() + 10) or entry["status"] != 200:
            failures += 1
            continue
        times.append(entry["answered"] - started)
        conn.send_data(sid, b"ping\n", end_stream=True)
        sock.sendall(conn.data_to_send())
        pump(sock, conn, outcome, lambda: entry["ended"] or entry["reset"] is not None, time.monotonic() + 10)
        if entry["body"] != b"ping\n":
            failures += 1
        if args.interval:
            time.sleep(args.interval)
    times.sort()

    def pick(q):
        return round(times[min(len(times) - 1, int(q * len(times)))] * 1000, 2) if times else None
    report({"count": len(times), "failures": failures, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "max_ms": round(times[-1] * 1000, 2) if times else None})


def cmd_silent(args):
    """Sends the preface and SETTINGS, then nothing, never answering PINGs: reports when (and how)
    the relay ended the connection."""
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0, 0, b""))
    started = time.monotonic()
    got = b""
    while True:
        remaining = args.timeout - (time.monotonic() - started)
        if remaining <= 0:
            report({"closed": False, "seconds": time.monotonic() - started})
            return
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            data = b""
        if not data:
            break
        got += data
    kinds = []
    while len(got) >= 9:
        length = int.from_bytes(got[:3], "big")
        kinds.append(got[3])
        got = got[9 + length:]
    report({"closed": True, "seconds": time.monotonic() - started, "pings": kinds.count(0x6), "goaway": 0x7 in kinds})


def cmd_idle(args):
    """A well-behaved client with no streams (it answers PINGs): reports when the relay ends it."""
    sock, conn = connect(args.host, args.port)
    outcome = Outcome()
    started = time.monotonic()
    pump(sock, conn, outcome, lambda: outcome.goaway is not None or outcome.closed, started + args.timeout)
    report({"seconds": time.monotonic() - started, "goaway": outcome.goaway, "closed": outcome.closed})


def cmd_flood_data(args):
    """--count streams to a pod port that never reads, each sent --bytes of DATA as fast as the
    windows allow; holds them for --hold seconds (the relay's descriptors are counted meanwhile)."""
    sock, conn = connect(args.host, args.port)
    outcome = Outcome()
    sids = []
    for _ in range(args.count):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, request_headers(args.path, args.target_port))
        sids.append(sid)
    sock.sendall(conn.data_to_send())
    pump(sock, conn, outcome, lambda: all(outcome.stream(s)["status"] is not None for s in sids), time.monotonic() + 10)
    sent = {sid: 0 for sid in sids}
    # Frames as large as the relay allows (1 MiB): payloads the relay splices into pipes.
    chunk = b"x" * conn.max_outbound_frame_size
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        progressed = False
        for sid in sids:
            while sent[sid] < args.bytes:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                step = min(window, len(chunk), args.bytes - sent[sid])
                conn.send_data(sid, chunk[:step])
                sent[sid] += step
                progressed = True
        data = conn.data_to_send()
        if data:
            # A relay that stops reading this connection (its bound on held bytes) is the point
            # of some tests: stop sending then.
            sock.settimeout(3)
            try:
                sock.sendall(data)
            except socket.timeout:
                break
        if all(v >= args.bytes for v in sent.values()):
            break
        pump(sock, conn, outcome, lambda: False, time.monotonic() + (0.01 if progressed else 0.2))
    print(json.dumps({"sent": sum(sent.values())}), flush=True)
    time.sleep(args.hold)
    report({"sent": sum(sent.values())})


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, function):
        command = sub.add_parser(name)
        command.add_argument("host")
        command.add_argument("port", type=int)
        command.add_argument("--path", default="/portForward/default/web")
        command.add_argument("--target-port", type=int, default=7000)
        command.add_argument("--timeout", type=float, default=10)
        command.add_argument("--source")
        command.set_defaults(function=function)
        return command

    add("settings", cmd_settings)
    add("bomb", cmd_bomb).add_argument("--continuations", type=int, default=8)
    add("trailers", cmd_trailers)
    add("port", cmd_port).add_argument("--ports", nargs="+", required=True)
    add("headers", cmd_headers).add_argument("--headers", nargs="+", required=True)
    opener = add("open", cmd_open)
    opener.add_argument("--count", type=int, default=100)
    opener.add_argument("--hold", type=float, default=0)
    add("rapid-reset", cmd_rapid_reset).add_argument("--seconds", type=float, default=5)
    latency = add("latency", cmd_latency)
    latency.add_argument("--count", type=int, default=100)
    latency.add_argument("--seconds", type=float, default=0)
    latency.add_argument("--interval", type=float, default=0)
    add("silent", cmd_silent)
    add("idle", cmd_idle)
    flood = add("flood-data", cmd_flood_data)
    flood.add_argument("--count", type=int, default=10)
    flood.add_argument("--bytes", type=int, default=4 << 20)
    flood.add_argument("--seconds", type=float, default=10)
    flood.add_argument("--hold", type=float, default=0)
    args = parser.parse_args()
    args.function(args)


if __name__ == "__main__":
    main()
