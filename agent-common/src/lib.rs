//! Types shared by the eBPF programs (`agent-ebpf`) and the userspace agent.
//!
//! Everything here is `#[repr(C)]` and `no_std`: the kernel side writes these bytes, the userspace
//! side reads them back. The layout is the wire format of the ring buffer, so a change here is a
//! change on both sides at once — which is the point of keeping it in one crate.
#![no_std]

pub mod python;
pub mod tls;
pub mod unwind;

/// Bytes of payload the kernel copies per socket syscall. The parser only needs frame boundaries,
/// so bytes past this limit are reported as a length (`EventHeader::len`) and never copied.
/// Power of two: the eBPF side masks offsets with `MAX_CAPTURE - 1` to satisfy the verifier.
pub const MAX_CAPTURE: usize = 4096;

/// Most iovecs walked per `readv`/`writev`/`sendmsg`/`recvmsg`; later ones are counted as length only.
pub const MAX_IOVECS: u32 = 16;

/// Default ring-buffer size in bytes (power-of-two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

/// Map names, shared so the loader never spells them differently from the programs.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const TARGETS: &str = "TARGETS";
    pub const CONNS: &str = "CONNS";
    pub const SEND_SLOTS: &str = "SEND_SLOTS";
    pub const FD_CONNS: &str = "FD_CONNS";
    pub const ARGS: &str = "ARGS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const STAGE_EVENTS: &str = "STAGE_EVENTS";
    pub const STAGE_STACKS: &str = "STAGE_STACKS";
    pub const PROFILE_PHASE: &str = "PROFILE_PHASE";
    pub const SAMPLES: &str = "SAMPLES";
    pub const STACKS: &str = "STACKS";
    pub const OFFCPU: &str = "OFFCPU";
    pub const OFFCPU_START: &str = "OFFCPU_START";
    pub const PROC_EVENTS: &str = "PROC_EVENTS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const WATCH_COMMS: &str = "WATCH_COMMS";
    pub const LISTEN_PORTS: &str = "LISTEN_PORTS";
    pub const PASSIVE: &str = "PASSIVE";
    pub const CONN_IDS: &str = "CONN_IDS";
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
    pub const UNWIND_MAPPINGS: &str = "UNWIND_MAPPINGS";
    pub const UNWIND_STATE: &str = "UNWIND_STATE";
    pub const UNWIND_PROGS: &str = "UNWIND_PROGS";
    pub const OFFCPU_UNWIND_PROGS: &str = "OFFCPU_UNWIND_PROGS";
    pub const USER_STACKS: &str = "USER_STACKS";
}

/// Names of the `.rodata` globals the loader sets before loading (kernel struct layouts read from
/// the running kernel's BTF, and this architecture's syscall numbers). The programs read them
/// with `read_volatile`, so the verifier sees the loaded values, never a compile-time guess.
pub mod globals {
    /// Offset of `struct sock`'s `__sk_common.skc_num` (local port, host order, u16).
    pub const SK_NUM_OFF: &str = "SK_NUM_OFF";
    /// Offset of `struct sock`'s `sk_protocol` (u16).
    pub const SK_PROTOCOL_OFF: &str = "SK_PROTOCOL_OFF";
    /// A 32-byte window of `struct pt_regs` holding the syscall number and the second and third
    /// arguments (one read), and each one's 8-byte slot in it.
    pub const REGS_WINDOW_OFF: &str = "REGS_WINDOW_OFF";
    pub const REGS_NR_SLOT: &str = "REGS_NR_SLOT";
    pub const REGS_ARG1_SLOT: &str = "REGS_ARG1_SLOT";
    pub const REGS_ARG2_SLOT: &str = "REGS_ARG2_SLOT";
    /// This architecture's numbers of the socket I/O syscalls, packed by [`super::syscall_nr`].
    pub const SYSCALL_NRS: &str = "SYSCALL_NRS";
}

/// Indices into the `SYSCALL_NRS` global (numbers differ per architecture; the loader fills them).
pub mod syscall_nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const READV: usize = 2;
    pub const WRITEV: usize = 3;
    pub const RECVFROM: usize = 4;
    pub const SENDTO: usize = 5;
    pub const RECVMSG: usize = 6;
    pub const SENDMSG: usize = 7;
    pub const COUNT: usize = 8;
}

