//! The join of GPU telemetry with requests and stages for the attach report: per request the
//! utilization of the GPUs its process uses over its prefill window (request → first token) and
//! its decode window (first token → end), pooled per phase, and per stage while its calls ran.
//!
//! NVML utilization is an average over 1/6 s to 1 s, so a window shorter than two resolution
//! periods, or holding fewer than two samples, gets no figure of its own: it is marked
//! `too_short` and still counts towards the pooled per-phase and per-stage figures, which are
//! what to read when single requests and calls are short.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{GpuSelector, GpuStatus, GpuTelemetry, ProcessWindow, WindowStats};
use crate::http::RequestRecord;
use crate::stages::StageCall;

/// One window's figure as reported: the numbers only when the window is long enough for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GpuFigure {
    /// Mean SM utilization, %, over the window's samples and the selected GPUs; `None` when
    /// `too_short` (or no utilization reading was available).
    pub util_pct: Option<f64>,
    /// Mean memory-controller utilization, %.
    pub mem_util_pct: Option<f64>,
    /// Sampler ticks inside the window(s).
    pub samples: usize,
    /// Window length (sum for pooled figures), s.
    pub span_s: f64,
    /// Shorter than two NVML resolution periods or fewer than two samples: no figure.
    pub too_short: bool,
}

impl From<&WindowStats> for GpuFigure {
    fn from(w: &WindowStats) -> Self {
        GpuFigure {
            util_pct: w.reliable.then_some(w.mean_util).flatten(),
            mem_util_pct: w.reliable.then_some(w.mean_mem_util).flatten(),
            samples: w.samples,
            span_s: w.span_ns as f64 / 1e9,
            too_short: !w.reliable,
        }
    }
}

/// One request's GPU figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RequestGpu {
    /// Request → first token (→ end when no token came).
    pub prefill: GpuFigure,
    /// First token → end; `None` without a first token.
    pub decode: Option<GpuFigure>,
}

/// GPU telemetry joined to one attach run.
#[derive(Debug, Clone, Serialize)]
pub struct GpuReport {
    pub status: GpuStatus,
    /// Sampler period and the shortest window with its own figure, s.
    pub sampling_period_s: f64,
    pub resolution_s: f64,
    /// GPUs averaged (bit i = GPU i): those the target's process was seen on, else all.
    pub gpu_mask: u64,
    /// Whether the target was found in NVML's process lists (false: all GPUs were averaged).
    pub process_found: bool,
    /// Index-aligned with the report's requests.
    pub requests: Vec<RequestGpu>,
    /// Pooled over all requests: `prefill`, `decode`, and `run` (the whole run).
    pub phases: BTreeMap<String, GpuFigure>,
    /// Pooled over each stage's calls (by stage name).
    pub stages: BTreeMap<String, GpuFigure>,
    /// The target process's own GPU use over the run (NVML per-process samples).
    pub process: ProcessWindow,
    /// Per-call NVML errors, by C function name.
    pub errors: BTreeMap<&'static str, u64>,
    /// The sampled timeline (column arrays), for plotting.
    #[serde(skip)]
    pub timeline: Value,
}

/// Joins `gpu` (stopped or running) with the run's requests and stage calls.
/// `call_names[i]` is the stage name of `calls[i]`.
pub fn join(
    gpu: &GpuTelemetry,
    pid: u32,
    run: (u64, u64),
    requests: &[RequestRecord],
    calls: &[StageCall],
    call_names: &[String],
) -> GpuReport {
    // The GPUs the target used over the whole run, found once: a per-window process lookup
    // would rescan the timeline for every stage call whose window saw no process list.
    let whole = gpu.window(&GpuSelector::Pids(vec![pid]), run.0, run.1);
    let sel = GpuSelector::Gpus((0..64).filter(|i| whole.gpu_mask & (1u64 << i) != 0).collect());
    let prefill_spans: Vec<(u64, u64)> =
        requests.iter().map(|r| (r.request_ns, r.first_token_ns.unwrap_or(r.end_ns))).collect();
    let decode_idx: Vec<usize> = (0..requests.len()).filter(|&i| requests[i].first_token_ns.is_some()).collect();
    let decode_spans: Vec<(u64, u64)> =
        decode_idx.iter().map(|&i| (requests[i].first_token_ns.unwrap_or(0), requests[i].end_ns)).collect();
    let prefill = gpu.windows(&sel, &prefill_spans);
    let decode = gpu.windows(&sel, &decode_spans);

    let mut per_request: Vec<RequestGpu> =
        prefill.iter().map(|w| RequestGpu { prefill: GpuFigure::from(w), decode: None }).collect();
    for (k, &i) in decode_idx.iter().enumerate() {
        per_request[i].decode = Some(GpuFigure::from(&decode[k]));
    }

    let mut phases = BTreeMap::new();
    phases.insert("run".to_string(), GpuFigure::from(&whole));
    if !prefill.is_empty() {
        phases.insert("prefill".to_string(), GpuFigure::from(&WindowStats::aggregate(&prefill)));
    }
    if !decode.is_empty() {
        phases.insert("decode".to_string(), GpuFigure::from(&WindowStats::aggregate(&decode)));
    }

    let spans: Vec<(u64, u64)> = calls.iter().map(|c| (c.start_ns, c.end_ns)).collect();
    let per_call = gpu.windows(&sel, &spans);
    let mut by_stage: BTreeMap<&str, Vec<WindowStats>> = BTreeMap::new();
    for (w, name) in per_call.into_iter().zip(call_names) {
        by_stage.entry(name.as_str()).or_default().push(w);
    }
    let stages = by_stage
        .into_iter()
        .map(|(name, ws)| (name.to_string(), GpuFigure::from(&WindowStats::aggregate(&ws))))
        .collect();

    GpuReport {
        status: gpu.status(),
        sampling_period_s: gpu.sampling_period_ns() as f64 / 1e9,
        resolution_s: gpu.resolution_ns() as f64 / 1e9,
        gpu_mask: whole.gpu_mask,
        process_found: whole.pid_matched,
        requests: per_request,
        phases,
        stages,
        process: gpu.process_window(pid, run.0, run.1),
        errors: gpu.errors(),
        timeline: gpu.timeline_json(),
    }
}

