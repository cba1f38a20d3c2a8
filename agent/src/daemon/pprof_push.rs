//! `[pprof_push]`: continuous CPU profiles pushed to a Pyroscope-compatible `/ingest` endpoint
//! (Pyroscope's HTTP ingest API; Grafana Alloy's `pyroscope.receive_http` takes the same).
//!
//! The daemon loop takes the captures, one at a time, with the machinery of `/flamegraph.svg`
//! ([`super::flamegraph`]): every `interval_seconds` the next followed process (round robin)
//! is sampled for `seconds` at 99 Hz. The capture's pprof bytes come here over a bounded queue;
//! this module's thread POSTs each as `multipart/form-data` (one `profile` part, gzipped
//! profile.proto) to `URL/ingest?name=…&from=…&until=…&format=pprof&sampleRate=99&spyName=inferscope`.
//! Blocking I/O only on that thread. A full queue, a refusing or an unreachable endpoint are
//! counted (`inferscope_pprof_pushes_total{result}`) and logged once when pushes start failing
//! and once when they recover; the daemon's other work never waits on it.

use std::io::Write as _;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts, Registry};

use super::config::PprofPushConfig;
use super::metrics::TargetLabels;

/// Captures waiting for the push thread; more are dropped and counted.
const QUEUE: usize = 4;
/// Longest label value put in the application name.
const MAX_LABEL: usize = 63;

/// One capture to push.
pub struct Push {
    /// Pyroscope's application name with labels, e.g. `inferscope.cpu{service_name=llama}`.
    pub name: String,
    pub from_unix_s: u64,
    pub until_unix_s: u64,
    /// Gzipped profile.proto.
    pub pprof: Vec<u8>,
}

/// `http://HOST:PORT[/PREFIX]`, checked when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
    prefix: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url:?}: only http:// endpoints (TLS to a remote backend is a collector's or a proxy's job)")
        })?;
        if rest.contains('@') {
            return Err("no credentials in the endpoint (not repeated here; a proxy adds them)".into());
        }
        if rest.contains(['?', '#']) {
            return Err(format!("{url:?}: no query or fragment in the endpoint"));
        }
        let (hostport, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => {
                (h, p.parse::<u16>().map_err(|_| format!("{url:?}: bad port {p:?}"))?)
            }
            _ if !hostport.is_empty() && !hostport.contains(':') => (hostport, 80),
            _ => return Err(format!("{url:?}: no host")),
        };
        Ok(Endpoint { host: host.to_string(), port, prefix: path.trim_end_matches('/').to_string() })
    }

    fn target(&self, query: &str) -> String {
        if self.prefix.is_empty() {
            format!("/ingest?{query}")
        } else {
            format!("/{}/ingest?{query}", self.prefix)
        }
    }
}

/// The daemon loop's side: when to capture, what, and the queue to the push thread.
pub struct Pusher {
    tx: SyncSender<Push>,
    pushes: IntCounterVec,
    interval: Duration,
    /// Capture window per push.
    pub seconds: f64,
    next: Instant,
    /// Round robin over the followed processes.
    turn: usize,
}

impl Pusher {
    pub fn start(cfg: &PprofPushConfig, registry: &Registry) -> anyhow::Result<Pusher> {
        let endpoint = Endpoint::parse(&cfg.url).map_err(|e| anyhow::anyhow!("[pprof_push] url: {e}"))?;
        let pushes = IntCounterVec::new(
            Opts::new("inferscope_pprof_pushes_total", "CPU profiles pushed to [pprof_push], by result: ok, rejected (non-2xx), failed (no answer), dropped (queue full)"),
            &["result"],
        )?;
        registry.register(Box::new(pushes.clone()))?;
        let (tx, rx) = sync_channel::<Push>(QUEUE);
        let timeout = Duration::from_secs_f64(cfg.timeout_seconds);
        let counters = pushes.clone();
        std::thread::Builder::new().name("pprof-push".into()).spawn(move || {
            let mut failing = false;
            for p in rx {
                let result = post(&endpoint, &p, timeout);
                let label = match &result {
                    Ok(s) if (200..300).contains(s) => "ok",
                    Ok(_) => "rejected",
                    Err(_) => "failed",
                };
                counters.with_label_values(&[label]).inc();
                match (label, failing) {
                    ("ok", true) => {
                        log::info!("pprof push: {}:{} accepts profiles again", endpoint.host, endpoint.port);
                        failing = false;
                    }
                    ("ok", false) => {}
                    (_, false) => {
                        let why = match result {
                            Ok(s) => format!("answered {s}"),
                            Err(e) => e,
                        };
                        log::warn!("pprof push to {}:{} failed ({why}); counted in inferscope_pprof_pushes_total, retried with the next profile", endpoint.host, endpoint.port);
                        failing = true;
                    }
                    (_, true) => {}
                }
            }
        })?;
        Ok(Pusher {
            tx,
            pushes,
            interval: Duration::from_secs_f64(cfg.interval_seconds),
            seconds: cfg.seconds,
            next: Instant::now() + Duration::from_secs_f64(cfg.interval_seconds.min(5.0)),
            turn: 0,
        })
    }

