//! Health, once a second: the kernel's loss counters, the parser's error counters, the kube
//! watcher's and NVML's error counts become metric increments (deltas since the last second);
//! map fill, targets, probes, in-flight requests and the GPU's latest sample become gauges.

use std::collections::{BTreeMap, HashMap};

use super::config::Config;
use super::kube::PodIndex;
use super::metrics::{Metrics, TargetLabels};
use super::targets::Targets;
use crate::bpf::KernelCounters;
use crate::ingest::Ingest;

#[derive(Default)]
pub struct Health {
    last_kernel: KernelCounters,
    last_parse: BTreeMap<&'static str, u64>,
    last_kube_errors: u64,
    last_kube_dropped: u64,
    gpu: Option<crate::gpu::GpuTelemetry>,
    last_gpu_errors: BTreeMap<&'static str, u64>,
    protocols: super::protocols::ProtocolCounts,
}

impl Health {
    /// Starts the NVML sampler when the config asks for it; says once if it cannot run.
    pub fn start_gpu(&mut self, cfg: &Config, metrics: &Metrics) {
        if cfg.gpu_sample_hz > 0.0 {
            let gpu = crate::gpu::GpuTelemetry::start(crate::gpu::GpuOptions {
                library: cfg.nvml_library.clone(),
                hz: cfg.gpu_sample_hz,
                ..crate::gpu::GpuOptions::default()
            });
            let status = gpu.status();
            if status.enabled {
                log::info!("GPU telemetry on: {} device(s) at {} Hz", status.devices, cfg.gpu_sample_hz);
                metrics.gpu_enabled.set(1);
            } else {
                // Said once; everything else works without it.
                log::info!("{}", status.reason.unwrap_or_else(|| "GPU telemetry off".into()));
            }
            self.gpu = Some(gpu);
        } else {
            log::info!("GPU telemetry off: gpu_sample_hz = 0 in the config");
        }
    }

    pub fn update(&mut self, ingest: &Ingest, targets: &Targets, pods: &PodIndex, metrics: &mut Metrics) {
        let k = ingest.probes.counters();
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
            metrics.events_lost.with_label_values(&[kind]).inc_by(now.saturating_sub(before));
        }
        self.last_kernel = k;
        let p = ingest.tracker.parse_counters();
        self.protocols.update(&p.h2, &ingest.tracker.events.tls, &k.tls, &metrics.protocols);
        let parse = [
            ("bad_head", p.bad_heads),
            ("bad_chunk", p.bad_chunks),
            ("framing_lost", p.framing_lost),
            ("unmatched_response", p.unmatched_responses),
            ("aborted", p.aborted),
            ("partial", p.partial),
            ("pipeline_overflow", p.pipeline_overflow),
            ("upgraded", p.upgraded),
            ("decode_error", ingest.tracker.events.decode_errors),
            ("connections_dropped", ingest.tracker.events.connections_dropped),
            ("idle_timeout", ingest.tracker.events.idle_expired),
        ];
        for (kind, now) in parse {
            let before = self.last_parse.insert(kind, now).unwrap_or(0);
            metrics.parse_errors.with_label_values(&[kind]).inc_by(now.saturating_sub(before));
        }
        for (name, n, cap) in ingest.probes.map_fill() {
            metrics.map_fill.with_label_values(&[name]).set(n as f64 / f64::from(cap));
        }
        metrics.targets.set(targets.len() as i64);
        let kube = pods.health();
        metrics.kube_enabled.set(i64::from(kube.enabled));
        metrics.kube_up.set(i64::from(kube.up));
        metrics.kube_pods.set(kube.pods as i64);
        metrics.kube_errors.inc_by(kube.errors.saturating_sub(self.last_kube_errors));
        metrics.kube_pods_dropped.inc_by(kube.dropped.saturating_sub(self.last_kube_dropped));
        (self.last_kube_errors, self.last_kube_dropped) = (kube.errors, kube.dropped);
        metrics.probes_attached.set(ingest.probes.uprobes_attached as i64);
        let mut in_flight: HashMap<TargetLabels, usize> = HashMap::new();
        for (pid, t) in targets.iter() {
            *in_flight.entry(t.labels.clone()).or_default() += ingest.tracker.in_flight_of(*pid);
        }
        for (labels, n) in in_flight {
            metrics.set_in_flight(&labels, n);
        }
    }

    /// NVML's latest sample as DCGM-like gauges; per-process use joined to targets by PID.
    pub fn update_gpu(&mut self, targets: &Targets, metrics: &mut Metrics) {
        let Some(gpu) = &self.gpu else { return };
        for (call, n) in gpu.errors() {
            let before = self.last_gpu_errors.insert(call, n).unwrap_or(0);
            metrics.gpu_errors.with_label_values(&[call]).inc_by(n.saturating_sub(before));
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
                if let (Some(v), Some(g)) = (value, metrics.gpu_device.get(field)) {
                    g.with_label_values(&labels).set(v);
                }
            }
        }
        for p in &snap.processes {
            let Some(t) = targets.get(p.pid) else { continue };
            let (labels, gpu) = (t.labels.clone(), p.gpu.to_string());
            if let Some(v) = p.fb_used_bytes {
                metrics.set_gpu_process(&labels, &gpu, "fb_used", v as f64);
            }
            if let Some(v) = p.sm_util_pct {
                metrics.set_gpu_process(&labels, &gpu, "sm_util", f64::from(v));
            }
        }
    }
}