/// Capacity of the kernel maps (`max_entries`). Each has a counter for inserts it refused.
pub mod limits {
    pub const TARGETS: u32 = 1024;
    pub const CONNS: u32 = 65536;
    pub const ARGS: u32 = 16384;
    /// Threads with a probed call in progress.
    pub const STAGE_STACKS: u32 = 16384;
    /// Distinct (process, phase, user stack, kernel stack) sample keys.
    pub const SAMPLES: u32 = 65536;
    /// Distinct stacks (user and kernel together).
    pub const STACKS: u32 = 32768;
    /// Threads of profiled processes that are off-CPU right now.
    pub const OFFCPU_START: u32 = 16384;
    /// Distinct off-CPU (process, phase, user stack, kernel stack) keys.
    pub const OFFCPU: u32 = 65536;
    /// Bytes of the process lifecycle ring buffer (exec/exit records, daemon mode).
    pub const PROC_EVENTS_BYTES: u32 = 1 << 18;
    /// Exact process names (comm) the daemon follows from the moment of exec.
    pub const WATCH_COMMS: u32 = 256;
    /// Listening TCP ports of followed processes (socket capture: a followed process's socket
    /// whose local port is one of these is a connection it accepted).
    pub const LISTEN_PORTS: u32 = 1024;
    /// Connections established on a followed port since attach, not yet claimed by a read (LRU).
    pub const PASSIVE: u32 = 16384;
    /// Chunks of `unwind::CHUNK_ROWS` unwind rows (2 KiB each) for all files together: 8 MiB,
    /// 1M rows (libc ~20k, libstdc++ ~30k, libpython ~80k).
    pub const UNWIND_CHUNKS: u32 = 4096;
    /// Processes with an unwind mapping table (allocated as used).
    pub const UNWIND_PROCS: u32 = 1024;
    /// Distinct unwound user stacks (1 KiB each, allocated as used).
    pub const USER_STACKS: u32 = 16384;
}

/// Indices of the `SETTINGS` array (userspace switches, all 0 = off).
pub mod setting {
    /// Record off-CPU time of profiled processes (sched_switch).
    pub const OFFCPU: u32 = 0;
    /// Send exec/exit records to `PROC_EVENTS` (process discovery in daemon mode).
    pub const PROC_EVENTS: u32 = 1;
    /// Unwind user stacks from `.eh_frame` tables (`UNWIND_*` maps) instead of frame pointers.
    pub const UNWIND: u32 = 2;
    /// Send each sample of a Python process to `PY_SAMPLES` (sampled Python stages).
    pub const PY_SAMPLES: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// What a ring-buffer record describes. Stable numeric ids: they are the wire format.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Bytes the target read from a tracked connection (`read`, `readv`, `recvfrom`, `recvmsg`).
    Read = 1,
    /// Bytes the target wrote to a tracked connection (`write`, `writev`, `sendto`, `sendmsg`).
    Write = 2,
    /// The target accepted a connection; `len` is unused, `fd` is the new socket.
    Accept = 3,
    /// The target closed a tracked connection (syscall capture: `close(2)`; socket capture: the
    /// TCP state left ESTABLISHED/CLOSE_WAIT on the server's side, or the socket went away).
    Close = 4,
    /// Socket capture: a connection that was open before we attached, first seen now (its first
    /// captured read follows): the parser resynchronises on the next request head.
    Joined = 5,
}

impl EventKind {
    pub fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::Read),
            2 => Some(Self::Write),
            3 => Some(Self::Accept),
            4 => Some(Self::Close),
            5 => Some(Self::Joined),
            _ => None,
        }
    }
}

/// Header of every ring-buffer record; `captured` payload bytes follow it directly (the record
/// may be longer: socket capture reserves records in a few fixed size classes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// CLOCK_MONOTONIC ns (`bpf_ktime_get_ns`). Reads: when the data was in the server's hands
    /// (syscall exit / `sock_recv_length`). Writes: syscall capture: when the server entered the
    /// syscall; socket capture: when the socket layer had taken the bytes (`sock_send_length`).
    pub ts_ns: u64,
    /// Bytes the call moved (its return value); may exceed `captured`.
    pub len: u64,
    /// The connection: socket capture: an id the kernel gave it when it first saw it (never
    /// reused); syscall capture: the file descriptor.
    pub conn: u64,
    pub tgid: u32,
    pub tid: u32,
    /// An [`EventKind`] as u16.
    pub kind: u16,
    /// Payload bytes that follow the header (`<= MAX_CAPTURE`, `<= len`).
    pub captured: u16,
    /// [`event_flag`] bits.
    pub flags: u32,
}

