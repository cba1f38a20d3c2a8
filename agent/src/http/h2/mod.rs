//! HTTP/2 (RFC 9113) exchange reconstruction: pure and incremental like the HTTP/1.1 parser.
//!
//! Read order: [`frames`] (one direction's bytes → frames; DATA streamed, cut captures skipped
//! by frame length) → [`hpack`] + [`huffman`] (header blocks → the five fields we keep) →
//! [`stream`] (one stream → one [`RequestRecord`]) with [`grpc`] (length-prefixed messages) →
//! this file ([`H2Conn`]: a connection's streams, bounded) and [`Switch`] (the client preface
//! turns a connection into an HTTP/2 one).

pub mod frames;
pub mod grpc;
pub mod hpack;
pub mod huffman;
pub mod stream;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use frames::{FrameReader, Piece};
use hpack::{Decoder, Headers};
use stream::Stream;

use super::{ParseCounters, RequestRecord};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams followed at once per connection (servers allow ~100–250 concurrent ones).
pub const MAX_STREAMS: usize = 256;
/// Largest header block (HEADERS + CONTINUATION) decoded; a longer one poisons HPACK.
pub const MAX_BLOCK: usize = 64 * 1024;

/// What could not be followed on HTTP/2 connections, and why.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct H2Counters {
    /// Connections followed as HTTP/2 from their client preface.
    pub connections: u64,
    /// Connections recognised as HTTP/2 from whole frames, without a preface: opened before
    /// attach (or frames read after a close we saw, such as a client's GOAWAY).
    pub joined: u64,
    /// Requests (streams opened by a decodable header block).
    pub streams: u64,
    /// Header blocks that could not be decoded (a connection joined after attach refers to
    /// table entries from before; a block not captured whole): their streams are counted, not
    /// guessed.
    pub undecodable_headers: u64,
    /// Streams beyond `MAX_STREAMS` open on one connection: counted, not followed.
    pub streams_dropped: u64,
    /// Streams reset (RST_STREAM) by either side before their response ended.
    pub resets: u64,
    /// Times a frame header was not captured and the frames that followed were lost.
    pub desyncs: u64,
    /// DATA bytes not captured (their frames still kept the stream in step).
    pub data_bytes_lost: u64,
    /// gRPC responses that ended with a non-zero `grpc-status`.
    pub grpc_errors: u64,
}

impl H2Counters {
    pub fn add(&mut self, o: &Self) {
        self.connections += o.connections;
        self.joined += o.joined;
        self.streams += o.streams;
        self.undecodable_headers += o.undecodable_headers;
        self.streams_dropped += o.streams_dropped;
        self.resets += o.resets;
        self.desyncs += o.desyncs;
        self.data_bytes_lost += o.data_bytes_lost;
        self.grpc_errors += o.grpc_errors;
    }
}

/// A header block being gathered from HEADERS (or PUSH_PROMISE) and CONTINUATION frames.
#[derive(Debug, Default)]
struct Block {
    open: bool,
    stream: u32,
    end_stream: bool,
    /// A PUSH_PROMISE block: decoded only to keep the table in step.
    push: bool,
    lost: bool,
    buf: Vec<u8>,
}

impl Block {
    fn append(&mut self, fragment: &[u8], lost: bool) {
        let room = MAX_BLOCK - self.buf.len();
        self.lost |= lost || fragment.len() > room;
        self.buf.extend_from_slice(&fragment[..fragment.len().min(room)]);
    }
}

/// One direction: its frame reader, HPACK table and open header block.
#[derive(Debug)]
struct Side {
    reader: FrameReader,
    hpack: Decoder,
    block: Block,
}

impl Side {
    fn new(synced: bool) -> Self {
        Self { reader: FrameReader::new(synced), hpack: Decoder::default(), block: Block::default() }
    }
}

#[derive(Debug)]
pub struct H2Conn {
    rd: Side,
    wr: Side,
    streams: HashMap<u32, Stream>,
    write_seq: u64,
    /// Records finished while reading (a client reset), handed out by `drain`.
    done: Vec<RequestRecord>,
}

