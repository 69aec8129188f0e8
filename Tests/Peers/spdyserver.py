"""A port-forward server that speaks plain SPDY/3.1 only, as an API server or kubelet before the
WebSocket tunnel (Kubernetes <= 1.29), not written with the relay's code (Python's asyncio and zlib):
for our client's --protocol spdy, and for --protocol auto's fallback, which must end here.

- GET /api/v1/namespaces/NS/pods/NAME: a Running Pod (keep-alive, as an API server answers kubectl).
- An h2c or WebSocket upgrade: 400 (Go's API server speaks neither for port-forward; kubectl then
  falls back to plain SPDY), and the connection closes.
- POST .../portforward with Upgrade: SPDY/3.1: 101, then portforward.k8s.io: each error/data pair
  (by requestid) is joined to TARGET_HOST:port; a refused port is "connection refused" on the
  error stream. PINGs are echoed. Each upgrade, each refusal and each pair is one line on stderr.

Usage: spdyserver.py TARGET [LISTEN_PORT]; prints "listening PORT" once ready (LISTEN_PORT, default
a free one: a restarted server can take its predecessor's). TARGET is a host whose ports the pairs
are joined to, or echo:PORT: that port echoes in this process, every other port is refused.
With SPDYSERVER_CERT and SPDYSERVER_KEY (PEM files) it serves TLS and picks ALPN as a Go API
server does, h2 first, then http/1.1 (one "ALPN X" line per connection); it still speaks only
HTTP/1.1, so a client that took h2 fails."""
import asyncio
import json
import os
import ssl
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spdypeer import DICTIONARY, GOAWAY, PING, RST_STREAM, SYN_REPLY, SYN_STREAM  # noqa: E402

TARGET = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
ECHO_PORT = int(TARGET[5:]) if TARGET.startswith("echo:") else None
LISTEN_PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 0


def log(line):
    print(line, file=sys.stderr, flush=True)


def answer(status, reason, body, close=False, content_type="application/json"):
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


def pod(namespace, name):
    return json.dumps({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": name, "namespace": namespace},
                       "spec": {"containers": [{"name": "main", "ports": []}]}, "status": {"phase": "Running"}}).encode()


