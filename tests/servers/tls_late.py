"""A minimal HTTPS SSE server that loads libssl late: it listens at once, but imports `ssl`
(which maps libssl.so) only on SIGUSR1, then answers each request on its connection with a
chunked SSE stream of --frames content frames and `data: [DONE]`. Nothing it imports before the
signal pulls in `ssl` (unlike http.server, whose http.client imports it).

    python3 tests/servers/tls_late.py --cert cert.pem --key key.pem --frames 3
"""

import argparse
import signal
import socket
import threading


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--frames", type=int, default=3)
    args = ap.parse_args()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    ready = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: ready.set())
    print(f"LISTENING {ls.getsockname()[1]}", flush=True)
    ready.wait()
    import ssl  # noqa: PLC0415 - late on purpose: this maps libssl now

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)

    def serve(conn):
        s = ctx.wrap_socket(conn, server_side=True)
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                got = s.recv(65536)
                if not got:
                    return
                buf += got
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                rest += s.recv(65536)
            buf = rest[length:]
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(args.frames):
                frame = b'data: {"choices":[{"delta":{"content":"tok%d"}}]}\n\n' % i
                s.sendall(b"%x\r\n%s\r\n" % (len(frame), frame))
            done = b"data: [DONE]\n\n"
            s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))

    while True:
        conn, _ = ls.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
