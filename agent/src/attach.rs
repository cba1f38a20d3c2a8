//! `inferscope attach --pid PID`: follow one process through the ingestion core, report.
//!
//! [`crate::ingest::Ingest`] (probes, rings, tracker) → [`Collect`] (the attach sink: finished
//! requests and stage calls) → [`Report`]. Around it, on timers: the phase pushed to the kernel,
//! symbolization while the target lives, stage probes for libraries loaded later, a status line.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::unix::AsyncFd;

use crate::http::model::ModelCap;
use crate::http::RequestRecord;
use crate::ingest::{Ingest, Sink};
use crate::procfs;
use crate::report::{Report, StageReport};
use crate::stages::{self, StageCollector, StageDef, StageResolver};
use crate::tracker::Finished;

#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub pid: u32,
    pub duration: Option<Duration>,
    pub ring_bytes: u32,
    /// Finished requests kept for the report; later ones are counted, not kept.
    pub max_requests: usize,
    /// Distinct model names kept as labels; later ones are reported as `other`.
    pub max_models: usize,
    pub poll_interval: Duration,
    /// Print the live one-line status to stderr.
    pub status: bool,
    /// Functions to time (from `--stage` and `--stage-set`).
    pub stages: Vec<StageDef>,
    /// CPU sampling frequency; None = no CPU profile.
    pub sample_hz: Option<u64>,
    /// Record where and how long threads block (sched_switch).
    pub offcpu: bool,
    /// Sample NVML and join it to requests and stages; None = no GPU telemetry.
    pub gpu: Option<crate::gpu::GpuOptions>,
    /// Stream capture path (socket layer by default, syscall tracepoints as the fallback).
    pub capture: crate::capture::CaptureChoice,
    /// Also follow the target's descendants that serve its listening sockets (pre-fork
    /// servers: the master listens, its workers accept), now and as they come.
    pub follow_workers: bool,
    /// Keep request paths as they were sent (they may carry IDs, keys or e-mail addresses);
    /// by default every output shows the route template instead.
    pub raw_paths: bool,
    /// Walk user stacks by frame pointers only (no `.eh_frame` tables).
    pub frame_pointers_only: bool,
    /// Export GenAI metrics over OTLP/HTTP while the run lasts (`--otlp`).
    pub otlp: Option<crate::export::otlp::OtlpOptions>,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            pid: 0,
            duration: None,
            ring_bytes: agent_common::DEFAULT_RING_BYTES,
            max_requests: 100_000,
            max_models: crate::http::model::DEFAULT_MAX_MODELS,
            poll_interval: Duration::from_millis(10),
            status: true,
            stages: Vec::new(),
            sample_hz: None,
            offcpu: false,
            gpu: None,
            capture: crate::capture::CaptureChoice::Auto,
            raw_paths: false,
            follow_workers: true,
            frame_pointers_only: false,
            otlp: None,
        }
    }
}

/// The attach sink: requests kept for the report (up to a limit, the rest counted) and stage calls.
struct Collect {
    kept: Vec<RequestRecord>,
    not_kept: u64,
    max: usize,
    stages: StageCollector,
    /// The model label is capped as in the daemon: later names are `other`, counted.
    models: ModelCap,
    models_folded: u64,
    /// `--otlp`: each request is recorded as it finishes, under the target's attributes.
    otlp: Option<(crate::export::otlp::Otlp, Vec<opentelemetry::KeyValue>)>,
}

impl Collect {
    fn new(max: usize, max_models: usize) -> Self {
        Self {
            kept: Vec::new(),
            not_kept: 0,
            max,
            stages: StageCollector::default(),
            models: ModelCap::new(max_models),
            models_folded: 0,
            otlp: None,
        }
    }
}

impl Sink for Collect {
    fn request(&mut self, mut f: Finished) {
        if f.record.model.is_some() {
            let (label, folded) = self.models.label(f.record.model.as_deref());
            self.models_folded += u64::from(folded);
            f.record.model = Some(label);
        }
        if let Some((otlp, target)) = &mut self.otlp {
            otlp.record(&f.record, f.record.model.as_deref(), target);
        }
        if self.kept.len() < self.max {
            self.kept.push(f.record);
        } else {
            self.not_kept += 1;
        }
    }

    fn stage(&mut self, call: &agent_common::StageEvent) {
        self.stages.push(call);
    }
}

