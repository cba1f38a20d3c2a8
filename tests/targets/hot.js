// CPU-profile target for JIT symbolization: run with `node --perf-basic-prof hot.js SECONDS`;
// V8 writes /tmp/perf-PID.map naming the JIT code of hotJsFunction.
const seconds = Number(process.argv[2] || 3);
function hotJsFunction(n) {
  let x = 0;
  for (let i = 0; i < n; i++) x = (x * 31 + i) % 1000003;
  return x;
}
console.log(`READY ${process.pid}`);
const end = Date.now() + seconds * 1000;
let sink = 0;
while (Date.now() < end) sink += hotJsFunction(200000);
if (sink === -1) console.log(sink);
