//! inferscope: out-of-process stream timing, stage latency, CPU profiles and GPU telemetry for
//! inference servers. See ARCHITECTURE.md for the read order.

pub mod attach;
pub mod bpf;
pub mod capture;
pub mod daemon;
pub mod event;
pub mod export;
pub mod gpu;
pub mod http;
pub mod ingest;
pub mod procfs;
pub mod profile;
pub mod python;
pub mod report;
pub mod stages;
pub mod symbols;
pub mod tls;
pub mod tracker;
pub mod unwind;
