//! `inferscope agent --config FILE`: one long-running agent for a whole node.
//!
//! One set of kernel programs serves every target: the socket tracepoints filter on the
//! `TARGETS` map, stage uprobes are attached per process with its PID as scope. Discovery is
//! event-driven — exec records for every process and exit records for targets arrive on their
//! own ring buffer — and a periodic /proc reconcile catches what the ring could not deliver.
//! Identity is (PID, start time), so a reused PID is a new process. Everything a target owns in
//! the kernel (TARGETS, CONNS and profile entries, uprobes) is freed when it exits or execs.
//! Labels come from the rule, the process's cgroup (container ID, pod UID) and, in a cluster, the
//! pod that UID names (`kube`): processes are labelled again, and rules with `pod_labels` tried
//! again, when the pod map changes.

pub mod cgroup;
pub mod config;
pub mod discover;
pub mod kube;
pub mod metrics;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_common::{proc_event, ProcEvent, StageEvent};

use self::kube::{PodIndex, PodRecord};
use crate::bpf::{KernelCounters, StageLink};
use crate::ingest::{Ingest, Sink};
use crate::stages::{StageDef, StageResolver};
use crate::tracker::Finished;
pub use config::{Config, Rule};
use discover::ProcessId;
use metrics::{Metrics, TargetLabels};
use server::{FlamegraphRequest, Shared};

/// Processes that matched a rule's identity but not (yet) its ports, re-checked each second.
const MAX_CANDIDATES: usize = 1024;
/// How long such a process may take to open its port.
const CANDIDATE_PATIENCE: Duration = Duration::from_secs(600);
/// How long a process in a pod the API has not told about yet is tried again as soon as the pod
/// arrives (after that, only the reconcile pass tries it).
const POD_PATIENCE: Duration = Duration::from_secs(120);
/// How long the start waits for the first pod list, so existing processes get their pod labels
/// at once instead of being labelled twice.
const FIRST_POD_LIST_WAIT: Duration = Duration::from_secs(3);

struct Target {
    id: ProcessId,
    /// Index of the rule that matched.
    rule: usize,
    cgroup: cgroup::CgroupInfo,
    labels: TargetLabels,
    resolver: Option<StageResolver>,
    /// Stage index in the resolver's defs → global stage id (the uprobe cookie).
    stage_ids: Vec<u32>,
    /// Shared uprobes this process uses.
    probes: Vec<UprobeKey>,
}

/// One uprobe serves every process that runs the same file: (device, inode, offset, stage).
/// Creating a uprobe costs the kernel tens of milliseconds here, so a churn of processes running
/// one binary must not create one per process.
type UprobeKey = (u64, u64, u64, u32);

struct Capture {
    pid: u32,
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>,
}

pub struct Daemon {
    cfg: Config,
    /// Probes, rings and connection tracker (shared with `attach`).
    ingest: Ingest,
    metrics: Metrics,
    targets: HashMap<u32, Target>,
    /// PID → (identity, rule index, first seen) of port-rule candidates.
    candidates: HashMap<u32, (ProcessId, usize, Instant)>,
    /// Shared uprobes and how many targets use each.
    /// Shared uprobes: links, targets using it, and since when none does (it lingers a while,
    /// so a server restarting or a churn of short processes does not pay for a new one each time).
    uprobes: HashMap<UprobeKey, (Vec<StageLink>, usize, Option<Instant>)>,
    /// Targets whose exit was seen, detached after their remaining records are read.
    exited: Vec<u32>,
    stage_names: Vec<String>,
    last_kernel: KernelCounters,
    last_parse: BTreeMap<&'static str, u64>,
    profiler_started: bool,
    capture: Option<Capture>,
    symbolizer: crate::symbols::Symbolizer,
    gpu: Option<crate::gpu::GpuTelemetry>,
    last_gpu_errors: BTreeMap<&'static str, u64>,
    /// This node's pods from the Kubernetes API (empty outside a cluster).
    pods: Arc<PodIndex>,
    /// The pod map's generation the targets were last labelled with.
    pods_seen: u64,
    /// PID → (identity, pod UID, since) of processes in a pod the API has not told about yet,
    /// which a `pod_labels` rule might match once it does.
    awaiting_pod: HashMap<u32, (ProcessId, String, Instant)>,
    last_kube_errors: u64,
    last_kube_dropped: u64,
}

