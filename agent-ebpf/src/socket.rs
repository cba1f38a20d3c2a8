//! Socket-layer capture (the default): raw tracepoints that fire only on socket I/O, so no thread
//! of the machine is put on the syscall slow path and pipe/file I/O never reaches us.
//!
//! - `sock:sock_recv_length` (every socket receive, after the protocol ran: `sk`, bytes, flags):
//!   a followed process's read on a followed connection. A connection is *claimed* by the first
//!   read of a followed process on a TCP socket whose local port is one of its listening ports
//!   (`LISTEN_PORTS`): that is a connection it accepted. Connections established since we
//!   attached are `Accept`ed (the parser expects a request head), older ones `Joined` (it waits
//!   for one).
//! - `sock:sock_send_length` (every socket send, after the protocol took the bytes): a write on a
//!   followed connection, one map lookup for anyone else's. It is stamped at its start, which
//!   `tcp:tcp_sendmsg_locked` (in TCP's send loop, before the bytes are queued) leaves in the
//!   connection's send slot: a loopback send wakes the peer inside the call, and a preemption
//!   there would otherwise delay the stamp by a scheduler slice.
//! - `sock:inet_sock_set_state` (TCP state changes, per connection, not per byte): passive opens
//!   on followed ports, followed processes starting to listen, and the server side closing.
//!
//! Bytes come from the user buffer the syscall was given, located through the task's syscall
//! registers (`bpf_task_pt_regs`): `read`/`write`/`recvfrom`/`sendto` (flat), `readv`/`writev`
//! (iovecs), `recvmsg`/`sendmsg` (msghdr). Flat buffers are copied straight into a ring record
//! of one of a few size classes; several iovecs go through the per-CPU scratch area. I/O whose
//! buffer is not described by syscall registers (io_uring, sendfile, kernel workers) still
//! sends its exact length, flagged `NO_PAYLOAD`, and is counted.
//!
//! Struct offsets come from the running kernel's BTF, set by the loader as globals.

use agent_common::{
    counter, event_flag, limits, send_slot, syscall_nr, ConnInfo, EventHeader, EventKind, SendSlot, MAX_CAPTURE,
    SEND_SLOT_COUNT,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user, generated},
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};

use crate::common::{
    bump, copy_iovecs, is_target, now_ns, output_header, output_scratch, BPF_NOEXIST, BPF_RB_NO_WAKEUP, EVENTS, SCRATCH,
};

/// Followed connections by `struct sock *`. `id == 0` marks a TCP socket of a followed process
/// that is not an accepted connection (an outbound one): remembered so its reads cost one lookup.
#[map]
static CONNS: HashMap<u64, ConnInfo> = HashMap::with_max_entries(limits::CONNS, 0);
/// Listening ports of followed processes → the process that listens.
#[map]
static LISTEN_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(limits::LISTEN_PORTS, 0);
/// Connections established on a followed port since attach, until a read claims them.
#[map]
static PASSIVE: LruHashMap<u64, u64> = LruHashMap::with_max_entries(limits::PASSIVE, 0);
/// A counting filter over `struct sock *` in front of `CONNS` for sends: every TCP send on the
/// machine reaches `sock_send`, and an array slot (inlined by the verifier, no hashing helper) is
/// far cheaper than a hash lookup. Claims add one to the socket's slot, the kernel's removal at
/// `CLOSE` takes it back; entries removed by userspace leave their count (a false positive costs
/// the hash lookup, never a missed send).
#[map]
static SEND_FILTER: Array<u32> = Array::with_max_entries(SEND_SLOT_COUNT, 0);
/// Followed connections, direct-mapped by the same slot: the first claim of a slot caches its
/// connection there, so sends on it need no hash lookup (see [`SendSlot`]). Freed at `CLOSE`
/// and by userspace when it forgets a connection.
#[map]
static SEND_SLOTS: Array<SendSlot> = Array::with_max_entries(SEND_SLOT_COUNT, 0);

#[inline(always)]
fn filter_add(sk: u64, delta: i32) {
    if let Some(p) = SEND_FILTER.get_ptr_mut(send_slot(sk)) {
        // SAFETY: a map value pointer; the atomic add (BPF_ATOMIC) keeps concurrent CPUs exact.
        // The BPF target has no `AtomicU32`, hence the intrinsic; its result is unused, so LLVM
        // emits the plain atomic add every BPF CPU version has.
        unsafe {
            core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(p, delta as u32);
        }
    }
}

