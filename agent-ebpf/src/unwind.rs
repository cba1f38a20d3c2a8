//! User stacks without frame pointers: the sampling program starts from the sampled user
//! registers and walks the stack with the `.eh_frame` rows userspace compiled for each file
//! (`UNWIND_ROWS`), found through the process's mapping table (`UNWIND_MAPPINGS`). Files without
//! a table are walked by frame pointers. `FRAMES_PER_RUN` frames per run; the program tail-calls
//! itself for more. The stack is stored in `USER_STACKS` under a hash of its frames, with how
//! the walk ended, and the sample is counted under that id as before.

use agent_common::{
    counter, limits, setting,
    unwind::{
        outcome, row_kind, Mapping, ProcMappings, RowChunk, UnwindRow, UserStack, CHUNK_ROWS, FRAMES_PER_RUN,
        MAPPING_SEARCH_STEPS, MAX_FRAMES, MAX_MAPPINGS, ROW_SEARCH_STEPS, USER_STACK_ID_BIT,
    },
    SampleKey,
};
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user, generated},
    macros::{map, perf_event},
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::PerfEventContext,
};

use crate::common::{bump, BPF_NOEXIST};
use crate::lifecycle::enabled;

const BPF_F_NO_PREALLOC: u32 = 1;
const EEXIST: i32 = 17;

#[map]
static UNWIND_ROWS: Array<RowChunk> = Array::with_max_entries(limits::UNWIND_CHUNKS, 0);
#[map]
static UNWIND_MAPPINGS: HashMap<u32, ProcMappings> = HashMap::with_max_entries(limits::UNWIND_PROCS, BPF_F_NO_PREALLOC);
#[map]
static USER_STACKS: HashMap<u32, UserStack> = HashMap::with_max_entries(limits::USER_STACKS, BPF_F_NO_PREALLOC);
/// Per CPU: slot `CPU_SLOT` for CPU samples, `OFFCPU_SLOT` for off-CPU walks (`offcpu`), so the
/// two never share a walk in progress.
#[map]
static UNWIND_STATE: PerCpuArray<UnwindState> = PerCpuArray::with_max_entries(2, 0);
pub(crate) const CPU_SLOT: u32 = 0;
pub(crate) const OFFCPU_SLOT: u32 = 1;
/// Slot 0: `cpu_unwind` itself (set by userspace after loading).
#[map]
static UNWIND_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The walk in progress on this CPU, carried across tail calls.
#[repr(C)]
pub struct UnwindState {
    pub(crate) stack: UserStack,
    ip: u64,
    sp: u64,
    bp: u64,
    pub(crate) key: SampleKey,
    /// Off-CPU walks: when and which thread left the CPU (`offcpu`).
    pub(crate) started_ns: u64,
    pub(crate) tid: u32,
    /// Array indices pass through here on their way to memory (see `launder`).
    index: u32,
}

/// Starts unwinding this sample's user stack; returns only when it could not start (setting
/// off, process without a mapping table, tail call refused): the caller takes the frame-pointer
/// path.
#[inline(always)]
pub fn start(ctx: &PerfEventContext, key: SampleKey) {
    if !has_tables(key.tgid) {
        return;
    }
    let Some(st) = state_at(CPU_SLOT) else { return };
    let Some((ip, sp, bp)) = user_regs(ctx) else { return };
    st.begin(ip, sp, bp, key);
    // SAFETY: on success control never comes back here.
    unsafe { UNWIND_PROGS.tail_call(ctx, 0) };
}

/// Whether `.eh_frame` unwinding is on and `tgid` has a mapping table.
#[inline(always)]
pub(crate) fn has_tables(tgid: u32) -> bool {
    enabled(setting::UNWIND) && UNWIND_MAPPINGS.get_ptr(&tgid).is_some()
}

impl UnwindState {
    #[inline(always)]
    pub(crate) fn begin(&mut self, ip: u64, sp: u64, bp: u64, key: SampleKey) {
        self.ip = ip;
        self.sp = sp;
        self.bp = bp;
        self.key = key;
        self.stack.len = 0;
        self.stack.outcome = 0;
    }
}

/// The interrupted user registers: the sample's own when it hit user mode, else the ones the
/// task saved on entering the kernel.
#[inline(always)]
fn user_regs(ctx: &PerfEventContext) -> Option<(u64, u64, u64)> {
    // SAFETY: the perf_event context's register block is readable field by field.
    let regs: &pt_regs = unsafe { &(*ctx.ctx).regs };
    if regs.cs & 3 == 3 {
        return Some((regs.rip, regs.rsp, regs.rbp));
    }
    saved_user_regs()
}

