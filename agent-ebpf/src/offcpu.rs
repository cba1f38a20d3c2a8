//! Off-CPU user stacks from `.eh_frame` tables: when a thread of a process with unwind tables
//! blocks, `offcpu_switch` (`sampling`) starts the same walk as a CPU sample, from the user
//! registers the thread saved on entering the kernel, and tail-calls `offcpu_unwind`, which
//! walks `FRAMES_PER_RUN` frames per run (tail-calling itself for more), stores the stack in
//! `USER_STACKS` and records where the interval began (`OFFCPU_START`) under its id. A tail
//! call needs a program of the caller's type, hence this tracepoint twin of `cpu_unwind`, with
//! its own slot of the per-CPU walk state.

use agent_common::{counter, unwind::outcome, OffCpuStart, SampleKey};
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::ProgramArray,
    programs::TracePointContext,
};

use crate::common::bump;
use crate::unwind::{has_tables, saved_user_regs, state_at, store_stack, walk, UnwindState, OFFCPU_SLOT};

/// Slot 0: `offcpu_unwind` itself (set by userspace after loading).
#[map]
static OFFCPU_UNWIND_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Starts unwinding the blocking thread's user stack; returns only when it could not start
/// (unwinding off, no tables for the process, program not loaded): the caller takes the
/// frame-pointer path.
#[inline(always)]
pub fn start(ctx: &TracePointContext, key: SampleKey, now: u64, tid: u32) {
    if !has_tables(key.tgid) {
        return;
    }
    let Some(st) = state_at(OFFCPU_SLOT) else { return };
    let Some((ip, sp, bp)) = saved_user_regs() else { return };
    st.begin(ip, sp, bp, key);
    st.started_ns = now;
    st.tid = tid;
    // SAFETY: on success control never comes back here.
    unsafe { OFFCPU_UNWIND_PROGS.tail_call(ctx, 0) };
}

#[tracepoint]
pub fn offcpu_unwind(ctx: TracePointContext) -> u32 {
    let Some(st) = state_at(OFFCPU_SLOT) else { return 0 };
    if let Some(how) = walk(st) {
        finish(st, how);
        return 0;
    }
    // SAFETY: on success control never comes back here.
    unsafe { OFFCPU_UNWIND_PROGS.tail_call(&ctx, 0) };
    finish(st, outcome::DEPTH_LIMIT);
    0
}

/// Stores the stack and opens the thread's off-CPU interval under it.
#[inline(always)]
fn finish(st: &mut UnwindState, how: u32) {
    st.stack.outcome = how;
    let user_stack = store_stack(st, 0);
    record_start(st.tid, st.started_ns, SampleKey { user_stack, ..st.key });
}

/// Remembers that thread `tid` left the CPU at `ts_ns` with stacks `key`.
#[inline(always)]
pub fn record_start(tid: u32, ts_ns: u64, key: SampleKey) {
    let start = OffCpuStart { ts_ns, key };
    if crate::sampling::OFFCPU_START.insert(&tid, &start, 0).is_err() {
        bump(counter::OFFCPU_FULL);
    }
}
