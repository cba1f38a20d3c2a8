//! What the capture path costs (bench step `capture`): with and without `inferscope attach`,
//! alternating in every round, medians over the rounds, ratios with/without.
//!
//! a. Unrelated small syscalls: `dd bs=1` (one 1-byte read and write per byte) while the agent
//!    follows another, idle process. Syscall tracepoints put every thread of the node on the
//!    syscall slow path; socket-layer hooks must not.
//! b. Unrelated loopback TCP ping-pong (`tests/targets/pingpong.c`), agent on the idle process:
//!    what socket-layer hooks cost sockets the agent does not follow. Twice: a client and a
//!    server thread sharing CPU 0 (as a real pair of processes would), and both ends in one
//!    thread (`--one-thread`: no blocking, no context switches, only the four socket calls), which
//!    is immune to the wake-up/preemption effects that make the two-thread figure move either way.
//! c. Max-rate SSE (`tests/targets/sse_flood.c` + `sse_flood_client.c`), server and client
//!    pinned to CPU 0 (saturated), the agent pinned to CPU 1, following the server: frames/s,
//!    CPU-0 time per frame (the in-context cost of capturing one write), the agent's CPU, and
//!    whether its report counted every request.
//! d. Kernel time per eBPF program over one more flood window with `kernel.bpf_stats_enabled=1`
//!    (`bpftool prog show -j` before and after). That window is not in (c)'s ratio: the stats
//!    themselves add two clock reads per program run.
//!
//! The agent binary is `$INFERSCOPE_BIN` (default `target/release/inferscope`), so an old build
//! can be measured against a new one. Results: a table on stdout and `out/bench-capture.json`.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::measure::{cpu_ns, median};
use crate::{step, KillOnDrop};

/// Keep-alive connections of the flood client.
const FLOOD_CONNECTIONS: usize = 4;
/// SSE frames per flood response (each one write of one HTTP chunk).
const FLOOD_FRAMES: usize = 1000;
/// Target length of a measured flood window; requests per connection are calibrated to it.
const FLOOD_WINDOW_S: f64 = 1.5;
/// Target length of a ping-pong run; its iterations are calibrated to it.
const PINGPONG_WINDOW_S: f64 = 1.0;
/// `dd bs=1 count=…`: two syscalls per byte.
const DD_BYTES: u64 = 2_000_000;
/// Safety bound on every agent run; each is stopped with SIGINT long before.
const AGENT_MAX_S: &str = "300";

const GOAL_DD: f64 = 1.02;
const GOAL_PINGPONG: f64 = 1.05;
const GOAL_FLOOD: f64 = 0.95;

fn agent_bin() -> PathBuf {
    std::env::var_os("INFERSCOPE_BIN").map_or_else(|| PathBuf::from("target/release/inferscope"), PathBuf::from)
}