/// A target's labels: `service` from the rule, else the pod's app name, else the rule's name;
/// namespace, pod and container name from the pod record; outside a cluster (or before the API
/// told about the pod) only `container`, as the short container ID from the cgroup.
fn target_labels(rule: &Rule, cg: &cgroup::CgroupInfo, pod: Option<&PodRecord>) -> TargetLabels {
    let short_id = cg.container_id.as_deref().map(|c| c[..c.len().min(12)].to_string()).unwrap_or_default();
    let service = if !rule.service.is_empty() {
        rule.service.clone()
    } else {
        pod.and_then(PodRecord::app_name).unwrap_or(&rule.name).to_string()
    };
    match pod {
        Some(p) => TargetLabels {
            service,
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            container: cg.container_id.as_deref().and_then(|c| p.containers.get(c)).cloned().unwrap_or(short_id),
        },
        None => TargetLabels { service, namespace: String::new(), pod: String::new(), container: short_id },
    }
}

impl Daemon {
    fn new(cfg: Config, ingest: Ingest) -> Self {
        let metrics = Metrics::new(cfg.max_series);
        Self {
            cfg,
            ingest,
            metrics,
            targets: HashMap::new(),
            candidates: HashMap::new(),
            uprobes: HashMap::new(),
            exited: Vec::new(),
            stage_names: Vec::new(),
            last_kernel: KernelCounters::default(),
            last_parse: BTreeMap::new(),
            profiler_started: false,
            capture: None,
            symbolizer: crate::symbols::Symbolizer::new(),
            gpu: None,
            last_gpu_errors: BTreeMap::new(),
            pods: Arc::new(PodIndex::new(1)),
            pods_seen: 0,
            awaiting_pod: HashMap::new(),
            last_kube_errors: 0,
            last_kube_dropped: 0,
        }
    }

