//! The daemon-mode harness: start `inferscope agent` with a config (and environment), wait for
//! /readyz, poll /metrics; servers whose stdout stays open; load. Shared by the daemon tests.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{lines_of, workspace_root};

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    log: mpsc::Receiver<String>,
    pub lines: Vec<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET over a fresh connection: (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(70))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Sum of the samples of `name` whose labels include every `(key, value)` of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            // An empty value means "no such label": Prometheus reads an empty label as absent,
            // and the agent leaves empty labels off.
            let has = |k: &str, v: &str| {
                if v.is_empty() {
                    !rest.contains(&format!("{k}=\""))
                } else {
                    rest.contains(&format!("{k}=\"{v}\""))
                }
            };
            (n == name && labels.iter().all(|(k, v)| has(k, v))).then_some(value)
        })
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

impl Daemon {
    pub fn start(dir: &Path, config: &str, wrapper: &[&str]) -> Daemon {
        Self::start_with_env(dir, config, wrapper, &[])
    }

    pub fn start_with_env(dir: &Path, config: &str, wrapper: &[&str], env: &[(&str, &Path)]) -> Daemon {
        Self::start_with(dir, config, wrapper, |cmd| {
            cmd.envs(env.iter().map(|(k, v)| (*k, *v)));
        })
    }

    /// Starts the agent; `configure` may change its command (environment) before it is spawned.
    pub fn start_with(dir: &Path, config: &str, wrapper: &[&str], configure: impl FnOnce(&mut Command)) -> Daemon {
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config).unwrap();
        let port = free_port();
        let mut cmd = Command::new(wrapper.first().copied().unwrap_or(env!("CARGO_BIN_EXE_inferscope")));
        if !wrapper.is_empty() {
            cmd.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_inferscope"));
        }
        cmd.args(["agent", "--config"])
            .arg(&cfg)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        configure(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let log = lines_of(child.stderr.take().unwrap());
        Daemon { child, port, log, lines: Vec::new() }
    }

    /// Waits for /readyz; panics with the log if the agent exits or takes over 30 s.
    pub fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("agent exited ({st}): {:?}", self.drain());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && http_get(self.port, "/readyz").0 == 200 {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "agent not ready in 30 s: {:?}", self.drain());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn drain(&mut self) -> Vec<String> {
        while let Ok(l) = self.log.recv_timeout(Duration::from_millis(20)) {
            self.lines.push(l);
        }
        self.lines.clone()
    }

    pub fn metrics(&self) -> String {
        let (st, body) = http_get(self.port, "/metrics");
        assert_eq!(st, 200);
        body
    }

    /// Polls /metrics until `pred` holds (10 s at most).
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_within(what, Duration::from_secs(10), pred)
    }

    /// Polls /metrics until `pred` holds (`limit` at most).
    pub fn wait_for_within(&mut self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let m = self.metrics();
            if pred(&m) {
                return m;
            }
            if t0.elapsed() > limit {
                let log = self.drain();
                panic!("timed out waiting for {what}; log: {log:#?}\nmetrics:\n{}", filtered(&m));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        self.drain();
        st
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn filtered(m: &str) -> String {
    m.lines().filter(|l| l.starts_with("inferscope_") && !l.contains("_bucket")).collect::<Vec<_>>().join("\n")
}

/// A server process whose stdout stays open (it prints LISTENING again after a restart in place).
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn start(cmd: &mut Command) -> (Proc, u16) {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let mut p = Proc { child, lines };
        let port = p.listening();
        (p, port)
    }

    pub fn listening(&mut self) -> u16 {
        let l = self.lines.recv_timeout(Duration::from_secs(20)).expect("server printed LISTENING");
        l.trim().strip_prefix("LISTENING ").unwrap_or_else(|| panic!("said {l:?}")).parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rust_server(dir: &Path) -> (Proc, u16) {
    Proc::start(
        Command::new(workspace_root().join("target/release/sse-server"))
            .args(["--port", "0", "--truth"])
            .arg(dir.join("rust-truth.jsonl")),
    )
}

pub fn python_server(dir: &Path, n: u32) -> (Proc, u16) {
    Proc::start(
        Command::new("python3")
            .arg(workspace_root().join("tests/servers/sse_server.py"))
            .args(["--port", "0", "--truth"])
            .arg(dir.join(format!("py-truth-{n}.jsonl"))),
    )
}

pub fn load(port: u16, n: usize, query: &str, tag: &str) {
    let s = testbed::run_load(&format!("127.0.0.1:{port}"), n, 2, true, query, tag).unwrap();
    assert_eq!(s.ok, n, "{:?}", s.results.iter().find(|r| r.error.is_some()));
}
