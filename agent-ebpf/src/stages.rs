//! Stage latency: a uprobe at a function's entry and a uretprobe at its return; the attach cookie
//! is the stage id. Each thread keeps a small stack of calls in progress, so nesting and
//! recursion time correctly and the return always pairs with the latest entry.

use agent_common::{counter, limits, stage, StageEvent, StageFrame, StageStack};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext as _,
};

use crate::common::{bump, is_target, BPF_RB_NO_WAKEUP};

#[map]
static STAGE_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
#[map]
pub static STAGE_STACKS: HashMap<u32, StageStack> = HashMap::with_max_entries(limits::STAGE_STACKS, 0);
/// A zeroed stack to insert from (a `StageStack` is too big for the eBPF stack).
#[map]
static STAGE_ZERO: PerCpuArray<StageStack> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn thread_stack(tid: u32, create: bool) -> Option<&'static mut StageStack> {
    if let Some(p) = STAGE_STACKS.get_ptr_mut(&tid) {
        // SAFETY: map value pointer; only this thread's probes touch its entry.
        return Some(unsafe { &mut *p });
    }
    if !create {
        return None;
    }
    let zero = STAGE_ZERO.get_ptr(0)?;
    // SAFETY: reading a map value we never write.
    if STAGE_STACKS.insert(&tid, unsafe { &*zero }, 0).is_err() {
        bump(counter::STAGE_STACKS_FULL);
        return None;
    }
    // SAFETY: as above.
    STAGE_STACKS.get_ptr_mut(&tid).map(|p| unsafe { &mut *p })
}

#[uprobe]
pub fn stage_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: the context pointer comes from the kernel.
    let stage = unsafe { generated::bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    // The daemon shares one uprobe per (file, offset) among all processes running that file;
    // only followed processes count.
    if !is_target((pid_tgid >> 32) as u32) {
        return 0;
    }
    let tid = pid_tgid as u32;
    let Some(stack) = thread_stack(tid, true) else { return 0 };
    let d = stack.depth as usize;
    stack.depth += 1;
    if d >= stage::MAX_DEPTH {
        bump(counter::STAGE_TOO_DEEP);
        return 0;
    }
    // SAFETY: helper without preconditions.
    stack.frames[d & (stage::MAX_DEPTH - 1)] = StageFrame { start_ns: unsafe { bpf_ktime_get_ns() }, stage, _pad: 0 };
    0
}

#[uretprobe]
pub fn stage_exit(ctx: RetProbeContext) -> u32 {
    // SAFETY: helper without preconditions.
    let end_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the context pointer comes from the kernel.
    let stage = unsafe { generated::bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return 0;
    }
    let Some(stack) = thread_stack(pid_tgid as u32, false) else {
        bump(counter::STAGE_UNMATCHED);
        return 0;
    };
    if stack.depth == 0 {
        bump(counter::STAGE_UNMATCHED);
        return 0;
    }
    stack.depth -= 1;
    let d = stack.depth as usize;
    if d >= stage::MAX_DEPTH {
        return 0; // a call too deep to store; its caller's time includes it
    }
    let frame = stack.frames[d & (stage::MAX_DEPTH - 1)];
    if frame.stage != stage {
        // Unwinding (exceptions, longjmp) skipped returns in between: the pairing is unknowable.
        bump(counter::STAGE_UNMATCHED);
        stack.depth = 0;
        return 0;
    }
    let ev = StageEvent {
        start_ns: frame.start_ns,
        end_ns,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        stage,
        depth: d as u32,
    };
    if STAGE_EVENTS.output::<StageEvent>(&ev, BPF_RB_NO_WAKEUP).is_err() {
        bump(counter::STAGE_LOST);
    }
    0
}
