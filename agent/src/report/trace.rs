//! The run as a timeline in the Chrome Trace Event format (`--trace FILE.json`), which Perfetto
//! (ui.perfetto.dev) and chrome://tracing open: one process row for the requests, one track per
//! lane of requests that did not overlap, each request a slice with its prefill and decode
//! phases nested and instants at first byte and first token; stage calls as slices on the thread
//! that ran them; GPU readings as counter tracks. Timestamps are the run's own (CLOCK_MONOTONIC)
//! in microseconds, so slices line up with the JSON report's `*_ns` fields.
//!
//! Only what the JSON report already shows goes in: the request's route template (or raw path
//! with `--raw-paths`), status, model and counts — never bodies.

use serde_json::{json, Value};

use crate::http::RequestRecord;
use crate::stages::StageCall;

/// Process ids of the three groups of tracks (any distinct numbers do).
const PID_REQUESTS: u32 = 1;
const PID_STAGES: u32 = 2;
const PID_GPU: u32 = 3;

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn slice(name: &str, pid: u32, tid: u64, start_ns: u64, end_ns: u64, args: Value) -> Value {
    json!({
        "name": name, "ph": "X", "pid": pid, "tid": tid,
        "ts": us(start_ns), "dur": us(end_ns.saturating_sub(start_ns)), "args": args,
    })
}

fn instant(name: &str, pid: u32, tid: u64, ts_ns: u64) -> Value {
    json!({"name": name, "ph": "i", "s": "t", "pid": pid, "tid": tid, "ts": us(ts_ns)})
}

fn meta(what: &str, pid: u32, tid: u64, name: &str) -> Value {
    json!({"name": what, "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}})
}

/// Lanes: each request goes to the first lane whose last request ended before it started, so a
/// track never holds two overlapping slices. Returns each request's lane (from 1).
fn lanes(requests: &[RequestRecord]) -> Vec<u64> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| (requests[i].request_ns, i));
    let mut ends: Vec<u64> = Vec::new();
    let mut lane = vec![0; requests.len()];
    for i in order {
        let r = &requests[i];
        let l = match ends.iter().position(|&e| e <= r.request_ns) {
            Some(l) => l,
            None => {
                ends.push(0);
                ends.len() - 1
            }
        };
        ends[l] = r.end_ns.max(r.request_ns);
        lane[i] = l as u64 + 1;
    }
    lane
}

/// Stage calls and the name of each (`names[i]` is `calls[i]`'s stage).
pub struct StageTrack<'a> {
    pub calls: &'a [StageCall],
    pub names: &'a [String],
}

