//! The daemon's HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, `/flamegraph.svg?pid=&seconds=`.
//!
//! Deliberately small, and defensive against clients that connect and send nothing, or a byte
//! now and then (slowloris), from wherever the listen address can be reached:
//! - One request per connection. The head must fit in 8 KiB and arrive within 2 s, with no
//!   second without a byte; a connection that breaks either rule is closed (408).
//! - At most 1024 connections are kept (half of RLIMIT_NOFILE when that is lower; a soft limit
//!   under 4096 is raised towards the hard one first). When full, a new connection evicts the
//!   oldest one still waiting for its head instead of being refused: a scraper sends its head at
//!   once, so connections held open cannot lock it out. A new connection is refused only when
//!   every kept one is past its head. Out of descriptors (EMFILE), the oldest waiting one gives
//!   way too.
//! - At most 32 answers are being written at once (each holds its body); a new one evicts the
//!   oldest. Memory: 1024 heads of at most 16 KiB (about 1.5 KiB while nothing arrived), and 32
//!   bodies.
//! - One flamegraph capture at a time.
//! - Optionally a bearer token for `/metrics` and `/flamegraph.svg` (`metrics_bearer_token_file`);
//!   `/healthz` and `/readyz` stay open for the kubelet.
//!
//! Connections dropped are counted by reason in `inferscope_endpoint_connections_dropped_total`
//! (`refused`, `evicted`, `head_timeout`, `write_timeout`). Malformed or flooding clients cost a
//! task each, never the agent's event loop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub const MAX_CONNECTIONS: usize = 1024;
/// Connections the kernel queues for `accept` (capped by net.core.somaxconn).
pub const LISTEN_BACKLOG: u32 = 4096;
/// Answers being written at once.
pub const MAX_WRITING: usize = 32;
pub const MAX_HEAD: usize = 8192;
/// The whole head, from the connection's acceptance.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait for the next byte of the head (the first one included).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest an answer may take to be taken (a flamegraph is a few MB).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Error answers to clients that were slow or malformed get this long.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
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

/// Listens with a long accept queue. Under a connection flood the agent accepts (and evicts)
/// quickly, but a queue of 128 (the usual default) overflows within one scheduling hiccup, and a
/// scraper whose SYN is dropped waits a second for its retry. The kernel caps it at somaxconn.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listen = || {
        let s = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|e: std::io::Error| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// The bearer token `/metrics` and `/flamegraph.svg` require, if any. Never printed: `Debug`
/// says only whether there is one.
#[derive(Clone, Default)]
pub struct Auth(Option<Arc<[u8]>>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Auth(bearer token)" } else { "Auth(none)" })
    }
}

impl Auth {
    /// No token: everything open.
    pub fn none() -> Self {
        Self(None)
    }

    /// Reads the token from `path` (surrounding whitespace trimmed, as Prometheus does with its
    /// `credentials_file`). A file that cannot be read or holds no usable token is an error: the
    /// agent must not serve unprotected when it was asked to protect.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else { return Ok(Self::none()) };
        let bad = |why: String| anyhow::anyhow!("metrics_bearer_token_file {}: {why}", path.display());
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let token = bytes.trim_ascii();
        if token.is_empty() {
            return Err(bad("holds no token".into()));
        }
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(bad("the token must be printable ASCII without spaces (it travels in a header)".into()));
        }
        Ok(Self(Some(token.into())))
    }

    /// Whether the request head carries the token (`Authorization: Bearer TOKEN`; header name and
    /// scheme case-insensitive), or none is required.
    fn allows(&self, head: &str) -> bool {
        let Some(want) = &self.0 else { return true };
        let value = head.lines().skip(1).find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("authorization").then_some(value.trim())
        });
        let Some((scheme, given)) = value.and_then(|v| v.split_once(' ')) else { return false };
        scheme.eq_ignore_ascii_case("bearer") && same_secret(given.trim().as_bytes(), want)
    }
}

