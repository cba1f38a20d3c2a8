#!/usr/bin/env node
// HTTP/2 load client for sse_server_h2.js (cleartext, or TLS with ALPN h2 given `--ca PEM`): `--connections C` connections, each with
// `--streams S` concurrent GET streams of `/v1/chat/completions/<prefix><n>?<query>`.
// With `--reset-after K`, the first stream of each connection is reset by the client
// (RST_STREAM CANCEL) once it has received K `data:` events with content.
// Prints one JSON line per stream ({id, sent_ns, events, reset, error}) then `DONE n`.
//
//   node tests/servers/h2_client.js --port P --connections 2 --streams 4 --query tokens=8 --prefix a
//   node tests/servers/h2_client.js --port P --ca cert.pem ...
'use strict';

const fs = require('fs');
const http2 = require('http2');

function parseArgs(argv) {
  const a = { port: 0, connections: 1, streams: 1, query: '', prefix: 'h2-', resetAfter: 0, ca: null };
  for (let i = 0; i < argv.length; i += 2) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--port': a.port = Number(v); break;
      case '--connections': a.connections = Number(v); break;
      case '--streams': a.streams = Number(v); break;
      case '--query': a.query = v; break;
      case '--prefix': a.prefix = v; break;
      case '--reset-after': a.resetAfter = Number(v); break;
      case '--ca': a.ca = v; break;
      default: throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  return a;
}

function oneStream(session, id, query, resetAfter) {
  return new Promise((resolve) => {
    const out = { id, sent_ns: process.hrtime.bigint().toString(), events: 0, reset: false, error: null };
    const req = session.request({ ':method': 'GET', ':path': `/v1/chat/completions/${id}?${query}` });
    let buf = '';
    req.setEncoding('utf8');
    req.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (ev.includes('"content":"tok')) out.events++;
      }
      if (resetAfter > 0 && out.events >= resetAfter && !out.reset) {
        out.reset = true;
        req.close(http2.constants.NGHTTP2_CANCEL);
      }
    });
    req.on('error', (e) => { if (!out.reset) out.error = String(e); });
    req.on('close', () => resolve(out));
    req.end();
  });
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const all = [];
  for (let c = 0; c < a.connections; c++) {
    const session = a.ca
      ? http2.connect(`https://127.0.0.1:${a.port}`, { ca: fs.readFileSync(a.ca), ALPNProtocols: ['h2'] })
      : http2.connect(`http://127.0.0.1:${a.port}`);
    session.on('error', (e) => console.error('session error', e));
    const streams = [];
    for (let s = 0; s < a.streams; s++) {
      const id = `${a.prefix}${c * a.streams + s}`;
      streams.push(oneStream(session, id, a.query, s === 0 ? a.resetAfter : 0));
    }
    all.push(Promise.all(streams).then((r) => { session.close(); return r; }));
  }
  const results = (await Promise.all(all)).flat();
  for (const r of results) process.stdout.write(JSON.stringify(r) + '\n');
  process.stdout.write(`DONE ${results.length}\n`);
}

main().catch((e) => { console.error(e); process.exit(1); });
