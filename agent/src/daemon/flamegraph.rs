//! Flamegraph capture for `/flamegraph.svg?pid=…&seconds=…`: one at a time, the server's task
//! asks over a channel, the loop samples the process's CPU for the window (its phase kept
//! current in the kernel meanwhile, its unwind tables following dlopen), then folds the samples and replies with the SVG.
//! `[pprof_push]` captures use the same window and hand back a pprof profile instead.

use std::time::{Duration, Instant};

use super::server::FlamegraphRequest;
use crate::ingest::Ingest;

struct Capture {
    pid: u32,
    deadline: Instant,
    /// When the process's mappings were last looked at for new files (dlopen) to unwind.
    maps_seen: Instant,
    reply: Reply,
}

enum Reply {
    /// `/flamegraph.svg`: the SVG, or why not, to the server's task.
    Svg(tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>),
    /// `[pprof_push]`: a pprof profile under this application name, from the poll.
    Push { name: String, from_unix_ns: i64 },
}

const MAPS_RESCAN: Duration = Duration::from_millis(200);

fn unix_now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

#[derive(Default)]
pub struct Flamegraphs {
    profiler_started: bool,
    capture: Option<Capture>,
    symbolizer: crate::symbols::Symbolizer,
}

impl Flamegraphs {
    /// A capture is running (the next request waits on the channel).
    pub fn busy(&self) -> bool {
        self.capture.is_some()
    }

    /// Starts sampling `req.pid` (`followed`: whether it is a target) or replies why not.
    pub fn start(&mut self, req: FlamegraphRequest, followed: bool, ingest: &mut Ingest) {
        let FlamegraphRequest { pid, seconds, reply } = req;
        if !followed {
            let _ = reply.send(Err(format!("pid {pid} is not a followed process (see inferscope_targets)")));
            return;
        }
        if let Err((e, Capture { reply: Reply::Svg(reply), .. })) = self.begin(pid, seconds, Reply::Svg(reply), ingest)
        {
            let _ = reply.send(Err(format!("cannot sample CPU: {e}")));
        }
    }

    /// Starts a `[pprof_push]` capture of the followed process `pid`.
    pub fn start_push(&mut self, pid: u32, seconds: f64, name: String, ingest: &mut Ingest) {
        let from_unix_ns = unix_now_ns();
        if let Err((e, _)) = self.begin(pid, seconds, Reply::Push { name, from_unix_ns }, ingest) {
            log::warn!("pprof push: cannot sample CPU of pid {pid}: {e}");
        }
    }

    /// Starts the profiler on `pid` for `seconds`; on failure, why and the capture (its reply) back.
    fn begin(&mut self, pid: u32, seconds: f64, reply: Reply, ingest: &mut Ingest) -> Result<(), (String, Capture)> {
        let started = if self.profiler_started {
            ingest.probes.start_unwind(pid);
            ingest.set_phase_now(pid)
        } else {
            ingest.probes.start_profiler(pid, 99).and_then(|()| ingest.set_phase_now(pid))
        };
        let now = Instant::now();
        let capture = Capture { pid, deadline: now + Duration::from_secs_f64(seconds), maps_seen: now, reply };
        if let Err(e) = started {
            return Err((e.to_string(), capture));
        }
        self.profiler_started = true;
        self.capture = Some(capture);
        Ok(())
    }

    /// Each poll: the captured process's phase goes to the kernel; at the deadline, the reply
    /// (a push capture's profile is returned, for the pusher).
    pub fn poll(&mut self, ingest: &mut Ingest) -> Option<super::pprof_push::Push> {
        if let Some(c) = &mut self.capture {
            let now = Instant::now();
            let (pid, done) = (c.pid, now >= c.deadline);
            ingest.push_phase(pid);
            // A library dlopen'ed during the window gets its unwind table within 200 ms, as in
            // `attach` (one read of /proc/PID/maps when nothing changed).
            if now >= c.maps_seen + MAPS_RESCAN {
                c.maps_seen = now;
                if let Err(e) = ingest.probes.refresh_unwind(pid) {
                    log::debug!("unwind tables of pid {pid}: {e}");
                }
            }
            if done {
                return self.finish(ingest);
            }
        }
        None
    }

    fn finish(&mut self, ingest: &mut Ingest) -> Option<super::pprof_push::Push> {
        let c = self.capture.take()?;
        let folded = ingest.probes.read_samples().map_err(|e| e.to_string()).map(|mut raw| {
            raw.samples.retain(|(k, _)| k.tgid == c.pid);
            let comm = super::discover::facts(c.pid).map(|f| f.comm).unwrap_or_else(|| c.pid.to_string());
            let mut frames = crate::profile::UserFrames::new();
            let folded =
                crate::profile::fold(&raw, &mut self.symbolizer, &mut frames, &crate::profile::Kallsyms::load(), &comm);
            (comm, folded)
        });
        ingest.forget_profile(c.pid);
        match c.reply {
            Reply::Svg(reply) => {
                let svg = folded.and_then(|(comm, folded)| {
                    let stacks = folded.by_phase.get("all").filter(|s| !s.is_empty());
                    let Some(stacks) = stacks else {
                        return Err(format!("no CPU samples of pid {} in the window (idle?)", c.pid));
                    };
                    let mut opts = inferno::flamegraph::Options::default();
                    opts.title = format!("{comm} (pid {}) — {} samples at 99 Hz", c.pid, folded.samples);
                    let mut svg = Vec::new();
                    crate::profile::svg_of(stacks, &mut opts, &mut svg).map_err(|e| e.to_string())?;
                    Ok(svg)
                });
                let _ = reply.send(svg);
                None
            }
            Reply::Push { name, from_unix_ns } => {
                let (_, folded) = folded.map_err(|e| log::warn!("pprof push of pid {}: {e}", c.pid)).ok()?;
                if folded.samples == 0 {
                    return None; // idle: nothing to push
                }
                let until_unix_ns = unix_now_ns();
                let sampling = crate::profile::pprof::Sampling {
                    hz: Some(99),
                    start_unix_ns: from_unix_ns,
                    duration_ns: until_unix_ns - from_unix_ns,
                };
                let pprof = crate::profile::pprof::gzipped(&folded, sampling);
                Some(super::pprof_push::Push {
                    name,
                    from_unix_s: (from_unix_ns / 1_000_000_000) as u64,
                    until_unix_s: (until_unix_ns / 1_000_000_000).max(from_unix_ns / 1_000_000_000 + 1) as u64,
                    pprof,
                })
            }
        }
    }
}
