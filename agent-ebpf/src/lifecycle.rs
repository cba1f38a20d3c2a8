//! Process lifecycle: thread exits clean per-thread state; in daemon mode, exec and exit records
//! drive discovery, and processes exec'ing under a watched name are followed from that instant.

use agent_common::{counter, limits, proc_event, setting, ProcEvent};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{Array, HashMap, RingBuf},
    programs::TracePointContext,
};

use crate::common::{bump, is_target, TARGETS};
use crate::sampling::OFFCPU_START;
use crate::stages::STAGE_STACKS;

/// A thread that exits mid-call must leave nothing behind; a target's main thread exiting is
/// reported to the daemon.
#[tracepoint]
pub fn sched_exit(ctx: TracePointContext) -> u32 {
    let _ = ctx;
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: read-only lookups.
    if unsafe { STAGE_STACKS.get(&tid) }.is_some() {
        let _ = STAGE_STACKS.remove(&tid);
    }
    if unsafe { OFFCPU_START.get(&tid) }.is_some() {
        let _ = OFFCPU_START.remove(&tid);
    }
    if tid == tgid && enabled(setting::PROC_EVENTS) && is_target(tgid) {
        proc_record(tgid, proc_event::EXIT);
    }
    0
}

#[map]
pub static SETTINGS: Array<u32> = Array::with_max_entries(setting::COUNT, 0);
#[map]
static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(limits::PROC_EVENTS_BYTES, 0);

#[inline(always)]
pub fn enabled(which: u32) -> bool {
    SETTINGS.get(which).is_some_and(|v| *v != 0)
}

#[inline(always)]
fn proc_record(tgid: u32, kind: u32) {
    let ev = ProcEvent { ts_ns: unsafe { bpf_ktime_get_ns() }, tgid, kind };
    // Wake the reader: these are rare and the daemon acts on them.
    if PROC_EVENTS.output::<ProcEvent>(&ev, 0).is_err() {
        bump(counter::PROC_LOST);
    }
}

#[map]
static WATCH_COMMS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(limits::WATCH_COMMS, 0);

/// Every exec on the machine (they are rare): the daemon matches the new image against its rules.
/// A process whose new name is one a rule names exactly is followed from this instant (its
/// first accept and first probed call count); the daemon confirms or drops it when it reads the
/// record.
#[tracepoint]
pub fn proc_exec(ctx: TracePointContext) -> u32 {
    let _ = ctx;
    if !enabled(setting::PROC_EVENTS) {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Ok(comm) = bpf_get_current_comm() {
        // SAFETY: read-only lookup.
        if unsafe { WATCH_COMMS.get(&comm) }.is_some() && TARGETS.insert(&tgid, &1, 0).is_err() {
            bump(counter::PROC_LOST);
        }
    }
    proc_record(tgid, proc_event::EXEC);
    0
}
