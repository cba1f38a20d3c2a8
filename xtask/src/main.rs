//! `cargo xtask <setup|build|test|demo|bench>`: everything a fresh machine needs, in one place.
//!
//! setup: nightly rust-src (for `-Z build-std=core`), bpf-linker built against the nightly
//! toolchain's own libLLVM (no system LLVM of the right version exists here), and the Debian
//! packages tests use. Idempotent: each step checks before it acts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod bench;
mod capture_bench;
mod daemon_bench;
mod dist;
mod grpc;
mod llama;
mod measure;
mod otlp;
mod pyspy;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent).
    Setup,
    /// setup + release build of the agent and the test targets.
    Build,
    /// setup + build + every test: unit, parser fuzz smoke, and privileged eBPF tests (root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Fetch and build llama.cpp's llama-server with a small real model (cached in ~/.cache/inferscope/llama-<versions>).
    Llama,
    /// setup + build, then overhead benchmarks (with/without the agent, alternating) and criterion.
    Bench {
        /// Alternating pairs of runs per load level.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Run only these steps (comma-separated or repeated), e.g. `--only cpu`.
        #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(STEPS))]
        only: Vec<String>,
        /// Measure the binaries already built (e.g. an older agent through INFERSCOPE_BIN for the
        /// capture step): skip setup and build.
        #[arg(long)]
        no_build: bool,
    },
    /// setup + build, then the release binary (debug info split off) as a tarball and a .deb with
    /// a systemd unit, the default config and the dashboards; both unpacked and checked.
    Dist {
        #[arg(long, default_value = "out/dist")]
        out: PathBuf,
    },
    /// setup + build, then attach to a bundled example server, drive streamed requests, report.
    Demo {
        #[arg(long, default_value_t = 48)]
        requests: usize,
        #[arg(long, default_value = "out/demo.json")]
        json: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Build => {
            setup()?;
            build()
        }
        Cmd::Test { args } => {
            setup()?;
            build()?;
            let l = llama::ensure(&root)?;
            std::env::set_var("INFERSCOPE_LLAMA_SERVER", &l.server);
            std::env::set_var("INFERSCOPE_LLAMA_MODEL", &l.model);
            std::env::set_var("INFERSCOPE_OPENAI_PYTHON", llama::ensure_python()?);
            std::env::set_var("INFERSCOPE_GRPC_PYTHON", grpc::ensure_python()?);
            std::env::set_var("INFERSCOPE_OTLP_PYTHON", otlp::ensure_python()?);
            std::env::set_var("INFERSCOPE_GRPC_JS", grpc::ensure_grpc_js()?);
            std::env::set_var("INFERSCOPE_PYSPY", pyspy::ensure()?);
            let tests = test(&args);
            // The packages too, after the tests so a packaging fault hides no test result.
            let dist = dist::build(Path::new("target/dist-check")).and_then(|d| dist::check(&d));
            tests.and(dist)
        }
        Cmd::Dist { out } => {
            setup()?;
            build()?;
            let d = dist::build(&out)?;
            dist::check(&d)
        }
        Cmd::Llama => {
            let l = llama::ensure(&root)?;
            println!("{}\n{}", l.server.display(), l.model.display());
            Ok(())
        }
        Cmd::Bench { rounds, only, no_build } => {
            if !no_build {
                setup()?;
                build()?;
            }
            run_selected(&root, rounds, &only)
        }
        Cmd::Demo { requests, json } => {
            setup()?;
            build()?;
            demo(requests, &json)
        }
    }
}

/// Bench steps `cargo xtask bench --only STEP[,STEP…]` can pick; all of them by default.
pub const STEPS: &[&str] = &["stream", "uprobe", "llama", "cpu", "daemon", "capture", "criterion"];

