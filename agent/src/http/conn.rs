//! One TCP (or Unix) connection as the server sees it: bytes it read (requests) and bytes it
//! wrote (responses), each with the kernel's timestamp. Produces one [`RequestRecord`] per
//! request/response exchange. Pure: no I/O, no clocks, so every split can be unit-tested.

use std::collections::VecDeque;

use super::chunked::ChunkDecoder;
use super::content::EventSeen;
pub use super::content::MAX_CONTENT_WRITES;
use super::events::{EventSplitter, Format, MAX_EVENT_DATA};
use super::h2::{Route, Switch};
use super::head::{self, HeadBuf, RequestHead};
use super::model::ModelScan;
use super::payload::classify;
pub use super::record::{ParseCounters, RequestRecord};

/// Requests read but not yet answered (pipelining); more is not HTTP we can follow.
const MAX_PENDING: usize = 64;

#[derive(Debug)]
struct PartialRequest {
    head: RequestHead,
    /// The body's `model` field, scanned as it is read.
    model: ModelScan,
}

#[derive(Debug)]
enum Inbound {
    /// Joined mid-stream or after garbage: wait for a read that starts with a request line.
    Unsynced,
    Head(HeadBuf),
    Length {
        req: PartialRequest,
        remaining: u64,
    },
    Chunked {
        req: PartialRequest,
        dec: ChunkDecoder,
    },
}

#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(ChunkDecoder),
    /// Ends when the server closes the connection.
    UntilClose,
    /// Bytes were not captured and the framing cannot be followed: ends at close or at the
    /// next response head.
    Lost,
}

#[derive(Debug)]
struct Exchange {
    record: RequestRecord,
    framing: Framing,
    events: Option<EventSplitter>,
    /// Non-streaming JSON body prefix, for a stated token count only.
    json: Option<Vec<u8>>,
    last_content_seq: u64,
    last_write_ns: u64,
    /// The write that completed the stream's terminal event, if one was written.
    terminal_ns: Option<u64>,
}

#[derive(Debug)]
enum Outbound {
    Unsynced,
    Head {
        buf: HeadBuf,
        first_byte_ns: Option<u64>,
    },
    Body(Box<Exchange>),
    /// Upgraded (WebSocket and the like): nothing more to follow on this connection.
    Gone,
}

#[derive(Debug)]
pub struct Connection {
    inbound: Inbound,
    outbound: Outbound,
    pending: VecDeque<Pending>,
    /// Requests read beyond `MAX_PENDING`, counted, their answers still to come.
    overflow: u64,
    write_seq: u64,
    pub counters: ParseCounters,
    /// Thread of the syscall being fed (set by the caller before `on_read`/`on_write`).
    pub current_tid: u32,
    /// Time of the last read or write fed (set by the caller): idle streams are ended by it.
    pub last_ns: u64,
    /// HTTP/2 (after the client preface) or HTTP/1.1.
    h2: Switch,
}

#[derive(Debug)]
struct Pending {
    head: RequestHead,
    model: Option<String>,
    request_ns: u64,
    read_tid: u32,
}

impl Connection {
    /// `fresh`: the connection was just accepted, so its first bytes are a request head.
    /// Otherwise (joined an existing connection) wait for a read that starts with one.
    pub fn new(fresh: bool) -> Self {
        Self {
            inbound: if fresh { Inbound::Head(HeadBuf::default()) } else { Inbound::Unsynced },
            outbound: if fresh {
                Outbound::Head { buf: HeadBuf::default(), first_byte_ns: None }
            } else {
                Outbound::Unsynced
            },
            pending: VecDeque::new(),
            overflow: 0,
            write_seq: 0,
            last_ns: 0,
            counters: ParseCounters::default(),
            current_tid: 0,
            h2: Switch::Undecided(0),
        }
    }

