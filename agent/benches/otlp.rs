//! What `--otlp` / `[otlp]` adds per finished request on the ingest loop: `Otlp::record` (GenAI
//! measurements + the SDK's histogram updates) beside what the daemon already does for the
//! same request (`Metrics::observe_request`, the Prometheus histograms). The export itself runs
//! on the SDK's reader thread and is not measured here (the interval is set past the run).
//! `cargo bench -p inferscope --bench otlp -- --warm-up-time 1 --measurement-time 5`

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use inferscope::daemon::metrics::{Metrics, TargetLabels};
use inferscope::export::otlp::{Otlp, OtlpOptions};
use inferscope::http::RequestRecord;
use opentelemetry::KeyValue;

fn record(i: u64) -> RequestRecord {
    let t0 = 1_000_000_000 + i * 1_000_000;
    RequestRecord {
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        request_ns: t0,
        first_byte_ns: t0 + 30_000,
        first_token_ns: Some(t0 + 40_000_000),
        end_ns: t0 + 240_000_000,
        content_write_ns: (0..24).map(|k| t0 + 40_000_000 + k * 8_000_000).collect(),
        chunks: 24,
        tokens: Some(24),
        streaming: true,
        read_tid: 1,
        write_tid: 1,
        model: Some(["llama-3.1-8b", "qwen2:7b", "mistral-7b"][(i % 3) as usize].into()),
        partial: None,
        grpc_status: None,
    }
}

fn bench(c: &mut Criterion) {
    let recs: Vec<RequestRecord> = (0..96).map(record).collect();
    let labels = TargetLabels { service: "vllm".into(), ..Default::default() };
    let mut g = c.benchmark_group("per request");
    g.throughput(criterion::Throughput::Elements(recs.len() as u64));
    let mut prom = Metrics::new(10_000);
    g.bench_function("prometheus observe_request", |b| {
        b.iter(|| {
            for r in &recs {
                prom.observe_request(&labels, r);
            }
        })
    });
    // Nobody listens there, and the first export would come after an hour.
    let opts = OtlpOptions::new("http://127.0.0.1:9", 3600.0, 1.0).unwrap();
    let mut otlp = Otlp::start(&opts).unwrap();
    let target = [KeyValue::new("gen_ai.provider.name", "vllm")];
    g.bench_function("otlp record", |b| {
        b.iter(|| {
            for r in &recs {
                otlp.record(r, r.model.as_deref(), &target);
            }
        })
    });
    g.finish();
    let _ = otlp.shutdown();
}

criterion_group!(benches, bench);
criterion_main!(benches);