/// Everything one attach run holds between its start and its report.
struct Run {
    opts: AttachOptions,
    target: crate::report::TargetInfo,
    ingest: Ingest,
    sink: Collect,
    resolver: Option<StageResolver>,
    gpu: Option<crate::gpu::GpuTelemetry>,
    symbolizer: crate::symbols::Symbolizer,
    user_frames: crate::profile::UserFrames,
    run_start_ns: u64,
    started: Instant,
    /// Workers followed besides the target (pre-fork servers), in the order found.
    workers: Vec<u32>,
    /// libssl probes of the target and its workers.
    tls: crate::tls::TlsFollow,
    /// Sampled Python stages (`py:GLOB`): their definitions, the kernel's sample ring, the samples.
    py_defs: Vec<StageDef>,
    py_ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    py_log: stages::sampled::SampleLog,
}

/// Runs until the duration elapses, Ctrl-C / SIGTERM, or the target exits; returns the report.
pub async fn attach(opts: AttachOptions) -> anyhow::Result<Report> {
    let target = procfs::target_info(opts.pid)?;
    let pidfd = procfs::pidfd_open(opts.pid).with_context(|| format!("cannot watch process {}", opts.pid))?;
    // SAFETY: the pidfd is an OwnedFd moved into the AsyncFd, so it stays open while registered.
    let exited = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot poll the target's pidfd: {e}"))?;
    let mut run = Run::start(opts, target)?;
    let ended_by = run.wait(&exited).await?;
    run.finish(ended_by)
}

impl Run {
    fn start(mut opts: AttachOptions, target: crate::report::TargetInfo) -> anyhow::Result<Self> {
        // Python stages are sampled, not probed: they need the CPU sampler, not the resolver.
        let (py_defs, native): (Vec<StageDef>, Vec<StageDef>) =
            opts.stages.iter().cloned().partition(StageDef::is_python);
        anyhow::ensure!(
            py_defs.len() <= stages::sampled::MAX_PY_STAGES,
            "at most {} Python stages (py:GLOB) in one run",
            stages::sampled::MAX_PY_STAGES
        );
        if !py_defs.is_empty() && opts.sample_hz.is_none() {
            opts.sample_hz = Some(DEFAULT_PY_STAGE_HZ);
        }
        let mut ingest = Ingest::load(opts.ring_bytes, opts.capture)?;
        // Probes are attached first, so a connection accepted from here on is seen; connections
        // already open are found (socket capture: at their next read; syscalls: from /proc now).
        let existing = ingest.follow(opts.pid)?;
        let mut resolver = (!native.is_empty()).then(|| StageResolver::new(opts.pid, native));
        if let Some(r) = &mut resolver {
            let found = r.scan(true)?;
            attach_stages(&mut ingest, r.defs(), &found, opts.pid)?;
            for d in r.pending() {
                log::info!(
                    "stage `{}` waits for {} to be loaded",
                    d.name,
                    d.library.as_deref().unwrap_or("its library")
                );
            }
            ingest.enable_stages()?;
        }
        // Exec and exit records (tracepoints, not syscall hooks): an exec of the target is a new
        // identity from that instant. Without them the run goes on, naming the first program.
        if let Err(e) = ingest.enable_process_events() {
            log::warn!("exec of the target will not be noticed: {e}");
        }
        if let Some(hz) = opts.sample_hz {
            if opts.frame_pointers_only {
                ingest.probes.disable_unwind();
            }
            ingest.probes.start_profiler(opts.pid, hz)?;
        }
        let py_ring = if py_defs.is_empty() { None } else { Some(ingest.probes.start_py_samples()?) };
        if opts.offcpu {
            ingest.probes.set_phase(opts.pid, agent_common::phase::IDLE)?;
            ingest.probes.start_offcpu()?;
        }
        // Off (with its one-line reason, logged once) when there is no NVML, driver or GPU.
        let gpu = opts.gpu.clone().map(crate::gpu::GpuTelemetry::start);
        let mut sink = Collect::new(opts.max_requests, opts.max_models);
        if let Some(o) = &opts.otlp {
            // The served process names the provider: its requests are what is measured.
            let provider = opentelemetry::KeyValue::new("gen_ai.provider.name", target.comm.clone());
            sink.otlp = Some((crate::export::otlp::Otlp::start(o)?, vec![provider]));
            log::info!("otlp: GenAI metrics to {} every {:.0?}", o.metrics_url, o.interval);
        }
        let mut run = Self {
            sink,
            opts,
            target,
            ingest,
            resolver,
            gpu,
            symbolizer: crate::symbols::Symbolizer::new(),
            user_frames: crate::profile::UserFrames::new(),
            run_start_ns: crate::event::monotonic_ns(),
            started: Instant::now(),
            workers: Vec::new(),
            tls: crate::tls::TlsFollow::default(),
            py_defs,
            py_ring,
            py_log: stages::sampled::SampleLog::default(),
        };
        // Workers first: "attached" means every process serving the target's sockets is followed.
        run.follow_new_workers();
        run.scan_tls();
        log::info!(
            "attached to pid {} ({}), capture: {}, {}{}",
            run.opts.pid,
            run.target.comm,
            run.ingest.probes.mode.name(),
            run.tls.describe(run.ingest.probes.mode),
            if existing == 0 { String::new() } else { format!(", following {existing} open inbound connection(s)") }
        );
        Ok(run)
    }

