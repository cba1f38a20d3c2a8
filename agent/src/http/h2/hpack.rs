//! HPACK header block decoding (RFC 7541) that keeps only what the agent may use: `:method`,
//! `:path`, `:status`, the kind of `content-type` and `grpc-status`. Every other header is parsed
//! for its length only (the dynamic table needs each entry's size), its value never decoded or
//! kept, so credentials and cookies never exist in our memory in plain form.
//!
//! The dynamic table is capped (`MAX_TABLE`); an encoder asking for more is clamped, which can
//! only make references to old entries unknown, never wrong. A connection joined after attach
//! starts with an empty table: references to entries from before we joined are *unknown*
//! (reported, never guessed); an insertion whose size we cannot know poisons the table for good.

use std::collections::VecDeque;

use super::huffman;

/// Most dynamic-table bytes (RFC size accounting) kept per direction.
pub const MAX_TABLE: usize = 64 * 1024;
/// Longest `:path` kept (the route sanitizer cuts far shorter anyway).
pub const MAX_PATH: usize = 512;
const MAX_METHOD: usize = 16;
/// Longest name we compare; longer names are none of ours.
const MAX_NAME: usize = 16;
const MAX_SMALL_VALUE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Method,
    Path,
    Status,
    ContentType,
    GrpcStatus,
}

/// What a response body is, from its `content-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Sse,
    Ndjson,
    Json,
    /// `application/grpc` and its `+proto` / `+json` variants.
    Grpc,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Method(Box<str>),
    Path(Box<str>),
    Status(u16),
    ContentType(ContentKind),
    GrpcStatus(u32),
    /// One of our names with a value that did not parse (e.g. a non-numeric `:status`).
    Invalid,
}

/// The fields of one header block that leave the parser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pub method: Option<Box<str>>,
    pub path: Option<Box<str>>,
    pub status: Option<u16>,
    pub content: Option<ContentKind>,
    pub grpc_status: Option<u32>,
    /// The block referred to table entries we do not know (joined after attach): any field
    /// above that is missing may have been there.
    pub unknown_refs: bool,
}

