//! Sampled Python stages (`--stage NAME=py:GLOB`): how long each request spent in matching
//! Python functions, estimated from CPU samples. Python functions have no native symbol to
//! probe, so nothing here is exact: every CPU sample of the target (one per `1/hz` s of CPU time,
//! the software cpu-clock's fixed period) carries its time, thread and Python frames; a sample
//! whose Python stack holds a frame matching the stage's glob counts for the request that
//! thread serves, by the same rules as probed calls ([`super::owner`]: the request read or
//! written on that thread, else the only one in flight, else the one whose content write comes
//! next, else shared), and for its phase (before that request's first token: prefill). Time = samples ×
//! period, on-CPU time only (a function blocked in I/O or waiting for the GIL is not sampled),
//! with a ±2√n-samples error bar (≈95 % for a Poisson count; at least 3 samples, the 95 % bound
//! when none was seen).

use std::collections::{BTreeMap, HashMap};

use agent_common::python::PySample;
use serde::Serialize;

use super::owner::Owner;
use super::StageDef;
use crate::http::RequestRecord;

/// Spec prefix of a Python stage.
pub const PY_PREFIX: &str = "py:";
/// Samples kept for attribution; later ones are counted only (at 99 Hz on 2 CPUs: ~5 h).
pub const MAX_SAMPLES: usize = 2_000_000;
/// Python stages one run may have (a stack's matches are a bit mask).
pub const MAX_PY_STAGES: usize = 64;

/// The samples of one run, in arrival order, bounded.
#[derive(Debug, Default)]
pub struct SampleLog {
    pub samples: Vec<PySample>,
    pub not_kept: u64,
}

impl SampleLog {
    pub fn push(&mut self, s: PySample) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(s);
        } else {
            self.not_kept += 1;
        }
    }
}

/// `module.qualname` of a Python frame name (`module.qualname (file.py:12)`), None for a
/// native frame.
pub fn python_function(frame: &str) -> Option<&str> {
    let open = frame.rfind(" (")?;
    let inner = frame[open + 2..].strip_suffix(')')?;
    let (file, line) = inner.rsplit_once(':')?;
    let is_py = file.ends_with(".py") || (file.starts_with('<') && file.ends_with('>')) || file.ends_with(".pyw");
    (is_py && !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())).then(|| &frame[..open])
}

/// Bit i set when some Python frame of `frames` matches glob i.
pub fn stack_mask<S: AsRef<str>>(frames: &[S], globs: &[&str]) -> u64 {
    let mut mask = 0u64;
    for f in frames {
        let Some(func) = python_function(f.as_ref()) else { continue };
        for (i, g) in globs.iter().enumerate().take(MAX_PY_STAGES) {
            if crate::symbols::glob_match(g, func) {
                mask |= 1 << i;
            }
        }
    }
    mask
}

/// A sampled duration: samples seen, the time they stand for and its error bar (seconds).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Estimate {
    pub samples: u64,
    pub est_s: f64,
    /// ± this many seconds (≈95 %: 2√n samples, at least 3).
    pub error_s: f64,
}

impl Estimate {
    pub fn of(samples: u64, period_s: f64) -> Self {
        Self { samples, est_s: samples as f64 * period_s, error_s: error_samples(samples) * period_s }
    }
}

/// The ≈95 % half-width of a Poisson count of `n`, in samples: 2√n, at least 3.
pub fn error_samples(n: u64) -> f64 {
    (2.0 * (n as f64).sqrt()).max(3.0)
}

/// One Python stage over the whole run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PyStageSummary {
    pub name: String,
    pub glob: String,
    /// Every matching sample of the target, requests or not.
    #[serde(flatten)]
    pub total: Estimate,
    /// Requests with at least one matching sample.
    pub requests: usize,
}

/// Sampled Python stages of a run: always labelled with the method.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PyStageReport {
    /// Always "sampled": these are estimates, never exact durations.
    pub method: &'static str,
    pub hz: u64,
    pub period_s: f64,
    pub error_bar: &'static str,
    pub stages: Vec<PyStageSummary>,
    /// Per stage: samples in flight of several requests on other threads (never given to one).
    pub shared: BTreeMap<String, Estimate>,
    /// Per stage: its samples by the phase of the request they went to (`prefill` before its
    /// first token, `decode` after), or `shared` / `outside`.
    pub phases: BTreeMap<String, BTreeMap<&'static str, Estimate>>,
    /// Per stage: samples while no request was in flight.
    pub outside_requests: BTreeMap<String, Estimate>,
    /// Samples of the target seen (with or without Python frames), and those not usable.
    pub samples: u64,
    /// Samples whose stack could not be stored or named (no Python frames known).
    pub samples_unnamed: u64,
    pub samples_not_kept: u64,
    /// Samples the kernel could not send (`PY_SAMPLES` full).
    pub samples_lost: u64,
    /// Aligned with the report's requests: stage name → estimate (stages with samples only).
    #[serde(skip)]
    pub per_request: Vec<BTreeMap<String, Estimate>>,
}