/// Caches a claimed connection in its send slot if the slot is free.
#[inline(always)]
fn slot_cache(sk: u64, info: &ConnInfo) {
    let Some(p) = SEND_SLOTS.get_ptr_mut(send_slot(sk)) else { return };
    // SAFETY: a map value pointer. Volatile accesses keep the order of the stores; a race with
    // another claim of the same slot leaves a slot whose check fails (read as empty).
    unsafe {
        if core::ptr::read_volatile(&(*p).sk) != 0 {
            return;
        }
        let tgid = info.tgid as u64;
        core::ptr::write_volatile(&mut (*p).start_ns, 0);
        core::ptr::write_volatile(&mut (*p).sk, sk);
        core::ptr::write_volatile(&mut (*p).id, info.id);
        core::ptr::write_volatile(&mut (*p).tgid, tgid);
        core::ptr::write_volatile(&mut (*p).check, sk ^ info.id ^ tgid);
    }
}

/// The connection cached for `sk`, if its slot holds it (checked).
#[inline(always)]
fn slot_lookup(sk: u64) -> Option<ConnInfo> {
    let p = SEND_SLOTS.get_ptr(send_slot(sk))?;
    // SAFETY: a map value pointer, read field by field; the check rejects a torn read.
    unsafe {
        if core::ptr::read_volatile(&(*p).sk) != sk {
            return None;
        }
        let id = core::ptr::read_volatile(&(*p).id);
        let tgid = core::ptr::read_volatile(&(*p).tgid);
        if core::ptr::read_volatile(&(*p).check) != sk ^ id ^ tgid {
            return None;
        }
        Some(ConnInfo { id, tgid: tgid as u32, closed: 0 })
    }
}

/// Frees `sk`'s send slot if it holds it.
#[inline(always)]
fn slot_free(sk: u64) {
    let Some(p) = SEND_SLOTS.get_ptr_mut(send_slot(sk)) else { return };
    // SAFETY: a map value pointer; the check is broken first so no reader trusts a half-freed slot.
    unsafe {
        if core::ptr::read_volatile(&(*p).sk) == sk {
            core::ptr::write_volatile(&mut (*p).check, 0);
            core::ptr::write_volatile(&mut (*p).sk, 0);
            core::ptr::write_volatile(&mut (*p).start_ns, 0);
        }
    }
}

/// Per-CPU counter for connection ids.
#[map]
static CONN_IDS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// Set by the loader (agent_common::globals). Non-zero initialisers keep them in .rodata.
#[no_mangle]
static SK_NUM_OFF: u32 = u32::MAX;
#[no_mangle]
static SK_PROTOCOL_OFF: u32 = u32::MAX;
/// The syscall number and its second and third arguments lie in one 32-byte window of
/// `struct pt_regs` (checked by the loader), read with one helper call; these are the window's
/// offset and each value's slot in it.
#[no_mangle]
static REGS_WINDOW_OFF: u32 = u32::MAX;
#[no_mangle]
static REGS_NR_SLOT: u32 = u32::MAX;
#[no_mangle]
static REGS_ARG1_SLOT: u32 = u32::MAX;
#[no_mangle]
static REGS_ARG2_SLOT: u32 = u32::MAX;
#[no_mangle]
static SYSCALL_NRS: [u32; syscall_nr::COUNT] = [u32::MAX; syscall_nr::COUNT];

const IPPROTO_TCP: u16 = 6;
const MSG_PEEK: u64 = 2;
const TCP_ESTABLISHED: u64 = 1;
const TCP_SYN_RECV: u64 = 3;
const TCP_FIN_WAIT1: u64 = 4;
const TCP_CLOSE: u64 = 7;
const TCP_LAST_ACK: u64 = 9;
const TCP_LISTEN: u64 = 10;

#[inline(always)]
fn global(v: &u32) -> u64 {
    // SAFETY: a plain read of a global the loader initialised; volatile so it is not folded.
    unsafe { core::ptr::read_volatile(v) as u64 }
}

#[inline(always)]
fn nr(which: usize) -> u64 {
    // SAFETY: as above, an element of a loader-initialised array.
    unsafe { core::ptr::read_volatile(&SYSCALL_NRS[which]) as u64 }
}

#[inline(always)]
fn kernel_u16(addr: u64) -> Option<u16> {
    // SAFETY: fault-tolerant kernel read.
    unsafe { bpf_probe_read_kernel(addr as *const u16) }.ok()
}

#[inline(always)]
fn local_port(sk: u64) -> Option<u16> {
    kernel_u16(sk + global(&SK_NUM_OFF))
}

// ---- connection state ----

