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
    let report = Report {
        target: TargetInfo { pid: 1, comm: "srv".into(), exe: "/srv".into(), workers: Vec::new(), execs: Vec::new() },
        requests: vec![rec(0, 1_000_000, Some(50_000_000), &[50_000_000, 60_000_000], 100_000_000)],
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
        cpu: None,
        offcpu: None,
        gpu: None,
    };
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
    let report = Report {
        target: TargetInfo::default(),
        requests: vec![a.clone(), b, c, a],
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
        cpu: None,
        offcpu: None,
        gpu: None,
    };
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
