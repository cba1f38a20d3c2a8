//! Flamegraph capture for `/flamegraph.svg?pid=…&seconds=…`: one at a time, the server's task
//! asks over a channel, the loop samples the process's CPU for the window (its phase kept
//! current in the kernel meanwhile, its unwind tables following dlopen), then folds the samples and replies with the SVG.

use std::time::{Duration, Instant};

use super::server::FlamegraphRequest;
use crate::ingest::Ingest;

struct Capture {
    pid: u32,
    deadline: Instant,
    /// When the process's mappings were last looked at for new files (dlopen) to unwind.
    maps_seen: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>,
}

const MAPS_RESCAN: Duration = Duration::from_millis(200);

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
        let started = if self.profiler_started {
            ingest.probes.start_unwind(pid);
            ingest.set_phase_now(pid)
        } else {
            ingest.probes.start_profiler(pid, 99).and_then(|()| ingest.set_phase_now(pid))
        };
        if let Err(e) = started {
            let _ = reply.send(Err(format!("cannot sample CPU: {e}")));
            return;
        }
        self.profiler_started = true;
        let now = Instant::now();
        self.capture = Some(Capture { pid, deadline: now + Duration::from_secs_f64(seconds), maps_seen: now, reply });
    }

    /// Each poll: the captured process's phase goes to the kernel; at the deadline, the reply.
    pub fn poll(&mut self, ingest: &mut Ingest) {
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
                self.finish(ingest);
            }
        }
    }

    fn finish(&mut self, ingest: &mut Ingest) {
        let Some(c) = self.capture.take() else { return };
        let result = ingest.probes.read_samples().map_err(|e| e.to_string()).and_then(|mut raw| {
            raw.samples.retain(|(k, _)| k.tgid == c.pid);
            let comm = super::discover::facts(c.pid).map(|f| f.comm).unwrap_or_else(|| c.pid.to_string());
            let mut frames = crate::profile::UserFrames::new();
            let folded =
                crate::profile::fold(&raw, &mut self.symbolizer, &mut frames, &crate::profile::Kallsyms::load(), &comm);
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
        ingest.forget_profile(c.pid);
        let _ = c.reply.send(result);
    }
}