#[inline(always)]
fn next_conn_id() -> u64 {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { generated::bpf_get_smp_processor_id() } as u64;
    let Some(n) = CONN_IDS.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot; nothing else on this CPU runs while we do.
    unsafe {
        *n += 1;
        (cpu << 48) | (*n & 0xffff_ffff_ffff)
    }
}

/// First read of a followed process on a socket we do not know yet: is it a connection it
/// accepted? Returns the entry to capture on, if any.
#[inline(always)]
fn claim(sk: u64, pid_tgid: u64) -> Option<ConnInfo> {
    let tgid = (pid_tgid >> 32) as u32;
    if kernel_u16(sk + global(&SK_PROTOCOL_OFF))? != IPPROTO_TCP {
        return None; // UDP, unix, …: never followed, never remembered
    }
    let port = local_port(sk)?;
    // SAFETY: read-only lookups.
    if unsafe { LISTEN_PORTS.get(&port) }.is_none() {
        let outbound = ConnInfo { id: 0, tgid, closed: 0 };
        let _ = CONNS.insert(&sk, &outbound, BPF_NOEXIST);
        return None;
    }
    let fresh = unsafe { PASSIVE.get(&sk) }.is_some();
    if fresh {
        let _ = PASSIVE.remove(&sk);
    }
    let info = ConnInfo { id: next_conn_id(), tgid, closed: 0 };
    if CONNS.insert(&sk, &info, BPF_NOEXIST).is_err() {
        // Another thread claimed it first, or the map is full.
        // SAFETY: read-only lookup, value copied.
        return match unsafe { CONNS.get(&sk) } {
            Some(c) => Some(*c),
            None => {
                bump(counter::CONNS_FULL);
                None
            }
        };
    }
    bump(counter::CLAIMED);
    filter_add(sk, 1);
    slot_cache(sk, &info);
    let kind = if fresh { EventKind::Accept } else { EventKind::Joined };
    output_header(EventHeader {
        ts_ns: now_ns(),
        len: 0,
        conn: info.id,
        tgid,
        tid: pid_tgid as u32,
        kind: kind as u16,
        captured: 0,
        flags: 0,
    });
    Some(info)
}

// ---- payload ----

/// A ring record of one size class: header and room for `N` payload bytes.
#[repr(C)]
struct Record<const N: usize> {
    header: EventHeader,
    data: [u8; N],
}

/// Reserves a record of class `N`, copies `min(want, N)` bytes from user memory straight into it.
#[inline(always)]
pub(crate) fn emit_flat<const N: usize>(mut header: EventHeader, src: u64, want: u64) {
    let Some(mut entry) = EVENTS.reserve::<Record<N>>(0) else {
        bump(counter::lost_for_kind(header.kind));
        return;
    };
    let rec = entry.as_mut_ptr();
    let n = if want < N as u64 { want as u32 } else { N as u32 };
    // SAFETY: `rec` points at a reserved record with room for `N >= n` payload bytes; the
    // helper faults safely on a bad user pointer.
    let ret = unsafe {
        generated::bpf_probe_read_user(core::ptr::addr_of_mut!((*rec).data).cast(), n, src as *const core::ffi::c_void)
    };
    if ret < 0 {
        bump(counter::READ_FAULT);
        header.captured = 0;
    } else {
        header.captured = n as u16;
    }
    if (header.captured as u64) < header.len {
        bump(counter::TRUNCATED);
    }
    // SAFETY: writing the header of our own reservation.
    unsafe { core::ptr::addr_of_mut!((*rec).header).write(header) };
    entry.submit(BPF_RB_NO_WAKEUP);
}

/// Where the bytes of the current socket call are in user memory, from its syscall registers.
enum Buffer {
    Flat(u64, u64),
    Iovecs(u64, u64),
    Unknown,
}