/// Bits of [`EventHeader::flags`].
pub mod event_flag {
    /// The call's buffer could not be located (io_uring, sendfile/splice, a kernel worker: no
    /// syscall registers that describe it): `len` is exact, no bytes were captured.
    pub const NO_PAYLOAD: u32 = 1;
    /// Plaintext handed to or taken from a TLS library (`tls` probes), not socket bytes.
    pub const TLS_PLAINTEXT: u32 = 2;
}

/// What the socket-capture map `CONNS` holds per followed `struct sock *`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Unique id given when the connection was first seen (`EventHeader::conn`).
    pub id: u64,
    /// The followed process that read from it first.
    pub tgid: u32,
    /// Set once a Close record was sent.
    pub closed: u32,
}

/// One slot of the socket-capture map `SEND_SLOTS`: a direct-mapped copy of one followed
/// connection's [`ConnInfo`], so a send on it finds its id with array reads instead of a hash
/// lookup. `check` is `sk ^ id ^ tgid`: a slot written by two claims at once, or read while it is
/// written, fails the check and the send falls back to `CONNS`, never to a wrong connection.
/// `start_ns` is the start of the send in progress on the connection (`tcp_sendmsg_locked`, before
/// the bytes are queued), taken by the send's end (`sock_send_length`), 0 when none is pending.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendSlot {
    pub sk: u64,
    pub id: u64,
    pub tgid: u64,
    pub check: u64,
    pub start_ns: u64,
}

/// Number of slots of `SEND_SLOTS` and of the send filter (a power of two).
pub const SEND_SLOT_COUNT: u32 = 1 << 16;

/// The slot of `struct sock *` `sk` in `SEND_SLOTS` and the send filter (slab objects are
/// aligned, so the low byte carries no information).
#[inline(always)]
pub fn send_slot(sk: u64) -> u32 {
    (((sk >> 8) ^ (sk >> 24)) & (SEND_SLOT_COUNT as u64 - 1)) as u32
}

pub const HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

/// Shape of the user buffer a syscall was given, saved at entry and walked at exit.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufShape {
    /// `buf` points at `count` bytes.
    Flat = 1,
    /// `buf` points at `count` `struct iovec`s.
    Iovec = 2,
    /// `buf` points at a `struct user_msghdr`.
    Msghdr = 3,
}

/// Per-thread state between a syscall's entry and exit tracepoints (map `ARGS`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallArgs {
    pub ts_ns: u64,
    pub buf: u64,
    pub count: u64,
    pub fd: i32,
    pub kind: u16,
    pub shape: u16,
}

/// Indices into the per-CPU `COUNTERS` array. Kernel-side drops cannot be seen from userspace any
/// other way (a ring buffer does not count its own failed reserves), so each has its own slot.
pub mod counter {
    /// Records the ring buffer refused, by `EventKind` (index = kind).
    pub const LOST_READ: u32 = 1;
    pub const LOST_WRITE: u32 = 2;
    pub const LOST_ACCEPT: u32 = 3;
    pub const LOST_CLOSE: u32 = 4;
    /// Syscalls not tracked because `ARGS` was full.
    pub const ARGS_FULL: u32 = 5;
    /// Accepted connections not tracked because `CONNS` was full.
    pub const CONNS_FULL: u32 = 6;
    /// `bpf_probe_read_user` failures (payload not captured; the event still goes out with `captured = 0`).
    pub const READ_FAULT: u32 = 7;
    /// Syscalls whose payload was longer than what was captured.
    pub const TRUNCATED: u32 = 8;
    /// Stage records the ring buffer refused.
    pub const STAGE_LOST: u32 = 9;
    /// Calls nested deeper than `stage::MAX_DEPTH` (timed as part of their caller only).
    pub const STAGE_TOO_DEEP: u32 = 10;
    /// A return with no matching entry (probe attached mid-call, or unwinding skipped returns).
    pub const STAGE_UNMATCHED: u32 = 11;
    /// Threads not followed because `STAGE_STACKS` was full.
    pub const STAGE_STACKS_FULL: u32 = 12;
    /// CPU samples dropped because `SAMPLES` was full.
    pub const SAMPLES_FULL: u32 = 13;
    /// Samples whose user stack could not be collected (or `STACKS` was full).
    pub const USER_STACK_MISSING: u32 = 14;
    /// Off-CPU intervals dropped because `OFFCPU_START` or `OFFCPU` was full.
    pub const OFFCPU_FULL: u32 = 15;
    /// Exec/exit records the `PROC_EVENTS` ring buffer refused (the reconcile scan catches them).
    pub const PROC_LOST: u32 = 16;
    /// Socket capture: socket I/O of followed connections whose buffer could not be located
    /// (io_uring, sendfile, kernel workers): sent as length-only records.
    pub const NO_PAYLOAD: u32 = 17;
    /// Socket capture: connections of followed processes first seen by a read (claimed).
    pub const CLAIMED: u32 = 18;
    /// Socket capture: `LISTEN_PORTS` full when a followed process started listening.
    pub const LISTEN_PORTS_FULL: u32 = 19;
    /// Multi-segment buffers (readv/writev/sendmsg with several iovecs) copied through the
    /// per-CPU scratch area instead of straight into the ring record.
    pub const SCRATCH_COPIES: u32 = 20;
    /// Unwound user stacks not stored because `USER_STACKS` was full.
    pub const USER_STACKS_FULL: u32 = 21;
    pub const COUNT: u32 = 24;