    /// The process to capture now, if a capture is due: the next of `pids` in turn.
    pub fn due(&mut self, now: Instant, pids: &mut [u32]) -> Option<u32> {
        if now < self.next || pids.is_empty() {
            return None;
        }
        self.next = now + self.interval;
        pids.sort_unstable();
        let pid = pids[self.turn % pids.len()];
        self.turn = self.turn.wrapping_add(1);
        Some(pid)
    }

    pub fn send(&self, p: Push) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(p) {
            self.pushes.with_label_values(&["dropped"]).inc();
        }
    }
}

/// `inferscope.cpu{service_name=…,namespace=…,pod=…,container=…}` with the non-empty labels;
/// values keep only characters the name syntax allows.
pub fn app_name(labels: &TargetLabels) -> String {
    let clean = |v: &str| -> String {
        v.chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':') { c } else { '_' })
            .take(MAX_LABEL)
            .collect()
    };
    let pairs: Vec<String> = [
        ("service_name", &labels.service),
        ("namespace", &labels.namespace),
        ("pod", &labels.pod),
        ("container", &labels.container),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={}", clean(v)))
    .collect();
    format!("inferscope.cpu{{{}}}", pairs.join(","))
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One POST; the answer's status.
fn post(ep: &Endpoint, p: &Push, timeout: Duration) -> Result<u16, String> {
    let (mut s, addr) = crate::export::otlp_http::connect(&ep.host, ep.port, timeout)?;
    let boundary =
        format!("inferscope-{:016x}", p.from_unix_s.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ p.pprof.len() as u64);
    let mut body = Vec::with_capacity(p.pprof.len() + 256);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&p.pprof);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let query = format!(
        "name={}&from={}&until={}&format=pprof&sampleRate=99&spyName=inferscope",
        query_escape(&p.name),
        p.from_unix_s,
        p.until_unix_s
    );
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: inferscope/{}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        ep.target(&query),
        ep.host,
        ep.port,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    s.write_all(head.as_bytes()).and_then(|()| s.write_all(&body)).map_err(|e| format!("send to {addr}: {e}"))?;
    let (status, _) =
        crate::export::otlp_http::read_response(&mut s).map_err(|e| format!("answer from {addr}: {e}"))?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        let e = Endpoint::parse("http://pyroscope.obs:4040").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.target("a=1")), ("pyroscope.obs", 4040, "/ingest?a=1".to_string()));
        let e = Endpoint::parse("http://127.0.0.1:9/p/").unwrap();
        assert_eq!(e.target("a=1"), "/p/ingest?a=1");
        assert_eq!(Endpoint::parse("http://[::1]:4040").unwrap().host, "[::1]");
        assert_eq!(Endpoint::parse("http://h").unwrap().port, 80);
        for bad in ["https://h:1", "h:1", "http://u:p@h:1", "http://h:1/?x=1", "http://", "http://h:99999"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn app_names_keep_only_safe_label_values() {
        let l = TargetLabels {
            service: "llama server".into(),
            namespace: "".into(),
            pod: "p{x}=1,y".into(),
            container: "".into(),
        };
        assert_eq!(app_name(&l), "inferscope.cpu{service_name=llama_server,pod=p_x__1_y}");
        assert_eq!(query_escape("a{b=c}"), "a%7Bb%3Dc%7D");
    }
}
