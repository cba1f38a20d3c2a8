//! The end-of-run report: per-request timings, percentile summaries, a terminal rendering with a
//! per-request waterfall, and the JSON document written by `--json`.

use std::fmt::Write as _;

use serde::Serialize;

use std::collections::BTreeMap;

use crate::bpf::KernelCounters;
use crate::http::{ParseCounters, RequestRecord};
use crate::stages::stats::RequestStage;
use crate::stages::{Attribution, StageCall, StageSummary};
use crate::tracker::EventCounters;

const NS: f64 = 1e9;

/// What we know about the target process. No command line: it may hold credentials.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    /// Workers followed with it (pre-fork servers: they accept what its socket receives).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<u32>,
}

/// One request as written to JSON: exactly the documented field names.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RequestJson {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub request_ns: u64,
    pub first_byte_ns: u64,
    pub first_token_ns: Option<u64>,
    pub end_ns: u64,
    pub ttfb_s: f64,
    pub ttft_s: Option<f64>,
    pub e2e_s: f64,
    pub itl_s: Vec<f64>,
    pub chunks: u64,
    pub tokens: Option<u64>,
    /// Stage calls attributed to this request (only when stages are probed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<BTreeMap<String, RequestStage>>,
    /// GPU utilization over this request's prefill and decode windows (only when GPU
    /// telemetry ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::gpu::join::RequestGpu>,
    /// Why the exchange is partial (cut before its stream said it was complete); its `e2e_s`
    /// is then the time to the last byte seen, not a request duration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial: Option<&'static str>,
}

/// Stage results of a run with `--stage`/`--profile`.
#[derive(Debug, Clone)]
pub struct StageReport {
    pub summaries: Vec<StageSummary>,
    pub attribution: Attribution,
    pub calls: Vec<StageCall>,
    pub calls_not_kept: u64,
    /// Stages whose library never appeared.
    pub pending: Vec<String>,
}

impl From<&RequestRecord> for RequestJson {
    fn from(r: &RequestRecord) -> Self {
        Self {
            method: r.method.clone(),
            path: r.path.clone(),
            status: r.status,
            request_ns: r.request_ns,
            first_byte_ns: r.first_byte_ns,
            first_token_ns: r.first_token_ns,
            end_ns: r.end_ns,
            ttfb_s: r.ttfb_s(),
            ttft_s: r.ttft_s(),
            e2e_s: r.e2e_s(),
            itl_s: r.itl_s().collect(),
            chunks: r.chunks,
            tokens: r.tokens,
            stages: None,
            gpu: None,
            partial: r.partial,
        }
    }
}

/// p50/p90/p99/max/mean of a set of durations in seconds (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Distribution {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Distribution {
    pub fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            count: v.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// Which capture path measured the streams (`inferscope_capture_info{mode}` in the daemon).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaptureInfo {
    pub mode: crate::capture::CaptureMode,
    /// Set when the socket layer was not used, with the reason.
    pub fallback_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: usize,
    pub streaming_requests: usize,
    /// Requests cut before their stream said it was complete (kept, flagged, no e2e figure).
    pub partial_requests: usize,
    pub duration_s: f64,
    pub ttfb_s: Distribution,
    pub ttft_s: Distribution,
    pub itl_s: Distribution,
    pub e2e_s: Distribution,
    /// Content-bearing events per second over the run.
    pub chunks_per_s: f64,
    /// Stated completion tokens per second over the run (only requests whose stream states them).
    pub tokens_per_s: Option<f64>,
    /// Per request: content events per second between first token and end.
    pub decode_chunks_per_s: Distribution,
    pub requests_not_kept: u64,
    pub events: EventCounters,
    pub lost: KernelCounters,
    pub parse: ParseCounters,
    /// Why the run ended: "duration", "interrupted", "target exited".
    pub ended_by: String,
    pub capture: CaptureInfo,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub target: TargetInfo,
    pub requests: Vec<RequestRecord>,
    pub requests_not_kept: u64,
    pub duration_s: f64,
    pub events: EventCounters,
    pub kernel: KernelCounters,
    pub parse: ParseCounters,
    pub ended_by: String,
    /// The stream capture path that ran, and why not the socket layer if it did not.
    pub capture: CaptureInfo,
    /// Entries and capacity of each bounded kernel map at the end of the run.
    pub kernel_maps: Vec<(&'static str, usize, u32)>,
    pub stages: Option<StageReport>,
    /// Folded CPU samples per phase, when sampling ran.
    pub cpu: Option<crate::profile::Folded>,
    /// Folded off-CPU microseconds per phase, when `--off-cpu` ran.
    pub offcpu: Option<crate::profile::Folded>,
    /// GPU telemetry joined to the requests and stages (present, possibly off with its reason,
    /// unless GPU telemetry was not asked for).
    pub gpu: Option<crate::gpu::join::GpuReport>,
}

