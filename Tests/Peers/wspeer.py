"""A WebSocket client not written here (websocket-client, which the official Kubernetes Python client
uses) against WebSocketTests' in-test server. Prints one JSON line with what it saw.

usage: wspeer.py PORT tunnel|channel
"""
import json
import sys

import websocket
from websocket import ABNF


def tunnel(port):
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{port}/api/v1/namespaces/default/pods/web/portforward",
        subprotocols=["SPDY/3.1+portforward.k8s.io"], timeout=20)
    result = {"subprotocol": ws.subprotocol, "echoed": []}
    big = bytes(i % 251 for i in range(100 * 1024))
    for name, message in [("small", b"hello"), ("empty", b""), ("100KiB", big)]:
        ws.send_binary(message)
        # recv_data answers the server's ping (sent right after the 101) with a masked pong on its own.
        opcode, data = ws.recv_data()
        result["echoed"].append([name, opcode == ABNF.OPCODE_BINARY and data == message])
    # One message in three frames, the middle one empty.
    ws.send_frame(ABNF.create_frame(b"frag", ABNF.OPCODE_BINARY, 0))
    ws.send_frame(ABNF.create_frame(b"", ABNF.OPCODE_CONT, 0))
    ws.send_frame(ABNF.create_frame(b"mented", ABNF.OPCODE_CONT, 1))
    opcode, data = ws.recv_data()
    result["echoed"].append(["fragmented", opcode == ABNF.OPCODE_BINARY and data == b"fragmented"])
    ws.ping(b"client-ping")
    frame = ws.recv_data_frame(control_frame=True)[1]
    result["pong"] = frame.opcode == ABNF.OPCODE_PONG and frame.data == b"client-ping"
    ws.send_close(1000, b"done")
    frame = ws.recv_frame()
    result["close"] = [frame.opcode == ABNF.OPCODE_CLOSE, int.from_bytes(frame.data[:2], "big")]
    ws.shutdown()
    return result


def channel(port):
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{port}/api/v1/namespaces/default/pods/web/portforward?ports=8080",
        subprotocols=["v4.channel.k8s.io"], timeout=20)
    result = {"subprotocol": ws.subprotocol}
    announcements = [ws.recv_data()[1], ws.recv_data()[1]]
    result["announcements"] = [list(message) for message in announcements]
    ws.send_binary(b"\x00" + b"GET / HTTP/1.0\r\n\r\n")
    result["data"] = ws.recv_data()[1].decode("latin-1")
    ws.close(status=1000)
    return result


if __name__ == "__main__":
    port, mode = int(sys.argv[1]), sys.argv[2]
    print(json.dumps(tunnel(port) if mode == "tunnel" else channel(port)), flush=True)
