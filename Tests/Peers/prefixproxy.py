"""A reverse proxy that serves a relay under a path prefix, as Rancher serves a cluster's API
server under /k8s/clusters/ID: every HTTP/1.1 request's target must start with PREFIX/ and goes
on without PREFIX; any other is answered 404 and its connection closed. After a SPDY or
WebSocket upgrade the bytes pass as they are; after an h2c upgrade the streams' :path lose
PREFIX too (each HEADERS block is decoded and encoded again), and a :path without it is made
one the relay does not know; h2 with prior knowledge (the bench's) is rewritten the same way.
Every target seen is printed as "request METHOD TARGET" (METHOD
"h2" for a stream's :path).

Usage: prefixproxy.py TARGET_HOST TARGET_PORT PREFIX; prints "listening PORT" once ready.
Needs hpack (the venv's h2) for h2c only."""
import asyncio
import sys


def log(method, target):
    print("request", method, target, flush=True)


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, asyncio.IncompleteReadError):
        pass


def strip(target, prefix):
    return target[len(prefix):] if target.startswith(prefix + "/") else None


async def h2_streams(reader, writer, prefix, preface=24):
    """The client's side of an h2c connection from its preface (`preface` bytes of it still to
    come): HEADERS with :path rewritten, the rest as is."""
    from hpack import Decoder, Encoder
    decoder, encoder = Decoder(), Encoder()
    try:
        writer.write(await reader.readexactly(preface))
        while True:
            head = await reader.readexactly(9)
            payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
            kind, flags = head[3], head[4]
            if kind == 0x1:
                assert flags & 0x4, "a HEADERS block in CONTINUATION frames is not handled"
                block = payload
                if flags & 0x8:
                    block = block[1:len(block) - block[0]]
                priority = b""
                if flags & 0x20:
                    priority, block = block[:5], block[5:]
                fields = []
                for name, value in decoder.decode(block, raw=False):
                    if name == ":path":
                        log("h2", value)
                        stripped = strip(value, prefix)
                        value = stripped if stripped is not None else "/not-under-the-prefix" + value
                    fields.append((name, value))
                payload = priority + encoder.encode(fields)
                head = len(payload).to_bytes(3, "big") + bytes([kind, flags & ~0x8]) + head[5:9]
            writer.write(head + payload)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    if writer.can_write_eof():
        writer.write_eof()


async def requests(reader, writer, client_writer, prefix):
    """HTTP/1.1 requests, one after another on the connection, until an upgrade."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            if lines[0] == "PRI * HTTP/2.0":
                # Prior knowledge (the bench): the preface's first 18 bytes are read.
                writer.write(head)
                return await h2_streams(reader, writer, prefix, preface=6)
            method, target, version = lines[0].split(" ", 2)
            log(method, target)
            stripped = strip(target, prefix)
            if stripped is None:
                body = f"{target} is not under {prefix}/\n".encode()
                client_writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                                    + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
                await client_writer.drain()
                client_writer.close()
                writer.close()
                return
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            writer.write(f"{method} {stripped} {version}\r\n".encode("latin-1") + "\r\n".join(lines[1:]).encode("latin-1"))
            length = int(fields.get("content-length", "0") or "0")
            if length:
                writer.write(await reader.readexactly(length))
            await writer.drain()
            upgrade = fields.get("upgrade", "").lower()
            if upgrade == "h2c":
                return await h2_streams(reader, writer, prefix)
            if upgrade:
                return await pipe(reader, writer)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        if writer.can_write_eof():
            writer.write_eof()


async def main():
    host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3].rstrip("/")

    async def handle(client_reader, client_writer):
        try:
            target_reader, target_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(requests(client_reader, target_writer, client_writer, prefix),
                             pipe(target_reader, client_writer), return_exceptions=True)
        client_writer.close()
        target_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