    /// The API's record of the pod a process's cgroup names.
    fn pod_of(&self, cg: &cgroup::CgroupInfo) -> Option<Arc<PodRecord>> {
        cg.pod_uid.as_deref().and_then(|uid| self.pods.get(uid))
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

    /// Looks at one process: attaches when a rule matches. `why` is counted as a discovery input.
    fn consider(&mut self, pid: u32, why: &'static str) {
        if self.targets.contains_key(&pid) || pid == std::process::id() {
            return;
        }
        // The kernel may have started following it at exec (its name is one a rule names): the
        // entry stays only if the whole rule matches.
        let provisional = why == "exec";
        let drop_provisional = |d: &mut Self| {
            if provisional {
                let _ = d.ingest.probes.unfollow(pid);
            }
        };
        let (Some(id), Some(mut facts)) = (ProcessId::of(pid), discover::facts(pid)) else {
            drop_provisional(self);
            return;
        };
        let cg = cgroup::of_process(pid);
        let pod = self.pod_of(&cg);
        facts.pod_labels = pod.as_ref().map(|p| p.labels.clone());
        let Some(ri) = self.cfg.rules.iter().position(|r| r.matches_identity(&facts)) else {
            drop_provisional(self);
            // In a pod the API has not told about yet (a container often starts before the
            // watch event arrives): try again when it does.
            if let (None, Some(uid)) = (&pod, &cg.pod_uid) {
                let waits = self.pods.enabled()
                    && self.awaiting_pod.len() < MAX_CANDIDATES
                    && self.cfg.rules.iter().any(|r| !r.pod_labels.is_empty());
                if waits {
                    self.awaiting_pod.entry(pid).or_insert((id, uid.clone(), Instant::now()));
                }
            }
            return;
        };
        if !self.cfg.rules[ri].ports.is_empty() {
            facts.listening = discover::listening_ports(pid);
            if !self.cfg.rules[ri].matches(&facts) {
                drop_provisional(self);
                if self.candidates.len() < MAX_CANDIDATES {
                    self.candidates.entry(pid).or_insert((id, ri, Instant::now()));
                }
                return;
            }
        }
        self.candidates.remove(&pid);
        self.awaiting_pod.remove(&pid);
        self.attach(id, ri, &facts, &cg, why);
    }

    /// When the pod map changed: followed processes take their pod's labels (the pod may have
    /// arrived after them, or changed), and processes that waited for their pod are tried again.
    fn sync_pods(&mut self) {
        let generation = self.pods.generation();
        if generation == self.pods_seen {
            return;
        }
        self.pods_seen = generation;
        let relabel: Vec<(u32, TargetLabels)> = self
            .targets
            .iter()
            .filter_map(|(pid, t)| {
                // A pod gone from the API (deleted, or the map was full) leaves the labels as they were.
                let pod = self.pod_of(&t.cgroup)?;
                let labels = target_labels(&self.cfg.rules[t.rule], &t.cgroup, Some(&pod));
                (labels != t.labels).then_some((*pid, labels))
            })
            .collect();
        for (pid, labels) in relabel {
            self.relabel(pid, labels);
        }
        let known: Vec<u32> =
            self.awaiting_pod.iter().filter(|(_, (_, uid, _))| self.pods.get(uid).is_some()).map(|(p, _)| *p).collect();
        for pid in known {
            self.awaiting_pod.remove(&pid);
            self.consider(pid, "pod known");
        }
    }

    fn relabel(&mut self, pid: u32, labels: TargetLabels) {
        let Some(t) = self.targets.get_mut(&pid) else { return };
        let old = std::mem::replace(&mut t.labels, labels.clone());
        // The old label set's series stay until the grace period ends, like those of a process gone.
        if !self.targets.values().any(|o| o.labels == old) {
            self.metrics.target_gone(&old, Instant::now());
        }
        self.metrics.target_alive(&labels);
        log::info!(
            "pid {pid}: labelled from its pod: service={} namespace={} pod={} container={}",
            labels.service,
            labels.namespace,
            labels.pod,
            labels.container
        );
    }

    fn attach(&mut self, id: ProcessId, ri: usize, facts: &config::ProcessFacts, cg: &cgroup::CgroupInfo, why: &str) {
        let pid = id.pid;
        if self.targets.len() >= self.cfg.max_targets {
            self.metrics.attach_errors.inc();
            log::warn!("not following pid {pid} ({}): max_targets = {} reached", facts.comm, self.cfg.max_targets);
            return;
        }
        let rule = self.cfg.rules[ri].clone();
        let existing = match self.ingest.follow(pid) {
            Ok(existing) => existing,
            Err(e) => {
                self.metrics.attach_errors.inc();
                log::warn!("cannot follow pid {pid}: {e}");
                return;
            }
        };
        let labels = target_labels(&rule, cg, self.pod_of(cg).as_deref());
        self.metrics.target_alive(&labels);
        let mut target = Target {
            id,
            rule: ri,
            cgroup: cg.clone(),
            labels,
            resolver: None,
            stage_ids: Vec::new(),
            probes: Vec::new(),
        };
        if !rule.profile.is_empty() {
            match crate::stages::profile::load_profile(&rule.profile) {
                Ok(defs) => {
                    target.stage_ids = defs.iter().map(|d| self.stage_id(&d.name)).collect();
                    target.resolver = Some(StageResolver::new(pid, defs));
                    self.scan_stages(&mut target, true);
                }
                Err(e) => {
                    self.metrics.attach_errors.inc();
                    log::warn!("pid {pid}: profile {}: {e}", rule.profile);
                }
            }
        }
        log::info!(
            "following pid {pid} ({}) by rule `{}` [{why}]: {} open connection(s) seeded, {} probed function(s), service={} namespace={} pod={} container={}",
            facts.comm,
            rule.name,
            existing,
            target.probes.len(),
            target.labels.service,
            target.labels.namespace,
            target.labels.pod,
            target.labels.container
        );
        self.metrics.attaches.inc();
        self.targets.insert(pid, target);
    }

    /// Attaches stage probes for modules not searched yet (dlopen'ed libraries arrive later).
    fn scan_stages(&mut self, t: &mut Target, first: bool) {
        let Some(r) = &mut t.resolver else { return };
        let t0 = Instant::now();
        let found = match r.scan(first) {
            Ok(f) => f,
            Err(e) => {
                // A profile is a list of candidates; what this server lacks is not fatal.
                if first {
                    log::info!("pid {}: {e}", t.id.pid);
                }
                return;
            }
        };
        log::debug!("pid {}: symbol scan {:?}", t.id.pid, t0.elapsed());
        let defs: Vec<StageDef> = r.defs().to_vec();
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
            match self.ingest.probes.attach_stage(stage, &fd_path, a.file_offset, 0, true) {
                Ok(links) => {
                    self.uprobes.insert(key, (links, 1, None));
                    t.probes.push(key);
                }
                Err(e) => {
                    self.metrics.attach_errors.inc();
                    log::warn!("pid {}: stage `{}`: {e}", t.id.pid, defs[a.stage as usize].name);
                }
            }
        }
    }

