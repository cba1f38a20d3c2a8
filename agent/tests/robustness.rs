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
        let payloads: [&[u8]; 4] = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello",
            b"\x00\x01\x02\xff\xfe\r\n\r\n\x00",
            b"GET /x HTTP/1.1\r\nContent-Length: banana\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        for _ in 0..5 {
            for p in payloads {
                if let Ok(mut s) = TcpStream::connect(&addr) {
                    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                    let _ = s.write_all(p);
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf);
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
    for t in server.truth() {
        let r = got.get(&t.path).unwrap_or_else(|| panic!("good request {} lost", t.path));
        assert_eq!(r["chunks"].as_u64().unwrap(), t.chunks as u64);
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
    assert_eq!(got.keys().filter(|p| p.contains("/cut")).count(), 0, "cut streams are not reported as complete");
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
