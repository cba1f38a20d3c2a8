//! What the kernel counted, before anything is symbolized.

pub use crate::bpf::sampling::RawProfile;

/// Off-CPU counts arrive as nanoseconds; flamegraphs of them are in microseconds.
pub fn ns_to_us(mut raw: RawProfile) -> RawProfile {
    for (_, v) in &mut raw.samples {
        *v /= 1000;
    }
    raw.samples.retain(|(_, v)| *v > 0);
    raw
}