/// The user registers the current task saved on entering the kernel (syscall, fault, interrupt).
#[inline(always)]
pub(crate) fn saved_user_regs() -> Option<(u64, u64, u64)> {
    // SAFETY: BTF task pointer of the current task, as the helper wants it.
    let saved = unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) } as *const pt_regs;
    if saved.is_null() {
        return None;
    }
    // SAFETY: fault-tolerant kernel read.
    let r = unsafe { bpf_probe_read_kernel(saved) }.ok()?;
    (r.rip != 0).then_some((r.rip, r.rsp, r.rbp))
}

/// This CPU's CPU-sample walk, for the program the finished walk is handed to (`python`).
#[inline(always)]
pub(crate) fn state() -> Option<&'static mut UnwindState> {
    state_at(CPU_SLOT)
}

/// This CPU's walk in `slot`.
#[inline(always)]
pub(crate) fn state_at(slot: u32) -> Option<&'static mut UnwindState> {
    let st = UNWIND_STATE.get_ptr_mut(slot)?;
    // SAFETY: this CPU's slot; a CPU sample (hard interrupt) and a sched_switch (interrupts
    // off) use different slots, so nothing else touches it while we run.
    Some(unsafe { &mut *st })
}

#[perf_event]
pub fn cpu_unwind(ctx: PerfEventContext) -> u32 {
    let Some(st) = state_at(CPU_SLOT) else { return 0 };
    if let Some(how) = walk(st) {
        finish(&ctx, st, how);
        return 0;
    }
    // SAFETY: on success control never comes back here.
    unsafe { UNWIND_PROGS.tail_call(&ctx, 0) };
    finish(&ctx, st, outcome::DEPTH_LIMIT);
    0
}

/// Up to `FRAMES_PER_RUN` frames of the walk in `st`; `Some` when it ended (and why), `None`
/// when the caller should tail-call for more.
#[inline(always)]
pub(crate) fn walk(st: &mut UnwindState) -> Option<u32> {
    // SAFETY: read-only use of a map value userspace replaces whole.
    let Some(maps) = (unsafe { UNWIND_MAPPINGS.get(&st.key.tgid) }) else {
        return Some(outcome::NO_MAPPING);
    };
    let mut i = 0;
    while i < FRAMES_PER_RUN {
        if let Some(how) = step(st, maps) {
            return Some(how);
        }
        i += 1;
    }
    None
}

/// One frame: records the current pc and moves the registers to the caller's frame; `Some`
/// when the walk ends here (and why).
#[inline(always)]
fn step(st: &mut UnwindState, maps: &ProcMappings) -> Option<u32> {
    let len = st.stack.len as usize;
    if len >= MAX_FRAMES {
        return Some(outcome::DEPTH_LIMIT);
    }
    let pc = st.ip;
    st.stack.pcs[len & (MAX_FRAMES - 1)] = pc;
    st.stack.len = len as u32 + 1;
    // A return address is the instruction after the call, which may already belong to the
    // next function (a call to a noreturn function ends its caller): look up the call itself.
    let lookup = if len == 0 { pc } else { pc.wrapping_sub(1) };
    let scratch = &raw mut st.index;
    let Some(m) = find_mapping(maps, lookup, scratch) else { return Some(outcome::NO_MAPPING) };
    if m.rows_len == 0 {
        return frame_pointer_step(st);
    }
    let file_pc = lookup.wrapping_sub(m.bias);
    if file_pc > u32::MAX as u64 {
        return Some(outcome::NO_CFI);
    }
    let Some(row) = find_row(m.rows_start, m.rows_len, file_pc as u32, scratch) else { return Some(outcome::NO_CFI) };
    let cfa = match row.kind {
        row_kind::CFA_RSP => st.sp.wrapping_add(row.cfa_offset as u64),
        row_kind::CFA_RBP => st.bp.wrapping_add(row.cfa_offset as u64),
        row_kind::PLT => st.sp.wrapping_add(row.cfa_offset as u64 + if pc & 15 >= 11 { 8 } else { 0 }),
        row_kind::END => return Some(outcome::COMPLETE),
        row_kind::CFA_DEREF_RBP => {
            let Some(cfa) = read_user(st.bp.wrapping_add(row.cfa_offset as i16 as i64 as u64)) else {
                return Some(outcome::READ_FAULT);
            };
            let Some(bp) = read_user(st.bp) else { return Some(outcome::READ_FAULT) };
            st.bp = bp;
            cfa
        }
        _ => return Some(outcome::NO_CFI),
    };
    let Some(ra) = read_user(cfa.wrapping_sub(8)) else { return Some(outcome::READ_FAULT) };
    if row.rbp_offset != 0 {
        let Some(bp) = read_user(cfa.wrapping_add((row.rbp_offset as i64 * 8) as u64)) else {
            return Some(outcome::READ_FAULT);
        };
        st.bp = bp;
    }
    st.sp = cfa;
    st.ip = ra;
    if ra == 0 {
        return Some(outcome::COMPLETE);
    }
    None
}

