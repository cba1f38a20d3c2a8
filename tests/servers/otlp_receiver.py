#!/usr/bin/env python3
"""Stand-in OTLP/HTTP receiver for the tests (no collector, Jaeger or Tempo is installable
here): it accepts POST /v1/metrics and /v1/traces, decodes each body with the official
OpenTelemetry proto definitions (PyPI's ``opentelemetry-proto``), and appends one JSON line
per request to --out:

    {"path": "/v1/metrics", "content_type": "...", "bytes": N, "raw_hex": "...",
     "decoded": <the ExportMetricsServiceRequest as JSON, proto field names>}

A body that does not decode is recorded with "error" and answered 400, as a collector would.
``--status CODE`` answers every request with CODE instead (to test refusals).

    otlp/bin/python tests/servers/otlp_receiver.py --port 0 --out /tmp/otlp.jsonl

Prints ``LISTENING <port>`` once it accepts connections. Listens on 127.0.0.1 only.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

MAX_BODY = 16 * 1024 * 1024
SERVICES = {
    "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest,
                    metrics_service_pb2.ExportMetricsServiceResponse),
    "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest,
                   trace_service_pb2.ExportTraceServiceResponse),
}

_lock = threading.Lock()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--status", type=int, default=200)
    args = ap.parse_args()
    out = open(args.out, "a", encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def answer(self, code, body=b"", ctype="application/x-protobuf"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_BODY:
                return self.answer(413)
            body = self.rfile.read(n)
            rec = {"path": self.path, "content_type": self.headers.get("Content-Type"),
                   "bytes": len(body), "raw_hex": body.hex()}
            service = SERVICES.get(self.path)
            code, reply = 404, b""
            if service is not None:
                req_type, resp_type = service
                msg = req_type()
                try:
                    msg.ParseFromString(body)
                    rec["decoded"] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
                    code, reply = 200, resp_type().SerializeToString()
                except DecodeError as e:
                    rec["error"] = str(e)
                    code = 400
            if args.status != 200:
                code, reply = args.status, b""
            rec["answered"] = code
            with _lock:
                out.write(json.dumps(rec) + "\n")
                out.flush()
            self.answer(code, reply)

    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"LISTENING {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
