#!/usr/bin/env node
// Chromium pages for tests/relay_browser.rs: pages of the unmodified livekit-client (page.html
// and page.js, served by pages.mjs as for e2e.mjs) that join a room through the product path and
// report what they hear, or speak. The Rust test runs this script in the hub of its network
// namespaces, where the nodes' addresses (10.77.N.2) are reachable and nothing else is, and
// drives it over a line protocol: one JSON command per stdin line, one JSON answer per stdout
// line.
//
//   {"cmd":"join","name":N,"api":"http://10.77.1.2:7880","room":R,"userToken":T,"speaker":S}
//       A new page N: `POST {api}/api/rooms/{R}/token` with the user token T (as an app's
//       client does), then livekit-client connects to the `url` that answer names; once
//       subscribed to S's audio, waits until it hears it (inbound-rtp packetsReceived > 50 and
//       totalAudioEnergy > 0). Answer: {name, ok, url, identity, canPublish, heard: stats}.
//   {"cmd":"listen","name":N,"speaker":S,"ms":M}
//       What page N received of S over M ms (packets, energy, loss; all must grow for the
//       listener to be hearing now) and the dominant frequency it decodes over the same time
//       (WebAudio analyser). Answer: {name, ok, url, packets, energy, hz, peakDb, pair, codec}.
//   {"cmd":"speak","name":N,"api":A,"room":R,"identity":I,"userToken":T,"serverToken":S}
//       A new page N that speaks: member I asks for a grant (a listener's), the host's app
//       invites I to speak with the server token S (`POST .../members/{I}/invite_to_speak`),
//       I asks again (a speaker's grant, naming the node placement chose), livekit-client
//       connects there and publishes the fake microphone: a 1 kHz tone. Answer: {name, ok, url,
//       identity, canPublish, trackSid}.
//   {"cmd":"quit"} (or the end of stdin): closes Chromium and exits 0.
//
// A failed command answers {name, ok: false, error}. The first line is {"ready": true, ...}
// once Chromium runs. The whole run is capped at EDGE_TIMEOUT_MS (120000): past it the script
// closes Chromium and exits 1. Browser console lines and Chromium's log go to stderr at exit
// when a command failed (or with EDGE_VERBOSE=1).
//
// Environment: CHROMIUM (/usr/bin/chromium), EDGE_TIMEOUT_MS, EDGE_VERBOSE, EDGE_LOG_LEVEL
// (livekit-client's log level in the pages, info).

import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

import { sineWav } from '../web/audio.mjs';
import { call, startPageServer } from './pages.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const DEADLINE_MS = Number(process.env.EDGE_TIMEOUT_MS || 120_000);
const VERBOSE = process.env.EDGE_VERBOSE === '1';
const LOG_LEVEL = process.env.EDGE_LOG_LEVEL || 'info';
// Per-command bounds (ms).
const T = { launch: 30_000, token: 5_000, connect: 20_000, hear: 20_000 };

const started = Date.now();
const log = (...args) =>
  console.error(`[edge +${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const answer = (value) => console.log(JSON.stringify(value));

/** `promise`, or a rejection naming `what` after `ms`. */
async function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const consoleLines = [];
let failed = false;

/** The media grant an app's client gets: `POST /api/rooms/{room}/token` as the user. */
async function mediaGrant(api, room, userToken) {
  const response = await fetch(`${api}/api/rooms/${encodeURIComponent(room)}/token`, {
    method: 'POST',
    headers: { authorization: `Bearer ${userToken}` },
    signal: AbortSignal.timeout(T.token),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`token request: HTTP ${response.status}: ${text}`);
  const grant = JSON.parse(text);
  if (typeof grant.token !== 'string' || typeof grant.url !== 'string') {
    throw new Error(`token answer without token or url: ${text}`);
  }
  return grant;
}

/** Inbound stats of `speaker`'s audio on `page`, once it has a subscribed track. */
async function inbound(page, speaker) {
  const stats = await call(page, 'inboundAudioStats', speaker);
  return stats.ok ? stats : undefined;
}

/** A new page `name` of livekit-client connected with `grant`; the page and what connect said. */
async function openPage(context, pageUrl, pages, name, grant) {
  if (pages.has(name)) throw new Error(`page ${name} exists already`);
  const page = await context.newPage();
  pages.set(name, { page, url: grant.url });
  page.on('console', (msg) => consoleLines.push(`[${name}] ${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => consoleLines.push(`[${name}] pageerror: ${err.stack || err}`));
  await page.addInitScript((level) => {
    window.__e2eLogLevel = level;
  }, LOG_LEVEL);
  await page.goto(pageUrl, { timeout: T.connect });
  const info = await call(page, 'info');
  if (!info.loaded || !info.browserSupported) {
    throw new Error(`livekit-client did not load or is unsupported: ${JSON.stringify(info)}`);
  }
  const joined = await within(T.connect, 'connect', call(page, 'connect', grant.url, grant.token));
  if (!joined.ok) throw new Error(`connect to ${grant.url}: ${JSON.stringify(joined.error)}`);
  return { page, info, joined };
}

async function joinPage(context, pageUrl, pages, cmd) {
  if (pages.has(cmd.name)) throw new Error(`page ${cmd.name} exists already`);
  const grant = await mediaGrant(cmd.api, cmd.room, cmd.userToken);
  const { page, info, joined } = await openPage(context, pageUrl, pages, cmd.name, grant);
  const heard = await within(T.hear, `hear ${cmd.speaker}`, (async () => {
    for (;;) {
      const s = await inbound(page, cmd.speaker);
      if (s && s.packetsReceived > 50 && s.totalAudioEnergy > 0) return s;
      await sleep(250);
    }
  })());
  return {
    url: grant.url,
    identity: joined.identity,
    canPublish: joined.canPublish,
    livekitClient: info.version,
    heard,
  };
}