    /// Follows workers of a pre-fork target not followed yet (its connections are accepted by
    /// them, not by the process given with --pid).
    fn follow_new_workers(&mut self) {
        if !self.opts.follow_workers {
            return;
        }
        for w in procfs::workers_of(self.opts.pid) {
            if self.workers.contains(&w) || self.workers.len() >= 256 {
                continue;
            }
            match self.ingest.follow(w) {
                Ok(_) => {
                    log::info!(
                        "following worker pid {w} of pid {} (it serves the same listening socket)",
                        self.opts.pid
                    );
                    self.workers.push(w);
                }
                Err(e) => log::warn!("cannot follow worker pid {w}: {e}"),
            }
        }
    }

    /// Probes TLS functions in files the target and its workers mapped since the last look.
    fn scan_tls(&mut self) {
        for pid in [self.opts.pid].into_iter().chain(self.workers.iter().copied()) {
            self.tls.scan(&mut self.ingest.probes, pid);
        }
    }

    /// The target (or a worker) exec'd: same PID, new program. Say so once, record it for the
    /// report, and drop what was cached about the old image (symbols, mappings).
    fn notice_execs(&mut self) {
        for ev in self.ingest.process_events() {
            if ev.kind != agent_common::proc_event::EXEC {
                continue;
            }
            if ev.tgid != self.opts.pid && !self.workers.contains(&ev.tgid) {
                continue;
            }
            // Samples taken before the exec are symbolized while the old maps are gone: what is
            // still unresolved then comes out as [unknown], never as a frame of the new program.
            self.symbolizer.forget_pid(ev.tgid);
            // The new image maps its own files: TLS functions are searched again.
            self.tls.forget(&mut self.ingest.probes, ev.tgid);
            // Python: the old image's code objects and layout are gone; the new one may be Python.
            self.user_frames.python.forget_pid(ev.tgid);
            self.ingest.probes.forget_python(ev.tgid);
            if self.opts.sample_hz.is_some() {
                self.ingest.probes.start_python(ev.tgid);
            }
            let Ok(now) = procfs::target_info(ev.tgid) else { continue };
            let at_s = ev.ts_ns.saturating_sub(self.run_start_ns) as f64 / 1e9;
            let from_comm =
                if ev.tgid == self.opts.pid { self.target.comm.clone() } else { format!("worker {}", ev.tgid) };
            log::info!(
                "pid {} exec'd {} → {} ({}): figures from here on belong to the new program",
                ev.tgid,
                from_comm,
                now.comm,
                now.exe
            );
            if ev.tgid == self.opts.pid {
                self.target.execs.push(crate::report::ExecInfo {
                    at_s,
                    from_comm,
                    comm: now.comm.clone(),
                    exe: now.exe.clone(),
                });
                self.target.comm = now.comm;
                self.target.exe = now.exe;
            }
        }
    }

    fn profiling(&self) -> bool {
        self.opts.sample_hz.is_some() || self.opts.offcpu
    }

    /// The run loop; returns why it ended.
    async fn wait(&mut self, exited: &AsyncFd<std::os::fd::OwnedFd>) -> anyhow::Result<&'static str> {
        let deadline = self.opts.duration.map(|d| tokio::time::Instant::now() + d);
        let mut poll = tokio::time::interval(self.opts.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status_tick = tokio::time::interval(Duration::from_secs(1));
        let mut rescan = tokio::time::interval(Duration::from_secs(1));
        // Libraries dlopen'ed while sampling get unwind tables within this (one read of
        // /proc/PID/maps when nothing changed).
        let mut unwind_rescan = tokio::time::interval(Duration::from_millis(200));
        // Both listeners live across loop turns: a signal that arrives while a turn drains the
        // rings is kept for the next `select!`, never lost.
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let tty = std::io::stderr().is_terminal();
        let ended_by = loop {
            tokio::select! {
                _ = poll.tick() => {
                    self.notice_execs();
                    self.ingest.drain(&mut self.sink);
                    self.drain_py_samples();
                    if self.profiling() {
                        self.ingest.push_phase(self.opts.pid);
                    }
                }
                _ = rescan.tick() => self.rescan(),
                _ = unwind_rescan.tick(), if self.opts.sample_hz.is_some() => {
                    if let Err(e) = self.ingest.probes.refresh_unwind(self.opts.pid) {
                        log::warn!("unwind tables: {e}");
                    }
                }
                _ = status_tick.tick(), if self.opts.status => self.status_line(tty),
                _ = exited.readable() => break "target exited",
                _ = sigint.recv() => break "interrupted",
                _ = sigterm.recv() => break "interrupted",
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break "duration",
            }
        };
        if tty && self.opts.status {
            eprintln!();
        }
        Ok(ended_by)
    }