#[inline(always)]
fn locate(kind: EventKind) -> Buffer {
    // SAFETY: the BTF task pointer of the current task, as the helper wants it.
    let regs = unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) } as *const u8;
    if regs.is_null() {
        return Buffer::Unknown;
    }
    // Direct loads from the BTF-typed `struct pt_regs *` the helper returned (the verifier
    // checks them against the kernel's BTF and the JIT makes them fault-safe): the offsets are
    // loader-set read-only globals, so the verifier sees them as constants. No helper call.
    let reg = |slot: &u32| {
        let off = global(&REGS_WINDOW_OFF) + 8 * (global(slot) & 3);
        // SAFETY: see above; `off` lies inside `struct pt_regs` (checked by the loader).
        unsafe { core::ptr::read_volatile(regs.add(off as usize).cast::<u64>()) }
    };
    let (sys, arg1) = (reg(&REGS_NR_SLOT), reg(&REGS_ARG1_SLOT));
    if arg1 == 0 {
        return Buffer::Unknown; // kernel worker threads (io_uring's) have zeroed registers
    }
    let (flat_a, flat_b, vec, msg) = if kind == EventKind::Read {
        (nr(syscall_nr::READ), nr(syscall_nr::RECVFROM), nr(syscall_nr::READV), nr(syscall_nr::RECVMSG))
    } else {
        (nr(syscall_nr::WRITE), nr(syscall_nr::SENDTO), nr(syscall_nr::WRITEV), nr(syscall_nr::SENDMSG))
    };
    if sys == flat_a || sys == flat_b {
        return Buffer::Flat(arg1, u64::MAX);
    }
    let (iov, cnt) = if sys == vec {
        (arg1, reg(&REGS_ARG2_SLOT))
    } else if sys == msg {
        // struct user_msghdr (uapi): msg_iov at 16, msg_iovlen at 24.
        // SAFETY: fault-tolerant user reads.
        match unsafe { bpf_probe_read_user((arg1 + 16) as *const [u64; 2]) } {
            Ok([iov, cnt]) => (iov, cnt),
            Err(_) => return Buffer::Unknown,
        }
    } else {
        return Buffer::Unknown;
    };
    if cnt == 1 {
        // SAFETY: fault-tolerant user read of one `struct iovec`.
        return match unsafe { bpf_probe_read_user(iov as *const [u64; 2]) } {
            Ok([base, len]) => Buffer::Flat(base, len),
            Err(_) => Buffer::Unknown,
        };
    }
    Buffer::Iovecs(iov, cnt)
}

#[inline(always)]
fn capture(kind: EventKind, conn: &ConnInfo, len: u64, ts_ns: u64, pid_tgid: u64) {
    let header = EventHeader {
        ts_ns,
        len,
        conn: conn.id,
        tgid: conn.tgid,
        tid: pid_tgid as u32,
        kind: kind as u16,
        captured: 0,
        flags: 0,
    };
    let want = if len < MAX_CAPTURE as u64 { len } else { MAX_CAPTURE as u64 };
    match locate(kind) {
        Buffer::Flat(src, seg) => {
            let want = if seg < want { seg } else { want };
            if want <= 64 {
                emit_flat::<64>(header, src, want)
            } else if want <= 256 {
                emit_flat::<256>(header, src, want)
            } else if want <= 1024 {
                emit_flat::<1024>(header, src, want)
            } else {
                emit_flat::<MAX_CAPTURE>(header, src, want)
            }
        }
        Buffer::Iovecs(iov, cnt) => {
            bump(counter::SCRATCH_COPIES);
            let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return };
            // SAFETY: per-CPU slot; nothing else on this CPU touches it while we run.
            let scratch = unsafe { &mut *scratch };
            let captured = copy_iovecs(scratch, want as usize, iov, cnt);
            if (captured as u64) < len {
                bump(counter::TRUNCATED);
            }
            output_scratch(scratch, EventHeader { captured: captured as u16, ..header }, captured);
        }
        Buffer::Unknown => {
            bump(counter::NO_PAYLOAD);
            output_header(EventHeader { flags: event_flag::NO_PAYLOAD, ..header });
        }
    }
}

// ---- programs ----

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv(ctx: RawTracePointContext) -> i32 {
    let ret = ctx.arg::<u64>(1) as i32;
    if ret <= 0 || ctx.arg::<u64>(2) & MSG_PEEK != 0 {
        return 0; // nothing moved (EOF, EAGAIN, error) or peeked (will be read again)
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return 0;
    }
    let ts = now_ns();
    let sk = ctx.arg::<u64>(0);
    // SAFETY: read-only lookup, value copied.
    let conn = match unsafe { CONNS.get(&sk) } {
        Some(c) => *c,
        None => match claim(sk, pid_tgid) {
            Some(c) => c,
            None => return 0,
        },
    };
    if conn.id != 0 && !crate::tls::ciphertext(sk, &conn, pid_tgid, ts, true) {
        capture(EventKind::Read, &conn, ret as u64, ts, pid_tgid);
    }
    0
}

