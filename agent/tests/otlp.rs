//! OpenTelemetry export (`attach --otlp`, `[otlp]` in the agent's config) against a stand-in
//! OTLP/HTTP receiver (`tests/servers/otlp_receiver.py`: no collector is installable here) that
//! decodes every export with the official proto definitions from PyPI (`opentelemetry-proto`,
//! venv built by `cargo xtask test`, `INFERSCOPE_OTLP_PYTHON`). The target is our Python SSE
//! server streaming chat completions with a `model` in each request body. Checked: the GenAI
//! names, units, advisory buckets and attributes; counts and sums equal to the JSON report's
//! requests; nothing of a body, prompt or path in the payload; an endpoint that is down costs
//! one log line and counters; a bad endpoint fails before any work.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{metric, python_server, Daemon, Proc};
use common::*;
use serde_json::Value;

const PROMPT: &str = "private prompt text";

fn python() -> PathBuf {
    std::env::var_os("INFERSCOPE_OTLP_PYTHON")
        .expect("INFERSCOPE_OTLP_PYTHON unset: run `cargo xtask test`, which builds the opentelemetry-proto venv")
        .into()
}

/// The stand-in receiver; what it decoded is appended to `out`.
fn receiver(out: &Path, extra: &[&str]) -> (Proc, u16) {
    Proc::start(
        Command::new(python())
            .arg(workspace_root().join("tests/servers/otlp_receiver.py"))
            .args(["--port", "0", "--out"])
            .arg(out)
            .args(extra),
    )
}

/// One POST with a JSON body naming `model` and carrying a prompt; reads the whole response and
/// returns its status.
fn post(port: u16, path: &str, model: &str) -> u16 {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"{PROMPT}"}}],"stream":true}}"#);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{out}"))
}