/// Runs the selected steps (all when `only` is empty), in the order of [`STEPS`].
pub fn run_selected(root: &Path, rounds: usize, only: &[String]) -> Result<()> {
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    if want("stream") {
        bench::overhead(rounds)?;
    }
    if want("uprobe") {
        bench::uprobe_cost(rounds)?;
    }
    if want("llama") {
        bench::llama_overhead(root, rounds)?;
    }
    if want("cpu") {
        bench::cpu_sampling_overhead(rounds)?;
    }
    if want("daemon") {
        daemon_bench::run(rounds)?;
    }
    if want("capture") {
        capture_bench::run(rounds)?;
    }
    if want("criterion") {
        step("bench: criterion (decode throughput, symbolization throughput, flamegraph rendering)");
        run(Command::new("cargo").args([
            "bench",
            "-p",
            "inferscope",
            "--bench",
            "decode",
            "--bench",
            "symbolize",
            "--bench",
            "flamegraph",
        ]))?;
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

pub(crate) fn step(what: &str) {
    eprintln!("\x1b[1m==> {what}\x1b[0m");
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

fn setup() -> Result<()> {
    step("setup: nightly toolchain with rust-src");
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !installed.lines().any(|l| l.starts_with("nightly")) {
        bail!("no nightly Rust toolchain; this machine kind ships one (see shared/ebpf-toolchain.md)");
    }
    let components =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }

    step("setup: bpf-linker");
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        install_bpf_linker()?;
    }

    step("setup: Debian packages for tests");
    let wanted: &[(&str, &str)] = &[
        ("python3", "python3"),
        ("node", "nodejs"),
        // The gRPC-over-TLS test server's @grpc/grpc-js comes from npm (xtask/src/grpc.rs).
        ("npm", "npm"),
        ("curl", "curl"),
        // TLS tests make a throwaway self-signed certificate at test time.
        ("openssl", "openssl"),
        ("strace", "strace"),
        ("perf", "linux-perf"),
        ("cc", "gcc"),
        // The C++ unwinding fixture (tests/targets/unwind_cpp*.cpp).
        ("g++", "g++"),
        ("strip", "binutils"),
        // Daemon tests: a real Prometheus scrapes the agent; setpriv runs it with fewer capabilities.
        ("prometheus", "prometheus"),
        ("setpriv", "util-linux"),
        // `go tool pprof` reads the agent's --pprof files in the CPU profile tests.
        ("go", "golang-go"),
    ];
    let mut missing: Vec<&str> =
        wanted.iter().filter(|(bin, _)| !succeeds(Command::new("which").arg(bin))).map(|(_, pkg)| *pkg).collect();
    // The io_uring test server (tests/targets/uring_sse.c) builds against liburing: a header, no binary.
    if !Path::new("/usr/include/liburing.h").exists() {
        missing.push("liburing-dev");
    }
    if !missing.is_empty() {
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

/// bpf-linker's default build wants a system LLVM it cannot find here; it builds against the
/// nightly toolchain's own libLLVM instead. The sysroot has a linker script named
/// `libLLVM-*.so` and the real ELF `libLLVM.so.*`: pick the file that is really ELF.
fn install_bpf_linker() -> Result<()> {
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?);
    let libdir = sysroot.join("lib");
    let mut llvm = None;
    for entry in std::fs::read_dir(&libdir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        if name.starts_with("libLLVM") && name.contains(".so") {
            let mut magic = [0u8; 4];
            if std::fs::File::open(&path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
                && &magic == b"\x7fELF"
            {
                llvm = Some(path);
            }
        }
    }
    let llvm = llvm.with_context(|| format!("no ELF libLLVM*.so* in {}", libdir.display()))?;
    let major = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split(".so.").nth(1))
        .and_then(|v| v.split('.').next())
        .context("cannot read the LLVM major version from the libLLVM file name")?
        .to_string();
    let prefix = home().join(".local/bpf-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    eprintln!("building bpf-linker against {} (LLVM {major}); about a minute", llvm.display());
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

fn build() -> Result<()> {
    step("build: agent (with its eBPF object) and test targets, release");
    run(Command::new("cargo").args(["build", "--release", "-p", "inferscope", "-p", "testbed"]))
}

fn test(extra: &[String]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("the eBPF tests load programs into the kernel: run `cargo xtask test` as root");
    }
    step("test: unit, parser and privileged eBPF integration tests");
    run(Command::new("cargo")
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "--lib",
            "--bins",
            "--tests",
            "-p",
            "inferscope",
            "-p",
            "agent-common",
            "-p",
            "testbed",
            "--",
        ])
        .args(extra)
        .env("INFERSCOPE_REQUIRE_ROOT", "1"))
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub(crate) struct KillOnDrop(pub(crate) Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn demo(requests: usize, json: &Path) -> Result<()> {
    use std::io::BufRead as _;
    step("demo: start the bundled example server (OpenAI-style SSE, role-only first chunk, ~7 ms/token)");
    let mut server = Command::new("target/release/sse-server")
        .args(["--port", "0", "--truth", "out/demo-truth.jsonl"])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start target/release/sse-server")?;
    std::fs::create_dir_all("out")?;
    let stdout = server.stdout.take().context("server stdout")?;
    let server = KillOnDrop(server);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line.trim().strip_prefix("LISTENING ").context("server did not say LISTENING")?.parse()?;
    let pid = server.0.id();

    step(&format!("demo: inferscope attach --pid {pid} --json {}", json.display()));
    let agent = Command::new("target/release/inferscope")
        .args(["attach", "--pid", &pid.to_string(), "--json"])
        .arg(json)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start target/release/inferscope (are you root?)")?;
    let mut agent = KillOnDrop(agent);
    let agent_err = agent.0.stderr.take().context("agent stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(agent_err).lines().map_while(Result::ok) {
            eprintln!("{l}");
            if l.contains("attached to pid") {
                let _ = tx.send(());
            }
        }
    });
    let t0 = Instant::now();
    while rx.recv_timeout(Duration::from_millis(200)).is_err() {
        if let Some(status) = agent.0.try_wait()? {
            bail!("inferscope exited before attaching: {status}");
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("inferscope did not attach within 30 s");
        }
    }

    step(&format!("demo: {requests} streamed chat requests, 4 at a time, keep-alive"));
    run(Command::new("target/release/load-client").args([
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--requests",
        &requests.to_string(),
        "--concurrency",
        "4",
        "--keepalive",
        "--query",
        "tokens=24&interval_ms=7&prefill_ms=40",
    ]))?;

    // SIGINT: the agent drains what is left, prints its report and writes the JSON.
    run(Command::new("kill").args(["-INT", &agent.0.id().to_string()]))?;
    let status = agent.0.wait()?;
    if !status.success() {
        bail!("inferscope failed: {status}");
    }
    eprintln!("\nJSON report: {}   (ground truth the server recorded itself: out/demo-truth.jsonl)", json.display());
    drop(server);
    Ok(())
}
