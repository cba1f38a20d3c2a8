//! The streaming protocol shared by the three test servers (Rust, Python, Node).
//!
//! A response is computed up front as a list of [`Step`]s: "sleep this long, then hand
//! these exact bytes to ONE write call". Keeping the byte layout separate from the I/O
//! makes the Rust server trivial, lets integration tests predict what a request will
//! produce without starting a server, and is the reference the Python and Node
//! servers (`tests/servers/`) mirror line by line. If you change anything here,
//! change `sse_server.py` and `sse_server.js` the same way.

use std::time::Duration;

/// Sent before each content write when `comments=1`. Not a token.
pub const COMMENT_TEXT: &str = ": keep-alive";
/// The role-only chunk every OpenAI-style stream opens with. Not a token.
pub const ROLE_JSON: &str =
    r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
/// Extra sleep between the two halves of a frame when `split=1`.
pub const SPLIT_GAP: Duration = Duration::from_millis(1);
/// `prompt_tokens` reported in the usage object (the request body is never parsed).
pub const PROMPT_TOKENS: u32 = 5;
/// Upper bound on `tokens`/`batch`, only to keep a typo from allocating gigabytes.
const MAX_TOKENS: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked`; every write is exactly one HTTP chunk.
    Chunked,
    /// No length at all, `Connection: close`; the body ends when the server closes.
    Close,
    /// Non-streaming `application/json` reply with `Content-Length`.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eol {
    Lf,
    Crlf,
    Cr,
}

impl Eol {
    pub fn as_str(self) -> &'static str {
        match self {
            Eol::Lf => "\n",
            Eol::Crlf => "\r\n",
            Eol::Cr => "\r",
        }
    }
}

/// Everything the query string can ask for. Defaults match the spec in `tests/servers/README.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamParams {
    pub tokens: u32,
    pub interval_ms: f64,
    pub prefill_ms: f64,
    pub framing: Framing,
    pub eol: Eol,
    pub split: bool,
    pub batch: u32,
    pub coalesce: bool,
    pub comments: bool,
    pub usage: bool,
    pub done: bool,
    /// Burn CPU instead of sleeping: in `prefill_work` before the first token, in `decode_work`
    /// between tokens (the CPU-profile phase test).
    pub burn: bool,
}

impl Default for StreamParams {
    fn default() -> Self {
        StreamParams {
            tokens: 16,
            interval_ms: 5.0,
            prefill_ms: 20.0,
            framing: Framing::Chunked,
            eol: Eol::Lf,
            split: false,
            batch: 1,
            coalesce: false,
            comments: false,
            usage: true,
            done: true,
            burn: false,
        }
    }
}

impl StreamParams {
    /// Parses `a=1&b=2` (no leading `?`). Unknown keys are ignored so tests can tag
    /// requests freely; malformed values are an error (the server answers 400).
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut p = StreamParams::default();
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "tokens" => p.tokens = parse_count(key, value, 0)?,
                "interval_ms" => p.interval_ms = parse_ms(key, value)?,
                "prefill_ms" => p.prefill_ms = parse_ms(key, value)?,
                "framing" => {
                    p.framing = match value {
                        "chunked" => Framing::Chunked,
                        "close" => Framing::Close,
                        "json" => Framing::Json,
                        _ => return Err(format!("bad framing {value:?}")),
                    }
                }
                "eol" => {
                    p.eol = match value {
                        "lf" => Eol::Lf,
                        "crlf" => Eol::Crlf,
                        "cr" => Eol::Cr,
                        _ => return Err(format!("bad eol {value:?}")),
                    }
                }
                "split" => p.split = parse_bool(key, value)?,
                "batch" => p.batch = parse_count(key, value, 1)?,
                "coalesce" => p.coalesce = parse_bool(key, value)?,
                "comments" => p.comments = parse_bool(key, value)?,
                "usage" => p.usage = parse_bool(key, value)?,
                "done" => p.done = parse_bool(key, value)?,
                "burn" => p.burn = parse_bool(key, value)?,
                _ => {}
            }
        }
        Ok(p)
    }

    /// `tokens` field of the truth record: the server only "reports" a count when it
    /// sends a usage object.
    pub fn reported_tokens(&self) -> Option<u32> {
        self.usage.then_some(self.tokens)
    }
}

fn parse_count(key: &str, value: &str, min: u32) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (min..=MAX_TOKENS).contains(&n) => Ok(n),
        _ => Err(format!("bad {key} {value:?}")),
    }
}

