//! Decoding ring-buffer records: a pure function from bytes to a typed event, length-checked
//! before any unaligned read, so a short or corrupt record is an error, never a panic.

use agent_common::{event_flag, EventHeader, EventKind, HEADER_LEN, MAX_CAPTURE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub kind: EventKind,
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The connection (see `EventHeader::conn`).
    pub conn: u64,
    /// Bytes the call moved (may exceed `data.len()`).
    pub len: u64,
    /// The buffer could not be located (`event_flag::NO_PAYLOAD`): `len` is exact, `data` empty.
    pub no_payload: bool,
    /// Plaintext from the TLS probes (`event_flag::TLS_PLAINTEXT`), not socket bytes.
    pub tls: bool,
    /// Captured prefix of those bytes.
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    Kind(u16),
    #[error("record claims {claimed} payload bytes but carries {present}")]
    Payload { claimed: usize, present: usize },
}

pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked above; read_unaligned has no alignment requirement.
    let h: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = EventKind::from_u16(h.kind).ok_or(DecodeError::Kind(h.kind))?;
    let captured = h.captured as usize;
    let present = bytes.len() - HEADER_LEN;
    if captured > present || captured > MAX_CAPTURE || captured as u64 > h.len.max(captured as u64) {
        return Err(DecodeError::Payload { claimed: captured, present });
    }
    Ok(Event {
        kind,
        ts_ns: h.ts_ns,
        tgid: h.tgid,
        tid: h.tid,
        conn: h.conn,
        len: h.len.max(captured as u64),
        no_payload: h.flags & event_flag::NO_PAYLOAD != 0,
        tls: h.flags & event_flag::TLS_PLAINTEXT != 0,
        data: &bytes[HEADER_LEN..HEADER_LEN + captured],
    })
}

/// Encodes an event the way the eBPF side does (tests, benchmarks, fuzzing).
pub fn encode(kind: EventKind, ts_ns: u64, tgid: u32, conn: u64, len: u64, data: &[u8]) -> Vec<u8> {
    let h = EventHeader { ts_ns, len, conn, tgid, tid: tgid, kind: kind as u16, captured: data.len() as u16, flags: 0 };
    let mut out = vec![0u8; HEADER_LEN + data.len()];
    // SAFETY: `out` has room for the header.
    unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast(), h) };
    out[HEADER_LEN..].copy_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_is_an_error() {
        let bytes = encode(EventKind::Write, 42, 7, 3, 100, b"HTTP/1.1 200 OK\r\n");
        let e = decode(&bytes).unwrap();
        assert_eq!(
            (e.kind, e.ts_ns, e.tgid, e.conn, e.len, e.data),
            (EventKind::Write, 42, 7, 3, 100, &b"HTTP/1.1 200 OK\r\n"[..])
        );
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[32] = 99; // kind
        assert_eq!(decode(&bad), Err(DecodeError::Kind(99)));
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Decodes a stage record (`STAGE_EVENTS`): a whole `StageEvent` or an error, never a panic.
pub fn decode_stage(bytes: &[u8]) -> Result<agent_common::StageEvent, DecodeError> {
    decode_fixed(bytes)
}

/// Decodes a Python sample record (`PY_SAMPLES`).
pub fn decode_py_sample(bytes: &[u8]) -> Result<agent_common::python::PySample, DecodeError> {
    decode_fixed(bytes)
}

/// Decodes a process lifecycle record (`PROC_EVENTS`).
pub fn decode_proc(bytes: &[u8]) -> Result<agent_common::ProcEvent, DecodeError> {
    decode_fixed(bytes)
}

/// A fixed-size `#[repr(C)]` record: at least `size_of::<T>()` bytes, read unaligned.
fn decode_fixed<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < std::mem::size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; `T: Pod` is plain data valid for any bytes; read_unaligned has no
    // alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

#[cfg(test)]
mod record_tests {
    use super::*;
    use agent_common::{ProcEvent, StageEvent};

    fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
        // SAFETY: plain data, read as bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
    }

    #[test]
    fn stage_and_proc_records_round_trip_and_every_cut_is_an_error() {
        let st = StageEvent { start_ns: 5, end_ns: 9, tgid: 7, tid: 8, stage: 3, depth: 1 };
        let b = bytes_of(&st);
        assert_eq!(decode_stage(&b), Ok(st));
        for cut in 0..b.len() {
            assert_eq!(decode_stage(&b[..cut]), Err(DecodeError::Short(cut)));
        }
        let ps = agent_common::python::PySample { ts_ns: 5, tgid: 6, tid: 7, stack: -1, _pad: 0 };
        let b = bytes_of(&ps);
        assert_eq!(decode_py_sample(&b), Ok(ps));
        for cut in 0..b.len() {
            assert_eq!(decode_py_sample(&b[..cut]), Err(DecodeError::Short(cut)));
        }
        let pe = ProcEvent { ts_ns: 1, tgid: 2, kind: agent_common::proc_event::EXIT };
        let b = bytes_of(&pe);
        assert_eq!(decode_proc(&b), Ok(pe));
        for cut in 0..b.len() {
            assert!(decode_proc(&b[..cut]).is_err());
        }
    }

    #[test]
    fn data_records_split_at_every_offset() {
        let bytes = encode(EventKind::Read, 42, 7, 1 << 40, 300, b"GET / HTTP/1.1\r\n\r\n");
        for cut in 0..bytes.len() {
            let (a, _) = bytes.split_at(cut);
            assert!(decode(a).is_err(), "a record cut at {cut} is an error");
        }
        let e = decode(&bytes).unwrap();
        assert_eq!((e.conn, e.len, e.no_payload), (1 << 40, 300, false));
    }
}
