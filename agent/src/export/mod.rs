//! Live exports of finished requests to other systems, fed by the sinks beside the reports and
//! the Prometheus registry: [`otlp`] (OpenTelemetry GenAI metrics over OTLP/HTTP), its
//! measurements ([`genai`], pure) and its HTTP client (`otlp_http`).

pub mod genai;
pub mod otlp;
pub(crate) mod otlp_http;