class Session:
    """The server side of one SPDY connection."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.deflate = zlib.compressobj(zdict=DICTIONARY)
        self.pairs = {}      # requestid -> {"error": id, "data": id, "port": port}
        self.targets = {}    # data stream -> target writer
        self.error_of = {}   # data stream -> error stream

    def control(self, kind, flags, payload):
        self.writer.write(struct.pack(">HHI", 0x8003, kind, flags << 24 | len(payload)) + payload)

    def data(self, stream, payload, fin=False):
        self.writer.write(struct.pack(">II", stream, (1 if fin else 0) << 24 | len(payload)) + payload)

    def headers(self, block):
        raw = self.inflate.decompress(block)
        count, at, fields = struct.unpack(">I", raw[:4])[0], 4, {}
        for _ in range(count):
            length = struct.unpack(">I", raw[at:at + 4])[0]
            name = raw[at + 4:at + 4 + length].decode()
            at += 4 + length
            length = struct.unpack(">I", raw[at:at + 4])[0]
            fields[name] = raw[at + 4:at + 4 + length].decode()
            at += 4 + length
        return fields

    def reply(self, stream):
        block = self.deflate.compress(struct.pack(">I", 0)) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.control(SYN_REPLY, 0, struct.pack(">I", stream) + block)

    async def run(self, initial):
        buffer = initial
        while True:
            while len(buffer) >= 8:
                word, flags_length = struct.unpack(">II", buffer[:8])
                length = flags_length & 0xFFFFFF
                if len(buffer) < 8 + length:
                    break
                payload, buffer = buffer[8:8 + length], buffer[8 + length:]
                flags = flags_length >> 24
                if word & 0x80000000:
                    if await self.on_control(word & 0xFFFF, flags, payload) is False:
                        return
                else:
                    self.on_data(word, flags, payload)
            chunk = await self.reader.read(1 << 16)
            if not chunk:
                break
            buffer += chunk
        for target in self.targets.values():
            target.close()

    async def on_control(self, kind, flags, payload):
        if kind == SYN_STREAM:
            stream = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
            fields = self.headers(payload[10:])
            self.reply(stream)
            pair = self.pairs.setdefault(fields["requestid"], {})
            pair[fields["streamtype"]] = stream
            pair["port"] = int(fields["port"])
            if "error" in pair and "data" in pair:
                await self.connect(pair)
        elif kind == PING:
            self.control(PING, 0, payload)
        elif kind == RST_STREAM:
            stream = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
            target = self.targets.pop(stream, None)
            if target:
                target.close()
        elif kind == GOAWAY:
            return False
        return True

    async def connect(self, pair):
        error, data, port = pair["error"], pair["data"], pair["port"]
        if ECHO_PORT is not None and port == ECHO_PORT:
            log(f"pair {error}/{data}: port {port} (echo)")
            self.targets[data] = Echo(self, data, error)
            return
        try:
            if ECHO_PORT is not None:
                raise OSError("refused")
            target_reader, target_writer = await asyncio.open_connection(TARGET, port)
        except OSError:
            log(f"pair {error}/{data}: port {port} refused")
            self.data(error, b"connection refused", fin=True)
            self.data(data, b"", fin=True)
            return
        log(f"pair {error}/{data}: port {port}")
        self.targets[data] = target_writer
        self.error_of[data] = error
        asyncio.ensure_future(self.pump(target_reader, data, error))

    async def pump(self, target_reader, data, error):
        while True:
            chunk = await target_reader.read(1 << 16)
            if not chunk:
                break
            self.data(data, chunk)
            await self.writer.drain()
        # The kubelet's order: the error stream ends first, then the data stream.
        self.data(error, b"", fin=True)
        self.data(data, b"", fin=True)

    def on_data(self, stream, flags, payload):
        target = self.targets.get(stream)
        if target is None:
            return
        if payload:
            target.write(payload)
        if flags & 1:
            target.write_eof()


class Echo:
    """A pod port in this process: what arrives on the data stream goes back on it."""

    def __init__(self, session, data, error):
        self.session, self.stream, self.error = session, data, error

    def write(self, payload):
        self.session.data(self.stream, payload)

    def write_eof(self):
        self.session.data(self.error, b"", fin=True)
        self.session.data(self.stream, b"", fin=True)

    def close(self):
        pass


async def handle(reader, writer):
    tls = writer.get_extra_info("ssl_object")
    if tls is not None:
        log(f"ALPN {tls.selected_alpn_protocol() or 'none'}")
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            chunk = await reader.read(1 << 16)
            if not chunk:
                writer.close()
                return
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target = lines[0].split(" ")[:2]
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        upgrade = fields.get("upgrade", "").lower()
        parts = target.split("/")
        if upgrade in ("h2c", "websocket"):
            log(f"{method} {target}: {upgrade} refused")
            writer.write(answer(400, "Bad Request", b"unsupported upgrade\n", close=True, content_type="text/plain"))
            await writer.drain()
            writer.close()
            return
        if upgrade == "spdy/3.1" and fields.get("x-stream-protocol-version") == "portforward.k8s.io":
            log(f"{method} {target}: SPDY/3.1")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                         b"X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n")
            await Session(reader, writer).run(buffer)
            writer.close()
            return
        if method == "GET" and len(parts) == 7 and parts[1:4] == ["api", "v1", "namespaces"] and parts[5] == "pods":
            writer.write(answer(200, "OK", pod(parts[4], parts[6])))
        else:
            writer.write(answer(404, "Not Found", b'{"kind":"Status","message":"not found","code":404}'))
        await writer.drain()


async def main():
    context = None
    if os.environ.get("SPDYSERVER_CERT"):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(os.environ["SPDYSERVER_CERT"], os.environ["SPDYSERVER_KEY"])
        context.set_alpn_protocols(["h2", "http/1.1"])
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN_PORT, reuse_address=True, ssl=context)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
