//! Whole-exchange tests on recorded byte streams, split at every offset.

use super::conn::{Connection, RequestRecord};

const REQUEST: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-secret\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}\n";

/// A llama-server style stream: headers, role-only frame, N token frames each in its own chunk,
/// a finish frame with timings, [DONE], terminating chunk. Returns the bytes and the offsets just
/// past each content frame's blank line.
fn llama_stream(tokens: usize, eol: &str) -> (Vec<u8>, Vec<usize>) {
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n".to_vec();
    let mut ends = Vec::new();
    let chunk = |out: &mut Vec<u8>, frame: String, content: bool, ends: &mut Vec<usize>| {
        out.extend_from_slice(format!("{:x}\r\n", frame.len()).as_bytes());
        out.extend_from_slice(frame.as_bytes());
        if content {
            // Per the SSE spec a CR alone ends a line, so a CRLF-framed event is complete at its last CR.
            ends.push(out.len() - usize::from(frame.ends_with("\r\n")));
        }
        out.extend_from_slice(b"\r\n");
    };
    chunk(
        &mut out,
        format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":null}}}}]}}{eol}{eol}"
        ),
        false,
        &mut ends,
    );
    for i in 0..tokens {
        chunk(
            &mut out,
            format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" t{i}\"}}}}]}}{eol}{eol}"),
            true,
            &mut ends,
        );
    }
    chunk(&mut out, format!("data: {{\"choices\":[{{\"finish_reason\":\"stop\",\"index\":0,\"delta\":{{}}}}],\"timings\":{{\"prompt_n\":9,\"predicted_n\":{tokens}}}}}{eol}{eol}"), false, &mut ends);
    chunk(&mut out, format!("data: [DONE]{eol}{eol}"), false, &mut ends);
    out.extend_from_slice(b"0\r\n\r\n");
    (out, ends)
}

fn run(reads: &[(u64, &[u8])], writes: &[(u64, &[u8])]) -> Vec<RequestRecord> {
    let mut c = Connection::new(true);
    let mut out = Vec::new();
    for (ts, r) in reads {
        c.on_read(*ts, r, r.len() as u64);
    }
    for (ts, w) in writes {
        c.on_write(*ts, w, w.len() as u64, &mut out);
    }
    out
}

#[test]
fn request_split_at_every_point() {
    for k in 1..REQUEST.len() {
        let recs = run(&[(10, &REQUEST[..k]), (20, &REQUEST[k..])], &[(30, b"HTTP/1.1 204 No Content\r\n\r\n")]);
        assert_eq!(recs.len(), 1, "split {k}");
        assert_eq!(recs[0].request_ns, 20, "request complete only with its last body byte (split {k})");
        assert_eq!(recs[0].path, "/v1/chat/completions");
        assert_eq!((recs[0].first_byte_ns, recs[0].end_ns, recs[0].status), (30, 30, 204));
    }
}

#[test]
fn stream_split_at_every_point() {
    for eol in ["\n", "\r\n", "\r"] {
        let (s, ends) = llama_stream(5, eol);
        for k in 1..s.len() {
            let recs = run(&[(1, REQUEST)], &[(100, &s[..k]), (200, &s[k..])]);
            assert_eq!(recs.len(), 1, "eol {eol:?} split {k}");
            let r = &recs[0];
            let mut want = Vec::new();
            if ends.iter().any(|&e| e <= k) {
                want.push(100);
            }
            if ends.iter().any(|&e| e > k) {
                want.push(200);
            }
            assert_eq!(r.content_write_ns, want, "eol {eol:?} split {k}");
            assert_eq!(r.first_token_ns, want.first().copied());
            assert_eq!((r.chunks, r.tokens, r.request_ns, r.first_byte_ns, r.end_ns), (5, Some(5), 1, 100, 200));
            assert!(r.streaming);
        }
    }
}

#[test]
fn stream_byte_by_byte_and_frames_per_write() {
    let (s, ends) = llama_stream(7, "\n");
    let writes: Vec<(u64, &[u8])> =
        s.iter().enumerate().map(|(i, b)| (i as u64 + 1, std::slice::from_ref(b))).collect();
    let r = &run(&[(0, REQUEST)], &writes)[0];
    let want: Vec<u64> = ends.iter().map(|&e| e as u64).collect(); // write i+1 carries byte i
    assert_eq!(r.content_write_ns, want);
    assert_eq!(r.end_ns, s.len() as u64);
    // everything in one write: one content write carrying 7 chunks
    let r = &run(&[(0, REQUEST)], &[(5, &s)])[0];
    assert_eq!((r.content_write_ns.clone(), r.chunks), (vec![5], 7));
}

