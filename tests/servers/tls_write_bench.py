"""Cost of the TLS probes per SSL write, with and without `inferscope attach`, alternating.

A target process (this script, `target` mode) serves one TLS connection through Python's `ssl`
(Debian's libssl.so.3) and, on each `run N` line on stdin, makes N 64-byte `sendall`s (one
`SSL_write_ex` each) and prints the mean wall-clock ns per write. A client process (`client`
mode, never probed: the uprobes are scoped to the target) reads and discards. The driver runs
rounds of (without agent, with agent) on the same target and connection and prints per-write
times, the difference (what the uprobe + uretprobe pair, the socket program's ciphertext drop and
the plaintext record cost the writing thread) and the ratio.

    python3 tests/servers/tls_write_bench.py --agent target/release/inferscope --rounds 3
"""

import argparse
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

PAYLOAD = b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n"[:64].ljust(64, b" ")


def target(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    print(f"LISTENING {ls.getsockname()[1]}", flush=True)
    conn, _ = ls.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s = ctx.wrap_socket(conn, server_side=True)
    # A request first, so the agent's parser sees an exchange (and the socket is claimed by a read).
    s.recv(4096)
    for line in sys.stdin:
        n = int(line.split()[1])
        t0 = time.perf_counter_ns()
        for _ in range(n):
            s.sendall(PAYLOAD)
        dt = time.perf_counter_ns() - t0
        print(f"NS_PER_WRITE {dt / n:.1f}", flush=True)


def client(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    while s.recv(65536):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="driver")
    ap.add_argument("--agent", default="target/release/inferscope")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--writes", type=int, default=20000)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--port", type=int)
    args = ap.parse_args()
    if args.mode == "target":
        return target(args.cert, args.key)
    if args.mode == "client":
        return client(args.port, args.cert)

    tmp = tempfile.mkdtemp(prefix="tls-bench-")
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    me = os.path.abspath(__file__)
    tgt = subprocess.Popen([sys.executable, me, "target", "--cert", cert, "--key", key],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(tgt.stdout.readline().split()[1])
    cli = subprocess.Popen([sys.executable, me, "client", "--port", str(port), "--cert", cert])

    def batch():
        tgt.stdin.write(f"run {args.writes}\n")
        tgt.stdin.flush()
        return float(tgt.stdout.readline().split()[1])

    batch()  # warm-up
    rows = []
    for r in range(args.rounds):
        without = batch()
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
    d = sorted(w - wo for wo, w in rows)
    print(f"median extra per TLS write: {d[len(d) // 2]:.0f} ns")


if __name__ == "__main__":
    main()
