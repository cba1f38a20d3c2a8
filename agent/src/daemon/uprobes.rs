//! The uprobe pool: stage uprobes shared by every process that runs the same file, counted by
//! their users, and kept a while after the last one went. Creating a uprobe costs the kernel tens
//! of milliseconds here, so a churn of processes running one binary must not create one per
//! process, and a server restarting should find its probes still in place.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

use crate::bpf::{SocketProbes, StageLink};
use crate::stages::{StageDef, StageResolver};

/// One uprobe serves every process that runs the same file: (device, inode, offset, stage).
type UprobeKey = (u64, u64, u64, u32);

/// A followed process's stage set: where its functions are, and the shared uprobes it uses.
pub struct TargetStages {
    resolver: StageResolver,
    /// Stage index in the resolver's defs → global stage id (the uprobe cookie).
    stage_ids: Vec<u32>,
    /// Shared uprobes this process uses.
    probes: Vec<UprobeKey>,
}

impl TargetStages {
    /// How many probed functions the process uses.
    pub fn probed(&self) -> usize {
        self.probes.len()
    }
}

#[derive(Default)]
pub struct UprobePool {
    /// Shared uprobes: links, targets using it, and since when none does (it lingers a while,
    /// so a server restarting or a churn of short processes does not pay for a new one each time).
    uprobes: HashMap<UprobeKey, (Vec<StageLink>, usize, Option<Instant>)>,
    /// Global stage id (the uprobe cookie) → stage name, for every stage set in use so far.
    stage_names: Vec<String>,
}

impl UprobePool {
    /// Stage names by global stage id.
    pub fn stage_names(&self) -> &[String] {
        &self.stage_names
    }

    fn stage_id(&mut self, name: &str) -> u32 {
        match self.stage_names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                self.stage_names.push(name.to_string());
                (self.stage_names.len() - 1) as u32
            }
        }
    }

    /// `pid` uses the stage set `defs`: its functions are searched and probed now, and again by
    /// [`scan`](Self::scan) for libraries loaded later. Attach failures are counted in `errors`.
    pub fn start(
        &mut self,
        pid: u32,
        defs: Vec<StageDef>,
        probes: &mut SocketProbes,
        errors: &IntCounter,
    ) -> TargetStages {
        let stage_ids = defs.iter().map(|d| self.stage_id(&d.name)).collect();
        let mut t = TargetStages { resolver: StageResolver::new(pid, defs), stage_ids, probes: Vec::new() };
        self.scan(pid, &mut t, true, probes, errors);
        t
    }

    /// Attaches stage probes for modules not searched yet (dlopen'ed libraries arrive later).
    pub fn scan(
        &mut self,
        pid: u32,
        t: &mut TargetStages,
        first: bool,
        probes: &mut SocketProbes,
        errors: &IntCounter,
    ) {
        let t0 = Instant::now();
        let found = match t.resolver.scan(first) {
            Ok(f) => f,
            Err(e) => {
                // A stage set is a list of candidates; what this server lacks is not fatal.
                if first {
                    log::info!("pid {pid}: {e}");
                }
                return;
            }
        };
        log::debug!("pid {pid}: symbol scan {:?}", t0.elapsed());
        let defs: Vec<StageDef> = t.resolver.defs().to_vec();
        for a in found {
            use std::os::unix::fs::MetadataExt as _;
            let stage = t.stage_ids[a.stage as usize];
            // Held open while probing: `/proc/PID/root/…` vanishes with the process, our fd does not.
            let Ok(file) = std::fs::File::open(&a.open_path) else { continue };
            let Ok(md) = file.metadata() else { continue };
            let fd_path = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)));
            let key = (md.dev(), md.ino(), a.file_offset, stage);
            if t.probes.contains(&key) {
                continue;
            }
            if let Some((_, users, idle)) = self.uprobes.get_mut(&key) {
                *users += 1;
                *idle = None;
                t.probes.push(key);
                continue;
            }
            match probes.attach_stage(stage, &fd_path, a.file_offset, 0, true) {
                Ok(links) => {
                    self.uprobes.insert(key, (links, 1, None));
                    t.probes.push(key);
                }
                Err(e) => {
                    errors.inc();
                    log::warn!("pid {pid}: stage `{}`: {e}", defs[a.stage as usize].name);
                }
            }
        }
    }

    /// The process no longer uses its probes; returns how many are unused now (they linger).
    pub fn release(&mut self, t: &TargetStages) -> usize {
        let mut unused = 0;
        for key in &t.probes {
            if let Some((_, users, idle)) = self.uprobes.get_mut(key) {
                *users -= 1;
                if *users == 0 {
                    *idle = Some(Instant::now());
                    unused += 1;
                }
            }
        }
        unused
    }

    /// Detaches shared uprobes no target has used for `linger`.
    pub fn expire(&mut self, now: Instant, linger: Duration, probes: &mut SocketProbes) {
        let expired: Vec<UprobeKey> = self
            .uprobes
            .iter()
            .filter(|(_, (_, users, idle))| *users == 0 && idle.is_some_and(|t| now.duration_since(t) >= linger))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some((links, _, _)) = self.uprobes.remove(&key) {
                probes.detach_stages(links);
            }
        }
    }
}
