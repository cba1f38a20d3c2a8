//! Routes decoded events to per-connection parsers, bounded, and keeps the counts the report and
//! metrics need: events seen by kind, decode errors, connections the limit refused.

use std::collections::HashMap;

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
    conns: HashMap<(u32, u64), Connection>,
    pub events: EventCounters,
    /// Parse counters of connections already closed (live ones are added on demand).
    closed: ParseCounters,
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
                if let Some(mut c) = self.conns.remove(&key) {
                    c.end("connection closed before the stream ended", &mut records);
                    add(&mut self.closed, &c.counters);
                }
            }
            EventKind::Read | EventKind::Write => {
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
                if !self.conns.contains_key(&key) {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        self.events.connections_dropped += 1;
                        return;
                    }
                    // Its accept record was lost, or it predates us: resynchronise on the next head.
                    self.conns.insert(key, Connection::new(false));
                }
                let Some(conn) = self.conns.get_mut(&key) else { return };
                conn.current_tid = ev.tid;
                if is_read {
                    conn.on_read(ev.ts_ns, ev.data, ev.len);
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
            if let Some(mut c) = self.conns.remove(&k) {
                let mut records = Vec::new();
                c.end(reason, &mut records);
                out.extend(records.into_iter().map(|record| Finished { tgid, record }));
                add(&mut self.closed, &c.counters);
            }
        }
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
}
