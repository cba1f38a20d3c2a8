//! Daemon-mode cost (issue 5): `inferscope agent` following 20 Rust test servers that together
//! stream 10k+ content events/s, against the same load with no agent, alternating runs; then the
//! time to scrape /metrics once it holds at least 10k series.
//!
//! Reported: the agent's CPU (utime+stime over the load window, % of one core) and peak RSS
//! (VmHWM), the servers' CPU per event with and without the agent (the in-kernel cost of the
//! tracepoints runs in their context), the event rate the agent counted against what the load
//! clients asked for, and scrape wall time (median, p99, max over 50 scrapes) with the series count.

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::measure::{cpu_ns, rss_hwm_kib};
use crate::{step, KillOnDrop};

const TARGETS: usize = 20;
/// Two streams per server, a token every 2 ms asked (tokio's timer makes it ~3 ms): ~12k events/s
/// in all for ~20 s.
const STREAM_QUERY: &str = "tokens=6000&interval_ms=2&prefill_ms=0";
const STREAMS_PER_TARGET: usize = 2;
const SERIES_GOAL: usize = 10_000;
const SCRAPES: usize = 50;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One HTTP/1.1 exchange with `Connection: close`; returns (status line, body).
fn http(addr: &str, method: &str, path: &str) -> Result<(String, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = if method == "POST" { "{}" } else { "" };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((head.lines().next().unwrap_or("").to_string(), body.to_string()))
}

/// Sum of every sample of `name` (any labels) in a Prometheus text page.
fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn series(page: &str) -> usize {
    page.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
}

struct Servers {
    procs: Vec<KillOnDrop>,
    ports: Vec<u16>,
}

/// Server `i` writes its truth to `DIR/t<i>.jsonl`, which its rule matches: one service each.
fn start_servers(dir: &std::path::Path) -> Result<Servers> {
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    for i in 0..TARGETS {
        let mut c = Command::new("target/release/sse-server")
            .args(["--port", "0", "--truth"])
            .arg(dir.join(format!("t{i}.jsonl")))
            .stdout(Stdio::piped())
            .spawn()
            .context("target/release/sse-server (cargo build --release -p testbed)")?;
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.take().context("stdout")?).read_line(&mut line)?;
        ports.push(line.trim().strip_prefix("LISTENING ").context("LISTENING")?.parse()?);
        procs.push(KillOnDrop(c));
    }
    Ok(Servers { procs, ports })
}

