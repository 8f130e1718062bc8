// Watches a ConfigMap through the proxy (KUBECONFIG), changes it 10 times,
// each time waiting for the change to arrive, and compares each event's
// arrival time with the stand-in API server's own send time (its request log).
// Exits 0 when all 10 changes arrived, in order; the delays are printed for
// information. With a budget in ms (second argument) it also fails when an
// event took longer, for use on a quiet machine (scripts/bench.sh territory).
'use strict';
const { spawn, execFileSync } = require('child_process');
const fs = require('fs');
const log = process.argv[2];
const budget = process.argv[3] ? Number(process.argv[3]) : null;
const arrived = new Map();
const order = [];
const kubectl = (args) => execFileSync('kubectl', args, { encoding: 'utf8' }).trim();
const created = kubectl(['create', 'configmap', 'latency-probe', '--from-literal=n=0', '-o', 'jsonpath={.metadata.resourceVersion}']);
const watch = spawn('kubectl', ['get', 'cm', 'latency-probe', '-w', '--output-watch-events', '-o',
  'jsonpath={.object.metadata.resourceVersion}{"\\n"}'], { stdio: ['ignore', 'pipe', 'inherit'] });
let buf = '';
let waiter = null;
watch.stdout.on('data', (d) => {
  const now = Date.now();
  buf += d;
  let i;
  while ((i = buf.indexOf('\n')) >= 0) {
    const rv = buf.slice(0, i).trim();
    buf = buf.slice(i + 1);
    if (rv && !arrived.has(rv)) { arrived.set(rv, now); order.push(rv); }
  }
  if (waiter) waiter();
});
// Resolves once resourceVersion `rv` has arrived; fails after a generous timeout.
const arrival = (rv) => new Promise((resolve, reject) => {
  const t = setTimeout(() => { waiter = null; reject(new Error(`resourceVersion ${rv} did not arrive in 30 s`)); }, 30000);
  const check = () => { if (arrived.has(rv)) { clearTimeout(t); waiter = null; resolve(); } };
  waiter = check;
  check();
});
(async () => {
  await arrival(created);  // the watch is established (its initial LIST/ADDED came)
  const changed = [];
  for (let n = 1; n <= 10; n += 1) {
    const rv = kubectl(['patch', 'cm', 'latency-probe', '--type', 'merge', '-p', JSON.stringify({ data: { n: String(n) } }),
      '-o', 'jsonpath={.metadata.resourceVersion}']);
    changed.push(rv);
    await arrival(rv);
  }
  watch.kill();
  const seen = order.filter((rv) => changed.includes(rv));
  if (seen.join(' ') !== changed.join(' ')) {
    console.log(`events out of order: sent ${changed.join(' ')}, received ${seen.join(' ')}`);
    process.exit(1);
  }
  const sent = new Map();
  for (const line of fs.readFileSync(log, 'utf8').split('\n')) {
    if (!line.includes('watch_event')) continue;
    const r = JSON.parse(line);
    const rv = r.resourceVersion;
    if (r.kind === 'watch_event' && rv && r.name === 'latency-probe') sent.set(String(rv), r.sent_at_ms);
  }
  const delays = [];
  for (const rv of changed) if (sent.has(rv)) delays.push(arrived.get(rv) - sent.get(rv));
  delays.sort((a, b) => a - b);
  console.log(`events matched: ${delays.length}, delays ms: ${delays.join(' ')}`);
  if (delays.length < changed.length) { console.log('the API server log does not show every event sent'); process.exit(1); }
  const worst = delays[delays.length - 1];
  console.log(`all ${changed.length} changes arrived in order; median ${delays[delays.length >> 1]} ms, worst ${worst} ms`);
  if (budget !== null && worst > budget) { console.log(`over budget: worst ${worst} ms > ${budget} ms`); process.exit(1); }
  process.exit(0);
})().catch((e) => { console.error(e.message); watch.kill(); process.exit(1); });
