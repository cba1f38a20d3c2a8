//! The official `openai` Python SDK (PyPI) as the client, against a real server
//! (llama-cpp-python's own FastAPI/uvicorn server on SmolLM2, libllama built by `cargo xtask
//! llama`) and against our Python test server. Its synchronous client stops reading at
//! `data: [DONE]` and lets the connection go, often before the server's chunked terminator: a
//! stream that said it was done must still be one complete request, none may vanish. Needs root;
//! `cargo xtask test` builds the venv (`INFERSCOPE_OPENAI_PYTHON`) and llama-server's libraries.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const REQUESTS: usize = 8;

fn python() -> PathBuf {
    std::env::var_os("INFERSCOPE_OPENAI_PYTHON")
        .expect("INFERSCOPE_OPENAI_PYTHON unset: run `cargo xtask test`, which builds the openai venv")
        .into()
}

/// What the client saw of one request (its own clock readings).
#[derive(Debug)]
struct ClientView {
    start_ns: u64,
    first_token_ns: u64,
    end_ns: u64,
    content_chunks: u64,
}

fn run_client(base_url: &str, extra_query: Option<&str>) -> Vec<ClientView> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/openai_stream.py");
    let mut cmd = Command::new(python());
    cmd.arg(script).arg(base_url).arg(REQUESTS.to_string());
    if let Some(q) = extra_query {
        cmd.arg(q);
    }
    let out = cmd.stderr(Stdio::inherit()).output().expect("run the openai client");
    assert!(out.status.success(), "openai client failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("client line without {k}: {l}"));
            ClientView {
                start_ns: n("start_ns"),
                first_token_ns: n("first_token_ns"),
                end_ns: n("end_ns"),
                content_chunks: n("content_chunks"),
            }
        })
        .collect()
}

/// The agent's chat requests, oldest first, each checked complete and inside what its client saw.
fn check_against_clients(report: &serde_json::Value, clients: &[ClientView]) -> Vec<serde_json::Value> {
    let mut got: Vec<serde_json::Value> = report["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/v1/chat/completions")))
        .cloned()
        .collect();
    got.sort_by_key(|r| r["request_ns"].as_u64().unwrap());
    assert_eq!(got.len(), clients.len(), "every openai request measured, none vanished: {}", report["summary"]);
    for (r, c) in got.iter().zip(clients) {
        assert!(r["partial"].is_null(), "a stream that said [DONE] is complete: {r}");
        let ns = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
        // The server received the request after the client started it, wrote the first token
        // before the client read it, and the client's [DONE] came after the agent's end.
        assert!(ns("request_ns") >= c.start_ns, "request after the client's call: {r} {c:?}");
        assert!(ns("first_token_ns") <= c.first_token_ns, "first token written before read: {r} {c:?}");
        let lag_ms = (c.first_token_ns - ns("first_token_ns")) as f64 / 1e6;
        assert!(lag_ms < 25.0, "first token seen by the client {lag_ms:.1} ms after the agent's stamp: {r} {c:?}");
        assert!(ns("end_ns") <= c.end_ns + 1_000_000, "stream end before the client's: {r} {c:?}");
        assert_eq!(r["chunks"].as_u64().unwrap(), c.content_chunks, "content chunks as the client counted: {r}");
    }
    got
}

#[test]
fn openai_client_against_llama_cpp_python_server() {
    let _serial = require_root();
    let server = LlamaCppPython::start(&python());
    let base = server.base.clone();
    // One unmeasured request: the first one pays for warming the model up.
    let _ = run_client(&base, None);
    let dir = scratch_dir("openai-llama");
    let agent = Agent::attach(server.pid(), &dir.join("report.json"), &[]);
    let clients = run_client(&base, None);
    std::thread::sleep(Duration::from_millis(200));
    let report = agent.stop();
    let got = check_against_clients(&report, &clients);
    assert!(got.iter().all(|r| r["chunks"].as_u64().unwrap() > 0), "real tokens streamed");
}

#[test]
fn openai_client_against_our_python_server() {
    let _serial = require_root();
    let dir = scratch_dir("openai-ours");
    let server = Server::start(ServerKind::Python, &dir);
    let agent = Agent::attach(server.pid(), &dir.join("report.json"), &[]);
    let base = format!("http://{}/v1", server.addr());
    let clients = run_client(&base, Some(r#"{"tokens":"10","interval_ms":"3","prefill_ms":"5"}"#));
    std::thread::sleep(Duration::from_millis(200));
    let report = agent.stop();
    let got = check_against_clients(&report, &clients);
    // Our server records its own writes: the agent's stamps against the server's truth.
    let mut truth = server.truth();
    truth.sort_by_key(|t| t.request_ns);
    assert_eq!(truth.len(), got.len());
    for (r, t) in got.iter().zip(&truth) {
        let ft = r["first_token_ns"].as_u64().unwrap() as f64;
        let want = t.first_token_ns.unwrap() as f64;
        assert!((ft - want).abs() < 2e6, "first token {ft} vs server's {want}: {r}");
        assert_eq!(r["chunks"].as_u64().unwrap(), t.chunks as u64);
    }
}