/// Which side a header block came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

impl H2Conn {
    /// `synced`: both directions start on a frame boundary (a fresh connection, after its
    /// preface). Otherwise (joined) each direction waits for a read/write that is whole frames.
    pub fn new(synced: bool, counters: &mut ParseCounters) -> Self {
        if synced {
            counters.h2.connections += 1;
        } else {
            counters.h2.joined += 1;
        }
        Self { rd: Side::new(synced), wr: Side::new(synced), streams: HashMap::new(), write_seq: 0, done: Vec::new() }
    }

    pub fn in_flight(&self) -> usize {
        self.streams.values().filter(|s| s.request_done || s.responding()).count()
    }

    pub fn awaiting_first_token(&self) -> usize {
        self.streams.values().filter(|s| (s.request_done || s.responding()) && s.awaiting_first_token()).count()
    }

    pub fn drain(&mut self, out: &mut Vec<RequestRecord>) {
        out.append(&mut self.done);
    }

    /// The server read `data` (the captured start of `len` bytes) at `ts_ns` on thread `tid`.
    pub fn on_read(&mut self, ts_ns: u64, data: &[u8], len: u64, tid: u32, counters: &mut ParseCounters) {
        let Self { rd, streams, done, .. } = self;
        let mut ctx = Ctx { ts_ns, tid, seq: 0, streams, counters, out: done, dir: Dir::Read };
        let Side { reader, hpack, block } = rd;
        reader.feed(data, len, &mut |p| ctx.piece(p, hpack, block));
    }

    /// The server wrote `data` (the captured start of `len` bytes); finished records go to `out`.
    pub fn on_write(
        &mut self,
        ts_ns: u64,
        data: &[u8],
        len: u64,
        tid: u32,
        counters: &mut ParseCounters,
        out: &mut Vec<RequestRecord>,
    ) {
        self.write_seq += 1;
        out.append(&mut self.done);
        let Self { wr, streams, write_seq, .. } = self;
        let mut ctx = Ctx { ts_ns, tid, seq: *write_seq, streams, counters, out, dir: Dir::Write };
        let Side { reader, hpack, block } = wr;
        reader.feed(data, len, &mut |p| ctx.piece(p, hpack, block));
    }

    /// The connection ended: responses in progress end as partial (or complete, when their
    /// stream said so); requests never answered are counted as aborted.
    pub fn end(&mut self, reason: &'static str, counters: &mut ParseCounters, out: &mut Vec<RequestRecord>) {
        out.append(&mut self.done);
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(s) = self.streams.remove(&id) {
                if !s.responding() {
                    counters.aborted += 1;
                    continue;
                }
                match s.finish(None, Some(reason), counters) {
                    Some(r) if r.partial.is_some() => {
                        counters.aborted += 1;
                        out.push(r);
                    }
                    Some(r) => out.push(r),
                    None => {}
                }
            }
        }
    }
}

/// What handling one frame piece needs.
struct Ctx<'a> {
    ts_ns: u64,
    tid: u32,
    seq: u64,
    streams: &'a mut HashMap<u32, Stream>,
    counters: &'a mut ParseCounters,
    out: &'a mut Vec<RequestRecord>,
    dir: Dir,
}

