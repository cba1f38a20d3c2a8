//! Blocking load client: plain threads and `std::net::TcpStream` with hand-written
//! HTTP/1.1, so the client's own syscalls are simple and predictable (one write per
//! request, ordinary reads) and it pulls in no async runtime.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

const REQUEST_BODY: &str = r#"{"messages":[{"role":"user","content":"hello"}],"stream":true}"#;
/// Generous: a single stream can legitimately take seconds with large `tokens`.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Guards against a runaway header section from a broken server.
const MAX_HEADER_LINES: usize = 100;

/// Outcome of one request.
#[derive(Debug, Clone)]
pub struct RequestResult {
    /// The `<id>` used in `/v1/chat/completions/<id>` (`<id_prefix><n>`).
    pub id: String,
    /// HTTP status, 0 if no status line was received.
    pub status: u16,
    /// Decoded body length (chunk framing removed).
    pub body_bytes: usize,
    /// From just before sending the request to the end of the body.
    pub elapsed: Duration,
    /// CLOCK_MONOTONIC ns (`crate::monotonic_ns`) taken right before the request's write:
    /// the server cannot read the request earlier. 0 if it was never sent.
    pub sent_ns: u64,
    pub error: Option<String>,
}

/// What `run_load` did; `results` is ordered by request number.
#[derive(Debug, Clone)]
pub struct LoadSummary {
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    pub results: Vec<RequestResult>,
}

/// Sends `requests` POSTs to `/v1/chat/completions/<id_prefix><n>?<query>` from
/// `concurrency` worker threads, each reading its response to the end.
///
/// With `keepalive`, a worker reuses its connection until the server closes it (e.g.
/// `framing=close`); without it every request gets a fresh connection and
/// `Connection: close`. Failed requests are counted in the summary, not returned as
/// `Err`; `Err` is only for bad arguments.
pub fn run_load(
    addr: &str,
    requests: usize,
    concurrency: usize,
    keepalive: bool,
    query: &str,
    id_prefix: &str,
) -> anyhow::Result<LoadSummary> {
    let sock_addr = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to nothing"))?;
    let query = query.trim_start_matches('?').to_string();
    let cfg = Arc::new(Config {
        addr: sock_addr,
        host: addr.to_string(),
        keepalive,
        query,
        id_prefix: id_prefix.to_string(),
        total: requests,
        next: AtomicUsize::new(0),
    });

    let workers: Vec<_> = (0..concurrency.max(1).min(requests.max(1)))
        .map(|w| {
            let cfg = Arc::clone(&cfg);
            thread::Builder::new().name(format!("load-{w}")).spawn(move || worker(&cfg))
        })
        .collect::<Result<_, _>>()?;

    let mut results = Vec::with_capacity(requests);
    for w in workers {
        results.extend(w.join().map_err(|_| anyhow!("load worker panicked"))?);
    }
    results.sort_by_key(|(n, _)| *n);
    let results: Vec<RequestResult> = results.into_iter().map(|(_, r)| r).collect();
    let errors = results.iter().filter(|r| r.error.is_some()).count();
    Ok(LoadSummary { requests: results.len(), ok: results.len() - errors, errors, results })
}

struct Config {
    addr: SocketAddr,
    host: String,
    keepalive: bool,
    query: String,
    id_prefix: String,
    total: usize,
    /// Work queue: the next request number to send. Workers pull from it so a slow
    /// stream does not hold back requests assigned to a fast worker.
    next: AtomicUsize,
}

fn worker(cfg: &Config) -> Vec<(usize, RequestResult)> {
    let mut out = Vec::new();
    let mut conn: Option<BufReader<TcpStream>> = None;
    loop {
        let n = cfg.next.fetch_add(1, Ordering::Relaxed);
        if n >= cfg.total {
            break;
        }
        let id = format!("{}{n}", cfg.id_prefix);
        let start = Instant::now();
        let mut result = RequestResult {
            id: id.clone(),
            status: 0,
            body_bytes: 0,
            elapsed: Duration::ZERO,
            sent_ns: 0,
            error: None,
        };
        match one_request(cfg, &mut conn, &id, &mut result) {
            Ok(reusable) => {
                if !reusable {
                    conn = None;
                }
                if result.status != 200 {
                    result.error = Some(format!("HTTP status {}", result.status));
                }
            }
            Err(e) => {
                // Never reuse a connection in an unknown state.
                conn = None;
                result.error = Some(format!("{e:#}"));
            }
        }
        result.elapsed = start.elapsed();
        out.push((n, result));
    }
    out
}

