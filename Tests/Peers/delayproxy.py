"""A TCP proxy that delays every chunk by DELAY seconds in each direction, keeping order: a
link with a round trip of 2 x DELAY for the tests (the kernel here has no netem).

Usage: delayproxy.py TARGET_HOST TARGET_PORT DELAY; prints "listening PORT" once ready.
Standard library only."""
import asyncio
import sys


async def pump(reader, writer, delay):
    loop = asyncio.get_running_loop()
    while True:
        data = await reader.read(1 << 16)
        if not data:
            loop.call_later(delay, lambda: writer.can_write_eof() and writer.write_eof())
            return
        loop.call_later(delay, writer.write, data)


async def main():
    host, port, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

    async def handle(client_reader, client_writer):
        try:
            target_reader, target_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pump(client_reader, target_writer, delay), pump(target_reader, client_writer, delay),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
