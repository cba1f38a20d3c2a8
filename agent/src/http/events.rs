//! Splits a streamed response body into events: Server-Sent Events (per the WHATWG spec: LF, CR
//! or CRLF line ends, `:` comments, `data:` with or without a space) or newline-delimited JSON.
//!
//! Only `data` values are held, and only until their event is complete; they are handed to the
//! classifier and dropped. Nothing here is ever logged or exported.

/// Most bytes of one event's data kept for classification. Content keys come first in every
/// shape we know, so a longer event is classified on its prefix (and counted as truncated).
pub const MAX_EVENT_DATA: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Sse,
    Ndjson,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    /// Reading the field name (the first bytes of the line).
    Name,
    Data,
    /// A comment or a field we do not need: skip to end of line.
    Ignored,
}

pub struct EventSplitter {
    format: Format,
    /// Previous byte was CR: a following LF belongs to the same line end.
    after_cr: bool,
    field: Field,
    name: [u8; 8],
    name_len: usize,
    /// The value's first byte is next (SSE strips one leading space there).
    value_start: bool,
    line_empty: bool,
    data: Vec<u8>,
    has_data: bool,
    truncated: bool,
    /// Events whose data exceeded `MAX_EVENT_DATA`.
    pub truncated_events: u64,
}

// Manual Debug: the data buffer holds generated text, which must never reach a log.
impl std::fmt::Debug for EventSplitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSplitter").field("format", &self.format).field("buffered_bytes", &self.data.len()).finish()
    }
}

