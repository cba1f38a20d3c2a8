//! Native user-stack unwinding from `.eh_frame` call-frame information (x86-64): the compact
//! tables userspace compiles per file and the per-process mapping tables the sampling program
//! searches. One row says how to find the caller's frame from any pc at or after `pc` (up to the
//! next row): the canonical frame address (CFA) as `rsp + n` or `rbp + n`, the return address at
//! CFA − 8 (always, on x86-64), and where the caller's `rbp` was saved, if it was.

/// User frames kept per stack (power of two for masking).
pub const MAX_FRAMES: usize = 128;
/// Rows per map value of `UNWIND_ROWS` (one syscall uploads one chunk; power of two).
pub const CHUNK_ROWS: usize = 256;
/// Executable mappings searched per process (sorted by address; more are counted and left out).
pub const MAX_MAPPINGS: usize = 256;
/// Binary-search steps over one file's rows: files up to 2^24 rows.
pub const ROW_SEARCH_STEPS: u32 = 24;
/// Binary-search steps over a process's mappings (2^9 > MAX_MAPPINGS).
pub const MAPPING_SEARCH_STEPS: u32 = 9;
/// Frames unwound per program run; the program tail-calls itself for more (33 tail calls at most).
pub const FRAMES_PER_RUN: u32 = 8;
/// Stack ids of unwound user stacks (`USER_STACKS`) have this bit set, so they never collide
/// with the ids of `bpf_get_stackid`'s `STACKS` (which stay below `limits::STACKS`).
pub const USER_STACK_ID_BIT: i32 = 1 << 30;

/// `UnwindRow::kind`.
pub mod row_kind {
    /// No call-frame information covers this pc (a gap between functions, or a rule we do not
    /// model: a CFA expression, a CFA in another register).
    pub const NONE: u8 = 0;
    /// CFA = rsp + cfa_offset.
    pub const CFA_RSP: u8 = 1;
    /// CFA = rbp + cfa_offset.
    pub const CFA_RBP: u8 = 2;
    /// A PLT entry (the linker's CFA expression): CFA = rsp + cfa_offset, + 8 once the entry
    /// has pushed its relocation index (`(pc & 15) >= 11`).
    pub const PLT: u8 = 3;
    /// The return address is undefined here: the outermost frame (`_start`, a thread's start).
    pub const END: u8 = 4;
    /// A function that realigned its stack (gcc's DRAP: AVX code such as ggml's): CFA =
    /// *(rbp + cfa_offset as i16), and the caller's rbp is at *(rbp).
    pub const CFA_DEREF_RBP: u8 = 5;
}

/// One row of a file's unwind table; `pc` is an ELF virtual address of the file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    pub cfa_offset: u16,
    /// Where the caller's rbp was saved, in 8-byte units from the CFA (negative); 0: rbp is
    /// unchanged by this frame.
    pub rbp_offset: i8,
    /// A [`row_kind`] constant.
    pub kind: u8,
}

/// A chunk of rows (the value type of `UNWIND_ROWS`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RowChunk {
    pub rows: [UnwindRow; CHUNK_ROWS],
}

/// One executable mapping of a process: `[start, end)`, the load bias (runtime address − ELF
/// virtual address) and its file's rows in `UNWIND_ROWS` (`rows_len == 0`: no table, walk frame
/// pointers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    /// Index of the first row (chunk * CHUNK_ROWS + row).
    pub rows_start: u32,
    pub rows_len: u32,
}

/// A process's executable mappings, sorted by `start` (map `UNWIND_MAPPINGS`, keyed by tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcMappings {
    pub count: u32,
    pub _pad: u32,
    pub entries: [Mapping; MAX_MAPPINGS],
}

/// How an unwind ended (`UserStack::outcome`).
pub mod outcome {
    /// Reached the outermost frame (the CFI marks the return address undefined, or it is 0).
    pub const COMPLETE: u32 = 1;
    /// A pc with no usable call-frame information in a file that has a table.
    pub const NO_CFI: u32 = 2;
    /// `MAX_FRAMES` frames, or out of tail calls.
    pub const DEPTH_LIMIT: u32 = 3;
    /// The user stack could not be read where the rules pointed.
    pub const READ_FAULT: u32 = 4;
    /// A pc outside every known executable mapping (JIT code, a library loaded since the last
    /// look, or garbage).
    pub const NO_MAPPING: u32 = 5;
    /// The last step walked frame pointers (a file without a table) and the chain ended there:
    /// complete only if it ended at a thread's entry point (userspace judges by name).
    pub const FRAME_POINTERS: u32 = 6;
}

/// An unwound user stack (map `USER_STACKS`): return addresses, leaf first, as `bpf_get_stackid`
/// gives them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UserStack {
    pub len: u32,
    /// An [`outcome`] constant.
    pub outcome: u32,
    pub pcs: [u64; MAX_FRAMES],
}
