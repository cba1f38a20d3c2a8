//! The ingestion core shared by `attach` and the daemon: the probes, the rings and the
//! connection tracker, behind one interface. It follows and unfollows processes, drains the rings
//! in the documented order through the decoders of [`crate::event`], keeps the kernel's view of
//! each process's phase current, and hands typed outputs to a [`Sink`]: finished (or partial)
//! requests and stage calls. `attach`'s sink collects them for the report; the daemon's feeds
//! the metrics. Neither knows how records are read or decoded.

use std::collections::HashMap;

use agent_common::{ProcEvent, StageEvent};
use aya::maps::{MapData, RingBuf};

use crate::bpf::{ProbeError, SocketProbes};
use crate::capture::CaptureChoice;
use crate::tracker::{Finished, Tracker};

/// Where the typed outputs of the core go.
pub trait Sink {
    /// A finished exchange (complete or partial) of a followed process.
    fn request(&mut self, finished: Finished);
    /// One finished call of a probed function.
    fn stage(&mut self, _call: &StageEvent) {}
}

pub struct Ingest {
    pub probes: SocketProbes,
    pub tracker: Tracker,
    events: RingBuf<MapData>,
    stages: Option<RingBuf<MapData>>,
    procs: Option<RingBuf<MapData>>,
    /// Phase last written to the kernel, per profiled process.
    phases: HashMap<u32, u32>,
    finished: Vec<Finished>,
    /// Stage and process records that did not decode (short records).
    pub decode_errors: u64,
}

impl Ingest {
    /// Loads the probes with the stream capture `choice` allows, and takes the data ring.
    pub fn load(ring_bytes: u32, choice: CaptureChoice) -> Result<Self, ProbeError> {
        let mut probes = SocketProbes::load(ring_bytes, choice.with_env())?;
        let events = probes.take_events()?;
        Ok(Self {
            probes,
            tracker: Tracker::new(),
            events,
            stages: None,
            procs: None,
            phases: HashMap::new(),
            finished: Vec::new(),
            decode_errors: 0,
        })
    }

    /// Starts following `pid` (its connections, on the capture path in use); returns how many
    /// connections it already held that the parser joins mid-stream.
    pub fn follow(&mut self, pid: u32) -> Result<usize, ProbeError> {
        let existing = self.probes.follow(pid)?;
        for &conn in &existing {
            self.tracker.add_existing(pid, conn);
        }
        Ok(existing.len())
    }

    /// Stops following `pid` (`reason`: why its streams end, for partial records); frees its
    /// kernel entries and profile counts. Returns the kernel connections freed.
    pub fn unfollow(&mut self, pid: u32, reason: &'static str, sink: &mut impl Sink) -> usize {
        let freed = self.probes.unfollow(pid).unwrap_or(0);
        self.probes.forget_profile(pid);
        self.phases.remove(&pid);
        self.tracker.forget_process(pid, reason, &mut self.finished);
        for f in self.finished.drain(..) {
            sink.request(f);
        }
        freed
    }

    /// Stage records are read from here on (the programs load with the first stage attached).
    pub fn enable_stages(&mut self) -> Result<(), ProbeError> {
        if self.stages.is_none() {
            self.stages = Some(self.probes.take_stage_events()?);
        }
        Ok(())
    }

    /// Exec/exit records for every process flow from here on (daemon discovery).
    pub fn enable_process_events(&mut self) -> Result<(), ProbeError> {
        if self.procs.is_none() {
            self.procs = Some(self.probes.start_proc_events()?);
        }
        Ok(())
    }

    /// Exec/exit records since the last call. The daemon reads them *before* [`drain`]: a new
    /// target's data records are already on the data ring and must find it followed.
    ///
    /// [`drain`]: Self::drain
    pub fn process_events(&mut self) -> Vec<ProcEvent> {
        let mut out = Vec::new();
        if let Some(ring) = &mut self.procs {
            while let Some(item) = ring.next() {
                match crate::event::decode_proc(&item) {
                    Ok(ev) => out.push(ev),
                    Err(_) => self.decode_errors += 1,
                }
            }
        }
        out
    }

    /// Everything the data and stage rings hold now, decoded and handed to `sink`.
    pub fn drain(&mut self, sink: &mut impl Sink) {
        while let Some(item) = self.events.next() {
            self.tracker.handle(&item, &mut self.finished);
        }
        for f in self.finished.drain(..) {
            sink.request(f);
        }
        if let Some(ring) = &mut self.stages {
            while let Some(item) = ring.next() {
                match crate::event::decode_stage(&item) {
                    Ok(ev) => sink.stage(&ev),
                    Err(_) => self.decode_errors += 1,
                }
            }
        }
    }

    /// Writes `pid`'s phase (from its live streams) to the kernel when it changed, so samples
    /// are tagged with it.
    pub fn push_phase(&mut self, pid: u32) {
        let phase = self.tracker.phase(pid);
        if self.phases.get(&pid) != Some(&phase) && self.probes.set_phase(pid, phase).is_ok() {
            self.phases.insert(pid, phase);
        }
    }

    /// Sets `pid`'s phase in the kernel now (profiling starts for it) and remembers it.
    pub fn set_phase_now(&mut self, pid: u32) -> Result<(), ProbeError> {
        let phase = self.tracker.phase(pid);
        self.probes.set_phase(pid, phase)?;
        self.phases.insert(pid, phase);
        Ok(())
    }

    /// Stops profiling `pid` and drops its counts (its streams are still followed).
    pub fn forget_profile(&mut self, pid: u32) {
        self.probes.forget_profile(pid);
        self.phases.remove(&pid);
    }

    /// Streams with no event for `idle` end as partial records (see [`Tracker::expire_idle`]).
    ///
    /// [`Tracker::expire_idle`]: crate::tracker::Tracker::expire_idle
    pub fn expire_idle(&mut self, idle: std::time::Duration, sink: &mut impl Sink) {
        let now = crate::event::monotonic_ns();
        if self.tracker.expire_idle(now, idle.as_nanos() as u64, &mut self.finished) > 0 {
            for f in self.finished.drain(..) {
                sink.request(f);
            }
        }
    }

    /// The run is over: streams still open come out as partial records with `reason`.
    pub fn finish(&mut self, reason: &'static str, sink: &mut impl Sink) {
        self.drain(sink);
        self.tracker.finish_all(reason, &mut self.finished);
        for f in self.finished.drain(..) {
            sink.request(f);
        }
    }
}
