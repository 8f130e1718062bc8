// Watches ConfigMaps through the proxy (KUBECONFIG), changes one 10 times, and
// compares each event's arrival time with the stand-in API server's own send
// time (its request log). Prints "within budget" when every event took at most
// the budget (default 200 ms: generous for CI; typical values are printed).
'use strict';
const { spawn, execFileSync } = require('child_process');
const fs = require('fs');
const log = process.argv[2];
const budget = Number(process.argv[3] || 200);
const arrived = new Map();
execFileSync('kubectl', ['create', 'configmap', 'latency-probe', '--from-literal=n=0']);
const watch = spawn('kubectl', ['get', 'cm', 'latency-probe', '-w', '--output-watch-events', '-o',
  'jsonpath={.object.metadata.resourceVersion}{"\\n"}'], { stdio: ['ignore', 'pipe', 'inherit'] });
let buf = '';
watch.stdout.on('data', (d) => {
  const now = Date.now();
  buf += d;
  let i;
  while ((i = buf.indexOf('\n')) >= 0) {
    const rv = buf.slice(0, i).trim();
    buf = buf.slice(i + 1);
    if (rv && !arrived.has(rv)) arrived.set(rv, now);
  }
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
(async () => {
  await sleep(1500);
  for (let n = 1; n <= 10; n += 1) {
    execFileSync('kubectl', ['patch', 'cm', 'latency-probe', '--type', 'merge', '-p', JSON.stringify({ data: { n: String(n) } })]);
    await sleep(150);
  }
  await sleep(500);
  watch.kill();
  const sent = new Map();
  for (const line of fs.readFileSync(log, 'utf8').split('\n')) {
    if (!line.includes('watch_event')) continue;
    const r = JSON.parse(line);
    const rv = r.resourceVersion;
    if (r.kind === 'watch_event' && rv && r.name === 'latency-probe') sent.set(String(rv), r.sent_at_ms);
  }
  const delays = [];
  for (const [rv, t] of arrived) if (sent.has(rv)) delays.push(t - sent.get(rv));
  delays.sort((a, b) => a - b);
  console.log(`events matched: ${delays.length}, delays ms: ${delays.join(' ')}`);
  if (delays.length < 8) { console.log('too few events matched'); process.exit(1); }
  const worst = delays[delays.length - 1];
  console.log(worst <= budget ? `within budget (${budget} ms); median ${delays[delays.length >> 1]} ms, worst ${worst} ms`
                              : `over budget: worst ${worst} ms > ${budget} ms`);
  process.exit(worst <= budget ? 0 : 1);
})().catch((e) => { console.error(e.message); watch.kill(); process.exit(1); });
