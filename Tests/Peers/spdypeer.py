"""A SPDY/3.1 peer not written with the relay's code (Python's socket and zlib only): kubectl's
port-forward protocol (portforward.k8s.io), plain or inside a WebSocket, used well or as an attacker
would. Prints one JSON line with what it saw.

usage: spdypeer.py MODE HOST PORT [--pod NS/NAME] [--ws] [--token TOKEN] [options]

--token sends `Authorization: Bearer TOKEN` with the upgrade request. A refused upgrade prints
{"error": "not upgraded", "status": STATUS, "answer": ...}.

modes:
  forward     a well-behaved port-forward: one error/data pair to --target-port, --bytes echoed
  pingflood   PING frames as fast as the socket takes them for --seconds, never reading
  rstflood    DATA frames for streams never opened (each earns a RST_STREAM), never reading
  silent      upgrade, then send nothing (answer nothing): seconds until the relay closes
  synflood    --count error streams that never get their data stream, then hold
  bomb        one SYN_STREAM whose header block inflates to gigabytes
  upload      one pair to --target-port, then --bytes to a pod that never reads
  pairs       --count pairs to --target-port at once, a byte echoed on each: seconds until all echoed
"""
import argparse
import base64
import json
import os
import socket
import struct
import sys
import time
import zlib

WORDS = [
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type", "date",
    "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match",
    "if-range", "if-unmodified-since", "last-modified", "location", "max-forwards", "pragma",
    "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after", "server", "te",
    "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
    "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public",
    "set-cookie", "keep-alive", "origin",
]
TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in WORDS) + TAIL.encode()
assert len(DICTIONARY) == 1423 and zlib.adler32(DICTIONARY) == 0xE3C6A7C2

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY = 1, 2, 3, 4, 6, 7


def _content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


class Peer:
    def __init__(self, host, port, pod, ws, node_path=False, token=None):
        self.sock = socket.create_connection((host, port), timeout=20)
        self.ws = ws
        self.deflate = zlib.compressobj(zdict=DICTIONARY)
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.incoming = b""
        self.ws_incoming = b""
        ns, name = pod.split("/")
        # The API server's pod subresource, or the kubelet's own path (--node-path).
        path = f"/portForward/{ns}/{name}" if node_path else f"/api/v1/namespaces/{ns}/pods/{name}/portforward"
        credentials = f"Authorization: Bearer {token}\r\n" if token is not None else ""
        if ws:
            key = base64.b64encode(os.urandom(16)).decode()
            head = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
                    f"Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n{credentials}\r\n")
        else:
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n"
                    f"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n"
                    f"Content-Length: 0\r\n{credentials}\r\n")
        self.sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SystemExit(json.dumps({"error": "closed before the upgrade", "answer": answer.decode("latin-1")}))
            answer += chunk
        head, _, rest = answer.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1])
        if self.status != 101:
            while len(answer) < len(head) + 4 + _content_length(head):
                chunk = self.sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            print(json.dumps({"error": "not upgraded", "status": self.status, "answer": answer.decode("latin-1")}), flush=True)
            raise SystemExit(1)
        self.feed(rest)

    # -- framing

    def wrap(self, payload):
        """One SPDY chunk as the client sends it: as is, or as a masked binary WebSocket message."""
        if not self.ws:
            return payload
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes([0x82, 0x80 | n])
        elif n < 65536:
            head = bytes([0x82, 0x80 | 126]) + struct.pack(">H", n)
        else:
            head = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask(payload, mask)
        return head + mask + masked

    def control(self, kind, flags, payload):
        return struct.pack(">HHI", 0x8003, kind, flags << 24 | len(payload)) + payload

    def headers(self, pairs):
        raw = struct.pack(">I", len(pairs))
        for name, value in pairs:
            raw += struct.pack(">I", len(name)) + name.encode() + struct.pack(">I", len(value)) + value.encode()
        return self.deflate.compress(raw) + self.deflate.flush(zlib.Z_SYNC_FLUSH)

    def syn_stream(self, stream, pairs, flags=0):
        return self.control(SYN_STREAM, flags, struct.pack(">IIBB", stream, 0, 0, 0) + self.headers(pairs))

    def data(self, stream, payload, fin=False):
        return struct.pack(">II", stream, (1 if fin else 0) << 24 | len(payload)) + payload

    def ping(self, ident):
        return self.control(PING, 0, struct.pack(">I", ident))

    def send(self, payload):
        self.sock.sendall(self.wrap(payload))

    # -- reading

    def feed(self, raw):
        if not self.ws:
            self.incoming += raw
            return
        self.ws_incoming += raw
        while len(self.ws_incoming) >= 2:
            b0, b1 = self.ws_incoming[0], self.ws_incoming[1]
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(self.ws_incoming) < 4:
                    return
                n, at = struct.unpack(">H", self.ws_incoming[2:4])[0], 4
            elif n == 127:
                if len(self.ws_incoming) < 10:
                    return
                n, at = struct.unpack(">Q", self.ws_incoming[2:10])[0], 10
            if len(self.ws_incoming) < at + n:
                return
            payload = self.ws_incoming[at:at + n]
            self.ws_incoming = self.ws_incoming[at + n:]
            opcode = b0 & 0x0F
            if opcode in (0, 2):
                self.incoming += payload
            elif opcode == 8:
                self.ws_closed = payload

    def frame(self, timeout=20):
        """The next SPDY frame: ("data", stream, flags, payload) or ("control", type, flags, payload)."""
        deadline = time.time() + timeout
        while True:
            if len(self.incoming) >= 8:
                word, flags_length = struct.unpack(">II", self.incoming[:8])
                length = flags_length & 0xFFFFFF
                if len(self.incoming) >= 8 + length:
                    payload = self.incoming[8:8 + length]
                    self.incoming = self.incoming[8 + length:]
                    flags = flags_length >> 24
                    if word & 0x80000000:
                        return ("control", word & 0xFFFF, flags, payload)
                    return ("data", word, flags, payload)
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no frame")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.feed(chunk)

    def inflate_block(self, block):
        return self.inflate.decompress(block)


