//! Accuracy of stream timing against ground truth the servers record themselves, on three
//! servers in three runtimes (Rust/tokio, Python stdlib threads, Node http), across framings:
//! keep-alive chunked, close-delimited, split frames, several frames per write, headers with the
//! first frame, CRLF and CR line ends, SSE comments, non-streaming JSON, 8 concurrent streams.
//! Needs root: the real eBPF programs are loaded into this kernel.

mod common;

use common::*;

/// (id prefix, query, concurrency, keep-alive, requests)
const SCENARIOS: &[(&str, &str, usize, bool, usize)] = &[
    ("ka", "tokens=12&interval_ms=4&prefill_ms=15", 8, true, 24),
    ("split", "tokens=8&interval_ms=4&prefill_ms=10&split=1", 4, true, 8),
    ("batch", "tokens=9&interval_ms=4&prefill_ms=10&batch=3", 4, true, 8),
    ("coal", "tokens=6&interval_ms=4&prefill_ms=10&coalesce=1", 4, true, 8),
    ("close", "tokens=6&interval_ms=4&prefill_ms=10&framing=close", 4, false, 8),
    ("crlf", "tokens=6&interval_ms=4&prefill_ms=10&eol=crlf&comments=1", 4, true, 8),
    ("cr", "tokens=6&interval_ms=4&prefill_ms=10&eol=cr", 2, true, 4),
    ("json", "tokens=5&interval_ms=2&prefill_ms=5&framing=json", 2, true, 4),
    ("nousage", "tokens=5&interval_ms=3&prefill_ms=5&usage=0&done=0", 2, true, 4),
];

const TTFT_TOLERANCE_S: f64 = 0.001;
const ITL_MEDIAN_TOLERANCE_S: f64 = 0.0005;