    fn drain_py_samples(&mut self) {
        let Some(ring) = &mut self.py_ring else { return };
        while let Some(item) = ring.next() {
            match crate::event::decode_py_sample(&item) {
                Ok(s) => self.py_log.push(s),
                Err(_) => self.py_log.not_kept += 1,
            }
        }
    }

    /// Once a second: symbolize while the process (its maps, its files under /proc/PID/root)
    /// exists, and probe stage functions in libraries loaded since the last look (dlopen).
    fn rescan(&mut self) {
        self.follow_new_workers();
        self.scan_tls();
        let probes = &self.ingest.probes;
        let mut symbolize = |what: &str, read: Result<crate::profile::RawProfile, crate::bpf::ProbeError>| match read {
            Ok(raw) => crate::profile::symbolize_new(&raw, &mut self.symbolizer, &mut self.user_frames),
            Err(e) => log::warn!("reading {what}: {e}"),
        };
        if self.opts.sample_hz.is_some() {
            symbolize("CPU samples", probes.read_samples());
        }
        if self.opts.offcpu {
            symbolize("off-CPU time", probes.read_offcpu());
        }
        if let Some(r) = &mut self.resolver {
            match r.scan(false) {
                Ok(found) if !found.is_empty() => {
                    if let Err(e) = attach_stages(&mut self.ingest, r.defs(), &found, self.opts.pid) {
                        log::warn!("{e}");
                    }
                }
                Ok(_) => {}
                Err(e) => log::warn!("{e}"),
            }
        }
    }

