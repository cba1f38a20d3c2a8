//! TLS plaintext capture: OpenSSL's `SSL_write`/`SSL_write_ex`/`SSL_read`/`SSL_read_ex` probed at
//! entry and return (one program pair, the attach cookie says which function), `SSL_free` at
//! entry. The kernel side maps each `SSL *` to the followed connection whose socket the same
//! thread used, sends the plaintext as ordinary `Read`/`Write` records flagged
//! [`crate::event_flag::TLS_PLAINTEXT`], and drops that socket's ciphertext from then on.

/// Attach cookies of `ssl_enter`/`ssl_exit`: which function a probe sits on.
pub mod call {
    pub const WRITE: u32 = 0;
    pub const WRITE_EX: u32 = 1;
    pub const READ: u32 = 2;
    pub const READ_EX: u32 = 3;

    pub const fn is_read(kind: u32) -> bool {
        kind == READ || kind == READ_EX
    }

    /// The `_ex` variants return 1 and store the byte count through their fourth argument.
    pub const fn is_ex(kind: u32) -> bool {
        kind == WRITE_EX || kind == READ_EX
    }
}

/// The probed functions and their cookies.
pub const SYMBOLS: [(&str, u32); 4] = [
    ("SSL_write", call::WRITE),
    ("SSL_write_ex", call::WRITE_EX),
    ("SSL_read", call::READ),
    ("SSL_read_ex", call::READ_EX),
];
/// Probed at entry to forget an `SSL *` (its address is reused by the allocator).
pub const FREE_SYMBOL: &str = "SSL_free";

/// Map names.
pub mod maps {
    pub const TLS_CALLS: &str = "TLS_CALLS";
    pub const SSL_CONNS: &str = "SSL_CONNS";
    pub const TLS_SOCKS: &str = "TLS_SOCKS";
    pub const LAST_SOCK: &str = "LAST_SOCK";
    pub const TLS_COUNTERS: &str = "TLS_COUNTERS";
    pub const TLS_STATE: &str = "TLS_STATE";
    pub const TLS_PENDING: &str = "TLS_PENDING";
}

/// Capacities. Every map is bounded; `TLS_CALLS` counts refused inserts, the LRU maps evict.
pub mod limits {
    /// Threads inside an SSL call right now.
    pub const TLS_CALLS: u32 = 16384;
    /// `SSL *` → connection (LRU; `SSL_free` removes).
    pub const SSL_CONNS: u32 = 65536;
    /// Sockets known to carry TLS: their ciphertext is dropped (LRU; TCP close removes).
    pub const TLS_SOCKS: u32 = 65536;
    /// Per thread: the followed socket it last read or wrote (LRU).
    pub const LAST_SOCK: u32 = 16384;
    /// Per thread: an `SSL_write` whose connection was not known yet, waiting for the thread's
    /// next socket write (refused inserts counted in `PENDING_FULL`).
    pub const TLS_PENDING: u32 = 4096;
}

/// How long after an unmapped `SSL_write` returned the same thread's socket write may come and
/// still be its ciphertext (Node writes it out right after the call returns: microseconds).
pub const PENDING_WINDOW_NS: u64 = 1_000_000;

/// Indices of the per-CPU `TLS_COUNTERS` array.
pub mod counter {
    /// Plaintext records sent (reads and writes).
    pub const PLAINTEXT: u32 = 0;
    /// Socket reads/writes of known-TLS sockets dropped in the kernel (their ciphertext).
    pub const CIPHERTEXT_DROPPED: u32 = 1;
    /// SSL calls that moved bytes on a connection we could not tell (not sent).
    pub const UNMAPPED: u32 = 2;
    /// SSL calls not followed because `TLS_CALLS` was full.
    pub const CALLS_FULL: u32 = 3;
    /// Unmapped `SSL_write`s kept waiting for the thread's next socket write (memory BIO).
    pub const DEFERRED: u32 = 4;
    /// Of those, linked to the socket the thread wrote next and sent (the rest are lost:
    /// userspace reports `DEFERRED - LINKED` as unmapped).
    pub const LINKED: u32 = 5;
    /// Unmapped `SSL_write`s not kept because `TLS_PENDING` was full (counted unmapped too).
    pub const PENDING_FULL: u32 = 6;
    pub const COUNT: u32 = 8;
}

/// Slot 0 of `TLS_STATE`: non-zero once userspace attached TLS probes (until then the socket
/// programs skip the TLS bookkeeping entirely).
pub const STATE_ENABLED: u32 = 0;

/// A thread's SSL call in progress (`TLS_CALLS`, keyed by pid_tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCall {
    /// Entry time (a write's plaintext hand-over).
    pub ts_ns: u64,
    pub ssl: u64,
    pub buf: u64,
    /// `_ex` variants: where the byte count is stored.
    pub count_out: u64,
    /// A [`call`] constant.
    pub kind: u32,
    pub _pad: u32,
}

/// An `SSL_write` whose connection was not known when it returned (`TLS_PENDING`, keyed by
/// pid_tgid): Node's memory BIO encrypts in the call and writes the ciphertext to the socket
/// right after, so the thread's next socket write tells the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsPending {
    /// `SSL_write`'s entry (the plaintext hand-over, the record's stamp).
    pub ts_ns: u64,
    /// Its return: the socket write must follow within [`PENDING_WINDOW_NS`].
    pub exit_ns: u64,
    pub ssl: u64,
    /// The caller's plaintext buffer (still the caller's: the ciphertext write follows in the
    /// same synchronous call chain) and the bytes written.
    pub buf: u64,
    pub len: u64,
}

/// A followed socket as the TLS side remembers it (`LAST_SOCK`, `SSL_CONNS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsSock {
    pub sk: u64,
    /// The connection id (`EventHeader::conn`).
    pub id: u64,
    /// When this thread last moved bytes on it (`LAST_SOCK`).
    pub ts_ns: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// Key of `SSL_CONNS`: an `SSL *` is an address in one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslKey {
    pub ssl: u64,
    pub tgid: u64,
}

/// Does `data` start like a TLS record (content type 20–23, protocol version 3.x)? A
/// connection whose first bytes are this is encrypted: its bytes are not HTTP.
pub fn looks_like_tls_record(data: &[u8]) -> bool {
    data.len() >= 3 && (20..=23).contains(&data[0]) && data[1] == 3 && data[2] <= 4
}
