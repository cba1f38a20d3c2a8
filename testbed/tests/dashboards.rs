//! The Grafana dashboards in `dashboards/` import (structure) and only query what the agent exports.
//! No root, no Prometheus: the queries are run against a real Prometheus elsewhere.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use testbed::dashboards::{all_panels, check_structure, load_dir_named, metric_names, panel_queries};

/// Labels Prometheus adds to every scraped series.
const SCRAPE_LABELS: &[&str] = &["job", "instance"];
const TARGET: &[&str] = &["service", "namespace", "pod", "container"];
const DEVICE: &[&str] = &["gpu", "uuid", "model_name"];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The contract: every metric the agent exports in daemon mode, its kind and its labels
/// (besides `job` and `instance`).
fn contract() -> BTreeMap<&'static str, (Kind, Vec<&'static str>)> {
    use Kind::*;
    let with = |base: &[&'static str], extra: &[&'static str]| [base, extra].concat();
    let mut m = BTreeMap::new();
    for h in [
        "inferscope_time_to_first_token_seconds",
        "inferscope_time_to_first_byte_seconds",
        "inferscope_inter_token_latency_seconds",
        "inferscope_e2e_request_latency_seconds",
    ] {
        m.insert(h, (Histogram, with(TARGET, &["route", "model"])));
    }
    m.insert("inferscope_requests_total", (Counter, with(TARGET, &["route", "model", "status"])));
    m.insert("inferscope_requests_in_flight", (Gauge, with(TARGET, &[])));
    m.insert("inferscope_stream_chunks_total", (Counter, with(TARGET, &["route", "model"])));
    m.insert("inferscope_stream_tokens_total", (Counter, with(TARGET, &["route", "model"])));
    m.insert("inferscope_stage_duration_seconds", (Histogram, with(TARGET, &["stage"])));
    for g in [
        "inferscope_gpu_util_percent",
        "inferscope_gpu_mem_copy_util_percent",
        "inferscope_gpu_fb_used_bytes",
        "inferscope_gpu_fb_total_bytes",
        "inferscope_gpu_power_usage_watts",
        "inferscope_gpu_temperature_celsius",
        "inferscope_gpu_sm_clock_hertz",
        "inferscope_gpu_clock_throttle_reasons",
    ] {
        m.insert(g, (Gauge, DEVICE.to_vec()));
    }
    for p in ["inferscope_gpu_process_fb_used_bytes", "inferscope_gpu_process_sm_util_percent"] {
        m.insert(p, (Gauge, with(&["gpu"], TARGET)));
    }
    m.insert("inferscope_gpu_nvml_errors_total", (Counter, vec!["call"]));
    m.insert("inferscope_gpu_telemetry_enabled", (Gauge, vec![]));
    m.insert("inferscope_events_lost_total", (Counter, vec!["kind"]));
    m.insert("inferscope_probes_attached", (Gauge, vec![]));
    m.insert("inferscope_targets", (Gauge, vec![]));
    m.insert("inferscope_map_fill_ratio", (Gauge, vec!["map"]));
    m.insert("inferscope_parse_errors_total", (Counter, vec!["kind"]));
    m.insert("inferscope_series_dropped_total", (Counter, vec![]));
    m.insert("inferscope_attach_errors_total", (Counter, vec![]));
    m.insert("inferscope_target_attaches_total", (Counter, vec![]));
    m.insert("inferscope_target_detaches_total", (Counter, vec![]));
    m.insert("inferscope_discovery_events_total", (Counter, vec!["kind"]));
    m.insert("up", (Gauge, vec![]));
    m
}

/// The contract entry for a series name: `x_bucket`/`x_sum`/`x_count` of histogram `x` (with `le`
/// on `_bucket`), or a metric itself.
fn series(name: &str) -> Option<Vec<&'static str>> {
    let contract = contract();
    if let Some((kind, labels)) = contract.get(name) {
        return (*kind != Kind::Histogram).then(|| labels.clone());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some((Kind::Histogram, labels)) = name.strip_suffix(suffix).and_then(|base| contract.get(base)) {
            let mut labels = labels.clone();
            if suffix == "_bucket" {
                labels.push("le");
            }
            return Some(labels);
        }
    }
    None
}

/// `(metric, label)` for each matcher of each `metric{...}` selector, and `("", label)` for each
/// label of a `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` list.
fn labels_used(expr: &str) -> Vec<(String, String)> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !ident(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && ident(b[i]) {
            i += 1;
        }
        let word = &expr[start..i];
        let mut j = i;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        let list = ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word);
        let (open, close) = match b.get(j) {
            Some(b'{') => (b'{', b'}'),
            Some(b'(') if list => (b'(', b')'),
            _ => continue,
        };
        // The body up to the closing bracket, quotes respected.
        let mut k = j + 1;
        let mut in_quote = false;
        while k < b.len() && (in_quote || b[k] != close) {
            if b[k] == b'"' {
                in_quote = !in_quote;
            } else if in_quote && b[k] == b'\\' {
                k += 1;
            }
            k += 1;
        }
        let body = &expr[j + 1..k.min(b.len())];
        let metric = if open == b'{' { word } else { "" };
        let mut in_quote = false;
        let mut item = String::new();
        for c in body.chars().chain([',']) {
            match c {
                '"' => in_quote = !in_quote,
                ',' if !in_quote => {
                    let name: String =
                        item.trim().chars().take_while(|&c| c.is_ascii_alphanumeric() || c == '_').collect();
                    if !name.is_empty() {
                        out.push((metric.to_string(), name));
                    }
                    item.clear();
                }
                _ if !in_quote => item.push(c),
                _ => {}
            }
        }
        i = k + 1;
    }
    out
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    load_dir_named(&dir).unwrap()
}

