//! `[pprof_push]` against the real agent: a followed C process burning CPU 70/30 in two named
//! functions is sampled every interval and its profile pushed to a stand-in Pyroscope `/ingest`
//! endpoint (`tests/servers/ingest_standin.py`, named as such: no Pyroscope here) as
//! multipart/form-data; the pushed profile is read by a real consumer of the format,
//! `go tool pprof`, which must name both functions at the fixture's shares. An endpoint that
//! is down is counted and logged once, and the agent keeps serving. 127.0.0.1 only. Needs root.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::*;
use common::*;

fn config(url: &str) -> String {
    format!(
        "gpu_sample_hz = 0\nkubernetes = \"off\"\n[pprof_push]\nurl = \"{url}\"\ninterval_seconds = 4\nseconds = 3\ntimeout_seconds = 2\n\
         [[rule]]\nname = \"pushburn\"\ncomm = [\"pushburn\"]\nservice = \"burner\"\n"
    )
}

fn burn(dir: &Path) -> Child {
    let exe = c_fixture(dir, "burn", &["-g", "-fno-omit-frame-pointer"]);
    let named = dir.join("pushburn");
    std::fs::rename(&exe, &named).unwrap();
    start_ready(Command::new(&named).args(["60", "70"])).0
}

/// The `profile` part of a multipart/form-data body.
fn profile_part(body: &[u8], content_type: &str) -> Vec<u8> {
    let boundary = content_type.split("boundary=").nth(1).expect("multipart boundary").trim();
    let delim = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
    };
    let start = find(body, delim.as_bytes(), 0).expect("first boundary");
    let head_end = find(body, b"\r\n\r\n", start).expect("part head") + 4;
    let head = String::from_utf8_lossy(&body[start..head_end]);
    assert!(head.contains("name=\"profile\""), "part head: {head}");
    let end = find(body, format!("\r\n{delim}--").as_bytes(), head_end).expect("closing boundary");
    body[head_end..end].to_vec()
}

#[test]
fn profiles_are_pushed_to_an_ingest_endpoint_and_read_by_go_pprof() {
    let _root = require_root();
    let dir = scratch_dir("pprof-push");
    let pushes = dir.join("pushes");
    std::fs::create_dir_all(&pushes).unwrap();
    let mut standin = Command::new("python3")
        .arg(workspace_root().join("tests/servers/ingest_standin.py"))
        .arg(&pushes)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(standin.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();

    let mut target = burn(&dir);
    let mut d = Daemon::start(&dir, &config(&format!("http://127.0.0.1:{port}")), &[]);
    d.wait_ready();
    d.wait_for_within("a pushed profile", Duration::from_secs(40), |m| {
        metric(m, "inferscope_pprof_pushes_total", &[("result", "ok")]) >= 1.0
    });
    let t0 = Instant::now();
    while !pushes.join("push-1.body").exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let meta = std::fs::read_to_string(pushes.join("push-1.query")).unwrap();
    let (query, content_type) = meta.split_once('\n').unwrap();
    for want in
        ["format=pprof", "sampleRate=99", "spyName=inferscope", "name=inferscope.cpu%7Bservice_name%3Dburner%7D"]
    {
        assert!(query.split('&').any(|kv| kv == want), "{want} not in {query}");
    }
    let from: u64 = query.split('&').find_map(|kv| kv.strip_prefix("from=")).unwrap().parse().unwrap();
    let until: u64 = query.split('&').find_map(|kv| kv.strip_prefix("until=")).unwrap().parse().unwrap();
    assert!(until > from && until - from <= 4, "window {from}..{until}");
    let body = std::fs::read(pushes.join("push-1.body")).unwrap();
    let pprof = dir.join("pushed.pb.gz");
    std::fs::write(&pprof, profile_part(&body, content_type)).unwrap();

    let out = Command::new("go").args(["tool", "pprof", "-top", "-cum"]).arg(&pprof).output().expect("go (golang-go)");
    assert!(out.status.success(), "go tool pprof: {}", String::from_utf8_lossy(&out.stderr));
    let top = String::from_utf8_lossy(&out.stdout).to_string();
    let share = |name: &str| -> f64 {
        top.lines()
            .find(|l| l.split_whitespace().last() == Some(name))
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|c| c.trim_end_matches('%').parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} not in go tool pprof -top:\n{top}"))
    };
    let (a, b) = (share("burn_a"), share("burn_b"));
    eprintln!("pushed profile: burn_a {a:.1}% burn_b {b:.1}% of its samples");
    // The fixture splits its own CPU time 70/30; about 300 samples in a 3 s window.
    let split = a / (a + b) * 100.0;
    assert!((split - 70.0).abs() < 10.0, "burn_a {a}% burn_b {b}%:\n{top}");
    let log = d.drain();
    assert!(!log.iter().any(|l| l.contains("pprof push to")), "no failure expected: {log:#?}");
    d.stop();

    // The endpoint goes away: failures are counted, logged once, and the agent keeps serving.
    drop(standin.stdin.take());
    let _ = standin.wait();
    let mut d = Daemon::start(&dir, &config(&format!("http://127.0.0.1:{port}")), &[]);
    d.wait_ready();
    d.wait_for_within("two failed pushes", Duration::from_secs(40), |m| {
        metric(m, "inferscope_pprof_pushes_total", &[("result", "failed")]) >= 2.0
    });
    assert_eq!(http_get(d.port, "/healthz").0, 200);
    let log = d.drain();
    let warned = log.iter().filter(|l| l.contains("pprof push to")).count();
    assert_eq!(warned, 1, "one line for a run of failures: {log:#?}");
    d.stop();
    target.kill().ok();
    target.wait().ok();
}

#[test]
fn bad_push_endpoints_are_refused_before_any_work() {
    let dir = scratch_dir("pprof-push-bad");
    for url in ["https://pyroscope:4040", "http://user:pw@h:4040", "pyroscope:4040"] {
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config(url)).unwrap();
        let out =
            Command::new(env!("CARGO_BIN_EXE_inferscope")).args(["agent", "--config"]).arg(&cfg).output().unwrap();
        assert!(!out.status.success(), "{url} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("[pprof_push] url"), "{url}: {err}");
        assert!(!err.contains("pw"), "credentials echoed: {err}");
    }
}
