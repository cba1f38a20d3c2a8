//! Test bed for inferscope: SSE servers that log their own ground truth, and a load
//! client.
//!
//! * [`proto`] — the response schedule shared by the Rust, Python and Node servers.
//! * [`TruthRecord`] / [`read_truth`] — the JSONL ground-truth schema the servers write.
//! * [`run_load`] — the `load-client` logic, callable from integration tests.
//!
//! The protocol itself is documented in `tests/servers/README.md`.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod dashboards;
pub mod gpu;
mod load;
pub mod proto;

pub use load::{run_load, LoadSummary, RequestResult};

/// CLOCK_MONOTONIC in nanoseconds — the clock `bpf_ktime_get_ns()` reads, so truth
/// timestamps compare directly with the agent's.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One write call made on the client socket while answering a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthWrite {
    /// CLOCK_MONOTONIC ns taken immediately before the write call.
    pub ts_ns: u64,
    /// Bytes handed to that call, HTTP headers and chunk framing included.
    pub bytes: u64,
    /// Content SSE events whose terminating blank line is in this write.
    pub content_events: u32,
}

/// One completed request, as logged (one JSON object per line) by every test server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthRecord {
    /// `"rust"`, `"python"` or `"node"`.
    pub server: String,
    /// Last path segment of `/v1/chat/completions/<id>`.
    pub id: String,
    /// Request path without the query string.
    pub path: String,
    pub method: String,
    /// CLOCK_MONOTONIC ns right after the whole request (headers and body) was read.
    pub request_ns: u64,
    pub writes: Vec<TruthWrite>,
    /// `ts_ns` of the first write.
    pub first_byte_ns: u64,
    /// `ts_ns` of the first write with `content_events > 0`; `None` when there is none.
    pub first_token_ns: Option<u64>,
    /// `ts_ns` of the last write.
    pub end_ns: u64,
    /// Number of writes with `content_events > 0`.
    pub content_writes: u32,
    /// Total content events (sum of `content_events`).
    pub chunks: u32,
    /// Completion tokens announced in the usage object; `None` with `usage=0`.
    pub tokens: Option<u32>,
    pub status: u16,
}

impl TruthRecord {
    /// Builds the derived fields (first/last timestamps, counts) from the writes.
    #[allow(clippy::too_many_arguments)]
    pub fn from_writes(
        server: &str,
        id: &str,
        path: &str,
        method: &str,
        request_ns: u64,
        writes: Vec<TruthWrite>,
        tokens: Option<u32>,
        status: u16,
    ) -> Self {
        let content: Vec<&TruthWrite> = writes.iter().filter(|w| w.content_events > 0).collect();
        TruthRecord {
            server: server.to_string(),
            id: id.to_string(),
            path: path.to_string(),
            method: method.to_string(),
            request_ns,
            first_byte_ns: writes.first().map_or(0, |w| w.ts_ns),
            first_token_ns: content.first().map(|w| w.ts_ns),
            end_ns: writes.last().map_or(0, |w| w.ts_ns),
            content_writes: content.len() as u32,
            chunks: content.iter().map(|w| w.content_events).sum(),
            tokens,
            status,
            writes,
        }
    }
}

/// Reads a truth JSONL file. A partially written last line (the server is still
/// running) is skipped rather than treated as an error.
pub fn read_truth(path: impl AsRef<Path>) -> anyhow::Result<Vec<TruthRecord>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') || line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line)?);
    }
    Ok(out)
}
