#!/usr/bin/env python3
"""Self-check for the three SSE test servers and the load client.

    cargo build -p testbed --release
    python3 tests/servers/selfcheck.py                 # all servers, all cases
    python3 tests/servers/selfcheck.py --strace        # also audit syscalls (needs strace)
    python3 tests/servers/selfcheck.py --servers node --strace -v

For every server it runs `load-client` over a matrix of query variations, then checks
each truth record against the schedule the protocol prescribes (sse_server.plan(), the
Python twin of testbed/src/proto.rs): field set, write count, bytes and
content_events per write, derived fields, timing sanity, CLOCK_MONOTONIC alignment with
this process, and that GET /stats equals the number of recorded writes. With --strace,
the server runs under `strace -f` and every send-type syscall on a TCP socket is
matched against the truth writes (count and byte sizes), which is how "one logical
write = one syscall" is verified.
"""

import argparse
import collections
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ next to the servers
import sse_server as proto  # noqa: E402  (the Python copy of the protocol)

FIELDS = {"server", "id", "path", "method", "request_ns", "writes", "first_byte_ns",
          "first_token_ns", "end_ns", "content_writes", "chunks", "tokens", "status"}
# Timer slack: Node's setTimeout works on a millisecond loop clock and can fire up
# to ~1 ms early relative to CLOCK_MONOTONIC.
SLACK_NS = 1_500_000

# (name, query, keepalive)
CASES = [
    ("split", "tokens=8&interval_ms=3&split=1", True),
    ("close", "tokens=8&interval_ms=3&framing=close", True),
    ("json", "tokens=8&interval_ms=3&framing=json", True),
    ("batch", "tokens=8&interval_ms=3&batch=3", True),
    ("coalesce", "tokens=8&interval_ms=3&coalesce=1", True),
    ("crlf", "tokens=8&interval_ms=3&eol=crlf", True),
    ("cr", "tokens=8&interval_ms=3&eol=cr", True),
    ("comments", "tokens=8&interval_ms=3&comments=1", True),
    ("nokeep", "tokens=5&interval_ms=2&prefill_ms=10", False),
    ("mixed", "tokens=7&interval_ms=2&batch=2&split=1&comments=1&coalesce=1&usage=0&done=0", True),
    ("zero", "tokens=0&prefill_ms=5", True),
    ("closesplit", "tokens=4&interval_ms=2&framing=close&split=1&eol=crlf", False),
    ("closecoal", "tokens=5&interval_ms=2&framing=close&coalesce=1&batch=2&comments=1&eol=cr", True),
]


def server_cmd(name, bin_dir, port_arg, truth):
    if name == "rust":
        return [os.path.join(bin_dir, "sse-server"), "--port", port_arg, "--truth", truth]
    if name == "python":
        return [sys.executable, os.path.join(HERE, "sse_server.py"), "--port", port_arg, "--truth", truth]
    if name == "node":
        return ["node", os.path.join(HERE, "sse_server.js"), "--port", port_arg, "--truth", truth]
    raise ValueError(name)


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers={"Connection": "close"})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def expected_events(server, p, client_close):
    """content_events of each write the server should make."""
    if server != "node":
        return [e for _, _, e in proto.plan(p, client_close)]
    if p["framing"] == "json":
        return [0]
    # Node: flushHeaders (unless coalesced), one res.write per SSE payload, res.end()
    # (writes the chunked terminator; nothing for close framing).
    events = [] if p["coalesce"] else [0]
    events += node_sse_events(p)
    if p["framing"] == "chunked":
        events.append(0)
    return events


def node_sse_events(p):
    # proto.plan() minus headers/terminator, with headers coalesced into nothing.
    q = dict(p, coalesce=True, framing="close")
    return [e for _, _, e in proto.plan(q, False)]


def node_sse_payload_sizes(p):
    q = dict(p, coalesce=False, framing="close")
    return [len(b) for _, b, _ in proto.plan(q, False)][1:]