/// `taskset -c CPU PROGRAM`, or PROGRAM alone on a one-CPU machine.
fn pinned(cpu: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > cpu {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(cpu.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Value after `KEY ` in a line like `FRAMES 10 SECONDS 0.5 RATE 20`.
fn field(line: &str, key: &str) -> Result<f64> {
    let mut it = line.split_whitespace();
    while let Some(k) = it.next() {
        if k == key {
            return it.next().context("value")?.parse().with_context(|| format!("{key} in {line:?}"));
        }
    }
    bail!("no {key} in {line:?}")
}

fn compile(exe: &Path, src: &str) -> Result<()> {
    crate::run(Command::new("cc").args(["-O2", "-pthread", "-o"]).arg(exe).arg(src))
}

/// A server that prints `LISTENING <port>`; returns it and the port.
fn start_server(cmd: &mut Command) -> Result<(KillOnDrop, u16)> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let child = KillOnDrop(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let port = line.trim().strip_prefix("LISTENING ").with_context(|| format!("{cmd:?} said {line:?}"))?.parse()?;
    Ok((child, port))
}

/// A running `inferscope attach`, its stderr collected for error messages.
struct Agent {
    proc: KillOnDrop,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// `taskset -c 1 $INFERSCOPE_BIN attach --pid PID --quiet --duration … ARGS`; returns once it
    /// says its probes are attached.
    fn start(pid: u32, args: &[&str]) -> Result<Agent> {
        let bin = agent_bin();
        let mut child = pinned(1, &bin)
            .args(["attach", "--pid", &pid.to_string(), "--quiet", "--duration", AGENT_MAX_S])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} (root? set INFERSCOPE_BIN)", bin.display()))?;
        let err = child.stderr.take().context("stderr")?;
        let mut agent = Agent { proc: KillOnDrop(child), stderr: Arc::default() };
        let (tx, rx) = mpsc::channel();
        let text = Arc::clone(&agent.stderr);
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if l.contains("attached to pid") {
                    let _ = tx.send(());
                }
                let mut t = text.lock().unwrap_or_else(|p| p.into_inner());
                t.push_str(&l);
                t.push('\n');
            }
        });
        let t0 = Instant::now();
        while rx.recv_timeout(Duration::from_millis(100)).is_err() {
            if let Some(status) = agent.proc.0.try_wait()? {
                bail!("{} exited before attaching ({status}):\n{}", bin.display(), agent.stderr_text());
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("{} did not attach within 60 s:\n{}", bin.display(), agent.stderr_text());
            }
        }
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SIGTERM, then wait (up to 60 s) for it to write its report and exit, so that its exit
    /// work does not overlap the next measurement. SIGTERM rather than SIGINT, and repeated every
    /// 5 s: the agent's loop makes a new `tokio::signal::ctrl_c()` future on every turn, and a
    /// SIGINT that lands while a turn's body runs (draining a ring buffer that a flood keeps full)
    /// is lost; its SIGTERM stream lives across turns.
    fn stop(mut self) -> Result<()> {
        let t0 = Instant::now();
        let mut signalled = None::<Instant>;
        while self.proc.0.try_wait()?.is_none() {
            if signalled.is_none_or(|s| s.elapsed() > Duration::from_secs(5)) {
                // Fails only if it has just exited, which the next try_wait sees.
                let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
                signalled = Some(Instant::now());
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("the agent did not exit within 60 s of SIGTERM:\n{}", self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Wall seconds of `dd if=/dev/zero of=/dev/null bs=1 count=DD_BYTES` on CPU 0.
fn run_dd() -> Result<f64> {
    let t0 = Instant::now();
    let out = pinned(0, "dd").args(["if=/dev/zero", "of=/dev/null", "bs=1", &format!("count={DD_BYTES}")]).output()?;
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("dd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(secs)
}

/// ns per 1-byte round trip of the ping-pong target on CPU 0 (both of its threads).
fn run_pingpong(exe: &Path, iterations: u64, one_thread: bool) -> Result<f64> {
    let out = pinned(0, exe).arg(iterations.to_string()).args(one_thread.then_some("--one-thread")).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pingpong failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    }
    field(&text, "NS_PER_ROUNDTRIP")
}

/// One flood window: what the client and /proc saw.
struct Flood {
    frames: f64,
    seconds: f64,
    frames_per_s: f64,
    /// The server's utime+stime per frame (10 ms ticks).
    server_cpu_ns_per_frame: f64,
    /// The agent's CPU over the window, share of one core.
    agent_cpu_share: Option<f64>,
}

fn run_flood(client: &Path, port: u16, server_pid: u32, requests: usize, agent: Option<&Agent>) -> Result<Flood> {
    let server0 = cpu_ns(server_pid)?;
    let agent0 = agent.map(|a| cpu_ns(a.pid())).transpose()?;
    let t0 = Instant::now();
    let out = pinned(0, client)
        .args([port.to_string(), FLOOD_CONNECTIONS.to_string(), requests.to_string(), FLOOD_FRAMES.to_string()])
        .output()?;
    let wall = t0.elapsed().as_secs_f64();
    let server = cpu_ns(server_pid)? - server0;
    let agent_cpu_share = match (agent, agent0) {
        (Some(a), Some(c0)) => Some((cpu_ns(a.pid())? - c0) / (wall * 1e9)),
        _ => None,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("sse_flood_client failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    }
    let frames = field(&text, "FRAMES")?;
    Ok(Flood {
        frames,
        seconds: field(&text, "SECONDS")?,
        frames_per_s: field(&text, "RATE")?,
        server_cpu_ns_per_frame: server / frames,
        agent_cpu_share,
    })
}

/// What the agent's `--json` report says about a flood window.
#[derive(Default)]
struct Seen {
    /// `requests` kept plus `requests_not_kept`.
    requests: Option<u64>,
    /// Write events it decoded (`summary.events.writes`), when the report has them.
    write_events: Option<u64>,
    /// Sum of the kernel loss counters (`summary.lost.lost_*`).
    kernel_lost: Option<u64>,
}

fn read_report(path: &Path) -> Result<Seen> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let summary = &doc["summary"];
    let kept = doc["requests"].as_array().map(|r| r.len() as u64);
    let not_kept = summary["requests_not_kept"].as_u64().or_else(|| doc["requests_not_kept"].as_u64()).unwrap_or(0);
    let lost = summary["lost"]
        .as_object()
        .map(|o| o.iter().filter(|(k, _)| k.starts_with("lost")).filter_map(|(_, v)| v.as_u64()).sum::<u64>());
    Ok(Seen {
        requests: kept.map(|k| k + not_kept),
        write_events: summary["events"]["writes"].as_u64(),
        kernel_lost: lost,
    })
}

/// `bpftool prog show -j`, by program id.
fn bpf_programs() -> Result<BTreeMap<u64, Value>> {
    let out = crate::output(Command::new("bpftool").args(["prog", "show", "-j"]))?;
    let list: Vec<Value> = serde_json::from_str(&out).context("bpftool prog show -j")?;
    Ok(list.into_iter().filter_map(|p| Some((p["id"].as_u64()?, p))).collect())
}

fn ensure_bpftool() -> Result<()> {
    if Command::new("bpftool").arg("version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    let install = || {
        crate::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "bpftool"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install().is_err() {
        crate::run(Command::new("apt-get").args(["update", "-q"]))?;
        install()?;
    }
    Ok(())
}

/// `kernel.bpf_stats_enabled=1` while alive, the previous value restored on drop.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?.trim().to_string();
        crate::run(Command::new("sysctl").args(["-q", "-w", "kernel.bpf_stats_enabled=1"]))?;
        Ok(BpfStats(before))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = Command::new("sysctl").args(["-q", "-w", &format!("kernel.bpf_stats_enabled={}", self.0)]).status();
    }
}

struct ProgramCost {
    id: u64,
    name: String,
    kind: String,
    runs: u64,
    run_time_ns: u64,
}

/// (d): one more flood window with run-time statistics on; per program the agent loaded (ids
/// that appeared when it started) that ran: runs and kernel time.
fn program_costs(client: &Path, port: u16, server_pid: u32, requests: usize) -> Result<(Flood, Vec<ProgramCost>)> {
    let before_agent = bpf_programs()?;
    let agent = Agent::start(server_pid, &[])?;
    let stats = BpfStats::enable()?;
    let start = bpf_programs()?;
    let flood = run_flood(client, port, server_pid, requests, Some(&agent))?;
    let end = bpf_programs()?;
    drop(stats);
    agent.stop()?;
    let num = |p: &Value, k: &str| p[k].as_u64().unwrap_or(0);
    let mut costs: Vec<ProgramCost> = end
        .iter()
        .filter(|(id, _)| !before_agent.contains_key(id))
        .map(|(&id, p)| {
            let s = start.get(&id);
            ProgramCost {
                id,
                name: p["name"].as_str().unwrap_or("?").to_string(),
                kind: p["type"].as_str().unwrap_or("?").to_string(),
                runs: num(p, "run_cnt").saturating_sub(s.map_or(0, |s| num(s, "run_cnt"))),
                run_time_ns: num(p, "run_time_ns").saturating_sub(s.map_or(0, |s| num(s, "run_time_ns"))),
            }
        })
        .filter(|c| c.runs > 0)
        .collect();
    costs.sort_by_key(|c| std::cmp::Reverse(c.run_time_ns));
    Ok((flood, costs))
}

pub fn run(rounds: usize) -> Result<()> {
    let rounds = rounds.max(1);
    step(&format!("bench: capture cost — {rounds} rounds, each without and with the agent (alternating order)"));
    let bin = agent_bin();
    if !bin.exists() {
        bail!("no agent binary at {} (cargo build --release, or set INFERSCOPE_BIN)", bin.display());
    }
    ensure_bpftool()?;
    let dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&dir)?;
    let flood_server = dir.join("sse_flood");
    let flood_client = dir.join("sse_flood_client");
    let pingpong = dir.join("pingpong");
    compile(&flood_server, "tests/targets/sse_flood.c")?;
    compile(&flood_client, "tests/targets/sse_flood_client.c")?;
    compile(&pingpong, "tests/targets/pingpong.c")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string();
    let load_start = loadavg();
    eprintln!("  agent {}, {cpus} CPUs, load average {load_start}", bin.display());
    if cpus < 2 {
        eprintln!("  warning: one CPU; nothing is pinned and the agent competes with the flood");
    }

    // The idle process the agent follows in (a) and (b), and the flood server of (c): one each
    // for the whole step.
    let (idle, _) = start_server(
        Command::new("target/release/sse-server").args(["--port", "0", "--truth"]).arg(dir.join("capture-idle.jsonl")),
    )
    .context("target/release/sse-server (cargo build --release -p testbed)")?;
    let (flood, port) = start_server(pinned(0, std::fs::canonicalize(&flood_server)?).arg("0"))?;
    let flood_pid = flood.0.id();

    // Calibration runs, unmeasured: they also warm up the page cache and the scheduler.
    let probe = run_flood(&flood_client, port, flood_pid, 100, None)?;
    let requests = ((FLOOD_WINDOW_S * probe.frames_per_s / (FLOOD_CONNECTIONS * FLOOD_FRAMES) as f64).ceil() as usize)
        .clamp(10, 5000);
    let calibrate = |one_thread| -> Result<u64> {
        let probe = run_pingpong(&pingpong, 20_000, one_thread)?;
        Ok(((PINGPONG_WINDOW_S * 1e9 / probe) as u64).clamp(20_000, 2_000_000))
    };
    let pp_iterations = calibrate(false)?;
    let pp1_iterations = calibrate(true)?;
    run_dd()?;
    let expected_requests = (FLOOD_CONNECTIONS * requests) as u64;
    eprintln!(
        "  flood: {FLOOD_CONNECTIONS} connections × {requests} requests × {FLOOD_FRAMES} frames (~{:.0} frames/s calibrated); ping-pong: {pp_iterations} round trips (one thread: {pp1_iterations}); dd: {DD_BYTES} bytes",
        probe.frames_per_s
    );

    // Index 0: without the agent, 1: with it.
    let mut dd: [Vec<f64>; 2] = Default::default();
    let mut pp: [Vec<f64>; 2] = Default::default();
    let mut pp1t: [Vec<f64>; 2] = Default::default();
    let mut fl: [Vec<Flood>; 2] = Default::default();
    let mut seen = Vec::new();
    let report = dir.join("capture-agent.json");
    for round in 0..rounds {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for with in order {
            let side = usize::from(with);
            // (a) and (b): the agent follows the idle server.
            let agent = with.then(|| Agent::start(idle.0.id(), &[])).transpose()?;
            let d = run_dd()?;
            let p = run_pingpong(&pingpong, pp_iterations, false)?;
            let p1 = run_pingpong(&pingpong, pp1_iterations, true)?;
            if let Some(a) = agent {
                a.stop()?;
            }
            // (c): the agent follows the flood server.
            let _ = std::fs::remove_file(&report);
            let agent = with
                .then(|| Agent::start(flood_pid, &["--json", &report.to_string_lossy(), "--max-requests", "100000"]))
                .transpose()?;
            let f = run_flood(&flood_client, port, flood_pid, requests, agent.as_ref())?;
            let mut note = String::new();
            if let Some(a) = agent {
                let err = a.stderr.clone();
                a.stop()?;
                let s = read_report(&report).with_context(|| {
                    format!("no JSON report from the agent:\n{}", err.lock().unwrap_or_else(|p| p.into_inner()))
                })?;
                note = format!(
                    "  agent {:.1}% of a core, saw {}/{expected_requests} requests, {} write events, {} lost in the kernel",
                    f.agent_cpu_share.unwrap_or(0.0) * 100.0,
                    s.requests.map_or("?".into(), |r| r.to_string()),
                    s.write_events.map_or("?".into(), |r| r.to_string()),
                    s.kernel_lost.map_or("?".into(), |r| r.to_string()),
                );
                seen.push((f.agent_cpu_share.unwrap_or(0.0), s));
            }
            eprintln!(
                "  round {} {:<8} dd {d:.3} s  ping-pong {p:.0} ns/rt (one thread {p1:.0})  flood {:.0} frames/s (server {:.0} ns CPU/frame){note}",
                round + 1,
                if with { "agent" } else { "baseline" },
                f.frames_per_s,
                f.server_cpu_ns_per_frame,
            );
            dd[side].push(d);
            pp[side].push(p);
            pp1t[side].push(p1);
            fl[side].push(f);
        }
    }

    step("bench: capture cost — kernel time per eBPF program, one more flood window with bpf_stats_enabled=1");
    let (stats_flood, costs) = program_costs(&flood_client, port, flood_pid, requests)?;
    drop(flood);
    drop(idle);

    // Medians and ratios.
    let rate = |v: &[Flood]| v.iter().map(|f| f.frames_per_s).collect::<Vec<_>>();
    let server_cpu = |v: &[Flood]| v.iter().map(|f| f.server_cpu_ns_per_frame).collect::<Vec<_>>();
    let (dd0, dd1) = (median(&dd[0]), median(&dd[1]));
    let (pp0, pp1) = (median(&pp[0]), median(&pp[1]));
    let (pq0, pq1) = (median(&pp1t[0]), median(&pp1t[1]));
    let (fl0, fl1) = (median(&rate(&fl[0])), median(&rate(&fl[1])));
    let (sc0, sc1) = (median(&server_cpu(&fl[0])), median(&server_cpu(&fl[1])));
    let agent_cpu = median(&seen.iter().map(|(c, _)| *c).collect::<Vec<_>>());
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let total_runtime: u64 = costs.iter().map(|c| c.run_time_ns).sum();
    let total_runs: u64 = costs.iter().map(|c| c.runs).sum();
    let writes_per_frame = (FLOOD_FRAMES + 2) as f64 / FLOOD_FRAMES as f64; // head + frames + terminator

    println!();
    println!("capture cost, {rounds} rounds, medians; agent {}; load average at start {load_start}", bin.display());
    println!("{:<52} {:>12} {:>12} {:>9} {:>8}", "measure", "without", "with", "ratio", "goal");
    println!(
        "{:<52} {:>12.3} {:>12.3} {:>9.3} {:>8}  {}",
        format!("a. dd bs=1 count={DD_BYTES}, wall s (other pid followed)"),
        dd0,
        dd1,
        dd1 / dd0,
        format!("≤{GOAL_DD}"),
        verdict(dd1 / dd0 <= GOAL_DD)
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>9.3} {:>8}  {}",
        "b. loopback TCP ping-pong, ns per round trip",
        pp0,
        pp1,
        pp1 / pp0,
        format!("≤{GOAL_PINGPONG}"),
        verdict(pp1 / pp0 <= GOAL_PINGPONG)
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>9.3} {:>8}  {}",
        "   same, both ends in one thread (no context switches)",
        pq0,
        pq1,
        pq1 / pq0,
        format!("≤{GOAL_PINGPONG}"),
        verdict(pq1 / pq0 <= GOAL_PINGPONG)
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>9.3} {:>8}  {}",
        "c. SSE flood, frames/s (CPU 0 saturated)",
        fl0,
        fl1,
        fl1 / fl0,
        format!("≥{GOAL_FLOOD}"),
        verdict(fl1 / fl0 >= GOAL_FLOOD)
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>+9.0}",
        "   CPU-0 ns per frame (1/rate), difference = capture",
        1e9 / fl0,
        1e9 / fl1,
        1e9 / fl1 - 1e9 / fl0
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>+9.0}",
        "   flood server CPU ns per frame (10 ms ticks)",
        sc0,
        sc1,
        sc1 - sc0
    );
    println!("{:<52} {:>12} {:>11.1}%", "   agent CPU (CPU 1), share of a core", "-", agent_cpu * 100.0);
    let seen_list: Vec<String> = seen.iter().map(|(_, s)| s.requests.map_or("?".into(), |r| r.to_string())).collect();
    let all_seen = seen.iter().all(|(_, s)| s.requests == Some(expected_requests));
    println!(
        "{:<52} {:>12} {:>12}  {}",
        "   requests in the agent's report / sent",
        expected_requests,
        seen_list.join(","),
        verdict(all_seen)
    );
    let lost_list: Vec<String> =
        seen.iter().map(|(_, s)| s.kernel_lost.map_or("?".into(), |r| r.to_string())).collect();
    println!("{:<52} {:>12} {:>12}", "   events lost in the kernel (per run)", "-", lost_list.join(","));
    println!();
    println!(
        "d. eBPF programs over one flood window with bpf_stats_enabled=1 ({:.0} frames, {:.0} frames/s, {:.3} writes/frame incl. head+terminator):",
        stats_flood.frames, stats_flood.frames_per_s, writes_per_frame
    );
    println!(
        "   {:>6} {:<18} {:<16} {:>12} {:>14} {:>8} {:>10}",
        "id", "program", "type", "runs", "run_time_ns", "ns/run", "runs/frame"
    );
    for c in &costs {
        println!(
            "   {:>6} {:<18} {:<16} {:>12} {:>14} {:>8.0} {:>10.2}",
            c.id,
            c.name,
            c.kind,
            c.runs,
            c.run_time_ns,
            c.run_time_ns as f64 / c.runs as f64,
            c.runs as f64 / stats_flood.frames
        );
    }
    println!(
        "   all programs: {:.0} ns of eBPF run time per frame ({:.2} runs per frame)",
        total_runtime as f64 / stats_flood.frames,
        total_runs as f64 / stats_flood.frames
    );

    let floods = |v: &[Flood]| -> Value {
        json!(v.iter().map(|f| json!({"frames": f.frames, "seconds": f.seconds, "frames_per_s": f.frames_per_s, "server_cpu_ns_per_frame": f.server_cpu_ns_per_frame})).collect::<Vec<_>>())
    };
    let doc = json!({
        "agent_bin": bin.display().to_string(),
        "rounds": rounds,
        "cpus": cpus,
        "load_average_start": load_start,
        "load_average_end": loadavg(),
        "unrelated_syscalls_dd": {
            "command": format!("taskset -c 0 dd if=/dev/zero of=/dev/null bs=1 count={DD_BYTES}"),
            "without_s": dd[0], "with_s": dd[1],
            "median_without_s": dd0, "median_with_s": dd1, "ratio": dd1 / dd0, "goal_max": GOAL_DD,
        },
        "unrelated_pingpong": {
            "round_trips": pp_iterations,
            "without_ns_per_round_trip": pp[0], "with_ns_per_round_trip": pp[1],
            "median_without": pp0, "median_with": pp1, "ratio": pp1 / pp0, "goal_max": GOAL_PINGPONG,
            "one_thread": {
                "round_trips": pp1_iterations,
                "without_ns_per_round_trip": pp1t[0], "with_ns_per_round_trip": pp1t[1],
                "median_without": pq0, "median_with": pq1, "ratio": pq1 / pq0,
            },
        },
        "sse_flood": {
            "connections": FLOOD_CONNECTIONS, "requests_per_connection": requests, "frames_per_request": FLOOD_FRAMES,
            "without": floods(&fl[0]), "with": floods(&fl[1]),
            "median_frames_per_s_without": fl0, "median_frames_per_s_with": fl1, "ratio": fl1 / fl0, "goal_min": GOAL_FLOOD,
            "cpu0_ns_per_frame_without": 1e9 / fl0, "cpu0_ns_per_frame_with": 1e9 / fl1,
            "median_server_cpu_ns_per_frame_without": sc0, "median_server_cpu_ns_per_frame_with": sc1,
            "agent_cpu_share": seen.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            "requests_expected": expected_requests,
            "agent_requests_seen": seen.iter().map(|(_, s)| s.requests).collect::<Vec<_>>(),
            "agent_write_events": seen.iter().map(|(_, s)| s.write_events).collect::<Vec<_>>(),
            "agent_kernel_lost": seen.iter().map(|(_, s)| s.kernel_lost).collect::<Vec<_>>(),
        },
        "bpf_programs": {
            "frames": stats_flood.frames,
            "frames_per_s": stats_flood.frames_per_s,
            "programs": costs.iter().map(|c| json!({"id": c.id, "name": c.name, "type": c.kind, "run_cnt": c.runs, "run_time_ns": c.run_time_ns, "ns_per_run": c.run_time_ns as f64 / c.runs as f64, "runs_per_frame": c.runs as f64 / stats_flood.frames})).collect::<Vec<_>>(),
            "run_time_ns_per_frame": total_runtime as f64 / stats_flood.frames,
            "runs_per_frame": total_runs as f64 / stats_flood.frames,
        },
    });
    std::fs::create_dir_all("out")?;
    std::fs::write("out/bench-capture.json", serde_json::to_string_pretty(&doc)? + "\n")?;
    eprintln!("  wrote out/bench-capture.json");
    Ok(())
}
