//! HTTP/1.1 chunked transfer decoding, incremental: input may be split at any byte.

/// Longest chunk-size line (size, extensions) we accept before calling the stream malformed.
const MAX_SIZE_LINE: u32 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the digits: chunk extensions or whitespace until LF.
    SizeRest {
        value: u64,
        seen: u32,
    },
    Data {
        remaining: u64,
    },
    /// Expecting the CRLF after a chunk's data (CR optional).
    DataEnd {
        saw_cr: bool,
    },
    /// Trailer section after the last chunk; `line_len` is the current line's length.
    Trailer {
        line_len: u32,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("malformed chunk size line")]
    BadSize,
    #[error("chunk data not followed by CRLF")]
    BadDataEnd,
    #[error("bytes of the chunk framing were not captured")]
    FramingGap,
}

#[derive(Clone, Debug)]
pub struct ChunkDecoder {
    state: State,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self { state: State::Size { value: 0, digits: 0 } }
    }
}

impl ChunkDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, handing body bytes to `body`. Returns how many input bytes belonged to
    /// this body: all of them unless the terminating chunk ended inside `input`.
    pub fn feed(&mut self, input: &[u8], body: &mut impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data { remaining } => {
                    let n = (input.len() - i).min(remaining.min(usize::MAX as u64) as usize);
                    body(&input[i..i + n]);
                    i += n;
                    let remaining = remaining - n as u64;
                    self.state =
                        if remaining == 0 { State::DataEnd { saw_cr: false } } else { State::Data { remaining } };
                }
                State::Size { value, digits } => {
                    let b = input[i];
                    i += 1;
                    if let Some(d) = hex(b) {
                        if digits >= 15 {
                            return Err(ChunkError::BadSize);
                        }
                        self.state = State::Size { value: value << 4 | d as u64, digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkError::BadSize);
                    } else if b == b'\n' {
                        self.state = size_done(value);
                    } else if b == b'\r' || b == b';' || b == b' ' || b == b'\t' {
                        self.state = State::SizeRest { value, seen: 1 };
                    } else {
                        return Err(ChunkError::BadSize);
                    }
                }
                State::SizeRest { value, seen } => {
                    let b = input[i];
                    i += 1;
                    if b == b'\n' {
                        self.state = size_done(value);
                    } else if seen >= MAX_SIZE_LINE {
                        return Err(ChunkError::BadSize);
                    } else {
                        self.state = State::SizeRest { value, seen: seen + 1 };
                    }
                }
                State::DataEnd { saw_cr } => {
                    let b = input[i];
                    i += 1;
                    match (saw_cr, b) {
                        (false, b'\r') => self.state = State::DataEnd { saw_cr: true },
                        (_, b'\n') => self.state = State::Size { value: 0, digits: 0 },
                        _ => return Err(ChunkError::BadDataEnd),
                    }
                }
                State::Trailer { line_len } => {
                    let b = input[i];
                    i += 1;
                    self.state = match b {
                        b'\n' if line_len == 0 => State::Done,
                        b'\n' => State::Trailer { line_len: 0 },
                        b'\r' => State::Trailer { line_len },
                        _ if line_len >= 8192 => return Err(ChunkError::BadSize),
                        _ => State::Trailer { line_len: line_len + 1 },
                    };
                }
            }
        }
        if self.state == State::Done {
            return Ok(i);
        }
        Ok(input.len())
    }

    /// Accounts for `n` bytes that were written but not captured. Fine inside chunk data, and
    /// through the CRLF that ends it (writers send `size CRLF data CRLF` in one call, so a long
    /// chunk's uncaptured tail usually ends there); anywhere else the framing is lost.
    pub fn skip(&mut self, n: u64) -> Result<(), ChunkError> {
        match self.state {
            State::Data { remaining } if n <= remaining + 2 => {
                self.state = match n.checked_sub(remaining) {
                    None => State::Data { remaining: remaining - n },
                    Some(0) => State::DataEnd { saw_cr: false },
                    Some(1) => State::DataEnd { saw_cr: true },
                    Some(_) => State::Size { value: 0, digits: 0 },
                };
                Ok(())
            }
            _ if n == 0 => Ok(()),
            _ => Err(ChunkError::FramingGap),
        }
    }
}

fn size_done(value: u64) -> State {
    if value == 0 {
        State::Trailer { line_len: 0 }
    } else {
        State::Data { remaining: value }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(input: &[u8], at: usize) -> (Vec<u8>, bool, usize) {
        let mut d = ChunkDecoder::default();
        let mut out = Vec::new();
        let a = d.feed(&input[..at], &mut |b| out.extend_from_slice(b)).unwrap();
        let mut used = a;
        if !d.is_done() {
            used = at + d.feed(&input[at..], &mut |b| out.extend_from_slice(b)).unwrap();
        }
        (out, d.is_done(), used)
    }

    #[test]
    fn decodes_at_every_split_point() {
        let input = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nGET";
        for at in 0..=input.len() {
            let (out, done, used) = decode_split(input, at);
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz", "split at {at}");
            assert!(done);
            assert_eq!(used, input.len() - 3, "pipelined bytes after the body are left");
        }
    }

    #[test]
    fn accepts_bare_lf() {
        let (out, done, _) = decode_split(b"3\nabc\n0\n\n", 4);
        assert_eq!(out, b"abc");
        assert!(done);
    }

    #[test]
    fn rejects_garbage() {
        let mut d = ChunkDecoder::default();
        assert_eq!(d.feed(b"zz\r\n", &mut |_| {}), Err(ChunkError::BadSize));
        let mut d = ChunkDecoder::default();
        assert_eq!(d.feed(b"2\r\nabX", &mut |_| {}), Err(ChunkError::BadDataEnd));
    }

    #[test]
    fn gap_inside_data_is_fine_outside_is_not() {
        let mut d = ChunkDecoder::default();
        d.feed(b"a\r\nab", &mut |_| {}).unwrap();
        d.skip(8).unwrap();
        d.feed(b"\r\n0\r\n\r\n", &mut |_| {}).unwrap();
        assert!(d.is_done());
        let mut d = ChunkDecoder::default();
        d.feed(b"4\r\nab", &mut |_| {}).unwrap();
        d.skip(4).unwrap(); // the rest of the data and its CRLF
        d.feed(b"0\r\n\r\n", &mut |_| {}).unwrap();
        assert!(d.is_done());
        let mut d = ChunkDecoder::default();
        d.feed(b"2\r\nab", &mut |_| {}).unwrap();
        assert_eq!(d.skip(3), Err(ChunkError::FramingGap));
    }
}
