//! The end-of-run report: per-request timings, percentile summaries, a terminal rendering with a
//! per-request waterfall, and the JSON document written by `--json`.

mod json;
mod protocols;
mod terminal;
#[cfg(test)]
mod tests;
pub mod trace;
pub mod width;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bpf::KernelCounters;
use crate::http::{ParseCounters, RequestRecord};
use crate::stages::stats::RequestStage;
use crate::stages::{Attribution, StageCall, StageSummary};
use crate::tracker::EventCounters;

const NS: f64 = 1e9;

pub use crate::procfs::{ExecInfo, TargetInfo};

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
    /// Sampled Python stages of this request (only with `py:` stages): estimates with error bars.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_stages: Option<BTreeMap<String, crate::stages::sampled::Estimate>>,
    /// GPU utilization over this request's prefill and decode windows (only when GPU
    /// telemetry ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::gpu::join::RequestGpu>,
    /// Why the exchange is partial (cut before its stream said it was complete); its `e2e_s`
    /// is then the time to the last byte seen, not a request duration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial: Option<&'static str>,
    /// The model the request named (or its response's first events named), sanitized; past
    /// `--max-models` distinct names, `other`. Absent when neither named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// gRPC calls: the `grpc-status` code of the trailers (0 = OK, 8 = RESOURCE_EXHAUSTED, …);
    /// absent for HTTP and for calls whose trailers were not seen. Never the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
}

/// One row of the per-model summary: requests that named this model (`unknown`: none named).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelSummary {
    pub model: String,
    pub requests: usize,
    pub ttft_s: Distribution,
    pub itl_s: Distribution,
    pub e2e_s: Distribution,
}

/// Stage results of a run with `--stage`/`--stage-set`.
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
            python_stages: None,
            gpu: None,
            partial: r.partial,
            model: r.model.clone(),
            grpc_status: r.grpc_status,
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
    /// Per model (by label, `unknown` last), when any request named one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelSummary>,
    /// Requests reported as model `other` because `--max-models` names were already seen.
    pub models_folded: u64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub target: TargetInfo,
    pub requests: Vec<RequestRecord>,
    pub requests_not_kept: u64,
    /// Requests whose model was folded into `other` by the cap.
    pub models_folded: u64,
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
    /// Sampled Python stages (`py:GLOB`), when asked for.
    pub py_stages: Option<crate::stages::sampled::PyStageReport>,
    /// Folded CPU samples per phase, when sampling ran.
    pub cpu: Option<crate::profile::Folded>,
    /// Folded off-CPU microseconds per phase, when `--off-cpu` ran.
    pub offcpu: Option<crate::profile::Folded>,
    /// GPU telemetry joined to the requests and stages (present, possibly off with its reason,
    /// unless GPU telemetry was not asked for).
    pub gpu: Option<crate::gpu::join::GpuReport>,
}

impl Report {
    /// The run as a Chrome Trace Event document (`--trace`): see [`trace`].
    pub fn trace_json(&self) -> serde_json::Value {
        let stages =
            self.stages.as_ref().map(|st| trace::StageTrack { calls: &st.calls, names: &st.attribution.call_names });
        let gpu = self.gpu.as_ref().map(|g| &g.timeline);
        trace::trace_json((&self.target.comm, self.target.pid), &self.requests, stages, gpu)
    }

    fn request_json(&self) -> Vec<RequestJson> {
        self.requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut j = RequestJson::from(r);
                if let Some(st) = &self.stages {
                    j.stages = Some(st.attribution.per_request.get(i).cloned().unwrap_or_default());
                }
                if let Some(py) = &self.py_stages {
                    j.python_stages = Some(py.per_request.get(i).cloned().unwrap_or_default());
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
            models: model_rows(&js),
            models_folded: self.models_folded,
        }
    }
}

/// The per-model rows: none when no request named a model (one `unknown` row says nothing).
fn model_rows(js: &[RequestJson]) -> Vec<ModelSummary> {
    if js.iter().all(|r| r.model.is_none()) {
        return Vec::new();
    }
    let mut by: BTreeMap<(bool, &str), Vec<&RequestJson>> = BTreeMap::new();
    for r in js {
        let m = r.model.as_deref();
        by.entry((m.is_none(), m.unwrap_or(crate::http::model::UNKNOWN))).or_default().push(r);
    }
    by.into_iter()
        .map(|((_, model), rs)| ModelSummary {
            model: model.to_string(),
            requests: rs.len(),
            ttft_s: Distribution::of(rs.iter().filter_map(|r| r.ttft_s).collect()),
            itl_s: Distribution::of(rs.iter().flat_map(|r| r.itl_s.iter().copied()).collect()),
            e2e_s: Distribution::of(rs.iter().filter(|r| r.partial.is_none()).map(|r| r.e2e_s).collect()),
        })
        .collect()
}
