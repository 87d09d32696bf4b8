// What the two-node scenarios of the web app share (tests/web/failover.mjs, promotion.mjs;
// tests/failover/run.sh starts the nodes): the nodes' addresses, bounded waits and steps, an
// operator's API calls, headless Chromium pages of the web app with a fake microphone, where a
// page's LiveKit connection is, whether a participant's audio reaches a page, and the run's
// JSON summary (the last stdout line; exit 0 on success).

import { chromium } from 'playwright-core';
import { audioFlowing } from './audio.mjs';
import { CHROMIUM, chromiumArgs } from './chromium.mjs';

export const NODES = ['http://127.0.0.1:7880', 'http://127.0.0.1:7881'];
export const BASE = NODES[0];
const TOKEN = process.env.FAILOVER_SERVER_TOKEN;
export const PIDS = (process.env.FAILOVER_NODE_PIDS || '').split(',').map(Number);
export const WAIT = 15_000;

const started = Date.now();
let name = 'two-nodes';
export const log = (...args) => console.error(`[${name} +${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** The run's outcome, printed as the last stdout line; scenarios add their own fields. */
export const summary = { ok: false, step: undefined, error: undefined };
const consoleLines = [];

/** Runs step `label` of the scenario, failing it after `ms`. */
export async function step(label, f, ms = 30_000) {
  summary.step = label;
  log(`step: ${label}`);
  let timer;
  try {
    return await Promise.race([
      f(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`step timed out after ${ms / 1000} s`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `f` every 250 ms until it returns something truthy (returned), for `ms` at most. */
export async function until(what, f, ms = WAIT) {
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
export async function operator(method, path) {
  const r = await fetch(`${BASE}${path}`, { method, headers: { Authorization: `Bearer ${TOKEN}` }, signal: AbortSignal.timeout(5000) });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** The node record of the node listening on `port`. */
export async function nodeOf(port) {
  const { nodes } = await operator('GET', '/api/nodes');
  const n = nodes.find((x) => x.public_url === `ws://127.0.0.1:${port}`);
  if (!n) throw new Error(`no node on :${port}: ${JSON.stringify(nodes)}`);
  return n;
}

/** Drains (`on`) or lifts the drain of the node on `port`, then waits until every node knows. */
export async function drain(port, on) {
  const n = await nodeOf(port);
  const after = await operator(on ? 'POST' : 'DELETE', `/api/nodes/${n.id}/drain`);
  if (after.draining !== on) throw new Error(`drain of :${port} not ${on}: ${JSON.stringify(after)}`);
  // Every node reads the registry at most a second late.
  await sleep(1200);
}

/** Both nodes have a record (each has started and sent a heartbeat). */
export function bothRegistered() {
  return until('two node records', async () => (await operator('GET', '/api/nodes')).nodes.length === 2 || null);
}

/**
 * A headless Chromium whose fake microphone plays `wav`, with one page of the web app (at
 * {@link BASE}). The page records every text the reconnect banner shows (`window.banners`)
 * and whether a Rejoin button ever appeared (`window.rejoinOffered`).
 */
export async function launch(label, wav) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: chromiumArgs(wav),
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, baseURL: BASE });
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

/** Signs `page` in as `displayName`; its session (`token`, `user`). */
export async function signIn(page, displayName) {
  await page.goto('/');
  await page.waitForURL(/\/signin/);
  await page.getByLabel('Display name').fill(displayName);
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.getByRole('heading', { name: 'Rooms', level: 1 }).waitFor();
  return page.evaluate(() => JSON.parse(localStorage.getItem('stoa.session') || 'null'));
}

/** Creates a stage room as the signed-in user of `page` (session `token`); its API view. */
export function createRoom(page, token, title) {
  return page.evaluate(
    async ([t, title]) => {
      const r = await fetch('/api/rooms', { method: 'POST', headers: { Authorization: `Bearer ${t}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ title, kind: 'stage' }) });
      if (!r.ok) throw new Error(`create room: ${r.status} ${await r.text()}`);
      return r.json();
    },
    [token, title],
  );
}

/** Where `page`'s LiveKit room is connected: the port of its media URL, its sid, state and microphone. */
export function media(page) {
  return page.evaluate(() => {
    const room = window.stoaRoom;
    const url = room?.engine?.url;
    return { port: url ? Number(new URL(url).port) : null, sid: room?.localParticipant.sid ?? null, state: room?.state ?? null, mic: room?.localParticipant.isMicrophoneEnabled ?? false };
  });
}

/** What `page` showed since it was launched (or its records were reset): banners, a Rejoin offered. */
export function shown(page) {
  return page.evaluate(() => ({ banners: window.banners, rejoinOffered: window.rejoinOffered }));
}

/** `identity`'s audio reaches `page` now: packets and energy grow over a second on one receiver. */
export async function flowing(page, identity, who, ms = 25_000) {
  const r = await until(`${who}'s audio to flow`, () => audioFlowing(page, identity), ms);
  log(`${who} flowing:`, JSON.stringify(r));
  return r;
}

/**
 * Runs scenario `label`'s `main` within `deadlineMs`, prints the summary as the last stdout
 * line (with the pages' last console lines on stderr when it failed) and exits 0 on success.
 */
export async function run(label, deadlineMs, main) {
  name = label;
  const timer = setTimeout(() => {
    summary.error = `deadline of ${deadlineMs / 1000} s passed`;
    console.log(JSON.stringify(summary));
    process.exit(1);
  }, deadlineMs);
  try {
    if (!TOKEN || PIDS.length !== 2) throw new Error('run through tests/failover/run.sh (FAILOVER_SERVER_TOKEN, FAILOVER_NODE_PIDS)');
    await main();
    summary.ok = true;
  } catch (err) {
    summary.error = String(err?.stack || err);
    for (const line of consoleLines.slice(-60)) console.error(line);
    log('FAILED:', summary.error);
  }
  clearTimeout(timer);
  console.log(JSON.stringify(summary));
  process.exit(summary.ok ? 0 : 1);
}