impl GpuReport {
    /// The report's `gpu` JSON object (the timeline included).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if self.status.enabled {
            v["timeline"] = self.timeline.clone();
        }
        v
    }

    /// The terminal section.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        if !self.status.enabled {
            let _ = writeln!(o, "\n{}", self.status.reason.as_deref().unwrap_or("GPU telemetry off"));
            return o;
        }
        let gpus: Vec<String> = (0..64).filter(|i| self.gpu_mask & (1u64 << i) != 0).map(|i| i.to_string()).collect();
        let _ = writeln!(
            o,
            "\nGPU utilization (NVML every {:.0} ms; windows under {:.2} s have no figure of their own) on GPU {}{}",
            self.sampling_period_s * 1e3,
            2.0 * self.resolution_s,
            gpus.join(", "),
            if self.process_found {
                " (where the target ran)"
            } else {
                " (target not in NVML's process list: all GPUs)"
            }
        );
        let line = |o: &mut String, label: &str, f: &GpuFigure| {
            let _ = match (f.too_short, f.util_pct) {
                (false, Some(u)) => writeln!(
                    o,
                    "  {label:<34}SM {u:>5.1}%  memory {}  ({} samples over {:.2} s)",
                    f.mem_util_pct.map_or("n/a".to_string(), |m| format!("{m:>5.1}%")),
                    f.samples,
                    f.span_s
                ),
                _ => writeln!(
                    o,
                    "  {label:<34}too short for NVML's sampling period ({} samples over {:.3} s)",
                    f.samples, f.span_s
                ),
            };
        };
        for (key, label) in [
            ("prefill", "waiting for first token (prefill)"),
            ("decode", "streaming tokens (decode)"),
            ("run", "whole run"),
        ] {
            if let Some(f) = self.phases.get(key) {
                line(&mut o, label, f);
            }
        }
        for (name, f) in &self.stages {
            line(&mut o, &format!("while `{name}` ran"), f);
        }
        let own = self.requests.iter().filter(|r| !r.prefill.too_short).count();
        if !self.requests.is_empty() {
            let _ = writeln!(
                o,
                "  {} of {} requests have a prefill window long enough for its own figure",
                own,
                self.requests.len()
            );
        }
        if self.process.samples > 0 {
            let _ = writeln!(
                o,
                "  target process: SM {}, up to {} of GPU memory ({} samples)",
                self.process.mean_sm_util.map_or("n/a".to_string(), |u| format!("{u:.1}%")),
                self.process
                    .max_fb_used_bytes
                    .map_or("n/a".to_string(), |b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)),
                self.process.samples
            );
        }
        let errors: u64 = self.errors.values().sum();
        if errors > 0 {
            let list: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(o, "  NVML call errors: {}", list.join(", "));
        }
        o
    }

    /// "90/30" style per-request cell for the waterfall: prefill/decode SM %, `-` when too short.
    pub fn cell(&self, i: usize) -> String {
        let Some(r) = self.requests.get(i) else { return String::new() };
        let f = |g: Option<&GpuFigure>| match g {
            Some(GpuFigure { too_short: false, util_pct: Some(u), .. }) => format!("{u:.0}"),
            _ => "-".to_string(),
        };
        format!("gpu {}/{}%", f(Some(&r.prefill)), f(r.decode.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_window_has_no_number() {
        let long = WindowStats {
            samples: 6,
            mean_util: Some(90.0),
            mean_mem_util: Some(45.0),
            util_samples: 6,
            mem_util_samples: 6,
            span_ns: 600_000_000,
            reliable: true,
            ..Default::default()
        };
        let f = GpuFigure::from(&long);
        assert_eq!((f.util_pct, f.mem_util_pct, f.too_short), (Some(90.0), Some(45.0), false));
        let short = WindowStats { samples: 1, span_ns: 20_000_000, reliable: false, ..long };
        let f = GpuFigure::from(&short);
        assert_eq!((f.util_pct, f.mem_util_pct, f.too_short, f.samples), (None, None, true, 1));
    }

    #[test]
    fn off_renders_its_reason_and_cells() {
        let mut r = GpuReport {
            status: GpuStatus {
                enabled: false,
                reason: Some("GPU telemetry off: x".into()),
                devices: 0,
                library: None,
            },
            sampling_period_s: 0.1,
            resolution_s: 1.0 / 6.0,
            gpu_mask: 1,
            process_found: true,
            requests: vec![RequestGpu {
                prefill: GpuFigure { util_pct: Some(90.0), too_short: false, ..Default::default() },
                decode: Some(GpuFigure { too_short: true, ..Default::default() }),
            }],
            phases: BTreeMap::new(),
            stages: BTreeMap::new(),
            process: ProcessWindow::default(),
            errors: BTreeMap::new(),
            timeline: Value::Null,
        };
        assert_eq!(r.render().trim(), "GPU telemetry off: x");
        assert!(r.to_json().get("timeline").is_none());
        assert_eq!(r.cell(0), "gpu 90/-%");
        assert_eq!(r.cell(5), "");
        r.status.enabled = true;
        assert!(r.render().contains("1 of 1 requests"));
    }
}
