//! `inferscope attach --pid PID`: load probes, follow one process, report.
//!
//! Pipeline: kernel ring buffer → (polled every `poll_interval`) → [`Tracker`] (decode + per
//! connection parsers) → finished [`RequestRecord`]s → [`Report`].

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::unix::AsyncFd;

use crate::bpf::SocketProbes;
use crate::http::RequestRecord;
use crate::procfs;
use crate::report::{Report, StageReport};
use crate::stages::{self, StageCollector, StageDef, StageResolver};
use crate::tracker::{Finished, Tracker};

#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub pid: u32,
    pub duration: Option<Duration>,
    pub ring_bytes: u32,
    /// Finished requests kept for the report; later ones are counted, not kept.
    pub max_requests: usize,
    pub poll_interval: Duration,
    /// Print the live one-line status to stderr.
    pub status: bool,
    /// Functions to time (from `--stage` and `--profile`).
    pub stages: Vec<StageDef>,
    /// CPU sampling frequency; None = no CPU profile.
    pub sample_hz: Option<u64>,
    /// Record where and how long threads block (sched_switch).
    pub offcpu: bool,
    /// Sample NVML and join it to requests and stages; None = no GPU telemetry.
    pub gpu: Option<crate::gpu::GpuOptions>,
    /// Stream capture path (socket layer by default, syscall tracepoints as the fallback).
    pub capture: crate::capture::CaptureChoice,
    /// Keep request paths as they were sent (they may carry IDs, keys or e-mail addresses);
    /// by default every output shows the route template instead.
    pub raw_paths: bool,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            pid: 0,
            duration: None,
            ring_bytes: agent_common::DEFAULT_RING_BYTES,
            max_requests: 100_000,
            poll_interval: Duration::from_millis(10),
            status: true,
            stages: Vec::new(),
            sample_hz: None,
            offcpu: false,
            gpu: None,
            capture: crate::capture::CaptureChoice::Auto,
            raw_paths: false,
        }
    }
}

