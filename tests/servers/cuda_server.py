#!/usr/bin/env python3
"""A Python SSE server that does its "inference" on a GPU through the CUDA runtime, for the
`cuda` stage profile and the GPU join tests.

    python3 tests/servers/cuda_server.py --port 0 --truth T.jsonl \
        --cudart LIBCUDART --gpu-state STATE [--gpu-pid PID]

On this machine LIBCUDART is the STAND-IN libcudart.so.12 (tests/gpu/cudart_standin.c) and
STATE is the state file of the STAND-IN libnvidia-ml.so.1 (tests/gpu/nvml_standin.c), which the
agent samples. Like PyTorch, the server loads the CUDA runtime lazily (ctypes dlopen) the first
time it needs it: POST /load, or the first completion request.

POST /v1/chat/completions/<id>?prefill_ms=600&tokens=12&interval_ms=60&prefill_launches=4&decode_launches=3
  prefill: writes the GPU script "busy at PREFILL_UTIL %", cudaMalloc + cudaMemcpy H2D, then
           rounds of `prefill_launches` cudaLaunchKernel + cudaDeviceSynchronize until
           prefill_ms have passed; sends the headers and the first token (the prefill pass
           yields it, as in an LLM);
  decode:  scripts "busy at DECODE_UTIL %"; for each further token `decode_launches`
           launches, cudaStreamSynchronize, cudaMemcpy D2H, waits out interval_ms, one content
           event; then cudaFree, the finish event, [DONE] and "idle at IDLE_UTIL %".
One request at a time owns the script (a lock): the test sends them one after another.

Truth (one JSON line per request, see tests/servers/README.md): request_ns (recv of the last
request byte), first_token_ns / end_ns (before the write), the number of calls of each CUDA
function made for the request, keyed by the stage names of agent/stage-sets/cuda.stages, the time
spent inside the synchronising calls as seen from Python (ctypes overhead included), and the
GPU script: utilization set at each phase change with its CLOCK_MONOTONIC time.
"""

import argparse
import ctypes
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sse_server import Server, TruthLog, content_json, finish_json, sse_frame  # noqa: E402

PREFILL_UTIL, DECODE_UTIL, IDLE_UTIL = 90, 30, 5
PREFILL_PROC_SM, DECODE_PROC_SM = 85, 25
FB_TOTAL = 16 << 30
PROC_FB = 2 << 30
H2D, D2H = 1, 2


class Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


class Cuda:
    """The CUDA runtime, loaded on first use."""

    def __init__(self, path):
        self.path = path
        self.lib = None
        self.lock = threading.Lock()
        self.kernel = ctypes.c_int(0)  # a "kernel function" address: any non-null pointer

    def load(self):
        with self.lock:
            if self.lib is None:
                lib = ctypes.CDLL(self.path)
                lib.cudaLaunchKernel.argtypes = [ctypes.c_void_p, Dim3, Dim3, ctypes.c_void_p,
                                                 ctypes.c_size_t, ctypes.c_void_p]
                lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
                lib.cudaFree.argtypes = [ctypes.c_void_p]
                lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
                self.lib = lib
            return self.lib


