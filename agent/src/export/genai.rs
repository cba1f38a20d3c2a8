//! One finished request → the measurements the OpenTelemetry GenAI semantic conventions define
//! for a model server (pure: no SDK, no clock). Names, units and advisory bucket boundaries are
//! the conventions' own (`gen_ai.server.*`, and `gen_ai.client.token.usage`, the only token
//! histogram they define, recorded only when the stream itself states its token count).
//!
//! What is recorded, and why:
//! - `gen_ai.server.request.duration`: every complete request of a GenAI operation, with
//!   `error.type` (the HTTP status code) when it failed (status ≥ 400). A partial record (the
//!   stream was cut before it said it was done) has no end-to-end figure, so none is recorded.
//! - `gen_ai.server.time_to_first_token`: successful requests that wrote a first token
//!   (partial ones too: their first token is a fact).
//! - `gen_ai.server.time_per_output_token`: successful complete requests whose stream states
//!   its completion tokens (≥ 2): (last content write − first token) / (tokens − 1). One SSE
//!   event is not one token, so event gaps are never passed off as token gaps.
//! - `gen_ai.client.token.usage{gen_ai.token.type="output"}`: the stated completion tokens.
//!
//! Requests whose route is not a GenAI operation (health checks, `/v1/models`, gRPC methods
//! we cannot name) are not GenAI measurements: counted, not recorded.

use crate::http::RequestRecord;

pub const REQUEST_DURATION: &str = "gen_ai.server.request.duration";
pub const TIME_TO_FIRST_TOKEN: &str = "gen_ai.server.time_to_first_token";
pub const TIME_PER_OUTPUT_TOKEN: &str = "gen_ai.server.time_per_output_token";
pub const TOKEN_USAGE: &str = "gen_ai.client.token.usage";

/// The conventions' advisory explicit bucket boundaries, per metric.
pub const REQUEST_DURATION_BUCKETS: &[f64] =
    &[0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
pub const TIME_TO_FIRST_TOKEN_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
pub const TIME_PER_OUTPUT_TOKEN_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];
pub const TOKEN_USAGE_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];

/// `gen_ai.operation.name` of a route template, or `None` when the route is not a GenAI
/// operation we can name. Matched on whole segments anywhere in the route, so
/// `/v1/chat/completions/{id}` and `/openai/v1/chat/completions` are chat too.
pub fn operation(route: &str) -> Option<&'static str> {
    const CHAT: &[&str] = &["/chat/completions", "/api/chat", "/v1/messages", "/v1/responses", "/v1/chat"];
    const COMPLETION: &[&str] = &[
        "/completions",
        "/completion",
        "/api/generate",
        "/generate",
        "/generate_stream",
        "/infill",
        "/v1/generateContent",
    ];
    const EMBEDDINGS: &[&str] = &["/embeddings", "/embedding", "/api/embed", "/api/embeddings", "/embed"];
    let has = |seg: &str| {
        route.match_indices(seg).any(|(i, _)| matches!(route.as_bytes().get(i + seg.len()), None | Some(b'/')))
    };
    // Chat first: `/chat/completions` also contains `/completions`.
    if CHAT.iter().any(|s| has(s)) {
        Some("chat")
    } else if EMBEDDINGS.iter().any(|s| has(s)) {
        Some("embeddings")
    } else if COMPLETION.iter().any(|s| has(s)) {
        Some("text_completion")
    } else {
        None
    }
}

/// The measurements of one request (seconds, tokens); `None` = not recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurements {
    pub operation: &'static str,
    /// `error.type`: the HTTP status code of a failed request.
    pub error: Option<String>,
    pub duration_s: Option<f64>,
    pub ttft_s: Option<f64>,
    pub tpot_s: Option<f64>,
    pub output_tokens: Option<u64>,
}

/// Why a request gives no GenAI measurement at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Its route is not a GenAI operation.
    NotGenAi,
}

