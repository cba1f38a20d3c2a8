//! Fallback capture on syscall tracepoints, for kernels without the socket tracepoints (before
//! 6.3) or without BTF. It works everywhere, but any `syscalls:*` tracepoint puts every thread of
//! the machine on the syscall slow path while attached: the socket capture is the default.
//!
//! For processes listed in `TARGETS` we track the connections they *accept* (`FD_CONNS`, keyed by
//! `(tgid, fd)`); entry tracepoints save the syscall's buffer per thread (`ARGS`), exit
//! tracepoints know how many bytes really moved and copy just those.

use agent_common::{conn_key, counter, limits, BufShape, EventHeader, EventKind, SyscallArgs, MAX_CAPTURE};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;

use crate::common::{bump, copy_iovecs, copy_segment, is_target, now_ns, output_header, output_scratch, SCRATCH};

#[map]
static FD_CONNS: HashMap<u64, u32> = HashMap::with_max_entries(limits::CONNS, 0);
#[map]
static ARGS: HashMap<u64, SyscallArgs> = HashMap::with_max_entries(limits::ARGS, 0);

// Offsets in the syscall tracepoint records (see /sys/kernel/tracing/events/syscalls/*/format).
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;
// struct user_msghdr (uapi): msg_iov at 16, msg_iovlen at 24.
const MSG_IOV: u64 = 16;
const MSG_IOVLEN: u64 = 24;

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
    if unsafe { FD_CONNS.get(&conn_key(tgid, fd)) }.is_none() {
        return 0;
    }
    let args = SyscallArgs { ts_ns: now_ns(), buf, count, fd, kind: kind as u16, shape: shape as u16 };
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
    // Writes: the moment the server handed the bytes over; reads: when they were in its hands.
    let ts_ns = if args.kind == EventKind::Write as u16 { args.ts_ns } else { now_ns() };
    let header = EventHeader {
        ts_ns,
        len,
        conn: args.fd as u32 as u64,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        kind: args.kind,
        captured: captured as u16,
        flags: 0,
    };
    output_scratch(scratch, header, captured);
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

#[inline(always)]
fn conn_event(kind: EventKind, fd: i32, pid_tgid: u64) {
    output_header(EventHeader {
        ts_ns: now_ns(),
        len: 0,
        conn: fd as u32 as u64,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        kind: kind as u16,
        captured: 0,
        flags: 0,
    });
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
    if FD_CONNS.insert(&conn_key(tgid, fd), &0u32, 0).is_err() {
        bump(counter::CONNS_FULL);
        warn!(ctx, "inferscope: connection map full, pid {} fd {} not tracked", tgid, fd);
        return 0;
    }
    conn_event(EventKind::Accept, fd, pid_tgid);
    0
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
    if unsafe { FD_CONNS.get(&key) }.is_none() {
        return 0;
    }
    let _ = FD_CONNS.remove(&key);
    conn_event(EventKind::Close, fd, pid_tgid);
    0
}
