"""HTTPS load client for the TLS tests: POSTs to /v1/chat/completions/<prefix><n>?<query> from
N threads over Python's `ssl` (keep-alive or a fresh connection per request), reads every
response to its end, and prints one JSON line per request: id, status, sent_ns (CLOCK_MONOTONIC
right before the request's write: the server cannot read it earlier), error.

    python3 tests/servers/tls_load.py --port P --ca cert.pem --requests 24 --concurrency 8 \\
        --keepalive 1 --query 'tokens=12&interval_ms=4' --prefix ka
"""

import argparse
import http.client
import json
import ssl
import sys
import threading
import time

BODY = b'{"messages":[{"role":"user","content":"hello"}],"stream":true}'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True, help="the server's (self-signed) certificate")
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--keepalive", type=int, default=1)
    ap.add_argument("--query", default="")
    ap.add_argument("--prefix", default="r")
    args = ap.parse_args()

    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.check_hostname = False  # the certificate names 127.0.0.1; verification still applies
    lock = threading.Lock()
    next_n = [0]
    results = []

    def worker():
        conn = None
        while True:
            with lock:
                n = next_n[0]
                next_n[0] += 1
            if n >= args.requests:
                break
            rid = f"{args.prefix}{n}"
            res = {"id": rid, "status": 0, "sent_ns": 0, "error": None}
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection("127.0.0.1", args.port, context=ctx, timeout=60)
                    conn.connect()
                headers = {"Content-Type": "application/json"}
                if not args.keepalive:
                    headers["Connection"] = "close"
                res["sent_ns"] = time.monotonic_ns()
                conn.request("POST", f"/v1/chat/completions/{rid}?{args.query}", body=BODY, headers=headers)
                resp = conn.getresponse()
                resp.read()
                res["status"] = resp.status
                if resp.status != 200:
                    res["error"] = f"HTTP status {resp.status}"
                if not args.keepalive or resp.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
                res["error"] = f"{type(e).__name__}: {e}"
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                results.append(res)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(max(1, min(args.concurrency, args.requests)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in sorted(results, key=lambda r: r["id"]):
        sys.stdout.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
