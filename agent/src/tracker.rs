//! Routes decoded events to per-connection parsers, bounded, and keeps the counts the report and
//! metrics need: events seen by kind, decode errors, connections the limit refused.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use agent_common::EventKind;

use crate::event::{decode, Event};
use crate::http::{Connection, ParseCounters, RequestRecord};

/// Connections followed at once; the kernel map has the same capacity.
pub const MAX_CONNECTIONS: usize = agent_common::limits::CONNS as usize;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EventCounters {
    pub reads: u64,
    pub writes: u64,
    pub accepts: u64,
    pub closes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub decode_errors: u64,
    /// Connections open before attach, first seen now (socket capture).
    pub joined: u64,
    /// Reads/writes whose bytes could not be captured (io_uring, sendfile): lengths only.
    pub no_payload: u64,
    /// Connections not followed because `MAX_CONNECTIONS` were already open.
    pub connections_dropped: u64,
    /// Connections with a request in flight that saw no event for the idle timeout (their close
    /// record was lost, or the peer vanished): ended, their streams reported partial.
    pub idle_expired: u64,
    /// TLS: connections decoded / seen encrypted but not decoded, ciphertext dropped here.
    pub tls: crate::tls::gate::TlsCounters,
}

/// A finished exchange and the process it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub tgid: u32,
    pub record: RequestRecord,
}

#[derive(Debug, Default)]
pub struct Tracker {
    /// Keyed by (process, connection id of the capture path).
    conns: HashMap<(u32, u64), Connection, BuildHasherDefault<KeyHasher>>,
    pub events: EventCounters,
    /// Parse counters of connections already closed (live ones are added on demand).
    closed: ParseCounters,
    /// Keeps encrypted socket bytes away from the parsers.
    tls: crate::tls::gate::TlsGate,
}

