#!/usr/bin/env node
// SSE test server (Node `http` module) that imitates an LLM inference server and logs
// its own ground-truth write timing.
//
//   node tests/servers/sse_server.js --port 0 --truth /tmp/truth-node.jsonl
//
// Protocol and truth schema: tests/servers/README.md. The SSE payloads mirror
// testbed/src/proto.rs; keep them in step.
//
// Unlike the Rust and Python servers, this one lets Node do the HTTP work, because the
// point is to see what a real Node server emits:
//   * chunked framing: one res.write() per logical write; Node adds the chunk framing
//     (size line + CRLF) and sends it with the data in one writev;
//   * close framing: Transfer-Encoding is removed and `Connection: close` set, so Node
//     writes the raw body and closes the socket after res.end();
//   * headers: res.flushHeaders() sends them in their own write; with coalesce=1 we
//     skip that and Node glues them onto the first res.write() (the role frame);
//   * json framing: res.end(body) sends headers + body together.
// A truth entry's ts_ns is taken right before the res.* call; its `bytes` is the
// growth of socket.bytesWritten across the call, i.e. exactly what Node queued for the
// socket (headers and chunk framing included). res.write() corks the socket and would
// uncork it on the next tick; timedWrite uncorks it at once, so the syscall follows the
// stamp within the same JS call (CI saw the next-tick uncork trail the stamp by 0.9 ms
// on a loaded 2-core VM).
// Timestamps: process.hrtime.bigint() = uv_hrtime() = CLOCK_MONOTONIC.
'use strict';

const fs = require('fs');
const http = require('http');
const https = require('https');

const SERVER_NAME = 'node';
const STREAM_PREFIX = '/v1/chat/completions';
const PROMPT_TOKENS = 5;
const MAX_TOKENS = 1000000;
const SPLIT_GAP_MS = 1;
const COMMENT_TEXT = ': keep-alive';
const ROLE_JSON =
  '{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}';
const EOLS = { lf: '\n', crlf: '\r\n', cr: '\r' };

// Logical write calls on client sockets (flushHeaders / write / end that moved bytes),
// for GET /stats, which does not count itself.
let writesTotal = 0;

class BadRequest extends Error {}

// ------------------------------------------------------------- protocol (mirrors proto.rs)

function parseCount(key, value, min) {
  if (!/^\d+$/.test(value)) throw new BadRequest(`bad ${key} ${JSON.stringify(value)}`);
  const n = Number(value);
  if (n < min || n > MAX_TOKENS) throw new BadRequest(`bad ${key} ${JSON.stringify(value)}`);
  return n;
}

function parseMs(key, value) {
  const v = Number(value);
  if (value === '' || !Number.isFinite(v) || v < 0) {
    throw new BadRequest(`bad ${key} ${JSON.stringify(value)}`);
  }
  return v;
}

function parseBool(key, value) {
  if (value === '1' || value === 'true') return true;
  if (value === '0' || value === 'false') return false;
  throw new BadRequest(`bad ${key} ${JSON.stringify(value)}`);
}

function parseParams(query) {
  const p = {
    tokens: 16, interval_ms: 5, prefill_ms: 20, framing: 'chunked', eol: 'lf', split: false,
    batch: 1, coalesce: false, comments: false, usage: true, done: true,
  };
  for (const pair of query.split('&').filter(Boolean)) {
    const eq = pair.indexOf('=');
    const key = eq < 0 ? pair : pair.slice(0, eq);
    const value = eq < 0 ? '' : pair.slice(eq + 1);
    switch (key) {
      case 'tokens': p.tokens = parseCount(key, value, 0); break;
      case 'batch': p.batch = parseCount(key, value, 1); break;
      case 'interval_ms': case 'prefill_ms': p[key] = parseMs(key, value); break;
      case 'framing':
        if (!['chunked', 'close', 'json'].includes(value)) throw new BadRequest(`bad framing ${value}`);
        p.framing = value;
        break;
      case 'eol':
        if (!(value in EOLS)) throw new BadRequest(`bad eol ${value}`);
        p.eol = value;
        break;
      case 'split': case 'coalesce': case 'comments': case 'usage': case 'done':
        p[key] = parseBool(key, value);
        break;
      default: break; // unknown keys are ignored
    }
  }
  return p;
}

const sseFrame = (data, eol) => `data: ${data}${eol}${eol}`;
const contentJson = (i) =>
  `{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"tok${i} "}}]}`;
const usageJson = (n) =>
  `{"prompt_tokens":${PROMPT_TOKENS},"completion_tokens":${n},"total_tokens":${n + PROMPT_TOKENS}}`;

function finishJson(p) {
  const usage = p.usage ? `,"usage":${usageJson(p.tokens)}` : '';
  return `{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]${usage}}`;
}

function completionJson(p) {
  let content = '';
  for (let i = 0; i < p.tokens; i++) content += `tok${i} `;
  const usage = p.usage ? `,"usage":${usageJson(p.tokens)}` : '';
  return `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"${content}"},"finish_reason":"stop"}]${usage}}`;
}

