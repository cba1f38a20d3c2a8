//! Whole-process overhead: the same streaming load against the Rust test server with and without
//! `inferscope attach`, alternating runs, reported as ratios. The tracepoints run in the server's
//! own context, so the server's CPU time per event, with minus without, is the kernel-side cost
//! per traced syscall; the agent's own CPU and peak RSS are read from /proc.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::{step, KillOnDrop};

struct Level {
    name: &'static str,
    concurrency: usize,
    requests: usize,
    query: &'static str,
}

const LEVELS: &[Level] = &[
    // ~10k events/s: 10 streams, one token per millisecond each.
    Level {
        name: "paced ~10k events/s",
        concurrency: 10,
        requests: 10,
        query: "tokens=3000&interval_ms=1&prefill_ms=0",
    },
    // As fast as the server can write.
    Level { name: "max events/s", concurrency: 4, requests: 8, query: "tokens=20000&interval_ms=0&prefill_ms=0" },
];

#[derive(Default, Clone, Copy)]
struct Sample {
    events_per_s: f64,
    server_cpu_ns_per_event: f64,
    agent_cpu_share: f64,
    agent_rss_kib: u64,
}

fn clk_tck() -> f64 {
    100.0 // USER_HZ on Linux
}

/// utime + stime of a process, ns.
fn cpu_ns(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("bad stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / clk_tck() * 1e9)
}

fn rss_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn one_run(level: &Level, with_agent: bool) -> Result<Sample> {
    let mut server = Command::new("target/release/sse-server")
        .args(["--port", "0", "--truth", "/dev/null"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = server.stdout.take().context("stdout")?;
    let server = KillOnDrop(server);
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line.trim().strip_prefix("LISTENING ").context("LISTENING")?.parse()?;
    let pid = server.0.id();

    let agent = if with_agent { Some(start_agent(pid, &["--max-requests", "1000"])?) } else { None };
    let agent_cpu0 = agent.as_ref().map(|a| cpu_ns(a.0.id())).transpose()?;
    let cpu0 = cpu_ns(pid)?;
    let t0 = Instant::now();
    let out = Command::new("target/release/load-client")
        .args(["--addr", &format!("127.0.0.1:{port}"), "--requests", &level.requests.to_string()])
        .args(["--concurrency", &level.concurrency.to_string(), "--keepalive", "--query", level.query])
        .output()?;
    let wall = t0.elapsed();
    if !out.status.success() {
        bail!("load-client failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let cpu = cpu_ns(pid)? - cpu0;
    let tokens: f64 = level.query.split('&').find_map(|kv| kv.strip_prefix("tokens=")).context("tokens")?.parse()?;
    let events = tokens * level.requests as f64;
    let mut s = Sample {
        events_per_s: events / wall.as_secs_f64(),
        server_cpu_ns_per_event: cpu / events,
        ..Sample::default()
    };
    if let (Some(a), Some(c0)) = (&agent, agent_cpu0) {
        s.agent_cpu_share = (cpu_ns(a.0.id())? - c0) / wall.as_nanos() as f64;
        s.agent_rss_kib = rss_hwm_kib(a.0.id());
    }
    drop(agent);
    std::thread::sleep(Duration::from_millis(200));
    Ok(s)
}

/// Starts `inferscope attach --pid PID --quiet ARGS` and returns once its probes are attached.
fn start_agent(pid: u32, args: &[&str]) -> Result<KillOnDrop> {
    let mut a = Command::new("target/release/inferscope")
        .args(["attach", "--pid", &pid.to_string(), "--quiet"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut reader = std::io::BufReader::new(a.stderr.take().context("stderr")?);
    let a = KillOnDrop(a);
    let mut l = String::new();
    while reader.read_line(&mut l)? > 0 && !l.contains("attached to pid") {
        l.clear();
    }
    std::thread::spawn(move || for _ in reader.lines() {});
    Ok(a)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

pub fn overhead(rounds: usize) -> Result<()> {
    for level in LEVELS {
        step(&format!("bench: {} — {rounds} alternating pairs (without, with agent)", level.name));
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            // Alternate which goes first so drift (thermal, page cache) does not favour one side.
            let (a, b) = if i % 2 == 0 { (false, true) } else { (true, false) };
            for w in [a, b] {
                let s = one_run(level, w)?;
                eprintln!(
                    "  {:<8} {:>10.0} events/s  server {:>7.0} ns CPU/event{}",
                    if w { "agent" } else { "baseline" },
                    s.events_per_s,
                    s.server_cpu_ns_per_event,
                    if w {
                        format!("  agent {:.2}% of a core, peak RSS {} KiB", s.agent_cpu_share * 100.0, s.agent_rss_kib)
                    } else {
                        String::new()
                    }
                );
                if w {
                    with.push(s)
                } else {
                    without.push(s)
                }
            }
        }
        let rate = |v: &[Sample]| mean(&v.iter().map(|s| s.events_per_s).collect::<Vec<_>>());
        let cpu = |v: &[Sample]| mean(&v.iter().map(|s| s.server_cpu_ns_per_event).collect::<Vec<_>>());
        let (r0, r1) = (rate(&without), rate(&with));
        let (c0, c1) = (cpu(&without), cpu(&with));
        println!(
            "RESULT {}: throughput with/without = {:.4} ({:+.2}%), server CPU per event {:.0} → {:.0} ns (+{:.0} ns per traced write), agent CPU {:.2}% of a core, agent peak RSS {:.1} MiB",
            level.name,
            r1 / r0,
            (r1 / r0 - 1.0) * 100.0,
            c0,
            c1,
            c1 - c0,
            mean(&with.iter().map(|s| s.agent_cpu_share * 100.0).collect::<Vec<_>>()),
            with.iter().map(|s| s.agent_rss_kib).max().unwrap_or(0) as f64 / 1024.0
        );
    }
    Ok(())
}

/// Cost of one probed call (entry + return), ours vs bpftrace's latency histogram on the same
/// function of the same target: the target times 100k calls of an empty function unprobed and
/// then probed, so the difference per call is the probe's cost.
pub fn uprobe_cost(rounds: usize) -> Result<()> {
    step("bench: uprobe cost per entry+return pair, inferscope vs bpftrace (alternating)");
    if Command::new("bpftrace").arg("--version").output().is_err() {
        crate::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "bpftrace"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    let dir = std::path::PathBuf::from("target/bench");
    std::fs::create_dir_all(&dir)?;
    let exe = dir.join("stages");
    crate::run(Command::new("cc").args(["-O2", "-g", "-pthread", "-o"]).arg(&exe).args([
        "tests/targets/stages.c",
        "tests/targets/stagefns.c",
        "-ldl",
    ]))?;
    let exe = std::fs::canonicalize(&exe)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        for use_bpftrace in if i % 2 == 0 { [false, true] } else { [true, false] } {
            let cost = one_uprobe_run(&exe, use_bpftrace)?;
            eprintln!("  {:<10} {cost:>8.0} ns per call", if use_bpftrace { "bpftrace" } else { "inferscope" });
            if use_bpftrace {
                theirs.push(cost)
            } else {
                ours.push(cost)
            }
        }
    }
    let (a, b) = (mean(&ours), mean(&theirs));
    println!("RESULT uprobe entry+return: inferscope {a:.0} ns, bpftrace {b:.0} ns per call, ratio {:.2}", a / b);
    Ok(())
}

fn one_uprobe_run(exe: &std::path::Path, use_bpftrace: bool) -> Result<f64> {
    use std::io::Write as _;
    let mut t = Command::new(exe).args(["1", "1", "1"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let mut stdin = t.stdin.take().context("stdin")?;
    let mut out = std::io::BufReader::new(t.stdout.take().context("stdout")?);
    let t = KillOnDrop(t);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let pid = t.0.id().to_string();
    let mut tool = if use_bpftrace {
        let prog = format!(
            "uprobe:{p}:stage_empty {{ @s[tid] = nsecs; }} uretprobe:{p}:stage_empty /@s[tid]/ {{ @ns = hist(nsecs - @s[tid]); delete(@s[tid]); }}",
            p = exe.display()
        );
        Command::new("bpftrace").args(["-p", &pid, "-e", &prog]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?
    } else {
        Command::new("target/release/inferscope")
            .args(["attach", "--pid", &pid, "--quiet", "--stage", "empty=stage_empty"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?
    };
    // Wait until attached: bpftrace prints "Attaching N probes..." on stdout, we log on stderr.
    let marker = if use_bpftrace { "Attaching" } else { "attached to pid" };
    let stream: Box<dyn std::io::Read + Send> = if use_bpftrace {
        Box::new(tool.stdout.take().context("bpftrace stdout")?)
    } else {
        Box::new(tool.stderr.take().context("agent stderr")?)
    };
    let mut r = std::io::BufReader::new(stream);
    let mut l = String::new();
    while r.read_line(&mut l)? > 0 && !l.contains(marker) {
        l.clear();
    }
    std::thread::spawn(move || for _ in r.lines() {});
    let tool = KillOnDrop(tool);
    std::thread::sleep(Duration::from_millis(if use_bpftrace { 1500 } else { 200 }));
    writeln!(stdin)?;
    line.clear();
    out.read_line(&mut line)?;
    let truth: serde_json::Value = serde_json::from_str(line.trim())?;
    let _ = writeln!(stdin);
    drop(tool);
    drop(t);
    let probed = truth["empty_probed_ns"].as_f64().context("empty_probed_ns")?;
    let unprobed = truth["empty_unprobed_ns"].as_f64().context("empty_unprobed_ns")?;
    Ok(probed - unprobed)
}

/// llama-server's own decode speed (`timings.predicted_per_second` in its last stream event)
/// with and without `--profile llama.cpp` attached, alternating.
pub fn llama_overhead(root: &std::path::Path, rounds: usize) -> Result<()> {
    use std::io::{Read as _, Write as _};
    step("bench: llama-server tokens/s with --profile llama.cpp attached vs not (alternating)");
    let l = crate::llama::ensure(root)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let server = Command::new(&l.server)
        .args(["-m"])
        .arg(&l.model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-t", "2", "-c", "2048", "-np", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = KillOnDrop(server);
    let chat = |n: usize| -> Result<f64> {
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"Write a long story about a robot, part {n}."}}],"stream":true,"max_tokens":96,"temperature":0,"cache_prompt":false}}"#
        );
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let i = out.rfind("\"predicted_per_second\":").context("no timings in the stream")?;
        let rest = &out[i + 23..];
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        Ok(rest[..end].parse()?)
    };
    let t0 = Instant::now();
    while chat(0).is_err() {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("llama-server did not answer in 60 s");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        for attached in if i % 2 == 0 { [false, true] } else { [true, false] } {
            let agent = if attached { Some(start_agent(server.0.id(), &["--profile", "llama.cpp"])?) } else { None };
            let rates: Vec<f64> = (0..3).map(|k| chat(i * 10 + k)).collect::<Result<_>>()?;
            let m = mean(&rates);
            eprintln!("  {:<10} {m:>7.1} tokens/s", if attached { "attached" } else { "baseline" });
            if attached {
                with.push(m)
            } else {
                without.push(m)
            }
            drop(agent);
        }
    }
    let (a, b) = (mean(&with), mean(&without));
    println!(
        "RESULT llama-server decode tokens/s: baseline {b:.1}, with --profile llama.cpp {a:.1}, ratio {:.4} ({:+.2}%)",
        a / b,
        (a / b - 1.0) * 100.0
    );
    Ok(())
}