def check_record(rec, server, p, client_close, t0, t1, errors):
    def bad(msg):
        errors.append(f"{server} {rec.get('id')}: {msg}")

    if set(rec) != FIELDS:
        bad(f"fields {sorted(set(rec) ^ FIELDS)} differ from the schema")
        return
    w = rec["writes"]
    if rec["server"] != server or rec["status"] != 200 or rec["method"] != "POST":
        bad("server/status/method wrong")
    if rec["path"] != f"/v1/chat/completions/{rec['id']}":
        bad(f"path {rec['path']!r}")
    if not w:
        bad("no writes")
        return
    ts = [x["ts_ns"] for x in w]
    if ts != sorted(ts):
        bad("write timestamps not monotonic")
    if not t0 < rec["request_ns"] < ts[0] <= ts[-1] < t1:
        bad("request_ns/write timestamps out of order or not CLOCK_MONOTONIC of this host")
    if rec["first_byte_ns"] != ts[0] or rec["end_ns"] != ts[-1]:
        bad("first_byte_ns/end_ns inconsistent with writes")
    content = [x for x in w if x["content_events"] > 0]
    if rec["first_token_ns"] != (content[0]["ts_ns"] if content else None):
        bad("first_token_ns inconsistent")
    if rec["content_writes"] != len(content) or rec["chunks"] != sum(x["content_events"] for x in w):
        bad("content_writes/chunks inconsistent with writes")

    want_events = expected_events(server, p, client_close)
    got_events = [x["content_events"] for x in w]
    if got_events != want_events:
        bad(f"content_events {got_events} != expected {want_events}")
    want_chunks = 0 if p["framing"] == "json" else p["tokens"]
    if rec["chunks"] != want_chunks:
        bad(f"chunks {rec['chunks']} != {want_chunks}")
    if rec["tokens"] != (p["tokens"] if p["usage"] else None):
        bad(f"tokens {rec['tokens']}")

    if server != "node":
        want_bytes = [len(b) for _, b, _ in proto.plan(p, client_close)]
        got_bytes = [x["bytes"] for x in w]
        if got_bytes != want_bytes:
            bad(f"bytes {got_bytes} != expected {want_bytes}")
    elif p["framing"] != "json":
        # Node: headers are its own, but every res.write after the first must be the
        # payload plus Node's chunk framing.
        sizes = node_sse_payload_sizes(p)
        first_payload_write = 0 if p["coalesce"] else 1
        for i, size in enumerate(sizes[1:], start=1):
            want = size + (len(f"{size:x}") + 4 if p["framing"] == "chunked" else 0)
            got = w[first_payload_write + i]["bytes"]
            if got != want:
                bad(f"write {first_payload_write + i} has {got} bytes, expected {want}")

    # Timing: prefill before the first token, interval between content writes.
    ms = 1_000_000
    if content and p["framing"] != "json":
        if rec["first_token_ns"] - rec["request_ns"] < p["prefill_ms"] * ms - SLACK_NS:
            bad("first token earlier than prefill_ms")
        for a, b in zip(content, content[1:]):
            if b["ts_ns"] - a["ts_ns"] < p["interval_ms"] * ms - SLACK_NS:
                bad("content writes closer than interval_ms")
                break
    if p["framing"] == "json":
        total = (p["prefill_ms"] + p["tokens"] * p["interval_ms"]) * ms
        if ts[0] - rec["request_ns"] < total - SLACK_NS:
            bad("json reply earlier than prefill + tokens*interval")


STRACE_RE = re.compile(r"^(?:\d+\s+)?(write|writev|sendto|sendmsg)\((\d+)<([^>]*)>(.*)\)\s+=\s+(-?\d+)")
HEALTH_RE = re.compile(r'(\\r\\n\\r\\n|iov_base=")ok"')


def parse_strace(prefix):
    """Send-type syscalls on TCP sockets as (syscall, bytes, reply) where reply is
    "stats", "health" or None (a streaming/json response write)."""
    calls = []
    tdir = os.path.dirname(prefix)
    for fn in os.listdir(tdir):
        with open(os.path.join(tdir, fn), errors="replace") as f:
            for line in f:
                m = STRACE_RE.match(line)
                if not m or not m.group(3).startswith("TCP"):
                    continue
                text = m.group(4)
                reply = "stats" if '{\\"writes\\":' in text else "health" if HEALTH_RE.search(text) else None
                calls.append((m.group(1), int(m.group(5)), reply))
    return calls


