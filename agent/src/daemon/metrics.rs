//! Prometheus metrics of the daemon: names and buckets modelled on vLLM's, labels bounded (routes
//! normalised and capped per target, a hard cap on series with a counter of what it refused), and
//! series of label sets whose processes are gone removed after a grace period.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::http::model::{ModelCap, DEFAULT_MAX_MODELS};
use crate::http::RequestRecord;

/// vLLM's TTFT buckets with finer steps below 1 ms for fast local servers.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
];
/// vLLM's inter-token buckets (from 10 ms) preceded by SGLang-like steps from 1 ms.
pub const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0,
];
pub const E2E_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
pub const STAGE_BUCKETS: &[f64] = &[
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0,
];

/// Distinct routes kept per target label set; later ones are exported as `other`.
pub const MAX_ROUTES_PER_TARGET: usize = 32;

/// Who a series is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetLabels {
    pub service: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl TargetLabels {
    fn values(&self) -> [&str; 4] {
        [&self.service, &self.namespace, &self.pod, &self.container]
    }
}

const TARGET: [&str; 4] = ["service", "namespace", "pod", "container"];

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    TARGET.iter().chain(extra).copied().collect()
}

/// The route label of a request path: a template (`crate::http::route`), never a raw segment
/// that may carry an ID, a key or an e-mail address.
pub fn normalize_route(path: &str) -> String {
    crate::http::route::route_template(path)
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

pub struct Metrics {
    pub registry: Registry,
    /// `inferscope_capture_info{mode}`: 1 for the stream capture path in use.
    pub capture_info: IntGaugeVec,
    /// Requests whose route was folded into `other` by the per-target route cap.
    routes_folded: IntCounter,
    /// Requests whose model was folded into `other` by the per-target model cap.
    models_folded: IntCounter,
    /// Distinct model names kept per target label set (`max_models_per_target`).
    pub max_models: usize,
    ttft: HistogramVec,
    ttfb: HistogramVec,
    itl: HistogramVec,
    e2e: HistogramVec,
    requests: IntCounterVec,
    in_flight: IntGaugeVec,
    chunks: IntCounterVec,
    tokens: IntCounterVec,
    stage: HistogramVec,
    // GPU (filled by the GPU sampler when it runs).
    pub gpu_device: HashMap<&'static str, GaugeVec>,
    pub gpu_process: HashMap<&'static str, GaugeVec>,
    pub gpu_errors: IntCounterVec,
    pub gpu_enabled: IntGauge,
    // The agent's own health.
    pub events_lost: IntCounterVec,
    pub probes_attached: IntGauge,
    pub targets: IntGauge,
    pub map_fill: GaugeVec,
    pub parse_errors: IntCounterVec,
    pub series_dropped: IntCounter,
    pub attach_errors: IntCounter,
    pub attaches: IntCounter,
    pub detaches: IntCounter,
    pub discovery: IntCounterVec,
    // Kubernetes pod metadata (the watcher's health).
    pub kube_enabled: IntGauge,
    pub kube_up: IntGauge,
    pub kube_pods: IntGauge,
    pub kube_errors: IntCounter,
    pub kube_pods_dropped: IntCounter,
    /// HTTP/2 and TLS: followed and not decoded (`protocols.rs`).
    pub protocols: super::protocols::ProtocolMetrics,
    // Bounds.
    max_series: usize,
    /// Per label set of a target: the (family, full label values) series it owns.
    owned: HashMap<TargetLabels, HashSet<(&'static str, Vec<String>)>>,
    series: usize,
    routes: HashMap<TargetLabels, HashSet<String>>,
    models: HashMap<TargetLabels, ModelCap>,
    /// Label sets with no live process since this instant.
    orphaned: HashMap<TargetLabels, Instant>,
}

/// Prometheus lines one series of a family stands for (a histogram: buckets + +Inf + sum + count).
fn cost(family: &str) -> usize {
    match family {
        "ttft" => TTFT_BUCKETS.len() + 3,
        "ttfb" => TTFT_BUCKETS.len() + 3,
        "itl" => ITL_BUCKETS.len() + 3,
        "e2e" => E2E_BUCKETS.len() + 3,
        "stage" => STAGE_BUCKETS.len() + 3,
        _ => 1,
    }
}

impl Metrics {
    pub fn new(max_series: usize) -> Self {
        let registry = Registry::new();
        let h = |name: &str, help: &str, buckets: &[f64], labels: &[&'static str]| {
            let v = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(v.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            v
        };
        let c = |name: &str, help: &str, labels: &[&'static str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(v.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            v
        };
        let g = |name: &str, help: &str, labels: &[&'static str]| {
            let v = GaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(v.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            v
        };
        let ig = |name: &str, help: &str| {
            let v = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(v.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            v
        };
        let ic = |name: &str, help: &str| {
            let v = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry.register(Box::new(v.clone())).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            v
        };
        let route = with(&["route", "model"]);
        let device = ["gpu", "uuid", "model_name"];
        let process = ["gpu", "service", "namespace", "pod", "container"];
        let gpu_device = [
            ("util", "inferscope_gpu_util_percent", "GPU utilization (like DCGM_FI_DEV_GPU_UTIL)"),
            ("mem_util", "inferscope_gpu_mem_copy_util_percent", "Memory utilization (DCGM_FI_DEV_MEM_COPY_UTIL)"),
            ("fb_used", "inferscope_gpu_fb_used_bytes", "Framebuffer memory used (DCGM_FI_DEV_FB_USED, in bytes)"),
            ("fb_total", "inferscope_gpu_fb_total_bytes", "Framebuffer memory total"),
            ("power", "inferscope_gpu_power_usage_watts", "Power draw (DCGM_FI_DEV_POWER_USAGE)"),
            ("temp", "inferscope_gpu_temperature_celsius", "GPU temperature (DCGM_FI_DEV_GPU_TEMP)"),
            ("sm_clock", "inferscope_gpu_sm_clock_hertz", "SM clock (DCGM_FI_DEV_SM_CLOCK, in Hz)"),
            ("throttle", "inferscope_gpu_clock_throttle_reasons", "Clock throttle reasons bitmask (NVML)"),
        ]
        .into_iter()
        .map(|(k, n, help)| (k, g(n, help, &device)))
        .collect();
        let gpu_process = [
            ("fb_used", "inferscope_gpu_process_fb_used_bytes", "GPU memory used by a followed process"),
            ("sm_util", "inferscope_gpu_process_sm_util_percent", "SM utilization by a followed process"),
        ]
        .into_iter()
        .map(|(k, n, help)| (k, g(n, help, &process)))
        .collect();
        Self {
            ttft: h(
                "inferscope_time_to_first_token_seconds",
                "Request read to the first write carrying generated content",
                TTFT_BUCKETS,
                &route,
            ),
            ttfb: h(
                "inferscope_time_to_first_byte_seconds",
                "Request read to the first response byte",
                TTFT_BUCKETS,
                &route,
            ),
            itl: h(
                "inferscope_inter_token_latency_seconds",
                "Gap between consecutive content-bearing writes of a stream",
                ITL_BUCKETS,
                &route,
            ),
            e2e: h(
                "inferscope_e2e_request_latency_seconds",
                "Request read to the last response byte",
                E2E_BUCKETS,
                &route,
            ),
            requests: c(
                "inferscope_requests_total",
                "Finished HTTP exchanges (grpc_code: a gRPC call's grpc-status by name, absent for HTTP)",
                &with(&["route", "model", "status", "grpc_code"]),
            ),
            in_flight: {
                let v =
                    IntGaugeVec::new(Opts::new("inferscope_requests_in_flight", "Requests not finished yet"), &TARGET)
                        .unwrap_or_else(|e| panic!("{e}"));
                registry.register(Box::new(v.clone())).unwrap_or_else(|e| panic!("{e}"));
                v
            },
            chunks: c("inferscope_stream_chunks_total", "Content-bearing stream events (SSE/NDJSON)", &route),
            tokens: c("inferscope_stream_tokens_total", "Completion tokens, where the stream states them", &route),
            stage: h(
                "inferscope_stage_duration_seconds",
                "Duration of probed server functions",
                STAGE_BUCKETS,
                &with(&["stage"]),
            ),
            gpu_device,
            gpu_process,
            gpu_errors: c("inferscope_gpu_nvml_errors_total", "NVML calls that failed, by call", &["call"]),
            gpu_enabled: ig("inferscope_gpu_telemetry_enabled", "1 when NVML sampling runs"),
            events_lost: c(
                "inferscope_events_lost_total",
                "Kernel records dropped (ring buffer or map full)",
                &["kind"],
            ),
            probes_attached: ig("inferscope_probes_attached", "uprobes attached now"),
            routes_folded: ic(
                "inferscope_routes_folded_total",
                "Requests labelled route=\"other\" because their target already has MAX_ROUTES_PER_TARGET routes",
            ),
            models_folded: ic(
                "inferscope_models_folded_total",
                "Requests labelled model=\"other\" because their target already has max_models_per_target models",
            ),
            max_models: DEFAULT_MAX_MODELS,
            capture_info: {
                let v = IntGaugeVec::new(
                    Opts::new(
                        "inferscope_capture_info",
                        "Stream capture path in use (socket layer or syscall fallback)",
                    ),
                    &["mode"],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                registry.register(Box::new(v.clone())).unwrap_or_else(|e| panic!("{e}"));
                v
            },
            targets: ig("inferscope_targets", "Processes followed now"),
            map_fill: g("inferscope_map_fill_ratio", "Entries / capacity of each bounded kernel map", &["map"]),
            parse_errors: c("inferscope_parse_errors_total", "Stream parse problems, by kind", &["kind"]),
            series_dropped: ic("inferscope_series_dropped_total", "Observations refused by the series cap"),
            attach_errors: ic("inferscope_attach_errors_total", "Targets or stages that could not be attached"),
            attaches: ic("inferscope_target_attaches_total", "Processes attached"),
            detaches: ic("inferscope_target_detaches_total", "Processes detached (exited or exec'ed)"),
            discovery: c("inferscope_discovery_events_total", "Discovery inputs by kind", &["kind"]),
            kube_enabled: ig("inferscope_kube_metadata_enabled", "1 when pod metadata comes from the Kubernetes API"),
            kube_up: ig("inferscope_kube_watch_up", "1 while the watch of this node's pods is listed and answering"),
            kube_pods: ig("inferscope_kube_pods", "Pods of this node known from the Kubernetes API"),
            kube_errors: ic("inferscope_kube_errors_total", "Kubernetes API errors of the pod watch (it retries)"),
            kube_pods_dropped: ic(
                "inferscope_kube_pods_dropped_total",
                "Pods not kept because kubernetes_max_pods was reached",
            ),
            protocols: super::protocols::ProtocolMetrics::register(&registry),
            registry,
            max_series,
            owned: HashMap::new(),
            series: 0,
            routes: HashMap::new(),
            models: HashMap::new(),
            orphaned: HashMap::new(),
        }
    }

    /// Admits the series `(family, labels)` of target `t` under the cap; false = refused (counted).
    fn admit(&mut self, family: &'static str, t: &TargetLabels, labels: &[&str]) -> bool {
        let key = (family, labels.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        if self.owned.get(t).is_some_and(|s| s.contains(&key)) {
            return true;
        }
        let c = cost(family);
        if self.series + c > self.max_series {
            self.series_dropped.inc();
            return false;
        }
        self.series += c;
        self.owned.entry(t.clone()).or_default().insert(key);
        true
    }

    fn route_for(&mut self, t: &TargetLabels, path: &str) -> String {
        let route = normalize_route(path);
        let routes = self.routes.entry(t.clone()).or_default();
        if routes.contains(&route) || routes.len() < MAX_ROUTES_PER_TARGET {
            routes.insert(route.clone());
            route
        } else {
            self.routes_folded.inc();
            "other".into()
        }
    }

    fn model_for(&mut self, t: &TargetLabels, model: Option<&str>) -> String {
        let max = self.max_models;
        let (label, folded) = self.models.entry(t.clone()).or_insert_with(|| ModelCap::new(max)).label(model);
        if folded {
            self.models_folded.inc();
        }
        label
    }

    /// One finished exchange of a process with labels `t`.
    pub fn observe_request(&mut self, t: &TargetLabels, r: &RequestRecord) {
        let route = self.route_for(t, &r.path);
        let model = self.model_for(t, r.model.as_deref());
        let [s, n, p, c] = t.values();
        let rl = [s, n, p, c, route.as_str(), model.as_str()];
        let status = status_class(r.status);
        // Empty (left out of the exposition) for HTTP; one of 18 names for gRPC: bounded.
        let grpc = r.grpc_status.map_or("", crate::http::h2::grpc::code_name);
        let labels = [s, n, p, c, route.as_str(), model.as_str(), status, grpc];
        if self.admit("requests", t, &labels) {
            self.requests.with_label_values(&labels).inc();
        }
        if r.first_byte_ns > 0 && self.admit("ttfb", t, &rl) {
            self.ttfb.with_label_values(&rl).observe(r.ttfb_s());
        }
        if r.end_ns > 0 && r.partial.is_none() && self.admit("e2e", t, &rl) {
            self.e2e.with_label_values(&rl).observe(r.e2e_s());
        }
        if !r.streaming {
            return;
        }
        if let Some(ttft) = r.ttft_s() {
            if self.admit("ttft", t, &rl) {
                self.ttft.with_label_values(&rl).observe(ttft);
            }
        }
        if r.content_write_ns.len() > 1 && self.admit("itl", t, &rl) {
            let h = self.itl.with_label_values(&rl);
            for gap in r.itl_s() {
                h.observe(gap);
            }
        }
        if self.admit("chunks", t, &rl) {
            self.chunks.with_label_values(&rl).inc_by(r.chunks);
        }
        if let Some(tok) = r.tokens {
            if self.admit("tokens", t, &rl) {
                self.tokens.with_label_values(&rl).inc_by(tok);
            }
        }
    }

    pub fn observe_stage(&mut self, t: &TargetLabels, stage: &str, seconds: f64) {
        let [s, n, p, c] = t.values();
        if self.admit("stage", t, &[s, n, p, c, stage]) {
            self.stage.with_label_values(&[s, n, p, c, stage]).observe(seconds);
        }
    }

    pub fn set_in_flight(&mut self, t: &TargetLabels, n: usize) {
        if self.admit("in_flight", t, &t.values()) {
            self.in_flight.with_label_values(&t.values()).set(n as i64);
        }
    }

    /// GPU use of a followed process on one device.
    pub fn set_gpu_process(&mut self, t: &TargetLabels, gpu: &str, field: &'static str, value: f64) {
        let [s, n, p, c] = t.values();
        let labels = [gpu, s, n, p, c];
        let family = if field == "fb_used" { "gpu_fb" } else { "gpu_sm" };
        if self.gpu_process.contains_key(field) && self.admit(family, t, &labels) {
            self.gpu_process[field].with_label_values(&labels).set(value);
        }
    }

    /// Label set `t` has a live process (again): its series stay.
    pub fn target_alive(&mut self, t: &TargetLabels) {
        self.orphaned.remove(t);
    }

    /// The last process of label set `t` is gone: its series go after the grace period.
    pub fn target_gone(&mut self, t: &TargetLabels, now: Instant) {
        self.orphaned.entry(t.clone()).or_insert(now);
        if self.owned.contains_key(t) {
            self.in_flight.with_label_values(&t.values()).set(0);
        }
    }

    /// Removes the series of label sets orphaned longer than `grace`; returns how many label sets.
    pub fn sweep(&mut self, now: Instant, grace: Duration) -> usize {
        let expired: Vec<TargetLabels> = self
            .orphaned
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= grace)
            .map(|(t, _)| t.clone())
            .collect();
        for t in &expired {
            self.orphaned.remove(t);
            self.routes.remove(t);
            self.models.remove(t);
            for (family, labels) in self.owned.remove(t).unwrap_or_default() {
                let values: Vec<&str> = labels.iter().map(String::as_str).collect();
                let _ = match family {
                    "requests" => self.requests.remove_label_values(&values),
                    "ttft" => self.ttft.remove_label_values(&values),
                    "ttfb" => self.ttfb.remove_label_values(&values),
                    "itl" => self.itl.remove_label_values(&values),
                    "e2e" => self.e2e.remove_label_values(&values),
                    "chunks" => self.chunks.remove_label_values(&values),
                    "tokens" => self.tokens.remove_label_values(&values),
                    "stage" => self.stage.remove_label_values(&values),
                    "in_flight" => self.in_flight.remove_label_values(&values),
                    "gpu_fb" => self.gpu_process["fb_used"].remove_label_values(&values),
                    "gpu_sm" => self.gpu_process["sm_util"].remove_label_values(&values),
                    _ => Ok(()),
                };
                self.series = self.series.saturating_sub(cost(family));
            }
        }
        expired.len()
    }

    /// Series admitted now (histograms count every line they export).
    pub fn series(&self) -> usize {
        self.series
    }

    /// The text exposition format.
    pub fn encode(&self) -> Vec<u8> {
        encode(&self.registry)
    }
}

/// The text exposition format of `registry`, without empty labels. A `prometheus` vector has
/// one fixed label set per family, so a host process's series carry `namespace`, `pod` (and
/// `container` outside a container) as `""`; Prometheus treats an empty label as absent, so
/// leaving them out here changes no series' identity and keeps `container="",pod=""` out of
/// the output outside Kubernetes.
pub fn encode(registry: &Registry) -> Vec<u8> {
    let mut families = registry.gather();
    for f in &mut families {
        for m in f.mut_metric() {
            let labels: Vec<_> = m.take_label().into_iter().filter(|l| !l.value().is_empty()).collect();
            m.set_label(labels);
        }
    }
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        log::warn!("encoding metrics: {e}");
    }
    buf
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(path: &str) -> RequestRecord {
        RequestRecord {
            method: "POST".into(),
            path: path.into(),
            status: 200,
            request_ns: 1_000_000,
            first_byte_ns: 2_000_000,
            first_token_ns: Some(11_000_000),
            end_ns: 31_000_000,
            content_write_ns: vec![11_000_000, 21_000_000, 31_000_000],
            chunks: 3,
            tokens: Some(3),
            streaming: true,
            read_tid: 1,
            write_tid: 1,
            partial: None,
            grpc_status: None,
            model: None,
        }
    }

    fn labels(service: &str) -> TargetLabels {
        TargetLabels { service: service.into(), ..Default::default() }
    }

    #[test]
    fn routes_are_templates() {
        assert_eq!(normalize_route("/v1/chat/completions?stream=true"), "/v1/chat/completions");
        assert_eq!(normalize_route("/v1/models/12345"), "/v1/models/{model}");
        assert_eq!(normalize_route("/jobs/8d4b0a4e-6c3f-4b6a-9b8e-2f1d5c7a9e10/status"), "/jobs/{id}/status");
        assert_eq!(normalize_route("/v1/chat/completions/req-42"), "/v1/chat/completions/{id}");
        assert_eq!(normalize_route("/v1/keys/sk-canary-xyz/completions"), "/v1/keys/{id}/completions");
        assert_eq!(normalize_route("/v2/models/llama-3-8b-instruct/infer"), "/v2/models/{model}/infer");
        assert_eq!(normalize_route("garbage"), "other");
        assert_eq!(normalize_route("/x\"y"), "other");
    }

    #[test]
    fn request_metrics_have_the_documented_names() {
        let mut m = Metrics::new(10_000);
        m.observe_request(&labels("llama"), &rec("/v1/chat/completions"));
        let text = String::from_utf8(m.encode()).unwrap();
        for line in [
            "inferscope_time_to_first_token_seconds_sum{model=\"unknown\",route=\"/v1/chat/completions\",service=\"llama\"} 0.01",
            "inferscope_inter_token_latency_seconds_count{model=\"unknown\",route=\"/v1/chat/completions\",service=\"llama\"} 2",
            "inferscope_requests_total{model=\"unknown\",route=\"/v1/chat/completions\",service=\"llama\",status=\"2xx\"} 1",
            "inferscope_stream_tokens_total{model=\"unknown\",route=\"/v1/chat/completions\",service=\"llama\"} 3",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn grpc_calls_carry_their_code_by_name_and_http_requests_no_such_label() {
        let mut m = Metrics::new(10_000);
        let t = labels("triton");
        for code in [0, 0, 8] {
            let mut r = rec("/inference.GRPCInferenceService/ModelStreamInfer");
            r.grpc_status = Some(code);
            m.observe_request(&t, &r);
        }
        m.observe_request(&t, &rec("/v1/chat/completions"));
        let text = String::from_utf8(m.encode()).unwrap();
        let route = "route=\"/inference.GRPCInferenceService/ModelStreamInfer\"";
        for line in [
            format!("inferscope_requests_total{{grpc_code=\"OK\",model=\"unknown\",{route},service=\"triton\",status=\"2xx\"}} 2"),
            format!("inferscope_requests_total{{grpc_code=\"RESOURCE_EXHAUSTED\",model=\"unknown\",{route},service=\"triton\",status=\"2xx\"}} 1"),
            "inferscope_requests_total{model=\"unknown\",route=\"/v1/chat/completions\",service=\"triton\",status=\"2xx\"} 1".into(),
        ] {
            assert!(text.contains(&line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn series_cap_refuses_and_counts_and_sweep_frees() {
        // Room for one request family's histograms of one service only.
        let mut m = Metrics::new(200);
        m.observe_request(&labels("a"), &rec("/x"));
        let used = m.series();
        assert!(used > 0 && used <= 200);
        for i in 0..50 {
            m.observe_request(&labels(&format!("svc{i}")), &rec("/x"));
        }
        assert!(m.series() <= 200, "cap holds: {}", m.series());
        assert!(m.series_dropped.get() > 0);
        // Routes past the per-target cap become `other`.
        let t = labels("a");
        const W: [&str; 7] = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"];
        for i in 0..(MAX_ROUTES_PER_TARGET + 5) {
            let _ = m.route_for(&t, &format!("/{}/{}", W[i % 7], W[i / 7]));
        }
        let folded = m.routes_folded.get();
        assert!(folded >= 5, "routes past the cap are counted: {folded}");
        assert_eq!(m.route_for(&t, "/brand-new"), "other");
        assert_eq!(m.routes_folded.get(), folded + 1);
        // Gone for longer than the grace period: series removed and the budget returned.
        let now = Instant::now();
        for i in 0..50 {
            m.target_gone(&labels(&format!("svc{i}")), now);
        }
        m.target_gone(&t, now);
        m.target_alive(&t);
        m.sweep(now + Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(m.series(), used, "only the live label set keeps its series");
        assert!(String::from_utf8(m.encode()).unwrap().contains("service=\"a\""));
    }

    #[test]
    fn model_label_with_a_cap_per_target() {
        let mut m = Metrics::new(10_000);
        m.max_models = 2;
        let t = labels("llm");
        for (model, n) in [(Some("alpha"), 3), (Some("beta"), 2), (Some("gamma"), 1), (None, 1)] {
            let mut r = rec("/v1/chat/completions");
            r.model = model.map(String::from);
            for _ in 0..n {
                m.observe_request(&t, &r);
            }
        }
        let text = String::from_utf8(m.encode()).unwrap();
        let count = |model: &str| {
            text.lines()
                .find(|l| l.starts_with("inferscope_requests_total{") && l.contains(&format!("model=\"{model}\"")))
                .and_then(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        };
        assert_eq!(count("alpha"), Some(3));
        assert_eq!(count("beta"), Some(2));
        assert_eq!(count("gamma"), None, "past the cap of 2");
        assert_eq!(count("other"), Some(1));
        assert_eq!(count("unknown"), Some(1), "no model named takes no slot of the cap");
        assert_eq!(m.models_folded.get(), 1);
        assert!(text.contains("inferscope_models_folded_total 1"), "{text}");
        assert!(!text.contains("=\"\""), "no empty label is exported: {text}");
        let mut k = labels("llm");
        (k.namespace, k.pod, k.container) = ("serving".into(), "llm-0".into(), "server".into());
        m.observe_request(&k, &rec("/v1/chat/completions"));
        let text = String::from_utf8(m.encode()).unwrap();
        let full = "inferscope_requests_total{container=\"server\",model=\"unknown\",namespace=\"serving\",pod=\"llm-0\",route=\"/v1/chat/completions\",service=\"llm\",status=\"2xx\"} 1";
        assert!(text.contains(full), "labels that have values are all there: {text}");
        // Another target has its own cap.
        let mut r = rec("/v1/chat/completions");
        r.model = Some("gamma".into());
        m.observe_request(&labels("other-svc"), &r);
        assert_eq!(m.models_folded.get(), 1);
    }
}