/// Runs one request/response on `conn` (opening it if needed). Returns whether the
/// connection may carry another request.
fn one_request(
    cfg: &Config,
    conn: &mut Option<BufReader<TcpStream>>,
    id: &str,
    result: &mut RequestResult,
) -> anyhow::Result<bool> {
    let reader = match conn {
        Some(r) => r,
        None => {
            let s = TcpStream::connect_timeout(&cfg.addr, IO_TIMEOUT)
                .with_context(|| format!("connecting to {}", cfg.addr))?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.set_nodelay(true)?;
            conn.insert(BufReader::new(s))
        }
    };

    let target = if cfg.query.is_empty() {
        format!("/v1/chat/completions/{id}")
    } else {
        format!("/v1/chat/completions/{id}?{}", cfg.query)
    };
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{REQUEST_BODY}",
        cfg.host,
        REQUEST_BODY.len(),
        if cfg.keepalive { "keep-alive" } else { "close" },
    );
    // One write for the whole request keeps the client side of a trace easy to read.
    result.sent_ns = crate::monotonic_ns();
    reader.get_mut().write_all(request.as_bytes()).context("sending request")?;

    let status_line = read_line(reader)?.ok_or_else(|| anyhow!("connection closed before status line"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_string();
    result.status =
        parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut server_close = version == "HTTP/1.0";
    for _ in 0..MAX_HEADER_LINES {
        let line = read_line(reader)?.ok_or_else(|| anyhow!("connection closed in headers"))?;
        if line.is_empty() {
            let body_bytes = if chunked {
                read_chunked(reader)?
            } else if let Some(len) = content_length {
                read_exact_len(reader, len)?
            } else {
                // Close-delimited body: everything until the server closes.
                server_close = true;
                read_to_eof(reader)?
            };
            result.body_bytes = body_bytes;
            return Ok(cfg.keepalive && !server_close);
        }
        let (name, value) = line.split_once(':').ok_or_else(|| anyhow!("bad header line {line:?}"))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = Some(value.parse().context("bad Content-Length")?),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => server_close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    bail!("more than {MAX_HEADER_LINES} header lines")
}

/// One CRLF- (or LF-) terminated line without the terminator; `None` on clean EOF.
fn read_line(r: &mut impl BufRead) -> anyhow::Result<Option<String>> {
    let mut buf = Vec::new();
    if r.read_until(b'\n', &mut buf)? == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        bail!("connection closed mid-line");
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8(buf).context("non-UTF-8 header line")?))
}

fn read_chunked(r: &mut impl BufRead) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let line = read_line(r)?.ok_or_else(|| anyhow!("connection closed in chunk header"))?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).with_context(|| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            // Trailer section, ended by an empty line.
            loop {
                match read_line(r)? {
                    Some(l) if l.is_empty() => return Ok(total),
                    Some(_) => {}
                    None => bail!("connection closed in chunked trailer"),
                }
            }
        }
        read_exact_len(r, size)?;
        total += size;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).context("reading chunk CRLF")?;
        if &crlf != b"\r\n" {
            bail!("chunk not followed by CRLF");
        }
    }
}

fn read_exact_len(r: &mut impl Read, len: usize) -> anyhow::Result<usize> {
    let copied = std::io::copy(&mut r.take(len as u64), &mut std::io::sink())?;
    if copied as usize != len {
        bail!("body truncated: {copied} of {len} bytes");
    }
    Ok(len)
}

fn read_to_eof(r: &mut impl Read) -> anyhow::Result<usize> {
    Ok(std::io::copy(r, &mut std::io::sink())? as usize)
}
