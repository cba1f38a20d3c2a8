//! The terminal report's HTTP/2, gRPC and TLS lines: what was followed, and every count of what
//! was not (the JSON has the same counts under `summary.parse.h2`, `summary.events.tls` and
//! `summary.lost.tls`). Printed only when the run saw HTTP/2 or TLS.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Summary;
use crate::http::h2::grpc::code_name;
use crate::http::RequestRecord;

pub(super) fn render(o: &mut String, s: &Summary, requests: &[RequestRecord]) {
    let h2 = &s.parse.h2;
    if h2.connections + h2.joined > 0 {
        let _ = writeln!(
            o,
            "HTTP/2: {} connection(s) ({} joined after attach), {} stream(s) followed, {} reset",
            h2.connections + h2.joined,
            h2.joined,
            h2.streams,
            h2.resets
        );
        let _ = writeln!(
            o,
            "  not measured: {} undecodable header block(s), {} over the stream cap, {} desync(s), {} DATA bytes lost",
            h2.undecodable_headers, h2.streams_dropped, h2.desyncs, h2.data_bytes_lost
        );
    }
    let mut codes: BTreeMap<u32, u64> = BTreeMap::new();
    for r in requests {
        if let Some(c) = r.grpc_status {
            *codes.entry(c).or_default() += 1;
        }
    }
    if !codes.is_empty() {
        let by: Vec<String> = codes.iter().map(|(c, n)| format!("{} {n}", code_name(*c))).collect();
        let _ = writeln!(o, "gRPC: {} call(s) by grpc-status: {}", codes.values().sum::<u64>(), by.join(", "));
    }
    let (t, k) = (&s.events.tls, &s.lost.tls);
    if t.connections_decoded + t.connections_undecoded + k.plaintext + k.unmapped > 0 {
        let _ = writeln!(
            o,
            "TLS: {} connection(s) decoded from libssl plaintext, {} not decoded",
            t.connections_decoded, t.connections_undecoded
        );
        let _ = writeln!(
            o,
            "  SSL calls whose plaintext was lost: {} on a connection not known yet, {} over the call map",
            k.unmapped, k.calls_full
        );
    }
    if t.connections_undecoded > 0 {
        let _ = writeln!(
            o,
            "not decoded: {} encrypted connection(s) gave no plaintext (a TLS stack without OpenSSL symbols: Go \
             crypto/tls, statically linked rustls/BoringSSL such as grpcio's); their requests are not in this report",
            t.connections_undecoded
        );
    }
}
