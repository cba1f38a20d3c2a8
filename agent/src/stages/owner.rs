//! Which request a piece of work (a probed call, a CPU sample) was done for, when several are in
//! flight. Servers that compute on a worker thread (llama-cpp-python's thread pool, engine
//! loops) never read or write the socket on it, so the thread alone cannot tell. The order of
//! work and writes can: a serial engine finishes a token for one request and that request's
//! handler writes it, while the others in flight wait. So work on another thread belongs to the
//! request whose next content write comes first after it — unless a second request writes
//! within [`BATCH_WINDOW_NS`] of that one: then one step made tokens for both (a batch, as
//! llama-server's slots and vLLM's continuous batching do) and the work is shared, never given
//! to one.
//!
//! Rules, in order: the request in flight on the work's own thread (it read the request or
//! writes its response); else the only request in flight; else the next-write rule; else shared.

use crate::http::RequestRecord;

/// Writes of two requests this close after the same work come from one batched step.
pub const BATCH_WINDOW_NS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Request(usize),
    /// Several requests in flight and no way to tell which one (a batch).
    Shared,
    /// No request in flight.
    Outside,
}

/// The first content write of `r` at or after `t`.
fn next_write(r: &RequestRecord, t: u64) -> Option<u64> {
    let w = &r.content_write_ns;
    let i = w.partition_point(|&x| x < t);
    w.get(i).copied()
}

/// The owner of work that ran on thread `tid` and ended at `end`, among `in_flight` (indices
/// into `requests` of the requests whose window overlaps the work).
pub fn owner(requests: &[RequestRecord], in_flight: &[usize], end: u64, tid: u32) -> Owner {
    if in_flight.is_empty() {
        return Owner::Outside;
    }
    let mut same = in_flight.iter().filter(|&&r| requests[r].read_tid == tid || requests[r].write_tid == tid);
    if let (Some(&r), None) = (same.next(), same.next()) {
        return Owner::Request(r);
    }
    if in_flight.len() == 1 {
        return Owner::Request(in_flight[0]);
    }
    let mut next: Vec<(u64, usize)> =
        in_flight.iter().filter_map(|&r| next_write(&requests[r], end).map(|w| (w, r))).collect();
    next.sort_unstable();
    match next.as_slice() {
        [(_, r)] => Owner::Request(*r),
        [(w1, r), (w2, _), ..] if w2 - w1 > BATCH_WINDOW_NS => Owner::Request(*r),
        _ => Owner::Shared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(request: u64, writes: &[u64], end: u64, tid: u32) -> RequestRecord {
        RequestRecord::test_stream(request, writes, end, tid)
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_serial_engine_gives_each_step_to_the_request_it_wrote_for() {
        // Request 0 streams every 7 ms; request 1 queued behind it writes only after it ends.
        let w0: Vec<u64> = (1..=5).map(|i| 100 * MS + i * 7 * MS).collect();
        let w1: Vec<u64> = (1..=3).map(|i| 140 * MS + i * 7 * MS).collect();
        let rs = vec![req(100 * MS, &w0, 136 * MS, 11), req(110 * MS, &w1, 162 * MS, 12)];
        let both = [0, 1];
        // A worker-thread step before request 0's third token.
        assert_eq!(owner(&rs, &both, 120 * MS, 99), Owner::Request(0));
        // After request 0's last write, work for request 1's tokens.
        assert_eq!(owner(&rs, &both, 140 * MS, 99), Owner::Request(1));
        // The work's own thread wins.
        assert_eq!(owner(&rs, &both, 120 * MS, 12), Owner::Request(1));
        assert_eq!(owner(&rs, &[1], 120 * MS, 99), Owner::Request(1));
        assert_eq!(owner(&rs, &[], 2, 99), Owner::Outside);
    }

    #[test]
    fn a_batched_step_is_shared() {
        // Both requests write 0.2 ms apart after each step: one step made both tokens.
        let w0: Vec<u64> = (1..=5).map(|i| 100 * MS + i * 7 * MS).collect();
        let w1: Vec<u64> = w0.iter().map(|w| w + MS / 5).collect();
        let rs = vec![req(100 * MS, &w0, 136 * MS, 11), req(100 * MS, &w1, 136 * MS, 12)];
        assert_eq!(owner(&rs, &[0, 1], 120 * MS, 99), Owner::Shared);
        // Nobody writes again: shared too (cannot tell).
        assert_eq!(owner(&rs, &[0, 1], 136 * MS, 99), Owner::Shared);
    }
}
