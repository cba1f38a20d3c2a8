//! CPython frames in CPU profiles, the userspace half (the kernel half is
//! `agent-ebpf/src/python.rs`): which interpreter a process runs and where its runtime state is
//! (`detect`), the struct layouts of each supported version taken from the interpreter's own
//! headers (`layout`), reading code objects out of the process to name frames, cached per
//! (process, code object) (`symbolize`), and putting Python frames in place of the eval-loop
//! frames of the native stack (`merge`).

mod detect;
mod layout;
mod merge;
mod symbolize;

pub use detect::{detect, Detected, NotPython};
pub use layout::{layout_for, Layout};
pub use merge::{eval_groups, merge, EVAL_FRAME};
pub use symbolize::{PySymbolizer, PySymbolizerStats};

#[cfg(test)]
mod tests;

/// Python-unwinding figures for the report (`cpu.python`): the kernel's walks and the
/// symbolizer's names.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PythonStats {
    /// Samples whose Python frames were walked in the kernel.
    pub walks: u64,
    /// Walks that found no thread state or hit unreadable interpreter memory.
    pub walks_failed: u64,
    /// Python stacks not stored because `PY_STACKS` was full (native frames only).
    pub stacks_full: u64,
    pub names: PySymbolizerStats,
}

impl PythonStats {
    /// From the kernel counters (`agent_common::python::counter` order) and the symbolizer.
    pub fn new(kernel: &[u64], names: PySymbolizerStats) -> Self {
        use agent_common::python::counter as c;
        let at = |i: u32| kernel.get(i as usize).copied().unwrap_or(0);
        Self { walks: at(c::WALKS), walks_failed: at(c::FAILED), stacks_full: at(c::STACKS_FULL), names }
    }
}
