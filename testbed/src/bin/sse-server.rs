//! `sse-server --port P --truth FILE`: a tokio SSE server that imitates an LLM
//! inference server and logs, per request, exactly which write syscalls it made and
//! when (CLOCK_MONOTONIC). See `tests/servers/README.md` for the protocol.
//!
//! HTTP/1.1 is hand-written on `TcpStream` (no hyper) so that every logical write is a
//! single `send` syscall whose timestamp and size we control.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use testbed::proto::{self, Framing, StreamParams};
use testbed::{monotonic_ns, TruthRecord, TruthWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

const SERVER_NAME: &str = "rust";
const STREAM_PREFIX: &str = "/v1/chat/completions";
const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Write calls made on client sockets, served by `GET /stats` so tests can check the
/// agent saw every one of them. /stats' own writes are not counted.
static WRITES: AtomicU64 = AtomicU64::new(0);

#[derive(Parser, Debug)]
#[command(about = "SSE test server that records its own write timing")]
struct Args {
    /// TCP port on 127.0.0.1; 0 picks a free one (printed as `LISTENING <port>`).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// JSONL file receiving one ground-truth record per completed request.
    #[arg(long)]
    truth: PathBuf,
}

/// Truth log; each record is one `write` of a whole line, so a concurrent reader never
/// sees half a record unless it races the write itself.
struct TruthLog(Mutex<File>);

impl TruthLog {
    fn append(&self, rec: &TruthRecord) {
        let mut line = match serde_json::to_string(rec) {
            Ok(l) => l,
            Err(e) => return eprintln!("truth: serialize: {e}"),
        };
        line.push('\n');
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            eprintln!("truth: write: {e}");
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let res = rt.block_on(serve(args));
    // Streams still in flight at shutdown are simply dropped (and not recorded).
    rt.shutdown_timeout(Duration::from_millis(100));
    res
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let file = File::create(&args.truth).with_context(|| format!("creating truth file {}", args.truth.display()))?;
    let truth = Arc::new(TruthLog(Mutex::new(file)));
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING {}", listener.local_addr()?.port())?;
    out.flush()?;
    drop(out);

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let truth = Arc::clone(&truth);
                    tokio::spawn(async move {
                        if let Err(e) = handle_connection(stream, &truth).await {
                            eprintln!("connection: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    Ok(())
}

struct Request {
    method: String,
    /// Path and query, as sent.
    target: String,
    /// Client asked for `Connection: close` (or spoke HTTP/1.0).
    close: bool,
}

async fn handle_connection(mut stream: TcpStream, truth: &TruthLog) -> anyhow::Result<()> {
    // Inference servers run with TCP_NODELAY; it also keeps split writes apart on the wire.
    stream.set_nodelay(true)?;
    // Bytes read past the current request (pipelining) stay here for the next one.
    let mut buf = Vec::with_capacity(8192);
    loop {
        let Some(req) = read_request(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        let request_ns = monotonic_ns();
        let keep_alive = respond(&mut stream, &req, request_ns, truth).await?;
        if !keep_alive {
            // Close-delimited bodies end here: FIN tells the client the body is complete.
            stream.shutdown().await?;
            return Ok(());
        }
    }
}

/// Reads one request including its body. `Ok(None)` = client closed between requests.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Option<Request>> {
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEADER_BYTES {
            bail!("request headers too large");
        }
        if stream.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            bail!("connection closed mid-request");
        }
    };

    let head = std::str::from_utf8(&buf[..header_end]).context("non-UTF-8 request head")?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("bad request line {request_line:?}");
    };
    let mut req = Request { method: method.to_string(), target: target.to_string(), close: version == "HTTP/1.0" };
    let mut content_length = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().context("bad Content-Length")?;
        } else if name.eq_ignore_ascii_case("connection") {
            req.close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked request bodies are not supported");
        }
    }
    if content_length > MAX_BODY_BYTES {
        bail!("request body too large");
    }
    buf.drain(..header_end);

    // The body is ignored, but it must be consumed so request_ns marks the true end of
    // the request and the next request on the connection starts at the right byte.
    while buf.len() < content_length {
        if stream.read_buf(buf).await? == 0 {
            bail!("connection closed mid-body");
        }
    }
    buf.drain(..content_length);
    Ok(Some(req))
}

/// Answers one request. Returns whether the connection stays open.
async fn respond(stream: &mut TcpStream, req: &Request, request_ns: u64, truth: &TruthLog) -> anyhow::Result<bool> {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));

    if req.method == "GET" && path == "/health" {
        write_simple(stream, "200 OK", "text/plain", "ok", req.close, true).await?;
        return Ok(!req.close);
    }
    if req.method == "GET" && path == "/stats" {
        let body = format!("{{\"writes\":{}}}", WRITES.load(Ordering::SeqCst));
        write_simple(stream, "200 OK", "application/json", &body, req.close, false).await?;
        return Ok(!req.close);
    }
    let id = match path.strip_prefix(STREAM_PREFIX) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.rsplit('/').next().unwrap_or_default(),
        _ => {
            write_simple(stream, "404 Not Found", "text/plain", "not found", req.close, true).await?;
            return Ok(!req.close);
        }
    };
    let params = match StreamParams::from_query(query) {
        Ok(p) => p,
        Err(msg) => {
            write_simple(stream, "400 Bad Request", "text/plain", &msg, req.close, true).await?;
            return Ok(!req.close);
        }
    };

    let mut writes = Vec::new();
    let mut streaming = false;
    for step in proto::plan(&params, req.close) {
        if params.burn {
            if streaming {
                decode_work(step.delay);
            } else {
                prefill_work(step.delay);
            }
        } else if !step.delay.is_zero() {
            tokio::time::sleep(step.delay).await;
        }
        streaming |= step.content_events > 0;
        let ts_ns = monotonic_ns();
        write_counted(stream, &step.bytes, true).await?;
        writes.push(TruthWrite { ts_ns, bytes: step.bytes.len() as u64, content_events: step.content_events });
    }
    truth.append(&TruthRecord::from_writes(
        SERVER_NAME,
        id,
        path,
        &req.method,
        request_ns,
        writes,
        params.reported_tokens(),
        200,
    ));
    Ok(!req.close && params.framing != Framing::Close)
}