/// The measurements of `rec` (its path a route template or a raw path: only the template is
/// looked at).
pub fn measure(rec: &RequestRecord) -> Result<Measurements, Skipped> {
    let route = crate::http::route::route_template(&rec.path);
    let operation = operation(&route).ok_or(Skipped::NotGenAi)?;
    let failed = rec.status >= 400 || rec.status == 0;
    let complete = rec.partial.is_none();
    let tpot = match (rec.tokens, rec.first_token_ns, rec.content_write_ns.last()) {
        (Some(n), Some(first), Some(&last)) if n >= 2 && last > first && complete && !failed => {
            Some((last - first) as f64 / 1e9 / (n - 1) as f64)
        }
        _ => None,
    };
    Ok(Measurements {
        operation,
        error: failed.then(|| rec.status.to_string()),
        duration_s: complete.then(|| rec.e2e_s()),
        ttft_s: if failed { None } else { rec.ttft_s() },
        tpot_s: tpot,
        output_tokens: if failed || !complete { None } else { rec.tokens },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(path: &str, status: u16) -> RequestRecord {
        RequestRecord {
            method: "POST".into(),
            path: path.into(),
            status,
            request_ns: 1_000_000_000,
            first_byte_ns: 1_001_000_000,
            first_token_ns: Some(1_050_000_000),
            end_ns: 1_200_000_000,
            content_write_ns: vec![1_050_000_000, 1_100_000_000, 1_150_000_000],
            chunks: 3,
            tokens: Some(3),
            streaming: true,
            read_tid: 1,
            write_tid: 1,
            model: Some("m".into()),
            partial: None,
            grpc_status: None,
        }
    }

    #[test]
    fn operations_from_routes() {
        for (route, op) in [
            ("/v1/chat/completions", Some("chat")),
            ("/v1/chat/completions/{id}", Some("chat")),
            ("/openai/v1/chat/completions", Some("chat")),
            ("/v1/messages", Some("chat")),
            ("/api/chat", Some("chat")),
            ("/v1/completions", Some("text_completion")),
            ("/completion", Some("text_completion")),
            ("/generate_stream", Some("text_completion")),
            ("/api/generate", Some("text_completion")),
            ("/v2/models/{model}/generate", Some("text_completion")),
            ("/v1/embeddings", Some("embeddings")),
            ("/api/embed", Some("embeddings")),
            ("/health", None),
            ("/v1/models", None),
            ("/v1/completionsx", None),
            ("/inference.GRPCInferenceService/ModelStreamInfer", None),
        ] {
            assert_eq!(operation(route), op, "{route}");
        }
    }

    #[test]
    fn a_successful_stream_gives_every_figure() {
        let m = measure(&rec("/v1/chat/completions/abc123", 200)).unwrap();
        assert_eq!((m.operation, m.error.as_deref()), ("chat", None));
        assert!((m.duration_s.unwrap() - 0.2).abs() < 1e-9);
        assert!((m.ttft_s.unwrap() - 0.05).abs() < 1e-9);
        // Three tokens, the last written 100 ms after the first: 50 ms per token after the first.
        assert!((m.tpot_s.unwrap() - 0.05).abs() < 1e-9);
        assert_eq!(m.output_tokens, Some(3));
    }

    #[test]
    fn tokens_not_stated_means_no_per_token_figure() {
        let mut r = rec("/v1/completions", 200);
        r.tokens = None;
        let m = measure(&r).unwrap();
        assert_eq!((m.tpot_s, m.output_tokens), (None, None));
        assert!(m.ttft_s.is_some() && m.duration_s.is_some());
    }

    #[test]
    fn failures_carry_their_status_and_no_success_figures() {
        let m = measure(&rec("/v1/chat/completions", 503)).unwrap();
        assert_eq!(m.error.as_deref(), Some("503"));
        assert!(m.duration_s.is_some());
        assert_eq!((m.ttft_s, m.tpot_s, m.output_tokens), (None, None, None));
    }

    #[test]
    fn partial_records_keep_their_first_token_only() {
        let mut r = rec("/v1/chat/completions", 200);
        r.partial = Some("run ended mid-stream");
        let m = measure(&r).unwrap();
        assert_eq!((m.duration_s, m.tpot_s, m.output_tokens), (None, None, None));
        assert!(m.ttft_s.is_some());
    }

    #[test]
    fn other_routes_are_skipped() {
        assert_eq!(measure(&rec("/health", 200)), Err(Skipped::NotGenAi));
    }

    #[test]
    fn buckets_are_increasing() {
        for b in
            [REQUEST_DURATION_BUCKETS, TIME_TO_FIRST_TOKEN_BUCKETS, TIME_PER_OUTPUT_TOKEN_BUCKETS, TOKEN_USAGE_BUCKETS]
        {
            assert!(b.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