def _mask(payload, mask):
    # XOR as big integers: fast enough for a test peer.
    key = (mask * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(len(payload), "big")


def pair_headers(kind, port, request):
    return [("streamtype", kind), ("port", str(port)), ("requestid", str(request))]


def open_pair(peer, port, request=0, error_stream=1):
    peer.send(peer.syn_stream(error_stream, pair_headers("error", port, request)))
    peer.send(peer.syn_stream(error_stream + 2, pair_headers("data", port, request)))
    return error_stream + 2


def forward(peer, args):
    data_stream = open_pair(peer, args.target_port)
    payload = os.urandom(args.bytes)
    sent = 0
    received = b""
    replies = 0
    started = time.time()
    while sent < len(payload):
        piece = payload[sent:sent + 16384]
        peer.send(peer.data(data_stream, piece))
        sent += len(piece)
    while len(received) < len(payload):
        kind, a, flags, body = peer.frame(timeout=args.timeout)
        if kind == "data" and a == data_stream:
            received += body
        elif kind == "control" and a == SYN_REPLY:
            replies += 1
        elif kind == "control" and a in (RST_STREAM, GOAWAY):
            break
    return {"intact": received == payload, "received": len(received), "replies": replies,
            "seconds": round(time.time() - started, 3)}


def flood(peer, args, make):
    """Writes frames made by `make(i)` for --seconds without reading; counts what was written."""
    peer.sock.setblocking(False)
    written = 0
    frames = 0
    batch = b"".join(peer.wrap(make(i)) for i in range(256))
    end = time.time() + args.seconds
    stalled_since = None
    pending = memoryview(b"")
    while time.time() < end:
        if not pending:
            pending = memoryview(batch)
            frames += 256
        try:
            n = peer.sock.send(pending)
            written += n
            pending = pending[n:]
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.time()
            time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError) as error:
            return {"written": written, "frames": frames, "closed": str(error)}
    return {"written": written, "frames": frames, "stalled": stalled_since is not None}