    /// Requests waiting for their first token: read and unanswered, or answering with no
    /// content event yet (a non-streaming response waits for its whole body).
    pub fn awaiting_first_token(&self) -> usize {
        if let Switch::H2(c) = &self.h2 {
            return c.awaiting_first_token();
        }
        let current = match &self.outbound {
            Outbound::Body(ex) => usize::from(ex.record.content_write_ns.is_empty()),
            _ => 0,
        };
        self.pending.len() + current
    }

    /// Requests read and not yet fully answered.
    pub fn in_flight(&self) -> usize {
        if let Switch::H2(c) = &self.h2 {
            return c.in_flight();
        }
        self.pending.len() + usize::from(matches!(self.outbound, Outbound::Body(_)))
    }

    /// The server read `data` (the first `data.len()` of `len` bytes moved) at `ts_ns`.
    /// Records an HTTP/2 connection finishes while reading come out of [`Self::drain`].
    pub fn on_read(&mut self, ts_ns: u64, data: &[u8], len: u64) {
        let synced = !matches!(self.inbound, Inbound::Unsynced);
        let at_head = !synced || matches!(&self.inbound, Inbound::Head(b) if b.is_empty());
        match self.h2.read(ts_ns, data, len, self.current_tid, at_head, synced, &mut self.counters) {
            Route::H2 => {}
            Route::Http1 { prefix } => {
                if !prefix.is_empty() {
                    self.read_http1(ts_ns, prefix, prefix.len() as u64);
                }
                self.read_http1(ts_ns, data, len);
            }
        }
    }

    /// Records finished by reads (an HTTP/2 stream reset by the client).
    pub fn drain(&mut self, out: &mut Vec<RequestRecord>) {
        if let Switch::H2(c) = &mut self.h2 {
            c.drain(out);
        }
    }

    fn read_http1(&mut self, ts_ns: u64, data: &[u8], len: u64) {
        let mut rest = data;
        loop {
            match &mut self.inbound {
                Inbound::Unsynced => {
                    if rest.is_empty() || !head::looks_like_request(rest) {
                        return; // the rest of this read is a body we cannot place
                    }
                    self.inbound = Inbound::Head(HeadBuf::default());
                }
                Inbound::Head(buf) => {
                    if rest.is_empty() {
                        break;
                    }
                    match buf.feed(rest) {
                        Ok(None) => {
                            rest = &[];
                        }
                        Ok(Some(used)) => {
                            rest = &rest[used..];
                            let bytes = buf.take();
                            match head::parse_request(&bytes) {
                                Ok(req) => self.start_request(ts_ns, req),
                                Err(_) => {
                                    self.counters.bad_heads += 1;
                                    self.inbound = Inbound::Unsynced;
                                    return;
                                }
                            }
                        }
                        Err(_) => {
                            self.counters.bad_heads += 1;
                            self.inbound = Inbound::Unsynced;
                            return;
                        }
                    }
                }
                Inbound::Length { remaining, req } => {
                    let n = (rest.len() as u64).min(*remaining);
                    req.model.feed(&rest[..n as usize]);
                    *remaining -= n;
                    rest = &rest[n as usize..];
                    if *remaining == 0 {
                        self.finish_request(ts_ns);
                    } else {
                        break;
                    }
                }
                Inbound::Chunked { dec, req } => match dec.feed(rest, &mut |body| req.model.feed(body)) {
                    Ok(used) => {
                        rest = &rest[used..];
                        if dec.is_done() {
                            self.finish_request(ts_ns);
                        } else {
                            break;
                        }
                    }
                    Err(_) => {
                        self.counters.bad_chunks += 1;
                        self.inbound = Inbound::Unsynced;
                        return;
                    }
                },
            }
        }
        let gap = len.saturating_sub(data.len() as u64);
        if gap > 0 {
            self.skip_inbound(ts_ns, gap);
        }
    }

