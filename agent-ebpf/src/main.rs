//! Kernel side of inferscope's stream timing.
//!
//! Syscall tracepoints only (this must run where kprobes are absent). For processes listed in
//! `TARGETS` we track the connections they *accept* (`CONNS`, keyed by `(tgid, fd)`), and for
//! every read/write on such a connection emit one ring-buffer record: a fixed header plus at most
//! `MAX_CAPTURE` payload bytes. Everything else — HTTP, chunking, SSE — is parsed in userspace.
//!
//! Entry tracepoints save the syscall's buffer description per thread (`ARGS`); exit tracepoints
//! know how many bytes really moved and copy just those.
#![no_std]
#![no_main]

use agent_common::{
    conn_key, counter, limits, proc_event, setting, stage, BufShape, EventHeader, EventKind, OffCpuStart, ProcEvent,
    SampleKey, StageEvent, StageFrame, StageStack, SyscallArgs, DEFAULT_RING_BYTES, HEADER_LEN, MAX_CAPTURE,
    MAX_IOVECS,
};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::{map, perf_event, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
    programs::{tracing::StackIdContext as _, PerfEventContext, ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext as _,
};
use aya_log_ebpf::warn;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(limits::TARGETS, 0);
#[map]
static CONNS: HashMap<u64, u32> = HashMap::with_max_entries(limits::CONNS, 0);
#[map]
static ARGS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(limits::ARGS, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU staging area: header followed by payload. Twice `MAX_CAPTURE` of payload room so the
/// verifier can prove `offset (< MAX_CAPTURE) + length (<= MAX_CAPTURE)` stays inside it.
#[repr(C, align(8))]
struct Scratch {
    buf: [u8; HEADER_LEN + 2 * MAX_CAPTURE],
}
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

// Offsets in the syscall tracepoint records (see /sys/kernel/tracing/events/syscalls/*/format).
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;
const BPF_RB_NO_WAKEUP: u64 = 1;
// struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
const MSG_IOV: u64 = 16;
const MSG_IOVLEN: u64 = 24;

#[inline(always)]
fn bump(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn is_target(tgid: u32) -> bool {
    // SAFETY: read-only lookup of a plain u32 value.
    unsafe { TARGETS.get(&tgid) }.is_some()
}

// ---- entry: remember the buffer of syscalls on tracked connections ----

#[inline(always)]
fn save_args(ctx: &TracePointContext, kind: EventKind, shape: BufShape) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return 0;
    }
    // SAFETY: offsets come from the tracepoint format; reads are bounds-checked by the helper.
    let (fd, buf, count) = unsafe {
        match (ctx.read_at::<u64>(ARG0), ctx.read_at::<u64>(ARG1), ctx.read_at::<u64>(ARG2)) {
            (Ok(fd), Ok(buf), Ok(count)) => (fd as i32, buf, count),
            _ => return 0,
        }
    };
    // SAFETY: read-only lookup.
    if unsafe { CONNS.get(&conn_key(tgid, fd)) }.is_none() {
        return 0;
    }
    let args =
        SyscallArgs { ts_ns: unsafe { bpf_ktime_get_ns() }, buf, count, fd, kind: kind as u16, shape: shape as u16 };
    if ARGS.insert(&pid_tgid, &args, 0).is_err() {
        bump(counter::ARGS_FULL);
    }
    0
}

macro_rules! enter_program {
    ($name:ident, $kind:expr, $shape:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            save_args(&ctx, $kind, $shape)
        }
    };
}

enter_program!(enter_read, EventKind::Read, BufShape::Flat);
enter_program!(enter_recvfrom, EventKind::Read, BufShape::Flat);
enter_program!(enter_readv, EventKind::Read, BufShape::Iovec);
enter_program!(enter_recvmsg, EventKind::Read, BufShape::Msghdr);
enter_program!(enter_write, EventKind::Write, BufShape::Flat);
enter_program!(enter_sendto, EventKind::Write, BufShape::Flat);
enter_program!(enter_writev, EventKind::Write, BufShape::Iovec);
enter_program!(enter_sendmsg, EventKind::Write, BufShape::Msghdr);

// ---- exit: copy what really moved and emit one record ----

/// Copies up to `want - off` bytes from `src` to the scratch payload at `off`; returns bytes copied.
#[inline(always)]
fn copy_segment(scratch: &mut Scratch, off: usize, want: usize, src: u64, avail: u64) -> usize {
    if off >= want || off >= MAX_CAPTURE {
        return 0;
    }
    let mut n = want - off;
    if (avail as usize) < n {
        n = avail as usize;
    }
    if n > MAX_CAPTURE {
        n = MAX_CAPTURE;
    }
    if n == 0 {
        return 0;
    }
    let at = HEADER_LEN + (off & (MAX_CAPTURE - 1));
    // SAFETY: `at < HEADER_LEN + MAX_CAPTURE` and `n <= MAX_CAPTURE`, so the write stays inside
    // `Scratch::buf`; the helper faults safely on a bad user pointer.
    let ret = unsafe {
        generated::bpf_probe_read_user(
            scratch.buf.as_mut_ptr().add(at).cast(),
            n as u32,
            src as *const core::ffi::c_void,
        )
    };
    if ret < 0 {
        bump(counter::READ_FAULT);
        return 0;
    }
    n
}