def pingflood(peer, args):
    return flood(peer, args, lambda i: peer.ping(2 * i + 1))


def rstflood(peer, args):
    # Even ids are never a client's: each DATA frame earns an RST_STREAM INVALID_STREAM.
    return flood(peer, args, lambda i: peer.data(2 * (i % 1000) + 2, b""))


def silent(peer, args):
    started = time.time()
    pings = 0
    try:
        while time.time() - started < args.seconds:
            kind, a, flags, body = peer.frame(timeout=args.seconds)
            if kind == "control" and a == PING:
                pings += 1
    except (EOFError, ConnectionResetError):
        return {"closed_after": round(time.time() - started, 2), "pings": pings}
    except TimeoutError:
        pass
    return {"closed_after": None, "pings": pings}


def synflood(peer, args):
    for i in range(args.count):
        peer.send(peer.syn_stream(2 * i + 1, pair_headers("error", args.target_port, f"flood-{i}")))
    replies = resets = 0
    started = time.time()
    try:
        while replies + resets < args.count and time.time() - started < args.timeout:
            kind, a, flags, body = peer.frame(timeout=args.timeout)
            if kind == "control" and a == SYN_REPLY:
                replies += 1
            elif kind == "control" and a == RST_STREAM:
                resets += 1
    except (TimeoutError, EOFError) as error:
        return {"replies": replies, "resets": resets, "ended": str(error)}
    time.sleep(args.seconds)
    return {"replies": replies, "resets": resets}


def bomb(peer, args):
    raw = struct.pack(">I", 1) + struct.pack(">I", 4) + b"port" + struct.pack(">I", 1 << 30)
    deflate = peer.deflate
    block = deflate.compress(raw)
    zeros = b"\0" * (1 << 20)
    for _ in range(args.count):
        block += deflate.compress(zeros)
    block += deflate.flush(zlib.Z_SYNC_FLUSH)
    frame = peer.control(SYN_STREAM, 0, struct.pack(">IIBB", 1, 0, 0, 0) + block)
    peer.send(frame)
    seen = []
    try:
        while True:
            kind, a, flags, body = peer.frame(timeout=args.timeout)
            seen.append([kind, a])
            if kind == "control" and a == GOAWAY:
                seen[-1].append(struct.unpack(">II", body)[1])
    except (TimeoutError, EOFError, ConnectionResetError) as error:
        return {"block": len(block), "seen": seen, "ended": type(error).__name__}


def pairs(peer, args):
    """--count complete pairs to --target-port at once, a byte echoed on each: how long until all
    echoed (the relay's stream-open buckets pace the connects)."""
    started = time.time()
    for i in range(args.count):
        data_stream = open_pair(peer, args.target_port, request=i, error_stream=1 + 4 * i)
        peer.send(peer.data(data_stream, b"x"))
    echoed = set()
    while len(echoed) < args.count:
        kind, a, flags, body = peer.frame(timeout=args.timeout)
        if kind == "data" and body and a % 4 == 3:
            echoed.add(a)
        elif kind == "control" and a == GOAWAY:
            break
    return {"echoed": len(echoed), "seconds": round(time.time() - started, 3)}


def upload(peer, args):
    data_stream = open_pair(peer, args.target_port)
    return flood(peer, args, lambda i: peer.data(data_stream, b"x" * 16384))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--pod", default="default/web")
    parser.add_argument("--ws", action="store_true")
    parser.add_argument("--node-path", action="store_true")
    parser.add_argument("--target-port", type=int, default=7000)
    parser.add_argument("--bytes", type=int, default=1 << 20)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--timeout", type=float, default=20)
    parser.add_argument("--token")
    args = parser.parse_args()
    peer = Peer(args.host, args.port, args.pod, args.ws, args.node_path, args.token)
    result = globals()[args.mode](peer, args)
    print(json.dumps(result), flush=True)