    fn skip_inbound(&mut self, ts_ns: u64, gap: u64) {
        match &mut self.inbound {
            Inbound::Length { remaining, req } if gap <= *remaining => {
                req.model.lose();
                *remaining -= gap;
                if *remaining == 0 {
                    self.finish_request(ts_ns);
                }
            }
            Inbound::Chunked { dec, req } => {
                req.model.lose();
                if dec.skip(gap).is_err() {
                    self.counters.framing_lost += 1;
                    self.inbound = Inbound::Unsynced;
                }
            }
            _ => {
                self.counters.framing_lost += 1;
                self.inbound = Inbound::Unsynced;
            }
        }
    }

    fn start_request(&mut self, ts_ns: u64, head: RequestHead) {
        let req = PartialRequest { head, model: ModelScan::default() };
        self.inbound = if req.head.headers.chunked {
            Inbound::Chunked { req, dec: ChunkDecoder::default() }
        } else {
            match req.head.headers.content_length {
                Some(n) if n > 0 => Inbound::Length { req, remaining: n },
                _ => {
                    self.push_pending(req.head, None, ts_ns);
                    Inbound::Head(HeadBuf::default())
                }
            }
        };
    }

    fn finish_request(&mut self, ts_ns: u64) {
        let inbound = std::mem::replace(&mut self.inbound, Inbound::Head(HeadBuf::default()));
        match inbound {
            Inbound::Length { mut req, .. } | Inbound::Chunked { mut req, .. } => {
                let model = req.model.take();
                self.push_pending(req.head, model, ts_ns)
            }
            other => self.inbound = other,
        }
    }

    /// A request read in full. Beyond `MAX_PENDING` unanswered ones (and while any such is
    /// unanswered) requests are counted, not kept, so the responses still line up: the ones
    /// kept are answered first (HTTP/1.1 answers in order), then the skipped ones.
    fn push_pending(&mut self, head: RequestHead, model: Option<String>, request_ns: u64) {
        if self.overflow > 0 || self.pending.len() >= MAX_PENDING {
            self.overflow += 1;
            self.counters.pipeline_overflow += 1;
            return;
        }
        self.pending.push_back(Pending { head, model, request_ns, read_tid: self.current_tid });
    }

    /// The server wrote `data` (the first `data.len()` of `len` bytes moved) at `ts_ns`.
    /// Finished exchanges are appended to `out`.
    pub fn on_write(&mut self, ts_ns: u64, data: &[u8], len: u64, out: &mut Vec<RequestRecord>) {
        if let Switch::H2(c) = &mut self.h2 {
            c.on_write(ts_ns, data, len, self.current_tid, &mut self.counters, out);
            return;
        }
        self.write_seq += 1;
        let seq = self.write_seq;
        let mut rest = data;
        while !rest.is_empty() {
            match &mut self.outbound {
                Outbound::Gone => return,
                Outbound::Unsynced => {
                    if !head::looks_like_response(rest) {
                        return;
                    }
                    self.outbound = Outbound::Head { buf: HeadBuf::default(), first_byte_ns: None };
                }
                Outbound::Head { buf, first_byte_ns } => {
                    let first = *first_byte_ns.get_or_insert(ts_ns);
                    match buf.feed(rest) {
                        Ok(None) => rest = &[],
                        Ok(Some(used)) => {
                            rest = &rest[used..];
                            let bytes = buf.take();
                            match head::parse_response(&bytes) {
                                Ok(resp) => self.start_response(first, ts_ns, resp, out),
                                Err(_) => {
                                    self.counters.bad_heads += 1;
                                    self.outbound = Outbound::Unsynced;
                                    return;
                                }
                            }
                        }
                        Err(_) => {
                            self.counters.bad_heads += 1;
                            self.outbound = Outbound::Unsynced;
                            return;
                        }
                    }
                }
                Outbound::Body(ex) => {
                    if matches!(ex.framing, Framing::Lost) && head::looks_like_response(rest) {
                        self.finish_response(None, out);
                        continue;
                    }
                    ex.last_write_ns = ts_ns;
                    let used = match feed_body(ex, rest, ts_ns, seq, &mut self.counters) {
                        Ok(used) => used,
                        Err(()) => {
                            self.counters.bad_chunks += 1;
                            ex.framing = Framing::Lost;
                            rest.len()
                        }
                    };
                    rest = &rest[used..];
                    let done = match &ex.framing {
                        Framing::Length(0) => true,
                        Framing::Chunked(dec) => dec.is_done(),
                        _ => false,
                    };
                    if done {
                        self.finish_response(Some(ts_ns), out);
                    }
                }
            }
        }
        let gap = len.saturating_sub(data.len() as u64);
        if gap > 0 {
            self.skip_outbound(ts_ns, gap, out);
        }
    }

