//! A real inference server: llama.cpp's `llama-server` (built by `cargo xtask llama` from the
//! sources the llama-cpp-python sdist vendors) serving SmolLM2-135M. With `--profile llama.cpp`,
//! each streamed request gets tokenize / prefill / decode stages and TTFT from the same run, and
//! its decode calls match its streamed tokens. Needs root; `cargo xtask test` builds the server
//! and passes its path.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn llama_server_streams_get_stages_and_ttft() {
    let _serial = require_root();
    let server = std::env::var("INFERSCOPE_LLAMA_SERVER")
        .expect("INFERSCOPE_LLAMA_SERVER unset: run `cargo xtask test`, which builds llama-server");
    let model = std::env::var("INFERSCOPE_LLAMA_MODEL").expect("INFERSCOPE_LLAMA_MODEL unset: run `cargo xtask test`");
    let port = free_port();
    let mut child = Command::new(&server)
        .args(["-m", &model, "--host", "127.0.0.1", "--port", &port.to_string(), "-t", "2", "-c", "2048", "-np", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start llama-server");
    let t0 = Instant::now();
    while !http(port, "GET", "/health", "").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(t0.elapsed() < Duration::from_secs(60), "llama-server not healthy in 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let dir = scratch_dir("llama");
    let trace = dir.join("trace.json");
    let agent = Agent::attach(
        child.id(),
        &dir.join("report.json"),
        &["--profile", "llama.cpp", "--trace", trace.to_str().unwrap()],
    );
    let n = 4;
    for i in 0..n {
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"Count from one to ten, request {i}."}}],"stream":true,"max_tokens":20,"temperature":0,"cache_prompt":false}}"#
        );
        let resp = http(port, "POST", "/v1/chat/completions", &body).expect("chat request");
        assert!(resp.starts_with("HTTP/1.1 200"), "{}", &resp[..resp.len().min(200)]);
    }
    std::thread::sleep(Duration::from_millis(300));
    let report = agent.stop();
    let _ = child.kill();
    let _ = child.wait();

    let requests = report["requests"].as_array().unwrap();
    let chats: Vec<_> = requests.iter().filter(|r| r["path"] == "/v1/chat/completions").collect();
    assert_eq!(chats.len(), n, "every streamed request measured: {}", report["summary"]);
    for r in chats {
        let st = &r["stages"];
        let count = |name: &str| st[name]["count"].as_u64().unwrap_or(0);
        let chunks = r["chunks"].as_u64().unwrap();
        eprintln!(
            "request: ttft {:.1} ms, chunks {chunks}, tokens {}, tokenize {}, prefill {}, decode {}, sample {}, detokenize {}",
            r["ttft_s"].as_f64().unwrap_or(0.0) * 1e3,
            r["tokens"],
            count("tokenize"),
            count("prefill"),
            count("decode"),
            count("sample"),
            count("detokenize")
        );
        assert!(r["ttft_s"].as_f64().unwrap() > 0.0);
        assert!(chunks > 0);
        assert!(count("tokenize") >= 1, "tokenize attributed: {st}");
        assert!(count("prefill") >= 1, "the prompt decode ran before the first token: {st}");
        // One llama_decode per generated token: the prompt batch yields the first, then one
        // call per further token.
        assert_eq!(count("prefill") + count("decode"), chunks, "decode calls vs streamed chunks: {st}");
        // The prefill must end before the first token, so its time is inside TTFT.
        assert!(st["prefill"]["total_s"].as_f64().unwrap() <= r["ttft_s"].as_f64().unwrap());
    }
    let names: Vec<&str> = report["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    for want in ["tokenize", "prefill", "decode", "graph_compute"] {
        assert!(names.contains(&want), "stage {want} in {names:?}");
    }
    check_trace(&trace, &report, n);
}

/// The `--trace` file against the Trace Event Format's fields and the same run's JSON report:
/// one request slice per request with its timestamps, its phases inside it, and every stage call
/// a slice on the thread that ran it.
fn check_trace(path: &std::path::Path, report: &serde_json::Value, chats: usize) {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ev = doc["traceEvents"].as_array().expect("traceEvents");
    for e in ev {
        let ph = e["ph"].as_str().unwrap_or_else(|| panic!("ph in {e}"));
        assert!(["X", "i", "M", "C"].contains(&ph), "{e}");
        assert!(e["name"].is_string() && e["pid"].is_u64() && e["tid"].is_u64(), "{e}");
        if ph != "M" {
            assert!(e["ts"].as_f64().is_some_and(|t| t > 0.0), "{e}");
        }
        if ph == "X" {
            assert!(e["dur"].as_f64().is_some_and(|d| d >= 0.0), "{e}");
        }
    }
    let xs = |name: &str| ev.iter().filter(|e| e["ph"] == "X" && e["name"] == name).collect::<Vec<_>>();
    let requests = xs("POST /v1/chat/completions");
    assert_eq!(requests.len(), chats, "one slice per request");
    for r in report["requests"].as_array().unwrap().iter().filter(|r| r["path"] == "/v1/chat/completions") {
        let start = r["request_ns"].as_u64().unwrap() as f64 / 1000.0;
        let s =
            requests.iter().find(|s| (s["ts"].as_f64().unwrap() - start).abs() < 0.002).expect("slice at request_ns");
        let end = r["end_ns"].as_u64().unwrap() as f64 / 1000.0;
        assert!((s["ts"].as_f64().unwrap() + s["dur"].as_f64().unwrap() - end).abs() < 0.002, "{s} vs {r}");
        let ft = r["first_token_ns"].as_u64().unwrap() as f64 / 1000.0;
        let prefill =
            xs("prefill").into_iter().find(|p| p["tid"] == s["tid"] && (p["ts"] == s["ts"])).expect("prefill");
        assert!((prefill["ts"].as_f64().unwrap() + prefill["dur"].as_f64().unwrap() - ft).abs() < 0.002);
    }
    let calls: usize = report["stages"].as_array().unwrap().iter().map(|s| s["count"].as_u64().unwrap() as usize).sum();
    let stage_slices = ev.iter().filter(|e| e["ph"] == "X" && e["pid"] == 2).count();
    assert_eq!(stage_slices, calls, "one slice per stage call");
}
