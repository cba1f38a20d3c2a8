//! What a response's content does to its record, shared by HTTP/1.1 ([`super::conn`]) and
//! HTTP/2 ([`super::h2::stream`]): one complete SSE/NDJSON event ([`EventSeen`]), or `n`
//! content units (gRPC messages) completed by one write ([`content_units`]). Each content write
//! is stamped once (`content_write_ns`, capped), however many events it completed.

use super::model::ModelScan;
use super::payload::classify;
use super::{ParseCounters, RequestRecord};

/// Content-write timestamps kept per request; later ones still count in `chunks`.
pub const MAX_CONTENT_WRITES: usize = 1 << 16;

/// What one complete (or cut) stream event does to its exchange.
pub(super) struct EventSeen<'a> {
    pub(super) record: &'a mut RequestRecord,
    pub(super) last_content_seq: &'a mut u64,
    pub(super) terminal_ns: &'a mut Option<u64>,
    pub(super) counters: &'a mut ParseCounters,
}

impl EventSeen<'_> {
    pub(super) fn event(&mut self, data: &[u8], ts_ns: u64, seq: u64) {
        if self.record.model.is_none() && self.record.chunks == 0 {
            // The response's first events (up to the first content one) name the model on
            // OpenAI-compatible servers and Ollama, when the request body did not show it.
            self.record.model = ModelScan::of(data);
        }
        let c = classify(data);
        if c.content {
            content_units(self.record, self.last_content_seq, self.counters, 1, ts_ns, seq);
        }
        if c.tokens.is_some() {
            self.record.tokens = c.tokens;
        }
        if c.terminal {
            *self.terminal_ns = Some(ts_ns);
        }
    }
}

/// `n` content units (events, gRPC messages) completed in write `seq` at `ts_ns`: each is a
/// chunk; the write is a content write once.
pub(super) fn content_units(
    record: &mut RequestRecord,
    last_seq: &mut u64,
    counters: &mut ParseCounters,
    n: u64,
    ts_ns: u64,
    seq: u64,
) {
    if n == 0 {
        return;
    }
    record.chunks += n;
    if *last_seq != seq {
        *last_seq = seq;
        if record.content_write_ns.len() < MAX_CONTENT_WRITES {
            record.content_write_ns.push(ts_ns);
        } else {
            counters.content_writes_dropped += 1;
        }
    }
}
