#!/usr/bin/env python3
"""SSE test server (Python stdlib) that imitates an LLM inference server and logs its
own ground-truth write timing.

    python3 tests/servers/sse_server.py --port 0 --truth /tmp/truth-python.jsonl

Protocol and truth schema: tests/servers/README.md. The response layout mirrors
testbed/src/proto.rs byte for byte; keep the two in step.

Every logical write is one ``self.wfile.write`` call. With the handler's default
``wbufsize = 0`` that is socket.sendall(), i.e. a single ``sendto`` syscall unless the
kernel takes only part of the buffer (never seen with these sizes on loopback).
Timestamps are time.monotonic_ns(), which is CLOCK_MONOTONIC on Linux, the clock
bpf_ktime_get_ns() reads.
"""

import argparse
import os
import json
import math
import signal
import io
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SERVER_NAME = "python"
STREAM_PREFIX = "/v1/chat/completions"
PROMPT_TOKENS = 5
MAX_TOKENS = 1_000_000
SPLIT_GAP_S = 0.001
COMMENT_TEXT = ": keep-alive"
ROLE_JSON = ('{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,'
             '"delta":{"role":"assistant","content":""}}]}')
EOLS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}

# Write calls made on client sockets, for GET /stats (which does not count itself).
_writes = 0
_writes_lock = threading.Lock()


class BadRequest(Exception):
    pass


# ---------------------------------------------------------------- protocol (mirrors proto.rs)

def _count(key, value, minimum):
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"bad {key} {value!r}") from None
    if not minimum <= n <= MAX_TOKENS:
        raise BadRequest(f"bad {key} {value!r}")
    return n


def _ms(key, value):
    try:
        v = float(value)
    except ValueError:
        raise BadRequest(f"bad {key} {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise BadRequest(f"bad {key} {value!r}")
    return v


def _bool(key, value):
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise BadRequest(f"bad {key} {value!r}")


def parse_params(query):
    """Query string -> dict of stream parameters. Unknown keys are ignored."""
    p = {"tokens": 16, "interval_ms": 5.0, "prefill_ms": 20.0, "framing": "chunked",
         "eol": "lf", "split": False, "batch": 1, "coalesce": False, "comments": False,
         "usage": True, "done": True}
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        if key == "tokens":
            p[key] = _count(key, value, 0)
        elif key == "batch":
            p[key] = _count(key, value, 1)
        elif key in ("interval_ms", "prefill_ms"):
            p[key] = _ms(key, value)
        elif key == "framing":
            if value not in ("chunked", "close", "json"):
                raise BadRequest(f"bad framing {value!r}")
            p[key] = value
        elif key == "eol":
            if value not in EOLS:
                raise BadRequest(f"bad eol {value!r}")
            p[key] = value
        elif key in ("split", "coalesce", "comments", "usage", "done"):
            p[key] = _bool(key, value)
    return p


def sse_frame(data, eol):
    return f"data: {data}{eol}{eol}"


def content_json(i):
    return ('{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,'
            '"delta":{"content":"tok%d "}}]}' % i)


def usage_json(tokens):
    return ('{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}'
            % (PROMPT_TOKENS, tokens, tokens + PROMPT_TOKENS))


def finish_json(p):
    usage = ',"usage":' + usage_json(p["tokens"]) if p["usage"] else ""
    return ('{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,'
            '"delta":{},"finish_reason":"stop"}]' + usage + '}')


def completion_json(p):
    content = "".join(f"tok{i} " for i in range(p["tokens"]))
    usage = ',"usage":' + usage_json(p["tokens"]) if p["usage"] else ""
    return ('{"id":"x","object":"chat.completion","choices":[{"index":0,"message":'
            '{"role":"assistant","content":"' + content + '"},"finish_reason":"stop"}]'
            + usage + '}')


def plan(p, client_close):
    """The response as a list of (sleep_s, bytes, content_events): one entry per write."""
    conn = "close" if client_close else "keep-alive"
    if p["framing"] == "json":
        body = completion_json(p).encode()
        head = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: {conn}\r\n\r\n").encode()
        delay = (p["prefill_ms"] + p["tokens"] * p["interval_ms"]) / 1000.0
        return [(delay, head + body, 0)]

    chunked = p["framing"] == "chunked"
    if chunked:
        head = ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                f"Transfer-Encoding: chunked\r\nConnection: {conn}\r\n\r\n").encode()
    else:
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Connection: close\r\n\r\n")

    def wrap(payload):
        # One HTTP chunk per write, so chunk boundaries coincide with write syscalls.
        return b"%x\r\n%s\r\n" % (len(payload), payload) if chunked else payload

    eol = EOLS[p["eol"]]
    steps = []
    role = sse_frame(ROLE_JSON, eol).encode()
    if p["coalesce"]:
        steps.append((0.0, head + wrap(role), 0))
    else:
        steps.append((0.0, head, 0))
        steps.append((0.0, wrap(role), 0))

    n, batch = p["tokens"], p["batch"]
    for first in range(0, n, batch):
        payload, ends = b"", []
        for i in range(first, min(first + batch, n)):
            payload += sse_frame(content_json(i), eol).encode()
            ends.append(len(payload))

        def events_in(lo, hi):
            return sum(1 for e in ends if lo < e <= hi)

        wait = (p["prefill_ms"] if first == 0 else p["interval_ms"]) / 1000.0
        if p["comments"]:
            # Halfway through the wait, so mistaking it for a token shows as wait/2.
            half = wait / 2
            steps.append((half, wrap(f"{COMMENT_TEXT}{eol}{eol}".encode()), 0))
            wait -= half
        if p["split"]:
            cut = len(payload) // 2
            steps.append((wait, wrap(payload[:cut]), events_in(0, cut)))
            steps.append((SPLIT_GAP_S, wrap(payload[cut:]), events_in(cut, len(payload))))
        else:
            steps.append((wait, wrap(payload), events_in(0, len(payload))))

    finish_delay = p["prefill_ms"] / 1000.0 if n == 0 else 0.0
    steps.append((finish_delay, wrap(sse_frame(finish_json(p), eol).encode()), 0))
    if p["done"]:
        steps.append((0.0, wrap(sse_frame("[DONE]", eol).encode()), 0))
    if chunked:
        steps.append((0.0, b"0\r\n\r\n", 0))
    return steps