impl Report {
    fn request_json(&self) -> Vec<RequestJson> {
        self.requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut j = RequestJson::from(r);
                if let Some(st) = &self.stages {
                    j.stages = Some(st.attribution.per_request.get(i).cloned().unwrap_or_default());
                }
                if let Some(g) = self.gpu.as_ref().filter(|g| g.status.enabled) {
                    j.gpu = g.requests.get(i).copied();
                }
                j
            })
            .collect()
    }

    pub fn summary(&self) -> Summary {
        let js: Vec<RequestJson> = self.requests.iter().map(RequestJson::from).collect();
        let total_chunks: u64 = self.requests.iter().map(|r| r.chunks).sum();
        let stated: Vec<u64> = self.requests.iter().filter_map(|r| r.tokens).collect();
        let per = |x: f64| if self.duration_s > 0.0 { x / self.duration_s } else { 0.0 };
        Summary {
            requests: js.len(),
            streaming_requests: self.requests.iter().filter(|r| r.streaming).count(),
            duration_s: self.duration_s,
            ttfb_s: Distribution::of(js.iter().map(|r| r.ttfb_s).collect()),
            ttft_s: Distribution::of(js.iter().filter_map(|r| r.ttft_s).collect()),
            itl_s: Distribution::of(js.iter().flat_map(|r| r.itl_s.iter().copied()).collect()),
            e2e_s: Distribution::of(js.iter().filter(|r| r.partial.is_none()).map(|r| r.e2e_s).collect()),
            partial_requests: js.iter().filter(|r| r.partial.is_some()).count(),
            chunks_per_s: per(total_chunks as f64),
            tokens_per_s: (!stated.is_empty()).then(|| per(stated.iter().sum::<u64>() as f64)),
            decode_chunks_per_s: Distribution::of(
                self.requests
                    .iter()
                    .filter_map(|r| {
                        let first = r.first_token_ns?;
                        let span = r.end_ns.saturating_sub(first) as f64 / NS;
                        (r.chunks > 1 && span > 0.0).then(|| (r.chunks - 1) as f64 / span)
                    })
                    .collect(),
            ),
            requests_not_kept: self.requests_not_kept,
            events: self.events,
            lost: self.kernel,
            parse: self.parse,
            ended_by: self.ended_by.clone(),
            capture: self.capture.clone(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "target": self.target,
            "requests": self.request_json(),
            "summary": self.summary(),
            "kernel_maps": self.kernel_maps.iter().map(|(name, entries, capacity)| {
                (name.to_string(), serde_json::json!({"entries": entries, "capacity": capacity}))
            }).collect::<serde_json::Map<_, _>>(),
        });
        if let Some(st) = &self.stages {
            doc["stages"] = serde_json::to_value(&st.summaries).unwrap_or_default();
            doc["stage_calls"] = serde_json::json!({
                "shared": st.attribution.shared,
                "outside_requests": st.attribution.outside,
                "not_kept": st.calls_not_kept,
                "never_attached": st.pending,
                "lost": self.kernel.stage_lost,
                "unmatched_returns": self.kernel.stage_unmatched,
                "too_deep": self.kernel.stage_too_deep,
            });
        }
        if let Some(cpu) = &self.cpu {
            doc["cpu"] = serde_json::json!({
                "samples": cpu.samples,
                "by_phase": cpu.by_phase.iter().map(|(p, s)| (p.clone(), s.values().sum::<u64>())).collect::<BTreeMap<_, _>>(),
                "no_user_stack": cpu.no_user_stack,
                "truncated": cpu.truncated,
                "samples_map_full": self.kernel.samples_map_full,
                "top_functions": crate::profile::top_functions(cpu, 20).into_iter().map(|(f, s, t)| serde_json::json!({"function": f, "self": s, "total": t})).collect::<Vec<_>>(),
            });
        }
        if let Some(g) = &self.gpu {
            doc["gpu"] = g.to_json();
        }
        if let Some(off) = &self.offcpu {
            doc["off_cpu"] = serde_json::json!({
                "total_us": off.samples,
                "by_phase_us": off.by_phase.iter().map(|(p, s)| (p.clone(), s.values().sum::<u64>())).collect::<BTreeMap<_, _>>(),
                "map_full": self.kernel.offcpu_map_full,
                "top_functions": crate::profile::top_functions(off, 20).into_iter().map(|(f, s, t)| serde_json::json!({"function": f, "self": s, "total": t})).collect::<Vec<_>>(),
            });
        }
        doc
    }

    fn render_offcpu(&self, o: &mut String) {
        let Some(off) = &self.offcpu else { return };
        let _ = writeln!(
            o,
            "
Off-CPU (blocked) time {:.3} s over all threads; where threads blocked:",
            off.samples as f64 / 1e6
        );
        let _ = writeln!(o, "{:<60}{:>8}{:>8}", "top blocking functions", "self", "total");
        for (f, s, t) in crate::profile::top_functions(off, 12) {
            let name: String = if f.chars().count() > 58 { f.chars().take(57).collect::<String>() + "…" } else { f };
            let _ = writeln!(o, "{name:<60}{:>7.1}%{:>7.1}%", s * 100.0, t * 100.0);
        }
    }

    fn render_cpu(&self, o: &mut String) {
        let Some(cpu) = &self.cpu else { return };
        let phases: Vec<String> = cpu
            .by_phase
            .iter()
            .filter(|(p, _)| *p != "all")
            .map(|(p, s)| format!("{p} {}", s.values().sum::<u64>()))
            .collect();
        let _ = writeln!(
            o,
            "\nCPU samples {} ({}); no user stack {:.1}%, truncated stacks {:.1}%",
            cpu.samples,
            phases.join(", "),
            pct(cpu.no_user_stack, cpu.samples),
            pct(cpu.truncated, cpu.samples)
        );
        let _ = writeln!(o, "{:<60}{:>8}{:>8}", "top functions", "self", "total");
        for (f, s, t) in crate::profile::top_functions(cpu, 12) {
            let name: String = if f.chars().count() > 58 { f.chars().take(57).collect::<String>() + "…" } else { f };
            let _ = writeln!(o, "{name:<60}{:>7.1}%{:>7.1}%", s * 100.0, t * 100.0);
        }
    }

    fn render_stages(&self, o: &mut String, width: usize) {
        let Some(st) = &self.stages else { return };
        if st.summaries.is_empty() {
            let _ = writeln!(o, "\nstages: no probed function was called");
            return;
        }
        let _ = writeln!(
            o,
            "\n{:<16}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>11}{:>11}",
            "stage", "count", "mean", "std", "p50", "p90", "p99", "min", "max", "total", "self"
        );
        for s in &st.summaries {
            let _ = writeln!(
                o,
                "{:<16}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>11}{:>11}",
                s.name,
                s.count,
                ms(s.mean_s),
                ms(s.std_s),
                ms(s.p50_s),
                ms(s.p90_s),
                ms(s.p99_s),
                ms(s.min_s),
                ms(s.max_s),
                ms(s.total_s),
                ms(s.self_s)
            );
        }
        let all_self: f64 = st.summaries.iter().map(|s| s.self_s).sum();
        if all_self > 0.0 {
            let bar_w = width.saturating_sub(34).clamp(10, 60);
            let _ = writeln!(o, "\nwhere probed time goes (self time)");
            for s in &st.summaries {
                let share = s.self_s / all_self;
                let n = (share * bar_w as f64).round() as usize;
                let _ = writeln!(o, "  {:<16}{:<bar_w$} {:>5.1}%", s.name, "█".repeat(n), share * 100.0);
            }
        }
        let shared: u64 = st.attribution.shared.values().map(|v| v.count).sum();
        let outside: u64 = st.attribution.outside.values().map(|v| v.count).sum();
        let _ = writeln!(o, "calls shared by several requests (batches): {shared}; outside any request: {outside}");
        if !st.pending.is_empty() {
            let _ = writeln!(o, "never attached (library not loaded): {}", st.pending.join(", "));
        }
    }

    /// The terminal report: summary table, then a waterfall of the last requests.
    pub fn render(&self, width: usize, max_rows: usize) -> String {
        let s = self.summary();
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\ninferscope report — pid {} ({}) — {:.1} s, ended by {} — capture: {}",
            self.target.pid,
            self.target.comm,
            s.duration_s,
            s.ended_by,
            match &s.capture.fallback_reason {
                None => s.capture.mode.name().to_string(),
                Some(why) => format!("{} ({why})", s.capture.mode.name()),
            }
        );
        if !self.target.workers.is_empty() {
            let pids: Vec<String> = self.target.workers.iter().map(u32::to_string).collect();
            let _ = writeln!(o, "followed with its workers (they serve its listening socket): pid {}", pids.join(", "));
        }
        let _ = writeln!(
            o,
            "requests {} ({} streaming)   chunks/s {:.1}   tokens/s {}   lost events {}",
            s.requests,
            s.streaming_requests,
            s.chunks_per_s,
            s.tokens_per_s.map_or("n/a (not stated by the stream)".into(), |t| format!("{t:.1}")),
            s.lost.lost_total()
        );
        let _ =
            writeln!(o, "\n{:<22}{:>7}{:>11}{:>11}{:>11}{:>11}{:>11}", "", "count", "p50", "p90", "p99", "max", "mean");
        for (name, d) in (s.requests > 0)
            .then_some([
                ("time to first byte", s.ttfb_s),
                ("time to first token", s.ttft_s),
                ("inter-token latency", s.itl_s),
                ("end-to-end", s.e2e_s),
            ])
            .into_iter()
            .flatten()
        {
            let _ = writeln!(
                o,
                "{name:<22}{:>7}{:>11}{:>11}{:>11}{:>11}{:>11}",
                d.count,
                ms(d.p50),
                ms(d.p90),
                ms(d.p99),
                ms(d.max),
                ms(d.mean)
            );
        }
        if s.decode_chunks_per_s.count > 0 {
            let d = s.decode_chunks_per_s;
            let _ = writeln!(
                o,
                "{:<22}{:>7}{:>11.1}{:>11.1}{:>11.1}{:>11.1}{:>11.1}  (chunks/s per request)",
                "decode rate", d.count, d.p50, d.p90, d.p99, d.max, d.mean
            );
        }
        let p = &s.parse;
        let problems = p.bad_heads + p.bad_chunks + p.framing_lost + p.unmatched_responses + p.aborted;
        if problems > 0 || s.events.decode_errors > 0 || s.lost.lost_total() > 0 {
            let _ = writeln!(
                o,
                "\nnot measured: lost events {} (reads {}, writes {}), non-HTTP heads {}, bad chunking {}, framing lost {}, responses without request {}, aborted {}, decode errors {}",
                s.lost.lost_total(),
                s.lost.lost_reads,
                s.lost.lost_writes,
                p.bad_heads,
                p.bad_chunks,
                p.framing_lost,
                p.unmatched_responses,
                p.aborted,
                s.events.decode_errors
            );
        }
        if s.events.no_payload > 0 {
            let _ = writeln!(
                o,
                "not captured: {} socket reads/writes of the target had no buffer we can read (io_uring, sendfile, \
                 kernel workers): their lengths count, their bytes (requests, frames) are not seen",
                s.events.no_payload
            );
        }
        self.render_stages(&mut o, width);
        self.render_cpu(&mut o);
        self.render_offcpu(&mut o);
        if let Some(g) = &self.gpu {
            o.push_str(&g.render());
        }
        o.push_str(&self.waterfall(width, max_rows));
        o
    }

    fn waterfall(&self, width: usize, max_rows: usize) -> String {
        let mut o = String::new();
        if self.requests.is_empty() {
            o.push_str("\nno requests seen\n");
            return o;
        }
        let first_shown = self.requests.len().saturating_sub(max_rows);
        let shown = &self.requests[first_shown..];
        let longest = shown.iter().map(|r| r.end_ns.saturating_sub(r.request_ns)).max().unwrap_or(1).max(1);
        let label_w = 28;
        let bar_w = width.saturating_sub(label_w + 34).clamp(10, 80);
        let _ = writeln!(
            o,
            "\nwaterfall (last {} of {} requests; bar = request → end, scale {} per char)\n  ░ waiting for first byte  ▒ first byte → first token  █ streaming  │ first token",
            shown.len(),
            self.requests.len(),
            ms(longest as f64 / NS / bar_w as f64)
        );
        for (offset, r) in shown.iter().enumerate() {
            let col =
                |t: u64| ((t.saturating_sub(r.request_ns) as f64 / longest as f64) * bar_w as f64).round() as usize;
            let fb = col(r.first_byte_ns).min(bar_w);
            let ft = r.first_token_ns.map(|t| col(t).min(bar_w));
            let end = col(r.end_ns).clamp(1, bar_w);
            let mut bar = String::new();
            for i in 0..bar_w {
                let ch = if i >= end {
                    ' '
                } else if ft == Some(i) {
                    '│'
                } else if i < fb {
                    '░'
                } else if ft.is_some_and(|f| i < f) {
                    '▒'
                } else if ft.is_some() {
                    '█'
                } else {
                    '▒'
                };
                bar.push(ch);
            }
            let mut label = format!("{} {}", r.method, r.path);
            let n = label.chars().count();
            if n > label_w - 1 {
                // Keep the end: it is what tells requests apart (`…/completions/r17`).
                label = "…".to_string() + &label.chars().skip(n - (label_w - 3)).collect::<String>();
            }
            let j = RequestJson::from(r);
            let gpu = self
                .gpu
                .as_ref()
                .filter(|g| g.status.enabled)
                .map_or(String::new(), |g| format!(" {}", g.cell(first_shown + offset)));
            let _ = writeln!(
                o,
                "{label:<label_w$}{bar} ttft {:>9} e2e {:>9} {:>4} ch{gpu}",
                j.ttft_s.map_or("-".into(), ms),
                ms(j.e2e_s),
                r.chunks
            );
            self.stage_rows(&mut o, first_shown + offset, label_w, bar_w, &col);
        }
        o
    }

    /// Under a request's bar: one row per stage, marking where its calls ran.
    fn stage_rows(&self, o: &mut String, idx: usize, label_w: usize, bar_w: usize, col: &dyn Fn(u64) -> usize) {
        let Some(st) = &self.stages else { return };
        let mut rows: BTreeMap<&str, Vec<char>> = BTreeMap::new();
        for (i, c) in st.calls.iter().enumerate() {
            if st.attribution.call_request.get(i).copied().flatten() != Some(idx) {
                continue;
            }
            let row = rows.entry(st.attribution.call_names[i].as_str()).or_insert_with(|| vec![' '; bar_w]);
            let (a, b) = (col(c.start_ns).min(bar_w - 1), col(c.end_ns).min(bar_w - 1));
            for cell in row.iter_mut().take(b + 1).skip(a) {
                *cell = '▬';
            }
        }
        for (name, row) in rows {
            let _ = writeln!(o, "{:>label_w$}{}", format!("{name} "), row.into_iter().collect::<String>());
        }
    }
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

