#!/usr/bin/env node
// SSE test server over HTTP/2 (Node `http2` module), cleartext with prior knowledge or, with
// --tls-cert/--tls-key, over TLS (ALPN h2 only, Node's own OpenSSL): the same
// protocol, stream plan and truth schema as sse_server.js (tests/servers/README.md), one
// HTTP/2 stream per request, many streams per connection.
//
//   node tests/servers/sse_server_h2.js --port 0 --truth /tmp/truth-h2.jsonl
//   node tests/servers/sse_server_h2.js --port 0 --truth /tmp/t.jsonl --tls-cert c.pem --tls-key k.pem
//
// Truth: request_ns is stamped in the 'stream' event, which nghttp2 raises synchronously
// while Node processes the read that carried the request's HEADERS (with END_STREAM: the
// tests use GET); the handler itself runs on the next loop turn. A write's ts_ns is stamped right before stream.respond()/stream.write();
// Node's http2 session sends what was queued when the JS call returns to the event loop, so
// every write is made on its own loop turn (`pause`), keeping truth stamps and syscalls one
// to one. A stream the client resets is recorded with "reset": true and the writes made
// before the reset was seen.
// Timestamps: process.hrtime.bigint() = CLOCK_MONOTONIC.
'use strict';

const fs = require('fs');
const http2 = require('http2');
const { parseParams, ssePlan, pause, toJson, BadRequest, STREAM_PREFIX } = require('./sse_server.js');

function parseArgs(argv) {
  const args = { port: 0, truth: null, tlsCert: null, tlsKey: null };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].includes('=') ? argv[i].split(/=(.*)/s) : [argv[i], undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    if (flag === '--port') args.port = Number(value());
    else if (flag === '--truth') args.truth = value();
    else if (flag === '--tls-cert') args.tlsCert = value();
    else if (flag === '--tls-key') args.tlsKey = value();
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!args.truth || !args.tlsCert !== !args.tlsKey) {
    throw new Error('usage: sse_server_h2.js --truth FILE [--port P] [--tls-cert PEM --tls-key PEM]');
  }
  return args;
}

async function serve(stream, meta, p, truthFd) {
  let reset = false;
  stream.on('close', () => { reset = reset || stream.rstCode !== 0; });
  stream.on('error', () => { reset = true; });
  const writes = [];
  const timed = (events, fn) => {
    const ts = process.hrtime.bigint();
    fn();
    writes.push({ ts_ns: ts, content_events: events });
  };
  timed(0, () => stream.respond({ ':status': 200, 'content-type': 'text/event-stream', 'cache-control': 'no-cache' }));
  for (const step of ssePlan(p)) {
    await pause(step.delayMs);
    if (reset || stream.destroyed) break;
    timed(step.events, () => stream.write(step.payload));
  }
  if (!reset && !stream.destroyed) {
    await pause(0);
    if (!stream.destroyed) timed(0, () => stream.end());
  } else {
    reset = true;
  }
  const content = writes.filter((w) => w.content_events > 0);
  const line = toJson({
    server: 'node-h2',
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
    reset,
  });
  fs.writeSync(truthFd, line + '\n');
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const truthFd = fs.openSync(args.truth, 'w');
  const settings = { maxConcurrentStreams: 128 };
  // TLS: HTTP/2 only (ALPN h2, no HTTP/1.1 fallback), through the OpenSSL linked into node.
  const server = args.tlsCert
    ? http2.createSecureServer({
        settings,
        allowHTTP1: false,
        ALPNProtocols: ['h2'],
        cert: fs.readFileSync(args.tlsCert),
        key: fs.readFileSync(args.tlsKey),
      })
    : http2.createServer({ settings });
  server.on('stream', (stream, headers) => {
    const requestNs = process.hrtime.bigint();
    // Several requests often arrive in one read and their 'stream' events follow each other
    // in one go: keep each handler to the stamp, so a later stream's stamp does not wait for
    // an earlier one's set-up work.
    setImmediate(() => onStream(stream, headers, requestNs));
  });
  const onStream = (stream, headers, requestNs) => {
    const url = headers[':path'] || '/';
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    const query = q < 0 ? '' : url.slice(q + 1);
    stream.on('error', () => {});
    if (path === '/health') {
      stream.respond({ ':status': 200, 'content-type': 'text/plain' });
      stream.end('ok');
      return;
    }
    const rest = path.startsWith(STREAM_PREFIX) ? path.slice(STREAM_PREFIX.length) : null;
    if (rest === null || (rest !== '' && !rest.startsWith('/'))) {
      stream.respond({ ':status': 404 });
      stream.end();
      return;
    }
    let p;
    try {
      p = parseParams(query);
    } catch (e) {
      if (!(e instanceof BadRequest)) throw e;
      stream.respond({ ':status': 400 });
      stream.end(e.message);
      return;
    }
    stream.resume(); // a GET has no body; drain anything else
    const meta = { id: rest.split('/').pop(), path, method: headers[':method'], requestNs };
    serve(stream, meta, p, truthFd).catch((e) => {
      console.error('stream failed:', e);
      stream.destroy();
    });
  };
  server.listen(args.port, '127.0.0.1', () => {
    process.stdout.write(`LISTENING ${server.address().port}\n`);
  });
  const stop = () => process.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
