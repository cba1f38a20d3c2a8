//! What reconstruction produces: one [`RequestRecord`] per exchange (with its timings derived
//! once, here) and the [`ParseCounters`] that say what could not be followed and why.

/// One finished request/response exchange. Times are CLOCK_MONOTONIC ns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The read that completed the request (head and body).
    pub request_ns: u64,
    /// The write that carried the response's first byte.
    pub first_byte_ns: u64,
    /// The first write that completed a content-bearing event.
    pub first_token_ns: Option<u64>,
    /// The write that carried the response's last byte.
    pub end_ns: u64,
    /// Every write that completed at least one content-bearing event, in order.
    pub content_write_ns: Vec<u64>,
    /// Content-bearing events (one event may carry several tokens).
    pub chunks: u64,
    /// Completion tokens, when the stream itself states the count.
    pub tokens: Option<u64>,
    /// The body was an event stream (SSE or NDJSON).
    pub streaming: bool,
    /// Thread that completed reading the request, and thread that wrote the response head
    /// (stage calls on these threads belong to this request).
    pub read_tid: u32,
    pub write_tid: u32,
    /// The model asked for: the request body's top-level `"model"` (sanitized, bounded), else
    /// the response's first event's or JSON body's `"model"`; `None` when neither was seen.
    pub model: Option<String>,
    /// Set when the exchange did not end as its framing says and its stream never said it was
    /// complete: what was measured is kept, with the reason (`e2e` is then not a figure).
    pub partial: Option<&'static str>,
    /// gRPC calls: the `grpc-status` code of the trailers (0 = OK); never the message.
    pub grpc_status: Option<u32>,
}

#[cfg(test)]
impl RequestRecord {
    /// For unit tests: a streamed `POST /x` read and answered on thread `tid`, first byte 1 ns
    /// after the request, with these content writes (the first one is the first token).
    pub fn test_stream(request_ns: u64, writes: &[u64], end_ns: u64, tid: u32) -> RequestRecord {
        RequestRecord {
            method: "POST".into(),
            path: "/x".into(),
            status: 200,
            request_ns,
            first_byte_ns: request_ns + 1,
            first_token_ns: writes.first().copied(),
            end_ns,
            content_write_ns: writes.to_vec(),
            chunks: writes.len() as u64,
            tokens: None,
            streaming: true,
            read_tid: tid,
            write_tid: tid,
            model: None,
            partial: None,
            grpc_status: None,
        }
    }
}

/// Durations derived from the timestamps, in seconds: defined here once, for the report and the
/// metrics alike.
impl RequestRecord {
    fn secs(a: u64, b: u64) -> f64 {
        b.saturating_sub(a) as f64 / 1e9
    }

    /// Request read → first response byte.
    pub fn ttfb_s(&self) -> f64 {
        Self::secs(self.request_ns, self.first_byte_ns)
    }

    /// Request read → first content-bearing write.
    pub fn ttft_s(&self) -> Option<f64> {
        self.first_token_ns.map(|t| Self::secs(self.request_ns, t))
    }

    /// Request read → last response byte (for a partial record: the last byte seen).
    pub fn e2e_s(&self) -> f64 {
        Self::secs(self.request_ns, self.end_ns)
    }

    /// Gaps between consecutive content-bearing writes.
    pub fn itl_s(&self) -> impl Iterator<Item = f64> + '_ {
        self.content_write_ns.windows(2).map(|w| Self::secs(w[0], w[1]))
    }
}

/// What went wrong or was skipped; summed over connections by the tracker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ParseCounters {
    /// Heads that were not HTTP/1.x (garbage, TLS, HTTP/2 without its preface).
    pub bad_heads: u64,
    /// Chunked bodies whose framing was malformed.
    pub bad_chunks: u64,
    /// Bodies whose framing was lost because bytes were not captured.
    pub framing_lost: u64,
    /// Responses with no request we saw (joined mid-exchange, or a lost read event).
    pub unmatched_responses: u64,
    /// Exchanges cut short by the connection closing.
    pub aborted: u64,
    /// Events longer than the classifier keeps.
    pub truncated_events: u64,
    /// Content-write timestamps beyond `MAX_CONTENT_WRITES` on one request.
    pub content_writes_dropped: u64,
    /// Connections switched to something else (101 Switching Protocols) and no longer followed.
    pub upgraded: u64,
    /// Responses cut before their stream said it was complete, reported as partial records.
    pub partial: u64,
    /// Streams whose terminal event was written but whose framing never finished (the client
    /// closed after `[DONE]`, as the `openai` SDK does): complete for their user, reported so.
    pub completed_at_close: u64,
    /// Pipelined requests beyond the 64 a connection keeps unanswered: counted, not measured;
    /// the requests kept keep their figures.
    pub pipeline_overflow: u64,
    /// HTTP/2 connections: streams, and what could not be decoded or followed.
    pub h2: super::h2::H2Counters,
}