impl Headers {
    fn set(&mut self, v: Value) {
        match v {
            Value::Method(m) => self.method = Some(m),
            Value::Path(p) => self.path = Some(p),
            Value::Status(s) => self.status = Some(s),
            Value::ContentType(k) => self.content = Some(k),
            Value::GrpcStatus(g) => self.grpc_status = Some(g),
            Value::Invalid => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    /// Malformed block (bad integer, string past the end, bad Huffman, index 0).
    Malformed,
    /// An earlier block left the table in a state we cannot know: nothing decodes any more.
    Poisoned,
}

/// RFC 7541 Appendix A: the static table's names (index 1..=61). Values matter only for the
/// entries that carry one of ours, handled in `static_value`.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

fn static_value(index: usize) -> Option<Value> {
    Some(match index {
        2 => Value::Method("GET".into()),
        3 => Value::Method("POST".into()),
        4 => Value::Path("/".into()),
        5 => Value::Path("/index.html".into()),
        8 => Value::Status(200),
        9 => Value::Status(204),
        10 => Value::Status(206),
        11 => Value::Status(304),
        12 => Value::Status(400),
        13 => Value::Status(404),
        14 => Value::Status(500),
        _ => return None,
    })
}

fn name_of(bytes: &[u8]) -> Option<Name> {
    Some(match bytes {
        b":method" => Name::Method,
        b":path" => Name::Path,
        b":status" => Name::Status,
        b"content-type" => Name::ContentType,
        b"grpc-status" => Name::GrpcStatus,
        _ => return None,
    })
}

fn value_of(name: Name, v: &[u8]) -> Value {
    let text = || String::from_utf8_lossy(v).into_owned().into_boxed_str();
    match name {
        Name::Method if !v.is_empty() && v.len() <= MAX_METHOD && v.iter().all(u8::is_ascii_alphabetic) => {
            Value::Method(text())
        }
        Name::Path if v.first() == Some(&b'/') => {
            // As for HTTP/1.1: no query string or fragment, printable ASCII only.
            let end = v.iter().position(|&c| c == b'?' || c == b'#').unwrap_or(v.len());
            let p = &v[..end];
            if p.iter().all(u8::is_ascii_graphic) {
                Value::Path(String::from_utf8_lossy(p).into_owned().into_boxed_str())
            } else {
                Value::Invalid
            }
        }
        Name::Status => std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).map_or(Value::Invalid, Value::Status),
        Name::GrpcStatus => {
            std::str::from_utf8(v).ok().and_then(|s| s.trim().parse().ok()).map_or(Value::Invalid, Value::GrpcStatus)
        }
        Name::ContentType => {
            let mime = v.split(|&c| c == b';').next().unwrap_or_default().trim_ascii().to_ascii_lowercase();
            Value::ContentType(match mime.as_slice() {
                b"text/event-stream" => ContentKind::Sse,
                b"application/x-ndjson" | b"application/jsonl" | b"application/jsonlines" => ContentKind::Ndjson,
                b"application/json" => ContentKind::Json,
                m if m.starts_with(b"application/grpc") => ContentKind::Grpc,
                _ => ContentKind::Other,
            })
        }
        Name::Method | Name::Path => Value::Invalid,
    }
}

fn cap_of(name: Option<Name>) -> usize {
    match name {
        Some(Name::Path) => MAX_PATH,
        Some(_) => MAX_SMALL_VALUE,
        None => 0,
    }
}

#[derive(Debug)]
struct Entry {
    name: Option<Name>,
    name_len: usize,
    value: Option<Value>,
    /// RFC 7541 §4.1: name length + value length + 32.
    size: usize,
}

/// One direction's decoder (requests and responses each have their own table).
#[derive(Debug)]
pub struct Decoder {
    table: VecDeque<Entry>,
    size: usize,
    max: usize,
    poisoned: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self { table: VecDeque::new(), size: 0, max: 4096, poisoned: false }
    }
}

/// A name or value as it stands in the block.
struct Str<'a> {
    huffman: bool,
    raw: &'a [u8],
}

impl Str<'_> {
    /// Decoded length, and up to `cap` decoded bytes when `keep`.
    fn decode(&self, keep: Option<&mut Vec<u8>>, cap: usize) -> Result<usize, HpackError> {
        if self.huffman {
            huffman::decode(self.raw, keep, cap).map_err(|_| HpackError::Malformed)
        } else {
            if let Some(k) = keep {
                k.extend_from_slice(&self.raw[..self.raw.len().min(cap)]);
            }
            Ok(self.raw.len())
        }
    }
}

fn integer(buf: &[u8], pos: &mut usize, prefix: u8) -> Result<usize, HpackError> {
    let mask = (1u16 << prefix) as u8 - 1;
    let first = *buf.get(*pos).ok_or(HpackError::Malformed)? & mask;
    *pos += 1;
    if first < mask {
        return Ok(usize::from(first));
    }
    let mut value = usize::from(mask);
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos).ok_or(HpackError::Malformed)?;
        *pos += 1;
        if shift > 21 {
            return Err(HpackError::Malformed); // beyond 2^28: no real block has that
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

fn string<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Str<'a>, HpackError> {
    let huffman = buf.get(*pos).ok_or(HpackError::Malformed)? & 0x80 != 0;
    let len = integer(buf, pos, 7)?;
    let end = pos.checked_add(len).filter(|&e| e <= buf.len()).ok_or(HpackError::Malformed)?;
    let raw = &buf[*pos..end];
    *pos = end;
    Ok(Str { huffman, raw })
}

/// A name as resolved from the tables: ours or not, with its length (None: unknown entry).
struct NameRef {
    name: Option<Name>,
    len: Option<usize>,
}

impl Decoder {
    /// Whether an earlier block made this table unknowable.
    pub fn poisoned(&self) -> bool {
        self.poisoned
    }

