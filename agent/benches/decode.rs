//! Userspace cost per ring-buffer record: decode + route + HTTP/SSE parse + classify, on a
//! realistic stream (llama-server shaped: one chunked SSE frame per token write).
//! `cargo bench -p inferscope --bench decode`

use agent_common::EventKind;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inferscope::event::encode;
use inferscope::tracker::Tracker;

fn stream_records(conns: i32, tokens: usize) -> Vec<Vec<u8>> {
    let req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nServer: llama.cpp\r\n\r\n";
    let frame = |content: &str| {
        let f = format!("data: {{\"choices\":[{{\"finish_reason\":null,\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}],\"created\":1732000000,\"id\":\"chatcmpl-abc\",\"model\":\"smollm2\",\"system_fingerprint\":\"b1-1\",\"object\":\"chat.completion.chunk\"}}\n\n");
        format!("{:x}\r\n{f}\r\n", f.len()).into_bytes()
    };
    let mut out = Vec::new();
    let mut ts = 0u64;
    for fd in 0..conns {
        out.push(encode(EventKind::Accept, ts, 1, fd as u64, 0, b""));
        out.push(encode(EventKind::Read, ts, 1, fd as u64, req.len() as u64, req));
        out.push(encode(EventKind::Write, ts, 1, fd as u64, head.len() as u64, head));
    }
    for i in 0..tokens {
        for fd in 0..conns {
            ts += 7_000;
            let f = frame(&format!(" tok{i}"));
            out.push(encode(EventKind::Write, ts, 1, fd as u64, f.len() as u64, &f));
        }
    }
    for fd in 0..conns {
        let done = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
        out.push(encode(EventKind::Write, ts, 1, fd as u64, done.len() as u64, done));
        out.push(encode(EventKind::Close, ts, 1, fd as u64, 0, b""));
    }
    out
}

fn bench(c: &mut Criterion) {
    let records = stream_records(8, 256);
    let mut g = c.benchmark_group("tracker");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("8 streams x 256 token writes", |b| {
        b.iter(|| {
            let mut t = Tracker::new();
            let mut out = Vec::new();
            for r in &records {
                t.handle(r, &mut out);
            }
            assert_eq!(out.len(), 8);
            out
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
