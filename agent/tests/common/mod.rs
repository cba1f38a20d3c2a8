//! Shared harness for the privileged integration tests: start a real test server (Rust, Python
//! or Node), attach the real `inferscope` binary to it (programs load into this kernel), drive
//! load, stop the agent and read its JSON.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod daemon;
pub mod kube_standin;

/// The lines a child writes to a pipe, read on a thread so the child never blocks on it.
pub fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Checks root and serialises the privileged tests of one binary: on a 2-core machine, servers,
/// agents and load clients of several tests at once would measure the scheduler, not us.
pub fn require_root() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // These tests exist to load eBPF into the running kernel; they must not silently skip.
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "privileged eBPF tests must run as root (`cargo xtask test` as root)");
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("inferscope-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A throwaway self-signed certificate for 127.0.0.1 (EC P-256: fast handshakes).
pub fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (cargo xtask setup installs it)");
    assert!(st.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&st.stderr));
    (cert, key)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Rust,
    Python,
    Node,
    /// C, every socket operation through io_uring (tests/targets/uring_sse.c, liburing).
    Uring,
}

/// Compiles a C fixture from tests/targets into `dir` with `cc -O2` and extra arguments.
pub fn c_fixture(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let src = workspace_root().join("tests/targets").join(format!("{name}.c"));
    let exe = dir.join(name);
    let st = Command::new("cc").arg("-O2").arg("-o").arg(&exe).arg(&src).args(extra).status().expect("cc");
    assert!(st.success(), "cannot build {} (cargo xtask setup installs what it needs)", src.display());
    exe
}

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub truth: PathBuf,
    pub kind: ServerKind,
}

impl Server {
    pub fn start(kind: ServerKind, dir: &Path) -> Server {
        Self::start_with_args(kind, dir, &[])
    }

    /// [`Server::start`] with extra server arguments (e.g. `--tls-cert`/`--tls-key`).
    pub fn start_with_args(kind: ServerKind, dir: &Path, extra: &[&str]) -> Server {
        let truth = dir.join(format!("{kind:?}-truth.jsonl").to_lowercase());
        let root = workspace_root();
        // The servers stamp their own truth right after/before each syscall. On a 2-core machine
        // shared with the agent and the load client, the scheduler can put a millisecond between
        // a syscall and the stamp; a higher CPU weight keeps the truth close to the syscall.
        // (The agent's timestamps come from the kernel and do not depend on this.)
        let mut cmd = Command::new("nice");
        cmd.args(["-n", "-15"]);
        match kind {
            ServerKind::Rust => cmd.arg(root.join("target/release/sse-server")),
            ServerKind::Python => cmd.arg("python3").arg(root.join("tests/servers/sse_server.py")),
            ServerKind::Node => cmd.arg("node").arg(root.join("tests/servers/sse_server.js")),
            ServerKind::Uring => cmd.arg(c_fixture(dir, "uring_sse", &["-luring"])),
        };
        cmd.args(["--port", "0", "--truth"]).arg(&truth).args(extra).stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {kind:?} server: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("{kind:?} server said {line:?}"))
            .parse()
            .unwrap();
        Server { child, port, truth, kind }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn truth(&self) -> Vec<testbed::TruthRecord> {
        testbed::read_truth(&self.truth).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Agent {
    pub child: Child,
    pub json: PathBuf,
    stderr_lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Agent {
    /// Starts `inferscope attach --pid PID` and waits until its probes are attached.
    pub fn attach(pid: u32, json: &Path, extra: &[&str]) -> Agent {
        Self::attach_with_env(pid, json, extra, &[])
    }

    /// [`Agent::attach`] with extra environment variables for the agent.
    pub fn attach_with_env(pid: u32, json: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_inferscope"))
            // Tests match records to the servers' truth by request path: raw paths, asked for.
            .args(["attach", "--pid", &pid.to_string(), "--quiet", "--raw-paths", "--json"])
            .arg(json)
            .args(extra)
            // Tests read whole report lines; cutting to the width is tested on its own.
            .env("COLUMNS", "400")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = lines_of(child.stderr.take().unwrap());
        let mut agent = Agent { child, json: json.to_path_buf(), stderr_lines: rx, log: Vec::new() };
        agent.wait_for("attached to pid", Duration::from_secs(30));
        agent
    }

    /// Waits until the agent logged (now or before) a line containing `needle`; panics with the
    /// log if it exits or `timeout` passes first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        if self.log.iter().any(|l| l.contains(needle)) {
            return;
        }
        let t0 = Instant::now();
        loop {
            match self.stderr_lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let done = l.contains(needle);
                    self.log.push(l);
                    if done {
                        return;
                    }
                }
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!("inferscope exited ({status}) before `{needle}`: {:?}", self.drain_log());
                    }
                    assert!(t0.elapsed() < timeout, "no `{needle}` from inferscope in {timeout:?}: {:?}", self.log);
                }
            }
        }
    }

    fn drain_log(&mut self) -> Vec<String> {
        while let Ok(l) = self.stderr_lines.recv_timeout(Duration::from_millis(50)) {
            self.log.push(l);
        }
        self.log.clone()
    }

    /// SIGINT, wait for the report, return the parsed JSON.
    pub fn stop(self) -> serde_json::Value {
        self.stop_with_stdout().0
    }

    /// SIGINT, wait for the report; the parsed JSON and the terminal report (stdout).
    pub fn stop_with_stdout(self) -> (serde_json::Value, String) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait_report_with_stdout()
    }

    /// Waits for the agent to end by itself (duration, target exit) and returns its JSON.
    pub fn wait_report(self) -> serde_json::Value {
        self.wait_report_with_stdout().0
    }

    /// Waits for the agent to end by itself; its JSON and everything it logged.
    pub fn wait_report_with_log(mut self) -> (serde_json::Value, Vec<String>) {
        let status = self.child.wait().unwrap();
        let log = self.drain_log();
        assert!(status.success(), "inferscope failed ({status}): stderr {log:?}");
        let text = std::fs::read_to_string(&self.json).unwrap_or_else(|e| panic!("no JSON report ({e})"));
        (serde_json::from_str(&text).unwrap(), log)
    }

    pub fn wait_report_with_stdout(mut self) -> (serde_json::Value, String) {
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out);
        let log = self.drain_log();
        assert!(status.success(), "inferscope failed ({status}): stdout {out}\nstderr {log:?}");
        let text = std::fs::read_to_string(&self.json).unwrap_or_else(|e| panic!("no JSON report ({e}); stdout {out}"));
        (serde_json::from_str(&text).unwrap(), out)
    }
}