    /// Frees everything the process held; `why` goes to the log.
    fn detach(&mut self, pid: u32, why: &str) {
        if !self.targets.contains_key(&pid) {
            // Perhaps followed by the kernel from its exec, never confirmed: leave nothing behind.
            let _ = self.ingest.probes.unfollow(pid);
            return;
        }
        // Its streams still open end here, as partial records counted under its labels.
        let mut sink =
            MetricsSink { targets: &self.targets, metrics: &mut self.metrics, stage_names: &self.stage_names };
        let conns = self.ingest.unfollow(pid, "process exited mid-stream", &mut sink);
        let Some(t) = self.targets.remove(&pid) else { return };
        let mut uprobes = 0;
        for key in &t.probes {
            if let Some((_, users, idle)) = self.uprobes.get_mut(key) {
                *users -= 1;
                if *users == 0 {
                    *idle = Some(Instant::now());
                    uprobes += 1;
                }
            }
        }
        if !self.targets.values().any(|o| o.labels == t.labels) {
            self.metrics.target_gone(&t.labels, Instant::now());
        }
        self.metrics.detaches.inc();
        log::info!(
            "stopped following pid {pid} ({why}): freed {conns} connection(s); {uprobes} probed function(s) now unused"
        );
    }

    fn on_proc_event(&mut self, ev: &ProcEvent) {
        match ev.kind {
            proc_event::EXEC => {
                self.metrics.discovery.with_label_values(&["exec"]).inc();
                let lag = crate::event::monotonic_ns().saturating_sub(ev.ts_ns);
                log::debug!("exec of pid {} seen {:.1} ms later", ev.tgid, lag as f64 / 1e6);
                if self.targets.contains_key(&ev.tgid) {
                    // Same PID, new program: the old probes and parser state mean nothing now.
                    self.detach(ev.tgid, "exec");
                }
                self.candidates.remove(&ev.tgid);
                self.awaiting_pod.remove(&ev.tgid);
                self.consider(ev.tgid, "exec");
            }
            proc_event::EXIT => {
                self.metrics.discovery.with_label_values(&["exit"]).inc();
                // Its last socket and stage records may still be unread on the other rings:
                // detach after the next drain of those.
                self.exited.push(ev.tgid);
            }
            _ => {}
        }
    }

    /// Full /proc pass: dead or replaced targets go, matching processes come.
    fn reconcile(&mut self) {
        self.metrics.discovery.with_label_values(&["reconcile"]).inc();
        let dead: Vec<u32> = self.targets.iter().filter(|(_, t)| !t.id.alive()).map(|(p, _)| *p).collect();
        for pid in dead {
            self.detach(pid, "gone (reconcile)");
        }
        for pid in discover::all_pids() {
            self.consider(pid, "scan");
        }
    }

