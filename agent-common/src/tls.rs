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
}

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
