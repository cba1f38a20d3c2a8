//! Stage calls: self time from nesting, per-stage statistics, and attribution to requests.

use std::collections::{BTreeMap, HashMap};

use agent_common::{stage::MAX_DEPTH, StageEvent};
use serde::Serialize;

use crate::http::RequestRecord;

/// Calls kept for the report; later ones are counted only.
pub const MAX_CALLS: usize = 2_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageCall {
    pub stage: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Duration minus the probed calls nested inside it.
    pub self_ns: u64,
}

impl StageCall {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// Builds `StageCall`s from kernel events. Events of one thread arrive in return order (children
/// before their parent), so child time accumulates per depth until the parent returns.
#[derive(Debug, Default)]
pub struct StageCollector {
    pub calls: Vec<StageCall>,
    pub not_kept: u64,
    children: HashMap<u32, [u64; MAX_DEPTH + 1]>,
}

impl StageCollector {
    pub fn push(&mut self, ev: &StageEvent) {
        let d = (ev.depth as usize).min(MAX_DEPTH - 1);
        let acc = self.children.entry(ev.tid).or_insert([0; MAX_DEPTH + 1]);
        let dur = ev.end_ns.saturating_sub(ev.start_ns);
        let child = std::mem::take(&mut acc[d + 1]);
        acc[d] += dur;
        if d == 0 {
            acc[0] = 0; // nothing above the outermost call collects it
        }
        if acc.iter().all(|&v| v == 0) {
            self.children.remove(&ev.tid); // bounded by threads with calls in progress
        }
        let call = StageCall {
            stage: ev.stage,
            tid: ev.tid,
            start_ns: ev.start_ns,
            end_ns: ev.end_ns,
            self_ns: dur.saturating_sub(child),
        };
        if self.calls.len() < MAX_CALLS {
            self.calls.push(call);
        } else {
            self.not_kept += 1;
        }
    }

    /// Forgets threads' partial nesting state (after a process exits).
    pub fn forget_threads(&mut self) {
        self.children.clear();
    }
}

/// Statistics of one stage, in seconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageSummary {
    pub name: String,
    pub count: usize,
    pub mean_s: f64,
    pub std_s: f64,
    pub p50_s: f64,
    pub p90_s: f64,
    pub p95_s: f64,
    pub p99_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub total_s: f64,
    pub self_s: f64,
}

fn summarize_one(name: &str, calls: &[&StageCall]) -> StageSummary {
    let mut d: Vec<f64> = calls.iter().map(|c| c.duration_ns() as f64 / 1e9).collect();
    d.sort_by(f64::total_cmp);
    let n = d.len();
    let total: f64 = d.iter().sum();
    let mean = if n > 0 { total / n as f64 } else { 0.0 };
    let var = if n > 1 { d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
    let rank = |q: f64| if n == 0 { 0.0 } else { d[((q * n as f64).ceil() as usize).clamp(1, n) - 1] };
    StageSummary {
        name: name.to_string(),
        count: n,
        mean_s: mean,
        std_s: var.sqrt(),
        p50_s: rank(0.50),
        p90_s: rank(0.90),
        p95_s: rank(0.95),
        p99_s: rank(0.99),
        min_s: d.first().copied().unwrap_or(0.0),
        max_s: d.last().copied().unwrap_or(0.0),
        total_s: total,
        self_s: calls.iter().map(|c| c.self_ns as f64 / 1e9).sum(),
    }
}

/// Per-request use of a stage.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct RequestStage {
    pub count: u64,
    pub total_s: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Attribution {
    /// Aligned with the requests slice; stage name → use.
    pub per_request: Vec<BTreeMap<String, RequestStage>>,
    /// Calls that overlapped several requests on other threads (batches): never given to one.
    pub shared: BTreeMap<String, RequestStage>,
    /// Calls while no request was in flight (model load, warm-up, idle work).
    pub outside: BTreeMap<String, RequestStage>,
    /// For each call (same order as the input), the stage name it is reported under.
    pub call_names: Vec<String>,
    /// For each call, the request it belongs to.
    pub call_request: Vec<Option<usize>>,
}

fn add(map: &mut BTreeMap<String, RequestStage>, name: &str, call: &StageCall) {
    let e = map.entry(name.to_string()).or_default();
    e.count += 1;
    e.total_s += call.duration_ns() as f64 / 1e9;
}

/// Gives each call to a request by [`super::owner`]: the request in flight on the same thread
/// (it read the request or writes its response); else the only request in flight at all; else
/// the one whose content write comes next (a serial worker thread); else it is shared (a batch)
/// or outside (none). `prefill[i]` renames stage i's calls that end before
/// their request's first token.
pub fn attribute(
    requests: &[RequestRecord],
    calls: &[StageCall],
    names: &[String],
    prefill: &[Option<String>],
) -> Attribution {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| requests[i].request_ns);
    let mut call_order: Vec<usize> = (0..calls.len()).collect();
    call_order.sort_by_key(|&i| calls[i].start_ns);

    let mut a = Attribution {
        per_request: vec![BTreeMap::new(); requests.len()],
        call_names: vec![String::new(); calls.len()],
        call_request: vec![None; calls.len()],
        ..Attribution::default()
    };
    let mut next = 0;
    let mut active: Vec<usize> = Vec::new();
    for &ci in &call_order {
        let c = &calls[ci];
        while next < order.len() && requests[order[next]].request_ns <= c.end_ns {
            active.push(order[next]);
            next += 1;
        }
        active.retain(|&r| requests[r].end_ns >= c.start_ns);
        let overlapping: Vec<usize> = active.iter().copied().filter(|&r| requests[r].request_ns <= c.end_ns).collect();
        let owner = match super::owner::owner(requests, &overlapping, c.end_ns, c.tid) {
            super::owner::Owner::Request(r) => Some(r),
            _ => None,
        };
        let base = names.get(c.stage as usize).cloned().unwrap_or_else(|| format!("stage{}", c.stage));
        let name = match (owner, prefill.get(c.stage as usize).and_then(Option::as_ref)) {
            (Some(r), Some(p)) if requests[r].first_token_ns.is_none_or(|ft| c.end_ns <= ft) => p.clone(),
            _ => base,
        };
        match owner {
            Some(r) => add(&mut a.per_request[r], &name, c),
            None if overlapping.is_empty() => add(&mut a.outside, &name, c),
            None => add(&mut a.shared, &name, c),
        }
        a.call_names[ci] = name;
        a.call_request[ci] = owner;
    }
    a
}

