//! The JSON report: the documented schema (requests, summary, stages, profiles, GPU, maps).

use std::collections::BTreeMap;

use super::Report;

impl Report {
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
        if let Some(py) = &self.py_stages {
            doc["python_stages"] = serde_json::to_value(py).unwrap_or_default();
        }
        if let Some(cpu) = &self.cpu {
            doc["cpu"] = serde_json::json!({
                "samples": cpu.samples,
                "by_phase": cpu.by_phase.iter().map(|(p, s)| (p.clone(), s.values().sum::<u64>())).collect::<BTreeMap<_, _>>(),
                "no_user_stack": cpu.no_user_stack,
                "truncated": cpu.truncated,
                "truncated_by": cpu.truncated_by,
                "unwound": cpu.unwound,
                "unwind_tables": cpu.unwind_tables,
                "python": cpu.python,
                "user_stacks_full": self.kernel.user_stacks_full,
                "samples_map_full": self.kernel.samples_map_full,
                "top_functions": top_json(cpu),
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
                "top_functions": top_json(off),
            });
        }
        doc
    }
}

fn top_json(folded: &crate::profile::Folded) -> Vec<serde_json::Value> {
    crate::profile::top_functions(folded, 20)
        .into_iter()
        .map(|(f, s, t)| serde_json::json!({"function": f, "self": s, "total": t}))
        .collect()
}