// SSE payloads of the stream as [{delayMs, payload: Buffer, events}], one per
// res.write(). Same schedule as proto::plan() minus headers, chunk framing and the
// terminator, which Node produces itself.
function ssePlan(p) {
  const eol = EOLS[p.eol];
  const steps = [{ delayMs: 0, payload: Buffer.from(sseFrame(ROLE_JSON, eol)), events: 0 }];
  for (let first = 0; first < p.tokens; first += p.batch) {
    const parts = [];
    const ends = [];
    let len = 0;
    for (let i = first; i < Math.min(first + p.batch, p.tokens); i++) {
      const b = Buffer.from(sseFrame(contentJson(i), eol));
      parts.push(b);
      len += b.length;
      ends.push(len);
    }
    const payload = Buffer.concat(parts);
    const eventsIn = (lo, hi) => ends.filter((e) => e > lo && e <= hi).length;

    let wait = first === 0 ? p.prefill_ms : p.interval_ms;
    if (p.comments) {
      // Halfway through the wait, so mistaking it for a token shows as wait/2.
      const half = wait / 2;
      steps.push({ delayMs: half, payload: Buffer.from(`${COMMENT_TEXT}${eol}${eol}`), events: 0 });
      wait -= half;
    }
    if (p.split) {
      const cut = Math.floor(payload.length / 2);
      steps.push({ delayMs: wait, payload: payload.subarray(0, cut), events: eventsIn(0, cut) });
      steps.push({ delayMs: SPLIT_GAP_MS, payload: payload.subarray(cut), events: eventsIn(cut, payload.length) });
    } else {
      steps.push({ delayMs: wait, payload, events: eventsIn(0, payload.length) });
    }
  }
  steps.push({ delayMs: p.tokens === 0 ? p.prefill_ms : 0, payload: Buffer.from(sseFrame(finishJson(p), eol)), events: 0 });
  if (p.done) steps.push({ delayMs: 0, payload: Buffer.from(sseFrame('[DONE]', eol)), events: 0 });
  return steps;
}

// ------------------------------------------------------------- server

// setTimeout measures from the event loop's cached millisecond clock, so on its own it
// can fire up to ~1 ms early by CLOCK_MONOTONIC. Re-arm until the deadline has really
// passed, so delays are never shorter than asked (like tokio's and time.sleep()).
async function sleep(ms) {
  const deadline = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
  for (;;) {
    const left = Number(deadline - process.hrtime.bigint()) / 1e6;
    if (left <= 0) return;
    await new Promise((resolve) => setTimeout(resolve, left));
  }
}

// Every res.write() corks the socket and uncorks it on process.nextTick, so all writes
// issued in one tick leave in ONE writev. Waiting for the next event-loop turn before a
// write (setImmediate when there is no real delay) gives each res.write() its own
// syscall, which keeps truth writes and syscalls one-to-one.
async function pause(ms) {
  if (ms > 0) await sleep(ms);
  else await new Promise((resolve) => setImmediate(resolve));
}

// Serialises BigInt nanosecond timestamps as plain JSON integers: Number would lose
// precision once CLOCK_MONOTONIC passes 2^53 ns (~104 days of uptime).
function toJson(obj) {
  return JSON.stringify(obj, (k, v) => (typeof v === 'bigint' ? `__bigint${v}__` : v))
    .replace(/"__bigint(\d+)__"/g, '$1');
}

