"""Cost of the TLS probes per SSL write, with and without `inferscope attach`, alternating.

A target process (this script, `target` mode) serves one TLS connection through Python's `ssl`
(Debian's libssl.so.3) and, on each `run N` line on stdin, makes N 64-byte `sendall`s (one
`SSL_write_ex` each) and prints the mean wall-clock ns per write. A client process (`client`
mode, never probed: the uprobes are scoped to the target) reads and discards. The driver runs
rounds of (without agent, with agent) on the same target and connection and prints per-write
times, the difference (what the uprobe + uretprobe pair, the socket program's ciphertext drop and
the plaintext record cost the writing thread) and the ratio.

    python3 tests/servers/tls_write_bench.py --agent target/release/inferscope --rounds 3
    python3 tests/servers/tls_write_bench.py --peer bpftrace --rounds 3
    python3 tests/servers/tls_write_bench.py --cleartext --agent A --rounds 3

`--cleartext`: the target imports `ssl` (so libssl is mapped and the TLS probes are attached)
but serves plain TCP: what the TLS bookkeeping costs a cleartext write of a TLS-capable
process (the socket program's `TLS_CALLS`/`TLS_SOCKS`/`TLS_PENDING` lookups), to compare two
agent builds run after each other.
"""

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
PAYLOAD = b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n"[:64].ljust(64, b" ")


def target(cert, key, cleartext):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    print(f"LISTENING {ls.getsockname()[1]}", flush=True)
    conn, _ = ls.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = conn if cleartext else ctx.wrap_socket(conn, server_side=True)
    for line in sys.stdin:
        n = int(line.split()[1])
        # Each batch answers a request read first: with the agent attached that read claims the
        # connection and maps the SSL object to it, so every write below takes the whole path
        # (probe pair, socket program dropping the ciphertext, plaintext record, parser).
        s.recv(4096)
        s.sendall(HEAD)
        t0 = time.perf_counter_ns()
        for _ in range(n):
            s.sendall(PAYLOAD)
        dt = time.perf_counter_ns() - t0
        print(f"NS_PER_WRITE {dt / n:.1f}", flush=True)


def client(port, ca, writes, cleartext):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    s = socket.create_connection(("127.0.0.1", port))
    if not cleartext:
        s = ctx.wrap_socket(s)
    while True:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        want = len(HEAD) + writes * len(PAYLOAD)
        while want > 0:
            got = s.recv(min(want, 65536))
            if not got:
                return
            want -= len(got)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="driver")
    ap.add_argument("--agent", default="target/release/inferscope")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peer", default="", help="bpftrace: the same probe pair with bpftrace instead of the agent")
    ap.add_argument("--writes", type=int, default=20000)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--port", type=int)
    ap.add_argument("--cleartext", action="store_true")
    args = ap.parse_args()
    if args.mode == "target":
        return target(args.cert, args.key, args.cleartext)
    if args.mode == "client":
        return client(args.port, args.cert, args.writes, args.cleartext)

    tmp = tempfile.mkdtemp(prefix="tls-bench-")
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    me = os.path.abspath(__file__)
    clear = ["--cleartext"] if args.cleartext else []
    tgt = subprocess.Popen([sys.executable, me, "target", "--cert", cert, "--key", key] + clear,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(tgt.stdout.readline().split()[1])
    cli = subprocess.Popen([sys.executable, me, "client", "--port", str(port), "--cert", cert,
                            "--writes", str(args.writes)] + clear)

    def batch():
        tgt.stdin.write(f"run {args.writes}\n")
        tgt.stdin.flush()
        return float(tgt.stdout.readline().split()[1])

    batch()  # warm-up
    rows = []
    for r in range(args.rounds):
        without = batch()
        if args.peer == "bpftrace":
            # The same probe pair with a minimal program (entry time per thread, a count at
            # return): what any uprobe-based tool pays on this machine.
            lib = "/lib/x86_64-linux-gnu/libssl.so.3"
            prog = (f"uprobe:{lib}:SSL_write_ex {{ @s[tid] = nsecs; }} "
                    f"uretprobe:{lib}:SSL_write_ex {{ @n = count(); delete(@s[tid]); }}")
            agent = subprocess.Popen(["bpftrace", "-p", str(tgt.pid), "-e", prog],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for line in agent.stdout:
                if line.startswith("Attaching"):
                    break
            time.sleep(1)
        else:
            agent = subprocess.Popen([args.agent, "attach", "--pid", str(tgt.pid), "--quiet", "--json",
                                      os.path.join(tmp, f"r{r}.json")], stderr=subprocess.PIPE, text=True)
            for line in agent.stderr:
                if "attached to pid" in line:
                    if "TLS: libssl probes" not in line:
                        sys.exit(f"TLS probes not attached: {line}")
                    break
        with_agent = batch()
        agent.send_signal(2)
        agent.wait()
        rows.append((without, with_agent))
        print(f"round {r + 1}: without {without:.0f} ns/write, with {with_agent:.0f} ns/write, "
              f"+{with_agent - without:.0f} ns per write, ratio {with_agent / without:.2f}", flush=True)
    tgt.stdin.close()
    tgt.wait()
    cli.wait()
    if args.peer != "bpftrace":
        r = json.load(open(os.path.join(tmp, "r0.json")))["summary"]
        print(f"round 1 agent: {r['events']['writes']} writes seen, kernel TLS counters {r['lost']['tls']}")
    d = sorted(w - wo for wo, w in rows)
    print(f"median extra per {'cleartext' if args.cleartext else 'TLS'} write: {d[len(d) // 2]:.0f} ns")


if __name__ == "__main__":
    main()