fn ms(s: f64) -> String {
    if s == 0.0 {
        "0".into()
    } else if s < 0.001 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 10.0 {
        format!("{:.2}ms", s * 1e3)
    } else {
        format!("{s:.2}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(request: u64, fb: u64, ft: Option<u64>, writes: &[u64], end: u64) -> RequestRecord {
        RequestRecord {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: 200,
            request_ns: request,
            first_byte_ns: fb,
            first_token_ns: ft,
            end_ns: end,
            content_write_ns: writes.to_vec(),
            chunks: writes.len() as u64,
            tokens: Some(writes.len() as u64),
            streaming: true,
            read_tid: 1,
            write_tid: 1,
            partial: None,
        }
    }

    #[test]
    fn percentiles_nearest_rank() {
        let d = Distribution::of((1..=100).map(f64::from).collect());
        assert_eq!((d.p50, d.p90, d.p99, d.max, d.mean), (50.0, 90.0, 99.0, 100.0, 50.5));
        assert_eq!(Distribution::of(vec![]).count, 0);
        assert_eq!(Distribution::of(vec![3.0]).p99, 3.0);
    }

    #[test]
    fn json_fields_are_derived_from_timestamps() {
        let r = rec(
            1_000_000_000,
            1_001_000_000,
            Some(1_050_000_000),
            &[1_050_000_000, 1_057_000_000, 1_064_000_000],
            1_070_000_000,
        );
        let j = RequestJson::from(&r);
        assert!((j.ttfb_s - 0.001).abs() < 1e-12);
        assert!((j.ttft_s.unwrap() - 0.050).abs() < 1e-12);
        assert!((j.e2e_s - 0.070).abs() < 1e-12);
        assert_eq!(j.itl_s.len(), 2);
        assert!((j.itl_s[0] - 0.007).abs() < 1e-12);
        let v = serde_json::to_value(&j).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "method",
            "path",
            "status",
            "request_ns",
            "first_byte_ns",
            "first_token_ns",
            "end_ns",
            "ttfb_s",
            "ttft_s",
            "e2e_s",
            "itl_s",
            "chunks",
            "tokens",
        ];
        want.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, want);
    }

    #[test]
    fn render_has_table_and_waterfall() {
        let report = Report {
            target: TargetInfo { pid: 1, comm: "srv".into(), exe: "/srv".into(), workers: Vec::new() },
            requests: vec![rec(0, 1_000_000, Some(50_000_000), &[50_000_000, 60_000_000], 100_000_000)],
            requests_not_kept: 0,
            duration_s: 1.0,
            events: EventCounters::default(),
            kernel: KernelCounters::default(),
            parse: ParseCounters::default(),
            ended_by: "duration".into(),
            capture: CaptureInfo { mode: crate::capture::CaptureMode::Socket, fallback_reason: None },
            kernel_maps: Vec::new(),
            stages: None,
            cpu: None,
            offcpu: None,
            gpu: None,
        };
        let text = report.render(100, 10);
        assert!(text.contains("time to first token"));
        assert!(text.contains("│"), "{text}");
        assert!(text.contains("█"));
        assert!(text.contains("50.00ms"));
    }
}