    pub const fn lost_for_kind(kind: u16) -> u32 {
        kind as u32
    }
}

/// Stage latency: uprobe at a function's entry, uretprobe at its return; the attach cookie is the
/// stage id. Each thread keeps a small stack of calls in progress, so nesting and recursion time
/// correctly and the return always pairs with the latest entry.
pub mod stage {
    /// Nesting depth followed per thread (power of two for masking).
    pub const MAX_DEPTH: usize = 16;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StageFrame {
    pub start_ns: u64,
    pub stage: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StageStack {
    /// Calls in progress, including ones deeper than `MAX_DEPTH` that are not stored.
    pub depth: u32,
    pub _pad: u32,
    pub frames: [StageFrame; stage::MAX_DEPTH],
}

/// One finished call of a probed function.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageEvent {
    pub start_ns: u64,
    pub end_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The attach cookie: index of the stage in the agent's stage list.
    pub stage: u32,
    /// Probed calls still open below this one on the thread (0 = outermost).
    pub depth: u32,
}

/// What a sampled process was doing, as far as its streams tell (set by userspace).
pub mod phase {
    pub const IDLE: u32 = 0;
    /// At least one request waits for its first token.
    pub const PREFILL: u32 = 1;
    /// Requests are streaming, none waits for its first token.
    pub const DECODE: u32 = 2;
    pub const NAMES: [&str; 3] = ["idle", "prefill", "decode"];
}

/// Key of the in-kernel CPU sample counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    pub tgid: u32,
    pub phase: u32,
    /// Stack ids in `STACKS`; negative when the stack could not be collected.
    pub user_stack: i32,
    pub kernel_stack: i32,
}

/// Where an off-CPU interval of a thread began (map `OFFCPU_START`, keyed by tid).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffCpuStart {
    pub ts_ns: u64,
    pub key: SampleKey,
}

/// What happened to a process (ring buffer `PROC_EVENTS`).
pub mod proc_event {
    /// A process replaced its image (`execve`): `tgid` runs a new program now.
    pub const EXEC: u32 = 1;
    /// A process's main thread exited.
    pub const EXIT: u32 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    pub ts_ns: u64,
    pub tgid: u32,
    /// A [`proc_event`] constant.
    pub kind: u32,
}

/// Key of `FD_CONNS` (syscall capture): the connection `(tgid, fd)` packed in one u64.
#[inline(always)]
pub const fn conn_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | (fd as u32 as u64)
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding-dependent invariants.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::SyscallArgs {}
    unsafe impl aya::Pod for super::StageEvent {}
    unsafe impl aya::Pod for super::StageStack {}
    unsafe impl aya::Pod for super::StageFrame {}
    unsafe impl aya::Pod for super::SampleKey {}
    unsafe impl aya::Pod for super::OffCpuStart {}
    unsafe impl aya::Pod for super::ProcEvent {}
    unsafe impl aya::Pod for super::ConnInfo {}
    unsafe impl aya::Pod for super::SendSlot {}
    unsafe impl aya::Pod for super::unwind::RowChunk {}
    unsafe impl aya::Pod for super::unwind::ProcMappings {}
    unsafe impl aya::Pod for super::unwind::UserStack {}
    unsafe impl aya::Pod for super::tls::TlsCall {}
    unsafe impl aya::Pod for super::tls::TlsSock {}
    unsafe impl aya::Pod for super::tls::SslKey {}
    unsafe impl aya::Pod for super::tls::TlsPending {}
}
