"""TLS peers for the end-to-end tests, on Python's ssl module (OpenSSL).

  tlspeer.py clienthello SERVERNAME        print a real TLS ClientHello, hex (memory BIOs, no socket)
  tlspeer.py idle HOST PORT COUNT CAFILE   open COUNT TLS connections (full handshakes), print
                                           "ready COUNT", hold them idle until stdin closes
"""
import socket
import ssl
import sys


def client_hello(name):
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    connection = context.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        connection.do_handshake()
    except ssl.SSLWantReadError:
        pass
    print(outgoing.read().hex())


def idle(host, port, count, cafile):
    context = ssl.create_default_context(cafile=cafile)
    held = []
    for _ in range(count):
        raw = socket.create_connection((host, port), timeout=10)
        held.append(context.wrap_socket(raw, server_hostname=host))
    print("ready %d" % len(held), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    if sys.argv[1] == "clienthello":
        client_hello(sys.argv[2])
    elif sys.argv[1] == "idle":
        idle(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
