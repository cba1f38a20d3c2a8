//! OpenTelemetry export (`--otlp ENDPOINT`, `[otlp]` in the agent's config): finished requests
//! as the GenAI semantic conventions' histograms, sent as OTLP/HTTP protobuf.
//!
//! The sinks (attach's `Collect`, the daemon's `MetricsSink`) call [`Otlp::record`] with each
//! finished request, as they observe the Prometheus histograms: an in-memory aggregation
//! (the SDK's histogram per attribute set), no I/O. The SDK's periodic reader runs on its own
//! thread and exports the cumulative state every `interval` through [`BlockingClient`]; the
//! ingest loop never waits on the network. Bounded: the attribute sets are bounded by the
//! model cap and the fixed operation names (the SDK folds anything past 2,000 sets per metric
//! into one `otel.metric.overflow` set), one export is in flight at a time, and an endpoint
//! that is down costs one log line and a counter per attempt.
//!
//! Private by default: attributes are the operation (from the route template), the capped,
//! sanitized model label, the provider (the target's name) and the status code; never a path,
//! a body, a prompt or a header value.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, Protocol, RetryPolicy, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::Resource;

use super::genai::{self, Skipped};
use super::otlp_http::{BlockingClient, ExportStats};
use crate::http::RequestRecord;

/// Default seconds between exports.
pub const DEFAULT_INTERVAL_S: f64 = 10.0;
/// Default timeout of one export (connect, send, answer).
pub const DEFAULT_TIMEOUT_S: f64 = 5.0;

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("OTLP endpoint `{endpoint}`: {problem}")]
    Endpoint { endpoint: String, problem: String },
    #[error("OTLP: {0}")]
    Settings(String),
    #[error("OTLP exporter: {0}")]
    Build(String),
}

/// Where and how often to export.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpOptions {
    /// The full metrics URL (`http://HOST:PORT/v1/metrics`).
    pub metrics_url: String,
    pub interval: Duration,
    pub timeout: Duration,
}

impl OtlpOptions {
    /// Checks everything before any work: the endpoint (`http://HOST[:PORT][/BASE]`, the OTLP
    /// convention: `/v1/metrics` is appended unless the path already ends in it), the interval
    /// and the timeout.
    pub fn new(endpoint: &str, interval_s: f64, timeout_s: f64) -> Result<Self, OtlpError> {
        for (what, v) in [("interval", interval_s), ("timeout", timeout_s)] {
            if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
                return Err(OtlpError::Settings(format!("{what} must be between 0 and 3600 seconds, got {v}")));
            }
        }
        Ok(Self {
            metrics_url: metrics_url(endpoint)?,
            interval: Duration::from_secs_f64(interval_s),
            timeout: Duration::from_secs_f64(timeout_s),
        })
    }
}

/// `endpoint` → the metrics URL; a one-line reason when it cannot be one.
pub fn metrics_url(endpoint: &str) -> Result<String, OtlpError> {
    let bad = |problem: &str| OtlpError::Endpoint { endpoint: endpoint.to_string(), problem: problem.to_string() };
    let uri: http::Uri = endpoint.parse().map_err(|e| bad(&format!("not a URL ({e}); give http://HOST:PORT")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported by the built-in exporter; send to an OpenTelemetry Collector on this host or network over http",
            ))
        }
        Some(other) => return Err(bad(&format!("scheme `{other}` is not http"))),
        None => return Err(bad("no scheme; give http://HOST:PORT (OTLP/HTTP, usually port 4318)")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    if uri.query().is_some() {
        return Err(bad("a query string is not supported"));
    }
    let path = uri.path().trim_end_matches('/');
    let path = if path.ends_with("/v1/metrics") { path.to_string() } else { format!("{path}/v1/metrics") };
    Ok(format!("http://{authority}{path}"))
}

/// What was recorded and exported so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OtlpStats {
    /// Requests recorded into the GenAI histograms.
    pub recorded: u64,
    /// Requests whose route is not a GenAI operation (not recorded).
    pub not_genai: u64,
    /// Export attempts answered 2xx, answered otherwise, not answered.
    pub exports_ok: u64,
    pub exports_rejected: u64,
    pub exports_failed: u64,
    /// Bytes sent in accepted exports.
    pub bytes_sent: u64,
}

/// The exporter and its instruments.
pub struct Otlp {
    provider: SdkMeterProvider,
    duration: Histogram<f64>,
    ttft: Histogram<f64>,
    tpot: Histogram<f64>,
    tokens: Histogram<u64>,
    exports: Arc<ExportStats>,
    recorded: u64,
    not_genai: u64,
}

