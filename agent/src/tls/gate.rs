//! Which bytes of a connection reach the HTTP parser. Plaintext records (from the TLS probes)
//! always do. Socket bytes do until the connection is known encrypted: its first read starts
//! with a TLS record (a ClientHello, or application data on a connection joined mid-way), or
//! plaintext arrived for it. From then on its socket bytes (the handshake, records the kernel
//! sent before it learned the socket) are dropped here and counted. A connection that ends
//! encrypted without any plaintext was not decoded (a TLS stack we do not probe): counted.

use std::collections::HashMap;

use agent_common::{tls::looks_like_tls_record, EventKind};

use crate::event::Event;

/// Connections the gate remembers at once (only encrypted ones are remembered).
pub const MAX_TLS_CONNECTIONS: usize = agent_common::limits::CONNS as usize;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TlsCounters {
    /// Connections whose plaintext was followed.
    pub connections_decoded: u64,
    /// Connections that ended encrypted without any plaintext: a TLS stack that is not probed
    /// (Go crypto/tls, statically linked stripped rustls/BoringSSL), or a handshake only.
    pub connections_undecoded: u64,
    /// Socket records of encrypted connections dropped in userspace (handshakes; the kernel
    /// drops the rest once it knows the socket).
    pub ciphertext_records_dropped: u64,
    /// Encrypted connections not remembered because the gate was full (their bytes are parsed
    /// as they come, and fail as non-HTTP).
    pub gate_full: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Encrypted bytes seen, no plaintext yet.
    Ciphertext,
    Decoded,
}

#[derive(Debug, Default)]
pub struct TlsGate {
    conns: HashMap<(u32, u64), State>,
}

impl TlsGate {
    /// Should this read/write reach the connection's parser?
    pub fn admit(&mut self, key: (u32, u64), ev: &Event<'_>, counters: &mut TlsCounters) -> bool {
        let state = self.conns.get(&key).copied();
        if ev.tls {
            if state != Some(State::Decoded) && self.remember(key, State::Decoded, counters) {
                counters.connections_decoded += 1;
            }
            return true;
        }
        if state.is_some() {
            counters.ciphertext_records_dropped += 1;
            return false;
        }
        if ev.kind == EventKind::Read
            && looks_like_tls_record(ev.data)
            && self.remember(key, State::Ciphertext, counters)
        {
            counters.ciphertext_records_dropped += 1;
            return false;
        }
        true
    }

    fn remember(&mut self, key: (u32, u64), state: State, counters: &mut TlsCounters) -> bool {
        if !self.conns.contains_key(&key) && self.conns.len() >= MAX_TLS_CONNECTIONS {
            counters.gate_full += 1;
            return false;
        }
        self.conns.insert(key, state);
        true
    }

    /// The connection ended (closed, replaced, or its process is gone).
    pub fn end(&mut self, key: (u32, u64), counters: &mut TlsCounters) {
        if self.conns.remove(&key) == Some(State::Ciphertext) {
            counters.connections_undecoded += 1;
        }
    }

    /// Connections remembered now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, tls: bool, data: &[u8]) -> Event<'_> {
        Event { kind, ts_ns: 1, tgid: 7, tid: 7, conn: 1, len: data.len() as u64, no_payload: false, tls, data }
    }

    const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];

    #[test]
    fn cleartext_passes_untouched_and_is_never_remembered() {
        let (mut g, mut c) = (TlsGate::default(), TlsCounters::default());
        assert!(g.admit((7, 1), &ev(EventKind::Read, false, b"POST / HTTP/1.1\r\n"), &mut c));
        assert!(g.admit((7, 1), &ev(EventKind::Write, false, b"HTTP/1.1 200 OK\r\n"), &mut c));
        g.end((7, 1), &mut c);
        assert!(g.is_empty());
        assert_eq!(c, TlsCounters::default());
    }

    #[test]
    fn a_decoded_connection_drops_its_ciphertext_and_parses_its_plaintext() {
        let (mut g, mut c) = (TlsGate::default(), TlsCounters::default());
        assert!(!g.admit((7, 1), &ev(EventKind::Read, false, CLIENT_HELLO), &mut c));
        assert!(!g.admit((7, 1), &ev(EventKind::Write, false, &[0x16, 0x03, 0x03, 0, 0x7a]), &mut c));
        assert!(g.admit((7, 1), &ev(EventKind::Read, true, b"POST / HTTP/1.1\r\n"), &mut c));
        assert!(g.admit((7, 1), &ev(EventKind::Write, true, b"HTTP/1.1 200 OK\r\n"), &mut c));
        // A late ciphertext record (sent before the kernel learned the socket) is dropped.
        assert!(!g.admit((7, 1), &ev(EventKind::Write, false, &[0x17, 0x03, 0x03, 0, 0x20]), &mut c));
        g.end((7, 1), &mut c);
        assert_eq!(
            c,
            TlsCounters {
                connections_decoded: 1,
                connections_undecoded: 0,
                ciphertext_records_dropped: 3,
                gate_full: 0
            }
        );
        assert!(g.is_empty());
    }

    #[test]
    fn an_encrypted_connection_without_plaintext_is_counted_undecoded() {
        let (mut g, mut c) = (TlsGate::default(), TlsCounters::default());
        assert!(!g.admit((7, 2), &ev(EventKind::Read, false, CLIENT_HELLO), &mut c));
        assert!(!g.admit((7, 2), &ev(EventKind::Read, false, b"anything at all"), &mut c));
        g.end((7, 2), &mut c);
        g.end((7, 2), &mut c); // a second end (close, then process exit) counts once
        assert_eq!((c.connections_undecoded, c.connections_decoded, c.ciphertext_records_dropped), (1, 0, 2));
    }

    #[test]
    fn only_tls_record_headers_mark_a_connection_encrypted() {
        assert!(looks_like_tls_record(CLIENT_HELLO));
        assert!(looks_like_tls_record(&[0x17, 0x03, 0x03]));
        for not in [&b"GET / HTTP/1.1"[..], b"PRI * HTTP/2.0", &[0x16, 0x03], &[0x16, 0x02, 0x00], &[0x18, 0x03, 0x03]]
        {
            assert!(!looks_like_tls_record(not), "{not:?}");
        }
    }
}
