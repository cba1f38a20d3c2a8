#!/usr/bin/env python3
# HTTP/2 capture overhead on the Node http2 SSE server: alternating rounds without/with
# `inferscope attach` (target/release/inferscope), same load each time (4 connections x 8
# streams x TOKENS token writes, no pause). Usage: python3 tests/servers/h2_overhead.py ROOT ROUNDS TOKENS (as root)
import os, signal, subprocess, sys, time, json
root, rounds, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
agent_bin = os.path.join(root, "target/release/inferscope")
srv = subprocess.Popen(["node", f"{root}/tests/servers/sse_server_h2.js", "--port", "0", "--truth", "/tmp/h2-overhead-truth.jsonl"], stdout=subprocess.PIPE, text=True)
port = srv.stdout.readline().split()[1]
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def load(tag):
    q = f"tokens={tokens}&interval_ms=0&prefill_ms=0"
    t0 = time.monotonic(); c0 = cpu(srv.pid)
    out = subprocess.run(["node", f"{root}/tests/servers/h2_client.js", "--port", port, "--connections", "4", "--streams", "8", "--query", q, "--prefix", tag], capture_output=True, text=True)
    assert "DONE 32" in out.stdout, out
    return time.monotonic() - t0, cpu(srv.pid) - c0
load("warm")
rows = []
for r in range(rounds):
    for mode in ("without", "with"):
        ag = None
        if mode == "with":
            ag = subprocess.Popen([agent_bin, "attach", "--pid", str(srv.pid), "--quiet", "--json", f"/tmp/h2-overhead-r{r}.json"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
            for line in ag.stderr:
                if "attached to pid" in line: break
        wall, scpu = load(f"{mode}{r}-")
        acpu = None
        if ag:
            acpu = cpu(ag.pid)
            ag.send_signal(signal.SIGINT); ag.wait()
            rep = json.load(open(f"/tmp/h2-overhead-r{r}.json"))
            n = len(rep["requests"]); h2 = rep["summary"]["parse"]["h2"]
        writes = 32 * (tokens + 3)
        rows.append((r + 1, mode, wall, writes / wall, scpu / writes * 1e6, acpu, n if ag else None))
        print(f"round {r+1} {mode:7} wall {wall:.3f}s  {writes/wall:,.0f} stream writes/s  server CPU {scpu/writes*1e6:.1f} us/write" + (f"  agent CPU {acpu:.2f}s, {n} records, h2 {h2}" if ag else ""), flush=True)
srv.terminate()
for r in range(rounds):
    a, b = rows[2*r], rows[2*r+1]
    print(f"round {r+1}: with/without throughput {b[3]/a[3]:.3f}, server CPU per write {a[4]:.1f} -> {b[4]:.1f} us")
