#!/usr/bin/env python3
"""A node relay that answers its pod list with JSON nested DEPTH deep, for the gateway: an h2c
server (prior knowledge, the `h2` library) on 127.0.0.1 that answers every request with 200 and
DEPTH "[" then DEPTH "]". It prints "listening PORT" once ready.

Usage: deepnode.py DEPTH"""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions

BODY = ("[" * int(sys.argv[1]) + "]" * int(sys.argv[1])).encode()


def serve(conn):
    h2conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    h2conn.initiate_connection()
    conn.sendall(h2conn.data_to_send())
    pending = {}  # stream -> bytes not yet sent
    try:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for event in h2conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    h2conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "application/json")])
                    pending[event.stream_id] = BODY
            # As much of each body as the windows allow; the rest after WINDOW_UPDATEs.
            for stream, rest in list(pending.items()):
                try:
                    window = min(h2conn.local_flow_control_window(stream), h2conn.max_outbound_frame_size)
                except h2.exceptions.StreamClosedError:
                    del pending[stream]
                    continue
                while rest and window > 0:
                    h2conn.send_data(stream, rest[:window])
                    rest = rest[window:]
                    window = min(h2conn.local_flow_control_window(stream), h2conn.max_outbound_frame_size)
                if rest:
                    pending[stream] = rest
                else:
                    h2conn.end_stream(stream)
                    del pending[stream]
            conn.sendall(h2conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError):
        return
    finally:
        conn.close()


def main():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print("listening", listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
