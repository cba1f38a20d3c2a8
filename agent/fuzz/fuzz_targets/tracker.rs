//! Arbitrary bytes as a sequence of socket events on a few connections, through the same
//! `Tracker` the agent uses. Invariants: no panic; a well-formed exchange on a connection the
//! fuzzer does not touch is measured exactly, whatever happens on the others.
#![no_main]

use agent_common::EventKind;
use inferscope::event::encode;
use inferscope::tracker::Tracker;
use libfuzzer_sys::fuzz_target;

const GOOD_REQ: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
const GOOD_RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n17\r\ndata: {\"content\":\"a\"}\n\n\r\n0\r\n\r\n";

fuzz_target!(|input: &[u8]| {
    let mut t = Tracker::new();
    let mut out = Vec::new();
    // The untouched connection belongs to tgid 2; fuzzed events use tgid 1.
    t.handle(&encode(EventKind::Accept, 1, 2, 100, 0, b""), &mut out);
    t.handle(&encode(EventKind::Read, 2, 2, 100, GOOD_REQ.len() as u64, GOOD_REQ), &mut out);
    // Each op: [kind, fd, extra_len, n] followed by n bytes of payload.
    let mut i = 0;
    let mut ts = 10;
    while i + 4 <= input.len() {
        let (k, fd, extra, n) = (input[i], input[i + 1] % 4, input[i + 2] as u64, input[i + 3] as usize);
        i += 4;
        let data = &input[i..(i + n).min(input.len())];
        i += data.len();
        ts += 1;
        let kind = match k % 5 {
            0 => EventKind::Read,
            1 => EventKind::Write,
            2 => EventKind::Accept,
            3 => EventKind::Joined,
            _ => EventKind::Close,
        };
        t.handle(&encode(kind, ts, 1, fd as u64, data.len() as u64 + extra, data), &mut out);
        // Raw garbage records too (unless they happen to decode as the untouched connection's).
        if inferscope::event::decode(data).map_or(true, |e| e.tgid != 2) {
            t.handle(data, &mut out);
        }
        if ts == 12 {
            t.handle(&encode(EventKind::Write, 50, 2, 100, GOOD_RESP.len() as u64, GOOD_RESP), &mut out);
        }
    }
    if ts < 12 {
        t.handle(&encode(EventKind::Write, 50, 2, 100, GOOD_RESP.len() as u64, GOOD_RESP), &mut out);
    }
    let good: Vec<_> = out.iter().filter(|f| f.record.request_ns == 2 && f.record.first_byte_ns == 50).collect();
    assert_eq!(good.len(), 1);
    assert_eq!(good[0].record.chunks, 1);
    assert_eq!(good[0].record.first_token_ns, Some(50));
});