class GpuScript:
    """Writes the NVML stand-in's state file: what the 'GPU' reports while each phase runs."""

    def __init__(self, path, pid):
        self.path = path
        self.pid = pid
        self.owner = threading.Lock()
        self.set(IDLE_UTIL, None)

    def set(self, util, proc_sm):
        lines = ["# written by tests/servers/cuda_server.py",
                 f"gpu=0 util={util} memutil={util // 2} fb_used={PROC_FB + (1 << 30)} "
                 f"fb_total={FB_TOTAL} power_mw={100000 + util * 2000} temp=50 sm_mhz=1410 "
                 f"mem_mhz=1215 throttle=0 name=\"Stand-in GPU\" uuid=GPU-standin-0"]
        if proc_sm is not None:
            lines.append(f"proc gpu=0 pid={self.pid} fb_used={PROC_FB} sm={proc_sm} mem={proc_sm // 2}")
        tmp = f"{self.path}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(tmp, self.path)  # atomic: the stand-in sees the old or the new state
        return time.monotonic_ns()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        url = urlsplit(self.path)
        body_len = int(self.headers.get("Content-Length") or 0)
        if body_len:
            self.rfile.read(body_len)
        request_ns = time.monotonic_ns()
        if url.path == "/load":
            self.server.cuda.load()
            return self._simple(b'{"loaded":true}')
        if not url.path.startswith("/v1/chat/completions/"):
            self.send_error(404)
            return
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.server.script.owner:
            record = self._complete(url.path, request_ns, q)
        self.server.truth.append(record)

    def _simple(self, body):
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
        self.close_connection = True

    def _chunk(self, text):
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _complete(self, path, request_ns, q):
        prefill_ms = float(q.get("prefill_ms", 600))
        tokens = int(q.get("tokens", 12))
        interval_ms = float(q.get("interval_ms", 60))
        prefill_launches = int(q.get("prefill_launches", 4))
        decode_launches = int(q.get("decode_launches", 3))
        cuda = self.server.cuda.load()
        script = self.server.script
        calls = {k: 0 for k in ("launch_kernel", "memcpy", "device_synchronize", "stream_synchronize",
                                "malloc", "free")}
        sync_ns = {"device_synchronize": 0, "stream_synchronize": 0, "memcpy": 0}
        grid, block = Dim3(1, 1, 1), Dim3(32, 1, 1)

        def timed(name, fn, *args):
            t0 = time.monotonic_ns()
            rc = fn(*args)
            sync_ns[name] = sync_ns.get(name, 0) + time.monotonic_ns() - t0
            calls[name] += 1
            if rc != 0:
                raise RuntimeError(f"{name} returned {rc}")

        gpu_script = [{"t_ns": script.set(PREFILL_UTIL, PREFILL_PROC_SM), "util": PREFILL_UTIL}]
        dev = ctypes.c_void_p()
        host = ctypes.create_string_buffer(4096)
        timed("malloc", cuda.cudaMalloc, ctypes.byref(dev), 1 << 20)
        timed("memcpy", cuda.cudaMemcpy, dev, host, 4096, H2D)
        deadline = request_ns + int(prefill_ms * 1e6)
        while time.monotonic_ns() < deadline:
            for _ in range(prefill_launches):
                timed("launch_kernel", cuda.cudaLaunchKernel, ctypes.addressof(self.server.cuda.kernel),
                      grid, block, None, 0, None)
            timed("device_synchronize", cuda.cudaDeviceSynchronize)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        self.close_connection = True
        # The prefill pass yields the first token; each decode step yields one more.
        token_ns = [time.monotonic_ns()]
        self._chunk(sse_frame(content_json(0), "\n"))
        first_token_ns = token_ns[0]
        gpu_script.append({"t_ns": script.set(DECODE_UTIL, DECODE_PROC_SM), "util": DECODE_UTIL})
        next_t = time.monotonic_ns()
        for i in range(1, tokens):
            next_t += int(interval_ms * 1e6)
            for _ in range(decode_launches):
                timed("launch_kernel", cuda.cudaLaunchKernel, ctypes.addressof(self.server.cuda.kernel),
                      grid, block, None, 0, None)
            timed("stream_synchronize", cuda.cudaStreamSynchronize, None)
            timed("memcpy", cuda.cudaMemcpy, host, dev, 4, D2H)
            delay = next_t - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            token_ns.append(time.monotonic_ns())
            self._chunk(sse_frame(content_json(i), "\n"))
        timed("free", cuda.cudaFree, dev)  # before the response ends: part of the request
        self._chunk(sse_frame(finish_json({"tokens": tokens, "usage": False}), "\n"))
        self._chunk(sse_frame("[DONE]", "\n"))
        end_ns = time.monotonic_ns()
        self.wfile.write(b"0\r\n\r\n")
        gpu_script.append({"t_ns": script.set(IDLE_UTIL, None), "util": IDLE_UTIL})
        return {
            "server": "python-cuda",
            "id": path.rsplit("/", 1)[-1],
            "path": path,
            "request_ns": request_ns,
            "first_token_ns": first_token_ns,
            "token_ns": token_ns,
            "end_ns": end_ns,
            "calls": calls,
            "sync_ns": sync_ns,
            "gpu_script": gpu_script,
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--truth", required=True)
    ap.add_argument("--cudart", required=True, help="libcudart to dlopen on first use")
    ap.add_argument("--gpu-state", required=True, help="NVML stand-in state file this server scripts")
    args = ap.parse_args()
    sys.setswitchinterval(0.0001)
    server = Server(("127.0.0.1", args.port), Handler)
    server.cuda = Cuda(args.cudart)
    server.script = GpuScript(args.gpu_state, os.getpid())
    server.truth = TruthLog(args.truth)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
