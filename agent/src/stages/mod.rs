//! Stage latency: uprobes on the server's own functions. [`profile`] reads stage definitions,
//! [`resolve`] finds them in the process's modules (rescanning for dlopen'ed libraries), and
//! [`stats`] turns kernel call records into self time, statistics and per-request attribution.

pub mod profile;
pub mod resolve;
pub mod stats;

pub use profile::{collect, StageDef};
pub use resolve::{Attachment, StageResolver};
pub use stats::{attribute, summarize, Attribution, StageCall, StageCollector, StageSummary};