    /// Each second: candidates, dlopen rescans, liveness, health metrics, series expiry.
    fn every_second(&mut self) {
        let now = Instant::now();
        let cands: Vec<(u32, ProcessId, usize, Instant)> =
            self.candidates.iter().map(|(p, (id, ri, t))| (*p, *id, *ri, *t)).collect();
        for (pid, id, ri, since) in cands {
            if !id.alive() || now.duration_since(since) > CANDIDATE_PATIENCE {
                self.candidates.remove(&pid);
                continue;
            }
            let mut facts = discover::facts(pid).unwrap_or_default();
            facts.listening = discover::listening_ports(pid);
            if self.cfg.rules[ri].matches(&facts) {
                self.candidates.remove(&pid);
                self.attach(id, ri, &facts, &cgroup::of_process(pid), "port opened");
            }
        }
        self.awaiting_pod.retain(|_, (id, _, since)| now.duration_since(*since) < POD_PATIENCE && id.alive());
        let pids: Vec<u32> = self.targets.keys().copied().collect();
        for pid in pids {
            let Some(mut t) = self.targets.remove(&pid) else { continue };
            if !t.id.alive() {
                self.targets.insert(pid, t);
                self.detach(pid, "gone");
                continue;
            }
            self.scan_stages(&mut t, false);
            self.targets.insert(pid, t);
        }
        self.expire_uprobes(now, Duration::from_secs_f64(self.cfg.uprobe_linger_seconds));
        self.update_health();
        self.update_gpu();
        self.metrics.sweep(now, Duration::from_secs_f64(self.cfg.series_grace_seconds));
    }