#[test]
fn keep_alive_and_pipelining() {
    let (s, _) = llama_stream(3, "\n");
    let two_requests = [REQUEST, REQUEST].concat();
    let recs = run(&[(1, &two_requests)], &[(10, &s), (20, &s)]);
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].request_ns, recs[1].request_ns), (1, 1));
    assert_eq!((recs[0].end_ns, recs[1].first_byte_ns), (10, 20));
    // both responses in one write
    let both = [s.clone(), s.clone()].concat();
    let recs = run(&[(1, REQUEST), (2, REQUEST)], &[(30, &both)]);
    assert_eq!(recs.iter().map(|r| (r.request_ns, r.chunks)).collect::<Vec<_>>(), vec![(1, 3), (2, 3)]);
}

#[test]
fn beyond_64_pipelined_requests_the_rest_are_counted_and_the_kept_ones_keep_their_figures() {
    let (s, _) = llama_stream(3, "\n");
    let mut c = Connection::new(true);
    let mut out = Vec::new();
    // 200 requests in two reads, before any answer; then the answers, one write each; then a
    // request after the burst, which must be measured again.
    let reqs: Vec<Vec<u8>> = (0..201).map(|i| format!("GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()).collect();
    let (a, b) = (reqs[..120].concat(), reqs[120..200].concat());
    c.on_read(1, &a, a.len() as u64);
    c.on_read(2, &b, b.len() as u64);
    for i in 0..200u64 {
        c.on_write(10 + i, &s, s.len() as u64, &mut out);
    }
    c.on_read(500, &reqs[200], reqs[200].len() as u64);
    c.on_write(501, &s, s.len() as u64, &mut out);
    assert_eq!(out.len(), 65, "64 kept, then the one after the burst");
    for (i, r) in out[..64].iter().enumerate() {
        assert_eq!((r.path.as_str(), r.first_byte_ns, r.chunks), (format!("/r{i}").as_str(), 10 + i as u64, 3));
    }
    assert_eq!((out[64].path.as_str(), out[64].request_ns, out[64].first_byte_ns), ("/r200", 500, 501));
    assert_eq!(c.counters.pipeline_overflow, 136);
    assert_eq!((c.counters.unmatched_responses, c.counters.aborted), (0, 0));
}

#[test]
fn close_delimited_body_ends_at_last_write() {
    let mut c = Connection::new(true);
    let mut out = Vec::new();
    let mut exchange = |ts: u64, bytes: &[u8], out: &mut Vec<RequestRecord>| {
        if ts == 1 {
            c.on_read(ts, bytes, bytes.len() as u64)
        } else {
            c.on_write(ts, bytes, bytes.len() as u64, out)
        }
    };
    exchange(1, b"GET /stream HTTP/1.0\r\n\r\n", &mut out);
    exchange(2, b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: {\"content\":\"\"}\n\n", &mut out);
    exchange(3, b"data: {\"content\":\"a\"}\n\n", &mut out);
    exchange(4, b"data: {\"content\":\"b\"}\n\ndata: [DONE]\n\n", &mut out);
    assert!(out.is_empty());
    c.end("closed", &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].first_token_ns, out[0].end_ns, out[0].chunks, out[0].tokens), (Some(3), 4, 2, None));
}

#[test]
fn plain_json_response_is_a_request_without_itl() {
    let body = br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"completion_tokens":12}}"#;
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    let recs = run(&[(1, REQUEST)], &[(5, head.as_bytes()), (6, body)]);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(
        (r.first_byte_ns, r.end_ns, r.first_token_ns, r.chunks, r.tokens, r.streaming),
        (5, 6, None, 0, Some(12), false)
    );
}

#[test]
fn interim_100_continue_and_head_requests() {
    let mut c = Connection::new(true);
    let mut out = Vec::new();
    c.on_read(1, b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", 61);
    c.on_write(2, b"HTTP/1.1 100 Continue\r\n\r\n", 25, &mut out);
    c.on_read(3, b"{}", 2);
    c.on_write(4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 38, &mut out);
    assert_eq!((out[0].request_ns, out[0].first_byte_ns), (3, 4));
    c.on_read(5, b"HEAD /y HTTP/1.1\r\n\r\n", 20);
    c.on_write(6, b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n", 40, &mut out);
    assert_eq!((out.len(), out[1].end_ns), (2, 6));
}

#[test]
fn truncated_capture_inside_chunk_keeps_framing() {
    // A 6000-byte chunk of which only the first 100 bytes were captured.
    let mut c = Connection::new(true);
    let mut out = Vec::new();
    c.on_read(1, REQUEST, REQUEST.len() as u64);
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    c.on_write(2, head, head.len() as u64, &mut out);
    let mut big = format!("{:x}\r\ndata: {{\"content\":\"", 6000 - 2).into_bytes();
    big.extend(std::iter::repeat_n(b'x', 100));
    let captured = big.len();
    // chunk header (6) + chunk data (5998) + CRLF (2), of which `captured` bytes were copied
    c.on_write(3, &big, 6 + 5998 + 2, &mut out);
    assert!(captured < 6006);
    assert_eq!(c.counters.framing_lost, 0);
    c.on_write(4, b"b\r\ndata: \"z\"\n\n\r\n0\r\n\r\n", 23, &mut out);
    assert_eq!(out.len(), 1, "the exchange still ends at its terminating chunk");
    // The cut event's beginning is content: it counts at the write that carried it.
    assert_eq!(out[0].content_write_ns, vec![3, 4]);
}

#[test]
fn garbage_never_panics_and_other_connections_are_unaffected() {
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (s, _) = llama_stream(4, "\n");
    for _ in 0..2000 {
        let mut junk = Connection::new(next() % 2 == 0);
        let mut good = Connection::new(true);
        let mut out = Vec::new();
        let mut sink = Vec::new();
        good.on_read(1, REQUEST, REQUEST.len() as u64);
        for step in 0..8 {
            let n = (next() % 300) as usize;
            let mut bytes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            if next() % 3 == 0 {
                // mutate real traffic rather than pure noise, to reach deeper states
                bytes = s.clone();
                let i = next() as usize % bytes.len();
                bytes[i] = next() as u8;
                bytes.truncate(next() as usize % (bytes.len() + 1));
            }
            let len = bytes.len() as u64 + next() % 3;
            if next() % 2 == 0 {
                junk.on_read(step, &bytes, len);
            } else {
                junk.on_write(step, &bytes, len, &mut sink);
            }
            if step == 3 {
                good.on_write(10, &s, s.len() as u64, &mut out);
            }
        }
        junk.end("closed", &mut sink);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].chunks, 4);
    }
}

