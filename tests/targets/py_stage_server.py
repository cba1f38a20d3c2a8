"""A streaming Python server with known CPU time in named functions, for sampled Python stages
(issue 14). Standard library only.

Usage: py_stage_server.py TRUTH_JSONL [--worker]

Prints `PORT <port>` once listening on 127.0.0.1. `POST /v1/chat/completions` with a JSON body
`{"tokens": N, "prefill_ms": P, "decode_ms": D}` streams N SSE content events and `[DONE]`, then
closes. Before the first event `tokenize_prompt` burns P ms of CPU, before each event
`decode_token` burns D ms. One line per request is appended to TRUTH_JSONL:
`{"request_ns", "end_ns", "tokenize_ns", "decode_ns", "model_tid", "handler_tid"}`, the two
durations being the CPU time (time.thread_time_ns) the running thread spent inside each
function, and the stamps CLOCK_MONOTONIC (time.monotonic_ns) when the body had been read and
after the last write.

Without --worker each request runs on its own handler thread (ThreadingHTTPServer). With
--worker one model thread runs every request's functions, one request at a time, in arrival
order, and hands the tokens to the handler threads, which write them: the shape of
llama-cpp-python's server and of engine loops (the thread that computes is not the thread that
writes).
"""

import json
import queue
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRUTH = sys.argv[1]
WORKER = "--worker" in sys.argv[2:]
truth_lock = threading.Lock()
jobs = queue.Queue()


def burn(ms):
    """Burns `ms` of this thread's CPU time; returns the CPU ns it took."""
    t0 = time.thread_time_ns()
    goal = t0 + int(ms * 1e6)
    x = 0
    while time.thread_time_ns() < goal:
        for i in range(200):
            x += i * i
    return time.thread_time_ns() - t0


def tokenize_prompt(ms):
    return burn(ms)


def decode_token(ms):
    return burn(ms)


def run_request(job, emit):
    """The model's work for one request: `emit(i)` after each token."""
    job["tokenize_ns"] += tokenize_prompt(job["prefill_ms"])
    for i in range(job["tokens"]):
        job["decode_ns"] += decode_token(job["decode_ms"])
        emit(i)
    job["model_tid"] = threading.get_native_id()


def model_loop():
    while True:
        job, out = jobs.get()
        run_request(job, out.put)
        out.put(None)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        job = {
            "request_ns": time.monotonic_ns(),
            "tokens": int(body.get("tokens", 4)),
            "prefill_ms": float(body.get("prefill_ms", 20)),
            "decode_ms": float(body.get("decode_ms", 5)),
            "tokenize_ns": 0,
            "decode_ns": 0,
            "handler_tid": threading.get_native_id(),
        }
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Connection: close\r\n\r\n"
        )

        def write_token(i):
            frame = json.dumps({"choices": [{"index": 0, "delta": {"content": f"t{i} "}}]})
            self.wfile.write(f"data: {frame}\n\n".encode())

        if WORKER:
            out = queue.Queue()
            jobs.put((job, out))
            while (i := out.get()) is not None:
                write_token(i)
        else:
            run_request(job, write_token)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        job["end_ns"] = time.monotonic_ns()
        self.close_connection = True
        with truth_lock, open(TRUTH, "a") as f:
            keys = ("request_ns", "end_ns", "tokenize_ns", "decode_ns", "model_tid", "handler_tid")
            f.write(json.dumps({k: job[k] for k in keys}) + "\n")


def main():
    if WORKER:
        threading.Thread(target=model_loop, name="model", daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