# ---------------------------------------------------------------- server

class TruthLog:
    def __init__(self, path):
        self._f = open(path, "w", encoding="utf-8")
        self._lock = threading.Lock()

    def append(self, record):
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._f.write(line)
            # Flushed per record so a test tailing the file sees it promptly.
            self._f.flush()


class _StampedSocketReader(io.RawIOBase):
    """Raw socket reader that records, per handler, when each recv() returned data."""

    def __init__(self, handler):
        self._handler = handler
        self._sock = handler.connection

    def readable(self):
        return True

    def readinto(self, buf):
        n = self._sock.recv_into(buf)
        if n:
            self._handler.last_recv_ns = time.monotonic_ns()
        return n


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        if self.server.tls_context is not None and hasattr(self.request, "do_handshake"):
            # In the handler's thread, so a slow handshake never holds up the accept loop.
            self.request.do_handshake()
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Truth for request_ns must be the moment the last request byte left the kernel, not
        # when Python finished parsing headers (hundreds of µs later). So rfile reads through
        # a raw reader that stamps every recv() that returned data.
        self.last_recv_ns = 0
        self.rfile = io.BufferedReader(_StampedSocketReader(self), 8192)

    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def _write(self, data, count=True):
        global _writes
        self.wfile.write(data)
        if count:
            with _writes_lock:
                _writes += 1

    def _simple(self, status, content_type, body, count=True):
        body = body.encode()
        conn = "close" if self.close_connection else "keep-alive"
        self._write((f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: {conn}\r\n\r\n").encode()
                    + body, count)

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        # Consume the whole body (content ignored) so request_ns marks the end of the
        # request and keep-alive framing stays aligned.
        remaining = length
        while remaining:
            chunk = self.rfile.read(remaining)
            if not chunk:
                raise ConnectionError("connection closed mid-body")
            remaining -= len(chunk)
        # The recv that delivered the request's last byte (it may have been read ahead into
        # rfile's buffer before the headers were even parsed).
        request_ns = self.last_recv_ns
        # parse_request() already set close_connection from the Connection header.
        client_close = self.close_connection

        url = urlsplit(self.path)
        path = url.path
        if self.command == "GET" and path == "/health":
            return self._simple("200 OK", "text/plain", "ok")
        if self.command == "GET" and path == "/stats":
            with _writes_lock:
                n = _writes
            return self._simple("200 OK", "application/json", json.dumps({"writes": n}, separators=(",", ":")), count=False)
        rest = path[len(STREAM_PREFIX):] if path.startswith(STREAM_PREFIX) else None
        if rest is None or (rest and not rest.startswith("/")):
            return self._simple("404 Not Found", "text/plain", "not found")
        req_id = rest.rsplit("/", 1)[-1]
        try:
            params = parse_params(url.query)
        except BadRequest as e:
            return self._simple("400 Bad Request", "text/plain", str(e))

        writes = []
        for delay, data, events in plan(params, client_close):
            if delay > 0:
                time.sleep(delay)
            ts = time.monotonic_ns()
            self._write(data)
            writes.append({"ts_ns": ts, "bytes": len(data), "content_events": events})
        if params["framing"] == "close":
            # socketserver then shuts down and closes the socket: that FIN ends the body.
            self.close_connection = True

        content = [w for w in writes if w["content_events"] > 0]
        self.server.truth.append({
            "server": SERVER_NAME,
            "id": req_id,
            "path": path,
            "method": self.command,
            "request_ns": request_ns,
            "writes": writes,
            "first_byte_ns": writes[0]["ts_ns"],
            "first_token_ns": content[0]["ts_ns"] if content else None,
            "end_ns": writes[-1]["ts_ns"],
            "content_writes": len(content),
            "chunks": sum(w["content_events"] for w in content),
            "tokens": params["tokens"] if params["usage"] else None,
            "status": 200,
        })


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops SYNs when 16+ clients connect at once, and a
    # dropped SYN costs a 1 s retransmit that would show up as bogus latency.
    request_queue_size = 128

    # Set by --tls-cert/--tls-key: accepted sockets are wrapped in TLS (OpenSSL through `ssl`).
    tls_context = None

    def get_request(self):
        sock, addr = super().get_request()
        if self.tls_context is not None:
            sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def server_bind(self):
        # HTTPServer.server_bind() does a reverse DNS lookup we neither need nor want.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # client went away mid-stream; that request is simply not recorded
        super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--truth", required=True, help="JSONL ground-truth output file")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM; needs --tls-key)")
    ap.add_argument("--tls-key", help="the certificate's private key (PEM)")
    ap.add_argument("--tls-on-signal", action="store_true",
                    help="serve cleartext until SIGUSR1, then import ssl (which loads libssl) and serve HTTPS")
    args = ap.parse_args()
    # The truth stamps are taken right after recv()/before send(); with 8+ streams a thread that
    # has returned from recv() can wait a whole GIL switch interval (5 ms by default) before it
    # may stamp. A short interval keeps the truth within microseconds of the syscall.
    sys.setswitchinterval(0.0001)

    server = Server(("127.0.0.1", args.port), Handler)
    server.truth = TruthLog(args.truth)

    def enable_tls(*_):
        # Imported here: a server that never serves TLS never maps libssl, and one started with
        # --tls-on-signal maps it only when told (a library loaded after the agent attached).
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.tls_context = ctx

    if args.tls_cert and args.tls_on_signal:
        signal.signal(signal.SIGUSR1, enable_tls)
    elif args.tls_cert:
        enable_tls()

    def stop(signum, frame):
        raise SystemExit(0)

    def restart(signum, frame):
        # A restart in place: same PID, new program image (what an exec-based supervisor or a
        # `--reload` does). The listening socket is close-on-exec; the new image binds the same port.
        port = server.server_address[1]
        argv = [a for a in sys.argv if a != "--port"]
        if "--port" in sys.argv:
            i = sys.argv.index("--port")
            argv = sys.argv[:i] + sys.argv[i + 2 :]
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable] + argv + ["--port", str(port)])

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, restart)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