/// Hashes connection keys. They are ours (a process id and the capture path's connection id),
/// never chosen by a peer, so the multiply-rotate hash of rustc's FxHasher does instead of
/// SipHash's flood resistance (SipHash was a tenth of the decode time).
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl KeyHasher {
    #[inline]
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.add(b as u64);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.add(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a connection that was open before we attached: its parser waits for the next
    /// request line instead of assuming one.
    pub fn add_existing(&mut self, tgid: u32, conn: u64) {
        if self.conns.len() < MAX_CONNECTIONS {
            self.conns.entry((tgid, conn)).or_insert_with(|| Connection::new(false));
        } else {
            self.events.connections_dropped += 1;
        }
    }

    /// Handles one raw ring-buffer record; finished exchanges are appended to `out`.
    pub fn handle(&mut self, bytes: &[u8], out: &mut Vec<Finished>) {
        match decode(bytes) {
            Ok(ev) => self.handle_event(&ev, out),
            Err(e) => {
                self.events.decode_errors += 1;
                log::debug!("dropping ring-buffer record: {e}");
            }
        }
    }

    pub fn handle_event(&mut self, ev: &Event<'_>, out: &mut Vec<Finished>) {
        let key = (ev.tgid, ev.conn);
        let mut records = Vec::new();
        match ev.kind {
            EventKind::Accept => {
                self.events.accepts += 1;
                // A reused fd number means the old connection is gone even if its close was lost.
                self.tls.end(key, &mut self.events.tls);
                if let Some(mut old) = self.conns.remove(&key) {
                    old.end("connection replaced before the stream ended", &mut records);
                    add(&mut self.closed, &old.counters);
                }
                if self.conns.len() < MAX_CONNECTIONS {
                    self.conns.insert(key, Connection::new(true));
                } else {
                    self.events.connections_dropped += 1;
                }
            }
            EventKind::Joined => {
                self.events.joined += 1;
                self.add_existing(ev.tgid, ev.conn);
            }
            EventKind::Close => {
                self.events.closes += 1;
                self.tls.end(key, &mut self.events.tls);
                if let Some(mut c) = self.conns.remove(&key) {
                    c.end("connection closed before the stream ended", &mut records);
                    add(&mut self.closed, &c.counters);
                }
            }
            EventKind::Read | EventKind::Write => {
                if !self.tls.admit(key, ev, &mut self.events.tls) {
                    return;
                }
                let is_read = ev.kind == EventKind::Read;
                if is_read {
                    self.events.reads += 1;
                    self.events.read_bytes += ev.len;
                } else {
                    self.events.writes += 1;
                    self.events.write_bytes += ev.len;
                }
                if ev.no_payload {
                    self.events.no_payload += 1;
                }
                let full = self.conns.len() >= MAX_CONNECTIONS;
                let conn = match self.conns.entry(key) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(_) if full => {
                        self.events.connections_dropped += 1;
                        return;
                    }
                    // Its accept record was lost, or it predates us: resynchronise on the next head.
                    Entry::Vacant(e) => e.insert(Connection::new(false)),
                };
                conn.current_tid = ev.tid;
                conn.last_ns = ev.ts_ns;
                if is_read {
                    conn.on_read(ev.ts_ns, ev.data, ev.len);
                    conn.drain(&mut records);
                } else {
                    conn.on_write(ev.ts_ns, ev.data, ev.len, &mut records);
                }
            }
        }
        out.extend(records.into_iter().map(|record| Finished { tgid: ev.tgid, record }));
    }

    /// Forgets every connection of a process that is gone (`reason`); responses in progress
    /// come out as partial records (or complete ones, when their stream said so).
    pub fn forget_process(&mut self, tgid: u32, reason: &'static str, out: &mut Vec<Finished>) {
        let keys: Vec<_> = self.conns.keys().filter(|k| k.0 == tgid).copied().collect();
        for k in keys {
            self.tls.end(k, &mut self.events.tls);
            if let Some(mut c) = self.conns.remove(&k) {
                let mut records = Vec::new();
                c.end(reason, &mut records);
                out.extend(records.into_iter().map(|record| Finished { tgid, record }));
                add(&mut self.closed, &c.counters);
            }
        }
    }

    /// Ends connections that have a request in flight but saw no read or write for `idle_ns`
    /// before `now_ns`: their end was not seen (a lost close record, a peer that vanished), so
    /// their streams come out as partial records instead of staying open forever. A later event
    /// on such a connection starts a fresh parser that waits for the next request head.
    pub fn expire_idle(&mut self, now_ns: u64, idle_ns: u64, out: &mut Vec<Finished>) -> usize {
        let idle: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| c.in_flight() > 0 && c.last_ns > 0 && now_ns.saturating_sub(c.last_ns) > idle_ns)
            .map(|(k, _)| *k)
            .collect();
        for k in &idle {
            self.tls.end(*k, &mut self.events.tls);
            if let Some(mut c) = self.conns.remove(k) {
                let mut records = Vec::new();
                c.end("no event for the idle timeout: the stream's end was not seen", &mut records);
                out.extend(records.into_iter().map(|record| Finished { tgid: k.0, record }));
                add(&mut self.closed, &c.counters);
            }
        }
        self.events.idle_expired += idle.len() as u64;
        idle.len()
    }

    /// Ends every connection (the run is over): streams still in flight come out as partial.
    pub fn finish_all(&mut self, reason: &'static str, out: &mut Vec<Finished>) {
        let tgids: std::collections::BTreeSet<u32> = self.conns.keys().map(|k| k.0).collect();
        for tgid in tgids {
            self.forget_process(tgid, reason, out);
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    pub fn in_flight(&self) -> usize {
        self.conns.values().map(Connection::in_flight).sum()
    }

    pub fn in_flight_of(&self, tgid: u32) -> usize {
        self.conns.iter().filter(|(k, _)| k.0 == tgid).map(|(_, c)| c.in_flight()).sum()
    }

    /// The phase a process is in, as its streams tell: prefill while any request waits for its
    /// first token, decode while others stream, idle otherwise.
    pub fn phase(&self, tgid: u32) -> u32 {
        let mut in_flight = 0;
        for (k, c) in &self.conns {
            if k.0 != tgid {
                continue;
            }
            if c.awaiting_first_token() > 0 {
                return agent_common::phase::PREFILL;
            }
            in_flight += c.in_flight();
        }
        if in_flight > 0 {
            agent_common::phase::DECODE
        } else {
            agent_common::phase::IDLE
        }
    }

    pub fn parse_counters(&self) -> ParseCounters {
        let mut total = self.closed;
        for c in self.conns.values() {
            add(&mut total, &c.counters);
        }
        total
    }
}

fn add(total: &mut ParseCounters, c: &ParseCounters) {
    total.bad_heads += c.bad_heads;
    total.bad_chunks += c.bad_chunks;
    total.framing_lost += c.framing_lost;
    total.unmatched_responses += c.unmatched_responses;
    total.aborted += c.aborted;
    total.truncated_events += c.truncated_events;
    total.content_writes_dropped += c.content_writes_dropped;
    total.upgraded += c.upgraded;
    total.partial += c.partial;
    total.completed_at_close += c.completed_at_close;
    total.pipeline_overflow += c.pipeline_overflow;
    total.h2.add(&c.h2);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, ts_ns: u64, data: &[u8]) -> Event<'_> {
        Event { kind, ts_ns, tgid: 7, tid: 7, conn: 1, len: data.len() as u64, no_payload: false, tls: false, data }
    }

    #[test]
    fn a_stream_whose_end_is_never_seen_ends_partial_after_the_idle_timeout() {
        let mut t = Tracker::new();
        let mut out = Vec::new();
        t.handle_event(&ev(EventKind::Accept, 1_000, b""), &mut out);
        t.handle_event(&ev(EventKind::Read, 2_000, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n"), &mut out);
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        t.handle_event(&ev(EventKind::Write, 3_000, head), &mut out);
        let token = b"2f\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\r\n";
        t.handle_event(&ev(EventKind::Write, 4_000, token), &mut out);
        // An idle keep-alive connection without a request in flight is left alone; this one is
        // not idle long enough yet.
        assert_eq!(t.expire_idle(5_000, 10_000, &mut out), 0);
        assert!(out.is_empty() && t.in_flight() == 1);
        assert_eq!(t.expire_idle(20_000, 10_000, &mut out), 1);
        assert_eq!(out.len(), 1, "the stream is reported, not dropped");
        let r = &out[0].record;
        assert!(r.partial.is_some_and(|p| p.contains("idle timeout")), "{r:?}");
        assert_eq!((r.first_token_ns, r.content_write_ns.len()), (Some(4_000), 1), "with what was measured");
        assert_eq!((t.connections(), t.events.idle_expired), (0, 1));
        // A later event on it resynchronises instead of being lost or misparsed.
        t.handle_event(&ev(EventKind::Write, 30_000, b"0\r\n\r\n"), &mut out);
        assert_eq!(out.len(), 1);
    }
}
