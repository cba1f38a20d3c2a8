//! Bad input and hard conditions, against the real kernel: garbage on sockets, a ring buffer too
//! small for the load (loss is counted exactly), a target that exits mid-stream, and the errors
//! a person can hit (no such PID, no privileges). Needs root.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn lost_events_add_up_exactly_with_a_tiny_ring_buffer() {
    let _serial = require_root();
    let dir = scratch_dir("lost");
    let server = Server::start(ServerKind::Rust, &dir);
    // One page of ring buffer, polled every 10 ms, against thousands of writes without pause.
    let agent = Agent::attach(server.pid(), &dir.join("report.json"), &["--ring-buffer-bytes", "4096"]);
    let load = testbed::run_load(&server.addr(), 16, 8, true, "tokens=300&interval_ms=0&prefill_ms=0", "lost").unwrap();
    assert_eq!(load.errors, 0);
    std::thread::sleep(Duration::from_millis(100));
    let report = agent.stop();
    // Asked after the agent detached, so /stats's own traffic is in neither count.
    let stats = http_get(&server.addr(), "/stats");
    let written = serde_json::from_str::<serde_json::Value>(&stats).unwrap()["writes"].as_u64().unwrap();
    let s = &report["summary"];
    let seen = s["events"]["writes"].as_u64().unwrap();
    let lost = s["lost"]["lost_writes"].as_u64().unwrap();
    eprintln!("target wrote {written}, agent saw {seen}, kernel counted {lost} lost");
    assert!(lost > 0, "a 4 KiB ring buffer must overflow under this load");
    assert_eq!(seen + lost, written, "every write is either seen or counted as lost");
    assert_eq!(s["lost"]["args_map_full"], 0);
}

#[test]
fn garbage_on_some_connections_loses_nothing_on_others() {
    let _serial = require_root();
    let dir = scratch_dir("garbage");
    let server = Server::start(ServerKind::Python, &dir);
    let agent = Agent::attach(server.pid(), &dir.join("report.json"), &[]);
    let addr = server.addr();
    let junk = std::thread::spawn(move || {
        let big_header = [b"GET /health HTTP/1.1\r\nX-Big: ".as_slice(), &vec![b'a'; 1 << 20], b"\r\n\r\n"].concat();
        let pipelined = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200);
        let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let payloads: Vec<&[u8]> = vec![
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello",
            b"\x00\x01\x02\xff\xfe\r\n\r\n\x00",
            b"GET /x HTTP/1.1\r\nContent-Length: banana\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            &random,
            &big_header,
            &pipelined,
            b"GET /health HTTP/1.0\r\n\r\n",
            b"GET /health HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbad\r\n0\r\n\r\n",
        ];
        for _ in 0..3 {
            for p in &payloads {
                if let Ok(mut s) = TcpStream::connect(&addr) {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                    let _ = s.write_all(p);
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf);
                }
            }
            // Slowloris: a head one byte at a time, never finished.
            if let Ok(mut s) = TcpStream::connect(&addr) {
                for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " {
                    let _ = s.write_all(&[*b]);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    });
    let load = testbed::run_load(&server.addr(), 24, 8, true, "tokens=10&interval_ms=3&prefill_ms=5", "good").unwrap();
    junk.join().unwrap();
    assert_eq!(load.errors, 0);
    std::thread::sleep(Duration::from_millis(100));
    let report = agent.stop();
    let got = requests_by_path(&report);
    for t in server.truth().iter().filter(|t| t.path.contains("/good")) {
        let r = got.get(&t.path).unwrap_or_else(|| panic!("good request {} lost", t.path));
        assert_eq!(r["chunks"].as_u64().unwrap(), t.chunks as u64);
        // Its figures too, against the server's own clock (the stream-timing tests' tolerance).
        let ft = r["first_token_ns"].as_u64().unwrap() as f64;
        assert!(
            (ft - t.first_token_ns.unwrap() as f64).abs() < 2e6,
            "{}: first token {ft} vs {:?}",
            t.path,
            t.first_token_ns
        );
        assert!(r["partial"].is_null(), "{r}");
    }
    assert_eq!(got.keys().filter(|p| p.contains("/good")).count(), 24);
    let parse = &report["summary"]["parse"];
    assert!(parse["bad_heads"].as_u64().unwrap() >= 5, "garbage is counted: {parse}");
}

