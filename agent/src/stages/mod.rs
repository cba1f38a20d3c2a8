//! Stage latency: uprobes on the server's own functions. [`stage_set`] reads stage definitions,
//! [`resolve`] finds them in the process's modules (rescanning for dlopen'ed libraries), and
//! [`stats`] turns kernel call records into self time, statistics and per-request attribution.
//! Python stages (`py:GLOB`) are not probed: [`sampled`] estimates them from CPU samples.

pub mod owner;
pub mod resolve;
pub mod sampled;
pub mod stage_set;
pub mod stats;

pub use resolve::{Attachment, StageResolver};
pub use stage_set::{collect, StageDef};
pub use stats::{attribute, summarize, Attribution, StageCall, StageCollector, StageSummary};
