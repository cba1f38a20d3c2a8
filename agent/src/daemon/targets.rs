//! The followed processes. Following one starts it in the ingest core (its connections), gives
//! it its labels and its stage set's uprobes from the pool; letting it go ends its open streams
//! as partial records and hands its uprobes back. [`MetricsSink`] is the daemon's sink of the
//! ingest core: each finished request and stage call is counted under its process's labels.

use std::collections::HashMap;
use std::time::Instant;

use agent_common::StageEvent;

use super::cgroup::CgroupInfo;
use super::config::Rule;
use super::discover::{Match, ProcessId};
use super::labels::Labels;
use super::metrics::{Metrics, TargetLabels};
use super::uprobes::{TargetStages, UprobePool};
use crate::ingest::{Ingest, Sink};
use crate::tracker::Finished;

pub struct Target {
    pub id: ProcessId,
    /// Index of the rule that matched.
    pub rule: usize,
    pub cgroup: CgroupInfo,
    pub labels: TargetLabels,
    /// Its stage set, when its rule names one that loaded.
    stages: Option<TargetStages>,
    /// The followed process whose listening socket it serves (a pre-fork worker), if any.
    pub worker_of: Option<u32>,
}

pub struct Targets {
    by_pid: HashMap<u32, Target>,
    /// `max_targets` from the config.
    max: usize,
    /// libssl probes of the followed processes (one set per process).
    tls: crate::tls::TlsFollow,
    /// `[otlp]`: finished requests are exported there too.
    pub otlp: Option<super::otlp::OtlpExport>,
}

