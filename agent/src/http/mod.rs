//! HTTP/1.1 exchange reconstruction from captured socket bytes: pure code, no I/O.
//!
//! Read order: [`head`] (start line + headers) → [`chunked`] (transfer decoding) → [`events`]
//! (SSE / NDJSON event boundaries) → [`payload`] (is this event generated content? does it state
//! a token count?), [`model`] (the `model` a request names) → [`content`] (what an event or message does to its record) → [`conn`] (one connection's state
//! machine, producing [`RequestRecord`]s).

pub mod chunked;
pub mod conn;
pub mod content;
pub mod events;
pub mod h2;
pub mod head;
pub mod model;
pub mod payload;
pub mod record;
pub mod route;

pub use conn::{Connection, ParseCounters, RequestRecord};

#[cfg(test)]
mod tests;
