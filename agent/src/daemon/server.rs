//! The daemon's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/flamegraph.svg?pid=&seconds=`.
//!
//! Deliberately small and defensive: one request per connection, the head must arrive within
//! 5 s and fit in 8 KiB, at most 64 connections at once (more are closed at once and counted),
//! and one flamegraph capture at a time. Malformed or flooding clients cost a task each, never
//! the agent's event loop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

pub const MAX_CONNECTIONS: usize = 64;
pub const MAX_HEAD: usize = 8192;
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_FLAMEGRAPH_SECONDS: f64 = 60.0;

/// A flamegraph request handed to the daemon loop, which owns the probes.
pub struct FlamegraphRequest {
    pub pid: u32,
    pub seconds: f64,
    pub reply: oneshot::Sender<Result<Vec<u8>, String>>,
}

pub struct Shared {
    pub registry: prometheus::Registry,
    /// Probes loaded and the first /proc scan done.
    pub ready: AtomicBool,
    /// The event loop ran within the last few seconds (set by the daemon loop's tick).
    pub last_tick_ms: AtomicU64,
    pub refused_connections: AtomicU64,
    pub bad_requests: AtomicU64,
    pub flamegraphs: mpsc::Sender<FlamegraphRequest>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let capture = Arc::new(Semaphore::new(1));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("metrics endpoint accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shared.refused_connections.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let capture = capture.clone();
        tokio::spawn(async move {
            let _permit = permit;
            handle(stream, &shared, &capture).await;
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared, capture: &Semaphore) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(h)) => h,
        Ok(None) | Err(_) => {
            shared.bad_requests.fetch_add(1, Ordering::Relaxed);
            let _ = respond(&mut stream, 400, "text/plain", b"bad request\n").await;
            return;
        }
    };
    let (status, ctype, body) = route(&head, shared, capture).await;
    if status >= 400 && status != 404 && status != 429 && status != 503 {
        shared.bad_requests.fetch_add(1, Ordering::Relaxed);
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), respond(&mut stream, status, ctype, &body)).await;
}

/// Reads up to the blank line ending the head; None if it is too long, not UTF-8 or cut short.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf) {
            return String::from_utf8(buf[..end].to_vec()).ok();
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

/// Splits `GET /path?query HTTP/1.1` into path and query pairs; None when it is not that.
pub fn parse_request_line(head: &str) -> Option<(&str, &str, Vec<(&str, &str)>)> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let pairs = query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).collect();
    Some((method, path, pairs))
}

async fn route(head: &str, shared: &Shared, capture: &Semaphore) -> (u16, &'static str, Vec<u8>) {
    let Some((method, path, query)) = parse_request_line(head) else {
        return (400, "text/plain", b"bad request line\n".to_vec());
    };
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", b"only GET\n".to_vec());
    }
    match path {
        "/metrics" => {
            let mut buf = Vec::new();
            let _ = prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &shared.registry.gather(), &mut buf);
            (200, "text/plain; version=0.0.4", buf)
        }
        "/healthz" => {
            let age = now_ms().saturating_sub(shared.last_tick_ms.load(Ordering::Relaxed));
            if age < 10_000 {
                (200, "text/plain", b"ok\n".to_vec())
            } else {
                (503, "text/plain", format!("event loop stalled for {age} ms\n").into_bytes())
            }
        }
        "/readyz" => {
            if shared.ready.load(Ordering::Relaxed) {
                (200, "text/plain", b"ready\n".to_vec())
            } else {
                (503, "text/plain", b"loading probes\n".to_vec())
            }
        }
        "/flamegraph.svg" => {
            let get = |k: &str| query.iter().find(|(q, _)| *q == k).map(|(_, v)| *v);
            let Some(pid) = get("pid").and_then(|p| p.parse::<u32>().ok()) else {
                return (400, "text/plain", b"give ?pid=PID (a followed process) and optionally &seconds=S\n".to_vec());
            };
            let seconds = match get("seconds").map(str::parse::<f64>) {
                None => 10.0,
                Some(Ok(s)) if s > 0.0 && s <= MAX_FLAMEGRAPH_SECONDS => s,
                Some(_) => return (400, "text/plain", b"seconds must be in (0, 60]\n".to_vec()),
            };
            let Ok(_one) = capture.try_acquire() else {
                return (429, "text/plain", b"a flamegraph is being captured; one at a time\n".to_vec());
            };
            let (tx, rx) = oneshot::channel();
            if shared.flamegraphs.send(FlamegraphRequest { pid, seconds, reply: tx }).await.is_err() {
                return (503, "text/plain", b"agent is shutting down\n".to_vec());
            }
            match rx.await {
                Ok(Ok(svg)) => (200, "image/svg+xml", svg),
                Ok(Err(e)) => (404, "text/plain", format!("{e}\n").into_bytes()),
                Err(_) => (503, "text/plain", b"capture abandoned\n".to_vec()),
            }
        }
        _ => (404, "text/plain", b"endpoints: /metrics /healthz /readyz /flamegraph.svg?pid=PID&seconds=S\n".to_vec()),
    }
}

async fn respond(stream: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let (m, p, q) = parse_request_line("GET /flamegraph.svg?pid=12&seconds=3 HTTP/1.1\r\nHost: x\r\n").unwrap();
        assert_eq!((m, p), ("GET", "/flamegraph.svg"));
        assert_eq!(q, vec![("pid", "12"), ("seconds", "3")]);
        assert!(parse_request_line("GET /metrics").is_none());
        assert!(parse_request_line("\u{16}\u{3}\u{1} garbage HTTP/2 x").is_none());
        assert!(parse_request_line("").is_none());
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(14));
    }
}
