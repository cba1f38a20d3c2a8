//! HTTP/2 reconstruction against a recorded Node `http2` exchange (three concurrent SSE streams
//! on one connection, the first reset by the client mid-way; `testdata/node_sse.txt`, one line
//! per read/write the server made, recorded through a TCP relay), split at every offset, cut by
//! the capture limit, joined after attach; plus gRPC and HPACK cases built here.
#![allow(clippy::unwrap_used)]

use super::hpack::{ContentKind, Decoder};
use super::*;
use crate::http::Connection;

/// (is_read, bytes) per syscall.
fn recorded() -> Vec<(bool, Vec<u8>)> {
    include_str!("testdata/node_sse.txt")
        .lines()
        .map(|l| {
            let (dir, hex) = l.split_once(' ').unwrap();
            let bytes = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            (dir == "R", bytes)
        })
        .collect()
}

/// Feeds syscalls (ts = 1000 × index); `cut`: (syscall, offset) fed as two calls at one ts;
/// `cap`: captured bytes per syscall (the rest is length only).
fn replay(
    conn: &mut Connection,
    calls: &[(bool, Vec<u8>)],
    cut: Option<(usize, usize)>,
    cap: usize,
) -> Vec<RequestRecord> {
    let mut out = Vec::new();
    for (i, (read, bytes)) in calls.iter().enumerate() {
        let ts = 1000 * (i as u64 + 1);
        let parts: Vec<&[u8]> = match cut {
            Some((c, at)) if c == i => vec![&bytes[..at], &bytes[at..]],
            _ => vec![bytes],
        };
        for p in parts {
            let seen = &p[..p.len().min(cap)];
            if *read {
                conn.on_read(ts, seen, p.len() as u64);
                conn.drain(&mut out);
            } else {
                conn.on_write(ts, seen, p.len() as u64, &mut out);
            }
        }
    }
    conn.end("connection closed before the stream ended", &mut out);
    out
}

