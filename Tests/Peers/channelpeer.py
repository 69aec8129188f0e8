"""A WebSocket channel-protocol client (kubelet's v4.channel.k8s.io / v4.base64.channel.k8s.io)
written with websocket-client, not the Kubernetes client: connects to URL with ?ports=PORT, checks
the two port announcements, echoes SIZE random bytes through the port's data channel and prints
"ok SIZE", or what went wrong. Usage:

    channelpeer.py URL SUBPROTOCOL PORT SIZE
    channelpeer.py URL SUBPROTOCOL PORT silent|pingflood   (an attacker: never reads)

With PEER_TOKEN in the environment, the upgrade request carries `Authorization: Bearer TOKEN`. A
refused upgrade prints "refused STATUS BODY" and exits 2.
"""
import base64
import os
import sys
import time

import websocket


def silent(ws):
    """Upgrade, then neither read nor answer: seconds until the relay closes the socket."""
    started = time.time()
    sock = ws.sock
    sock.settimeout(30)
    time.sleep(0.5)
    try:
        while sock.recv(65536):
            pass  # the relay's pings and port announcements, unanswered
    except OSError:
        pass
    print("closed after", round(time.time() - started, 2), flush=True)


def pingflood(ws, seconds=6):
    """Masked PING frames as fast as the socket takes them, never reading: whether the relay
    stopped taking them (it should, once its answers pile up unread)."""
    sock = ws.sock
    sock.setblocking(False)
    frame = bytes([0x89, 0x80]) + os.urandom(4)  # PING, masked, no payload
    batch = frame * 4096
    written, stalled = 0, False
    end = time.time() + seconds
    pending = memoryview(batch)
    while time.time() < end:
        if not pending:
            pending = memoryview(batch)
        try:
            n = sock.send(pending)
            written += n
            pending = pending[n:]
        except BlockingIOError:
            stalled = True
            time.sleep(0.01)
        except OSError as error:
            print("closed", error, "written", written, flush=True)
            return
    print("written", written, "stalled", stalled, flush=True)


def main():
    url, subprotocol, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if size in ("silent", "pingflood"):
        ws = websocket.create_connection(f"{url}?ports={port}", subprotocols=[subprotocol], timeout=20)
        silent(ws) if size == "silent" else pingflood(ws)
        return
    size = int(size)
    base64_encoding = subprotocol.startswith("v4.base64")
    token = os.environ.get("PEER_TOKEN")
    header = [f"Authorization: Bearer {token}"] if token is not None else []
    try:
        ws = websocket.create_connection(f"{url}?ports={port}", subprotocols=[subprotocol], timeout=20, header=header)
    except websocket.WebSocketBadStatusException as error:
        body = error.resp_body.decode(errors="replace") if isinstance(error.resp_body, bytes) else error.resp_body
        print("refused", error.status_code, body, flush=True)
        sys.exit(2)

    def decode(message):
        """(channel, bytes) of one message, as the encoding writes it."""
        if base64_encoding:
            text = message if isinstance(message, str) else message.decode()
            return int(text[0]), base64.b64decode(text[1:])
        return message[0], bytes(message[1:])

    announced = [decode(ws.recv()) for _ in range(2)]
    expected = [(0, port.to_bytes(2, "little")), (1, port.to_bytes(2, "little"))]
    if announced != expected:
        print("announcements", announced, "expected", expected, flush=True)
        sys.exit(1)
    payload = os.urandom(size)
    step = 32 * 1024
    for offset in range(0, size, step):
        chunk = payload[offset:offset + step]
        if base64_encoding:
            ws.send("0" + base64.b64encode(chunk).decode())
        else:
            ws.send_binary(b"\x00" + chunk)
    received = bytearray()
    while len(received) < size:
        channel, data = decode(ws.recv())
        if channel == 1:
            print("error channel:", data.decode(errors="replace"), flush=True)
            sys.exit(1)
        received += data
    ws.close()
    print("ok", len(received) if bytes(received) == payload else "mismatch", flush=True)
    sys.exit(0 if bytes(received) == payload else 1)


if __name__ == "__main__":
    main()
