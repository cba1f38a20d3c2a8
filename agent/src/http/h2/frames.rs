//! HTTP/2 framing (RFC 9113 §4): splits one direction's captured bytes into frames,
//! incrementally. DATA payloads stream through in pieces (padding removed) and are never
//! buffered; every other frame's payload is held until complete, capped at `MAX_PAYLOAD`.
//!
//! Captures can be cut (the kernel keeps the first bytes of each write): a frame's length still
//! says where the next one starts, so the bytes not seen are skipped and counted. When a frame
//! *header* was not seen the reader is lost and waits for a write that is whole frames.

/// Most payload bytes kept of one non-DATA frame (a HEADERS block fragment, SETTINGS, GOAWAY).
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Largest frame length we accept when resynchronising (SETTINGS_MAX_FRAME_SIZE's default
/// maximum is 16 KiB; peers may raise it, so allow up to 1 MiB).
const MAX_SYNC_FRAME: u32 = 1 << 20;
const HEADER: usize = 9;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    fn parse(b: &[u8; HEADER]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A non-DATA frame, payload complete. `lost`: some of it was not captured or was beyond
    /// `MAX_PAYLOAD`, so `payload` is only its start.
    Frame { header: FrameHeader, payload: &'a [u8], lost: bool },
    /// DATA payload bytes of `stream` (padding removed).
    Data { stream: u32, bytes: &'a [u8] },
    /// DATA payload bytes of `stream` that were not captured.
    DataLost { stream: u32, n: u64 },
    /// The end of a DATA frame (`end_stream`: its END_STREAM flag).
    DataEnd { stream: u32, end_stream: bool },
    /// A frame header was not captured: frames are lost until a write starts on a boundary.
    Desync,
}

#[derive(Debug)]
enum State {
    /// Not on a frame boundary: wait for a write that is whole frames.
    Lost,
    Header {
        buf: [u8; HEADER],
        have: usize,
    },
    Data {
        header: FrameHeader,
        pad_len_pending: bool,
        data_left: u32,
        pad_left: u32,
    },
    Other {
        header: FrameHeader,
        left: u32,
        buf: Vec<u8>,
        lost: bool,
    },
}

#[derive(Debug)]
pub struct FrameReader {
    state: State,
}

impl FrameReader {
    pub fn new(synced: bool) -> Self {
        Self { state: if synced { Self::header() } else { State::Lost } }
    }

    fn header() -> State {
        State::Header { buf: [0; HEADER], have: 0 }
    }

    pub fn synced(&self) -> bool {
        !matches!(self.state, State::Lost)
    }

    /// One write or read: `data` is the captured start of `len` bytes.
    pub fn feed(&mut self, data: &[u8], len: u64, sink: &mut impl FnMut(Piece<'_>)) {
        if matches!(self.state, State::Lost) {
            if !whole_frames(data, len) {
                return;
            }
            self.state = Self::header();
        }
        let mut rest = data;
        while !rest.is_empty() {
            rest = self.step(rest, sink);
        }
        let gap = len.saturating_sub(data.len() as u64);
        if gap > 0 {
            self.skip(gap, sink);
        }
    }

    fn step<'a>(&mut self, rest: &'a [u8], sink: &mut impl FnMut(Piece<'_>)) -> &'a [u8] {
        match &mut self.state {
            State::Lost => &[],
            State::Header { buf, have } => {
                let n = (HEADER - *have).min(rest.len());
                buf[*have..*have + n].copy_from_slice(&rest[..n]);
                *have += n;
                if *have == HEADER {
                    let header = FrameHeader::parse(buf);
                    self.start(header, sink);
                }
                &rest[n..]
            }
            State::Data { header, pad_len_pending, data_left, pad_left } => {
                let stream = header.stream;
                let mut rest = rest;
                if *pad_len_pending {
                    *pad_len_pending = false;
                    let pad = u32::from(rest[0]);
                    rest = &rest[1..];
                    // Padding longer than the payload is a protocol error: treat it as all padding.
                    *pad_left = pad.min(*data_left);
                    *data_left -= *pad_left;
                }
                let n = (*data_left as usize).min(rest.len());
                if n > 0 {
                    *data_left -= n as u32;
                    sink(Piece::Data { stream, bytes: &rest[..n] });
                }
                rest = &rest[n..];
                let p = (*pad_left as usize).min(rest.len());
                *pad_left -= p as u32;
                rest = &rest[p..];
                self.maybe_end_data(sink);
                rest
            }
            State::Other { left, buf, lost, .. } => {
                let n = (*left as usize).min(rest.len());
                let keep = n.min(MAX_PAYLOAD - buf.len());
                buf.extend_from_slice(&rest[..keep]);
                *lost |= keep < n;
                *left -= n as u32;
                self.maybe_end_other(sink);
                &rest[n..]
            }
        }
    }

    fn start(&mut self, header: FrameHeader, sink: &mut impl FnMut(Piece<'_>)) {
        self.state = if header.kind == DATA {
            let padded = header.flags & PADDED != 0;
            State::Data {
                header,
                pad_len_pending: padded && header.len > 0,
                data_left: if padded { header.len.saturating_sub(1) } else { header.len },
                pad_left: 0,
            }
        } else {
            State::Other { header, left: header.len, buf: Vec::new(), lost: false }
        };
        self.maybe_end_data(sink);
        self.maybe_end_other(sink);
    }

    fn maybe_end_data(&mut self, sink: &mut impl FnMut(Piece<'_>)) {
        if let State::Data { header, pad_len_pending: false, data_left: 0, pad_left: 0 } = self.state {
            self.state = Self::header();
            sink(Piece::DataEnd { stream: header.stream, end_stream: header.flags & END_STREAM != 0 });
        }
    }

    fn maybe_end_other(&mut self, sink: &mut impl FnMut(Piece<'_>)) {
        if let State::Other { left: 0, .. } = self.state {
            if let State::Other { header, buf, lost, .. } = std::mem::replace(&mut self.state, Self::header()) {
                sink(Piece::Frame { header, payload: &buf, lost });
            }
        }
    }

    /// `gap` bytes were moved but not captured.
    fn skip(&mut self, gap: u64, sink: &mut impl FnMut(Piece<'_>)) {
        let lost = match &mut self.state {
            State::Lost => return,
            State::Header { .. } => true,
            State::Data { header, pad_len_pending, data_left, pad_left } => {
                let in_frame = u64::from(*data_left) + u64::from(*pad_left) + u64::from(*pad_len_pending);
                if gap > in_frame {
                    true
                } else {
                    let stream = header.stream;
                    let mut g = gap;
                    if *pad_len_pending {
                        // The pad length itself was not seen: the data/padding split is unknown.
                        *pad_len_pending = false;
                        g -= 1;
                    }
                    let d = g.min(u64::from(*data_left));
                    *data_left -= d as u32;
                    *pad_left -= (g - d).min(u64::from(*pad_left)) as u32;
                    sink(Piece::DataLost { stream, n: gap });
                    self.maybe_end_data(sink);
                    false
                }
            }
            State::Other { left, lost, .. } => {
                if gap > u64::from(*left) {
                    true
                } else {
                    *left -= gap as u32;
                    *lost = true;
                    self.maybe_end_other(sink);
                    false
                }
            }
        };
        if lost {
            self.state = State::Lost;
            sink(Piece::Desync);
        }
    }
}

/// Whether a read or write of `len` bytes starting with `data` is exactly a run of plausible
/// frames (known types, reserved bit clear, sane lengths): how a reader that lost its place, or
/// a connection joined after attach, finds a frame boundary again.
pub fn whole_frames(data: &[u8], len: u64) -> bool {
    let mut pos: u64 = 0;
    let mut frames = 0;
    while pos < len {
        let p = pos as usize;
        let Some(h) = data.get(p..p + HEADER) else { return false };
        let Ok(h) = <&[u8; HEADER]>::try_from(h) else { return false };
        let header = FrameHeader::parse(h);
        if header.kind > CONTINUATION || h[5] & 0x80 != 0 || header.len > MAX_SYNC_FRAME {
            return false;
        }
        // Stream 0 carries only connection frames; DATA/HEADERS need a stream.
        let conn_frame = matches!(header.kind, SETTINGS | PING | GOAWAY);
        if conn_frame != (header.stream == 0) && header.kind != WINDOW_UPDATE {
            return false;
        }
        pos += HEADER as u64 + u64::from(header.len);
        frames += 1;
    }
    frames > 0 && pos == len
}