fn parse_ms(key: &str, value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("bad {key} {value:?}")),
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(format!("bad {key} {value:?}")),
    }
}

/// One write call of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Sleep before this write.
    pub delay: Duration,
    /// The exact bytes of the write, HTTP chunk framing included.
    pub bytes: Vec<u8>,
    /// Content SSE events whose terminating blank line is inside `bytes`.
    pub content_events: u32,
}

/// `data: <json>` + blank line, with the requested line ending.
pub fn sse_frame(data: &str, eol: Eol) -> String {
    let e = eol.as_str();
    format!("data: {data}{e}{e}")
}

pub fn content_json(i: u32) -> String {
    format!(
        r#"{{"id":"x","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"content":"tok{i} "}}}}]}}"#
    )
}

pub fn usage_json(tokens: u32) -> String {
    format!(
        r#"{{"prompt_tokens":{PROMPT_TOKENS},"completion_tokens":{tokens},"total_tokens":{}}}"#,
        tokens + PROMPT_TOKENS
    )
}

pub fn finish_json(p: &StreamParams) -> String {
    let usage = if p.usage { format!(r#","usage":{}"#, usage_json(p.tokens)) } else { String::new() };
    format!(
        r#"{{"id":"x","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]{usage}}}"#
    )
}

/// Body of the non-streaming (`framing=json`) reply.
pub fn completion_json(p: &StreamParams) -> String {
    let content: String = (0..p.tokens).map(|i| format!("tok{i} ")).collect();
    let usage = if p.usage { format!(r#","usage":{}"#, usage_json(p.tokens)) } else { String::new() };
    format!(
        r#"{{"id":"x","object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}]{usage}}}"#
    )
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v / 1000.0)
}

fn connection_header(close: bool) -> &'static str {
    if close {
        "close"
    } else {
        "keep-alive"
    }
}

/// Wraps one write's payload in an HTTP chunk when the framing asks for it, so each
/// write syscall carries exactly one complete chunk.
fn wrap(framing: Framing, payload: &[u8]) -> Vec<u8> {
    match framing {
        Framing::Chunked => {
            let mut v = format!("{:x}\r\n", payload.len()).into_bytes();
            v.extend_from_slice(payload);
            v.extend_from_slice(b"\r\n");
            v
        }
        _ => payload.to_vec(),
    }
}

/// The full write schedule of one response. `client_close` is whether the client sent
/// `Connection: close`, which only changes the `Connection` header we echo.
pub fn plan(p: &StreamParams, client_close: bool) -> Vec<Step> {
    if p.framing == Framing::Json {
        let body = completion_json(p);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            body.len(),
            connection_header(client_close)
        );
        // Sleep as long as the stream would have taken, then answer in one write.
        return vec![Step {
            delay: ms(p.prefill_ms + f64::from(p.tokens) * p.interval_ms),
            bytes: (head + &body).into_bytes(),
            content_events: 0,
        }];
    }

    let head = match p.framing {
        Framing::Chunked => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: {}\r\n\r\n",
            connection_header(client_close)
        ),
        _ => "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n".to_string(),
    };
    let f = p.framing;
    let mut steps = Vec::new();
    let mut push =
        |delay: Duration, bytes: Vec<u8>, content_events: u32| steps.push(Step { delay, bytes, content_events });

    let role = sse_frame(ROLE_JSON, p.eol);
    if p.coalesce {
        let mut b = head.into_bytes();
        b.extend(wrap(f, role.as_bytes()));
        push(Duration::ZERO, b, 0);
    } else {
        push(Duration::ZERO, head.into_bytes(), 0);
        push(Duration::ZERO, wrap(f, role.as_bytes()), 0);
    }

    let batch = p.batch.max(1);
    let mut first = 0;
    while first < p.tokens {
        let last = (first + batch).min(p.tokens);
        // Payload of this content write plus where each frame's blank line ends in it.
        let mut payload = Vec::new();
        let mut frame_ends = Vec::new();
        for i in first..last {
            payload.extend_from_slice(sse_frame(&content_json(i), p.eol).as_bytes());
            frame_ends.push(payload.len());
        }
        let events_in =
            |from: usize, to: usize| -> u32 { frame_ends.iter().filter(|&&e| e > from && e <= to).count() as u32 };

        let mut wait = ms(if first == 0 { p.prefill_ms } else { p.interval_ms });
        if p.comments {
            // The comment lands halfway through the wait rather than right before the
            // content, so an agent that mistakes it for a token is off by a visible
            // amount (wait/2) instead of microseconds.
            let half = wait / 2;
            push(half, wrap(f, sse_frame_raw(COMMENT_TEXT, p.eol).as_bytes()), 0);
            wait -= half;
        }
        if p.split {
            let cut = payload.len() / 2;
            push(wait, wrap(f, &payload[..cut]), events_in(0, cut));
            push(SPLIT_GAP, wrap(f, &payload[cut..]), events_in(cut, payload.len()));
        } else {
            push(wait, wrap(f, &payload), events_in(0, payload.len()));
        }
        first = last;
    }

    // With no tokens at all the finish frame stands in for the first token's timing.
    let finish_delay = if p.tokens == 0 { ms(p.prefill_ms) } else { Duration::ZERO };
    push(finish_delay, wrap(f, sse_frame(&finish_json(p), p.eol).as_bytes()), 0);
    if p.done {
        push(Duration::ZERO, wrap(f, sse_frame("[DONE]", p.eol).as_bytes()), 0);
    }
    if f == Framing::Chunked {
        push(Duration::ZERO, b"0\r\n\r\n".to_vec(), 0);
    }
    steps
}