fn by_path(mut v: Vec<RequestRecord>) -> Vec<RequestRecord> {
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

#[test]
fn node_h2c_streams_become_records() {
    let calls = recorded();
    let mut c = Connection::new(true);
    let recs = by_path(replay(&mut c, &calls, None, usize::MAX));
    let paths: Vec<_> = recs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/v1/chat/completions/r0", "/v1/chat/completions/r1", "/v1/chat/completions/r2"]);
    for r in &recs {
        assert_eq!((r.method.as_str(), r.status, r.streaming), ("GET", 200, true), "{r:?}");
        assert_eq!(r.grpc_status, None, "not a gRPC call");
        assert_eq!(r.request_ns, 1000, "all three requests came in the first read");
        assert!(r.first_byte_ns > r.request_ns && r.first_token_ns > Some(r.first_byte_ns), "{r:?}");
    }
    // The server recorded: r0 3 content events before the client's reset, r1 and r2 all 5.
    let r0 = &recs[0];
    assert_eq!(r0.chunks, 3);
    assert_eq!(r0.partial, Some("stream reset by the client"));
    assert_eq!(r0.tokens, None);
    for r in &recs[1..] {
        assert_eq!((r.chunks, r.tokens, r.partial), (5, Some(5), None), "{r:?}");
        assert_eq!(r.content_write_ns.len(), 5);
    }
    assert_eq!(c.counters.h2.streams, 3);
    assert_eq!(c.counters.h2.resets, 1);
    assert_eq!(c.counters.h2.connections, 1);
    assert_eq!(c.counters.h2.undecodable_headers, 0);
    assert_eq!(c.counters.bad_heads, 0);
}

#[test]
fn every_split_point_gives_the_same_records() {
    let calls = recorded();
    let whole = by_path(replay(&mut Connection::new(true), &calls, None, usize::MAX));
    let key = |r: &RequestRecord| {
        let mut w = r.content_write_ns.clone();
        w.dedup();
        (
            r.path.clone(),
            r.status,
            r.request_ns,
            r.first_byte_ns,
            r.first_token_ns,
            r.end_ns,
            r.chunks,
            r.tokens,
            r.partial,
            w,
        )
    };
    let want: Vec<_> = whole.iter().map(key).collect();
    for (i, (_, bytes)) in calls.iter().enumerate() {
        for at in 0..=bytes.len() {
            let got = by_path(replay(&mut Connection::new(true), &calls, Some((i, at)), usize::MAX));
            let got: Vec<_> = got.iter().map(key).collect();
            assert_eq!(got, want, "syscall {i} split at {at}");
        }
    }
}

#[test]
fn cut_captures_skip_by_frame_length_and_count_what_was_lost() {
    let calls = recorded();
    for cap in [30usize, 64, 100, 200] {
        let mut c = Connection::new(true);
        let recs = replay(&mut c, &calls, None, cap);
        let h = c.counters.h2;
        assert!(h.data_bytes_lost > 0 || h.desyncs > 0 || h.undecodable_headers > 0, "cap {cap}: {h:?}");
        for r in &recs {
            assert!(r.chunks <= 5 && r.path.starts_with("/v1/chat/completions/r"), "cap {cap}: {r:?}");
        }
    }
    // Frames shorter than the cap keep everything exact.
    let mut c = Connection::new(true);
    let recs = replay(&mut c, &calls, None, 4096);
    assert_eq!(recs.len(), 3);
    assert_eq!(c.counters.h2.data_bytes_lost, 0);
}

#[test]
fn a_connection_joined_after_attach_resyncs_and_counts_what_it_cannot_decode() {
    let calls = recorded();
    // Joined: we never saw the preface nor the first read (its HEADERS), only what followed.
    let mut c = Connection::new(false);
    let recs = replay(&mut c, &calls[1..], None, usize::MAX);
    assert!(recs.is_empty(), "no stream is guessed: {recs:?}");
    assert_eq!((c.counters.h2.connections, c.counters.h2.joined), (0, 1), "recognised as HTTP/2 from whole frames");
    assert!(c.counters.unmatched_responses + c.counters.h2.undecodable_headers >= 1, "{:?}", c.counters);
}

// ---- built frames: gRPC, HPACK state, bounds

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literals (no Huffman); `index`: with incremental indexing.
fn block(fields: &[(&str, &str)], index: bool) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        b.push(if index { 0x40 } else { 0x00 });
        b.push(n.len() as u8);
        b.extend_from_slice(n.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

fn grpc_msg(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend((body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

const PATH: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

#[test]
fn grpc_server_streaming_counts_messages_and_ends_at_trailers() {
    let mut c = Connection::new(true);
    let mut out = Vec::new();
    let mut req = PREFACE.to_vec();
    req.extend(frame(frames::SETTINGS, 0, 0, &[]));
    let h = block(
        &[
            (":method", "POST"),
            (":path", PATH),
            ("content-type", "application/grpc"),
            ("authorization", "Bearer sk-SECRET"),
        ],
        true,
    );
    req.extend(frame(frames::HEADERS, frames::END_HEADERS, 1, &h));
    req.extend(frame(frames::DATA, frames::END_STREAM, 1, &grpc_msg(b"prompt: a SECRET prompt")));
    c.on_read(100, &req, req.len() as u64);
    let head = frame(
        frames::HEADERS,
        frames::END_HEADERS,
        1,
        &block(&[(":status", "200"), ("content-type", "application/grpc")], true),
    );
    c.on_write(200, &head, head.len() as u64, &mut out);
    // Three messages: one whole, one split across two writes (counted at the second).
    let (m1, m2) = (grpc_msg(b"tok0"), grpc_msg(b"tok1 SECRET completion"));
    let w1 = frame(frames::DATA, 0, 1, &m1);
    c.on_write(300, &w1, w1.len() as u64, &mut out);
    let w2 = frame(frames::DATA, 0, 1, &m2[..7]);
    c.on_write(400, &w2, w2.len() as u64, &mut out);
    let mut w3 = frame(frames::DATA, 0, 1, &m2[7..]);
    w3.extend(frame(frames::DATA, 0, 1, &grpc_msg(b"")));
    c.on_write(500, &w3, w3.len() as u64, &mut out);
    assert!(out.is_empty() && c.in_flight() == 1);
    assert_eq!(c.awaiting_first_token(), 0);
    let debug = format!("{c:?}");
    assert!(!debug.contains("SECRET"), "no header value, body or message is kept: {debug}");
    let t = frame(frames::HEADERS, frames::END_HEADERS | frames::END_STREAM, 1, &block(&[("grpc-status", "0")], false));
    c.on_write(600, &t, t.len() as u64, &mut out);
    assert_eq!(out.len(), 1);
    let r = &out[0];
    assert_eq!((r.method.as_str(), r.path.as_str(), r.status), ("POST", PATH, 200));
    assert_eq!((r.request_ns, r.first_byte_ns, r.first_token_ns, r.end_ns), (100, 200, Some(300), 600));
    assert_eq!((r.chunks, r.content_write_ns.clone(), r.tokens, r.streaming), (3, vec![300, 500], None, true));
    assert_eq!(c.counters.h2.grpc_errors, 0);
    assert_eq!(r.grpc_status, Some(0), "the trailers' code is in the record");
    // A trailers-only error on the next stream: no message, a non-zero grpc-status, counted.
    // (The indexed :path etc. come from the dynamic table the first block filled.)
    let req = frame(
        frames::HEADERS,
        frames::END_HEADERS | frames::END_STREAM,
        3,
        &[0x80 | 65, 0x80 | 64, 0x80 | 63], // :method POST, :path, content-type (indexed)
    );
    c.on_read(700, &req, req.len() as u64);
    let err = frame(
        frames::HEADERS,
        frames::END_HEADERS | frames::END_STREAM,
        3,
        &[&[0x80 | 63, 0x80 | 62][..], &block(&[("grpc-status", "8")], false)].concat(),
    );
    c.on_write(800, &err, err.len() as u64, &mut out);
    assert_eq!(out.len(), 2, "{:?}", c.counters);
    assert_eq!((out[1].path.as_str(), out[1].chunks, out[1].end_ns), (PATH, 0, 800));
    assert_eq!(out[1].grpc_status, Some(8), "RESOURCE_EXHAUSTED, from a trailers-only response");
    assert_eq!(crate::http::h2::grpc::code_name(8), "RESOURCE_EXHAUSTED");
    assert_eq!(crate::http::h2::grpc::code_name(99), "UNKNOWN_CODE");
    assert_eq!(c.counters.h2.grpc_errors, 1);
}

#[test]
fn stream_and_block_bounds_hold_and_are_counted() {
    let mut c = Connection::new(true);
    let mut req = PREFACE.to_vec();
    for i in 0..(MAX_STREAMS as u32 + 10) {
        let h = block(&[(":method", "GET"), (":path", "/v1/x")], false);
        req.extend(frame(frames::HEADERS, frames::END_HEADERS | frames::END_STREAM, 1 + 2 * i, &h));
    }
    c.on_read(1, &req, req.len() as u64);
    assert_eq!(c.in_flight(), MAX_STREAMS);
    assert_eq!(c.counters.h2.streams_dropped, 10);
    // A header block beyond MAX_BLOCK poisons the table rather than growing without bound.
    let big = vec![0u8; frames::MAX_PAYLOAD];
    let mut more = frame(frames::HEADERS, 0, 9999, &big);
    for _ in 0..(MAX_BLOCK / frames::MAX_PAYLOAD + 1) {
        more.extend(frame(frames::CONTINUATION, 0, 9999, &big));
    }
    more.extend(frame(frames::CONTINUATION, frames::END_HEADERS, 9999, &[]));
    c.on_read(2, &more, more.len() as u64);
    assert_eq!(c.counters.h2.undecodable_headers, 1);
    let mut out = Vec::new();
    c.end("closed", &mut out);
    assert_eq!(c.counters.aborted, MAX_STREAMS as u64);
}

#[test]
fn hpack_rfc_7541_request_and_response_examples() {
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    };
    // C.3 (no Huffman) and C.4 (Huffman): three requests on one connection each.
    for blocks in [
        [
            "828684410f7777772e6578616d706c652e636f6d",
            "828684be58086e6f2d6361636865",
            "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        ],
        [
            "828684418cf1e3c2e5f23a6ba0ab90f4ff",
            "828684be5886a8eb10649cbf",
            "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        ],
    ] {
        let mut d = Decoder::default();
        let paths: Vec<_> =
            blocks.iter().map(|b| d.decode(&hex(b)).unwrap()).map(|h| (h.method, h.path, h.unknown_refs)).collect();
        assert_eq!(paths[0], (Some("GET".into()), Some("/".into()), false));
        assert_eq!(paths[2], (Some("GET".into()), Some("/index.html".into()), false));
        assert_eq!(d.entries(), 3);
    }
    // C.5: responses; the second refers back to the first's entries.
    let mut d = Decoder::default();
    let h = d.decode(&hex("4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d")).unwrap();
    assert_eq!(h.status, Some(302));
    let h = d.decode(&hex("4803333037c1c0bf")).unwrap();
    assert_eq!((h.status, h.unknown_refs), (Some(307), false));
    // The same second block on a decoder that missed the first (joined): unknown, not guessed.
    let mut joined = Decoder::default();
    let h = joined.decode(&hex("4803333037c1c0bf")).unwrap();
    assert_eq!((h.status, h.unknown_refs), (Some(307), true));
    // Content types and a malformed block.
    let h = d.decode(&block(&[("content-type", "Application/gRPC+proto")], false)).unwrap();
    assert_eq!(h.content, Some(ContentKind::Grpc));
    assert!(d.decode(&[0x80]).is_err(), "index 0");
    assert!(d.decode(&[0x82]).is_err(), "poisoned after an error");
}

#[test]
fn garbage_never_panics_and_stays_bounded() {
    // A cheap deterministic fuzz pass (the cargo-fuzz target goes further).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let calls = recorded();
    for _ in 0..300 {
        let mut c = Connection::new(true);
        let mut out = Vec::new();
        let mut pre = PREFACE.to_vec();
        pre.extend(frame(frames::SETTINGS, 0, 0, &[]));
        c.on_read(1, &pre, pre.len() as u64);
        for (i, (read, bytes)) in calls.iter().enumerate() {
            let mut b = bytes.clone();
            for _ in 0..(rnd() % 4) {
                let n = b.len().max(1);
                let at = (rnd() as usize) % n;
                if at < b.len() {
                    b[at] = rnd() as u8;
                }
            }
            let ts = 10 + i as u64;
            if *read {
                c.on_read(ts, &b, b.len() as u64 + rnd() % 3);
                c.drain(&mut out);
            } else {
                c.on_write(ts, &b, b.len() as u64 + rnd() % 3, &mut out);
            }
        }
        c.end("closed", &mut out);
        assert!(out.len() <= MAX_STREAMS);
    }
}

#[test]
fn grpc_method_names_survive_route_templating_and_ids_do_not() {
    use crate::http::route::route_template;
    assert_eq!(route_template(PATH), PATH);
    let vertex = "/google.cloud.aiplatform.v1.PredictionService/StreamGenerateContent";
    assert_eq!(route_template(vertex), vertex);
    for leaky in ["/files.get/AKIAIOSFODNN7EXAMPLE", "/x.y/sk-abc", "/eyJhbGciOi.eyJzdWIi/sig", "/svc.Api/XkcdQzwrtPlm"]
    {
        assert_ne!(route_template(leaky), leaky, "{leaky}");
    }
}
