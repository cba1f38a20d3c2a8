#!/usr/bin/env node
// gRPC server-streaming test server on @grpc/grpc-js (npm), over TLS through the OpenSSL
// linked into node (or cleartext without --tls-cert): the same method, request query and
// truth schema as grpc_stream.py, so grpc_stream.py's client drives both.
//
//   NODE_PATH=$INFERSCOPE_GRPC_JS node tests/servers/grpc_stream.js --port 0 --truth T.jsonl \
//       [--tls-cert c.pem --tls-key k.pem]
//
// The service is defined by hand with raw-bytes (de)serializers: no .proto, no proto-loader.
// Truth: request_ns is stamped when grpc-js hands the call to the handler (it has read the
// request message), each write's ts_ns right before call.write(); grpc-js queues the message
// on Node's http2 session, which sends it when the JS turn returns to the event loop, so every
// write is made on its own loop turn (`pause`), keeping stamps and syscalls one to one.
// Timestamps: process.hrtime.bigint() = CLOCK_MONOTONIC.
'use strict';

const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const { pause, toJson } = require('./sse_server.js');

const METHOD = '/inference.GRPCInferenceService/ModelStreamInfer';

function parseArgs(argv) {
  const args = { port: 0, truth: null, tlsCert: null, tlsKey: null };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => argv[++i];
    if (flag === '--port') args.port = Number(value());
    else if (flag === '--truth') args.truth = value();
    else if (flag === '--tls-cert') args.tlsCert = value();
    else if (flag === '--tls-key') args.tlsKey = value();
    else throw new Error(`unknown argument ${flag}`);
  }
  if (!args.truth || !args.tlsCert !== !args.tlsKey) {
    throw new Error('usage: grpc_stream.js --truth FILE [--port P] [--tls-cert PEM --tls-key PEM]');
  }
  return args;
}

async function streamInfer(call, truthFd) {
  const requestNs = process.hrtime.bigint();
  const q = new URLSearchParams(call.request.toString());
  const tokens = Number(q.get('tokens') || 5);
  const interval = Number(q.get('interval_ms') || 5);
  const prefill = Number(q.get('prefill_ms') || 10);
  const fail = q.get('fail') === '1';
  const writes = [];
  await pause(prefill);
  for (let i = 0; i < tokens; i++) {
    if (i) await pause(interval);
    if (call.cancelled) break;
    writes.push({ ts_ns: process.hrtime.bigint(), content_events: 1 });
    // A protobuf-shaped message; its content is never read.
    call.write(Buffer.from(`\x0a\x05tok${String(i).padStart(3, '0')}`, 'latin1'));
  }
  await pause(0);
  const endedNs = process.hrtime.bigint();
  fs.writeSync(
    truthFd,
    toJson({
      server: 'node-grpc-js',
      id: q.get('id') || '',
      path: METHOD,
      method: 'POST',
      request_ns: requestNs,
      writes,
      first_byte_ns: writes.length ? writes[0].ts_ns : endedNs,
      first_token_ns: writes.length ? writes[0].ts_ns : null,
      end_ns: endedNs,
      content_writes: writes.length,
      chunks: writes.length,
      tokens: null,
      status: 200,
      grpc_status: fail ? grpc.status.RESOURCE_EXHAUSTED : grpc.status.OK,
    }) + '\n',
  );
  if (fail) call.emit('error', { code: grpc.status.RESOURCE_EXHAUSTED, details: 'asked to fail' });
  else call.end();
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const truthFd = fs.openSync(args.truth, 'w');
  const id = (b) => b;
  const service = {
    ModelStreamInfer: {
      path: METHOD,
      requestStream: false,
      responseStream: true,
      requestSerialize: id,
      requestDeserialize: id,
      responseSerialize: id,
      responseDeserialize: id,
    },
  };
  const server = new grpc.Server();
  server.addService(service, {
    ModelStreamInfer: (call) => {
      streamInfer(call, truthFd).catch((e) => {
        console.error('call failed:', e);
        call.destroy();
      });
    },
  });
  const creds = args.tlsCert
    ? grpc.ServerCredentials.createSsl(null, [
        { cert_chain: fs.readFileSync(args.tlsCert), private_key: fs.readFileSync(args.tlsKey) },
      ])
    : grpc.ServerCredentials.createInsecure();
  server.bindAsync(`127.0.0.1:${args.port}`, creds, (err, port) => {
    if (err) throw err;
    process.stdout.write(`LISTENING ${port}\n`);
  });
  const stop = () => process.exit(0);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
