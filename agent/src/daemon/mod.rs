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
//!
//! This module is the loop; each part owns its state: [`discover`] (which processes to follow,
//! and those that may match later), [`targets`] (the followed processes and the sink that turns
//! their requests into [`metrics`]), [`uprobes`] (stage uprobes shared per file), [`labels`]
//! (pod metadata from [`kube`]), [`flamegraph`] (captures for the [`server`]) and [`health`]
//! (counter deltas and gauges each second), around the shared [`Ingest`] core.

pub mod cgroup;
pub mod config;
pub mod discover;
mod flamegraph;
mod health;
pub mod kube;
mod labels;
pub mod metrics;
mod otlp;
mod pprof_push;
mod process;
mod protocols;
pub mod server;
mod targets;
mod uprobes;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_common::{proc_event, ProcEvent};

use crate::ingest::Ingest;
pub use config::{Config, Rule};
use discover::Discovery;
use flamegraph::Flamegraphs;
use health::Health;
use labels::Labels;
use metrics::Metrics;
use server::{FlamegraphRequest, Shared};
use targets::Targets;
use uprobes::UprobePool;

pub struct Daemon {
    cfg: Config,
    /// Probes, rings and connection tracker (shared with `attach`).
    ingest: Ingest,
    metrics: Metrics,
    targets: Targets,
    discovery: Discovery,
    uprobes: UprobePool,
    labels: Labels,
    flamegraphs: Flamegraphs,
    /// `[pprof_push]`: CPU profiles pushed to a Pyroscope-compatible endpoint.
    pprof_push: Option<pprof_push::Pusher>,
    health: Health,
}

impl Daemon {
    fn new(cfg: Config, ingest: Ingest) -> Self {
        Self {
            metrics: {
                let mut m = Metrics::new(cfg.max_series);
                m.max_models = cfg.max_models_per_target;
                m
            },
            targets: Targets::new(cfg.max_targets),
            cfg,
            ingest,
            discovery: Discovery::default(),
            uprobes: UprobePool::default(),
            labels: Labels::none(),
            flamegraphs: Flamegraphs::default(),
            pprof_push: None,
            health: Health::default(),
        }
    }

    /// Looks at one process: follows it when a rule matches. `why` is counted as a discovery input.
    fn consider(&mut self, pid: u32, why: &'static str) {
        if self.targets.contains(pid) || pid == std::process::id() {
            return;
        }
        match self.discovery.consider(pid, why, &self.cfg.rules, &self.labels) {
            Some(m) => self.follow(m),
            // The kernel may have started following it at exec (its name is one a rule names):
            // the entry stays only if the whole rule matches.
            None if why == "exec" => {
                let _ = self.ingest.probes.unfollow(pid);
            }
            None => {}
        }
    }

    fn follow(&mut self, m: discover::Match) {
        let rule = &self.cfg.rules[m.rule];
        self.targets.follow(m, rule, &mut self.ingest, &self.labels, &mut self.uprobes, &mut self.metrics);
    }

    /// Frees everything the process held; `why` goes to the log.
    fn detach(&mut self, pid: u32, why: &str) {
        self.targets.unfollow(pid, why, &mut self.ingest, &mut self.uprobes, &mut self.metrics);
    }

    /// When the pod map changed: followed processes take their pod's labels (the pod may have
    /// arrived after them, or changed), and processes that waited for their pod are tried again.
    fn sync_pods(&mut self) {
        if !self.labels.changed() {
            return;
        }
        self.targets.relabel(&self.labels, &self.cfg.rules, &mut self.metrics);
        for pid in self.discovery.pods_arrived(&self.labels) {
            self.consider(pid, "pod known");
        }
    }

    fn on_proc_event(&mut self, ev: &ProcEvent) {
        match ev.kind {
            proc_event::EXEC => {
                self.metrics.discovery.with_label_values(&["exec"]).inc();
                let lag = crate::event::monotonic_ns().saturating_sub(ev.ts_ns);
                log::debug!("exec of pid {} seen {:.1} ms later", ev.tgid, lag as f64 / 1e6);
                if self.targets.contains(ev.tgid) {
                    // Same PID, new program: the old probes and parser state mean nothing now.
                    self.detach(ev.tgid, "exec");
                }
                self.discovery.forget(ev.tgid);
                self.consider(ev.tgid, "exec");
            }
            proc_event::EXIT => {
                self.metrics.discovery.with_label_values(&["exit"]).inc();
                // Its last socket and stage records may still be unread on the other rings:
                // detach after the next drain of those.
                self.discovery.exited(ev.tgid);
            }
            _ => {}
        }
    }

    /// Full /proc pass: dead or replaced targets go, matching processes come.
    fn reconcile(&mut self) {
        self.metrics.discovery.with_label_values(&["reconcile"]).inc();
        for pid in self.targets.gone() {
            self.detach(pid, "gone (reconcile)");
        }
        for pid in discover::all_pids() {
            self.consider(pid, "scan");
        }
    }