impl Ctx<'_> {
    fn piece(&mut self, p: Piece<'_>, hpack: &mut Decoder, block: &mut Block) {
        match p {
            Piece::Frame { header, payload, lost } => self.frame(header, payload, lost, hpack, block),
            Piece::Data { stream, bytes } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    match self.dir {
                        Dir::Read => s.request_data(bytes, self.ts_ns, self.tid),
                        Dir::Write => s.data(bytes, self.ts_ns, self.seq, self.counters),
                    }
                }
            }
            Piece::DataLost { stream, n } => {
                self.counters.h2.data_bytes_lost += n;
                if let Some(s) = self.streams.get_mut(&stream) {
                    match self.dir {
                        Dir::Read => s.request_lost(),
                        Dir::Write => s.data_lost(n, self.ts_ns, self.seq, self.counters),
                    }
                }
            }
            Piece::DataEnd { stream, end_stream: true } => self.end_stream(stream),
            Piece::DataEnd { .. } => {}
            Piece::Desync => {
                // Frames we did not see may have carried header blocks: the table is unknown.
                self.counters.h2.desyncs += 1;
                hpack.poison();
                *block = Block::default();
            }
        }
    }

    fn frame(&mut self, h: frames::FrameHeader, payload: &[u8], lost: bool, hpack: &mut Decoder, block: &mut Block) {
        match h.kind {
            frames::HEADERS | frames::PUSH_PROMISE => {
                if block.open {
                    // A new block before the last one ended: the last one is lost.
                    hpack.poison();
                }
                let fragment = header_fragment(h, payload);
                *block = Block {
                    open: true,
                    stream: h.stream,
                    end_stream: h.kind == frames::HEADERS && h.flags & frames::END_STREAM != 0,
                    push: h.kind == frames::PUSH_PROMISE,
                    lost: fragment.is_none(),
                    buf: Vec::new(),
                };
                block.append(fragment.unwrap_or_default(), lost);
                if h.flags & frames::END_HEADERS != 0 {
                    self.block_done(hpack, block);
                }
            }
            frames::CONTINUATION => {
                if !block.open || block.stream != h.stream {
                    hpack.poison();
                    return;
                }
                block.append(payload, lost);
                if h.flags & frames::END_HEADERS != 0 {
                    self.block_done(hpack, block);
                }
            }
            frames::RST_STREAM => {
                if let Some(s) = self.streams.remove(&h.stream) {
                    self.counters.h2.resets += 1;
                    let reason = match self.dir {
                        Dir::Read => "stream reset by the client",
                        Dir::Write => "stream reset by the server",
                    };
                    if s.responding() {
                        self.counters.aborted += 1;
                        self.out.extend(s.finish(None, Some(reason), self.counters));
                    } else {
                        self.counters.aborted += 1;
                    }
                }
            }
            // SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY and unknown types change nothing
            // we measure (GOAWAY'd streams end at the close like any other).
            _ => {}
        }
    }

    fn block_done(&mut self, hpack: &mut Decoder, block: &mut Block) {
        let b = std::mem::take(block);
        if b.lost {
            hpack.poison();
        }
        let decoded = if b.lost { Err(hpack::HpackError::Poisoned) } else { hpack.decode(&b.buf) };
        if b.push {
            return; // decoded only to keep the table in step
        }
        let h = match decoded {
            Ok(h) => h,
            Err(_) => {
                self.counters.h2.undecodable_headers += 1;
                // The stream cannot be measured: forget it rather than guess.
                if self.dir == Dir::Write {
                    self.streams.remove(&b.stream);
                }
                return;
            }
        };
        match self.dir {
            Dir::Read => self.request_headers(b.stream, &h, b.end_stream),
            Dir::Write => self.response_headers(b.stream, &h, b.end_stream),
        }
    }

    fn request_headers(&mut self, id: u32, h: &Headers, end_stream: bool) {
        if let Some(s) = self.streams.get_mut(&id) {
            // Request trailers.
            if end_stream {
                s.request_end(self.ts_ns, self.tid);
            }
            return;
        }
        let (Some(method), Some(path)) = (h.method.clone(), h.path.clone()) else {
            self.counters.h2.undecodable_headers += 1;
            return;
        };
        if self.streams.len() >= MAX_STREAMS {
            self.counters.h2.streams_dropped += 1;
            return;
        }
        self.counters.h2.streams += 1;
        let mut s = Stream::new(method, path, self.ts_ns, self.tid);
        if end_stream {
            s.request_end(self.ts_ns, self.tid);
        }
        self.streams.insert(id, s);
    }

    fn response_headers(&mut self, id: u32, h: &Headers, end_stream: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            self.counters.unmatched_responses += 1;
            return;
        };
        if s.responding() {
            s.trailers(h, self.ts_ns, self.counters);
        } else {
            match h.status {
                Some(st) if (100..200).contains(&st) => return, // interim
                Some(_) if h.content.is_some() || !h.unknown_refs => s.respond(h, self.ts_ns, self.tid),
                _ => {
                    // No status, or the content type may hide behind an unknown reference.
                    self.counters.h2.undecodable_headers += 1;
                    self.streams.remove(&id);
                    return;
                }
            }
            if end_stream {
                // Trailers-only (a gRPC error) or a bodiless response: may carry grpc-status.
                s.trailers(h, self.ts_ns, self.counters);
            }
        }
        if end_stream {
            self.end_stream(id);
        }
    }

    /// END_STREAM from one side: a request is complete, or a response is.
    fn end_stream(&mut self, id: u32) {
        match self.dir {
            Dir::Read => {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.request_end(self.ts_ns, self.tid);
                }
            }
            Dir::Write => {
                if let Some(s) = self.streams.remove(&id) {
                    self.out.extend(s.finish(Some(self.ts_ns), None, self.counters));
                }
            }
        }
    }
}