/// Compares in time that depends on the expected token's length only, not on how much of it the
/// candidate gets right.
fn same_secret(given: &[u8], want: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != want.len());
    for (i, w) in want.iter().enumerate() {
        diff |= w ^ given.get(i).copied().unwrap_or(!w);
    }
    std::hint::black_box(diff) == 0
}

/// Where a kept connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for its head: evicted first.
    Head,
    /// Being answered (a flamegraph capture can take a minute): never evicted.
    Routing,
    /// Its answer is being written: evicted when too many are.
    Writing,
}

/// The kept connections in acceptance order (ids only grow), with what stops each (`H`: the
/// task's abort handle; generic for the tests).
struct Table<H> {
    cap: usize,
    max_writing: usize,
    next: u64,
    live: BTreeMap<u64, (Phase, H)>,
}

impl<H> Table<H> {
    fn new(cap: usize, max_writing: usize) -> Self {
        Self { cap, max_writing, next: 0, live: BTreeMap::new() }
    }

    fn oldest(&self, phase: Phase) -> Option<u64> {
        self.live.iter().find(|(_, (p, _))| *p == phase).map(|(id, _)| *id)
    }

    fn take(&mut self, id: Option<u64>) -> Option<H> {
        self.live.remove(&id?).map(|(_, h)| h)
    }

    /// Keeps a new connection (`start` gets its id and starts it): `Ok(evicted)`, the handle of
    /// the connection that made room, if one had to; `Err(())` when every kept connection is past
    /// its head and none can give way (`start` is not called).
    fn admit(&mut self, start: impl FnOnce(u64) -> H) -> Result<Option<H>, ()> {
        let evicted = if self.live.len() >= self.cap {
            let victim = self.oldest(Phase::Head).or_else(|| self.oldest(Phase::Writing));
            Some(self.take(victim).ok_or(())?)
        } else {
            None
        };
        let id = self.next;
        self.next += 1;
        self.live.insert(id, (Phase::Head, start(id)));
        Ok(evicted)
    }

    /// Moves connection `id` on; starting to write when `max_writing` answers are being written
    /// evicts the oldest of them (returned).
    fn set_phase(&mut self, id: u64, phase: Phase) -> Option<H> {
        if !self.live.contains_key(&id) {
            return None; // evicted meanwhile; its task is being stopped
        }
        let writing = self.live.values().filter(|(p, _)| *p == Phase::Writing).count();
        let evicted = if phase == Phase::Writing && writing >= self.max_writing {
            let victim = self.oldest(Phase::Writing);
            self.take(victim)
        } else {
            None
        };
        if let Some((p, _)) = self.live.get_mut(&id) {
            *p = phase;
        }
        evicted
    }

    /// Out of descriptors: the oldest connection still waiting for its head.
    fn evict_waiting(&mut self) -> Option<H> {
        let victim = self.oldest(Phase::Head);
        self.take(victim)
    }
}

/// The endpoint's own series, in the daemon's registry.
struct Counters {
    connections: IntCounter,
    open: IntGauge,
    dropped: IntCounterVec,
    bad_requests: IntCounter,
    unauthorized: IntCounter,
}

