//! The OTLP exporter's HTTP client: one blocking HTTP/1.1 POST per export over a plain TCP
//! connection (`Connection: close`), with connect, write and read timeouts and a bounded
//! response. It runs on the SDK's periodic-reader thread only, never on the ingest loop, so
//! blocking is what we want there; it spares the agent reqwest, hyper's client and an async
//! runtime for one request every few seconds. `http://` only: TLS to a remote backend is a
//! collector's job (run an OpenTelemetry Collector beside the agent).
//!
//! It also keeps the export counters: an unreachable or refusing endpoint is logged once when
//! it starts failing and once when it recovers, and counted each time; nothing else is lost
//! (the SDK keeps aggregating, the next export carries the cumulative state).

use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

/// Response heads and bodies longer than this are cut (an OTLP response is a few bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Export attempts, by outcome (each retry is an attempt).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Answered 2xx.
    pub ok: AtomicU64,
    /// Answered with another status (the SDK retries 429/502/503/504, then drops the batch).
    pub rejected: AtomicU64,
    /// No answer: connection refused, timeout, reset.
    pub failed: AtomicU64,
    /// Request bytes sent in answered exports.
    pub bytes: AtomicU64,
}

#[derive(Debug)]
pub struct BlockingClient {
    timeout: Duration,
    pub stats: Arc<ExportStats>,
    /// The last attempt failed: the next failure is not logged again.
    failing: AtomicBool,
}

impl BlockingClient {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, stats: Arc::default(), failing: AtomicBool::new(false) }
    }

    fn post(&self, req: &Request<Bytes>) -> Result<(u16, Vec<u8>), String> {
        let uri = req.uri();
        let host = uri.host().ok_or("no host in the endpoint")?;
        let port = uri.port_u16().unwrap_or(80);
        let (mut s, addr) = connect(host, port, self.timeout)?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = uri.authority().map_or(host, |a| a.as_str());
        let body = req.body();
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n",
            req.method(),
            body.len()
        );
        for (name, value) in req.headers() {
            if matches!(name.as_str(), "host" | "content-length" | "connection") {
                continue;
            }
            if let Ok(v) = value.to_str() {
                head.push_str(&format!("{name}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).and_then(|()| s.write_all(body)).map_err(|e| format!("send to {addr}: {e}"))?;
        read_response(&mut s).map_err(|e| format!("answer from {addr}: {e}"))
    }
}

/// A connection to `host:port` (a bracketed IPv6 literal too) with `timeout` for connecting,
/// each write and each read; the address it reached, for messages.
pub(crate) fn connect(host: &str, port: u16, timeout: Duration) -> Result<(TcpStream, std::net::SocketAddr), String> {
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    Ok((s, addr))
}

/// Reads one response: its status and (Content-Length) body. A chunked body is not decoded
/// (the exporter only reads an OTLP response body for partial-success details).
pub(crate) fn read_response(s: &mut impl std::io::Read) -> Result<(u16, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err("response head too long".into());
        }
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| head.starts_with("HTTP/1."))
        .ok_or("not an HTTP/1.x response")?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return Ok((status, Vec::new()));
    }
    let want = header("content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0).min(MAX_RESPONSE_BYTES);
    let mut body = buf[head_end..].to_vec();
    while body.len() < want {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(want);
    Ok((status, body))
}

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let result = self.post(&request);
        let st = &self.stats;
        match &result {
            Ok((code, _)) if (200..300).contains(code) => {
                st.ok.fetch_add(1, Ordering::Relaxed);
                st.bytes.fetch_add(request.body().len() as u64, Ordering::Relaxed);
                if self.failing.swap(false, Ordering::Relaxed) {
                    log::info!("otlp: {} accepts exports again", request.uri());
                }
            }
            Ok((code, _)) => {
                st.rejected.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::warn!("otlp: {} answered {code}; exports are counted as rejected", request.uri());
                }
            }
            Err(e) => {
                st.failed.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    log::warn!("otlp: export failed ({e}); counting failures, said once until it works again");
                }
            }
        }
        let (code, body) = result?;
        Ok(Response::builder().status(code).body(Bytes::from(body))?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn responses_by_content_length_and_chunked() {
        let mut r: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef";
        assert_eq!(read_response(&mut r).unwrap(), (200, b"abc".to_vec()));
        let mut r: &[u8] = b"HTTP/1.0 503 Busy\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(read_response(&mut r).unwrap(), (503, vec![]));
        let mut r: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(read_response(&mut r).unwrap(), (204, vec![]));
        let mut r: &[u8] = b"SSH-2.0-OpenSSH\r\n\r\n";
        assert!(read_response(&mut r).is_err());
        let mut r: &[u8] = b"HTTP/1.1 200";
        assert!(read_response(&mut r).is_err());
    }

    /// The client never awaits: its future is ready at the first poll.
    fn ready<F: std::future::Future>(f: F) -> F::Output {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the blocking client awaited"),
        }
    }

    #[test]
    fn an_unreachable_endpoint_is_counted_not_fatal() {
        // A port nobody listens on: bind one, learn its number, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = BlockingClient::new(Duration::from_millis(500));
        let req = Request::post(format!("http://127.0.0.1:{port}/v1/metrics")).body(Bytes::from_static(b"x")).unwrap();
        for _ in 0..2 {
            assert!(ready(client.send_bytes(req.clone())).is_err());
        }
        assert_eq!(client.stats.failed.load(Ordering::Relaxed), 2);
        assert_eq!(client.stats.ok.load(Ordering::Relaxed), 0);
    }
}
