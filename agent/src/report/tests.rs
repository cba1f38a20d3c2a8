use super::*;

fn rec(request: u64, fb: u64, ft: Option<u64>, writes: &[u64], end: u64) -> RequestRecord {
    RequestRecord {
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        request_ns: request,
        first_byte_ns: fb,
        first_token_ns: ft,
        end_ns: end,
        content_write_ns: writes.to_vec(),
        chunks: writes.len() as u64,
        tokens: Some(writes.len() as u64),
        streaming: true,
        read_tid: 1,
        write_tid: 1,
        partial: None,
        grpc_status: None,
        model: None,
    }
}

#[test]
fn percentiles_nearest_rank() {
    let d = Distribution::of((1..=100).map(f64::from).collect());
    assert_eq!((d.p50, d.p90, d.p99, d.max, d.mean), (50.0, 90.0, 99.0, 100.0, 50.5));
    assert_eq!(Distribution::of(vec![]).count, 0);
    assert_eq!(Distribution::of(vec![3.0]).p99, 3.0);
}

#[test]
fn json_fields_are_derived_from_timestamps() {
    let r = rec(
        1_000_000_000,
        1_001_000_000,
        Some(1_050_000_000),
        &[1_050_000_000, 1_057_000_000, 1_064_000_000],
        1_070_000_000,
    );
    let j = RequestJson::from(&r);
    assert!((j.ttfb_s - 0.001).abs() < 1e-12);
    assert!((j.ttft_s.unwrap() - 0.050).abs() < 1e-12);
    assert!((j.e2e_s - 0.070).abs() < 1e-12);
    assert_eq!(j.itl_s.len(), 2);
    assert!((j.itl_s[0] - 0.007).abs() < 1e-12);
    let v = serde_json::to_value(&j).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = vec![
        "method",
        "path",
        "status",
        "request_ns",
        "first_byte_ns",
        "first_token_ns",
        "end_ns",
        "ttfb_s",
        "ttft_s",
        "e2e_s",
        "itl_s",
        "chunks",
        "tokens",
    ];
    want.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, want);
}

#[test]
fn render_has_table_and_waterfall() {
    let mut report = report_of(vec![rec(0, 1_000_000, Some(50_000_000), &[50_000_000, 60_000_000], 100_000_000)]);
    report.target =
        TargetInfo { pid: 1, comm: "srv".into(), exe: "/srv".into(), workers: Vec::new(), execs: Vec::new() };
    let text = report.render(100, 10);
    assert!(text.contains("time to first token"));
    assert!(text.contains("│"), "{text}");
    assert!(text.contains("█"));
    assert!(text.contains("50.00ms"));
}

#[test]
fn per_model_rows_in_summary_json_and_table() {
    let mut a = rec(0, 1_000_000, Some(10_000_000), &[10_000_000], 20_000_000);
    a.model = Some("alpha".into());
    let mut b = rec(0, 1_000_000, Some(30_000_000), &[30_000_000], 40_000_000);
    b.model = Some("beta".into());
    let c = rec(0, 1_000_000, Some(50_000_000), &[50_000_000], 60_000_000);
    let report = report_of(vec![a.clone(), b, c, a]);
    let rows: Vec<(String, usize)> = report.summary().models.iter().map(|m| (m.model.clone(), m.requests)).collect();
    assert_eq!(rows, [("alpha".to_string(), 2), ("beta".to_string(), 1), ("unknown".to_string(), 1)]);
    let doc = report.to_json();
    assert_eq!(doc["requests"][0]["model"], "alpha");
    assert!(doc["requests"][2].get("model").is_none(), "no model named: no field");
    assert_eq!(doc["summary"]["models"][1]["ttft_s"]["p50"], 0.03);
    let text = report.render(100, 10);
    assert!(text.contains("per model"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("beta") && l.contains("30.00ms")), "{text}");
}