    /// Each second: candidates, dlopen rescans, liveness, health metrics, series expiry.
    fn every_second(&mut self) {
        let now = Instant::now();
        for m in self.discovery.every_second(&self.cfg.rules, now) {
            self.follow(m);
        }
        for pid in self.targets.gone() {
            self.detach(pid, "gone");
        }
        if self.cfg.follow_workers {
            self.follow_workers();
        }
        let idle = Duration::from_secs_f64(self.cfg.stream_idle_timeout_seconds);
        self.ingest.expire_idle(idle, &mut self.targets.sink(&mut self.metrics, self.uprobes.stage_names()));
        self.targets.scan_stages(&mut self.ingest, &mut self.uprobes, &self.metrics);
        self.targets.scan_tls(&mut self.ingest);
        let linger = Duration::from_secs_f64(self.cfg.uprobe_linger_seconds);
        self.uprobes.expire(now, linger, &mut self.ingest.probes);
        self.health.update(&self.ingest, &self.targets, self.labels.pods(), &mut self.metrics);
        self.health.update_gpu(&self.targets, &mut self.metrics);
        self.metrics.sweep(now, Duration::from_secs_f64(self.cfg.series_grace_seconds));
        if let Some(o) = &mut self.targets.otlp {
            o.every_second();
        }
        if let Some(p) = &mut self.pprof_push {
            if !self.flamegraphs.busy() {
                if let Some(pid) = p.due(now, &mut self.targets.pids()) {
                    let name = self.targets.get(pid).map(|t| pprof_push::app_name(&t.labels)).unwrap_or_default();
                    self.flamegraphs.start_push(pid, p.seconds, name, &mut self.ingest);
                }
            }
        }
    }

    /// Pre-fork servers: the processes below a followed one that serve its listening sockets
    /// (they accept what it listens for) are followed too, under its rule. The process tree is
    /// read once per pass.
    fn follow_workers(&mut self) {
        let masters = self.targets.masters();
        if masters.is_empty() {
            return;
        }
        let tree = crate::procfs::children();
        for (master, rule) in masters {
            for w in crate::procfs::workers_in(master, &tree) {
                if self.targets.contains(w) {
                    continue;
                }
                let Some(m) = discover::worker(w, rule) else { continue };
                self.follow(m);
                self.targets.mark_worker(w, master);
            }
        }
    }

    /// One poll: exec/exit records first (a new target's records are already on the data rings),
    /// then the data and stage rings, then exits (every record of a process that exited before
    /// its exit record was read is on the data rings by then).
    fn drain(&mut self) {
        self.sync_pods();
        for ev in self.ingest.process_events() {
            self.on_proc_event(&ev);
        }
        self.ingest.drain(&mut self.targets.sink(&mut self.metrics, self.uprobes.stage_names()));
        for pid in self.discovery.take_exited() {
            self.detach(pid, "exit");
        }
        if let Some(push) = self.flamegraphs.poll(&mut self.ingest) {
            if let Some(p) = &self.pprof_push {
                p.send(push);
            }
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
    process::register_build_info(&daemon.metrics.registry, daemon.ingest.probes.mode.name());
    if let Err(e) = daemon.metrics.registry.register(Box::new(process::ProcessCollector::new())) {
        log::warn!("process_* metrics: {e}");
    }
    if let Some(p) = &daemon.cfg.pprof_push {
        daemon.pprof_push = Some(pprof_push::Pusher::start(p, &daemon.metrics.registry)?);
    }
    if let Some(o) = &daemon.cfg.otlp {
        daemon.targets.otlp =
            Some(otlp::OtlpExport::start(o, daemon.cfg.max_models_per_target, &daemon.metrics.registry)?);
    }
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
    if daemon.cfg.rules.iter().any(|r| !r.stage_set.is_empty()) {
        daemon.ingest.probes.load_stage_programs()?;
    }
    daemon.ingest.enable_stages()?;
    // Pod metadata on its own thread; the loop only reads its map.
    daemon.labels = Labels::start(&daemon.cfg).await;
    // Exec records flow from here on; the scan covers what started before.
    daemon.reconcile();
    daemon.health.start_gpu(&daemon.cfg, &daemon.metrics);
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
            Some(req) = fg_rx.recv(), if !daemon.flamegraphs.busy() => {
                let followed = daemon.targets.contains(req.pid);
                daemon.flamegraphs.start(req, followed, &mut daemon.ingest);
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    for pid in daemon.targets.pids() {
        daemon.detach(pid, "agent stopping");
    }
    daemon.uprobes.expire(Instant::now(), Duration::ZERO, &mut daemon.ingest.probes);
    if let Some(o) = daemon.targets.otlp.take() {
        o.shutdown();
    }
    log::info!("inferscope agent stopped");
    Ok(())
}
