//! One HTTP/2 stream: its request (method, path, the body's `model`), then its response, which
//! becomes the same [`RequestRecord`] an HTTP/1.1 exchange gives. SSE/NDJSON DATA goes through
//! the HTTP/1.1 event splitter and classifier; gRPC DATA through the message counter (each
//! message is a chunk; what is inside a protobuf message is not known, so no content check).

use super::grpc::Messages;
use super::hpack::{ContentKind, Headers};
use crate::http::content::{content_units, EventSeen};
use crate::http::events::{EventSplitter, Format, MAX_EVENT_DATA};
use crate::http::model::ModelScan;
use crate::http::payload::classify;
use crate::http::{ParseCounters, RequestRecord};

#[derive(Debug)]
enum Body {
    Events(EventSplitter),
    Grpc(Messages),
    /// Non-streaming JSON prefix, for a stated token count only.
    Json(Vec<u8>),
    Other,
}

/// DATA bytes of a response, or how many were not captured.
#[derive(Clone, Copy)]
enum Data<'a> {
    Bytes(&'a [u8]),
    Lost(u64),
}

#[derive(Debug)]
struct Response {
    record: RequestRecord,
    body: Body,
    last_content_seq: u64,
    terminal_ns: Option<u64>,
}

#[derive(Debug)]
pub struct Stream {
    method: Box<str>,
    path: Box<str>,
    model: ModelScan,
    /// The read that completed the request (END_STREAM), else the last read of it so far.
    request_ns: u64,
    pub request_done: bool,
    read_tid: u32,
    resp: Option<Box<Response>>,
}

impl Stream {
    pub fn new(method: Box<str>, path: Box<str>, ts_ns: u64, tid: u32) -> Self {
        Self {
            method,
            path,
            model: ModelScan::default(),
            request_ns: ts_ns,
            request_done: false,
            read_tid: tid,
            resp: None,
        }
    }

    pub fn responding(&self) -> bool {
        self.resp.is_some()
    }

    pub fn awaiting_first_token(&self) -> bool {
        self.resp.as_ref().is_none_or(|r| r.record.content_write_ns.is_empty())
    }

    /// Request body bytes (only the `model` scan sees them).
    pub fn request_data(&mut self, bytes: &[u8], ts_ns: u64, tid: u32) {
        if !self.request_done {
            self.model.feed(bytes);
            self.request_ns = ts_ns;
            self.read_tid = tid;
        }
    }

    pub fn request_lost(&mut self) {
        self.model.lose();
    }

    pub fn request_end(&mut self, ts_ns: u64, tid: u32) {
        if !self.request_done {
            self.request_done = true;
            self.request_ns = ts_ns;
            self.read_tid = tid;
        }
    }

    /// The response's HEADERS (not an interim 1xx one).
    pub fn respond(&mut self, h: &Headers, ts_ns: u64, tid: u32) {
        let body = match h.content {
            Some(ContentKind::Sse) => Body::Events(EventSplitter::new(Format::Sse)),
            Some(ContentKind::Ndjson) => Body::Events(EventSplitter::new(Format::Ndjson)),
            Some(ContentKind::Grpc) => Body::Grpc(Messages::default()),
            Some(ContentKind::Json) => Body::Json(Vec::new()),
            Some(ContentKind::Other) | None => Body::Other,
        };
        let streaming = matches!(body, Body::Events(_) | Body::Grpc(_));
        let record = RequestRecord {
            method: self.method.to_string(),
            path: self.path.to_string(),
            status: h.status.unwrap_or(0),
            request_ns: self.request_ns,
            first_byte_ns: ts_ns,
            first_token_ns: None,
            end_ns: ts_ns,
            content_write_ns: Vec::new(),
            chunks: 0,
            tokens: None,
            streaming,
            read_tid: self.read_tid,
            write_tid: tid,
            model: self.model.take(),
            partial: None,
            grpc_status: None,
        };
        self.resp = Some(Box::new(Response { record, body, last_content_seq: 0, terminal_ns: None }));
    }

    /// Response DATA bytes carried by write number `seq`.
    pub fn data(&mut self, bytes: &[u8], ts_ns: u64, seq: u64, counters: &mut ParseCounters) {
        self.body(Data::Bytes(bytes), ts_ns, seq, counters);
    }

    /// `n` response DATA bytes were not captured.
    pub fn data_lost(&mut self, n: u64, ts_ns: u64, seq: u64, counters: &mut ParseCounters) {
        self.body(Data::Lost(n), ts_ns, seq, counters);
    }

    fn body(&mut self, d: Data<'_>, ts_ns: u64, seq: u64, counters: &mut ParseCounters) {
        let Some(r) = self.resp.as_deref_mut() else { return };
        r.record.end_ns = ts_ns;
        let Response { record, body, last_content_seq, terminal_ns } = r;
        match body {
            Body::Events(ev) => {
                let mut seen = EventSeen { record, last_content_seq, terminal_ns, counters };
                let mut on_event = |e: &[u8]| seen.event(e, ts_ns, seq);
                match d {
                    Data::Bytes(b) => ev.feed(b, &mut on_event),
                    Data::Lost(_) => ev.lose_sync(&mut on_event),
                }
            }
            Body::Grpc(m) => {
                let n = match d {
                    Data::Bytes(b) => m.feed(b),
                    Data::Lost(n) => m.skip(n),
                };
                content_units(record, last_content_seq, counters, n, ts_ns, seq);
            }
            Body::Json(j) => match d {
                Data::Bytes(b) => {
                    let room = MAX_EVENT_DATA.saturating_sub(j.len());
                    j.extend_from_slice(&b[..b.len().min(room)]);
                }
                Data::Lost(_) => j.clear(),
            },
            Body::Other => {}
        }
    }

    /// Trailers: gRPC's status ends the stream as the server meant it to.
    pub fn trailers(&mut self, h: &Headers, ts_ns: u64, counters: &mut ParseCounters) {
        if let (Some(r), Some(g)) = (self.resp.as_deref_mut(), h.grpc_status) {
            r.terminal_ns = Some(ts_ns);
            r.record.grpc_status = Some(g);
            if g != 0 {
                counters.h2.grpc_errors += 1;
            }
        }
    }

    /// The response ended (END_STREAM at `end_ns`), or was cut (`partial`).
    pub fn finish(
        self,
        end_ns: Option<u64>,
        partial: Option<&'static str>,
        counters: &mut ParseCounters,
    ) -> Option<RequestRecord> {
        let r = *self.resp?;
        let Response { mut record, body, terminal_ns, .. } = r;
        match &body {
            Body::Json(j) => {
                if let Some(t) = classify(j).tokens {
                    record.tokens = Some(t);
                }
                if record.model.is_none() {
                    record.model = ModelScan::of(j);
                }
            }
            Body::Events(ev) => counters.truncated_events += ev.truncated_events,
            Body::Grpc(_) | Body::Other => {}
        }
        match (end_ns, partial) {
            (Some(t), _) => record.end_ns = t,
            (None, Some(reason)) => {
                if let Some(t) = terminal_ns {
                    counters.completed_at_close += 1;
                    record.end_ns = t;
                } else {
                    counters.partial += 1;
                    record.partial = Some(reason);
                }
            }
            (None, None) => {}
        }
        record.first_token_ns = record.content_write_ns.first().copied();
        Some(record)
    }
}
