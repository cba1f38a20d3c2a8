//! TLS plaintext: uprobes on OpenSSL's `SSL_write`/`SSL_write_ex`/`SSL_read`/`SSL_read_ex`
//! (entry and return, the attach cookie says which) and `SSL_free`.
//!
//! - Entry (`ssl_enter`): the thread is "in an SSL call": its `SSL *`, buffer and entry time go
//!   to `TLS_CALLS`.
//! - The socket programs call [`ciphertext`] for every followed socket I/O: it remembers the
//!   thread's last socket (`LAST_SOCK`) and answers whether the bytes are ciphertext to drop —
//!   the socket is known TLS (`TLS_SOCKS`), or the thread is inside an SSL call right now (then
//!   the socket becomes known TLS).
//! - Return (`ssl_exit`): the call's connection is the socket the thread used during the call
//!   (OpenSSL on a socket BIO: Python's `ssl`), else the one the `SSL *` was mapped to before,
//!   else, for a read, the socket the thread read last (memory BIOs: Node reads the socket, then
//!   hands the ciphertext to `SSL_read` on the same thread). The plaintext goes out as a
//!   `Read`/`Write` record of that connection flagged `TLS_PLAINTEXT`, stamped at the hand-over:
//!   a write at `SSL_write`'s entry, a read at `SSL_read`'s return.
//! - A write whose connection is still unknown (Node's opening SETTINGS: its memory BIO does no
//!   socket I/O inside the call, and no plaintext read has mapped the `SSL *` yet) is kept in
//!   `TLS_PENDING` for its thread; the thread's next socket write within
//!   `PENDING_WINDOW_NS` is its ciphertext: that socket is the connection. The `SSL *` is
//!   mapped, the plaintext (read from the caller's buffer, still live in that call chain) sent,
//!   the ciphertext dropped.

use agent_common::{
    event_flag,
    tls::{call, counter, limits, SslKey, TlsCall, TlsPending, TlsSock, PENDING_WINDOW_NS, STATE_ENABLED},
    ConnInfo, EventHeader, EventKind, MAX_CAPTURE,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated},
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext as _,
};

use crate::common::{is_target, now_ns};
use crate::socket::emit_flat;

#[map]
static TLS_CALLS: HashMap<u64, TlsCall> = HashMap::with_max_entries(limits::TLS_CALLS, 0);
#[map]
static SSL_CONNS: LruHashMap<SslKey, TlsSock> = LruHashMap::with_max_entries(limits::SSL_CONNS, 0);
/// Sockets that carry TLS → their connection id.
#[map]
static TLS_SOCKS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(limits::TLS_SOCKS, 0);
#[map]
static LAST_SOCK: LruHashMap<u64, TlsSock> = LruHashMap::with_max_entries(limits::LAST_SOCK, 0);
#[map]
static TLS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
#[map]
static TLS_STATE: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static TLS_PENDING: HashMap<u64, TlsPending> = HashMap::with_max_entries(limits::TLS_PENDING, 0);

#[inline(always)]
fn bump(idx: u32) {
    if let Some(p) = TLS_COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *p += 1 };
    }
}

/// Called by the socket programs for a followed connection's I/O: true when the bytes are
/// ciphertext (dropped, counted). The thread's last socket is remembered for reads (a memory BIO
/// reads the socket before `SSL_read`) and for I/O inside an SSL call (a socket BIO); a cleartext
/// write outside any SSL call, the common case of a server that maps libssl but serves plain
/// HTTP, costs two lookups and no map update.
#[inline(always)]
pub fn ciphertext(sk: u64, conn: &ConnInfo, pid_tgid: u64, ts_ns: u64, is_read: bool) -> bool {
    if TLS_STATE.get(STATE_ENABLED).is_none_or(|on| *on == 0) {
        return false;
    }
    // SAFETY: read-only lookup, value not kept.
    let in_call = unsafe { TLS_CALLS.get(&pid_tgid) }.is_some();
    if is_read || in_call {
        let sock = TlsSock { sk, id: conn.id, ts_ns, tgid: conn.tgid, _pad: 0 };
        let _ = LAST_SOCK.insert(&pid_tgid, &sock, 0);
    }
    // SAFETY: read-only lookup, value not kept.
    if unsafe { TLS_SOCKS.get(&sk) }.is_some() {
        bump(counter::CIPHERTEXT_DROPPED);
        return true;
    }
    if in_call {
        let _ = TLS_SOCKS.insert(&sk, &conn.id, 0);
        bump(counter::CIPHERTEXT_DROPPED);
        return true;
    }
    if !is_read {
        if let Some(p) = TLS_PENDING.get_ptr(&pid_tgid) {
            // SAFETY: map value pointer, copied.
            let pending = unsafe { *p };
            let _ = TLS_PENDING.remove(&pid_tgid);
            if ts_ns >= pending.exit_ns && ts_ns - pending.exit_ns <= PENDING_WINDOW_NS {
                return link_pending(sk, conn, pid_tgid, &pending);
            }
        }
    }
    false
}

/// The thread's socket write right after an unmapped `SSL_write`: its ciphertext. Maps the
/// `SSL *` to this socket, sends the call's plaintext, drops the ciphertext.
#[inline(always)]
fn link_pending(sk: u64, conn: &ConnInfo, pid_tgid: u64, p: &TlsPending) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    let sock = TlsSock { sk, id: conn.id, ts_ns: p.exit_ns, tgid, _pad: 0 };
    let _ = SSL_CONNS.insert(&SslKey { ssl: p.ssl, tgid: tgid as u64 }, &sock, 0);
    let _ = TLS_SOCKS.insert(&sk, &conn.id, 0);
    bump(counter::LINKED);
    bump(counter::PLAINTEXT);
    let header = EventHeader {
        ts_ns: p.ts_ns,
        len: p.len,
        conn: conn.id,
        tgid,
        tid: pid_tgid as u32,
        kind: EventKind::Write as u16,
        captured: 0,
        flags: event_flag::TLS_PLAINTEXT,
    };
    // One size class: this happens once per connection at most.
    emit_flat::<MAX_CAPTURE>(header, p.buf, p.len);
    bump(counter::CIPHERTEXT_DROPPED);
    true
}