    fn status_line(&self, tty: bool) {
        let k = self.ingest.probes.counters();
        let t = &self.ingest.tracker;
        let line = format!(
            "inferscope: pid {} {} | {:>5.0}s | requests {} | in flight {} | connections {} | events {} | lost {}",
            self.opts.pid,
            self.target.comm,
            self.started.elapsed().as_secs_f64(),
            self.sink.kept.len() as u64 + self.sink.not_kept,
            t.in_flight(),
            t.connections(),
            t.events.reads + t.events.writes,
            k.lost_total()
        );
        let mut err = std::io::stderr().lock();
        if tty {
            // Cut to the terminal (one column spare): a wrapped line is not rewritten by `\r`.
            let width = crate::report::width::width_of(libc::STDERR_FILENO);
            let line = crate::report::width::fit_line(&line, width.saturating_sub(1));
            let _ = write!(err, "\r\x1b[K{line}");
        } else if self.started.elapsed().as_secs() % 10 == 0 {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Takes what the kernel still holds, ends open streams as partial, reads the profiles and
    /// counters, detaches, and builds the report.
    fn finish(mut self, ended_by: &'static str) -> anyhow::Result<Report> {
        // Streams still open now never end inside this run: socket capture has their close
        // records when the target exited (the kernel closed its sockets); syscall capture does
        // not see those closes. Either way what is left comes out as partial records, with why.
        let reason = if ended_by == "target exited" { "target exited mid-stream" } else { "run ended mid-stream" };
        self.ingest.finish(reason, &mut self.sink);
        self.drain_py_samples();
        let probes = &self.ingest.probes;
        let kernel = probes.counters();
        let cpu_profile = if self.opts.sample_hz.is_some() { Some(probes.read_samples()?) } else { None };
        let offcpu_profile =
            if self.opts.offcpu { Some(crate::profile::ns_to_us(probes.read_offcpu()?)) } else { None };
        let duration_s = self.started.elapsed().as_secs_f64();
        let run_end_ns = crate::event::monotonic_ns();
        if let Some(g) = &mut self.gpu {
            g.stop_sampling();
        }
        let capture = crate::report::CaptureInfo { mode: probes.mode, fallback_reason: probes.fallback_reason.clone() };
        let kernel_maps = probes.map_fill();
        let unwind_tables = probes.unwind_stats();
        let python_walks = probes.python_counters();
        let Self {
            opts,
            mut target,
            mut ingest,
            sink,
            resolver,
            gpu,
            mut symbolizer,
            mut user_frames,
            run_start_ns,
            workers,
            py_defs,
            py_log,
            ..
        } = self;
        let mut discard = Collect::new(0, 0);
        for pid in workers.iter().chain([&opts.pid]) {
            ingest.unfollow(*pid, reason, &mut discard);
        }
        target.workers = workers;
        let (events, parse) = (ingest.tracker.events, ingest.tracker.parse_counters());
        drop(ingest); // detaches every program

        let Collect { mut kept, not_kept, stages: collector, models_folded, otlp, .. } = sink;
        if let Some((otlp, _)) = otlp {
            let s = otlp.shutdown();
            log::info!(
                "otlp: {} request(s) recorded, {} not GenAI; exports: {} accepted ({} bytes), {} rejected, {} failed",
                s.recorded,
                s.not_genai,
                s.exports_ok,
                s.bytes_sent,
                s.exports_rejected,
                s.exports_failed
            );
        }
        kept.sort_by_key(|r| r.request_ns);
        if !opts.raw_paths {
            for r in &mut kept {
                r.path = crate::http::route::route_template(&r.path);
            }
        }
        let stage_report = resolver.map(|r| {
            let names: Vec<String> = r.defs().iter().map(|d| d.name.clone()).collect();
            let prefill: Vec<Option<String>> = r.defs().iter().map(|d| d.prefill_name.clone()).collect();
            let attribution = stages::attribute(&kept, &collector.calls, &names, &prefill);
            let summaries = stages::summarize(&collector.calls, &attribution, &names, &prefill);
            StageReport {
                summaries,
                attribution,
                calls: collector.calls,
                calls_not_kept: collector.not_kept,
                pending: r.pending().iter().map(|d| d.name.clone()).collect(),
            }
        });
        let gpu = gpu.map(|g| {
            let (calls, names) = stage_report
                .as_ref()
                .map_or((&[][..], &[][..]), |st| (st.calls.as_slice(), st.attribution.call_names.as_slice()));
            crate::gpu::join::join(&g, opts.pid, (run_start_ns, run_end_ns), &kept, calls, names)
        });
        let kallsyms = crate::profile::Kallsyms::load();
        let mut fold = |raw| crate::profile::fold(&raw, &mut symbolizer, &mut user_frames, &kallsyms, &target.comm);
        let cpu = cpu_profile.map(|raw| crate::profile::Folded { unwind_tables, ..fold(raw) });
        let offcpu = offcpu_profile.map(|raw| crate::profile::Folded { unit: Some("us"), ..fold(raw) });
        let cpu = cpu.map(|c| crate::profile::Folded {
            python: python_walks.map(|k| crate::python::PythonStats::new(&k, user_frames.python.stats)),
            ..c
        });
        let py_stages = (!py_defs.is_empty()).then(|| {
            let globs: Vec<&str> = py_defs.iter().filter_map(StageDef::python_glob).collect();
            let lost = python_walks.map_or(0, |k| k[agent_common::python::counter::SAMPLES_LOST as usize]);
            let hz = opts.sample_hz.unwrap_or(DEFAULT_PY_STAGE_HZ);
            stages::sampled::attribute(&kept, &py_log, opts.pid, &py_defs, hz, lost, |id| {
                user_frames.frames(id).map(|f| stages::sampled::stack_mask(&f, &globs))
            })
        });
        Ok(Report {
            py_stages,
            cpu,
            offcpu,
            gpu,
            stages: stage_report,
            target,
            requests: kept,
            requests_not_kept: not_kept,
            models_folded,
            duration_s,
            events,
            kernel,
            parse,
            ended_by: ended_by.to_string(),
            capture,
            kernel_maps,
        })
    }
}

/// CPU sampling frequency when Python stages ask for samples and no profile set one.
pub const DEFAULT_PY_STAGE_HZ: u64 = 99;

fn attach_stages(ingest: &mut Ingest, defs: &[StageDef], found: &[stages::Attachment], pid: u32) -> anyhow::Result<()> {
    for a in found {
        ingest.probes.attach_stage(a.stage, &a.open_path, a.file_offset, pid, true)?;
        let name = defs.get(a.stage as usize).map_or("?", |d| d.name.as_str());
        log::info!("stage `{name}`: probing {} in {}", a.function, a.module.display());
    }
    Ok(())
}