/// `tcp_sendmsg_locked(const struct sock *sk, const struct msghdr *msg, const struct sk_buff *skb,
/// int size_goal)`: fires in the TCP send loop before the bytes are queued. For a followed
/// connection cached in its send slot, the first firing of a send stamps its start there; the
/// send's end (`sock_send`) takes it. The end alone is late whenever the send is preempted: on
/// loopback the send delivers to the peer and wakes it inside the call. Anyone else's send: one
/// array read.
#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn sock_send_start(ctx: RawTracePointContext) -> i32 {
    let sk = ctx.arg::<u64>(0);
    let Some(p) = SEND_SLOTS.get_ptr_mut(send_slot(sk)) else { return 0 };
    // SAFETY: a map value pointer. Sends on one socket hold its lock here, so only a send of the
    // same socket whose end has not run yet can race; the end takes whichever start it finds.
    unsafe {
        if core::ptr::read_volatile(&(*p).sk) == sk && core::ptr::read_volatile(&(*p).start_ns) == 0 {
            core::ptr::write_volatile(&mut (*p).start_ns, now_ns());
        }
    }
    0
}

/// Takes the start stamped for `sk`'s send in progress, if its slot holds one.
#[inline(always)]
fn take_send_start(sk: u64) -> u64 {
    let Some(p) = SEND_SLOTS.get_ptr_mut(send_slot(sk)) else { return 0 };
    // SAFETY: a map value pointer, read and cleared field by field.
    unsafe {
        if core::ptr::read_volatile(&(*p).sk) != sk {
            return 0;
        }
        let start = core::ptr::read_volatile(&(*p).start_ns);
        if start != 0 {
            core::ptr::write_volatile(&mut (*p).start_ns, 0);
        }
        start
    }
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send(ctx: RawTracePointContext) -> i32 {
    let sk = ctx.arg::<u64>(0);
    // Taken before the length check, so a failed send leaves no start for the next one.
    let start = take_send_start(sk);
    let ret = ctx.arg::<u64>(1) as i32;
    if ret <= 0 {
        return 0;
    }
    let conn = match slot_lookup(sk) {
        Some(c) => c,
        None => {
            if SEND_FILTER.get(send_slot(sk)).is_none_or(|n| *n == 0) {
                return 0; // not a followed connection: no hash lookup
            }
            // SAFETY: read-only lookup, value copied.
            let Some(conn) = (unsafe { CONNS.get(&sk) }).copied() else { return 0 };
            conn
        }
    };
    if conn.id != 0 {
        // No clock read when the start is known (about 25 ns). A start is never stale: every
        // send that stamps one ends here on the same socket (sock_sendmsg), which takes it.
        let ts = if start != 0 { start } else { now_ns() };
        let pid_tgid = bpf_get_current_pid_tgid();
        if !crate::tls::ciphertext(sk, &conn, pid_tgid, ts, false) {
            capture(EventKind::Write, &conn, ret as u64, ts, pid_tgid);
        }
    }
    0
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn sock_state(ctx: RawTracePointContext) -> i32 {
    let sk = ctx.arg::<u64>(0);
    let old = ctx.arg::<u64>(1) & 0xffff_ffff;
    let new = ctx.arg::<u64>(2) & 0xffff_ffff;
    if new == TCP_ESTABLISHED {
        if old == TCP_SYN_RECV {
            // A passive open (softirq: no process yet). Remember it if it is on a followed port.
            if let Some(port) = local_port(sk) {
                // SAFETY: read-only lookup.
                if unsafe { LISTEN_PORTS.get(&port) }.is_some() {
                    let _ = PASSIVE.insert(&sk, &now_ns(), 0);
                }
            }
        }
    } else if new == TCP_LISTEN {
        // listen(2), in the listening process's context.
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if is_target(tgid) {
            if let Some(port) = local_port(sk) {
                if LISTEN_PORTS.insert(&port, &tgid, 0).is_err() {
                    bump(counter::LISTEN_PORTS_FULL);
                }
            }
        }
    } else if new == TCP_FIN_WAIT1 || new == TCP_LAST_ACK || new == TCP_CLOSE {
        if let Some(c) = CONNS.get_ptr_mut(&sk) {
            // SAFETY: map value pointer; the socket's state changes are serialised by its lock.
            let c = unsafe { &mut *c };
            if c.id != 0 && c.closed == 0 {
                c.closed = 1;
                output_header(EventHeader {
                    ts_ns: now_ns(),
                    len: 0,
                    conn: c.id,
                    tgid: c.tgid,
                    tid: bpf_get_current_pid_tgid() as u32,
                    kind: EventKind::Close as u16,
                    captured: 0,
                    flags: 0,
                });
            }
            if new == TCP_CLOSE {
                if c.id != 0 {
                    filter_add(sk, -1);
                    slot_free(sk);
                    crate::tls::forget_socket(sk);
                }
                let _ = CONNS.remove(&sk);
            }
        } else if new == TCP_CLOSE {
            // SAFETY: read-only lookup.
            if unsafe { PASSIVE.get(&sk) }.is_some() {
                let _ = PASSIVE.remove(&sk);
            }
        }
    }
    0
}
