//! CPython frames in CPU samples: the per-process layout the sampling program walks with
//! (`PyProc`, map `PY_PROCS`, written by userspace from the interpreter's version) and the frames
//! it records (`PyStack`, map `PY_STACKS`, under the same id as the sample's native stack in
//! `USER_STACKS`). Only code-object addresses and instruction pointers are recorded; names,
//! files and lines are read by userspace from the process's memory.

/// Python frames kept per stack (power of two for masking); deeper stacks keep the leaf-most.
pub const PY_MAX_FRAMES: usize = 64;
/// Thread states searched for the sampled thread (interpreter order, newest first).
pub const PY_MAX_THREADS: u32 = 32;
/// `PyProc::cframe_current_frame` when the thread state points at the frame itself (3.13+).
pub const NO_CFRAME: u32 = u32::MAX;
/// `PyProc::frame_is_entry` / `owner_cstack` when the version has no such field / value.
pub const NO_FIELD: u32 = u32::MAX;

/// Map names (beside `agent_common::maps`).
pub mod maps {
    pub const PY_PROCS: &str = "PY_PROCS";
    pub const PY_STACKS: &str = "PY_STACKS";
    pub const PY_STATE: &str = "PY_STATE";
    pub const PY_PROGS: &str = "PY_PROGS";
    pub const PY_COUNTERS: &str = "PY_COUNTERS";
    pub const PY_SAMPLES: &str = "PY_SAMPLES";
}

/// Bounds of the Python maps.
pub mod limits {
    /// Python processes being profiled.
    pub const PY_PROCS: u32 = 1024;
    /// Distinct Python stacks (1 KiB each, allocated as used); same ids as `USER_STACKS`.
    pub const PY_STACKS: u32 = 16384;
    /// Ring of per-sample records for sampled Python stages (16 bytes each + 8 of header: at
    /// 499 Hz on 64 CPUs, ~1 s of samples between two 10 ms drains).
    pub const PY_SAMPLES_BYTES: u32 = 1 << 20;
}

/// `PyStack::status`: how the Python walk went.
pub mod status {
    /// Frames recorded (possibly none: the thread ran no Python code).
    pub const OK: u32 = 1;
    /// No thread state of the interpreter belongs to the sampled thread (a thread Python does
    /// not know, or more than `PY_MAX_THREADS` threads before it).
    pub const NO_THREAD: u32 = 2;
    /// Interpreter memory could not be read where the layout pointed.
    pub const READ_FAULT: u32 = 3;
    /// `PY_MAX_FRAMES` frames recorded and more were there (the root-most ones are missing).
    pub const TRUNCATED: u32 = 4;
}

/// `PyFrame::flags`.
pub mod frame_flag {
    /// This frame is the outermost one its `_PyEval_EvalFrameDefault` call runs (3.11:
    /// `is_entry`; 3.12+: the next frame is the C-stack shim that call pushed): frames from the
    /// leaf to here replace that native frame.
    pub const ENTRY: u32 = 1;
}

/// Where the sampling program finds a process's Python frames. Offsets are bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProc {
    /// Runtime address of `_PyRuntime.interpreters.head` (a `PyInterpreterState *`).
    pub interp_head_addr: u64,
    /// `task_struct.thread.fsbase` (the thread's `pthread_self()`, which CPython stores as
    /// `PyThreadState.thread_id`), from the kernel's BTF.
    pub task_fsbase: u32,
    pub interp_threads_head: u32,
    pub tstate_next: u32,
    pub tstate_thread_id: u32,
    /// `cframe` (3.11, 3.12) or `current_frame` (3.13+).
    pub tstate_frame: u32,
    /// `_PyCFrame.current_frame`, or `NO_CFRAME`.
    pub cframe_current_frame: u32,
    pub frame_code: u32,
    pub frame_previous: u32,
    /// `prev_instr` (≤ 3.12) or `instr_ptr` (3.13+).
    pub frame_instr: u32,
    pub frame_owner: u32,
    /// `is_entry` (3.11) or `NO_FIELD`.
    pub frame_is_entry: u32,
    /// The `owner` value of C-stack shim frames (3.12+: 3) or `NO_FIELD`.
    pub owner_cstack: u32,
}

/// One Python frame: its code object and where in it the frame was.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrame {
    /// Address of the frame's code object (`PyCodeObject *`).
    pub code: u64,
    /// The frame's instruction pointer minus `code` (bytes; userspace subtracts the offset of
    /// `co_code_adaptive`). Wraps for garbage pointers; userspace checks the range.
    pub instr: u32,
    /// [`frame_flag`] bits.
    pub flags: u32,
}

/// The Python frames of one sample, leaf first (map `PY_STACKS`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PyStack {
    pub len: u32,
    /// A [`status`] constant.
    pub status: u32,
    pub frames: [PyFrame; PY_MAX_FRAMES],
}

/// One CPU sample of a Python process, with its time and thread (ring `PY_SAMPLES`, only while
/// `setting::PY_SAMPLES` is on): sampled Python stages attribute it to the requests in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PySample {
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The sample's stack id (`USER_STACKS` / `PY_STACKS`); negative when not stored.
    pub stack: i32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::PySample {}
    unsafe impl aya::Pod for super::PyProc {}
    unsafe impl aya::Pod for super::PyStack {}
}

/// Slots of the per-CPU `PY_COUNTERS` array.
pub mod counter {
    /// Samples whose Python frames were walked.
    pub const WALKS: u32 = 0;
    /// Walks that found no thread state or hit unreadable memory.
    pub const FAILED: u32 = 1;
    /// Python stacks not stored: `PY_STACKS` was full (the sample keeps its native frames).
    pub const STACKS_FULL: u32 = 2;
    /// Per-sample records not sent: `PY_SAMPLES` was full (sampled stages miss them).
    pub const SAMPLES_LOST: u32 = 3;
    pub const COUNT: u32 = 4;
}
