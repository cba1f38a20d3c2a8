//! CPU samples (perf cpu-clock) and off-CPU intervals (sched_switch), counted in the kernel per
//! (process, phase, user stack, kernel stack): userspace reads the counts, not one event per sample.

use agent_common::{counter, limits, setting, OffCpuStart, SampleKey};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, perf_event, tracepoint},
    maps::{HashMap, PerCpuHashMap, StackTrace},
    programs::{tracing::StackIdContext as _, PerfEventContext, TracePointContext},
};

use crate::common::{bump, BPF_NOEXIST};
use crate::lifecycle::enabled;

#[map]
static PROFILE_PHASE: HashMap<u32, u32> = HashMap::with_max_entries(limits::TARGETS, 0);
#[map]
static SAMPLES: PerCpuHashMap<SampleKey, u64> = PerCpuHashMap::with_max_entries(limits::SAMPLES, 0);
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(limits::STACKS, 0);

#[map]
pub static OFFCPU_START: HashMap<u32, OffCpuStart> = HashMap::with_max_entries(limits::OFFCPU_START, 0);
#[map]
static OFFCPU: PerCpuHashMap<SampleKey, u64> = PerCpuHashMap::with_max_entries(limits::OFFCPU, 0);

const BPF_F_USER_STACK: u64 = 1 << 8;
// sched_switch record (see /sys/kernel/tracing/events/sched/sched_switch/format).
const SWITCH_PREV_STATE: usize = 32;
const SWITCH_NEXT_PID: usize = 56;

/// Off-CPU time: when a thread of a profiled process blocks (leaves the CPU in a sleeping state),
/// remember when and where (its stacks); when it is switched back in, add the time it was away
/// to that place. Preemption of a runnable thread is not blocking and is not counted.
#[tracepoint]
pub fn offcpu_switch(ctx: TracePointContext) -> u32 {
    if !enabled(setting::OFFCPU) {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // The thread switched in first: the switch-out below may end in a tail call (`offcpu`).
    let next: u32 = unsafe { ctx.read_at::<i32>(SWITCH_NEXT_PID) }.unwrap_or(0) as u32;
    // SAFETY: copied out before the entry is removed.
    if let Some(start) = (unsafe { OFFCPU_START.get(&next) }).copied() {
        let _ = OFFCPU_START.remove(&next);
        add_offcpu(&start.key, now.saturating_sub(start.ts_ns));
    }
    // `prev` is the current task.
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: tracepoint record reads at offsets from its format file.
    let prev_state: i64 = unsafe { ctx.read_at(SWITCH_PREV_STATE) }.unwrap_or(0);
    if tid == 0 || prev_state == 0 {
        return 0;
    }
    // SAFETY: read-only lookup of a plain value.
    let Some(&phase) = (unsafe { PROFILE_PHASE.get(&tgid) }) else { return 0 };
    let kernel_stack = ctx.get_stackid(&STACKS, 0).map_or(-1, |id| id as i32);
    let key = SampleKey { tgid, phase, user_stack: -1, kernel_stack };
    crate::offcpu::start(&ctx, key, now, tid);
    let user_stack = ctx.get_stackid(&STACKS, BPF_F_USER_STACK).map_or(-1, |id| id as i32);
    crate::offcpu::record_start(tid, now, SampleKey { user_stack, ..key });
    0
}

#[inline(always)]
fn add_offcpu(key: &SampleKey, away: u64) {
    if let Some(total) = OFFCPU.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a map value.
        unsafe { *total += away };
    } else if OFFCPU.insert(key, &away, BPF_NOEXIST).is_err() {
        match OFFCPU.get_ptr_mut(key) {
            // SAFETY: as above.
            Some(total) => unsafe { *total += away },
            None => bump(counter::OFFCPU_FULL),
        }
    }
}

/// One software cpu-clock sample on some CPU: counted in the kernel per (process, phase,
/// stacks); userspace reads the counts, not one event per sample. The user stack is unwound
/// from `.eh_frame` tables when the process has them (`unwind`, which counts the sample itself),
/// else taken by frame pointers.
#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read-only lookup of a plain value.
    let Some(&phase) = (unsafe { PROFILE_PHASE.get(&tgid) }) else { return 0 };
    let kernel_stack = ctx.get_stackid(&STACKS, 0).map_or(-1, |id| id as i32);
    crate::unwind::start(&ctx, SampleKey { tgid, phase, user_stack: -1, kernel_stack });
    let user_stack = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK) {
        Ok(id) => id as i32,
        Err(_) => {
            bump(counter::USER_STACK_MISSING);
            -1
        }
    };
    count_sample(&SampleKey { tgid, phase, user_stack, kernel_stack });
    0
}

#[inline(always)]
pub fn count_sample(key: &SampleKey) {
    // Per-CPU values: no atomics needed, userspace sums the CPUs.
    if let Some(n) = SAMPLES.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a map value; nothing else writes it while we run.
        unsafe { *n += 1 };
    } else if SAMPLES.insert(key, &1, BPF_NOEXIST).is_err() {
        match SAMPLES.get_ptr_mut(key) {
            // SAFETY: as above (another CPU created the entry first).
            Some(n) => unsafe { *n += 1 },
            None => bump(counter::SAMPLES_FULL),
        }
    }
}
