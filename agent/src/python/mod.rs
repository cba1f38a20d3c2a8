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
