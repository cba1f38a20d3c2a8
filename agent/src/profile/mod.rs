//! CPU profiles: in-kernel sample counts → symbolized, folded stacks per request phase →
//! flamegraph SVGs (inferno) and folded files, plus a "top functions" table.

mod fold;
mod kallsyms;
mod names;
pub mod pprof;
mod raw;
mod stack;
mod svg;
mod symbolize;
mod top;
mod write;

pub use fold::{fold, Folded};
pub use kallsyms::Kallsyms;
pub use raw::{ns_to_us, RawProfile};
pub use stack::{folded_lines, Stack};
pub use svg::svg_of;
pub use symbolize::{symbolize_new, UserFrames};
pub use top::top_functions;
pub use write::{phase_path, write};

#[cfg(test)]
mod tests;