/// A frame that is not `data:` (an SSE comment line) + blank line.
fn sse_frame_raw(line: &str, eol: Eol) -> String {
    let e = eol.as_str();
    format!("{line}{e}{e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str) -> StreamParams {
        StreamParams::from_query(q).expect("valid query")
    }

    #[test]
    fn default_stream_shape() {
        let steps = plan(&p(""), false);
        // headers, role, 16 tokens, finish, [DONE], terminator
        assert_eq!(steps.len(), 2 + 16 + 3);
        assert!(steps[0].bytes.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!(steps[2].delay, Duration::from_millis(20));
        assert_eq!(steps[3].delay, Duration::from_millis(5));
        assert_eq!(steps.iter().map(|s| s.content_events).sum::<u32>(), 16);
        assert_eq!(steps.last().map(|s| s.bytes.as_slice()), Some(&b"0\r\n\r\n"[..]));
        let role = sse_frame(ROLE_JSON, Eol::Lf);
        assert_eq!(steps[1].bytes, format!("{:x}\r\n{role}\r\n", role.len()).into_bytes());
    }

    #[test]
    fn split_counts_event_on_second_half() {
        let steps = plan(&p("tokens=3&split=1&framing=close"), false);
        let content: Vec<u32> = steps.iter().map(|s| s.content_events).collect();
        assert_eq!(content, vec![0, 0, 0, 1, 0, 1, 0, 1, 0, 0]);
    }

    #[test]
    fn batch_groups_frames() {
        let steps = plan(&p("tokens=7&batch=3&framing=close&done=0"), false);
        let content: Vec<u32> = steps.iter().map(|s| s.content_events).collect();
        assert_eq!(content, vec![0, 0, 3, 3, 1, 0]);
    }

    #[test]
    fn coalesce_and_comments() {
        let steps = plan(&p("tokens=2&coalesce=1&comments=1&prefill_ms=10"), false);
        assert_eq!(steps[0].content_events, 0);
        assert!(steps[0].bytes.windows(5).any(|w| w == b"data:"));
        assert!(String::from_utf8_lossy(&steps[1].bytes).contains(": keep-alive\n\n"));
        assert_eq!(steps[1].delay + steps[2].delay, Duration::from_millis(10));
        assert_eq!(steps[2].content_events, 1);
    }

    #[test]
    fn json_is_one_write() {
        let steps = plan(&p("framing=json&tokens=4&interval_ms=1&prefill_ms=2"), true);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].delay, Duration::from_millis(6));
        let s = String::from_utf8_lossy(&steps[0].bytes).into_owned();
        assert!(s.contains("Connection: close") && s.contains(r#""completion_tokens":4"#));
    }

    #[test]
    fn eol_variants() {
        assert_eq!(sse_frame("a", Eol::Cr), "data: a\r\r");
        assert_eq!(sse_frame("a", Eol::Crlf), "data: a\r\n\r\n");
        assert!(StreamParams::from_query("eol=xx").is_err());
        assert!(StreamParams::from_query("batch=0").is_err());
    }
}
