// The chaos harness's peer client: the same workload as Lucky's client processes
// (tests/src/bin/chaos.rs, `mod client`) through node-redlock 4 on ioredis, writing the
// same history lines. node-redlock gives no fence, so only the unfenced log is written; a
// claim ends where a user reading `lock.expiration` (wall-clock ms) would think it ends.
// Times are CLOCK_MONOTONIC ns (process.hrtime: libuv reads CLOCK_MONOTONIC on Linux).
'use strict';
const fs = require('fs');
const Redis = require('ioredis');
const Redlock = require('redlock');
const { Client } = require('pg');

const opts = {};
for (let i = 2; i < process.argv.length; i += 2) opts[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const id = Number(opts.id || 0);
const end = BigInt(opts.end || 0);
const ttl = Number(opts['ttl-ms'] || 1000);
const gcPpm = Number(opts['gc-ppm'] || 0);
let seq = Number(opts['seq-base'] || 0);
const run = opts.run || 'run';
const out = fs.openSync(opts.out || '/dev/null', 'a');
const rec = (line) => fs.writeSync(out, line + '\n');
const mono = () => process.hrtime.bigint();

// xorshift64*, seeded: the same draws for the same seed.
let state = BigInt(opts.seed || 1) * 0x9e3779b97f4a7c15n & 0xffffffffffffffffn || 1n;
function next() {
  state ^= state >> 12n; state ^= (state << 25n) & 0xffffffffffffffffn; state ^= state >> 27n;
  return Number(((state * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn) >> 11n) / 2 ** 53;
}
const range = (lo, hi) => lo + Math.floor(next() * (hi - lo + 1));
const chance = (ppm) => ppm > 0 && next() * 1e6 < ppm;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// A pause that stops the whole process, like a GC pause.
const freeze = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

async function main() {
  const pg = new Client({ host: '/var/run/postgresql', user: 'postgres', database: 'postgres' });
  await pg.connect();
  const clients = (opts.nodes || '').split(',').map((u) => {
    const url = new URL(u);
    return new Redis({ host: url.hostname, port: Number(url.port), lazyConnect: false });
  });
  for (const c of clients) c.on('error', () => {});
  // Waits up to two ttls for the lock, as Lucky's clients do.
  const redlock = new Redlock(clients, { driftFactor: 0.01, retryCount: Math.ceil((2 * ttl) / 75), retryDelay: 50, retryJitter: 50 });
  redlock.on('clientError', () => {});
  while (mono() < end) {
    const tReq = mono();
    let lock;
    try {
      lock = await redlock.lock('chaos', ttl);
    } catch (e) {
      rec(`fail ${id} ${tReq} ${mono()} unavailable`);
      continue;
    }
    seq += 1;
    const tAcq = mono();
    const until = tAcq + BigInt(Math.round((lock.expiration - Date.now()) * 1e6));
    rec(`acq ${id} ${seq} ${tReq} ${tAcq} ${until} -`);
    const hold = chance(100000) ? range(ttl * 1.2, ttl * 2) : range(ttl / 20, ttl * 0.6);
    await sleep(hold);
    if (mono() + BigInt(ttl * 200000) < until) {
      if (chance(gcPpm)) freeze(ttl * 1.5);
      const t0 = mono();
      try {
        const r = await pg.query('INSERT INTO lucky_chaos_writes (run, client, fence, fenced, accepted) VALUES ($1, $2, 0, false, true) RETURNING id', [run, id]);
        rec(`write ${id} ${seq} 0 ${t0} ${mono()} 1 ${r.rows[0].id}`);
      } catch (e) { /* the resource is never cut off; a failed write is not recorded */ }
    }
    const t0 = mono();
    try { await lock.unlock(); } catch (e) { /* released by its ttl */ }
    rec(`rel ${id} ${seq} ${t0} ${mono()}`);
    await sleep(range(0, 29));
  }
  for (const c of clients) c.disconnect();
  await pg.end();
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