#[test]
fn target_exiting_mid_stream_ends_the_run_with_what_was_seen() {
    let _serial = require_root();
    let dir = scratch_dir("exit");
    let mut server = Server::start(ServerKind::Rust, &dir);
    let agent = Agent::attach(server.pid(), &dir.join("report.json"), &[]);
    let ok = testbed::run_load(&server.addr(), 4, 2, true, "tokens=5&interval_ms=2&prefill_ms=2", "before").unwrap();
    assert_eq!(ok.errors, 0);
    let addr = server.addr();
    let long = std::thread::spawn(move || testbed::run_load(&addr, 2, 2, true, "tokens=5000&interval_ms=5", "cut"));
    std::thread::sleep(Duration::from_millis(500));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let report = agent.wait_report();
    let _ = long.join();
    assert_eq!(report["summary"]["ended_by"], "target exited");
    let got = requests_by_path(&report);
    assert_eq!(got.keys().filter(|p| p.contains("/before")).count(), 4, "{:?}", got.keys());
    // The two streams cut by the kill come out as partial records with what was measured.
    let cut: Vec<_> = got.iter().filter(|(p, _)| p.contains("/cut")).map(|(_, r)| r).collect();
    assert_eq!(cut.len(), 2, "cut streams are reported, as partial: {:?}", got.keys());
    for r in cut {
        assert!(r["partial"].is_string(), "a cut stream is never reported as complete: {r}");
        assert!(r["first_token_ns"].is_u64() && r["chunks"].as_u64().unwrap() > 0, "{r}");
    }
    assert_eq!(report["summary"]["partial_requests"], 2);
    assert!(report["summary"]["parse"]["aborted"].as_u64().unwrap() >= 2);
}

#[test]
fn clear_errors_for_missing_pid_and_missing_privileges() {
    let _serial = require_root();
    let bin = env!("CARGO_BIN_EXE_inferscope");
    let out = Command::new(bin).args(["attach", "--pid", "2147483646", "--quiet"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such process: 2147483646"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");

    // Same binary as an unprivileged user: refuses with what to do, before touching the kernel.
    let me = std::process::id().to_string();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            bin,
            "attach",
            "--pid",
            &me,
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not allowed to load eBPF programs: run as root, or grant CAP_BPF"), "{err}");
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

/// A server that writes `[DONE]` and then waits for the client to hang up (as uvicorn does when
/// the `openai` SDK closes after `[DONE]`): the chunked terminator never comes. The first stream
/// is complete for its user; the second is cut before its last event and must be partial.
const DONE_THEN_CLOSE: &str = r#"
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(8)
print("LISTENING", s.getsockname()[1], flush=True)
def chunk(b): return b"%x\r\n" % len(b) + b + b"\r\n"
for mode in ("done", "cut"):
    c, _ = s.accept()
    req = b""
    while b"\r\n\r\n" not in req: req += c.recv(4096)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    for i in range(3):
        time.sleep(0.005)
        c.sendall(chunk(b'data: {"choices":[{"delta":{"content":"t%d"}}]}\n\n' % i))
    if mode == "done":
        c.sendall(chunk(b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'))
        c.sendall(chunk(b"data: [DONE]\n\n"))
        c.recv(1)  # the client hangs up after [DONE]; no terminator is ever written
    c.close()
"#;

#[test]
fn a_stream_that_said_done_is_complete_and_a_cut_one_is_partial() {
    let _serial = require_root();
    let dir = scratch_dir("done-close");
    let mut server =
        Command::new("python3").args(["-c", DONE_THEN_CLOSE]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().unwrap()), &mut line).unwrap();
    let port: u16 = line.trim().strip_prefix("LISTENING ").unwrap().parse().unwrap();
    let agent = Agent::attach(server.id(), &dir.join("report.json"), &[]);
    for id in ["done", "cut"] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "POST /v1/chat/completions/{id} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap_or(0);
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.windows(6).any(|w| w == b"[DONE]") {
                break;
            }
        }
    }
    let _ = server.wait();
    let report = agent.wait_report();
    let got = requests_by_path(&report);
    let done = &got["/v1/chat/completions/done"];
    assert!(done["partial"].is_null(), "complete for its user: {done}");
    assert_eq!(done["chunks"], 3);
    let cut = &got["/v1/chat/completions/cut"];
    assert!(cut["partial"].is_string(), "{cut}");
    assert_eq!(cut["chunks"], 3);
    assert_eq!(report["summary"]["parse"]["completed_at_close"], 1);
    assert_eq!(report["summary"]["partial_requests"], 1);
}

#[test]
fn bad_input_is_refused_before_attaching_with_one_line() {
    let _serial = require_root();
    let bin = env!("CARGO_BIN_EXE_inferscope");
    let me = std::process::id().to_string();
    let zombie = Command::new("true").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let zpid = zombie.id().to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--pid", &me, "--json", "/nonexistent-dir/r.json"],
            "--json /nonexistent-dir/r.json: directory /nonexistent-dir does not exist",
        ),
        (&["--pid", &me, "--flamegraph", "/tmp"], "--flamegraph /tmp: is a directory"),
        (&["--pid", &me, "--folded", "/proc/1/nope/x"], "--folded /proc/1/nope/x"),
        (&["--pid", &me, "--ring-buffer-bytes", "0"], "--ring-buffer-bytes must be between one page"),
        (&["--pid", &me, "--ring-buffer-bytes", "1"], "--ring-buffer-bytes must be between one page"),
        (&["--pid", "2"], "cannot attach to pid 2: it is a kernel thread"),
        (&["--pid", &zpid], "it is a zombie"),
    ];
    for (args, want) in cases {
        let t0 = std::time::Instant::now();
        let out = Command::new(bin).arg("attach").arg("--quiet").args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one clear line for {args:?}: {err}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{args:?} refused only after {:?}", t0.elapsed());
    }
    drop(zombie);
}