impl EventSplitter {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            after_cr: false,
            field: Field::Name,
            name: [0; 8],
            name_len: 0,
            value_start: false,
            line_empty: true,
            data: Vec::new(),
            has_data: false,
            truncated: false,
            truncated_events: 0,
        }
    }

    /// Feeds body bytes; `on_event` gets each complete event's data (SSE: `data` lines joined
    /// by LF; NDJSON: the line).
    pub fn feed(&mut self, bytes: &[u8], on_event: &mut impl FnMut(&[u8])) {
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(on_event);
                    i += 1;
                }
                b'\n' => {
                    self.end_line(on_event);
                    i += 1;
                }
                _ => {
                    // The rest of the line in one piece: most of a stream is data values.
                    let end = memchr::memchr2(b'\r', b'\n', &bytes[i..]).map_or(bytes.len(), |n| i + n);
                    self.push_run(&bytes[i..end]);
                    i = end;
                }
            }
        }
    }

    /// A non-empty run of bytes with no line end: the field name byte by byte (at most 8 are
    /// kept), then a data value or an NDJSON line copied whole, an ignored field skipped whole.
    fn push_run(&mut self, mut run: &[u8]) {
        while let Some((&b, rest)) = run.split_first() {
            let whole = match self.format {
                Format::Ndjson => true,
                Format::Sse => self.field == Field::Ignored || (self.field == Field::Data && !self.value_start),
            };
            if whole {
                self.line_empty = false;
                if self.field != Field::Ignored || self.format == Format::Ndjson {
                    self.keep_all(run);
                }
                return;
            }
            self.push(b);
            run = rest;
        }
    }

    /// The rest of a write was not captured: the event being read is unknowable and dropped.
    /// Uncaptured bytes always end a write, and servers end writes at frame boundaries, so the
    /// next byte is taken as the start of a new line.
    /// Bytes of the stream were not captured (a write longer than the capture): an event in
    /// progress is given to `on_event` with what was seen of it — its beginning is all the
    /// content check needs, and servers end writes at event boundaries — then the splitter
    /// restarts at the next write.
    pub fn lose_sync(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if self.has_data {
            self.truncated = true;
            self.dispatch(on_event);
        }
        self.data.clear();
        self.has_data = false;
        self.truncated = false;
        self.after_cr = false;
        self.field = Field::Name;
        self.name_len = 0;
        self.line_empty = true;
    }

    fn push(&mut self, b: u8) {
        self.line_empty = false;
        match self.format {
            Format::Ndjson => self.keep(b),
            Format::Sse => match self.field {
                Field::Name => {
                    if b == b':' {
                        let is_data = &self.name[..self.name_len] == b"data";
                        if self.name_len == 0 {
                            self.field = Field::Ignored; // comment line
                        } else if is_data {
                            self.field = Field::Data;
                            self.value_start = true;
                            if self.has_data {
                                self.keep(b'\n');
                            }
                            self.has_data = true;
                        } else {
                            self.field = Field::Ignored;
                        }
                    } else if self.name_len < self.name.len() {
                        self.name[self.name_len] = b;
                        self.name_len += 1;
                    } else {
                        self.field = Field::Ignored; // no field we need is this long
                    }
                }
                Field::Data => {
                    if self.value_start {
                        self.value_start = false;
                        if b == b' ' {
                            return;
                        }
                    }
                    self.keep(b);
                }
                Field::Ignored => {}
            },
        }
    }

    fn keep_all(&mut self, bytes: &[u8]) {
        let room = MAX_EVENT_DATA.saturating_sub(self.data.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.data.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn keep(&mut self, b: u8) {
        if self.data.len() < MAX_EVENT_DATA {
            self.data.push(b);
        } else {
            self.truncated = true;
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(&[u8])) {
        match self.format {
            Format::Ndjson => {
                if !self.line_empty {
                    self.dispatch(on_event);
                }
            }
            Format::Sse => {
                if self.line_empty {
                    if self.has_data {
                        self.dispatch(on_event);
                    }
                } else if self.field == Field::Name && &self.name[..self.name_len] == b"data" {
                    // "data" with no colon: a data line with an empty value.
                    if self.has_data {
                        self.keep(b'\n');
                    }
                    self.has_data = true;
                }
            }
        }
        self.field = Field::Name;
        self.name_len = 0;
        self.line_empty = true;
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if self.truncated {
            self.truncated_events += 1;
        }
        on_event(&self.data);
        self.data.clear();
        self.has_data = false;
        self.truncated = false;
        if self.data.capacity() > 4 * 1024 {
            self.data.shrink_to(1024); // one big event must not pin memory for the stream's life
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(format: Format, input: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut s = EventSplitter::new(format);
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            s.feed(&input[last..c], &mut |d| out.push(String::from_utf8_lossy(d).into_owned()));
            last = c;
        }
        out
    }

    #[test]
    fn sse_every_split_point_and_line_ending() {
        for eol in ["\n", "\r\n", "\r"] {
            let text = format!(
                ": keep-alive{e}{e}data: one{e}{e}event: x{e}data:two{e}data: three{e}{e}id: 5{e}{e}data{e}{e}data: [DONE]{e}{e}",
                e = eol
            );
            let input = text.as_bytes();
            let want = vec!["one", "two\nthree", "", "[DONE]"];
            for a in 0..=input.len() {
                assert_eq!(split_all(Format::Sse, input, &[a]), want, "eol {eol:?} split {a}");
            }
            for a in 0..input.len() {
                let b = (a + 7).min(input.len());
                assert_eq!(split_all(Format::Sse, input, &[a, b]), want);
            }
        }
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_end() {
        let input = b"data: a\r\n\r\ndata: b\r\n\r\n";
        for a in 0..=input.len() {
            assert_eq!(split_all(Format::Sse, input, &[a]), vec!["a", "b"]);
        }
    }

    #[test]
    fn ndjson_lines() {
        let input = b"{\"a\":1}\n\n{\"b\":2}\r\n";
        for a in 0..=input.len() {
            assert_eq!(split_all(Format::Ndjson, input, &[a]), vec!["{\"a\":1}", "{\"b\":2}"]);
        }
    }

    #[test]
    fn oversized_event_is_bounded_and_counted() {
        let mut s = EventSplitter::new(Format::Sse);
        let big = vec![b'x'; MAX_EVENT_DATA * 3];
        let mut sizes = Vec::new();
        s.feed(b"data: ", &mut |_| {});
        s.feed(&big, &mut |_| {});
        s.feed(b"\n\n", &mut |d| sizes.push(d.len()));
        assert_eq!(sizes, vec![MAX_EVENT_DATA]);
        assert_eq!(s.truncated_events, 1);
    }

    #[test]
    fn lose_sync_hands_over_the_cut_event_and_resumes() {
        let mut s = EventSplitter::new(Format::Sse);
        let mut out = Vec::new();
        s.feed(b"data: partial", &mut |d| out.push(d.to_vec()));
        s.lose_sync(&mut |d| out.push(d.to_vec()));
        s.feed(b" rest\n\ndata: next\n\n", &mut |d| out.push(d.to_vec()));
        assert_eq!(out, vec![b"partial".to_vec(), b"next".to_vec()]);
        assert_eq!(s.truncated_events, 1);
        // Nothing in progress: nothing handed over.
        s.lose_sync(&mut |d| out.push(d.to_vec()));
        assert_eq!(out.len(), 2);
    }
}
