//! HTTP/2 decode throughput per core: frames → HPACK → per-stream SSE records, on the Node
//! `http2` exchange recorded in the unit tests (three concurrent SSE streams on one connection,
//! Huffman-coded headers and a dynamic table, one client reset), replayed on many connections.
//! `cargo bench -p inferscope --bench h2`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inferscope::http::Connection;

fn recorded() -> Vec<(bool, Vec<u8>)> {
    include_str!("../src/http/h2/testdata/node_sse.txt")
        .lines()
        .map(|l| {
            let (dir, hex) = l.split_once(' ').unwrap();
            let bytes = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            (dir == "R", bytes)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let calls = recorded();
    let bytes: usize = calls.iter().map(|(_, b)| b.len()).sum();
    const CONNS: usize = 64;
    let mut g = c.benchmark_group("h2");
    g.throughput(Throughput::Bytes((bytes * CONNS) as u64));
    g.bench_function("node h2c: 64 connections x 3 SSE streams", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            for _ in 0..CONNS {
                let mut conn = Connection::new(true);
                for (i, (read, data)) in calls.iter().enumerate() {
                    let ts = i as u64 * 1000;
                    if *read {
                        conn.on_read(ts, data, data.len() as u64);
                        conn.drain(&mut out);
                    } else {
                        conn.on_write(ts, data, data.len() as u64, &mut out);
                    }
                }
                conn.end("end", &mut out);
            }
            assert_eq!(out.len(), 3 * CONNS);
            out
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