pub const ERROR_BAR: &str = "±2√n samples (≈95 % for a Poisson count; at least 3 samples)";

impl PyStageReport {
    /// The terminal table: every figure says it is sampled and carries its error bar.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\nPython stages (SAMPLED at {} Hz, on-CPU time = samples × {:.2} ms, error bar {}):",
            self.hz,
            self.period_s * 1e3,
            self.error_bar
        );
        let _ = writeln!(o, "{:<16}{:>9}{:>22}{:>10}  glob", "stage", "samples", "est. time", "requests");
        for s in &self.stages {
            let _ = writeln!(
                o,
                "{:<16}{:>9}{:>22}{:>10}  py:{}",
                s.name,
                s.total.samples,
                format!("~{:.1} ± {:.1} ms", s.total.est_s * 1e3, s.total.error_s * 1e3),
                s.requests,
                s.glob
            );
        }
        let shared: u64 = self.shared.values().map(|e| e.samples).sum();
        if shared > 0 {
            let _ = writeln!(o, "{shared} matching samples fell while several requests ran on other threads (shared)");
        }
        if self.samples_unnamed + self.samples_lost + self.samples_not_kept > 0 {
            let _ = writeln!(
                o,
                "samples not usable: {} without known Python frames, {} lost in the kernel, {} over the cap",
                self.samples_unnamed, self.samples_lost, self.samples_not_kept
            );
        }
        o
    }
}