#[inline(always)]
fn copy_iovecs(scratch: &mut Scratch, want: usize, iov: u64, iovcnt: u64) -> usize {
    let mut off = 0usize;
    let mut i = 0u32;
    while i < MAX_IOVECS {
        if (i as u64) >= iovcnt || off >= want {
            break;
        }
        // SAFETY: user pointer read through the fault-tolerant helper.
        let seg = unsafe { bpf_probe_read_user((iov + (i as u64) * 16) as *const [u64; 2]) };
        let Ok([base, len]) = seg else {
            bump(counter::READ_FAULT);
            break;
        };
        let n = copy_segment(&mut *scratch, off, want, base, len);
        if n == 0 && len != 0 {
            break;
        }
        off += n;
        i += 1;
    }
    off
}

#[inline(always)]
fn emit_data(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: value copied out before the entry is removed.
    let args = match unsafe { ARGS.get(&pid_tgid) } {
        Some(a) => *a,
        None => return 0,
    };
    let _ = ARGS.remove(&pid_tgid);
    // SAFETY: offset from the tracepoint format.
    let ret = match unsafe { ctx.read_at::<i64>(RET) } {
        Ok(r) => r,
        Err(_) => return 0,
    };
    if ret <= 0 {
        return 0; // error, EAGAIN or EOF: nothing moved
    }
    let len = ret as u64;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot; nothing else on this CPU touches it while we run.
    let scratch = unsafe { &mut *scratch };
    let want = if len < MAX_CAPTURE as u64 { len as usize } else { MAX_CAPTURE };
    let captured = if args.shape == BufShape::Flat as u16 {
        copy_segment(&mut *scratch, 0, want, args.buf, len)
    } else if args.shape == BufShape::Iovec as u16 {
        copy_iovecs(&mut *scratch, want, args.buf, args.count)
    } else {
        // SAFETY: user pointers read through the fault-tolerant helper.
        let iov = unsafe { bpf_probe_read_user((args.buf + MSG_IOV) as *const u64) };
        let cnt = unsafe { bpf_probe_read_user((args.buf + MSG_IOVLEN) as *const u64) };
        match (iov, cnt) {
            (Ok(iov), Ok(cnt)) => copy_iovecs(&mut *scratch, want, iov, cnt),
            _ => {
                bump(counter::READ_FAULT);
                0
            }
        }
    };
    if (captured as u64) < len {
        bump(counter::TRUNCATED);
    }
    let ts_ns = if args.kind == EventKind::Write as u16 {
        args.ts_ns // the moment the server handed the bytes over
    } else {
        // SAFETY: helper without preconditions.
        unsafe { bpf_ktime_get_ns() } // the moment the data was in the server's hands
    };
    let header = EventHeader {
        ts_ns,
        len,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd: args.fd,
        kind: args.kind,
        captured: captured as u16,
    };
    output(scratch, header, captured)
}

#[inline(always)]
fn output(scratch: &mut Scratch, header: EventHeader, captured: usize) -> u32 {
    let kind = header.kind;
    // SAFETY: the scratch slot is 8-aligned and starts with room for the header.
    unsafe { core::ptr::write(scratch.buf.as_mut_ptr().cast::<EventHeader>(), header) };
    let total = HEADER_LEN + captured;
    if total > HEADER_LEN + MAX_CAPTURE {
        return 0;
    }
    let bytes = &scratch.buf[..total];
    // No wakeup: userspace polls on a timer, so a busy stream costs no wakeup per record.
    if EVENTS.output::<[u8]>(bytes, BPF_RB_NO_WAKEUP).is_err() {
        bump(counter::lost_for_kind(kind));
    }
    0
}

macro_rules! exit_program {
    ($name:ident) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            emit_data(&ctx)
        }
    };
}

exit_program!(exit_read);
exit_program!(exit_recvfrom);
exit_program!(exit_readv);
exit_program!(exit_recvmsg);
exit_program!(exit_write);
exit_program!(exit_sendto);
exit_program!(exit_writev);
exit_program!(exit_sendmsg);

// ---- connection lifecycle ----

#[inline(always)]
fn conn_event(ctx: &TracePointContext, kind: EventKind, fd: i32, tgid: u32, tid: u32) -> u32 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot; nothing else on this CPU touches it while we run.
    let scratch = unsafe { &mut *scratch };
    let header = EventHeader {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        len: 0,
        tgid,
        tid,
        fd,
        kind: kind as u16,
        captured: 0,
    };
    let _ = ctx;
    output(scratch, header, 0)
}

