#!/usr/bin/env node
// The web app comes back by itself when its node goes away: two `stoa serve` nodes on one
// redis-server (tests/failover/run.sh starts them, inside a private network namespace), a host
// and a listener in headless Chromium (each with a fake microphone: the host a 440 Hz sine).
//   1. the room is placed on node 0 (node 1 drained meanwhile, then lifted); the host unmutes
//      and the listener hears them;
//   2. an operator drains node 0: both pages are told to move (LiveKit's MIGRATION leave), say
//      so ("Moving you to another server…"), fetch fresh tokens from the API and connect to
//      node 1 by themselves, the host's microphone open again, and the listener hears the host
//      again; no page offers a manual Rejoin;
//   3. node 0's drain lifted, node 1 is killed (SIGKILL): while livekit-client tries to resume
//      at node 1, the pages ask the API where the room is; once node 1's members have timed
//      out it names node 0, and the pages give the resumption up and rejoin there (the time it
//      took is in the summary, `backAfterMs`); the listener hears the host again.
// Every wait is bounded; the last stdout line is a JSON summary; exit 0 on success.

import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

import { sineWav } from './audio.mjs';

const NODES = ['http://127.0.0.1:7880', 'http://127.0.0.1:7881'];
const BASE = NODES[0];
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOKEN = process.env.FAILOVER_SERVER_TOKEN;
const PIDS = (process.env.FAILOVER_NODE_PIDS || '').split(',').map(Number);
const DEADLINE_MS = 180_000;
const WAIT = 15_000;

const started = Date.now();
const log = (...args) => console.error(`[failover +${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const summary = { ok: false, step: undefined, error: undefined, moves: [] };
const consoleLines = [];


async function step(name, f, ms = 30_000) {
  summary.step = name;
  log(`step: ${name}`);
  return Promise.race([
    f(),
    sleep(ms).then(() => {
      throw new Error(`step timed out after ${ms / 1000} s`);
    }),
  ]);
}

async function until(what, f, ms = WAIT) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await f();
    if (last) return last;
    await sleep(250);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** An operator's API call with the server token; its JSON. */
async function operator(method, path) {
  const r = await fetch(`${BASE}${path}`, { method, headers: { Authorization: `Bearer ${TOKEN}` }, signal: AbortSignal.timeout(5000) });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function nodeOf(port) {
  const { nodes } = await operator('GET', '/api/nodes');
  const n = nodes.find((x) => x.public_url === `ws://127.0.0.1:${port}`);
  if (!n) throw new Error(`no node on :${port}: ${JSON.stringify(nodes)}`);
  return n;
}

async function drain(port, on) {
  const n = await nodeOf(port);
  const after = await operator(on ? 'POST' : 'DELETE', `/api/nodes/${n.id}/drain`);
  if (after.draining !== on) throw new Error(`drain of :${port} not ${on}: ${JSON.stringify(after)}`);
  // Every node reads the registry at most a second late.
  await sleep(1200);
}

async function launch(work, label, wav) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${wav}`,
      '--autoplay-policy=no-user-gesture-required',
      '--allow-loopback-in-peer-connection',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, baseURL: BASE });
  // Records every text the reconnect banner shows, and whether a Rejoin button ever appears.
  await context.addInitScript(() => {
    window.banners = [];
    window.rejoinOffered = false;
    setInterval(() => {
      const b = document.querySelector('.banner.warn');
      if (b && !b.hidden && window.banners.at(-1) !== b.textContent) window.banners.push(b.textContent);
      if ([...document.querySelectorAll('button')].some((x) => x.textContent === 'Rejoin')) window.rejoinOffered = true;
    }, 50);
  });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('console', (m) => consoleLines.push(`[${label}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[${label}] pageerror: ${e.stack || e}`));
  return { browser, page };
}

async function signIn(page, name) {
  await page.goto('/');
  await page.waitForURL(/\/signin/);
  await page.getByLabel('Display name').fill(name);
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.getByRole('heading', { name: 'Rooms', level: 1 }).waitFor();
  return page.evaluate(() => JSON.parse(localStorage.getItem('stoa.session') || 'null'));
}

/** Where `page`'s LiveKit room is connected: the port of its media URL, its sid and state. */
function media(page) {
  return page.evaluate(() => {
    const room = window.stoaRoom;
    const url = room?.engine?.url;
    return { port: url ? Number(new URL(url).port) : null, sid: room?.localParticipant.sid ?? null, state: room?.state ?? null, mic: room?.localParticipant.isMicrophoneEnabled ?? false };
  });
}

/** `identity`'s audio reaches `page` now: packets and energy grow over a second on one receiver. */
async function flowing(page, identity, who, ms = 25_000) {
  const r = await until(`${who}'s audio to flow`, () =>
    page.evaluate(async (id) => {
      const p = window.stoaRoom?.remoteParticipants.get(id);
      const receiver = p && [...p.audioTrackPublications.values()].find((x) => x.track?.receiver)?.track.receiver;
      if (!receiver) return null;
      const sample = async () => {
        for (const s of (await receiver.getStats()).values()) {
          if (s.type === 'inbound-rtp' && s.kind === 'audio') return { energy: s.totalAudioEnergy ?? 0, packets: s.packetsReceived ?? 0 };
        }
        return { energy: 0, packets: 0 };
      };
      const a = await sample();
      await new Promise((res) => setTimeout(res, 1000));
      const b = await sample();
      return b.packets > a.packets + 10 && b.energy > a.energy ? { before: a, after: b } : null;
    }, identity), ms);
  log(`${who} flowing:`, JSON.stringify(r));
  return r;
}

