//! HTTP/1.x request and response heads (start line + headers), accumulated across reads/writes.
//!
//! Only framing facts are extracted (method, path, status, Content-Length, Transfer-Encoding,
//! Content-Type, Connection). Every other header — Authorization, cookies, API keys — is
//! skipped over and never copied out of the accumulation buffer, which is cleared at once.

/// Largest head we accumulate; beyond this the bytes are not HTTP we can follow.
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest path kept (query strings are never kept).
pub const MAX_PATH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("head longer than {MAX_HEAD} bytes")]
    TooLong,
    #[error("malformed start line")]
    BadStartLine,
    #[error("malformed header line")]
    BadHeader,
    #[error("conflicting or invalid Content-Length")]
    BadLength,
}

/// Accumulates a head until its blank line.
#[derive(Default)]
pub struct HeadBuf {
    buf: Vec<u8>,
}

impl std::fmt::Debug for HeadBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeadBuf({} bytes)", self.buf.len())
    }
}

impl HeadBuf {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Feeds bytes; returns `Some(consumed)` once the head is complete (bytes after it are not
    /// consumed), `None` if more bytes are needed.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<usize>, HeadError> {
        let start = self.buf.len();
        // Bytes of the terminator may already be buffered: rescan from 3 bytes back.
        let scan_from = start.saturating_sub(3);
        let take = input.len().min(MAX_HEAD + 4 - start.min(MAX_HEAD + 4));
        self.buf.extend_from_slice(&input[..take]);
        if let Some(end) = find_head_end(&self.buf[scan_from..]) {
            let end = scan_from + end;
            self.buf.truncate(end);
            return Ok(Some(end - start));
        }
        if self.buf.len() > MAX_HEAD {
            self.buf.clear();
            return Err(HeadError::TooLong);
        }
        Ok(None)
    }

    /// Takes the completed head out, leaving the buffer empty (and small).
    pub fn take(&mut self) -> Vec<u8> {
        let out = std::mem::take(&mut self.buf);
        out
    }

    pub fn clear(&mut self) {
        self.buf = Vec::new();
    }
}

/// Index just past the head's terminating blank line (CRLF CRLF or LF LF, mixed allowed).
fn find_head_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Default,
    Close,
    KeepAlive,
}

/// Framing facts common to requests and responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub connection: Connection,
    pub event_stream: bool,
    pub ndjson: bool,
    pub json: bool,
    pub expect_continue: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub http10: bool,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub http10: bool,
    pub headers: Headers,
}

/// Does `b` look like the start of an HTTP/1.x request line? Used to find the next request on a
/// connection we joined mid-stream.
pub fn looks_like_request(b: &[u8]) -> bool {
    let Some(sp) = b.iter().take(16).position(|&c| c == b' ') else {
        return false;
    };
    sp > 0
        && b[..sp].iter().all(|c| c.is_ascii_uppercase())
        && matches!(b.get(sp + 1), Some(b'/') | Some(b'*') | Some(b'h'))
}

pub fn looks_like_response(b: &[u8]) -> bool {
    b.starts_with(b"HTTP/1.")
}

pub fn parse_request(head: &[u8]) -> Result<RequestHead, HeadError> {
    let mut lines = head_lines(head);
    let start = lines.next().ok_or(HeadError::BadStartLine)?;
    let mut parts = start.split(|&c| c == b' ').filter(|p| !p.is_empty());
    let method = parts.next().ok_or(HeadError::BadStartLine)?;
    let target = parts.next().ok_or(HeadError::BadStartLine)?;
    let version = parts.next().ok_or(HeadError::BadStartLine)?;
    if parts.next().is_some()
        || method.is_empty()
        || method.len() > 16
        || !method.iter().all(|c| c.is_ascii_uppercase() || *c == b'-')
        || !version.starts_with(b"HTTP/1.")
    {
        return Err(HeadError::BadStartLine);
    }
    let path_end = target.iter().position(|&c| c == b'?' || c == b'#').unwrap_or(target.len());
    let path = &target[..path_end.min(MAX_PATH)];
    if !path.iter().all(|c| c.is_ascii_graphic()) {
        return Err(HeadError::BadStartLine);
    }
    Ok(RequestHead {
        method: String::from_utf8_lossy(method).into_owned(),
        path: String::from_utf8_lossy(path).into_owned(),
        http10: version == b"HTTP/1.0",
        headers: parse_headers(lines)?,
    })
}