async function speakPage(context, pageUrl, pages, cmd) {
  if (pages.has(cmd.name)) throw new Error(`page ${cmd.name} exists already`);
  await mediaGrant(cmd.api, cmd.room, cmd.userToken);
  const member = `${cmd.api}/api/rooms/${encodeURIComponent(cmd.room)}/members/${encodeURIComponent(cmd.identity)}`;
  const invited = await fetch(`${member}/invite_to_speak`, {
    method: 'POST',
    headers: { authorization: `Bearer ${cmd.serverToken}` },
    signal: AbortSignal.timeout(T.token),
  });
  if (!invited.ok) throw new Error(`invite_to_speak: HTTP ${invited.status}: ${await invited.text()}`);
  const grant = await mediaGrant(cmd.api, cmd.room, cmd.userToken);
  const { page, joined } = await openPage(context, pageUrl, pages, cmd.name, grant);
  const published = await within(T.connect, 'publish', call(page, 'publishMicrophone'));
  if (!published.ok) throw new Error(`publish: ${JSON.stringify(published.error)}`);
  return {
    url: grant.url,
    identity: joined.identity,
    canPublish: joined.canPublish,
    trackSid: published.trackSid,
  };
}

async function listenPage(pages, cmd) {
  const entry = pages.get(cmd.name);
  if (!entry) throw new Error(`no page ${cmd.name}`);
  const ms = Math.min(Math.max(Number(cmd.ms) || 3000, 500), 10_000);
  const before = await inbound(entry.page, cmd.speaker);
  if (!before) throw new Error(`page ${cmd.name} has no audio track of ${cmd.speaker}`);
  const tone = await call(entry.page, 'dominantFrequency', cmd.speaker, ms);
  const after = await inbound(entry.page, cmd.speaker);
  return {
    url: entry.url,
    packets: after.packetsReceived - before.packetsReceived,
    lost: after.packetsLost - before.packetsLost,
    energy: after.totalAudioEnergy - before.totalAudioEnergy,
    seconds: after.totalSamplesDuration - before.totalSamplesDuration,
    hz: tone.ok ? tone.hz : undefined,
    peakDb: tone.ok ? tone.peakDb : undefined,
    pair: after.pair,
    codec: after.codec,
  };
}

async function main() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: run ./test.sh`);
  const work = mkdtempSync(join(tmpdir(), 'stoa-edge-'));
  const chromiumLog = join(work, 'chromium.log');
  // What a speaking page's fake microphone plays.
  const wav = join(work, 'tone1k.wav');
  writeFileSync(wav, sineWav(1000, 10, 0.5));
  const http = await startPageServer();
  const pageUrl = `http://127.0.0.1:${http.address().port}/`;
  let context;
  const overall = setTimeout(() => {
    log(`whole run exceeded EDGE_TIMEOUT_MS=${DEADLINE_MS} ms`);
    failed = true;
    finish(1);
  }, DEADLINE_MS);
  let closing;
  const finish = (code) => {
    closing ??= (async () => {
      clearTimeout(overall);
      if (failed || VERBOSE) {
        console.error('----- browser console -----');
        for (const line of consoleLines) console.error(line.slice(0, 2000));
        console.error('----- chromium log (D-Bus noise left out) -----');
        let lines = [];
        try {
          lines = readFileSync(chromiumLog, 'utf8').split('\n');
        } catch {
          // no log written
        }
        for (const l of lines) if (l && !/dbus|bluez|Floss|:INFO:CONSOLE/i.test(l)) console.error(l);
      }
      if (context) await Promise.race([context.close().catch(() => {}), sleep(5000)]);
      http.closeAllConnections?.();
      http.close();
      rmSync(work, { recursive: true, force: true });
      process.exit(code);
    })();
    return closing;
  };
  process.on('SIGTERM', () => finish(1));

  context = await within(
    T.launch,
    'launch chromium',
    chromium.launchPersistentContext(join(work, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      timeout: T.launch,
      args: [
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
        // Receive-only pages would otherwise hide host candidates behind mDNS names, which
        // nothing resolves here.
        '--disable-features=WebRtcHideLocalIpsWithMdns',
        '--enable-logging',
        `--log-file=${chromiumLog}`,
        '--v=0',
      ],
    }),
  );
  answer({ ready: true, chromium: context.browser()?.version() });
  const pages = new Map();
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch {
      answer({ ok: false, error: `not JSON: ${line.slice(0, 200)}` });
      continue;
    }
    if (cmd.cmd === 'quit') break;
    try {
      let value;
      if (cmd.cmd === 'join') value = await joinPage(context, pageUrl, pages, cmd);
      else if (cmd.cmd === 'speak') value = await speakPage(context, pageUrl, pages, cmd);
      else if (cmd.cmd === 'listen') value = await listenPage(pages, cmd);
      else throw new Error(`unknown command ${cmd.cmd}`);
      answer({ name: cmd.name, ok: true, ...value });
    } catch (err) {
      failed = true;
      log(`${cmd.cmd} ${cmd.name}: ${err.stack || err}`);
      answer({ name: cmd.name, ok: false, error: err.message ?? String(err) });
    }
  }
  await finish(failed ? 1 : 0);
}

main().catch((err) => {
  console.error(`edge.mjs: ${err.stack || err}`);
  answer({ ok: false, error: err.message ?? String(err) });
  process.exit(1);
});