function parseArgs(argv) {
  const args = { port: 0, truth: null, tlsCert: null, tlsKey: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.includes('=') ? a.split(/=(.*)/s) : [a, undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    if (flag === '--port') args.port = Number(value());
    else if (flag === '--truth') args.truth = value();
    else if (flag === '--tls-cert') args.tlsCert = value();
    else if (flag === '--tls-key') args.tlsKey = value();
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.truth || !Number.isInteger(args.port)) {
    throw new Error('usage: sse_server.js --truth FILE [--port P] [--tls-cert PEM --tls-key PEM]');
  }
  return args;
}

// Runs one res.* call and describes it as a truth write entry. Returns null when the
// call queued no bytes (res.end() of a close-delimited body), which is not a write.
function timedWrite(res, events, fn, isHead = false) {
  const sock = res.socket;
  const before = sock ? sock.bytesWritten : 0;
  const ts = process.hrtime.bigint();
  fn();
  // Flush now rather than on the next tick (see the header comment).
  if (sock) while (sock.writableCorked > 0) sock.uncork();
  const bytes = sock ? sock.bytesWritten - before : 0;
  // A TLS socket counts a write's bytes only once the write completes, which is later when an
  // earlier write is still in flight: flushing the response head always writes, whatever the
  // count says at this instant.
  if (bytes <= 0 && !isHead) return null;
  writesTotal++;
  return { ts_ns: ts, bytes, content_events: events };
}

function sendSimple(res, status, contentType, body, count = true) {
  const buf = Buffer.from(body);
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': buf.length });
  if (count) timedWrite(res, 0, () => res.end(buf));
  else res.end(buf);
}

async function serveStream(req, res, p, meta, truthFd) {
  let aborted = false;
  res.on('close', () => { aborted = !res.writableFinished; });
  const writes = [];
  const record = (w) => { if (w) writes.push(w); };

  if (p.framing === 'json') {
    const body = Buffer.from(completionJson(p));
    await sleep(p.prefill_ms + p.tokens * p.interval_ms);
    if (aborted) return;
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
    record(timedWrite(res, 0, () => res.end(body)));
  } else {
    res.setHeader('Content-Type', 'text/event-stream');
    res.setHeader('Cache-Control', 'no-cache');
    if (p.framing === 'close') {
      // No Content-Length and no chunking: Node then delimits the body by closing.
      res.setHeader('Connection', 'close');
      res.removeHeader('Transfer-Encoding');
    }
    res.writeHead(200);
    if (!p.coalesce) record(timedWrite(res, 0, () => res.flushHeaders(), true));
    for (const step of ssePlan(p)) {
      await pause(step.delayMs);
      if (aborted) return;
      record(timedWrite(res, step.events, () => res.write(step.payload)));
    }
    await pause(0);
    if (aborted) return;
    record(timedWrite(res, 0, () => res.end()));
  }

  const content = writes.filter((w) => w.content_events > 0);
  const line = toJson({
    server: SERVER_NAME,
    id: meta.id,
    path: meta.path,
    method: meta.method,
    request_ns: meta.requestNs,
    writes,
    first_byte_ns: writes[0].ts_ns,
    first_token_ns: content.length ? content[0].ts_ns : null,
    end_ns: writes[writes.length - 1].ts_ns,
    content_writes: content.length,
    chunks: content.reduce((s, w) => s + w.content_events, 0),
    tokens: p.usage ? p.tokens : null,
    status: 200,
  });
  // Synchronous so the record is in the file (not a userspace buffer) when we return.
  fs.writeSync(truthFd, line + '\n');
}

function handle(req, res, requestNs, truthFd) {
  const q = req.url.indexOf('?');
  const path = q < 0 ? req.url : req.url.slice(0, q);
  const query = q < 0 ? '' : req.url.slice(q + 1);

  if (req.method === 'GET' && path === '/health') return sendSimple(res, 200, 'text/plain', 'ok');
  if (req.method === 'GET' && path === '/stats') {
    return sendSimple(res, 200, 'application/json', JSON.stringify({ writes: writesTotal }), false);
  }
  const rest = path.startsWith(STREAM_PREFIX) ? path.slice(STREAM_PREFIX.length) : null;
  if (rest === null || (rest !== '' && !rest.startsWith('/'))) {
    return sendSimple(res, 404, 'text/plain', 'not found');
  }
  let p;
  try {
    p = parseParams(query);
  } catch (e) {
    if (e instanceof BadRequest) return sendSimple(res, 400, 'text/plain', e.message);
    throw e;
  }
  const meta = { id: rest.split('/').pop(), path, method: req.method, requestNs };
  serveStream(req, res, p, meta, truthFd).catch((e) => {
    console.error('stream failed:', e);
    res.destroy();
  });
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const truthFd = fs.openSync(args.truth, 'w');
  // --tls-cert/--tls-key: HTTPS through Node's own (statically linked) OpenSSL.
  const tls = args.tlsCert ? { cert: fs.readFileSync(args.tlsCert), key: fs.readFileSync(args.tlsKey) } : null;
  const onRequest = (req, res) => {
    // request_ns must be when the last request byte was read, not when JS got to 'end'
    // (which can lag by milliseconds behind other streams' timers). 'request' is emitted
    // synchronously from the parser inside the read callback, right after the read syscall;
    // the parser then consumes the rest of that same buffer before any tick runs. So if the
    // message is complete by the next tick, the read that delivered the headers also
    // delivered the body, and the 'request' time is the truth. Otherwise fall back to 'end'.
    const atRequest = process.hrtime.bigint();
    let completeInFirstRead = false;
    process.nextTick(() => { completeInFirstRead = req.complete; });
    req.on('data', () => {});
    req.on('end', () => {
      const requestNs = completeInFirstRead ? atRequest : process.hrtime.bigint();
      handle(req, res, requestNs, truthFd);
    });
  };
  const server = tls ? https.createServer(tls, onRequest) : http.createServer(onRequest);
  // Idle keep-alive connections would otherwise be dropped after 5 s, which a slow
  // test driving a pooled client can hit between requests.
  server.keepAliveTimeout = 60000;
  server.headersTimeout = 65000;
  server.listen(args.port, '127.0.0.1', () => {
    process.stdout.write(`LISTENING ${server.address().port}\n`);
  });
  const stop = () => {
    server.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

// The HTTP/2 server (sse_server_h2.js) reuses the protocol half of this file.
module.exports = { parseParams, ssePlan, sleep, pause, toJson, BadRequest, STREAM_PREFIX };

if (require.main === module) main();
