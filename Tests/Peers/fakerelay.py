#!/usr/bin/env python3
"""A server that is not a well-behaved relay, for the client's deadlines: it accepts one
connection after another on 127.0.0.1 and answers each upgrade request with MODE:
  trickle  - a valid-looking head, one byte a second, never finished
  garbage  - --megabytes of bytes that are not HTTP, as fast as the client reads
  huge     - an endless header list ("X-Pad: ..." lines), never a blank line
It prints "listening PORT" once ready."""
import socket
import sys
import threading
import time


def serve(conn, mode, megabytes):
    try:
        conn.recv(65536)
        if mode == "trickle":
            for byte in b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n":
                conn.sendall(bytes([byte]))
                time.sleep(1)
        elif mode == "garbage":
            chunk = bytes(range(256)) * 4096
            for _ in range(megabytes):
                conn.sendall(chunk)
        elif mode == "huge":
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n")
            line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
            while True:
                conn.sendall(line * 64)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    mode = sys.argv[1]
    megabytes = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print("listening %d" % listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, mode, megabytes), daemon=True).start()


if __name__ == "__main__":
    main()