#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return 0;
    }
    // SAFETY: offset from the tracepoint format.
    let fd = match unsafe { ctx.read_at::<i64>(RET) } {
        Ok(fd) if fd >= 0 => fd as i32,
        _ => return 0,
    };
    if CONNS.insert(&conn_key(tgid, fd), &0u32, 0).is_err() {
        bump(counter::CONNS_FULL);
        warn!(ctx, "inferscope: connection map full, pid {} fd {} not tracked", tgid, fd);
        return 0;
    }
    conn_event(ctx, EventKind::Accept, fd, tgid, pid_tgid as u32)
}

#[tracepoint]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx)
}

#[tracepoint]
pub fn exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx)
}

#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_target(tgid) {
        return 0;
    }
    // SAFETY: offset from the tracepoint format.
    let fd = match unsafe { ctx.read_at::<u64>(ARG0) } {
        Ok(fd) => fd as i32,
        Err(_) => return 0,
    };
    let key = conn_key(tgid, fd);
    // SAFETY: read-only lookup.
    if unsafe { CONNS.get(&key) }.is_none() {
        return 0;
    }
    let _ = CONNS.remove(&key);
    conn_event(&ctx, EventKind::Close, fd, tgid, pid_tgid as u32)
}

// ---- stage latency (uprobes) ----

#[map]
static STAGE_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
#[map]
static STAGE_STACKS: HashMap<u32, StageStack> = HashMap::with_max_entries(limits::STAGE_STACKS, 0);
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

// ---- process lifecycle (daemon discovery) ----

#[map]
static SETTINGS: Array<u32> = Array::with_max_entries(setting::COUNT, 0);
#[map]
static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(limits::PROC_EVENTS_BYTES, 0);

#[inline(always)]
fn enabled(which: u32) -> bool {
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

// ---- CPU sampling ----

#[map]
static PROFILE_PHASE: HashMap<u32, u32> = HashMap::with_max_entries(limits::TARGETS, 0);
#[map]
static SAMPLES: PerCpuHashMap<SampleKey, u64> = PerCpuHashMap::with_max_entries(limits::SAMPLES, 0);
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(limits::STACKS, 0);

#[map]
static OFFCPU_START: HashMap<u32, OffCpuStart> = HashMap::with_max_entries(limits::OFFCPU_START, 0);
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
    // `prev` is the current task.
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: tracepoint record reads at offsets from its format file.
    let prev_state: i64 = unsafe { ctx.read_at(SWITCH_PREV_STATE) }.unwrap_or(0);
    if tid != 0 && prev_state != 0 {
        // SAFETY: read-only lookup of a plain value.
        if let Some(&phase) = unsafe { PROFILE_PHASE.get(&tgid) } {
            let user_stack = ctx.get_stackid(&STACKS, BPF_F_USER_STACK).map_or(-1, |id| id as i32);
            let kernel_stack = ctx.get_stackid(&STACKS, 0).map_or(-1, |id| id as i32);
            let start = OffCpuStart { ts_ns: now, key: SampleKey { tgid, phase, user_stack, kernel_stack } };
            if OFFCPU_START.insert(&tid, &start, 0).is_err() {
                bump(counter::OFFCPU_FULL);
            }
        }
    }
    let next: u32 = unsafe { ctx.read_at::<i32>(SWITCH_NEXT_PID) }.unwrap_or(0) as u32;
    // SAFETY: copied out before the entry is removed.
    let Some(start) = (unsafe { OFFCPU_START.get(&next) }).copied() else { return 0 };
    let _ = OFFCPU_START.remove(&next);
    let away = now.saturating_sub(start.ts_ns);
    if let Some(total) = OFFCPU.get_ptr_mut(&start.key) {
        // SAFETY: this CPU's slot of a map value.
        unsafe { *total += away };
    } else if OFFCPU.insert(&start.key, &away, BPF_NOEXIST).is_err() {
        match OFFCPU.get_ptr_mut(&start.key) {
            // SAFETY: as above.
            Some(total) => unsafe { *total += away },
            None => bump(counter::OFFCPU_FULL),
        }
    }
    0
}
const BPF_NOEXIST: u64 = 1;

/// One software cpu-clock sample on some CPU: counted in the kernel per (process, phase,
/// stacks); userspace reads the counts, not one event per sample.
#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read-only lookup of a plain value.
    let Some(&phase) = (unsafe { PROFILE_PHASE.get(&tgid) }) else { return 0 };
    let user_stack = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK) {
        Ok(id) => id as i32,
        Err(_) => {
            bump(counter::USER_STACK_MISSING);
            -1
        }
    };
    let kernel_stack = ctx.get_stackid(&STACKS, 0).map_or(-1, |id| id as i32);
    let key = SampleKey { tgid, phase, user_stack, kernel_stack };
    // Per-CPU values: no atomics needed, userspace sums the CPUs.
    if let Some(n) = SAMPLES.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of a map value; nothing else writes it while we run.
        unsafe { *n += 1 };
    } else if SAMPLES.insert(&key, &1, BPF_NOEXIST).is_err() {
        match SAMPLES.get_ptr_mut(&key) {
            // SAFETY: as above (another CPU created the entry first).
            Some(n) => unsafe { *n += 1 },
            None => bump(counter::SAMPLES_FULL),
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF has no unwinding; every panic path must be proven dead for the verifier anyway.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