fn received(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Attributes of a data point (or resource) as (key, string value).
fn attrs(v: &Value) -> Vec<(String, String)> {
    v["attributes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    let val = &kv["value"];
                    let s = val["string_value"].as_str().map(str::to_string).unwrap_or_else(|| val.to_string());
                    (kv["key"].as_str().unwrap().to_string(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn attr<'a>(a: &'a [(String, String)], key: &str) -> Option<&'a str> {
    a.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The metrics of one export by name.
fn metrics_of(export: &Value) -> Vec<Value> {
    export["decoded"]["resource_metrics"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rm| rm["scope_metrics"].as_array().unwrap().iter())
        .flat_map(|sm| sm["metrics"].as_array().unwrap().iter().cloned())
        .collect()
}

fn count(p: &Value) -> u64 {
    // proto3 JSON writes 64-bit integers as strings.
    p["count"].as_str().map_or_else(|| p["count"].as_u64().unwrap_or(0), |s| s.parse().unwrap())
}

fn sum(p: &Value) -> f64 {
    p["sum"].as_f64().unwrap_or(0.0)
}

/// What each checked metric must be, from the conventions (names, units, buckets).
const EXPECTED: &[(&str, &str, &[f64])] = &[
    (
        "gen_ai.server.request.duration",
        "s",
        &[0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92],
    ),
    (
        "gen_ai.server.time_to_first_token",
        "s",
        &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0],
    ),
    (
        "gen_ai.server.time_per_output_token",
        "s",
        &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5],
    ),
    (
        "gen_ai.client.token.usage",
        "{token}",
        &[
            1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
            67108864.0,
        ],
    ),
];

#[test]
fn attach_exports_genai_metrics_that_the_official_protos_decode() {
    let _serial = require_root();
    let dir = scratch_dir("otlp-attach");
    let out = dir.join("otlp.jsonl");
    let (_rx, rx_port) = receiver(&out, &[]);
    let server = Server::start(ServerKind::Python, &dir);
    let endpoint = format!("http://127.0.0.1:{rx_port}");
    let agent = Agent::attach(server.pid(), &dir.join("report.json"), &["--otlp", &endpoint, "--otlp-interval", "1"]);
    let q = "?tokens=4&interval_ms=3&prefill_ms=10";
    let chat = format!("/v1/chat/completions{q}");
    let mut sent = Vec::new();
    for (path, model, n) in [
        (chat.as_str(), "llama-3.1-8b", 5),
        (chat.as_str(), "org/qwen2:7b", 2),
        // The fixture answers 404 here: a failed text completion.
        ("/v1/completions", "llama-3.1-8b", 1),
        // Not a GenAI operation: measured in the report, not exported.
        ("/stats", "llama-3.1-8b", 1),
    ] {
        for _ in 0..n {
            sent.push((path, post(server.port, path, model)));
        }
    }
    // A periodic export while the run lasts, not only the last one at the end.
    let t0 = Instant::now();
    while !received(&out).iter().any(|e| !metrics_of(e).is_empty()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "no export within 10 s of the requests");
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = agent.stop();
    let requests: Vec<Value> = report["requests"].as_array().unwrap().clone();
    assert_eq!(requests.len(), sent.len(), "every request in the report: {}", report["summary"]);

    let exports = received(&out);
    assert!(exports.len() >= 2, "a periodic export and the last one: {} exports", exports.len());
    for e in &exports {
        assert_eq!(e["path"], "/v1/metrics");
        assert_eq!(e["content_type"], "application/x-protobuf");
        assert!(e["error"].is_null(), "decodes with the official protos: {e}");
        let raw = hex_decode(e["raw_hex"].as_str().unwrap());
        for secret in [PROMPT, "messages", "/v1/", "tok0", "q=", "interval_ms"] {
            assert!(!contains(&raw, secret.as_bytes()), "`{secret}` is in an export");
        }
    }
    // Cumulative temporality: the last export holds everything.
    let last = exports.last().unwrap();
    let resource = &last["decoded"]["resource_metrics"][0]["resource"];
    assert_eq!(attr(&attrs(resource), "service.name"), Some("inferscope"));
    let metrics = metrics_of(last);

    // What the report says, per request: the figures the export must carry.
    let genai: Vec<&Value> = requests.iter().filter(|r| !r["path"].as_str().unwrap().starts_with("/stats")).collect();
    let ok: Vec<&Value> = genai.iter().copied().filter(|r| r["status"].as_u64().unwrap() < 400).collect();
    let fsum = |rs: &[&Value], k: &str| rs.iter().map(|r| r[k].as_f64().unwrap()).sum::<f64>();
    let comm = report["target"]["comm"].as_str().unwrap().to_string();

    for (name, unit, buckets) in EXPECTED {
        let m = metrics.iter().find(|m| m["name"] == *name).unwrap_or_else(|| panic!("no {name} in {last}"));
        assert_eq!(m["unit"], *unit, "{name}");
        let h = &m["histogram"];
        assert_eq!(h["aggregation_temporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE", "{name}");
        let points = h["data_points"].as_array().unwrap();
        for p in points {
            let bounds: Vec<f64> =
                p["explicit_bounds"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
            assert_eq!(bounds, *buckets, "{name}: the conventions' advisory buckets");
            let a = attrs(p);
            assert_eq!(attr(&a, "gen_ai.provider.name"), Some(comm.as_str()), "{name} {a:?}");
            assert!(attr(&a, "gen_ai.operation.name").is_some(), "{name} {a:?}");
            for (k, _) in &a {
                assert!(
                    [
                        "gen_ai.provider.name",
                        "gen_ai.operation.name",
                        "gen_ai.request.model",
                        "error.type",
                        "gen_ai.token.type"
                    ]
                    .contains(&k.as_str()),
                    "{name}: unexpected attribute {k}"
                );
            }
        }
        let by = |op: &str, model: &str, error: Option<&str>| -> Vec<&Value> {
            points
                .iter()
                .filter(|p| {
                    let a = attrs(p);
                    attr(&a, "gen_ai.operation.name") == Some(op)
                        && attr(&a, "gen_ai.request.model") == Some(model)
                        && attr(&a, "error.type") == error
                })
                .collect()
        };
        let total: u64 = points.iter().map(count).sum();
        let reported = |rs: &[&Value], model: &str| rs.iter().filter(|r| r["model"] == model).count() as u64;
        let one = |v: Vec<&Value>| -> (u64, f64) {
            assert!(v.len() <= 1, "{name}: one point per attribute set");
            v.first().map_or((0, 0.0), |p| (count(p), sum(p)))
        };
        match *name {
            "gen_ai.server.request.duration" => {
                assert_eq!(total, genai.len() as u64, "{name}: every GenAI request, failures too");
                for model in ["llama-3.1-8b", "org/qwen2:7b"] {
                    let chats: Vec<&Value> = ok.iter().copied().filter(|r| r["model"] == model).collect();
                    let (n, s) = one(by("chat", model, None));
                    assert_eq!(n, reported(&ok, model), "{name} {model}");
                    assert!((s - fsum(&chats, "e2e_s")).abs() < 1e-6, "{name} {model}: sum {s} vs the report's");
                }
                let failed: Vec<&Value> = genai.iter().copied().filter(|r| r["status"] == 404).collect();
                assert_eq!(one(by("text_completion", "llama-3.1-8b", Some("404"))).0, failed.len() as u64);
            }
            "gen_ai.server.time_to_first_token" => {
                assert_eq!(total, ok.len() as u64, "{name}: successful requests only");
                for model in ["llama-3.1-8b", "org/qwen2:7b"] {
                    let chats: Vec<&Value> = ok.iter().copied().filter(|r| r["model"] == model).collect();
                    let (n, s) = one(by("chat", model, None));
                    assert_eq!(n, chats.len() as u64, "{name} {model}");
                    assert!((s - fsum(&chats, "ttft_s")).abs() < 1e-6, "{name} {model}: sum {s} vs the report's");
                }
            }
            "gen_ai.server.time_per_output_token" => {
                // The fixture states its completion tokens (usage): per stream, its content
                // writes' span (the sum of its gaps) over its tokens after the first.
                assert_eq!(total, ok.len() as u64, "{name}");
                let want: f64 = ok
                    .iter()
                    .map(|r| {
                        let span: f64 = r["itl_s"].as_array().unwrap().iter().map(|g| g.as_f64().unwrap()).sum();
                        span / (r["tokens"].as_f64().unwrap() - 1.0)
                    })
                    .sum();
                let got: f64 = points.iter().map(sum).sum();
                assert!(want > 0.0 && (got - want).abs() < 1e-6, "{name}: sum {got} vs {want} from the report");
            }
            "gen_ai.client.token.usage" => {
                assert_eq!(total, ok.len() as u64, "{name}");
                for p in points {
                    assert_eq!(attr(&attrs(p), "gen_ai.token.type"), Some("output"), "{name}");
                }
                let tokens: f64 = ok.iter().map(|r| r["tokens"].as_f64().unwrap()).sum();
                assert_eq!(points.iter().map(sum).sum::<f64>(), tokens, "{name}: the stated tokens");
            }
            _ => unreachable!(),
        }
    }
}

/// An endpoint nobody answers: the run and its report are whole, the failure is said once and
/// counted, never repeated per attempt.
#[test]
fn an_unreachable_endpoint_costs_one_line_and_a_count() {
    let _serial = require_root();
    let dir = scratch_dir("otlp-down");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = Server::start(ServerKind::Python, &dir);
    let endpoint = format!("http://127.0.0.1:{closed}");
    let mut agent =
        Agent::attach(server.pid(), &dir.join("report.json"), &["--otlp", &endpoint, "--otlp-interval", "0.5"]);
    for _ in 0..3 {
        assert_eq!(post(server.port, "/v1/chat/completions?tokens=3&interval_ms=2&prefill_ms=2", "m"), 200);
    }
    agent.wait_for("otlp: export failed", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGINT) };
    let (report, log) = agent.wait_report_with_log();
    assert_eq!(report["requests"].as_array().unwrap().len(), 3, "nothing lost");
    assert_eq!(log.iter().filter(|l| l.contains("otlp: export failed")).count(), 1, "said once: {log:#?}");
    let stats = log.iter().find(|l| l.contains("request(s) recorded")).unwrap_or_else(|| panic!("{log:#?}"));
    let failed: u64 = stats.split(", ").find_map(|p| p.strip_suffix(" failed")?.parse().ok()).unwrap();
    assert!(failed >= 2, "every attempt counted: {stats}");
    assert!(stats.contains("3 request(s) recorded") && stats.contains(" 0 accepted"), "{stats}");
}

/// A bad endpoint is refused before anything is attached, in one line.
#[test]
fn a_bad_endpoint_fails_before_any_work() {
    for (endpoint, why) in [("https://127.0.0.1:4318", "https is not supported"), ("127.0.0.1:4318", "no scheme")] {
        let out = Command::new(env!("CARGO_BIN_EXE_inferscope"))
            .args(["attach", "--pid", &std::process::id().to_string(), "--otlp", endpoint])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(why) && err.trim().lines().count() == 1, "{err}");
        assert!(!err.contains("attached"), "{err}");
    }
}

/// The agent (`[otlp]` in its config): a followed server's requests arrive under its service
/// as the provider, the model attribute capped as the Prometheus label is, and the export's own
/// counters are on /metrics.
#[test]
fn the_daemon_exports_what_it_follows() {
    let _serial = require_root();
    let dir = scratch_dir("otlp-daemon");
    let out = dir.join("otlp.jsonl");
    let (_rx, rx_port) = receiver(&out, &[]);
    let cfg = format!(
        "max_models_per_target = 1\n[otlp]\nendpoint = \"http://127.0.0.1:{rx_port}\"\ninterval_seconds = 1\n[[rule]]\nname = \"py-sse\"\ncomm = [\"python3\"]\ncmdline = [\"*sse_server.py*\"]\n"
    );
    let mut d = Daemon::start(&dir, &cfg, &[]);
    d.wait_ready();
    let (_py, port) = python_server(&dir, 1);
    d.wait_for("server followed", |m| metric(m, "inferscope_targets", &[]) == 1.0);
    for model in ["llama-3.1-8b", "llama-3.1-8b", "llama-3.1-8b", "llama-3.1-8b", "second-model"] {
        assert_eq!(post(port, "/v1/chat/completions?tokens=3&interval_ms=2&prefill_ms=2", model), 200);
    }
    d.wait_for("5 requests", |m| metric(m, "inferscope_requests_total", &[("service", "py-sse")]) == 5.0);
    let m = d.wait_for_within("an accepted export of all five", Duration::from_secs(10), |m| {
        metric(m, "inferscope_otlp_requests_total", &[("outcome", "recorded")]) == 5.0
            && metric(m, "inferscope_otlp_exports_total", &[("result", "ok")]) >= 1.0
            && received(&out).iter().any(|e| {
                metrics_of(e).iter().any(|x| {
                    x["name"] == "gen_ai.server.time_to_first_token"
                        && x["histogram"]["data_points"].as_array().unwrap().iter().map(count).sum::<u64>() == 5
                })
            })
    });
    assert_eq!(metric(&m, "inferscope_otlp_exports_total", &[("result", "failed")]), 0.0);
    let last = received(&out).into_iter().last().unwrap();
    let ttft = metrics_of(&last).into_iter().find(|x| x["name"] == "gen_ai.server.time_to_first_token").unwrap();
    let mut by_model = Vec::new();
    for p in ttft["histogram"]["data_points"].as_array().unwrap() {
        let a = attrs(p);
        assert_eq!(attr(&a, "gen_ai.provider.name"), Some("py-sse"), "the rule's service: {a:?}");
        assert!(a.iter().all(|(_, v)| !v.is_empty()), "no empty attribute: {a:?}");
        by_model.push((attr(&a, "gen_ai.request.model").unwrap().to_string(), count(p)));
    }
    by_model.sort();
    let want = [("llama-3.1-8b".to_string(), 4), ("other".to_string(), 1)];
    assert_eq!(by_model, want, "max_models_per_target = 1: the second model is `other`");
    assert!(
        !contains(&hex_decode(last["raw_hex"].as_str().unwrap()), b"second-model"),
        "a folded name is never exported"
    );
    assert!(d.stop().success());
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