/// Statistics per reported stage name, in the order stages were defined (prefill variants right
/// before their base stage).
pub fn summarize(
    calls: &[StageCall],
    attribution: &Attribution,
    names: &[String],
    prefill: &[Option<String>],
) -> Vec<StageSummary> {
    let mut order: Vec<String> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        if let Some(p) = prefill.get(i).and_then(Option::as_ref) {
            order.push(p.clone());
        }
        order.push(n.clone());
    }
    order.dedup();
    order
        .iter()
        .map(|name| {
            let mine: Vec<&StageCall> =
                calls.iter().zip(&attribution.call_names).filter(|(_, n)| *n == name).map(|(c, _)| c).collect();
            summarize_one(name, &mine)
        })
        .filter(|s| s.count > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(stage: u32, tid: u32, start: u64, end: u64, depth: u32) -> StageEvent {
        StageEvent { start_ns: start, end_ns: end, tgid: 1, tid, stage, depth }
    }

    fn req(request: u64, first_token: Option<u64>, end: u64, tid: u32) -> RequestRecord {
        RequestRecord {
            content_write_ns: vec![],
            chunks: 0,
            first_token_ns: first_token,
            ..RequestRecord::test_stream(request, &[], end, tid)
        }
    }

    #[test]
    fn self_time_subtracts_nested_calls_and_recursion() {
        let mut c = StageCollector::default();
        // outer [0,100] contains inner [10,30] and inner [40,70] which contains inner [50,60]
        c.push(&ev(1, 7, 10, 30, 1));
        c.push(&ev(1, 7, 50, 60, 2));
        c.push(&ev(1, 7, 40, 70, 1));
        c.push(&ev(0, 7, 0, 100, 0));
        let selfs: Vec<u64> = c.calls.iter().map(|c| c.self_ns).collect();
        assert_eq!(selfs, vec![20, 10, 20, 50]);
        assert!(c.children.is_empty(), "no state left once the outermost call returned");
        // another thread is independent
        c.push(&ev(0, 8, 0, 5, 0));
        assert_eq!(c.calls[4].self_ns, 5);
    }

    #[test]
    fn stats_match_hand_computation() {
        let calls: Vec<StageCall> = (1..=100)
            .map(|i| StageCall { stage: 0, tid: 1, start_ns: 0, end_ns: i * 1_000_000, self_ns: i * 1_000_000 })
            .collect();
        let a = attribute(&[], &calls, &["s".into()], &[None]);
        let s = &summarize(&calls, &a, &["s".into()], &[None])[0];
        assert_eq!(s.count, 100);
        assert!((s.mean_s - 0.0505).abs() < 1e-12);
        assert!((s.p50_s - 0.050).abs() < 1e-12 && (s.p95_s - 0.095).abs() < 1e-12 && (s.p99_s - 0.099).abs() < 1e-12);
        assert!((s.min_s - 0.001).abs() < 1e-12 && (s.max_s - 0.1).abs() < 1e-12);
        assert!((s.std_s - 0.029011491).abs() < 1e-8);
        assert_eq!(a.outside["s"].count, 100);
    }

    #[test]
    fn attribution_same_thread_single_in_flight_shared_and_prefill() {
        let names = vec!["tokenize".to_string(), "decode".to_string()];
        let prefill = vec![None, Some("prefill".to_string())];
        let requests =
            vec![req(100, Some(200), 400, 11), req(150, Some(260), 500, 12), req(1000, Some(1100), 1200, 11)];
        let call = |stage, tid, s, e| StageCall { stage, tid, start_ns: s, end_ns: e, self_ns: e - s };
        let calls = vec![
            call(0, 12, 155, 160),   // tokenize on request 1's thread while 0 and 1 are in flight → request 1
            call(1, 99, 170, 190),   // decode on another thread, two in flight → shared
            call(1, 99, 1010, 1090), // decode, only request 2 in flight, before its first token → prefill
            call(1, 99, 1110, 1120), // after first token → decode
            call(1, 99, 2000, 2010), // nothing in flight → outside
        ];
        let a = attribute(&requests, &calls, &names, &prefill);
        assert_eq!(a.per_request[1]["tokenize"].count, 1);
        assert_eq!(a.shared["decode"].count, 1);
        assert_eq!(a.per_request[2]["prefill"].count, 1);
        assert_eq!(a.per_request[2]["decode"].count, 1);
        assert_eq!(a.outside["decode"].count, 1);
        assert!(a.per_request[0].is_empty());
        let s = summarize(&calls, &a, &names, &prefill);
        assert_eq!(
            s.iter().map(|s| (s.name.as_str(), s.count)).collect::<Vec<_>>(),
            vec![("tokenize", 1), ("prefill", 1), ("decode", 3)]
        );
    }
}