/// A file without a table: the caller's frame from the frame-pointer chain.
#[inline(always)]
fn frame_pointer_step(st: &mut UnwindState) -> Option<u32> {
    let bp = st.bp;
    if bp == 0 {
        return Some(outcome::FRAME_POINTERS);
    }
    let (Some(next_bp), Some(ra)) = (read_user(bp), read_user(bp.wrapping_add(8))) else {
        return Some(outcome::FRAME_POINTERS);
    };
    if ra == 0 {
        return Some(outcome::FRAME_POINTERS);
    }
    st.bp = next_bp;
    st.sp = bp.wrapping_add(16);
    st.ip = ra;
    None
}

#[inline(always)]
fn read_user(addr: u64) -> Option<u64> {
    // SAFETY: fault-tolerant read of the sampled task's memory.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The mapping holding `pc`: binary search over the sorted entries.
#[inline(always)]
fn find_mapping(maps: &ProcMappings, pc: u64, scratch: *mut u32) -> Option<Mapping> {
    // Masked, not clamped: a clamp would hand the verifier a constant bound on one path, and
    // a search over constants is explored once per distinct path (2^steps of them) instead of
    // being pruned. Userspace never writes more than MAX_MAPPINGS; the index is masked anyway.
    let (mut lo, mut hi) = (0u32, maps.count & (2 * MAX_MAPPINGS as u32 - 1));
    let mut i = 0;
    while i < MAPPING_SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        if maps.entries[launder(mid, scratch) as usize & (MAX_MAPPINGS - 1)].start <= pc {
            lo = mid + 1;
        } else {
            hi = mid;
        }
        i += 1;
    }
    if lo == 0 {
        return None;
    }
    let m = maps.entries[launder(lo - 1, scratch) as usize & (MAX_MAPPINGS - 1)];
    (pc < m.end).then_some(m)
}

/// The last row at or before `pc` among the file's rows `[start, start + len)`.
#[inline(always)]
fn find_row(start: u32, len: u32, pc: u32, scratch: *mut u32) -> Option<UnwindRow> {
    let (mut lo, mut hi) = (start, start.wrapping_add(len));
    let mut i = 0;
    while i < ROW_SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        if row_at(mid, scratch)?.pc <= pc {
            lo = mid + 1;
        } else {
            hi = mid;
        }
        i += 1;
    }
    if lo == start {
        return None;
    }
    row_at(lo - 1, scratch)
}

#[inline(always)]
fn row_at(index: u32, scratch: *mut u32) -> Option<UnwindRow> {
    let index = launder(index, scratch);
    let chunk = UNWIND_ROWS.get(index / CHUNK_ROWS as u32)?;
    Some(chunk.rows[index as usize & (CHUNK_ROWS - 1)])
}

/// `v`, as far as the verifier can tell an unknown number. An index that reaches pointer
/// arithmetic is marked precise, and precision flows back to every value it came from: the
/// binary search's bounds would then be told apart on every path (2^steps states per search).
/// Through map memory, which the verifier does not track, the chain stops here; the caller
/// masks the result, which is all the bounds check needs.
#[inline(always)]
fn launder(v: u32, scratch: *mut u32) -> u32 {
    // SAFETY: `scratch` points into this CPU's `UNWIND_STATE` value.
    unsafe {
        core::ptr::write_volatile(scratch, v);
        core::ptr::read_volatile(scratch)
    }
}

/// Ends the walk: a Python process has its Python frames added (`python`, which stores and
/// counts); otherwise the stack is stored and the sample counted here.
#[inline(always)]
fn finish(ctx: &PerfEventContext, st: &mut UnwindState, how: u32) {
    st.stack.outcome = how;
    crate::python::hand_over(ctx, st.key.tgid);
    let user_stack = store_stack(st, 0);
    crate::sampling::count_sample(&SampleKey { user_stack, ..st.key });
}

/// Stores the stack under a hash of its frames (and `seed`, the hash of what else the sample
/// is keyed by); returns its id, or -1 when `USER_STACKS` is full.
#[inline(always)]
pub(crate) fn store_stack(st: &mut UnwindState, seed: u64) -> i32 {
    let how = st.stack.outcome;
    let len = st.stack.len as usize;
    // The pid is part of the identity: stacks of a process are dropped with it (forget_profile).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed ^ how as u64 ^ ((st.key.tgid as u64) << 32);
    let mut i = 0;
    while i < MAX_FRAMES {
        if i >= len {
            break;
        }
        h ^= st.stack.pcs[i];
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    let id = (((h ^ (h >> 32)) as u32) & (USER_STACK_ID_BIT as u32 - 1)) | USER_STACK_ID_BIT as u32;
    // Same frames, same id: an existing entry is this stack (or, rarely, a hash collision).
    match USER_STACKS.insert(&id, &st.stack, BPF_NOEXIST) {
        Ok(()) => id as i32,
        Err(e) if e == -EEXIST => id as i32,
        Err(_) => {
            bump(counter::USER_STACKS_FULL);
            -1
        }
    }
}