/// Runs until the duration elapses, Ctrl-C / SIGTERM, or the target exits; returns the report.
pub async fn attach(opts: AttachOptions) -> anyhow::Result<Report> {
    let target = procfs::target_info(opts.pid)?;
    let pidfd = procfs::pidfd_open(opts.pid).with_context(|| format!("cannot watch process {}", opts.pid))?;
    // SAFETY: the pidfd is an OwnedFd moved into the AsyncFd, so it stays open while registered.
    let exited = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot poll the target's pidfd: {e}"))?;

    let mut probes = SocketProbes::load(opts.ring_bytes, opts.capture.with_env())?;
    let mut tracker = Tracker::new();
    // Probes are attached first, so a connection accepted from here on is seen; connections
    // already open are found (socket capture: at their next read; syscalls: from /proc now).
    let existing = probes.follow(opts.pid)?;
    for &conn in &existing {
        tracker.add_existing(opts.pid, conn);
    }
    let mut ring = probes.take_events()?;
    let mut resolver = (!opts.stages.is_empty()).then(|| StageResolver::new(opts.pid, opts.stages.clone()));
    let mut stage_ring = None;
    if let Some(r) = &mut resolver {
        let found = r.scan(true)?;
        attach_stages(&mut probes, &r.defs().to_vec(), &found, opts.pid)?;
        for d in r.pending() {
            log::info!("stage `{}` waits for {} to be loaded", d.name, d.library.as_deref().unwrap_or("its library"));
        }
        stage_ring = Some(probes.take_stage_events()?);
    }
    let mut collector = StageCollector::default();
    if let Some(hz) = opts.sample_hz {
        probes.start_profiler(opts.pid, hz)?;
    }
    let profiling = opts.sample_hz.is_some() || opts.offcpu;
    if opts.offcpu {
        probes.set_phase(opts.pid, agent_common::phase::IDLE)?;
        probes.start_offcpu()?;
    }
    let mut last_phase = agent_common::phase::IDLE;
    // Off (with its one-line reason, logged once) when there is no NVML, driver or GPU.
    let mut gpu = opts.gpu.clone().map(crate::gpu::GpuTelemetry::start);
    let run_start_ns = crate::event::monotonic_ns();
    let mut symbolizer = crate::symbols::Symbolizer::new();
    let mut user_frames = crate::profile::UserFrames::new();
    log::info!(
        "attached to pid {} ({}), capture: {}{}",
        opts.pid,
        target.comm,
        probes.mode.name(),
        if existing.is_empty() {
            String::new()
        } else {
            format!(", following {} open inbound connection(s)", existing.len())
        }
    );

    let started = Instant::now();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut poll = tokio::time::interval(opts.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    let mut rescan = tokio::time::interval(Duration::from_secs(1));
    // Both listeners live across loop turns: a signal that arrives while a turn drains the rings
    // is kept for the next `select!`, never lost.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let tty = std::io::stderr().is_terminal();

    let mut kept: Vec<RequestRecord> = Vec::new();
    let mut not_kept = 0u64;
    let mut finished: Vec<Finished> = Vec::new();
    let mut drain = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
                     tracker: &mut Tracker,
                     kept: &mut Vec<RequestRecord>,
                     not_kept: &mut u64| {
        while let Some(item) = ring.next() {
            tracker.handle(&item, &mut finished);
        }
        for f in finished.drain(..) {
            if kept.len() < opts.max_requests {
                kept.push(f.record);
            } else {
                *not_kept += 1;
            }
        }
    };

    let ended_by = loop {
        tokio::select! {
            _ = poll.tick() => {
                drain(&mut ring, &mut tracker, &mut kept, &mut not_kept);
                if let Some(sr) = &mut stage_ring {
                    drain_stages(sr, &mut collector);
                }
                if profiling {
                    let phase = tracker.phase(opts.pid);
                    if phase != last_phase && probes.set_phase(opts.pid, phase).is_ok() {
                        last_phase = phase;
                    }
                }
            }
            _ = rescan.tick(), if resolver.is_some() || profiling => {
                // Symbolize while the process (its maps, its files under /proc/PID/root) exists.
                if opts.sample_hz.is_some() {
                    match probes.read_samples() {
                        Ok(raw) => crate::profile::symbolize_new(&raw, &mut symbolizer, &mut user_frames),
                        Err(e) => log::warn!("reading CPU samples: {e}"),
                    }
                }
                if opts.offcpu {
                    match probes.read_offcpu() {
                        Ok(raw) => crate::profile::symbolize_new(&raw, &mut symbolizer, &mut user_frames),
                        Err(e) => log::warn!("reading off-CPU time: {e}"),
                    }
                }
                // Libraries loaded since the last look (dlopen) get their probes now.
                if let Some(r) = &mut resolver {
                    match r.scan(false) {
                        Ok(found) if !found.is_empty() => {
                            if let Err(e) = attach_stages(&mut probes, &r.defs().to_vec(), &found, opts.pid) {
                                log::warn!("{e}");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => log::warn!("{e}"),
                    }
                }
            }
            _ = status_tick.tick(), if opts.status => {
                let k = probes.counters();
                let line = format!(
                    "inferscope: pid {} {} | {:>5.0}s | requests {} | in flight {} | connections {} | events {} | lost {}",
                    opts.pid, target.comm, started.elapsed().as_secs_f64(), kept.len() as u64 + not_kept,
                    tracker.in_flight(), tracker.connections(), tracker.events.reads + tracker.events.writes, k.lost_total()
                );
                let mut err = std::io::stderr().lock();
                if tty {
                    let _ = write!(err, "\r\x1b[K{line}");
                } else if started.elapsed().as_secs() % 10 == 0 {
                    let _ = writeln!(err, "{line}");
                }
                let _ = err.flush();
            }
            _ = exited.readable() => break "target exited",
            _ = sigint.recv() => break "interrupted",
            _ = sigterm.recv() => break "interrupted",
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break "duration",
        }
    };
    if tty && opts.status {
        eprintln!();
    }
    // The kernel may still hold records written before we stopped: take them all.
    drain(&mut ring, &mut tracker, &mut kept, &mut not_kept);
    if let Some(sr) = &mut stage_ring {
        drain_stages(sr, &mut collector);
    }
    // Streams still open now never end inside this run: socket capture has their close records
    // when the target exited (the kernel closed its sockets); syscall capture does not see those
    // closes. Either way what is left comes out as partial records, with why.
    let reason = if ended_by == "target exited" { "target exited mid-stream" } else { "run ended mid-stream" };
    tracker.finish_all(reason, &mut finished);
    for f in finished.drain(..) {
        if kept.len() < opts.max_requests {
            kept.push(f.record);
        } else {
            not_kept += 1;
        }
    }
    let kernel = probes.counters();
    let cpu_profile = match opts.sample_hz {
        Some(_) => Some(probes.read_samples()?),
        None => None,
    };
    let offcpu_profile = if opts.offcpu { Some(crate::profile::ns_to_us(probes.read_offcpu()?)) } else { None };
    let duration_s = started.elapsed().as_secs_f64();
    let run_end_ns = crate::event::monotonic_ns();
    if let Some(g) = &mut gpu {
        g.stop_sampling();
    }
    let capture = crate::report::CaptureInfo { mode: probes.mode, fallback_reason: probes.fallback_reason.clone() };
    let kernel_maps = probes.map_fill();
    let _ = probes.unfollow(opts.pid);
    drop(probes); // detaches every program

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
    let cpu =
        cpu_profile.map(|raw| crate::profile::fold(&raw, &mut symbolizer, &mut user_frames, &kallsyms, &target.comm));
    let offcpu = offcpu_profile.map(|raw| crate::profile::Folded {
        unit: Some("us"),
        ..crate::profile::fold(&raw, &mut symbolizer, &mut user_frames, &kallsyms, &target.comm)
    });
    Ok(Report {
        cpu,
        offcpu,
        gpu,
        stages: stage_report,
        target,
        requests: kept,
        requests_not_kept: not_kept,
        duration_s,
        events: tracker.events,
        kernel,
        parse: tracker.parse_counters(),
        ended_by: ended_by.to_string(),
        capture,
        kernel_maps,
    })
}

fn attach_stages(
    probes: &mut SocketProbes,
    defs: &[StageDef],
    found: &[stages::Attachment],
    pid: u32,
) -> anyhow::Result<()> {
    for a in found {
        probes.attach_stage(a.stage, &a.open_path, a.file_offset, pid, true)?;
        let name = defs.get(a.stage as usize).map_or("?", |d| d.name.as_str());
        log::info!("stage `{name}`: probing {} in {}", a.function, a.module.display());
    }
    Ok(())
}

fn drain_stages(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, collector: &mut StageCollector) {
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<agent_common::StageEvent>() {
            // SAFETY: length checked; read_unaligned has no alignment requirement.
            let ev: agent_common::StageEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            collector.push(&ev);
        }
    }
}