/// The socket closed for good: a later socket at the same address is a new connection.
#[inline(always)]
pub fn forget_socket(sk: u64) {
    // SAFETY: read-only lookup.
    if unsafe { TLS_SOCKS.get(&sk) }.is_some() {
        let _ = TLS_SOCKS.remove(&sk);
    }
}

#[uprobe]
pub fn ssl_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target((pid_tgid >> 32) as u32) {
        return 0;
    }
    // SAFETY: the context pointer comes from the kernel.
    let kind = unsafe { generated::bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let c = TlsCall {
        ts_ns: now_ns(),
        ssl: ctx.arg::<u64>(0).unwrap_or(0),
        buf: ctx.arg::<u64>(1).unwrap_or(0),
        count_out: if call::is_ex(kind) { ctx.arg::<u64>(3).unwrap_or(0) } else { 0 },
        kind,
        _pad: 0,
    };
    if TLS_CALLS.insert(&pid_tgid, &c, 0).is_err() {
        bump(counter::CALLS_FULL);
    }
    0
}

#[uretprobe]
pub fn ssl_exit(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: read-only lookup, value copied.
    let Some(c) = (unsafe { TLS_CALLS.get(&pid_tgid) }).copied() else { return 0 };
    let _ = TLS_CALLS.remove(&pid_tgid);
    let ret = ctx.ret::<u64>() as i32;
    if ret <= 0 {
        return 0; // nothing moved (WANT_READ/WANT_WRITE, EOF, error)
    }
    let moved = if call::is_ex(c.kind) {
        // SAFETY: fault-tolerant user read of the `size_t *` the caller passed.
        match unsafe { bpf_probe_read_user(c.count_out as *const u64) } {
            Ok(n) => n,
            Err(_) => return 0,
        }
    } else {
        ret as u64
    };
    if moved == 0 {
        return 0;
    }
    let is_read = call::is_read(c.kind);
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey { ssl: c.ssl, tgid: tgid as u64 };
    // A zero-initialised value filled from map pointers (an `Option` of a struct copied out of
    // a map leaves registers the verifier rejects as unread on the `None` path).
    let mut sock = TlsSock::default();
    let mut found = false;
    let last = LAST_SOCK.get_ptr(&pid_tgid);
    if let Some(p) = last {
        // SAFETY: map value pointer, copied.
        let s = unsafe { *p };
        if s.ts_ns >= c.ts_ns && s.tgid == tgid {
            // The thread moved bytes on a followed socket during this very call.
            sock = s;
            found = true;
            let _ = SSL_CONNS.insert(&key, &sock, 0);
        }
    }
    if !found {
        if let Some(p) = SSL_CONNS.get_ptr(&key) {
            // SAFETY: map value pointer, copied.
            let s = unsafe { *p };
            // Still the same live connection (its socket is still known TLS with that id).
            // SAFETY: read-only lookup.
            if unsafe { TLS_SOCKS.get(&s.sk) }.is_some_and(|id| *id == s.id) {
                sock = s;
                found = true;
            }
        }
    }
    if !found && is_read {
        if let Some(p) = last {
            // SAFETY: map value pointer, copied.
            let s = unsafe { *p };
            if s.tgid == tgid {
                sock = s;
                found = true;
                let _ = SSL_CONNS.insert(&key, &sock, 0);
                let _ = TLS_SOCKS.insert(&sock.sk, &sock.id, 0);
            }
        }
    }
    if !found {
        if is_read {
            bump(counter::UNMAPPED);
        } else {
            let p = TlsPending { ts_ns: c.ts_ns, exit_ns: now_ns(), ssl: c.ssl, buf: c.buf, len: moved };
            if TLS_PENDING.insert(&pid_tgid, &p, 0).is_ok() {
                bump(counter::DEFERRED);
            } else {
                bump(counter::PENDING_FULL);
                bump(counter::UNMAPPED);
            }
        }
        return 0;
    }
    bump(counter::PLAINTEXT);
    let header = EventHeader {
        ts_ns: if is_read { now_ns() } else { c.ts_ns },
        len: moved,
        conn: sock.id,
        tgid,
        tid: pid_tgid as u32,
        kind: if is_read { EventKind::Read as u16 } else { EventKind::Write as u16 },
        captured: 0,
        flags: event_flag::TLS_PLAINTEXT,
    };
    let want = if moved < MAX_CAPTURE as u64 { moved } else { MAX_CAPTURE as u64 };
    if want <= 64 {
        emit_flat::<64>(header, c.buf, want)
    } else if want <= 256 {
        emit_flat::<256>(header, c.buf, want)
    } else if want <= 1024 {
        emit_flat::<1024>(header, c.buf, want)
    } else {
        emit_flat::<MAX_CAPTURE>(header, c.buf, want)
    }
    0
}

#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = SslKey { ssl: ctx.arg::<u64>(0).unwrap_or(0), tgid: pid_tgid >> 32 };
    // SAFETY: read-only lookup.
    if unsafe { SSL_CONNS.get(&key) }.is_some() {
        let _ = SSL_CONNS.remove(&key);
    }
    0
}
