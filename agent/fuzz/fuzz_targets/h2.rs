//! Arbitrary bytes as the two directions of one HTTP/2 connection (after a real client
//! preface), through the same `Connection` the tracker uses, plus the HPACK decoder fed the
//! input as header blocks. Invariants: no panic; streams stay within `MAX_STREAMS`; every
//! record the parser gives out belongs to a stream it counted; the HPACK table stays bounded.
#![no_main]

use inferscope::http::h2::hpack::{Decoder, MAX_TABLE};
use inferscope::http::h2::{MAX_STREAMS, PREFACE};
use inferscope::http::Connection;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut c = Connection::new(true);
    let mut out = Vec::new();
    c.on_read(1, PREFACE, PREFACE.len() as u64);
    // Each op: [flags, extra_len, n] then n bytes: bit 0 = read/write, extra_len bytes moved
    // but not captured (a cut capture).
    let mut i = 0;
    let mut ts = 10;
    while i + 3 <= input.len() {
        let (flags, extra, n) = (input[i], u64::from(input[i + 1]), usize::from(input[i + 2]));
        i += 3;
        let data = &input[i..(i + n).min(input.len())];
        i += data.len();
        ts += 1;
        let len = data.len() as u64 + if flags & 2 != 0 { extra } else { 0 };
        if flags & 1 == 0 {
            c.on_read(ts, data, len);
            c.drain(&mut out);
        } else {
            c.on_write(ts, data, len, &mut out);
        }
        assert!(c.in_flight() <= MAX_STREAMS);
    }
    c.end("fuzz end", &mut out);
    assert!(out.len() as u64 <= c.counters.h2.streams);

    let mut d = Decoder::default();
    for block in input.split(|&b| b == 0xff) {
        let _ = d.decode(block);
        assert!(d.entries() <= MAX_TABLE / 32);
    }
});