/** Waits until both pages are connected again, to `port`, with new sessions; what they showed meanwhile. */
async function moved(pages, before, port, what, ms) {
  const after = await until(what, async () => {
    const now = await Promise.all(pages.map(media));
    return now.every((m, i) => m.state === 'connected' && m.port === port && m.sid && m.sid !== before[i].sid) ? now : null;
  }, ms);
  const shown = await Promise.all(pages.map((p) => p.evaluate(() => ({ banners: window.banners, rejoinOffered: window.rejoinOffered }))));
  for (const s of shown) if (s.rejoinOffered) throw new Error(`${what}: a page offered a manual Rejoin`);
  return { after, shown };
}

async function main() {
  if (!TOKEN || PIDS.length !== 2) throw new Error('run through tests/failover/run.sh (FAILOVER_SERVER_TOKEN, FAILOVER_NODE_PIDS)');
  const work = mkdtempSync(join(tmpdir(), 'stoa-failover-'));
  const wav = join(work, 'host.wav');
  writeFileSync(wav, sineWav(440, 30, 0.5));
  const silent = join(work, 'listener.wav');
  writeFileSync(silent, sineWav(660, 30, 0.0));
  const host = await launch(work, 'host', wav);
  const listener = await launch(work, 'listener', silent);
  const [H, L] = [host.page, listener.page];
  try {
    await step('both nodes registered', () => until('two node records', async () => (await operator('GET', '/api/nodes')).nodes.length === 2 || null));

    const { hostUser, roomPath } = await step('the host goes live on node 0 and the listener hears them', async () => {
      const s = await signIn(H, 'Hana Host');
      // Node 1 drained while the room is made: it is placed on node 0.
      await drain(7881, true);
      const room = await H.evaluate(async (token) => {
        const r = await fetch('/api/rooms', { method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ title: 'Failover hour', kind: 'stage' }) });
        if (!r.ok) throw new Error(`create room: ${r.status} ${await r.text()}`);
        return r.json();
      }, s.token);
      await drain(7881, false);
      const path = `/rooms/${encodeURIComponent(room.id)}`;
      await H.goto(path);
      await H.getByRole('button', { name: 'Unmute microphone' }).click();
      await H.getByRole('button', { name: 'Mute', exact: true }).waitFor();
      await signIn(L, 'Leo Listener');
      await L.goto(path);
      await flowing(L, s.user, 'host');
      const [h, l] = [await media(H), await media(L)];
      if (h.port !== 7880 || l.port !== 7880) throw new Error(`not on node 0: ${JSON.stringify({ h, l })}`);
      return { hostUser: s.user, roomPath: path };
    }, 60_000);
    summary.room = roomPath;

    await step('node 0 drained: both pages move to node 1 by themselves and the host is heard again', async () => {
      const before = [await media(H), await media(L)];
      await drain(7880, true);
      const { after, shown } = await moved([H, L], before, 7881, 'both pages on node 1', 25_000);
      if (!shown.every((s) => s.banners.some((b) => b.includes('Moving you to another server')))) throw new Error(`the move was not shown: ${JSON.stringify(shown)}`);
      // The page opens the microphone again once connected.
      await until('the host\'s microphone open again', async () => (await media(H)).mic || null);
      await flowing(L, hostUser, 'host on node 1');
      summary.moves.push({ cause: 'drain', before, after, banners: shown.map((s) => s.banners) });
    }, 60_000);

    await step('node 1 killed: the pages rejoin on node 0 through the API and the host is heard again', async () => {
      await drain(7880, false);
      const before = [await media(H), await media(L)];
      await H.evaluate(() => (window.banners = []));
      await L.evaluate(() => (window.banners = []));
      process.kill(PIDS[1], 'SIGKILL');
      const t0 = Date.now();
      // The pages ask the API every 3 s while livekit-client tries to resume at node 1; the API
      // moves the room to node 0 once node 1's members have timed out (presence_ttl = 2). The
      // bound leaves room for the SDK's own attempts (about 45 s) and the rejoin after them.
      const { after, shown } = await moved([H, L], before, 7880, 'both pages on node 0', 110_000);
      await until('the host\'s microphone open again', async () => (await media(H)).mic || null);
      await flowing(L, hostUser, 'host on node 0');
      summary.moves.push({ cause: 'kill', before, after, banners: shown.map((s) => s.banners), backAfterMs: Date.now() - t0 });
    }, 140_000);

    summary.ok = true;
  } finally {
    await host.browser.close().catch(() => {});
    await listener.browser.close().catch(() => {});
    rmSync(work, { recursive: true, force: true });
  }
}

const timer = setTimeout(() => {
  summary.error = `deadline of ${DEADLINE_MS / 1000} s passed`;
  console.log(JSON.stringify(summary));
  process.exit(1);
}, DEADLINE_MS);
try {
  await main();
} catch (err) {
  summary.error = String(err?.stack || err);
  for (const line of consoleLines.slice(-60)) console.error(line);
  log('FAILED:', summary.error);
}
clearTimeout(timer);
console.log(JSON.stringify(summary));
process.exit(summary.ok ? 0 : 1);