/// Agent requests keyed by path.
pub fn requests_by_path(report: &serde_json::Value) -> std::collections::HashMap<String, serde_json::Value> {
    report["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["path"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Resident set size of a process, KiB (from /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Starts a process that prints `READY <pid>` first; returns it and that pid.
pub fn start_ready(cmd: &mut Command) -> (Child, u32) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid = line.trim().strip_prefix("READY ").unwrap_or_else(|| panic!("said {line:?}")).parse().unwrap();
    (child, pid)
}

/// Folded-stack text (`frame;frame;frame COUNT` per line) to counts by stack.
pub fn parse_folded(text: &str) -> std::collections::HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (stack, n) = l.rsplit_once(' ')?;
            Some((stack.to_string(), n.parse().ok()?))
        })
        .collect()
}

/// The venv's python with `openai` and llama-cpp-python's server (built by `cargo xtask test`).
pub fn openai_python() -> PathBuf {
    std::env::var_os("INFERSCOPE_OPENAI_PYTHON")
        .expect("INFERSCOPE_OPENAI_PYTHON unset: run `cargo xtask test`, which builds the openai venv")
        .into()
}

/// llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`: FastAPI, uvicorn,
/// ctypes into the libllama `cargo xtask test` built) on SmolLM2, on 127.0.0.1; killed on drop.
pub struct LlamaCppPython {
    pub child: Child,
    /// `http://127.0.0.1:PORT/v1`, for the `openai` client.
    pub base: String,
}

impl LlamaCppPython {
    pub fn start(python: &Path) -> LlamaCppPython {
        let llama_server = PathBuf::from(
            std::env::var_os("INFERSCOPE_LLAMA_SERVER").expect("INFERSCOPE_LLAMA_SERVER unset: run `cargo xtask test`"),
        );
        let model =
            std::env::var("INFERSCOPE_LLAMA_MODEL").expect("INFERSCOPE_LLAMA_MODEL unset: run `cargo xtask test`");
        // build/bin holds libllama.so; the sdist's Python package is in src/ next to build/.
        let lib_dir = llama_server.parent().unwrap().to_path_buf();
        let src = lib_dir.parent().unwrap().parent().unwrap().join("src");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(python)
            .args(["-m", "llama_cpp.server", "--model", &model, "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--n_ctx", "512", "--n_threads", "2"])
            .env("LLAMA_CPP_LIB_PATH", &lib_dir)
            .env("PYTHONPATH", &src)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start llama_cpp.server");
        let server = LlamaCppPython { child, base: format!("http://127.0.0.1:{port}/v1") };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(90), "llama_cpp.server not listening in 90 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LlamaCppPython {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