/// The whole trace document.
pub fn trace_json(
    target: (&str, u32),
    requests: &[RequestRecord],
    stages: Option<StageTrack<'_>>,
    gpu_timeline: Option<&Value>,
) -> Value {
    let mut ev = vec![meta("process_name", PID_REQUESTS, 0, &format!("requests — {} (pid {})", target.0, target.1))];
    let lane = lanes(requests);
    let mut named = std::collections::BTreeSet::new();
    for (r, &l) in requests.iter().zip(&lane) {
        if named.insert(l) {
            ev.push(meta("thread_name", PID_REQUESTS, l, &format!("lane {l}")));
        }
        let end = r.end_ns.max(r.request_ns);
        let args = json!({
            "status": r.status, "model": r.model, "chunks": r.chunks, "tokens": r.tokens,
            "ttft_ms": r.ttft_s().map(|s| s * 1e3), "partial": r.partial,
        });
        ev.push(slice(&format!("{} {}", r.method, r.path), PID_REQUESTS, l, r.request_ns, end, args));
        // Prefill: until the first token (or the first byte of a response without tokens).
        let split = r.first_token_ns.unwrap_or(r.first_byte_ns).clamp(r.request_ns, end);
        ev.push(slice("prefill", PID_REQUESTS, l, r.request_ns, split, json!({})));
        if split < end {
            ev.push(slice("decode", PID_REQUESTS, l, split, end, json!({})));
        }
        ev.push(instant("first byte", PID_REQUESTS, l, r.first_byte_ns));
        if let Some(ft) = r.first_token_ns {
            ev.push(instant("first token", PID_REQUESTS, l, ft));
        }
    }
    if let Some(st) = stages {
        ev.push(meta("process_name", PID_STAGES, 0, &format!("stages — {} (pid {})", target.0, target.1)));
        let mut threads = std::collections::BTreeSet::new();
        for (i, c) in st.calls.iter().enumerate() {
            if threads.insert(c.tid) {
                ev.push(meta("thread_name", PID_STAGES, u64::from(c.tid), &format!("thread {}", c.tid)));
            }
            let name = st.names.get(i).map_or("stage", String::as_str);
            let args = json!({"self_us": us(c.self_ns)});
            ev.push(slice(name, PID_STAGES, u64::from(c.tid), c.start_ns, c.end_ns, args));
        }
    }
    if let Some(t) = gpu_timeline.filter(|t| t["enabled"] == true) {
        ev.push(meta("process_name", PID_GPU, 0, "GPU (NVML)"));
        let ticks: Vec<u64> = t["t_ns"].as_array().map_or(Vec::new(), |a| a.iter().filter_map(Value::as_u64).collect());
        for g in t["gpus"].as_array().into_iter().flatten() {
            let idx = g["index"].as_u64().unwrap_or(0);
            for (i, &ts) in ticks.iter().enumerate() {
                let (util, mem, power) = (&g["util_pct"][i], &g["mem_util_pct"][i], &g["power_w"][i]);
                if !util.is_null() || !mem.is_null() {
                    ev.push(json!({"name": format!("GPU {idx} utilisation %"), "ph": "C", "pid": PID_GPU,
                        "tid": 0, "ts": us(ts), "args": {"sm": util, "memory": mem}}));
                }
                if !power.is_null() {
                    ev.push(json!({"name": format!("GPU {idx} power W"), "ph": "C", "pid": PID_GPU,
                        "tid": 0, "ts": us(ts), "args": {"watts": power}}));
                }
            }
        }
    }
    json!({"traceEvents": ev, "displayTimeUnit": "ms", "otherData": {"clock": "CLOCK_MONOTONIC", "producer": "inferscope"}})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(request: u64, first_token: Option<u64>, end: u64) -> RequestRecord {
        RequestRecord {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: 200,
            request_ns: request,
            first_byte_ns: request + 1_000,
            first_token_ns: first_token,
            end_ns: end,
            content_write_ns: Vec::new(),
            chunks: 3,
            tokens: Some(3),
            streaming: true,
            read_tid: 1,
            write_tid: 1,
            partial: None,
            grpc_status: None,
            model: Some("m".into()),
        }
    }

    #[test]
    fn overlapping_requests_get_separate_lanes_and_phases_nest() {
        // 0..10 ms and 5..15 ms overlap; 12..20 ms fits after the first.
        let reqs =
            [rec(0, Some(4_000_000), 10_000_000), rec(5_000_000, None, 15_000_000), rec(12_000_000, None, 20_000_000)];
        assert_eq!(lanes(&reqs), vec![1, 2, 1]);
        let calls = [StageCall { stage: 0, tid: 7, start_ns: 1_000_000, end_ns: 3_000_000, self_ns: 2_000_000 }];
        let names = ["decode".to_string()];
        let doc = trace_json(("srv", 42), &reqs, Some(StageTrack { calls: &calls, names: &names }), None);
        let ev = doc["traceEvents"].as_array().unwrap();
        // Every event has the fields the format requires.
        for e in ev {
            for k in ["name", "ph", "pid", "tid"] {
                assert!(e.get(k).is_some(), "{k} in {e}");
            }
            if e["ph"] != "M" {
                assert!(e["ts"].as_f64().is_some(), "{e}");
            }
            if e["ph"] == "X" {
                assert!(e["dur"].as_f64().unwrap() >= 0.0, "{e}");
            }
        }
        let slices = |name: &str| ev.iter().filter(|e| e["name"] == name).collect::<Vec<_>>();
        assert_eq!(slices("POST /v1/chat/completions").len(), 3);
        // The first request's prefill ends at its first token, its decode runs to the end.
        let prefill = slices("prefill")[0];
        assert_eq!((prefill["ts"].as_f64(), prefill["dur"].as_f64()), (Some(0.0), Some(4000.0)));
        let decode = slices("decode")[0];
        assert_eq!((decode["ts"].as_f64(), decode["dur"].as_f64()), (Some(4000.0), Some(6000.0)));
        assert_eq!(slices("first token").len(), 1);
        let stage = slices("decode").into_iter().find(|e| e["pid"] == PID_STAGES).unwrap();
        assert_eq!((stage["tid"].as_u64(), stage["dur"].as_f64()), (Some(7), Some(2000.0)));
        // No body or other text leaves: the args hold figures, the model and the status only.
        assert!(!doc.to_string().contains("content"));
    }

    #[test]
    fn gpu_readings_become_counter_tracks() {
        let tl = json!({"enabled": true, "t_ns": [1000, 2000], "gpus": [
            {"index": 0, "util_pct": [50, null], "mem_util_pct": [10, null], "power_w": [70.5, 71.0]}]});
        let doc = trace_json(("srv", 1), &[], None, Some(&tl));
        let counters: Vec<&Value> = doc["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "C").collect();
        assert_eq!(counters.len(), 3, "{counters:?}");
        assert!(trace_json(("srv", 1), &[], None, Some(&json!({"enabled": false})))
            .to_string()
            .find("\"C\"")
            .is_none());
    }
}
