#!/usr/bin/env python3
"""gRPC server-streaming test server and client (grpcio from PyPI, no generated stubs).

    python grpc_stream.py server --port 0 --truth /tmp/truth-grpc.jsonl
    python grpc_stream.py client --port P --streams 6 --query "tokens=5&interval_ms=4" --prefix g \
        [--prefill-ms 10 --stagger-ms 15] [--fail-first]
    python grpc_stream.py server --port 0 --truth T.jsonl --tls-cert c.pem --tls-key k.pem
    python grpc_stream.py client --port P --ca c.pem ...

With --tls-cert/--tls-key the server takes TLS credentials (grpcio's own BoringSSL, linked into
its extension without exported symbols: the agent sees these connections encrypted and cannot
decode them); with --ca the client connects over TLS trusting that certificate (also for
grpc_stream.js, the same service on @grpc/grpc-js over Node's OpenSSL).

The server serves `/inference.GRPCInferenceService/ModelStreamInfer` (the KServe v2 / Triton
method name) through a generic handler with raw-bytes (de)serializers, so no .proto is
compiled. The request message is a query string (`id=..&tokens=N&interval_ms=..&prefill_ms=..
&fail=0|1`); the response is `tokens` messages, then the trailers (`grpc-status` 0, or
RESOURCE_EXHAUSTED with `fail=1` after the messages).

Truth, one JSON line per finished call, in the schema of tests/servers/README.md: request_ns
is stamped when the handler starts (after grpc read and decoded the request), each write's
ts_ns right before the message is handed to grpc (`yield`); grpc's own threads then send it.
Timestamps: time.monotonic_ns() = CLOCK_MONOTONIC.

The client opens one channel (one HTTP/2 connection) and runs all streams on it at once;
it prints one JSON line per stream ({id, sent_ns, messages, code}) then `DONE n`.
"""
import argparse
import json
import os
import sys
import threading
import time
from concurrent import futures
from urllib.parse import parse_qs

import grpc

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
SERVICE, NAME = METHOD[1:].split("/")


def identity(b):
    return b


def sleep_ms(ms):
    deadline = time.monotonic_ns() + int(ms * 1e6)
    while True:
        left = deadline - time.monotonic_ns()
        if left <= 0:
            return
        time.sleep(left / 1e9)


class Truth:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.lock = threading.Lock()

    def write(self, rec):
        with self.lock:
            os.write(self.fd, (json.dumps(rec) + "\n").encode())


def stream_infer(truth):
    def handler(request, context):
        request_ns = time.monotonic_ns()
        q = {k: v[0] for k, v in parse_qs(request.decode()).items()}
        tokens = int(q.get("tokens", "5"))
        interval = float(q.get("interval_ms", "5"))
        prefill = float(q.get("prefill_ms", "10"))
        fail = q.get("fail", "0") == "1"
        writes = []
        sleep_ms(prefill)
        for i in range(tokens):
            if i:
                sleep_ms(interval)
            writes.append({"ts_ns": time.monotonic_ns(), "content_events": 1})
            yield b"\x0a\x05tok%03d" % i  # a protobuf-shaped message; its content is never read
        ended = time.monotonic_ns()
        rec = {
            "server": "python-grpc",
            "id": q.get("id", ""),
            "path": METHOD,
            "method": "POST",
            "request_ns": request_ns,
            "writes": writes,
            "first_byte_ns": writes[0]["ts_ns"] if writes else ended,
            "first_token_ns": writes[0]["ts_ns"] if writes else None,
            "end_ns": ended,
            "content_writes": len(writes),
            "chunks": len(writes),
            "tokens": None,
            "status": 200,
            "grpc_status": 8 if fail else 0,
        }
        truth.write(rec)
        if fail:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "asked to fail")

    return handler


def serve(args):
    truth = Truth(args.truth)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {NAME: grpc.unary_stream_rpc_method_handler(stream_infer(truth), request_deserializer=identity, response_serializer=identity)},
    )
    server.add_generic_rpc_handlers((handler,))
    if args.tls_cert:
        with open(args.tls_key, "rb") as k, open(args.tls_cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        port = server.add_secure_port(f"127.0.0.1:{args.port}", creds)
    else:
        port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"LISTENING {port}", flush=True)
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


def client(args):
    if args.ca:
        with open(args.ca, "rb") as f:
            channel = grpc.secure_channel(f"127.0.0.1:{args.port}", grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(f"127.0.0.1:{args.port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    call = channel.unary_stream(METHOD, request_serializer=identity, response_deserializer=identity)
    results = [None] * args.streams

    def one(i):
        rid = f"{args.prefix}{i}"
        fail = "1" if args.fail_first and i == 0 else "0"
        prefill = args.prefill_ms + args.stagger_ms * i
        out = {"id": rid, "sent_ns": time.monotonic_ns(), "messages": 0, "code": "OK"}
        try:
            for _ in call(f"id={rid}&fail={fail}&prefill_ms={prefill}&{args.query}".encode(), timeout=30):
                out["messages"] += 1
        except grpc.RpcError as e:
            out["code"] = e.code().name
        results[i] = out

    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        print(json.dumps(r))
    print(f"DONE {len(results)}", flush=True)
    channel.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--truth")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--query", default="")
    p.add_argument("--prefix", default="g")
    p.add_argument("--fail-first", action="store_true")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--ca")
    # Stream i waits prefill_ms + i * stagger_ms before its first message, so streams that
    # share one method name (the path) can be told apart by their first-token times.
    p.add_argument("--prefill-ms", type=float, default=10)
    p.add_argument("--stagger-ms", type=float, default=0)
    args = p.parse_args()
    if args.mode == "server":
        if not args.truth:
            sys.exit("server needs --truth")
        serve(args)
    else:
        client(args)


if __name__ == "__main__":
    main()