/// Attributes the samples of `pid` to `requests` (sorted or not) for the Python stages in
/// `defs`; `mask_of(stack)` says which stages a stack matches (None: its frames are unknown).
pub fn attribute(
    requests: &[RequestRecord],
    log: &SampleLog,
    pid: u32,
    defs: &[StageDef],
    hz: u64,
    samples_lost: u64,
    mut mask_of: impl FnMut(i32) -> Option<u64>,
) -> PyStageReport {
    let period_s = 1.0 / hz.max(1) as f64;
    let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| requests[i].request_ns);
    let mut per_request: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); requests.len()];
    let (mut shared, mut outside): (BTreeMap<String, u64>, BTreeMap<String, u64>) = Default::default();
    let mut phases: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut totals = vec![0u64; names.len()];
    let mut masks: HashMap<i32, Option<u64>> = HashMap::new();
    let (mut seen, mut unnamed) = (0u64, 0u64);
    // Samples in time order, against the requests in flight at each (a sweep).
    let mut mine: Vec<&PySample> = log.samples.iter().filter(|s| s.tgid == pid).collect();
    mine.sort_by_key(|s| s.ts_ns);
    let (mut next, mut active) = (0usize, Vec::<usize>::new());
    for s in mine {
        seen += 1;
        let mask = *masks.entry(s.stack).or_insert_with(|| if s.stack < 0 { None } else { mask_of(s.stack) });
        let Some(mask) = mask else {
            unnamed += 1;
            continue;
        };
        if mask == 0 {
            continue;
        }
        while next < order.len() && requests[order[next]].request_ns <= s.ts_ns {
            active.push(order[next]);
            next += 1;
        }
        active.retain(|&r| requests[r].end_ns >= s.ts_ns);
        let who = super::owner::owner(requests, &active, s.ts_ns, s.tid);
        let phase = match who {
            Owner::Request(r) if requests[r].first_token_ns.is_none_or(|ft| s.ts_ns < ft) => "prefill",
            Owner::Request(_) => "decode",
            Owner::Shared => "shared",
            Owner::Outside => "outside",
        };
        for (i, name) in names.iter().enumerate().take(MAX_PY_STAGES) {
            if mask & (1 << i) == 0 {
                continue;
            }
            totals[i] += 1;
            let into = match who {
                Owner::Request(r) => &mut per_request[r],
                Owner::Shared => &mut shared,
                Owner::Outside => &mut outside,
            };
            *into.entry(name.to_string()).or_default() += 1;
            *phases.entry(name.to_string()).or_default().entry(phase).or_default() += 1;
        }
    }
    let est = |m: BTreeMap<String, u64>| m.into_iter().map(|(k, n)| (k, Estimate::of(n, period_s))).collect();
    let stages = defs
        .iter()
        .enumerate()
        .map(|(i, d)| PyStageSummary {
            name: d.name.clone(),
            glob: d.python_glob().unwrap_or_default().to_string(),
            total: Estimate::of(totals[i], period_s),
            requests: per_request.iter().filter(|m| m.contains_key(&d.name)).count(),
        })
        .collect();
    PyStageReport {
        method: "sampled",
        hz,
        period_s,
        error_bar: ERROR_BAR,
        stages,
        shared: est(shared),
        phases: phases
            .into_iter()
            .map(|(k, m)| (k, m.into_iter().map(|(p, n)| (p, Estimate::of(n, period_s))).collect()))
            .collect(),
        outside_requests: est(outside),
        samples: seen,
        samples_unnamed: unnamed,
        samples_not_kept: log.not_kept,
        samples_lost,
        per_request: per_request.into_iter().map(est).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(request: u64, end: u64, tid: u32) -> RequestRecord {
        RequestRecord {
            content_write_ns: vec![],
            chunks: 0,
            ..RequestRecord::test_stream(request, &[request + 2], end, tid)
        }
    }

    fn sample(ts: u64, tid: u32, stack: i32) -> PySample {
        PySample { ts_ns: ts, tgid: 7, tid, stack, _pad: 0 }
    }

    #[test]
    fn python_frames_are_told_from_native_ones() {
        assert_eq!(python_function("llama.Llama.generate (llama.py:822)"), Some("llama.Llama.generate"));
        assert_eq!(python_function("runpy._run_code (<frozen runpy>:64)"), Some("runpy._run_code"));
        assert_eq!(python_function("llama_context::decode(llama_batch const&)"), None);
        assert_eq!(python_function("f (x.c:12)"), None);
        assert_eq!(python_function("f (x.py:)"), None);
        let frames = ["main", "app.handle (app.py:3)", "llama.Llama.generate (llama.py:822)", "llama_decode"];
        assert_eq!(stack_mask(&frames, &["*Llama.generate", "*.eval", "app.*"]), 0b101);
        assert_eq!(stack_mask(&["llama_decode"], &["*"]), 0, "native frames never match");
    }

    #[test]
    fn error_bars_grow_with_the_square_root() {
        assert_eq!(error_samples(0), 3.0);
        assert_eq!(error_samples(100), 20.0);
        let e = Estimate::of(100, 0.01);
        assert!((e.est_s - 1.0).abs() < 1e-12 && (e.error_s - 0.2).abs() < 1e-12);
    }

    #[test]
    fn samples_go_to_the_thread_request_else_the_only_one_else_shared() {
        let defs = vec![
            super::super::stage_set::parse_stage_arg("gen=py:*generate").unwrap(),
            super::super::stage_set::parse_stage_arg("dec=py:*decode").unwrap(),
        ];
        // request 0 on thread 11 [100, 400], request 1 on thread 12 [150, 500], request 2 [1000, 1200]
        let requests = vec![req(100, 400, 11), req(150, 500, 12), req(1000, 1200, 11)];
        let mut log = SampleLog::default();
        log.push(sample(160, 12, 1)); // thread 12 → request 1; stack 1 = gen + dec
        log.push(sample(170, 99, 2)); // worker thread, two in flight → shared (gen)
        log.push(sample(1010, 99, 2)); // worker, only request 2 → request 2
        log.push(sample(2000, 99, 2)); // none in flight → outside
        log.push(sample(1020, 99, 3)); // no Python stage in this stack
        log.push(sample(1030, 99, -1)); // stack not stored → unnamed
        log.push(PySample { tgid: 8, ..sample(1040, 99, 2) }); // another process: ignored
        let masks = |id: i32| match id {
            1 => Some(0b11),
            2 => Some(0b01),
            3 => Some(0),
            _ => None,
        };
        let r = attribute(&requests, &log, 7, &defs, 100, 0, masks);
        assert_eq!(r.method, "sampled");
        assert_eq!(r.per_request[1]["gen"].samples, 1);
        assert_eq!(r.per_request[1]["dec"].samples, 1);
        assert!(r.per_request[0].is_empty());
        assert_eq!(r.per_request[2]["gen"].samples, 1);
        assert!((r.per_request[2]["gen"].est_s - 0.01).abs() < 1e-12);
        assert_eq!(r.shared["gen"].samples, 1);
        assert_eq!(r.outside_requests["gen"].samples, 1);
        assert_eq!((r.samples, r.samples_unnamed), (6, 1));
        assert_eq!(r.stages[0].total.samples, 4);
        assert_eq!(r.stages[0].requests, 2);
        assert_eq!(r.stages[1].total.samples, 1);
        assert_eq!(r.phases["gen"]["decode"].samples, 2, "after the requests' first tokens");
        assert_eq!(r.phases["gen"]["shared"].samples, 1);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["method"], "sampled");
        assert_eq!(json["stages"][0]["samples"], 4);
        assert!(json["stages"][0]["error_s"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn the_log_is_bounded() {
        let mut log = SampleLog { samples: Vec::with_capacity(0), not_kept: 0 };
        log.samples.resize(MAX_SAMPLES, PySample::default());
        log.push(PySample::default());
        assert_eq!((log.samples.len(), log.not_kept), (MAX_SAMPLES, 1));
    }
}