#[test]
fn a_flamegraph_of_a_process_that_never_ran_is_still_written() {
    let _serial = require_root();
    let dir = scratch_dir("no-samples");
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let (svg, folded) = (dir.join("cpu.svg"), dir.join("cpu.folded"));
    let agent = Agent::attach(
        sleeper.id(),
        &dir.join("report.json"),
        &["--duration", "1", "--flamegraph", svg.to_str().unwrap(), "--folded", folded.to_str().unwrap()],
    );
    let report = agent.wait_report();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(report["cpu"]["samples"].as_u64().unwrap_or(0), 0, "a sleeping process is never sampled");
    let text = std::fs::read_to_string(&svg).expect("the SVG is written even without samples");
    assert!(text.contains("no samples"), "{text}");
    assert_eq!(std::fs::read_to_string(&folded).expect("the folded file too"), "");
}

#[test]
fn a_target_that_execs_gets_a_new_identity_in_the_report() {
    let _serial = require_root();
    let dir = scratch_dir("exec");
    // It execs once the agent is attached (the test creates `go`).
    let go = dir.join("go");
    let script = format!(
        "import os, time\nwhile not os.path.exists({go:?}): time.sleep(0.02)\nos.execv('/bin/sleep', ['sleep', '30'])"
    );
    // The interpreter itself, not a launcher script (pyenv's shim is bash exec'ing python).
    let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
    let python = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut target = Command::new(python).args(["-c", &script]).spawn().unwrap();
    let agent = Agent::attach(target.id(), &dir.join("report.json"), &["--duration", "3"]);
    std::fs::write(&go, "").unwrap();
    let (report, stdout) = agent.wait_report_with_stdout();
    let _ = target.kill();
    let _ = target.wait();
    let execs = report["target"]["execs"].as_array().unwrap_or_else(|| panic!("no execs in {}", report["target"]));
    assert_eq!(execs.len(), 1, "{execs:?}");
    assert_eq!(execs[0]["comm"], "sleep");
    assert!(execs[0]["from_comm"].as_str().unwrap().starts_with("python"), "{execs:?}");
    let at = execs[0]["at_s"].as_f64().unwrap();
    assert!(at > 0.0 && at < 3.0, "exec time inside the run: {at}");
    assert_eq!(report["target"]["comm"], "sleep", "the report names the program it ran at the end");
    assert!(stdout.contains("exec'd at"), "the terminal report says so: {stdout}");
}

/// Secrets a client puts in the path, query, headers and body never appear in any output of
/// attach run the default way (route templates, no `--raw-paths`), debug logs included.
#[test]
fn no_secret_in_any_output_debug_logs_included() {
    let _serial = require_root();
    let dir = scratch_dir("secrets");
    let server = Server::start(ServerKind::Python, &dir);
    let secrets = [
        "sk-proj-Zq81canaryPATHkey0123456789",
        "alice.canary@example.com",
        "sk-ant-api03-canaryQUERYsecret",
        "ghp_canaryHEADERtoken0123456789abcdef",
        "canaryCOOKIEsession",
        "canaryBODYprompt",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnbmF0dXJlY2FuYXJ5",
    ];
    let (json, svg, folded) = (dir.join("r.json"), dir.join("cpu.svg"), dir.join("cpu.folded"));
    let agent = Command::new(env!("CARGO_BIN_EXE_inferscope"))
        .args(["attach", "--pid", &server.pid().to_string(), "--duration", "4", "--json"])
        .arg(&json)
        .arg("--flamegraph")
        .arg(&svg)
        .arg("--folded")
        .arg(&folded)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500)); // attached (4 s run)
    for i in 0..4 {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{} {}"}}]}}"#, secrets[5], secrets[1]);
        write!(
            s,
            "POST /v1/chat/completions/{}/{}?api_key={}&tokens=3&interval_ms=2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nCookie: session={}\r\nX-Jwt: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            secrets[0], i, secrets[2], secrets[3], secrets[4], secrets[6], body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.contains("[DONE]"), "{resp}");
    }
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["summary"]["requests"].as_u64(), Some(4), "measured: {}", report["summary"]);
    let outputs = [
        ("terminal report", String::from_utf8_lossy(&out.stdout).into_owned()),
        ("debug log", String::from_utf8_lossy(&out.stderr).into_owned()),
        ("JSON", std::fs::read_to_string(&json).unwrap()),
        ("SVG", std::fs::read_to_string(&svg).unwrap()),
        ("folded", std::fs::read_to_string(&folded).unwrap()),
    ];
    assert!(outputs[1].1.contains("DEBUG"), "the log ran at debug level");
    for (what, text) in &outputs {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked into the {what}");
        }
        // Nor their distinctive parts.
        assert!(!text.to_lowercase().contains("canary"), "a canary leaked into the {what}");
    }
}