/// The header block fragment of a HEADERS / PUSH_PROMISE payload (padding, priority and the
/// promised stream id removed); `None` when the payload is too short for what its flags say.
fn header_fragment(h: frames::FrameHeader, p: &[u8]) -> Option<&[u8]> {
    let mut start = 0usize;
    let mut pad = 0usize;
    if h.flags & frames::PADDED != 0 {
        pad = usize::from(*p.first()?);
        start = 1;
    }
    if h.kind == frames::HEADERS && h.flags & frames::PRIORITY_FLAG != 0 {
        start += 5;
    }
    if h.kind == frames::PUSH_PROMISE {
        start += 4;
    }
    let end = p.len().checked_sub(pad)?;
    p.get(start..end)
}

/// Decides, from a connection's first request bytes, whether it speaks HTTP/2.
#[derive(Debug)]
pub enum Switch {
    /// `n` bytes of the preface matched so far (held here, not passed on).
    Undecided(u8),
    Http1,
    H2(Box<H2Conn>),
}

/// Where a read goes.
pub enum Route {
    /// Taken by the HTTP/2 parser (or held as a possible preface).
    H2,
    /// HTTP/1.1; `prefix`: preface bytes held earlier that turned out to be HTTP/1.1.
    Http1 { prefix: &'static [u8] },
}

impl Switch {
    /// A read at `ts_ns`. `at_head`: the HTTP/1.1 parser stands at a request boundary (fresh,
    /// or waiting to resynchronise), the only place a preface or a joined HTTP/2 connection can
    /// be recognised.
    pub fn read(
        &mut self,
        ts_ns: u64,
        data: &[u8],
        len: u64,
        tid: u32,
        at_head: bool,
        synced_http1: bool,
        counters: &mut ParseCounters,
    ) -> Route {
        match self {
            Self::H2(c) => {
                c.on_read(ts_ns, data, len, tid, counters);
                Route::H2
            }
            Self::Http1 => Route::Http1 { prefix: &[] },
            Self::Undecided(n) => {
                let held = usize::from(*n);
                if !at_head {
                    return Route::Http1 { prefix: &[] };
                }
                let want = &PREFACE[held..];
                let m = want.len().min(data.len());
                if data[..m] == want[..m] && (m == want.len() || data.len() as u64 == len) {
                    if m < want.len() {
                        *n += m as u8;
                        return Route::H2;
                    }
                    let mut c = Box::new(H2Conn::new(true, counters));
                    c.on_read(ts_ns, &data[m..], len - m as u64, tid, counters);
                    *self = Self::H2(c);
                    return Route::H2;
                }
                if held == 0 && !synced_http1 && frames::whole_frames(data, len) {
                    // Joined after attach: frames with no preface.
                    let mut c = Box::new(H2Conn::new(false, counters));
                    c.on_read(ts_ns, data, len, tid, counters);
                    *self = Self::H2(c);
                    return Route::H2;
                }
                if held > 0 || super::head::looks_like_request(data) {
                    *self = Self::Http1;
                }
                Route::Http1 { prefix: &PREFACE[..held] }
            }
        }
    }
}