#[test]
fn dashboards_are_well_formed() {
    let dashboards = dashboards();
    let files: BTreeSet<&str> = dashboards.iter().map(|(f, _)| f.as_str()).collect();
    let expected =
        ["inferscope-agent.json", "inferscope-gpu.json", "inferscope-serving.json", "inferscope-stages.json"];
    assert_eq!(files, expected.into_iter().collect(), "dashboard files");
    let problems = check_structure(&dashboards);
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));

    for (file, dash) in &dashboards {
        let with_targets = all_panels(dash)
            .into_iter()
            .filter(|p| p.get("targets").and_then(|t| t.as_array()).is_some_and(|t| !t.is_empty()))
            .count();
        assert!(with_targets >= 4, "{file}: only {with_targets} panels with queries");
        assert_eq!(dash["schemaVersion"], 39, "{file}");
        // The variables the brief asks for: multi, All = `.*`.
        let vars = dash["templating"]["list"].as_array().unwrap();
        let mut wanted = vec!["namespace", "service", "pod"];
        if file == "inferscope-agent.json" {
            wanted.push("job");
        }
        if file == "inferscope-serving.json" {
            wanted.extend(["model", "route"]);
        }
        for name in wanted {
            let var = vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("{file}: no ${name}"));
            assert_eq!(var["type"], "query", "{file} ${name}");
        }
        for var in vars.iter().filter(|v| v["type"] == "query") {
            let name = &var["name"];
            assert_eq!(var["multi"], true, "{file} ${name}");
            assert_eq!(var["includeAll"], true, "{file} ${name}");
            assert_eq!(var["allValue"], ".*", "{file} ${name}");
        }
    }
}

#[test]
fn dashboards_query_only_exported_metrics_and_labels() {
    let dashboards = dashboards();
    let mut exprs: Vec<(String, String)> = panel_queries(&dashboards, &BTreeMap::new())
        .into_iter()
        .map(|q| (format!("{} / {}", q.dashboard, q.panel), q.expr))
        .collect();
    let mut label_checks = Vec::new();
    for (file, dash) in &dashboards {
        for var in dash["templating"]["list"].as_array().unwrap() {
            let q = &var["query"];
            let Some(q) = q.as_str().or_else(|| q["query"].as_str()).filter(|_| var["type"] == "query") else {
                continue;
            };
            // Grafana's `label_values(SELECTOR, LABEL)`: check the selector, and LABEL as a matcher on it.
            let (selector, label) = q
                .strip_prefix("label_values(")
                .and_then(|rest| rest.strip_suffix(')')?.rsplit_once(','))
                .unwrap_or_else(|| panic!("{file}: variable {}: not label_values(SELECTOR, LABEL): {q}", var["name"]));
            let metric = metric_names(selector).into_iter().next().unwrap_or_default();
            let place = format!("{file} / variable {}", var["name"]);
            exprs.push((place.clone(), selector.to_string()));
            label_checks.push((place, metric, label.trim().to_string()));
        }
    }
    let all_labels: BTreeSet<&str> = contract()
        .values()
        .flat_map(|(_, labels)| labels.iter().copied())
        .chain(SCRAPE_LABELS.iter().copied())
        .chain(["le"])
        .collect();
    let mut used_metrics = BTreeSet::new();
    let mut problems = Vec::new();
    for (place, expr) in &exprs {
        let names = metric_names(expr);
        if names.is_empty() {
            problems.push(format!("{place}: no metric in {expr}"));
        }
        for name in names {
            if series(&name).is_none() {
                problems.push(format!("{place}: {name} is not exported by the agent ({expr})"));
            }
            used_metrics.insert(name);
        }
        let checks = labels_used(expr).into_iter().map(|(m, l)| (place.clone(), m, l));
        label_checks.extend(checks);
    }
    for (place, metric, label) in label_checks {
        let ok = if metric.is_empty() {
            all_labels.contains(label.as_str())
        } else {
            series(&metric).is_some_and(|labels| labels.contains(&label.as_str()))
                || SCRAPE_LABELS.contains(&label.as_str())
        };
        if !ok && metric.is_empty() {
            problems.push(format!("{place}: no exported metric has a label {label:?}"));
        } else if !ok {
            problems.push(format!("{place}: label {label:?} is not on {metric}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Every exported metric shows up somewhere (histograms through a series of theirs).
    let unused: Vec<&str> = contract()
        .into_keys()
        .filter(|m| !["", "_bucket", "_sum", "_count"].iter().any(|s| used_metrics.contains(&format!("{m}{s}"))))
        .collect();
    assert!(unused.is_empty(), "metrics no dashboard shows: {unused:?}");
}

#[test]
fn label_scanner_sees_matchers_and_lists() {
    let used = labels_used(
        "sum by (le, service) (rate(m_bucket{service=~\"a,b\", pod!=\"x{y}\"}[1m])) / on (instance) group_left() n",
    );
    let used: Vec<(&str, &str)> = used.iter().map(|(m, l)| (m.as_str(), l.as_str())).collect();
    assert_eq!(used, vec![("", "le"), ("", "service"), ("m_bucket", "service"), ("m_bucket", "pod"), ("", "instance")]);
}
