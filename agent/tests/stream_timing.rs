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
/// How far the agent's write stamp may trail a truth stamp (taken right before the write call).
/// The Rust server's stamps trail by tens of µs: the socket capture stamps the start of the send
/// (`tcp_sendmsg_locked`), before the loopback delivery that wakes the client and can preempt the
/// server (stamping the send's end, as before, was late by 1–1.4 ms about one run in three on a
/// 2-CPU VM, and every run under load).
const WRITE_LAG_RUST_NS: u64 = 1_000_000;
/// Python's and Node's servers run several requests at once: between the truth stamp and the
/// write call a thread can lose the GIL (CPython's switch interval is 5 ms) or wait for the event
/// loop, so their stamps trail by up to a few switch intervals (7.5 ms seen once in CI). The
/// Rust server's tight truth keeps the strict windows and the 1 ms TTFT check.
const WRITE_LAG_INTERPRETED_NS: u64 = 10_000_000;
/// Slack below a stamp for clock reads on different CPUs.
const EARLY_NS: u64 = 50_000;

/// Asserts `lo <= got <= hi` with all three as offsets from `lo` in the message.
fn within(ctx: &str, what: &str, got: u64, lo: u64, hi: u64) {
    assert!(
        lo <= got && got <= hi,
        "{ctx}: {what} at {got} ns, outside [{lo}, {hi}] (got - lo = {} µs, hi - lo = {} µs)",
        (got as i64 - lo as i64) / 1000,
        (hi - lo) / 1000
    );
}

fn check_server(kind: ServerKind, capture: &str) {
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
    let agent = Agent::attach(server.pid(), &dir.join("report.json"), &["--capture", capture]);
    let mut sent = 0;
    let mut sent_ns = std::collections::HashMap::new();
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
            ServerKind::Rust | ServerKind::Uring => *conc,
        };
        let s = testbed::run_load(&server.addr(), *n, conc, *ka, query, prefix).unwrap();
        assert_eq!(
            s.errors,
            0,
            "{kind:?} {prefix}: load errors {:?}",
            s.results.iter().filter_map(|r| r.error.clone()).collect::<Vec<_>>()
        );
        sent += n;
        sent_ns.extend(s.results.iter().map(|r| (r.id.clone(), r.sent_ns)));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let report = agent.stop();
    let truth: Vec<_> = server.truth().into_iter().filter(|t| !t.id.starts_with("warm")).collect();
    assert_eq!(truth.len(), sent, "{kind:?}: the server recorded every request");
    let got = requests_by_path(&report);
    assert_eq!(got.len(), sent, "{kind:?}: the agent saw every request; summary {}", report["summary"]);

    let mut worst_ttft: f64 = 0.0;
    let mut worst_write_lag: i64 = 0;
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
            // Each timestamp separately against what bounds it, then the derived durations.
            // The agent stamps syscalls in the kernel. The request arrives between the
            // client's stamp before its write and the server's stamp after its read (an
            // interpreter's stamp can trail the read by a scheduler slice on a loaded machine);
            // each response write follows the server's stamp before its write call.
            let lag = if kind == ServerKind::Rust { WRITE_LAG_RUST_NS } else { WRITE_LAG_INTERPRETED_NS };
            let ts = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{ctx}: no {k} in {r}"));
            let client_sent = sent_ns[&t.id];
            assert!(client_sent > 0, "{ctx}: the client stamped its send");
            within(&ctx, "request", ts("request_ns"), client_sent, t.request_ns + EARLY_NS);
            within(&ctx, "first byte", ts("first_byte_ns"), t.first_byte_ns - EARLY_NS, t.first_byte_ns + lag);
            worst_write_lag = worst_write_lag.max(ts("first_byte_ns") as i64 - t.first_byte_ns as i64);
            within(&ctx, "end", ts("end_ns"), t.end_ns - EARLY_NS, t.end_ns + lag);
            match (r["first_token_ns"].as_u64(), t.first_token_ns) {
                (Some(a), Some(b)) => {
                    within(&ctx, "first token", a, b - EARLY_NS, b + lag);
                    worst_write_lag = worst_write_lag.max(a as i64 - b as i64);
                }
                (None, None) => {}
                other => panic!("{ctx}: first token presence differs {other:?} agent {r}"),
            }
            let truth_ttft = t.first_token_ns.map(|ft| (ft - t.request_ns) as f64 / 1e9);
            match (r["ttft_s"].as_f64(), truth_ttft) {
                (Some(a), Some(b)) => {
                    // The Rust server's truth is tight enough to check the derived figure
                    // directly; for the others the bounds above are the check.
                    if kind == ServerKind::Rust {
                        assert!(
                            (a - b).abs() <= TTFT_TOLERANCE_S,
                            "{ctx}: ttft agent {a} truth {b}; agent {r} truth {t:?}"
                        );
                    }
                    worst_ttft = worst_ttft.max((a - b).abs());
                }
                (None, None) => {}
                other => panic!("{ctx}: ttft presence differs {other:?}"),
            }
            let agent_derived = |a: &str, b: &str| (ts(a) - ts(b)) as f64 / 1e9;
            assert!((r["e2e_s"].as_f64().unwrap() - agent_derived("end_ns", "request_ns")).abs() < 1e-6, "{ctx}");
            assert!(
                (r["ttfb_s"].as_f64().unwrap() - agent_derived("first_byte_ns", "request_ns")).abs() < 1e-6,
                "{ctx}"
            );
            if kind == ServerKind::Rust {
                let truth_e2e = (t.end_ns - t.request_ns) as f64 / 1e9;
                let truth_ttfb = (t.first_byte_ns - t.request_ns) as f64 / 1e9;
                for (what, a, b) in [("e2e", "e2e_s", truth_e2e), ("ttfb", "ttfb_s", truth_ttfb)] {
                    let a = r[a].as_f64().unwrap();
                    assert!(
                        (a - b).abs() <= TTFT_TOLERANCE_S,
                        "{ctx}: {what} agent {a} truth {b}; agent {r} truth {t:?}"
                    );
                }
            }
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
    eprintln!(
        "{kind:?} ({capture}): {sent} requests, worst TTFT error {:.1} µs, worst write stamp after its truth {:.1} µs",
        worst_ttft * 1e6,
        worst_write_lag as f64 / 1e3
    );
    assert_eq!(report["summary"]["capture"]["mode"], capture, "{kind:?}: the capture path asked for ran");
    let lost = &report["summary"]["lost"];
    assert_eq!(lost["lost_writes"], 0);
    assert_eq!(lost["lost_reads"], 0);
}

// The socket-layer capture (the default on this kernel).

#[test]
fn rust_tokio_server_matches_ground_truth() {
    check_server(ServerKind::Rust, "socket");
}

#[test]
fn python_stdlib_server_matches_ground_truth() {
    check_server(ServerKind::Python, "socket");
}

#[test]
fn node_http_server_matches_ground_truth() {
    check_server(ServerKind::Node, "socket");
}

// The syscall-tracepoint fallback (kernels before 6.3 or without BTF), forced.

#[test]
fn rust_tokio_server_matches_ground_truth_on_syscall_fallback() {
    check_server(ServerKind::Rust, "syscalls");
}

#[test]
fn python_stdlib_server_matches_ground_truth_on_syscall_fallback() {
    check_server(ServerKind::Python, "syscalls");
}

#[test]
fn node_http_server_matches_ground_truth_on_syscall_fallback() {
    check_server(ServerKind::Node, "syscalls");
}