def run_server(server, args, tmp, errors):
    truth = os.path.join(tmp, f"truth-{server}.jsonl")
    cmd = server_cmd(server, args.bin_dir, "0", truth)
    trace_prefix = None
    if args.strace:
        os.makedirs(os.path.join(tmp, f"strace-{server}"), exist_ok=True)
        trace_prefix = os.path.join(tmp, f"strace-{server}", "t")
        cmd = ["strace", "-f", "-ff", "-yy", "-qq", "-s", "400", "-e", "signal=none",
               "-e", "trace=write,writev,sendto,sendmsg", "-o", trace_prefix] + cmd
    t0 = time.monotonic_ns()
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline().strip()
        if not line.startswith("LISTENING "):
            errors.append(f"{server}: bad first line {line!r}")
            return
        port = int(line.split()[1])
        health_writes = 0
        if get(port, "/health") != (200, b"ok"):
            errors.append(f"{server}: /health wrong")
        health_writes += 1

        for name, query, keepalive in CASES:
            lc = [os.path.join(args.bin_dir, "load-client"), "--addr", f"127.0.0.1:{port}",
                  "--requests", str(args.requests), "--concurrency", str(args.concurrency),
                  "--query", query, "--id-prefix", f"{name}-"]
            if keepalive:
                lc.append("--keepalive")
            out = subprocess.run(lc, capture_output=True, text=True, timeout=120)
            if out.returncode != 0 or f"DONE requests={args.requests} errors=0" not in out.stdout:
                errors.append(f"{server} {name}: load-client failed: {out.stdout} {out.stderr}")
            elif args.verbose:
                print(f"  {server:6} {name:10} {out.stdout.strip()}")

        # Records are written before the last byte reaches the client, but give slow
        # servers a moment anyway.
        time.sleep(0.2)
        status, body = get(port, "/stats")
        stats = json.loads(body)["writes"] if status == 200 else None
    finally:
        # Under strace, signal the traced server, not strace (which would just detach).
        target = srv.pid
        if args.strace:
            try:
                with open(f"/proc/{srv.pid}/task/{srv.pid}/children") as f:
                    target = int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                pass
        os.kill(target, signal.SIGTERM)
        try:
            rc = srv.wait(timeout=10)
            if rc != 0:
                errors.append(f"{server}: exit status {rc} after SIGTERM")
        except subprocess.TimeoutExpired:
            srv.kill()
            errors.append(f"{server}: did not exit on SIGTERM")
    t1 = time.monotonic_ns()

    with open(truth) as f:
        records = [json.loads(l) for l in f]
    by_case = collections.defaultdict(list)
    for rec in records:
        by_case[rec["id"].split("-")[0]].append(rec)
    for name, query, keepalive in CASES:
        recs = by_case.get(name, [])
        if len(recs) != args.requests:
            errors.append(f"{server} {name}: {len(recs)} truth records, expected {args.requests}")
        p = proto.parse_params(query)
        for rec in recs:
            check_record(rec, server, p, not keepalive, t0, t1, errors)

    recorded = sum(len(r["writes"]) for r in records)
    if stats != recorded + health_writes:
        errors.append(f"{server}: /stats says {stats} writes, truth has {recorded} + {health_writes} (health)")
    summary = f"{server:6}: {len(records)} records, {recorded} truth writes, /stats={stats}"

    if trace_prefix:
        calls = parse_strace(trace_prefix)
        counted = [c for c in calls if c[2] != "stats"]
        kinds = collections.Counter(c[0] for c in counted)
        summary += f", strace: {len(counted)} send syscalls on client sockets {dict(kinds)}"
        if len(counted) != stats:
            errors.append(f"{server}: strace saw {len(counted)} send syscalls, /stats says {stats}")
        if sum(1 for c in calls if c[2] == "health") != health_writes:
            errors.append(f"{server}: /health reply was not exactly {health_writes} syscall(s)")
        got = collections.Counter(c[1] for c in counted if c[2] is None)
        want = collections.Counter(x["bytes"] for r in records for x in r["writes"])
        if got != want:
            errors.append(f"{server}: syscall sizes differ from truth writes: "
                          f"only in strace {dict(got - want)}, only in truth {dict(want - got)}")
    print(summary)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="rust,python,node")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (truth files, traces)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.strace and not shutil.which("strace"):
        sys.exit("strace not installed")

    tmp = tempfile.mkdtemp(prefix="inferscope-selfcheck-")
    errors = []
    try:
        for server in args.servers.split(","):
            run_server(server, args, tmp, errors)
    finally:
        if args.keep:
            print(f"artifacts in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for e in errors[:50]:
        print("FAIL", e)
    if errors:
        sys.exit(f"{len(errors)} problem(s)")
    print("OK")


if __name__ == "__main__":
    main()
