//! What the kernel counted, before anything is symbolized.

use std::collections::HashMap;

use agent_common::SampleKey;

/// What the kernel counted: per key, and the stacks the keys refer to (leaf first).
#[derive(Debug, Default, Clone)]
pub struct RawProfile {
    pub samples: Vec<(SampleKey, u64)>,
    pub stacks: HashMap<i32, Vec<u64>>,
    /// How the walk of each unwound user stack ended (`agent_common::unwind::outcome`); stacks
    /// taken by frame pointers (`bpf_get_stackid`) have none.
    pub outcomes: HashMap<i32, u32>,
}

/// Off-CPU counts arrive as nanoseconds; flamegraphs of them are in microseconds.
pub fn ns_to_us(mut raw: RawProfile) -> RawProfile {
    for (_, v) in &mut raw.samples {
        *v /= 1000;
    }
    raw.samples.retain(|(_, v)| *v > 0);
    raw
}
