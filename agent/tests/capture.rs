//! The socket-layer capture's promises, checked for real (root): only the followed process's
//! connections are captured — an unrelated TCP server, pipes and files never reach a map or the
//! ring — and I/O it cannot see the bytes of (io_uring) is counted and said, never invented.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::*;

fn sum_truth_writes(truth: &[testbed::TruthRecord]) -> (u64, u64) {
    let writes = truth.iter().map(|t| t.writes.len() as u64).sum();
    let bytes = truth.iter().flat_map(|t| t.writes.iter()).map(|w| w.bytes).sum();
    (writes, bytes)
}

#[test]
fn only_the_followed_server_is_captured() {
    let _serial = require_root();
    let dir = scratch_dir("isolation");
    let followed = Server::start(ServerKind::Rust, &dir.join("a").tap_mkdir());
    let other = Server::start(ServerKind::Rust, &dir.join("b").tap_mkdir());
    // Keep-alive connections to the unfollowed server, open across the whole run.
    let mut held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(other.addr()).unwrap()).collect();
    let agent = Agent::attach(followed.pid(), &dir.join("report.json"), &["--capture", "socket"]);
    // Unrelated pipe and file I/O while we follow `followed`.
    let file = dir.join("scratch.bin");
    let dd = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if=/dev/zero bs=512 count=20000 2>/dev/null | cat > {f}; dd if={f} of=/dev/null bs=4k 2>/dev/null",
            f = file.display()
        ))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(dd.success());
    let q = "tokens=6&interval_ms=2&prefill_ms=5";
    let a = testbed::run_load(&followed.addr(), 12, 3, true, q, "a").unwrap();
    let b = testbed::run_load(&other.addr(), 12, 3, true, q, "b").unwrap();
    assert_eq!((a.errors, b.errors), (0, 0));
    for s in &mut held {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let report = agent.stop();
    let s = &report["summary"];
    assert_eq!(s["capture"]["mode"], "socket");
    assert_eq!(s["requests"], 12, "{s}");
    // Every write the followed server made and nothing else: its truth lists each one.
    let (writes, bytes) = sum_truth_writes(&followed.truth());
    assert_eq!(s["events"]["writes"].as_u64().unwrap(), writes, "{s}");
    assert_eq!(s["events"]["write_bytes"].as_u64().unwrap(), bytes, "{s}");
    // The load client opened 3 keep-alive connections to it: exactly those were claimed.
    assert_eq!(s["events"]["accepts"], 3, "{s}");
    assert_eq!(s["lost"]["claimed"], 3, "{s}");
    assert_eq!(s["events"]["joined"], 0, "{s}");
    // The unfollowed server's connections (still open) never entered the connection map.
    assert_eq!(report["kernel_maps"]["CONNS"]["entries"], 0, "{}", report["kernel_maps"]);
    assert_eq!(report["kernel_maps"]["PASSIVE"]["entries"], 0, "{}", report["kernel_maps"]);
    drop(held);
}

#[test]
fn a_connection_open_before_attach_is_joined_at_its_next_request() {
    let _serial = require_root();
    let dir = scratch_dir("joined");
    let server = Server::start(ServerKind::Rust, &dir);
    let mut conn = TcpStream::connect(server.addr()).unwrap();
    let ask = |c: &mut TcpStream, id: &str| {
        write!(c, "GET /v1/chat/completions/{id}?tokens=3&interval_ms=1&prefill_ms=2 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"0\r\n\r\n") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
    };
    ask(&mut conn, "before");
    let agent = Agent::attach(server.pid(), &dir.join("report.json"), &[]);
    ask(&mut conn, "after1");
    ask(&mut conn, "after2");
    drop(conn);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let report = agent.stop();
    let s = &report["summary"];
    assert_eq!(s["events"]["joined"], 1, "{s}");
    assert_eq!(s["events"]["accepts"], 0, "{s}");
    let got = requests_by_path(&report);
    assert!(got.contains_key("/v1/chat/completions/after1") && got.contains_key("/v1/chat/completions/after2"), "{s}");
    assert_eq!(got.len(), 2);
}

#[test]
fn io_uring_server_is_counted_not_invented() {
    let _serial = require_root();
    let dir = scratch_dir("uring");
    let server = Server::start(ServerKind::Uring, &dir);
    let agent = Agent::attach(server.pid(), &dir.join("report.json"), &["--capture", "socket"]);
    let load = testbed::run_load(&server.addr(), 8, 2, true, "tokens=5&interval_ms=2&prefill_ms=5", "u").unwrap();
    assert_eq!(load.errors, 0);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (report, text) = agent.stop_with_stdout();
    let s = &report["summary"];
    let (writes, bytes) = sum_truth_writes(&server.truth());
    // Its sends and receives pass the socket layer with exact lengths, but io_uring leaves no
    // syscall registers that describe the buffer: every one is counted as not captured.
    assert_eq!(s["events"]["writes"].as_u64().unwrap(), writes, "{s}");
    assert_eq!(s["events"]["write_bytes"].as_u64().unwrap(), bytes, "{s}");
    let io = s["events"]["reads"].as_u64().unwrap() + s["events"]["writes"].as_u64().unwrap();
    assert_eq!(s["events"]["no_payload"].as_u64().unwrap(), io, "{s}");
    assert_eq!(s["lost"]["no_payload"].as_u64().unwrap(), io, "{s}");
    // Nothing is made up from lengths alone, and the report says what it could not see.
    assert_eq!(s["requests"], 0, "{s}");
    assert!(text.contains("not captured:") && text.contains("io_uring"), "{text}");
}

/// A pre-fork server: the master listens, two forked workers accept and stream (as uvicorn or
/// gunicorn with `--workers 2`).
const PREFORK: &str = r#"
import os, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(16)
def chunk(b): return b"%x\r\n" % len(b) + b + b"\r\n"
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        while True:
            c, _ = s.accept()
            req = b""
            while b"\r\n\r\n" not in req:
                req += c.recv(4096)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            for i in range(3):
                time.sleep(0.003)
                c.sendall(chunk(b'data: {"choices":[{"delta":{"content":"t%d"}}]}\n\n' % i))
            c.sendall(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            c.close()
    kids.append(pid)
print("LISTENING", s.getsockname()[1], " ".join(map(str, kids)), flush=True)
time.sleep(120)
"#;

#[test]
fn a_pre_fork_server_is_followed_through_its_workers() {
    let _serial = require_root();
    let dir = scratch_dir("prefork");
    let mut master = Command::new("python3").args(["-c", PREFORK]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(master.stdout.take().unwrap()), &mut line).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let port: u16 = words[1].parse().unwrap();
    let mut kids: Vec<u64> = words[2..].iter().map(|w| w.parse().unwrap()).collect();
    kids.sort_unstable();
    let agent = Agent::attach(master.id(), &dir.join("report.json"), &[]);
    for i in 0..6 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET /v1/chat/completions/w{i} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).unwrap();
        assert!(sink.ends_with(b"0\r\n\r\n"));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let report = agent.stop();
    for k in &kids {
        let _ = Command::new("kill").arg(k.to_string()).status();
    }
    let _ = master.kill();
    let _ = master.wait();
    let mut followed: Vec<u64> =
        report["target"]["workers"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    followed.sort_unstable();
    assert_eq!(followed, kids, "the workers serving the master's socket are followed");
    let got = requests_by_path(&report);
    assert_eq!(got.len(), 6, "{}", report["summary"]);
    assert!(got.values().all(|r| r["chunks"] == 3 && r["partial"].is_null()));
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}
impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