fn start_daemon(dir: &std::path::Path, port: u16) -> Result<KillOnDrop> {
    let cfg = dir.join("config.toml");
    // One rule (so one service label) per server, told apart by its truth file: outside
    // Kubernetes, processes of one service share their series.
    let mut text = String::from("reconcile_seconds = 5\nmax_series = 200000\n");
    for i in 0..TARGETS {
        text += &format!("[[rule]]\nname = \"bench{i}\"\ncomm = [\"sse-server\"]\ncmdline = [\"*/t{i}.jsonl\"]\n");
    }
    std::fs::write(&cfg, text)?;
    let mut a = Command::new("target/release/inferscope")
        .args(["agent", "--config"])
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr = format!("127.0.0.1:{port}");
    let t0 = Instant::now();
    loop {
        if let Ok((status, _)) = http(&addr, "GET", "/readyz") {
            if status.contains(" 200") {
                break;
            }
        }
        if let Some(st) = a.try_wait()? {
            bail!("inferscope agent exited: {st}");
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = a.kill();
            bail!("inferscope agent not ready in 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(KillOnDrop(a))
}

fn wait_targets(addr: &str, want: f64) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let (_, page) = http(addr, "GET", "/metrics")?;
        let n = metric_sum(&page, "inferscope_targets");
        if n >= want {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the agent follows {n} targets after 60 s, want {want}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[derive(Default)]
struct Run {
    asked_events_per_s: f64,
    counted_events_per_s: f64,
    server_cpu_ns_per_event: f64,
    agent_cpu_share: f64,
    agent_rss_kib: u64,
}

fn one_run(dir: &std::path::Path, with_agent: bool) -> Result<Run> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let agent = if with_agent { Some(start_daemon(dir, port)?) } else { None };
    let servers = start_servers(dir)?;
    if agent.is_some() {
        wait_targets(&addr, TARGETS as f64)?;
    }
    let chunks0 = if agent.is_some() {
        metric_sum(&http(&addr, "GET", "/metrics")?.1, "inferscope_stream_chunks_total")
    } else {
        0.0
    };
    let server_cpu0: f64 = servers.procs.iter().map(|p| cpu_ns(p.0.id())).sum::<Result<f64>>()?;
    let agent_cpu0 = agent.as_ref().map(|a| cpu_ns(a.0.id())).transpose()?;
    let tokens: f64 = STREAM_QUERY.split('&').find_map(|kv| kv.strip_prefix("tokens=")).context("tokens")?.parse()?;
    let t0 = Instant::now();
    let clients: Vec<_> = servers
        .ports
        .iter()
        .map(|p| {
            Command::new("target/release/load-client")
                .args(["--addr", &format!("127.0.0.1:{p}"), "--keepalive"])
                .args(["--requests", &STREAMS_PER_TARGET.to_string(), "--concurrency", &STREAMS_PER_TARGET.to_string()])
                .args(["--query", STREAM_QUERY])
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    for mut c in clients {
        let st = c.wait()?;
        if !st.success() {
            bail!("load-client failed: {st}");
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let events = tokens * (TARGETS * STREAMS_PER_TARGET) as f64;
    let server_cpu: f64 = servers.procs.iter().map(|p| cpu_ns(p.0.id())).sum::<Result<f64>>()? - server_cpu0;
    let mut r =
        Run { asked_events_per_s: events / wall, server_cpu_ns_per_event: server_cpu / events, ..Run::default() };
    if let (Some(a), Some(c0)) = (&agent, agent_cpu0) {
        r.agent_cpu_share = (cpu_ns(a.0.id())? - c0) / (wall * 1e9);
        r.agent_rss_kib = rss_hwm_kib(a.0.id());
        std::thread::sleep(Duration::from_millis(300));
        let chunks = metric_sum(&http(&addr, "GET", "/metrics")?.1, "inferscope_stream_chunks_total") - chunks0;
        r.counted_events_per_s = chunks / wall;
    }
    drop(servers);
    drop(agent);
    std::thread::sleep(Duration::from_millis(500));
    Ok(r)
}

/// Scrape time once /metrics holds at least SERIES_GOAL series: 20 targets, each given distinct
/// routes (short requests to `/v1/chat/completions/<word>`, words are not collapsed as IDs)
/// until the page is big enough.
fn scrape(dir: &std::path::Path) -> Result<()> {
    step(&format!("bench: daemon scrape time with ≥ {SERIES_GOAL} series"));
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let agent = start_daemon(dir, port)?;
    let servers = start_servers(dir)?;
    wait_targets(&addr, TARGETS as f64)?;
    const WORDS: [&str; 16] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
        "mike", "november", "oscar", "papa",
    ];
    let mut n_series = 0;
    'routes: for w in WORDS {
        for p in &servers.ports {
            let a = format!("127.0.0.1:{p}");
            http(&a, "POST", &format!("/v1/chat/completions/{w}?tokens=3&interval_ms=0&prefill_ms=0"))?;
        }
        std::thread::sleep(Duration::from_millis(400));
        n_series = series(&http(&addr, "GET", "/metrics")?.1);
        eprintln!("  routes per target: up to `{w}`, {n_series} series");
        if n_series >= SERIES_GOAL {
            break 'routes;
        }
    }
    if n_series < SERIES_GOAL {
        bail!("only {n_series} series after every route");
    }
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..SCRAPES {
        let t0 = Instant::now();
        let (status, body) = http(&addr, "GET", "/metrics")?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if !status.contains(" 200") {
            bail!("scrape: {status}");
        }
        bytes = body.len();
        std::thread::sleep(Duration::from_millis(50));
    }
    times.sort_by(f64::total_cmp);
    let rss = rss_hwm_kib(agent.0.id());
    println!(
        "RESULT daemon scrape: {n_series} series, {:.1} MiB page: median {:.1} ms, p99 {:.1} ms, max {:.1} ms over {SCRAPES} scrapes; agent peak RSS {:.1} MiB",
        bytes as f64 / (1 << 20) as f64,
        times[times.len() / 2],
        times[(times.len() * 99).div_ceil(100) - 1],
        times[times.len() - 1],
        rss as f64 / 1024.0
    );
    drop(servers);
    drop(agent);
    Ok(())
}

pub fn run(rounds: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("inferscope-daemon-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    step(&format!(
        "bench: daemon, {TARGETS} targets, {STREAMS_PER_TARGET} streams each ({STREAM_QUERY}), {rounds} alternating pairs (without, with agent)"
    ));
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let order = if i % 2 == 0 { [false, true] } else { [true, false] };
        for w in order {
            let r = one_run(&dir, w)?;
            eprintln!(
                "  {:<8} asked {:>7.0} events/s{}  servers {:>6.0} ns CPU/event{}",
                if w { "agent" } else { "baseline" },
                r.asked_events_per_s,
                if w { format!(", agent counted {:>7.0}/s", r.counted_events_per_s) } else { String::new() },
                r.server_cpu_ns_per_event,
                if w {
                    format!(
                        "  agent {:.2}% of a core, peak RSS {:.1} MiB",
                        r.agent_cpu_share * 100.0,
                        r.agent_rss_kib as f64 / 1024.0
                    )
                } else {
                    String::new()
                }
            );
            if w {
                with.push(r)
            } else {
                without.push(r)
            }
        }
    }
    let mean = |v: &[Run], f: fn(&Run) -> f64| v.iter().map(f).sum::<f64>() / v.len().max(1) as f64;
    println!(
        "RESULT daemon {TARGETS} targets: asked {:.0} events/s, agent counted {:.0}/s; agent CPU {:.2}% of a core (max {:.2}%), peak RSS {:.1} MiB; servers' CPU per event {:.0} → {:.0} ns with the agent ({:.3}×)",
        mean(&with, |r| r.asked_events_per_s),
        mean(&with, |r| r.counted_events_per_s),
        mean(&with, |r| r.agent_cpu_share * 100.0),
        with.iter().map(|r| r.agent_cpu_share * 100.0).fold(0.0, f64::max),
        with.iter().map(|r| r.agent_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        mean(&without, |r| r.server_cpu_ns_per_event),
        mean(&with, |r| r.server_cpu_ns_per_event),
        mean(&with, |r| r.server_cpu_ns_per_event) / mean(&without, |r| r.server_cpu_ns_per_event),
    );
    scrape(&dir)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