    /// Detaches shared uprobes no target has used for `linger`.
    fn expire_uprobes(&mut self, now: Instant, linger: Duration) {
        let expired: Vec<UprobeKey> = self
            .uprobes
            .iter()
            .filter(|(_, (_, users, idle))| *users == 0 && idle.is_some_and(|t| now.duration_since(t) >= linger))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some((links, _, _)) = self.uprobes.remove(&key) {
                self.ingest.probes.detach_stages(links);
            }
        }
    }

    /// NVML's latest sample as DCGM-like gauges; per-process use joined to targets by PID.
    fn update_gpu(&mut self) {
        let Some(gpu) = &self.gpu else { return };
        for (call, n) in gpu.errors() {
            let before = self.last_gpu_errors.insert(call, n).unwrap_or(0);
            self.metrics.gpu_errors.with_label_values(&[call]).inc_by(n.saturating_sub(before));
        }
        let Some(snap) = gpu.latest() else { return };
        for d in &snap.devices {
            let idx = d.index.to_string();
            let labels = [idx.as_str(), d.uuid.as_deref().unwrap_or(""), d.name.as_deref().unwrap_or("")];
            let fields: [(&str, Option<f64>); 8] = [
                ("util", d.util_pct.map(f64::from)),
                ("mem_util", d.mem_util_pct.map(f64::from)),
                ("fb_used", d.fb_used_bytes.map(|v| v as f64)),
                ("fb_total", d.fb_total_bytes.map(|v| v as f64)),
                ("power", d.power_w),
                ("temp", d.temp_c.map(f64::from)),
                ("sm_clock", d.sm_clock_hz.map(|v| v as f64)),
                ("throttle", d.throttle_reasons.map(|v| v as f64)),
            ];
            for (field, value) in fields {
                if let (Some(v), Some(g)) = (value, self.metrics.gpu_device.get(field)) {
                    g.with_label_values(&labels).set(v);
                }
            }
        }
        for p in &snap.processes {
            let Some(t) = self.targets.get(&p.pid) else { continue };
            let (labels, gpu) = (t.labels.clone(), p.gpu.to_string());
            if let Some(v) = p.fb_used_bytes {
                self.metrics.set_gpu_process(&labels, &gpu, "fb_used", v as f64);
            }
            if let Some(v) = p.sm_util_pct {
                self.metrics.set_gpu_process(&labels, &gpu, "sm_util", f64::from(v));
            }
        }
    }

    fn update_health(&mut self) {
        let k = self.ingest.probes.counters();
        let lost = [
            ("read", k.lost_reads, self.last_kernel.lost_reads),
            ("write", k.lost_writes, self.last_kernel.lost_writes),
            ("accept", k.lost_accepts, self.last_kernel.lost_accepts),
            ("close", k.lost_closes, self.last_kernel.lost_closes),
            ("stage", k.stage_lost, self.last_kernel.stage_lost),
            ("proc", k.proc_events_lost, self.last_kernel.proc_events_lost),
            ("args_map_full", k.args_map_full, self.last_kernel.args_map_full),
            ("conns_map_full", k.conns_map_full, self.last_kernel.conns_map_full),
            ("samples_map_full", k.samples_map_full, self.last_kernel.samples_map_full),
            ("offcpu_map_full", k.offcpu_map_full, self.last_kernel.offcpu_map_full),
        ];
        for (kind, now, before) in lost {
            self.metrics.events_lost.with_label_values(&[kind]).inc_by(now.saturating_sub(before));
        }
        self.last_kernel = k;
        let p = self.ingest.tracker.parse_counters();
        let parse = [
            ("bad_head", p.bad_heads),
            ("bad_chunk", p.bad_chunks),
            ("framing_lost", p.framing_lost),
            ("unmatched_response", p.unmatched_responses),
            ("aborted", p.aborted),
            ("partial", p.partial),
            ("decode_error", self.ingest.tracker.events.decode_errors),
            ("connections_dropped", self.ingest.tracker.events.connections_dropped),
        ];
        for (kind, now) in parse {
            let before = self.last_parse.insert(kind, now).unwrap_or(0);
            self.metrics.parse_errors.with_label_values(&[kind]).inc_by(now.saturating_sub(before));
        }
        for (name, n, cap) in self.ingest.probes.map_fill() {
            self.metrics.map_fill.with_label_values(&[name]).set(n as f64 / f64::from(cap));
        }
        self.metrics.targets.set(self.targets.len() as i64);
        let kube = self.pods.health();
        self.metrics.kube_enabled.set(i64::from(kube.enabled));
        self.metrics.kube_up.set(i64::from(kube.up));
        self.metrics.kube_pods.set(kube.pods as i64);
        self.metrics.kube_errors.inc_by(kube.errors.saturating_sub(self.last_kube_errors));
        self.metrics.kube_pods_dropped.inc_by(kube.dropped.saturating_sub(self.last_kube_dropped));
        (self.last_kube_errors, self.last_kube_dropped) = (kube.errors, kube.dropped);
        self.metrics.probes_attached.set(self.ingest.probes.uprobes_attached as i64);
        let mut in_flight: HashMap<TargetLabels, usize> = HashMap::new();
        for (pid, t) in &self.targets {
            *in_flight.entry(t.labels.clone()).or_default() += self.ingest.tracker.in_flight_of(*pid);
        }
        for (labels, n) in in_flight {
            self.metrics.set_in_flight(&labels, n);
        }
    }

    fn start_capture(&mut self, req: FlamegraphRequest) {
        let FlamegraphRequest { pid, seconds, reply } = req;
        if !self.targets.contains_key(&pid) {
            let _ = reply.send(Err(format!("pid {pid} is not a followed process (see inferscope_targets)")));
            return;
        }
        let started = if self.profiler_started {
            self.ingest.probes.start_unwind(pid);
            self.ingest.set_phase_now(pid)
        } else {
            self.ingest.probes.start_profiler(pid, 99).and_then(|()| self.ingest.set_phase_now(pid))
        };
        if let Err(e) = started {
            let _ = reply.send(Err(format!("cannot sample CPU: {e}")));
            return;
        }
        self.profiler_started = true;
        self.capture = Some(Capture { pid, deadline: Instant::now() + Duration::from_secs_f64(seconds), reply });
    }

    fn finish_capture(&mut self) {
        let Some(c) = self.capture.take() else { return };
        let result = self.ingest.probes.read_samples().map_err(|e| e.to_string()).and_then(|mut raw| {
            raw.samples.retain(|(k, _)| k.tgid == c.pid);
            let comm = discover::facts(c.pid).map(|f| f.comm).unwrap_or_else(|| c.pid.to_string());
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
        self.ingest.forget_profile(c.pid);
        let _ = c.reply.send(result);
    }

    /// One poll: exec/exit records first (a new target's records are already on the data rings),
    /// then the data and stage rings, then exits (every record of a process that exited before
    /// its exit record was read is on the data rings by then).
    fn drain(&mut self) {
        self.sync_pods();
        for ev in self.ingest.process_events() {
            self.on_proc_event(&ev);
        }
        let mut sink =
            MetricsSink { targets: &self.targets, metrics: &mut self.metrics, stage_names: &self.stage_names };
        self.ingest.drain(&mut sink);
        for pid in std::mem::take(&mut self.exited) {
            self.detach(pid, "exit");
        }
        if let Some(c) = &self.capture {
            let (pid, done) = (c.pid, Instant::now() >= c.deadline);
            self.ingest.push_phase(pid);
            if done {
                self.finish_capture();
            }
        }
    }
}

/// The daemon's sink: finished requests and stage calls of followed processes become metrics
/// under their target's labels.
struct MetricsSink<'a> {
    targets: &'a HashMap<u32, Target>,
    metrics: &'a mut Metrics,
    stage_names: &'a [String],
}