    fn skip_outbound(&mut self, ts_ns: u64, gap: u64, out: &mut Vec<RequestRecord>) {
        match &mut self.outbound {
            Outbound::Body(ex) => {
                ex.last_write_ns = ts_ns;
                let seq = self.write_seq;
                let Exchange { record, events, last_content_seq, terminal_ns, .. } = &mut **ex;
                if let Some(ev) = events {
                    let mut seen = EventSeen { record, last_content_seq, terminal_ns, counters: &mut self.counters };
                    ev.lose_sync(&mut |data| seen.event(data, ts_ns, seq));
                }
                let ok = match &mut ex.framing {
                    Framing::Length(remaining) if gap <= *remaining => {
                        *remaining -= gap;
                        true
                    }
                    Framing::Chunked(dec) => dec.skip(gap).is_ok(),
                    Framing::UntilClose | Framing::Lost => true,
                    Framing::Length(_) => false,
                };
                if !ok {
                    self.counters.framing_lost += 1;
                    ex.framing = Framing::Lost;
                } else if matches!(ex.framing, Framing::Length(0)) {
                    self.finish_response(Some(ts_ns), out);
                }
            }
            Outbound::Head { .. } => {
                self.counters.framing_lost += 1;
                self.outbound = Outbound::Unsynced;
            }
            Outbound::Unsynced | Outbound::Gone => {}
        }
    }

    fn start_response(
        &mut self,
        first_byte_ns: u64,
        ts_ns: u64,
        resp: head::ResponseHead,
        out: &mut Vec<RequestRecord>,
    ) {
        if resp.status == 101 {
            self.counters.upgraded += 1;
            self.outbound = Outbound::Gone;
            return;
        }
        if (100..200).contains(&resp.status) {
            // Interim response (100 Continue): the real head follows; its first byte is the one that counts.
            self.outbound = Outbound::Head { buf: HeadBuf::default(), first_byte_ns: None };
            return;
        }
        let Some(req) = self.pending.pop_front() else {
            if self.overflow > 0 {
                // The answer to a request counted in `pipeline_overflow`: skip its body.
                self.overflow -= 1;
                self.outbound = Outbound::Unsynced;
                return;
            }
            self.counters.unmatched_responses += 1;
            // Still follow the framing so the next exchange on this connection lines up.
            self.outbound = Outbound::Unsynced;
            return;
        };
        let h = &resp.headers;
        let no_body = req.head.method == "HEAD" || resp.status == 204 || resp.status == 304;
        let framing = if no_body {
            Framing::Length(0)
        } else if h.chunked {
            Framing::Chunked(ChunkDecoder::default())
        } else if let Some(n) = h.content_length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        let events = if h.event_stream {
            Some(EventSplitter::new(Format::Sse))
        } else if h.ndjson {
            Some(EventSplitter::new(Format::Ndjson))
        } else {
            None
        };
        let json = (events.is_none() && h.json).then(Vec::new);
        let record = RequestRecord {
            method: req.head.method,
            path: req.head.path,
            status: resp.status,
            request_ns: req.request_ns,
            first_byte_ns,
            first_token_ns: None,
            end_ns: ts_ns,
            content_write_ns: Vec::new(),
            chunks: 0,
            tokens: None,
            streaming: events.is_some(),
            read_tid: req.read_tid,
            write_tid: self.current_tid,
            partial: None,
            grpc_status: None,
            model: req.model,
        };
        let done = matches!(framing, Framing::Length(0));
        self.outbound = Outbound::Body(Box::new(Exchange {
            record,
            framing,
            events,
            json,
            last_content_seq: 0,
            last_write_ns: ts_ns,
            terminal_ns: None,
        }));
        if done {
            self.finish_response(Some(ts_ns), out);
        }
    }