impl Otlp {
    /// Builds the exporter and starts its reader thread. Nothing is sent until the first
    /// interval ends (or [`Otlp::shutdown`]).
    pub fn start(opts: &OtlpOptions) -> Result<Self, OtlpError> {
        let client = BlockingClient::new(opts.timeout);
        let exports = client.stats.clone();
        let exporter = MetricExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(opts.metrics_url.clone())
            .with_timeout(opts.timeout)
            // One retry: a longer outage is the next interval's business (the state is cumulative).
            .with_retry_policy(RetryPolicy::recommended().with_max_retries(1))
            .build()
            .map_err(|e| OtlpError::Build(e.to_string()))?;
        let reader = PeriodicReader::builder(exporter).with_interval(opts.interval).build();
        // `OTEL_RESOURCE_ATTRIBUTES` is honoured (the SDK's environment detector); the service is us.
        let resource = Resource::builder()
            .with_service_name("inferscope")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
        let meter = provider.meter("inferscope");
        let seconds = |name: &'static str, description: &'static str, buckets: &[f64]| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(buckets.to_vec())
                .build()
        };
        Ok(Self {
            duration: seconds(
                genai::REQUEST_DURATION,
                "Generative AI server request duration such as time-to-last byte or last output token.",
                genai::REQUEST_DURATION_BUCKETS,
            ),
            ttft: seconds(
                genai::TIME_TO_FIRST_TOKEN,
                "Time to generate first token for successful responses.",
                genai::TIME_TO_FIRST_TOKEN_BUCKETS,
            ),
            tpot: seconds(
                genai::TIME_PER_OUTPUT_TOKEN,
                "Time per output token generated after the first token for successful responses.",
                genai::TIME_PER_OUTPUT_TOKEN_BUCKETS,
            ),
            tokens: meter
                .u64_histogram(genai::TOKEN_USAGE)
                .with_unit("{token}")
                .with_description("Number of input and output tokens used.")
                .with_boundaries(genai::TOKEN_USAGE_BUCKETS.to_vec())
                .build(),
            provider,
            exports,
            recorded: 0,
            not_genai: 0,
        })
    }

    /// Records one finished request. `model`: its model label, already capped per target by
    /// the caller (`None`: not known, the attribute is left off). `target`: the attributes of
    /// the process that served it (`gen_ai.provider.name`, and where known `k8s.*`).
    pub fn record(&mut self, rec: &RequestRecord, model: Option<&str>, target: &[KeyValue]) {
        let m = match genai::measure(rec) {
            Ok(m) => m,
            Err(Skipped::NotGenAi) => {
                self.not_genai += 1;
                return;
            }
        };
        self.recorded += 1;
        let mut attrs = Vec::with_capacity(target.len() + 4);
        attrs.extend_from_slice(target);
        attrs.push(KeyValue::new("gen_ai.operation.name", m.operation));
        if let Some(model) = model {
            attrs.push(KeyValue::new("gen_ai.request.model", model.to_string()));
        }
        if let Some(e) = m.error {
            attrs.push(KeyValue::new("error.type", e));
        }
        if let Some(v) = m.duration_s {
            self.duration.record(v, &attrs);
        }
        if let Some(v) = m.ttft_s {
            self.ttft.record(v, &attrs);
        }
        if let Some(v) = m.tpot_s {
            self.tpot.record(v, &attrs);
        }
        if let Some(n) = m.output_tokens {
            attrs.push(KeyValue::new("gen_ai.token.type", "output"));
            self.tokens.record(n, &attrs);
        }
    }

    pub fn stats(&self) -> OtlpStats {
        let e = &self.exports;
        OtlpStats {
            recorded: self.recorded,
            not_genai: self.not_genai,
            exports_ok: e.ok.load(Ordering::Relaxed),
            exports_rejected: e.rejected.load(Ordering::Relaxed),
            exports_failed: e.failed.load(Ordering::Relaxed),
            bytes_sent: e.bytes.load(Ordering::Relaxed),
        }
    }

    /// Exports what is left and stops the reader thread (blocks up to about two timeouts).
    pub fn shutdown(self) -> OtlpStats {
        if let Err(e) = self.provider.shutdown() {
            log::debug!("otlp: shutdown: {e}");
        }
        self.stats()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_metrics_urls() {
        for (given, url) in [
            ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/metrics"),
            ("http://collector:4318/", "http://collector:4318/v1/metrics"),
            ("http://[::1]:4318/otlp", "http://[::1]:4318/otlp/v1/metrics"),
            ("http://h:1/v1/metrics", "http://h:1/v1/metrics"),
        ] {
            assert_eq!(metrics_url(given).unwrap(), url, "{given}");
        }
    }

    #[test]
    fn bad_endpoints_say_why_in_one_line() {
        for (given, why) in [
            ("127.0.0.1:4318", "no scheme"),
            ("https://x:4318", "https is not supported"),
            ("grpc://x:4317", "is not http"),
            ("http://u:p@x:4318", "credentials"),
            ("http://x:4318/?a=b", "query"),
            ("not a url", "not a URL"),
        ] {
            let e = metrics_url(given).unwrap_err().to_string();
            assert!(e.contains(why) && !e.contains('\n'), "{given}: {e}");
        }
        assert!(OtlpOptions::new("http://x:1", 0.0, 1.0).unwrap_err().to_string().contains("interval"));
        assert!(OtlpOptions::new("http://x:1", 1.0, f64::NAN).unwrap_err().to_string().contains("timeout"));
    }
}