/// A small non-streaming reply in one write.
async fn write_simple(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    close: bool,
    count: bool,
) -> anyhow::Result<()> {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
        body.len(),
        if close { "close" } else { "keep-alive" },
    );
    write_counted(stream, resp.as_bytes(), count).await
}

/// `write_all`, spelled out so that every syscall that moves bytes is counted for
/// /stats. With loopback socket buffers and our frame sizes the first call takes
/// everything, i.e. one logical write = one `sendto`; a short write is reported on
/// stderr because it would make the truth record (one entry) and the syscall trace
/// (two calls) disagree.
async fn write_counted(stream: &mut TcpStream, mut bytes: &[u8], count: bool) -> anyhow::Result<()> {
    let mut calls = 0;
    while !bytes.is_empty() {
        let n = stream.write(bytes).await?;
        if n == 0 {
            bail!("socket closed while writing");
        }
        calls += 1;
        if count {
            WRITES.fetch_add(1, Ordering::SeqCst);
        }
        bytes = &bytes[n..];
    }
    if calls > 1 {
        eprintln!("warning: a write took {calls} syscalls (short write)");
    }
    Ok(())
}

/// CPU work standing in for prompt processing (named, so a CPU profile can find it).
#[inline(never)]
fn prefill_work(d: Duration) {
    burn(d, 31);
}

/// CPU work standing in for one decode step.
#[inline(never)]
fn decode_work(d: Duration) {
    burn(d, 37);
}

#[inline(always)]
fn burn(d: Duration, k: u64) {
    let end = std::time::Instant::now() + d;
    let mut x = k;
    while std::time::Instant::now() < end {
        for _ in 0..20_000 {
            x = std::hint::black_box(x.wrapping_mul(k).wrapping_add(1));
        }
    }
}
