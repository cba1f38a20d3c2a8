//! HTTP/2 and TLS on `/metrics`: what the HTTP/2 parser and the TLS capture followed and what
//! they could not, agent-wide like `inferscope_parse_errors_total`. Every label value is one
//! of a fixed few (bounded); the counts are the core's running totals turned into increments
//! once a second.

use std::collections::BTreeMap;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::bpf::tls::TlsKernelCounters;
use crate::http::h2::H2Counters;
use crate::tls::gate::TlsCounters;

pub struct ProtocolMetrics {
    h2_connections: IntCounterVec,
    h2_streams: IntCounterVec,
    h2_resets: IntCounter,
    h2_desyncs: IntCounter,
    h2_data_bytes_lost: IntCounter,
    tls_connections: IntCounterVec,
    tls_calls: IntCounterVec,
    tls_ciphertext_dropped: IntCounterVec,
    tls_linked_late: IntCounter,
}

impl ProtocolMetrics {
    pub fn register(registry: &Registry) -> Self {
        let vec = |name: &str, help: &str, label: &str| {
            let v =
                IntCounterVec::new(Opts::new(name, help), &[label]).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(v.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            v
        };
        let one = |name: &str, help: &str| {
            let v = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(v.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            v
        };
        Self {
            h2_connections: vec(
                "inferscope_http2_connections_total",
                "HTTP/2 connections followed: from their client preface, or joined from whole frames",
                "start",
            ),
            h2_streams: vec(
                "inferscope_http2_streams_total",
                "HTTP/2 streams: followed, or not measured (header block not decodable, over the per-connection cap)",
                "result",
            ),
            h2_resets: one("inferscope_http2_stream_resets_total", "HTTP/2 streams reset (RST_STREAM) before their end"),
            h2_desyncs: one(
                "inferscope_http2_desyncs_total",
                "HTTP/2 frame headers not captured: the frames after them were lost",
            ),
            h2_data_bytes_lost: one(
                "inferscope_http2_data_bytes_lost_total",
                "HTTP/2 DATA bytes not captured (the stream kept in step by frame lengths)",
            ),
            tls_connections: vec(
                "inferscope_tls_connections_total",
                "Encrypted connections: decoded from libssl plaintext, seen encrypted but not decoded, not tracked",
                "result",
            ),
            tls_calls: vec(
                "inferscope_tls_calls_total",
                "SSL calls that moved bytes: plaintext sent, connection unknown (unmapped: lost), not followed (call map full)",
                "result",
            ),
            tls_ciphertext_dropped: vec(
                "inferscope_tls_ciphertext_dropped_total",
                "Socket reads/writes of encrypted connections kept from the parser, in the kernel or the agent",
                "where",
            ),
            tls_linked_late: one(
                "inferscope_tls_writes_linked_late_total",
                "SSL writes tied to their connection by the thread's next socket write (sent, among plaintext)",
            ),
        }
    }
}

/// The totals last turned into increments.
#[derive(Default)]
pub struct ProtocolCounts {
    last: BTreeMap<(&'static str, &'static str), u64>,
}

impl ProtocolCounts {
    pub fn update(&mut self, h2: &H2Counters, tls: &TlsCounters, kernel: &TlsKernelCounters, m: &ProtocolMetrics) {
        let vecs: [(&IntCounterVec, &'static str, &'static str, u64); 13] = [
            (&m.h2_connections, "h2_conn", "preface", h2.connections),
            (&m.h2_connections, "h2_conn", "joined", h2.joined),
            (&m.h2_streams, "h2_streams", "followed", h2.streams),
            (&m.h2_streams, "h2_streams", "undecodable_headers", h2.undecodable_headers),
            (&m.h2_streams, "h2_streams", "over_cap", h2.streams_dropped),
            (&m.tls_connections, "tls_conn", "decoded", tls.connections_decoded),
            (&m.tls_connections, "tls_conn", "undecoded", tls.connections_undecoded),
            (&m.tls_connections, "tls_conn", "not_tracked", tls.gate_full),
            (&m.tls_calls, "tls_calls", "plaintext", kernel.plaintext),
            (&m.tls_calls, "tls_calls", "unmapped", kernel.unmapped),
            (&m.tls_calls, "tls_calls", "not_followed", kernel.calls_full),
            (&m.tls_ciphertext_dropped, "tls_ct", "kernel", kernel.ciphertext_dropped),
            (&m.tls_ciphertext_dropped, "tls_ct", "agent", tls.ciphertext_records_dropped),
        ];
        for (v, family, label, now) in vecs {
            let delta = self.delta(family, label, now);
            v.with_label_values(&[label]).inc_by(delta);
        }
        let ones: [(&IntCounter, &'static str, u64); 4] = [
            (&m.tls_linked_late, "tls_linked_late", kernel.linked_late),
            (&m.h2_resets, "h2_resets", h2.resets),
            (&m.h2_desyncs, "h2_desyncs", h2.desyncs),
            (&m.h2_data_bytes_lost, "h2_data_lost", h2.data_bytes_lost),
        ];
        for (c, family, now) in ones {
            let delta = self.delta(family, "", now);
            c.inc_by(delta);
        }
    }

    fn delta(&mut self, family: &'static str, label: &'static str, now: u64) -> u64 {
        let before = self.last.insert((family, label), now).unwrap_or(0);
        now.saturating_sub(before)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?
            .rsplit_once(' ')?
            .1
            .parse()
            .ok()
    }

    #[test]
    fn totals_become_increments_with_fixed_labels() {
        let registry = Registry::new();
        let m = ProtocolMetrics::register(&registry);
        let mut counts = ProtocolCounts::default();
        let mut h2 =
            H2Counters { connections: 3, streams: 12, resets: 3, undecodable_headers: 1, ..Default::default() };
        let mut tls = TlsCounters { connections_decoded: 3, connections_undecoded: 1, ..Default::default() };
        let kernel = TlsKernelCounters { plaintext: 40, unmapped: 3, ciphertext_dropped: 90, ..Default::default() };
        counts.update(&h2, &tls, &kernel, &m);
        // A second update with grown totals adds only the growth.
        h2.streams = 20;
        tls.connections_decoded = 5;
        counts.update(&h2, &tls, &kernel, &m);
        let text = String::from_utf8(crate::daemon::metrics::encode(&registry)).unwrap();
        for (series, want) in [
            ("inferscope_http2_connections_total{start=\"preface\"}", 3),
            ("inferscope_http2_streams_total{result=\"followed\"}", 20),
            ("inferscope_http2_streams_total{result=\"undecodable_headers\"}", 1),
            ("inferscope_http2_stream_resets_total", 3),
            ("inferscope_tls_connections_total{result=\"decoded\"}", 5),
            ("inferscope_tls_connections_total{result=\"undecoded\"}", 1),
            ("inferscope_tls_calls_total{result=\"unmapped\"}", 3),
            ("inferscope_tls_calls_total{result=\"plaintext\"}", 40),
            ("inferscope_tls_ciphertext_dropped_total{where=\"kernel\"}", 90),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series}\n{text}");
        }
        // Zero totals are exported as 0 (the series exist from the first second on).
        assert_eq!(value(&text, "inferscope_http2_desyncs_total"), Some(0), "{text}");
        let names = text.lines().filter(|l| l.starts_with("inferscope_")).count();
        assert_eq!(names, 17, "one series per fixed label value, no more: {text}");
    }
}