#[test]
fn every_line_fits_60_80_and_120_columns() {
    let mut requests = Vec::new();
    for i in 0..5u64 {
        let t0 = i * 1_000_000_000;
        let mut r =
            rec(t0, t0 + 1_000_000, Some(t0 + 50_000_000), &[t0 + 50_000_000, t0 + 90_000_000], t0 + 100_000_000);
        r.path = format!("/v1/some/very/long/route/template/that/keeps/going/{i}");
        r.model = Some(format!("an-unusually-long-model-name-for-a-table-cell-{i}"));
        requests.push(r);
    }
    let mut report = report_of(requests);
    report.target = TargetInfo { pid: 4242, comm: "a-server-with-a-long-name".into(), ..TargetInfo::default() };
    (report.models_folded, report.duration_s, report.ended_by) = (3, 12.5, "interrupted".into());
    report.parse.aborted = 2;
    report.capture =
        CaptureInfo { mode: crate::capture::CaptureMode::Syscalls, fallback_reason: Some("x".repeat(100)) };
    for width in [60, 80, 120] {
        let text = report.render(width, 10);
        for line in text.lines() {
            assert!(line.chars().count() <= width, "{width} columns: {} chars: {line}", line.chars().count());
        }
        assert!(text.lines().any(|l| l.starts_with("time to first token")), "{width}: the table stays\n{text}");
        assert!(text.lines().any(|l| l.contains("█") && l.contains("50.00ms")), "{width}: waterfall rows\n{text}");
    }
    // The table is whole (its last column, mean, is there) from 84 columns on, and narrow
    // below 80 (p50, p99, max).
    let wide = report.render(120, 10);
    assert!(wide.lines().any(|l| l.trim_end().ends_with("mean")), "{wide}");
    let mid = report.render(80, 10);
    assert!(mid.lines().any(|l| l.trim_end().ends_with("mean")), "{mid}");
    let narrow = report.render(60, 10);
    let header = narrow.lines().find(|l| l.contains("count")).unwrap();
    assert!(header.contains("p99") && header.contains("max") && !header.contains("p90"), "{narrow}");
}
#[test]
fn http2_grpc_and_tls_counts_are_printed_and_in_the_json() {
    let mut call = rec(0, 1_000_000, Some(10_000_000), &[10_000_000], 20_000_000);
    call.grpc_status = Some(0);
    let mut failed = call.clone();
    failed.grpc_status = Some(8);
    let plain = rec(0, 1_000_000, Some(10_000_000), &[10_000_000], 20_000_000);
    let mut report = report_of(vec![call.clone(), call, failed, plain]);
    report.parse.h2.connections = 2;
    report.parse.h2.streams = 3;
    report.parse.h2.undecodable_headers = 1;
    report.events.tls.connections_decoded = 2;
    report.kernel.tls.unmapped = 2;
    let text = report.render(120, 10);
    for want in [
        "HTTP/2: 2 connection(s) (0 joined after attach), 3 stream(s) followed, 0 reset",
        "not measured: 1 undecodable header block(s), 0 over the stream cap",
        "gRPC: 3 call(s) by grpc-status: OK 2, RESOURCE_EXHAUSTED 1",
        "TLS: 2 connection(s) decoded from libssl plaintext, 0 not decoded",
        "lost: 2 on a connection not known yet, 0 over the call map",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let doc = report.to_json();
    assert_eq!(doc["requests"][2]["grpc_status"], 8);
    assert!(doc["requests"][3].get("grpc_status").is_none(), "HTTP: no grpc_status field");
    assert_eq!(doc["summary"]["parse"]["h2"]["undecodable_headers"], 1);
    assert_eq!(doc["summary"]["lost"]["tls"]["unmapped"], 2);
    // A plain HTTP/1.1 run prints none of it.
    let text = report_of(vec![rec(0, 1, Some(2), &[2], 3)]).render(120, 10);
    assert!(!text.contains("HTTP/2:") && !text.contains("TLS:") && !text.contains("gRPC:"), "{text}");
}

/// A report of `requests` over one second, nothing else measured.
fn report_of(requests: Vec<RequestRecord>) -> Report {
    Report {
        target: TargetInfo::default(),
        requests,
        requests_not_kept: 0,
        models_folded: 0,
        duration_s: 1.0,
        events: EventCounters::default(),
        kernel: KernelCounters::default(),
        parse: ParseCounters::default(),
        ended_by: "duration".into(),
        capture: CaptureInfo { mode: crate::capture::CaptureMode::Socket, fallback_reason: None },
        kernel_maps: Vec::new(),
        stages: None,
        py_stages: None,
        cpu: None,
        offcpu: None,
        gpu: None,
    }
}