#[test]
fn a_64k_sse_line_beyond_the_capture_still_gives_its_first_token() {
    let mut c = Connection::new(true);
    let mut out = Vec::new();
    let req = b"GET /v1/chat/completions HTTP/1.1\r\n\r\n";
    c.on_read(1, req, req.len() as u64);
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 70000\r\n\r\n";
    c.on_write(2, head, head.len() as u64, &mut out);
    // One write of a 64 KiB event; the kernel captured its first 4 KiB only.
    let mut event = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
    event.resize(65_536, b'x');
    event.extend_from_slice(b"\"}}]}\n\n");
    c.on_write(3, &event[..4096], event.len() as u64, &mut out);
    let rest = 70_000 - event.len();
    let tail = vec![b' '; rest];
    c.on_write(4, &tail, rest as u64, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].first_token_ns, out[0].chunks), (Some(3), 1));
    assert_eq!(c.counters.truncated_events, 1, "the cut event is counted as truncated");
}

fn model_request(body: &str) -> Vec<u8> {
    format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

#[test]
fn model_from_the_request_body_at_every_split() {
    let req = model_request(
        r#"{"messages":[{"role":"user","content":"say \"model\""}],"model":"llama-3.1-8b","stream":true}"#,
    );
    let resp =
        [SSE_HEAD, b"data: {\"model\":\"served-name\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"].concat();
    for k in 1..req.len() {
        let mut c = Connection::new(true);
        let mut out = Vec::new();
        c.on_read(10, &req[..k], k as u64);
        c.on_read(20, &req[k..], (req.len() - k) as u64);
        c.on_write(30, &resp, resp.len() as u64, &mut out);
        c.end("closed", &mut out);
        assert_eq!(out.len(), 1, "split {k}");
        assert_eq!(out[0].model.as_deref(), Some("llama-3.1-8b"), "the request's own field wins, split {k}");
    }
    // A chunked request body too.
    let body = r#"{"model":"qwen2:7b","prompt":"x"}"#;
    let chunked = format!(
        "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        &body[..5],
        body.len() - 5,
        &body[5..]
    );
    let recs = run(&[(10, chunked.as_bytes())], &[(30, b"HTTP/1.1 204 No Content\r\n\r\n")]);
    assert_eq!(recs[0].model.as_deref(), Some("qwen2:7b"));
}

#[test]
fn model_falls_back_to_the_response_when_the_body_was_not_captured() {
    let req = model_request(&format!(r#"{{"messages":[{{"content":"{}"}}],"model":"hidden"}}"#, "p".repeat(5000)));
    // The kernel captured the head and the body's start only: the field is in the lost tail.
    let head_end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let captured = &req[..head_end + 100];
    let resp = [
        SSE_HEAD,
        b"data: {\"model\":\"org\\/served-7b\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        b"data: {\"model\":\"later\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
    ]
    .concat();
    let mut c = Connection::new(true);
    let mut out = Vec::new();
    c.on_read(10, captured, req.len() as u64);
    c.on_write(30, &resp, resp.len() as u64, &mut out);
    c.end("closed", &mut out);
    assert_eq!(out[0].model.as_deref(), Some("org/served-7b"), "the response's first event");
    // Neither side names it: no model (the `unknown` label).
    let recs = run(&[(10, REQUEST)], &[(30, b"HTTP/1.1 204 No Content\r\n\r\n")]);
    assert_eq!(recs[0].model, None);
    // A non-streaming JSON response names it.
    let json = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n{\"model\":\"m1\",\"choices\":[]}";
    let recs = run(&[(10, REQUEST)], &[(30, json)]);
    assert_eq!(recs[0].model.as_deref(), Some("m1"));
}
