//! The agent's OpenTelemetry export (`[otlp]`): the exporter of [`crate::export::otlp`], fed by
//! [`super::targets::MetricsSink`] with each finished request under its target's attributes, and
//! its counters mirrored into Prometheus once a second (`inferscope_otlp_*`), so an endpoint
//! that is down shows on `/metrics` and costs nothing else.

use std::collections::HashMap;

use opentelemetry::KeyValue;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::config::OtlpConfig;
use super::metrics::TargetLabels;
use crate::export::otlp::{Otlp, OtlpStats};
use crate::http::model::ModelCap;
use crate::http::RequestRecord;

pub struct OtlpExport {
    otlp: Otlp,
    requests: IntCounterVec,
    exports: IntCounterVec,
    bytes: IntCounter,
    last: OtlpStats,
    /// The model attribute is capped per target label set as the Prometheus `model` label is
    /// (`max_models_per_target`; the folds are the ones `inferscope_models_folded_total`
    /// counts); an entry lives while a followed process has the label set.
    models: HashMap<TargetLabels, ModelCap>,
    max_models: usize,
}

impl OtlpExport {
    /// Starts the exporter (its endpoint was checked when the config was read).
    pub fn start(cfg: &OtlpConfig, max_models: usize, registry: &Registry) -> anyhow::Result<Self> {
        let opts = cfg.options()?;
        let requests = IntCounterVec::new(
            Opts::new("inferscope_otlp_requests_total", "Finished requests seen by the OTLP export, by outcome"),
            &["outcome"],
        )?;
        let exports = IntCounterVec::new(
            Opts::new("inferscope_otlp_exports_total", "OTLP export attempts, by result (ok, rejected, failed)"),
            &["result"],
        )?;
        let bytes = IntCounter::new("inferscope_otlp_export_bytes_total", "Bytes of accepted OTLP exports")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(exports.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        let otlp = Otlp::start(&opts)?;
        log::info!("otlp: GenAI metrics to {} every {:.0?}", opts.metrics_url, opts.interval);
        Ok(Self { otlp, requests, exports, bytes, last: OtlpStats::default(), models: HashMap::new(), max_models })
    }

    pub fn record(&mut self, labels: &TargetLabels, rec: &RequestRecord) {
        let model = rec.model.as_deref().map(|m| {
            let max = self.max_models;
            self.models.entry(labels.clone()).or_insert_with(|| ModelCap::new(max)).label(Some(m)).0
        });
        self.otlp.record(rec, model.as_deref(), &attributes(labels));
    }

    /// No followed process has `labels` any more: its model cap goes with it.
    pub fn target_gone(&mut self, labels: &TargetLabels) {
        self.models.remove(labels);
    }

    /// Counter deltas since the last call.
    pub fn every_second(&mut self) {
        let now = self.otlp.stats();
        let last = std::mem::replace(&mut self.last, now);
        self.requests.with_label_values(&["recorded"]).inc_by(now.recorded - last.recorded);
        self.requests.with_label_values(&["not_genai"]).inc_by(now.not_genai - last.not_genai);
        self.exports.with_label_values(&["ok"]).inc_by(now.exports_ok - last.exports_ok);
        self.exports.with_label_values(&["rejected"]).inc_by(now.exports_rejected - last.exports_rejected);
        self.exports.with_label_values(&["failed"]).inc_by(now.exports_failed - last.exports_failed);
        self.bytes.inc_by(now.bytes_sent - last.bytes_sent);
    }

    /// Sends what is left; called when the agent stops.
    pub fn shutdown(self) {
        let s = self.otlp.shutdown();
        log::info!(
            "otlp: stopped; {} request(s) recorded; exports: {} accepted, {} rejected, {} failed",
            s.recorded,
            s.exports_ok,
            s.exports_rejected,
            s.exports_failed
        );
    }
}

/// A target's attributes: the provider (its `service` label) and, in Kubernetes, where it runs.
/// Empty labels are left off; a container outside a pod is a container ID.
pub fn attributes(l: &TargetLabels) -> Vec<KeyValue> {
    let mut out = vec![KeyValue::new("gen_ai.provider.name", l.service.clone())];
    let in_pod = !l.pod.is_empty();
    for (key, value) in [
        ("k8s.namespace.name", &l.namespace),
        ("k8s.pod.name", &l.pod),
        (if in_pod { "k8s.container.name" } else { "container.id" }, &l.container),
    ] {
        if !value.is_empty() {
            out.push(KeyValue::new(key, value.clone()));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn attributes_leave_empty_labels_off() {
        let keys = |l: &TargetLabels| attributes(l).iter().map(|kv| kv.key.to_string()).collect::<Vec<_>>();
        let host = TargetLabels { service: "vllm".into(), container: "0123abcd".into(), ..Default::default() };
        assert_eq!(keys(&host), ["gen_ai.provider.name", "container.id"]);
        let pod = TargetLabels {
            service: "vllm".into(),
            namespace: "ml".into(),
            pod: "vllm-0".into(),
            container: "engine".into(),
        };
        assert_eq!(keys(&pod), ["gen_ai.provider.name", "k8s.namespace.name", "k8s.pod.name", "k8s.container.name"]);
    }
}