fn check_server(kind: ServerKind) {
    let _serial = require_root();
    let dir = scratch_dir(&format!("{kind:?}"));
    let server = Server::start(kind, &dir);
    // Warm-up before attaching: a runtime's first request runs lazy initialisation (Node's JIT
    // compiles its HTTP stack) between the read syscall and the handler that stamps the truth,
    // which makes the truth late by milliseconds, not the agent.
    // Every scenario once, since each code path compiles on first use.
    for (prefix, query, conc, ka, _) in SCENARIOS.iter().filter(|s| !(kind == ServerKind::Node && s.0 == "coal")) {
        let warm = testbed::run_load(&server.addr(), *conc, *conc, *ka, query, &format!("warm{prefix}")).unwrap();
        assert_eq!(warm.errors, 0);
    }
    let agent = Agent::attach(server.pid(), &dir.join("report.json"), &[]);
    let mut sent = 0;
    for (prefix, query, conc, ka, n) in SCENARIOS.iter().filter(|s| !(kind == ServerKind::Node && s.0 == "coal")) {
        // Node's http layer corks the socket around a response's first write, so with
        // coalesce=1 it sometimes merges two res.write() calls into one syscall: the server's
        // one-stamp-per-write truth is then wrong by a token interval. Rust and Python cover
        // headers-with-first-frame.
        //
        // The truth stamps of interpreted servers lag their syscalls when many streams compete:
        // Python's needs the GIL after recv() returns, Node's waits for the event loop. With 8
        // streams that lag reaches a millisecond now and then: error in the truth, not in the
        // agent (whose timestamps come from the kernel). The 8-stream cases run on the Rust
        // server, whose truth stays within tens of microseconds.
        let conc = match kind {
            ServerKind::Python => (*conc).min(2),
            ServerKind::Node => (*conc).min(4),
            ServerKind::Rust => *conc,
        };
        let s = testbed::run_load(&server.addr(), *n, conc, *ka, query, prefix).unwrap();
        assert_eq!(
            s.errors,
            0,
            "{kind:?} {prefix}: load errors {:?}",
            s.results.iter().filter_map(|r| r.error.clone()).collect::<Vec<_>>()
        );
        sent += n;
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let report = agent.stop();
    let truth: Vec<_> = server.truth().into_iter().filter(|t| !t.id.starts_with("warm")).collect();
    assert_eq!(truth.len(), sent, "{kind:?}: the server recorded every request");
    let got = requests_by_path(&report);
    assert_eq!(got.len(), sent, "{kind:?}: the agent saw every request; summary {}", report["summary"]);

    let mut worst_ttft: f64 = 0.0;
    for (prefix, ..) in SCENARIOS.iter().filter(|s| !(kind == ServerKind::Node && s.0 == "coal")) {
        let mut itl_err = Vec::new();
        for t in truth
            .iter()
            .filter(|t| t.id.starts_with(prefix) && t.id[prefix.len()..].chars().all(|c| c.is_ascii_digit()))
        {
            let r = got.get(&t.path).unwrap_or_else(|| panic!("{kind:?}: no agent record for {}", t.path));
            let ctx = format!("{kind:?} {}", t.path);
            assert_eq!(r["status"], 200, "{ctx}");
            assert_eq!(r["method"], "POST", "{ctx}");
            assert_eq!(r["chunks"].as_u64().unwrap(), t.chunks as u64, "{ctx}: chunks");
            assert_eq!(r["tokens"].as_u64(), t.tokens.map(u64::from), "{ctx}: tokens");
            // Each timestamp separately, then the derived durations.
            let truth_ttft = t.first_token_ns.map(|ft| (ft - t.request_ns) as f64 / 1e9);
            match (r["ttft_s"].as_f64(), truth_ttft) {
                (Some(a), Some(b)) => {
                    assert!(
                        (a - b).abs() <= TTFT_TOLERANCE_S,
                        "{ctx}: ttft agent {a} truth {b}; agent {r} truth {t:?}"
                    );
                    worst_ttft = worst_ttft.max((a - b).abs());
                }
                (None, None) => {}
                other => panic!("{ctx}: ttft presence differs {other:?}"),
            }
            let truth_e2e = (t.end_ns - t.request_ns) as f64 / 1e9;
            let e2e = r["e2e_s"].as_f64().unwrap();
            assert!(
                (e2e - truth_e2e).abs() <= TTFT_TOLERANCE_S,
                "{ctx}: e2e agent {e2e} truth {truth_e2e}; agent {r} truth {t:?}"
            );
            let truth_ttfb = (t.first_byte_ns - t.request_ns) as f64 / 1e9;
            let ttfb = r["ttfb_s"].as_f64().unwrap();
            // Node's res.flushHeaders() only queues the header write; the syscall (which the agent
            // sees) can follow the JS call that stamped the truth by a millisecond or more when
            // other streams keep the event loop busy. Rust and Python write synchronously.
            let ttfb_tolerance = if kind == ServerKind::Node { 3e-3 } else { TTFT_TOLERANCE_S };
            assert!(
                (ttfb - truth_ttfb).abs() <= ttfb_tolerance,
                "{ctx}: ttfb agent {ttfb} truth {truth_ttfb}; agent {r} truth {t:?}"
            );
            let content: Vec<u64> = t.writes.iter().filter(|w| w.content_events > 0).map(|w| w.ts_ns).collect();
            let truth_itl: Vec<f64> = content.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e9).collect();
            let itl: Vec<f64> = r["itl_s"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(itl.len(), truth_itl.len(), "{ctx}: one gap per pair of content writes");
            itl_err.extend(itl.iter().zip(&truth_itl).map(|(a, b)| (a - b).abs()));
        }
        if !itl_err.is_empty() {
            let m = median(itl_err);
            assert!(m <= ITL_MEDIAN_TOLERANCE_S, "{kind:?} {prefix}: median ITL error {m}");
        }
    }
    eprintln!("{kind:?}: {sent} requests, worst TTFT error {:.1} µs", worst_ttft * 1e6);
    let lost = &report["summary"]["lost"];
    assert_eq!(lost["lost_writes"], 0);
    assert_eq!(lost["lost_reads"], 0);
}

#[test]
fn rust_tokio_server_matches_ground_truth() {
    check_server(ServerKind::Rust);
}

#[test]
fn python_stdlib_server_matches_ground_truth() {
    check_server(ServerKind::Python);
}

#[test]
fn node_http_server_matches_ground_truth() {
    check_server(ServerKind::Node);
}