impl Targets {
    pub fn new(max: usize) -> Self {
        Self { by_pid: HashMap::new(), max, tls: crate::tls::TlsFollow::shared(), otlp: None }
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    pub fn get(&self, pid: u32) -> Option<&Target> {
        self.by_pid.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &Target)> {
        self.by_pid.iter()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.by_pid.keys().copied().collect()
    }

    /// Followed processes that are not workers of another: (pid, rule index).
    pub fn masters(&self) -> Vec<(u32, usize)> {
        self.by_pid.iter().filter(|(_, t)| t.worker_of.is_none()).map(|(p, t)| (*p, t.rule)).collect()
    }

    /// Marks a followed process as a worker of `master`.
    pub fn mark_worker(&mut self, pid: u32, master: u32) {
        if let Some(t) = self.by_pid.get_mut(&pid) {
            t.worker_of = Some(master);
        }
    }

    /// Targets that are not the process they were (exited, or the PID was reused).
    pub fn gone(&self) -> Vec<u32> {
        self.by_pid.iter().filter(|(_, t)| !t.id.alive()).map(|(p, _)| *p).collect()
    }

    /// The sink that counts the core's outputs under the targets' labels.
    pub fn sink<'a>(&'a mut self, metrics: &'a mut Metrics, stage_names: &'a [String]) -> MetricsSink<'a> {
        MetricsSink { targets: &self.by_pid, metrics, stage_names, otlp: self.otlp.as_mut() }
    }

    /// Follows the process `m` names, by its rule `rule`.
    pub fn follow(
        &mut self,
        m: Match,
        rule: &Rule,
        ingest: &mut Ingest,
        labels: &Labels,
        pool: &mut UprobePool,
        metrics: &mut Metrics,
    ) {
        let Match { id, rule: ri, facts, cgroup: cg, why } = m;
        let pid = id.pid;
        if self.by_pid.len() >= self.max {
            metrics.attach_errors.inc();
            log::warn!("not following pid {pid} ({}): max_targets = {} reached", facts.comm, self.max);
            return;
        }
        let existing = match ingest.follow(pid) {
            Ok(existing) => existing,
            Err(e) => {
                metrics.attach_errors.inc();
                log::warn!("cannot follow pid {pid}: {e}");
                return;
            }
        };
        self.tls.scan(&mut ingest.probes, pid);
        let labels = labels.of(rule, &cg);
        metrics.target_alive(&labels);
        let mut target = Target { id, rule: ri, cgroup: cg, labels, stages: None, worker_of: None };
        if !rule.stage_set.is_empty() {
            match crate::stages::stage_set::load_stage_set(&rule.stage_set) {
                Ok(defs) => target.stages = Some(pool.start(pid, defs, &mut ingest.probes, &metrics.attach_errors)),
                Err(e) => {
                    metrics.attach_errors.inc();
                    log::warn!("pid {pid}: stage set {}: {e}", rule.stage_set);
                }
            }
        }
        log::info!(
            "following pid {pid} ({}) by rule `{}` [{why}]: {} open connection(s) seeded, {} probed function(s), service={} namespace={} pod={} container={}",
            facts.comm,
            rule.name,
            existing,
            target.stages.as_ref().map_or(0, TargetStages::probed),
            target.labels.service,
            target.labels.namespace,
            target.labels.pod,
            target.labels.container
        );
        metrics.attaches.inc();
        self.by_pid.insert(pid, target);
    }

    /// Frees everything the process held; `why` goes to the log.
    pub fn unfollow(&mut self, pid: u32, why: &str, ingest: &mut Ingest, pool: &mut UprobePool, metrics: &mut Metrics) {
        if !self.by_pid.contains_key(&pid) {
            // Perhaps followed by the kernel from its exec, never confirmed: leave nothing behind.
            let _ = ingest.probes.unfollow(pid);
            return;
        }
        // Its streams still open end here, as partial records counted under its labels.
        let conns = ingest.unfollow(pid, "process exited mid-stream", &mut self.sink(metrics, pool.stage_names()));
        self.tls.forget(&mut ingest.probes, pid);
        let Some(t) = self.by_pid.remove(&pid) else { return };
        let uprobes = t.stages.as_ref().map_or(0, |s| pool.release(s));
        if !self.by_pid.values().any(|o| o.labels == t.labels) {
            metrics.target_gone(&t.labels, Instant::now());
            if let Some(o) = &mut self.otlp {
                o.target_gone(&t.labels);
            }
        }
        metrics.detaches.inc();
        log::info!(
            "stopped following pid {pid} ({why}): freed {conns} connection(s); {uprobes} probed function(s) now unused"
        );
    }

    /// The pod map changed: targets whose pod's record gives other labels take them.
    pub fn relabel(&mut self, labels: &Labels, rules: &[Rule], metrics: &mut Metrics) {
        let changed: Vec<(u32, TargetLabels)> = self
            .by_pid
            .iter()
            .filter_map(|(pid, t)| Some((*pid, labels.update(&rules[t.rule], &t.cgroup, &t.labels)?)))
            .collect();
        for (pid, labels) in changed {
            let Some(t) = self.by_pid.get_mut(&pid) else { continue };
            let old = std::mem::replace(&mut t.labels, labels.clone());
            // The old label set's series stay until the grace period ends, like those of a process gone.
            if !self.by_pid.values().any(|o| o.labels == old) {
                metrics.target_gone(&old, Instant::now());
                if let Some(o) = &mut self.otlp {
                    o.target_gone(&old);
                }
            }
            metrics.target_alive(&labels);
            log::info!(
                "pid {pid}: labelled from its pod: service={} namespace={} pod={} container={}",
                labels.service,
                labels.namespace,
                labels.pod,
                labels.container
            );
        }
    }

    /// Probes stage functions in libraries the targets loaded since the last look (dlopen).
    pub fn scan_stages(&mut self, ingest: &mut Ingest, pool: &mut UprobePool, metrics: &Metrics) {
        for (pid, t) in &mut self.by_pid {
            if let Some(stages) = &mut t.stages {
                pool.scan(*pid, stages, false, &mut ingest.probes, &metrics.attach_errors);
            }
        }
    }

    /// Probes TLS functions in files the targets mapped since the last look (a libssl loaded
    /// when the server first imports its TLS module).
    pub fn scan_tls(&mut self, ingest: &mut Ingest) {
        for pid in self.by_pid.keys() {
            self.tls.scan(&mut ingest.probes, *pid);
        }
    }
}

/// The daemon's sink: finished requests and stage calls of followed processes become metrics
/// under their target's labels.
pub struct MetricsSink<'a> {
    targets: &'a HashMap<u32, Target>,
    metrics: &'a mut Metrics,
    stage_names: &'a [String],
    otlp: Option<&'a mut super::otlp::OtlpExport>,
}

impl Sink for MetricsSink<'_> {
    fn request(&mut self, f: Finished) {
        if let Some(t) = self.targets.get(&f.tgid) {
            self.metrics.observe_request(&t.labels, &f.record);
            if let Some(o) = &mut self.otlp {
                o.record(&t.labels, &f.record);
            }
        }
    }

    fn stage(&mut self, ev: &StageEvent) {
        if let (Some(t), Some(name)) = (self.targets.get(&ev.tgid), self.stage_names.get(ev.stage as usize)) {
            self.metrics.observe_stage(&t.labels, name, ev.end_ns.saturating_sub(ev.start_ns) as f64 / 1e9);
        }
    }
}