    /// Marks the table unknowable (a header block was not captured whole).
    pub fn poison(&mut self) {
        self.poisoned = true;
        self.table.clear();
        self.size = 0;
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION payloads joined).
    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, HpackError> {
        if self.poisoned {
            return Err(HpackError::Poisoned);
        }
        let r = self.decode_inner(block);
        if r.is_err() {
            // Entries this block would have added are unknown: later indices cannot be trusted.
            self.poison();
        }
        r
    }

    fn decode_inner(&mut self, b: &[u8]) -> Result<Headers, HpackError> {
        let mut h = Headers::default();
        let mut pos = 0;
        while pos < b.len() {
            let first = b[pos];
            if first & 0x80 != 0 {
                let index = integer(b, &mut pos, 7)?;
                match self.lookup(index)? {
                    Some(e) => {
                        if let Some(v) = e {
                            h.set(v);
                        }
                    }
                    None => h.unknown_refs = true,
                }
            } else if first & 0xe0 == 0x20 {
                let size = integer(b, &mut pos, 5)?;
                self.max = size.min(MAX_TABLE);
                self.evict(0);
            } else {
                let (prefix, index_it) = if first & 0xc0 == 0x40 { (6, true) } else { (4, false) };
                let index = integer(b, &mut pos, prefix)?;
                let name = if index == 0 {
                    let s = string(b, &mut pos)?;
                    let mut buf = Vec::with_capacity(MAX_NAME);
                    let len = s.decode(Some(&mut buf), MAX_NAME + 1)?;
                    NameRef { name: if len <= MAX_NAME { name_of(&buf) } else { None }, len: Some(len) }
                } else {
                    self.name_at(index)?
                };
                let s = string(b, &mut pos)?;
                let mut kept = Vec::new();
                let want = name.name.is_some();
                let vlen = s.decode(want.then_some(&mut kept), cap_of(name.name))?;
                let value = name.name.map(|n| value_of(n, &kept));
                if name.len.is_none() {
                    h.unknown_refs = true;
                }
                if let Some(v) = &value {
                    h.set(v.clone());
                }
                if index_it {
                    let Some(nlen) = name.len else {
                        // Its size is unknown, so every later index would be a guess.
                        return Err(HpackError::Poisoned);
                    };
                    self.insert(Entry { name: name.name, name_len: nlen, value, size: nlen + vlen + 32 });
                }
            }
        }
        Ok(h)
    }

    /// Indexed field: `Ok(None)` for an entry we do not know; `Ok(Some(value))` otherwise
    /// (the inner `None`: none of ours).
    fn lookup(&self, index: usize) -> Result<Option<Option<Value>>, HpackError> {
        match index {
            0 => Err(HpackError::Malformed),
            // content-type (31) has an empty value in the static table: none of ours.
            1..=61 => Ok(Some(static_value(index))),
            _ => Ok(self.table.get(index - 62).map(|e| e.value.clone())),
        }
    }

    fn name_at(&self, index: usize) -> Result<NameRef, HpackError> {
        match index {
            0 => Err(HpackError::Malformed),
            1..=61 => {
                let n = STATIC_NAMES[index - 1];
                Ok(NameRef { name: name_of(n.as_bytes()), len: Some(n.len()) })
            }
            _ => Ok(match self.table.get(index - 62) {
                Some(e) => NameRef { name: e.name, len: Some(e.name_len) },
                None => NameRef { name: None, len: None },
            }),
        }
    }

    fn insert(&mut self, e: Entry) {
        if e.size > self.max {
            // RFC 7541 §4.4: an entry larger than the table empties it.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(e.size);
        self.size += e.size;
        self.table.push_front(e);
    }

    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            match self.table.pop_back() {
                Some(old) => self.size -= old.size,
                None => break,
            }
        }
    }

    /// Entries in the dynamic table (for tests and bounds).
    pub fn entries(&self) -> usize {
        self.table.len()
    }
}