pub fn parse_response(head: &[u8]) -> Result<ResponseHead, HeadError> {
    let mut lines = head_lines(head);
    let start = lines.next().ok_or(HeadError::BadStartLine)?;
    if !start.starts_with(b"HTTP/1.") || start.len() < 12 || start[8] != b' ' {
        return Err(HeadError::BadStartLine);
    }
    let code = &start[9..12];
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::BadStartLine);
    }
    let status = code.iter().fold(0u16, |a, d| a * 10 + (d - b'0') as u16);
    Ok(ResponseHead { status, http10: start.starts_with(b"HTTP/1.0"), headers: parse_headers(lines)? })
}

fn head_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&c| c == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).filter(|l| !l.is_empty())
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<Headers, HeadError> {
    let mut h = Headers {
        content_length: None,
        chunked: false,
        connection: Connection::Default,
        event_stream: false,
        ndjson: false,
        json: false,
        expect_continue: false,
    };
    for line in lines {
        let colon = line.iter().position(|&c| c == b':').ok_or(HeadError::BadHeader)?;
        let name = &line[..colon];
        if name.is_empty() || name.iter().any(|c| c.is_ascii_whitespace()) {
            return Err(HeadError::BadHeader);
        }
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or(HeadError::BadLength)?;
            if h.content_length.is_some_and(|old| old != n) {
                return Err(HeadError::BadLength);
            }
            h.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            h.chunked = value.split(|&c| c == b',').last().is_some_and(|v| trim(v).eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&c| c == b',') {
                let t = trim(token);
                if t.eq_ignore_ascii_case(b"close") {
                    h.connection = Connection::Close;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && h.connection != Connection::Close {
                    h.connection = Connection::KeepAlive;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-type") {
            let mime = trim(value.split(|&c| c == b';').next().unwrap_or_default());
            h.event_stream = mime.eq_ignore_ascii_case(b"text/event-stream");
            h.ndjson = mime.eq_ignore_ascii_case(b"application/x-ndjson")
                || mime.eq_ignore_ascii_case(b"application/jsonl")
                || mime.eq_ignore_ascii_case(b"application/jsonlines");
            h.json = mime.eq_ignore_ascii_case(b"application/json");
        } else if name.eq_ignore_ascii_case(b"expect") {
            h.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
        // Any other header (credentials included) is neither parsed nor kept.
    }
    Ok(h)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |a, d| a * 10 + (d - b'0') as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_accumulates_across_every_split() {
        let input = b"POST /v1/chat/completions?key=secret HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-123\r\nContent-Length: 12\r\n\r\n{\"a\":\"bcd\"}!";
        for at in 0..=input.len() {
            let mut h = HeadBuf::default();
            let first = h.feed(&input[..at]).unwrap();
            let used = match first {
                Some(n) => n,
                None => at + h.feed(&input[at..]).unwrap().unwrap(),
            };
            assert_eq!(used, input.len() - 12, "split at {at}");
            let req = parse_request(&h.take()).unwrap();
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, "/v1/chat/completions");
            assert_eq!(req.headers.content_length, Some(12));
        }
    }

    #[test]
    fn response_framing_facts() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert_eq!(r.status, 200);
        assert!(r.headers.chunked && r.headers.event_stream);
        assert_eq!(r.headers.connection, Connection::KeepAlive);
        let r = parse_response(b"HTTP/1.0 404 Not Found\nContent-Length: 3\n\n").unwrap();
        assert!(r.http10);
        assert_eq!(r.headers.content_length, Some(3));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_request(b"\x16\x03\x01\x02\x00 / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request(b"GET /\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        let mut h = HeadBuf::default();
        assert_eq!(h.feed(&vec![b'a'; MAX_HEAD + 10]), Err(HeadError::TooLong));
    }

    #[test]
    fn request_line_sniffing() {
        assert!(looks_like_request(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_request(b"POST /v1 HTTP/1.1"));
        assert!(!looks_like_request(b"{\"a\":1}"));
        assert!(!looks_like_request(b"PRI"));
    }
}