impl Counters {
    fn new(registry: &Registry) -> Self {
        let c = Self {
            connections: IntCounter::new("inferscope_endpoint_connections_total", "Connections accepted by the endpoint")
                .expect("valid metric"),
            open: IntGauge::new("inferscope_endpoint_connections_open", "Connections the endpoint keeps open")
                .expect("valid metric"),
            dropped: IntCounterVec::new(
                Opts::new(
                    "inferscope_endpoint_connections_dropped_total",
                    "Connections closed unanswered: refused, evicted (room for newer ones), head_timeout, write_timeout",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            bad_requests: IntCounter::new("inferscope_endpoint_bad_requests_total", "Malformed or refused requests")
                .expect("valid metric"),
            unauthorized: IntCounter::new(
                "inferscope_endpoint_unauthorized_total",
                "Requests without the configured bearer token",
            )
            .expect("valid metric"),
        };
        for reason in ["refused", "evicted", "head_timeout", "write_timeout"] {
            c.dropped.with_label_values(&[reason]);
        }
        let all: [Box<dyn prometheus::core::Collector>; 5] = [
            Box::new(c.connections.clone()),
            Box::new(c.open.clone()),
            Box::new(c.dropped.clone()),
            Box::new(c.bad_requests.clone()),
            Box::new(c.unauthorized.clone()),
        ];
        for m in all {
            if let Err(e) = registry.register(m) {
                log::warn!("metrics endpoint: its own series not exported: {e}");
            }
        }
        c
    }

    fn dropped(&self, reason: &str) {
        self.dropped.with_label_values(&[reason]).inc();
    }
}

struct Endpoint {
    shared: Arc<Shared>,
    auth: Auth,
    capture: Semaphore,
    counters: Counters,
    table: Mutex<Table<AbortHandle>>,
}

impl Endpoint {
    fn table(&self) -> MutexGuard<'_, Table<AbortHandle>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops an evicted connection (its task drops the socket), outside the table's lock.
    fn evict(&self, h: Option<AbortHandle>) {
        if let Some(h) = h {
            self.counters.dropped("evicted");
            h.abort();
        }
    }
}

/// A kept connection's place in the table; leaving it (the task ends or is aborted) frees it.
struct Slot {
    ep: Arc<Endpoint>,
    id: u64,
}

impl Slot {
    fn phase(&self, p: Phase) {
        let evicted = self.ep.table().set_phase(self.id, p);
        self.ep.evict(evicted);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.ep.table();
        t.live.remove(&self.id);
        self.ep.counters.open.set(t.live.len() as i64);
    }
}

/// Connections kept at once: `MAX_CONNECTIONS`, or half of what RLIMIT_NOFILE allows when that
/// is less (the probes, maps and followed processes need descriptors too). A soft limit under
/// 4 × `MAX_CONNECTIONS` is raised first, as far as the hard limit allows.
fn connection_cap() -> usize {
    let want = 4 * MAX_CONNECTIONS as libc::rlim_t;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return MAX_CONNECTIONS / 4;
        }
        if lim.rlim_cur < want && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: want.min(lim.rlim_max), rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    let cap = usize::try_from(lim.rlim_cur / 2).unwrap_or(MAX_CONNECTIONS).clamp(16, MAX_CONNECTIONS);
    if cap < MAX_CONNECTIONS {
        log::info!("metrics endpoint: RLIMIT_NOFILE {} keeps at most {cap} connections", lim.rlim_cur);
    }
    cap
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, auth: Auth) {
    let counters = Counters::new(&shared.registry);
    let table = Mutex::new(Table::new(connection_cap(), MAX_WRITING));
    let ep = Arc::new(Endpoint { shared, auth, capture: Semaphore::new(1), counters, table });
    let mut warned: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors: the oldest connection waiting for its head makes room.
                let fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                let victim = if fds { ep.table().evict_waiting() } else { None };
                if victim.is_some() {
                    ep.evict(victim);
                    tokio::task::yield_now().await; // let the aborted task close its socket
                } else {
                    // EMFILE with nothing to evict, and friends: back off instead of spinning,
                    // and say so once a minute at most.
                    if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        log::warn!("metrics endpoint accept: {e} (said at most once a minute)");
                        warned = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        ep.counters.connections.inc();
        let admitted = {
            let mut t = ep.table();
            let task_ep = ep.clone();
            let admitted = t.admit(|id| {
                // The slot is made in the task, so that no Slot is dropped here, under the lock
                // its drop takes (a runtime shutting down drops what is spawned at once).
                tokio::spawn(async move { handle(stream, &Slot { ep: task_ep, id }).await }).abort_handle()
            });
            ep.counters.open.set(t.live.len() as i64);
            admitted
        };
        match admitted {
            Ok(evicted) => ep.evict(evicted),
            // Every kept connection is being answered: this one is closed (`stream` was dropped
            // with the closure that was not called).
            Err(()) => {
                ep.counters.dropped("refused");
                ep.shared.refused_connections.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn handle(mut stream: TcpStream, slot: &Slot) {
    let ep = &slot.ep;
    let head = match read_head(&mut stream).await {
        Ok(h) => h,
        Err(HeadError::Nothing) => return, // connected and went away: a port check
        Err(HeadError::Timeout) => {
            ep.counters.dropped("head_timeout");
            let answer = respond(&mut stream, 408, "text/plain", b"request head too slow\n");
            let _ = tokio::time::timeout(ERROR_WRITE_TIMEOUT, answer).await;
            return;
        }
        Err(HeadError::Bad) => {
            ep.counters.bad_requests.inc();
            ep.shared.bad_requests.fetch_add(1, Ordering::Relaxed);
            let answer = respond(&mut stream, 400, "text/plain", b"bad request\n");
            let _ = tokio::time::timeout(ERROR_WRITE_TIMEOUT, answer).await;
            return;
        }
    };
    slot.phase(Phase::Routing);
    let (status, ctype, body) = route(&head, ep).await;
    if status == 401 {
        ep.counters.unauthorized.inc();
    } else if status >= 400 && status != 404 && status != 429 && status != 503 {
        ep.counters.bad_requests.inc();
        ep.shared.bad_requests.fetch_add(1, Ordering::Relaxed);
    }
    slot.phase(Phase::Writing);
    if tokio::time::timeout(WRITE_TIMEOUT, respond(&mut stream, status, ctype, &body)).await.is_err() {
        ep.counters.dropped("write_timeout");
    }
}

enum HeadError {
    /// Closed (or reset) before a byte arrived.
    Nothing,
    /// Not complete within `HEAD_TIMEOUT`, or `IDLE_TIMEOUT` without a byte.
    Timeout,
    /// Too long, not UTF-8, or cut short.
    Bad,
}

/// Reads up to the blank line ending the head, which must fit in `MAX_HEAD` bytes. Memory: the
/// 1 KiB chunk in the task, and a buffer that grows with what arrived, to 2 × `MAX_HEAD` at most.
async fn read_head(stream: &mut TcpStream) -> Result<String, HeadError> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let until = deadline.min(Instant::now() + IDLE_TIMEOUT);
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        let n = match tokio::time::timeout_at(until, stream.read(&mut chunk[..room])).await {
            Err(_) => return Err(HeadError::Timeout),
            Ok(Ok(0) | Err(_)) if buf.is_empty() => return Err(HeadError::Nothing),
            Ok(Ok(0) | Err(_)) => return Err(HeadError::Bad),
            Ok(Ok(n)) => n,
        };
        // Only the new bytes (and the 3 before them) can complete the blank line: a head sent a
        // byte at a time costs linear time, not quadratic.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf[from..]) {
            buf.truncate(from + end);
            return String::from_utf8(buf).map_err(|_| HeadError::Bad);
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::Bad);
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

async fn route(head: &str, ep: &Endpoint) -> (u16, &'static str, Vec<u8>) {
    let shared = &ep.shared;
    let Some((method, path, query)) = parse_request_line(head) else {
        return (400, "text/plain", b"bad request line\n".to_vec());
    };
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", b"only GET\n".to_vec());
    }
    if matches!(path, "/metrics" | "/flamegraph.svg") && !ep.auth.allows(head) {
        return (401, "text/plain", b"this endpoint wants Authorization: Bearer TOKEN\n".to_vec());
    }
    match path {
        "/metrics" => (200, "text/plain; version=0.0.4", super::metrics::encode(&shared.registry)),
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
            let Ok(_one) = ep.capture.try_acquire() else {
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
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        _ => "Service Unavailable",
    };
    let challenge = if status == 401 { "WWW-Authenticate: Bearer realm=\"inferscope\"\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{challenge}Connection: close\r\n\r\n",
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

    #[test]
    fn a_full_table_evicts_the_oldest_waiting_connection_not_the_newest() {
        let mut t = Table::<&str>::new(3, 2);
        for name in ["a", "b", "c"] {
            assert_eq!(t.admit(|_| name), Ok(None));
        }
        // `a` is being answered; `b` is the oldest still waiting for its head.
        assert_eq!(t.set_phase(0, Phase::Routing), None);
        assert_eq!(t.admit(|_| "d"), Ok(Some("b")));
        assert_eq!(t.admit(|_| "e"), Ok(Some("c")));
        assert_eq!(t.live.keys().copied().collect::<Vec<_>>(), [0, 3, 4]);
        // Writers give way when none waits; routing ones never: then the new one is refused.
        assert_eq!(t.set_phase(3, Phase::Writing), None);
        assert_eq!(t.set_phase(4, Phase::Routing), None);
        assert_eq!(t.admit(|_| "f"), Ok(Some("d")));
        assert_eq!(t.set_phase(5, Phase::Routing), None);
        assert_eq!(t.admit(|_| unreachable!("refused before it starts")), Err(()));
        assert_eq!(t.evict_waiting(), None);
        // At most two answers written at once: a third evicts the oldest writer.
        let mut t = Table::<u64>::new(10, 2);
        for _ in 0..4 {
            t.admit(|id| id).unwrap();
        }
        assert_eq!(t.set_phase(2, Phase::Writing), None);
        assert_eq!(t.set_phase(0, Phase::Writing), None);
        assert_eq!(t.set_phase(3, Phase::Writing), Some(0), "the oldest writer, not the first to write");
        assert_eq!(t.evict_waiting(), Some(1));
        assert_eq!(t.set_phase(1, Phase::Writing), None, "an evicted connection changes nothing");
        assert_eq!(t.live.len(), 2);
    }

    #[test]
    fn bearer_tokens() {
        let dir = std::env::temp_dir().join(format!("inferscope-server-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  tok.EN-1~/+=\n").unwrap();
        let auth = Auth::load(Some(&file)).unwrap();
        assert_eq!(format!("{auth:?}"), "Auth(bearer token)", "never printed");
        let head = |h: &str| format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{h}");
        assert!(auth.allows(&head("Authorization: Bearer tok.EN-1~/+=")));
        assert!(auth.allows(&head("AUTHORIZATION:bearer   tok.EN-1~/+=  ")));
        for wrong in [
            "",
            "Authorization: Bearer tok.EN-1~/+",
            "Authorization: Bearer tok.EN-1~/+==",
            "Authorization: Basic tok.EN-1~/+=",
            "Authorization: tok.EN-1~/+=",
            "X-Authorization: Bearer tok.EN-1~/+=",
        ] {
            assert!(!auth.allows(&head(wrong)), "{wrong:?}");
        }
        // The request line is not a header.
        assert!(!auth.allows("GET /authorization: Bearer tok.EN-1~/+= HTTP/1.1\r\n"));
        assert!(Auth::none().allows(&head("")));
        assert!(Auth::load(None).unwrap().allows(&head("")));
        std::fs::write(&file, " \n").unwrap();
        assert!(Auth::load(Some(&file)).unwrap_err().to_string().contains("holds no token"));
        std::fs::write(&file, "two words").unwrap();
        assert!(Auth::load(Some(&file)).is_err());
        let e = Auth::load(Some(&dir.join("missing"))).unwrap_err().to_string();
        assert!(e.contains("metrics_bearer_token_file") && e.contains("missing"), "{e}");
        assert!(same_secret(b"abc", b"abc") && !same_secret(b"abd", b"abc") && !same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc") && !same_secret(b"", b"abc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