impl Sink for MetricsSink<'_> {
    fn request(&mut self, f: Finished) {
        if let Some(t) = self.targets.get(&f.tgid) {
            self.metrics.observe_request(&t.labels, &f.record);
        }
    }

    fn stage(&mut self, ev: &StageEvent) {
        if let (Some(t), Some(name)) = (self.targets.get(&ev.tgid), self.stage_names.get(ev.stage as usize)) {
            self.metrics.observe_stage(&t.labels, name, ev.end_ns.saturating_sub(ev.start_ns) as f64 / 1e9);
        }
    }
}

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(cfg: Config, config_path: PathBuf) -> anyhow::Result<()> {
    crate::bpf::check_daemon_capabilities()?;
    let listener = server::bind(cfg.listen).await?;
    let auth = server::Auth::load(cfg.metrics_bearer_token_file.as_deref())?;
    let (fg_tx, mut fg_rx) = tokio::sync::mpsc::channel::<FlamegraphRequest>(4);
    let ingest = Ingest::load(cfg.ring_buffer_bytes, cfg.capture)?;
    let mut daemon = Daemon::new(cfg, ingest);
    daemon.metrics.capture_info.with_label_values(&[daemon.ingest.probes.mode.name()]).set(1);
    let shared = Arc::new(Shared {
        registry: daemon.metrics.registry.clone(),
        ready: false.into(),
        last_tick_ms: server::now_ms().into(),
        refused_connections: 0.into(),
        bad_requests: 0.into(),
        flamegraphs: fg_tx,
    });
    let addr = listener.local_addr()?;
    tokio::spawn(server::serve(listener, shared.clone(), auth));
    daemon.ingest.enable_process_events()?;
    for rule in &daemon.cfg.rules {
        for comm in rule.comm.iter().filter(|c| !c.contains(['*', '?'])) {
            daemon.ingest.probes.watch_comm(comm)?;
        }
    }
    // Loading (verifying) the stage programs takes a while: do it now, not at the first exec.
    if daemon.cfg.rules.iter().any(|r| !r.profile.is_empty()) {
        daemon.ingest.probes.load_stage_programs()?;
    }
    daemon.ingest.enable_stages()?;
    // Pod metadata on its own thread; the loop only reads its map.
    daemon.pods = self::kube::start(&daemon.cfg);
    let t0 = Instant::now();
    while daemon.pods.starting() && t0.elapsed() < FIRST_POD_LIST_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.pods_seen = daemon.pods.generation();
    // Exec records flow from here on; the scan covers what started before.
    daemon.reconcile();
    if daemon.cfg.gpu_sample_hz > 0.0 {
        let gpu = crate::gpu::GpuTelemetry::start(crate::gpu::GpuOptions {
            library: daemon.cfg.nvml_library.clone(),
            hz: daemon.cfg.gpu_sample_hz,
            ..crate::gpu::GpuOptions::default()
        });
        let status = gpu.status();
        if status.enabled {
            log::info!("GPU telemetry on: {} device(s) at {} Hz", status.devices, daemon.cfg.gpu_sample_hz);
            daemon.metrics.gpu_enabled.set(1);
        } else {
            // Said once; everything else works without it.
            log::info!("{}", status.reason.unwrap_or_else(|| "GPU telemetry off".into()));
        }
        daemon.gpu = Some(gpu);
    } else {
        log::info!("GPU telemetry off: gpu_sample_hz = 0 in the config");
    }
    shared.ready.store(true, Ordering::Relaxed);
    log::info!(
        "inferscope agent: {} rule(s) from {}, following {} process(es), metrics on http://{addr}/metrics",
        daemon.cfg.rules.len(),
        config_path.display(),
        daemon.targets.len()
    );

    let mut poll = tokio::time::interval(Duration::from_millis(10));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut reconcile = tokio::time::interval(Duration::from_secs_f64(daemon.cfg.reconcile_seconds));
    reconcile.tick().await; // the first tick is immediate; the scan above was it
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = poll.tick() => daemon.drain(),
            _ = second.tick() => {
                daemon.every_second();
                shared.last_tick_ms.store(server::now_ms(), Ordering::Relaxed);
            }
            _ = reconcile.tick() => daemon.reconcile(),
            Some(req) = fg_rx.recv(), if daemon.capture.is_none() => daemon.start_capture(req),
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    let pids: Vec<u32> = daemon.targets.keys().copied().collect();
    for pid in pids {
        daemon.detach(pid, "agent stopping");
    }
    daemon.expire_uprobes(Instant::now(), Duration::ZERO);
    log::info!("inferscope agent stopped");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ID: &str = "3f9c2a1b7e5d4c6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

    #[test]
    fn labels_from_rule_cgroup_and_pod() {
        let rule = Rule { name: "llama.cpp".into(), ..Default::default() };
        let cg = cgroup::CgroupInfo { container_id: Some(ID.into()), pod_uid: Some("u".into()), runtime: None };
        // Outside a cluster, or before the API told about the pod: the short container ID only.
        let l = target_labels(&rule, &cg, None);
        assert_eq!(
            (l.service.as_str(), l.namespace.as_str(), l.pod.as_str(), l.container.as_str()),
            ("llama.cpp", "", "", &ID[..12])
        );
        assert_eq!(target_labels(&rule, &cgroup::CgroupInfo::default(), None).container, "", "a host process");
        let mut pod = PodRecord {
            namespace: "serving".into(),
            name: "llm-0".into(),
            labels: [("app".to_string(), "chat".to_string())].into(),
            containers: [(ID.to_string(), "server".to_string())].into(),
        };
        let l = target_labels(&rule, &cg, Some(&pod));
        assert_eq!(
            (l.service.as_str(), l.namespace.as_str(), l.pod.as_str(), l.container.as_str()),
            ("chat", "serving", "llm-0", "server")
        );
        pod.labels.insert("app.kubernetes.io/name".into(), "llama".into());
        assert_eq!(target_labels(&rule, &cg, Some(&pod)).service, "llama", "app.kubernetes.io/name first");
        let named = Rule { service: "svc".into(), ..rule.clone() };
        assert_eq!(target_labels(&named, &cg, Some(&pod)).service, "svc", "the rule's service wins");
        // The pod is known, its container's status not yet: the short ID until it is.
        pod.containers.clear();
        assert_eq!(target_labels(&rule, &cg, Some(&pod)).container, &ID[..12]);
    }
}
