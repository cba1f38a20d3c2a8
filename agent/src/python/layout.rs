//! Struct layouts of the CPython versions we unwind, one table per minor version. The figures
//! are `offsetof` values from each version's own headers (`Include/internal/pycore_frame.h`,
//! `pycore_interp.h`, `pycore_runtime.h`, `cpython/pystate.h`, `cpython/code.h`,
//! `cpython/unicodeobject.h`), x86-64; `tests.rs` recompiles a C program against the headers
//! pyenv ships and compares, where they are installed. Layouts do not change within a minor
//! version (CPython's ABI rule for these structs since 3.11 is "no changes in bugfix releases").

use agent_common::python::{PyProc, NO_CFRAME, NO_FIELD};

/// Where things are in one CPython version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub minor: u8,
    /// `_PyRuntimeState.interpreters.head`.
    pub runtime_interpreters_head: u64,
    /// The kernel's part (process-specific fields zero).
    pub walk: PyProc,
    pub code_filename: u64,
    pub code_qualname: u64,
    pub code_firstlineno: u64,
    pub code_linetable: u64,
    pub code_adaptive: u64,
    /// `sizeof(PyASCIIObject)`, `sizeof(PyCompactUnicodeObject)`: where a compact string's
    /// characters start.
    pub ascii_size: u64,
    pub compact_size: u64,
}

const fn walk(
    threads_head: u32,
    tstate_thread_id: u32,
    tstate_frame: u32,
    cframe_current_frame: u32,
    frame_code: u32,
    frame_previous: u32,
    frame_owner: u32,
    frame_is_entry: u32,
    owner_cstack: u32,
) -> PyProc {
    PyProc {
        interp_head_addr: 0,
        task_fsbase: 0,
        interp_threads_head: threads_head,
        tstate_next: 8,
        tstate_thread_id,
        tstate_frame,
        cframe_current_frame,
        frame_code,
        frame_previous,
        frame_instr: 56,
        frame_owner,
        frame_is_entry,
        owner_cstack,
    }
}

pub const PY311: Layout = Layout {
    minor: 11,
    runtime_interpreters_head: 40,
    walk: walk(16, 152, 56, 8, 32, 48, 69, 68, NO_FIELD),
    code_filename: 112,
    code_qualname: 128,
    code_firstlineno: 72,
    code_linetable: 136,
    code_adaptive: 184,
    ascii_size: 48,
    compact_size: 72,
};

pub const PY312: Layout = Layout {
    minor: 12,
    runtime_interpreters_head: 40,
    walk: walk(72, 136, 56, 0, 0, 8, 70, NO_FIELD, 3),
    code_filename: 112,
    code_qualname: 128,
    code_firstlineno: 68,
    code_linetable: 136,
    code_adaptive: 192,
    ascii_size: 40,
    compact_size: 56,
};

/// 3.13.0 from its headers. 3.13 also describes itself in `_Py_DebugOffsets` at the start of
/// `_PyRuntime`; reading that instead is the way to follow later 3.13 releases should a field
/// move (not done yet: the table is checked against 3.13.0's headers).
pub const PY313: Layout = Layout {
    minor: 13,
    runtime_interpreters_head: 632,
    walk: walk(7344, 152, 72, NO_CFRAME, 0, 8, 70, NO_FIELD, 3),
    code_filename: 112,
    code_qualname: 128,
    code_firstlineno: 68,
    code_linetable: 136,
    code_adaptive: 200,
    ascii_size: 40,
    compact_size: 56,
};

/// The layout of CPython 3.`minor`, or why there is none.
pub fn layout_for(major: u8, minor: u8) -> Result<&'static Layout, String> {
    match (major, minor) {
        (3, 11) => Ok(&PY311),
        (3, 12) => Ok(&PY312),
        (3, 13) => Ok(&PY313),
        _ => Err(format!("Python {major}.{minor} is not supported (3.11, 3.12 and 3.13 are)")),
    }
}
