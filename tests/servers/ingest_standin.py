"""Stand-in for a Pyroscope-compatible /ingest endpoint (no Pyroscope here): records what it got.

usage: ingest_standin.py DIR   prints `PORT <n>`, then for each POST /ingest writes
DIR/push-N.query (the query string) and DIR/push-N.body (the raw request body), and answers 200.
Any other path answers 404. Listens on 127.0.0.1 only; stops when stdin closes.
"""
import http.server
import os
import sys
import threading

out = sys.argv[1]
count = 0
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not path.endswith("/ingest"):
            self.send_response(404)
            self.end_headers()
            return
        with lock:
            count += 1
            n = count
        with open(os.path.join(out, f"push-{n}.body.part"), "wb") as f:
            f.write(body)
        with open(os.path.join(out, f"push-{n}.query"), "w") as f:
            f.write(query + "\n" + self.headers.get("Content-Type", "") + "\n")
        os.rename(os.path.join(out, f"push-{n}.body.part"), os.path.join(out, f"push-{n}.body"))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"PORT {srv.server_address[1]}", flush=True)
threading.Thread(target=srv.serve_forever, daemon=True).start()
sys.stdin.read()
srv.shutdown()
