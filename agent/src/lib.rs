//! inferscope: out-of-process stream timing, stage latency, CPU profiles and GPU telemetry for
//! inference servers. See ARCHITECTURE.md for the read order.

pub mod http;