    /// Ends the current exchange: `end_ns` is the write that completed it, or for bodies
    /// delimited by close (or lost framing) the last write seen.
    fn finish_response(&mut self, end_ns: Option<u64>, out: &mut Vec<RequestRecord>) {
        let outbound =
            std::mem::replace(&mut self.outbound, Outbound::Head { buf: HeadBuf::default(), first_byte_ns: None });
        let Outbound::Body(ex) = outbound else {
            self.outbound = outbound;
            return;
        };
        let mut ex = *ex;
        if let Some(json) = &ex.json {
            if let Some(t) = classify(json).tokens {
                ex.record.tokens = Some(t);
            }
            if ex.record.model.is_none() {
                ex.record.model = ModelScan::of(json);
            }
        }
        if let Some(ev) = &ex.events {
            self.counters.truncated_events += ev.truncated_events;
        }
        ex.record.end_ns = end_ns.unwrap_or(ex.last_write_ns);
        ex.record.first_token_ns = ex.record.content_write_ns.first().copied();
        out.push(ex.record);
    }

    /// The connection ended at `ts_ns` (closed, or its process is gone: `reason`). A response
    /// in progress is finished when its framing allows it or its stream said it was complete,
    /// and is otherwise reported as partial with `reason`; requests never answered are counted.
    pub fn end(&mut self, reason: &'static str, out: &mut Vec<RequestRecord>) {
        if let Switch::H2(c) = &mut self.h2 {
            c.end(reason, &mut self.counters, out);
        }
        if let Outbound::Body(ex) = &mut self.outbound {
            if matches!(ex.framing, Framing::UntilClose | Framing::Lost) {
                self.finish_response(None, out);
            } else if let Some(t) = ex.terminal_ns {
                self.counters.completed_at_close += 1;
                self.finish_response(Some(t), out);
            } else {
                self.counters.aborted += 1;
                self.counters.partial += 1;
                ex.record.partial = Some(reason);
                self.finish_response(None, out);
            }
        }
        self.counters.aborted += self.pending.len() as u64;
        self.pending.clear();
        self.overflow = 0;
        self.outbound = Outbound::Gone;
        self.inbound = Inbound::Unsynced;
    }
}

/// Feeds response body bytes through the framing and the event splitter. Returns how many bytes
/// belonged to this body, or `Err` when the chunked framing is malformed.
fn feed_body(ex: &mut Exchange, bytes: &[u8], ts_ns: u64, seq: u64, counters: &mut ParseCounters) -> Result<usize, ()> {
    let Exchange { record, framing, events, json, last_content_seq, terminal_ns, .. } = ex;
    let mut on_body = |body: &[u8]| {
        if let Some(ev) = events.as_mut() {
            let mut seen = EventSeen { record, last_content_seq, terminal_ns, counters };
            ev.feed(body, &mut |data| seen.event(data, ts_ns, seq));
        } else if let Some(j) = json.as_mut() {
            let room = MAX_EVENT_DATA.saturating_sub(j.len());
            j.extend_from_slice(&body[..body.len().min(room)]);
        }
    };
    match framing {
        Framing::Length(remaining) => {
            let n = (bytes.len() as u64).min(*remaining) as usize;
            on_body(&bytes[..n]);
            *remaining -= n as u64;
            Ok(n)
        }
        Framing::Chunked(dec) => dec.feed(bytes, &mut on_body).map_err(|_| ()),
        Framing::UntilClose | Framing::Lost => {
            on_body(bytes);
            Ok(bytes.len())
        }
    }
}
