#!/usr/bin/env node
// Walk-through of Stoa's web app (web/, embedded in the stoa binary) in headless Chromium,
// against `stoa serve --dev` at STOA_WEB_URL (http://127.0.0.1:7880). Run it through run.sh,
// inside a private network namespace:
//   unshare -n bash tests/web/run.sh target/debug/stoa
//
// Two browsers, each with its own fake microphone (a sine WAV: the host at 440 Hz, the listener
// at 660 Hz), walk the scenario:
//   1. the host signs in, schedules a room, then creates a live room and goes live;
//   2. the listener signs in, sets "remind me" on the scheduled room, finds the live room in the
//      directory and joins it, hears the host (inbound audio energy > 0) and sees them speak;
//   3. the listener raises a hand, the host approves it; the listener's microphone goes live
//      and the host hears them;
//   4. the host moves them back to the audience; their track is gone; a third browser that
//      refuses the microphone hosts its own room and is told why it cannot speak, then joins
//      the first room and is kicked, and is told so;
//   5. the listener reacts and the reaction floats up on the host's page;
//   6. the host ends the room; both land on the ended screen.
// Every screen is captured at desktop (1280x800) and phone (390x844) sizes into
// WEB_SCREENSHOTS (target/web-screenshots). Every wait is bounded; a failure names its step.
// The last stdout line is a JSON summary; exit 0 on success.

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const BASE = process.env.STOA_WEB_URL || 'http://127.0.0.1:7880';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = resolve(process.env.WEB_SCREENSHOTS || join(here, '..', '..', 'target', 'web-screenshots'));
const DEADLINE_MS = Number(process.env.WEB_TIMEOUT_MS || 150_000);
const WAIT = 15_000;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const started = Date.now();
const log = (...args) => console.error(`[web +${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const summary = { ok: false, step: undefined, error: undefined, screenshots: [], heard: {} };
const consoleLines = [];

/** 16-bit mono PCM WAV, 48 kHz, `seconds` of a sine at `freq` Hz. */
function sineWav(freq, seconds, amplitude) {
  const rate = 48_000;
  const samples = rate * seconds;
  const buf = Buffer.alloc(44 + samples * 2);
  buf.write('RIFF', 0);
  buf.writeUInt32LE(36 + samples * 2, 4);
  buf.write('WAVE', 8);
  buf.write('fmt ', 12);
  buf.writeUInt32LE(16, 16);
  buf.writeUInt16LE(1, 20);
  buf.writeUInt16LE(1, 22);
  buf.writeUInt32LE(rate, 24);
  buf.writeUInt32LE(rate * 2, 28);
  buf.writeUInt16LE(2, 32);
  buf.writeUInt16LE(16, 34);
  buf.write('data', 36);
  buf.writeUInt32LE(samples * 2, 40);
  for (let i = 0; i < samples; i++) {
    buf.writeInt16LE(Math.round(amplitude * 32767 * Math.sin((2 * Math.PI * freq * i) / rate)), 44 + i * 2);
  }
  return buf;
}

async function step(name, f) {
  summary.step = name;
  log(`step: ${name}`);
  const result = await Promise.race([
    f(),
    sleep(30_000).then(() => {
      throw new Error(`step timed out after 30 s`);
    }),
  ]);
  return result;
}

async function launch(work, label, wav, { micAllowed = true } = {}) {
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
      // Without it the microphone prompt is refused, as when a person blocks it.
      ...(micAllowed ? ['--use-fake-ui-for-media-stream'] : []),
      '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${wav}`,
      '--autoplay-policy=no-user-gesture-required',
      // Loopback is the only network in the test's namespace.
      '--allow-loopback-in-peer-connection',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
    ],
  });
  const context = await browser.newContext({ viewport: DESKTOP, baseURL: BASE });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('console', (m) => consoleLines.push(`[${label}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[${label}] pageerror: ${e.stack || e}`));
  return { browser, context, page };
}

/** Captures `page` at desktop and phone sizes as `<name>-desktop.png` and `<name>-phone.png`. */
async function shot(page, name) {
  for (const [size, viewport] of [
    ['desktop', DESKTOP],
    ['phone', PHONE],
  ]) {
    await page.setViewportSize(viewport);
    await sleep(150);
    const file = join(SHOTS, `${name}-${size}.png`);
    await page.screenshot({ path: file, fullPage: true, timeout: WAIT });
    summary.screenshots.push(`${name}-${size}.png`);
  }
  await page.setViewportSize(DESKTOP);
}

/** Polls `f` until it returns a truthy value, for at most `ms`. */
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

/** The inbound audio of `identity` as `page`'s LiveKit room receives it. */
function inbound(page, identity) {
  return page.evaluate(async (id) => {
    const room = window.stoaRoom;
    const p = room?.remoteParticipants.get(id);
    if (!p) return { present: false, tracks: 0 };
    let result = { present: true, tracks: p.audioTrackPublications.size, energy: 0, packets: 0 };
    for (const pub of p.audioTrackPublications.values()) {
      const receiver = pub.track?.receiver;
      if (!receiver) continue;
      for (const s of (await receiver.getStats()).values()) {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') {
          result = { ...result, energy: s.totalAudioEnergy ?? 0, packets: s.packetsReceived ?? 0, level: s.audioLevel ?? 0 };
        }
      }
    }
    return result;
  }, identity);
}

async function hears(page, identity, who) {
  const r = await until(`${who}'s audio energy > 0`, async () => {
    const x = await inbound(page, identity);
    return x.energy > 0 && x.packets > 20 ? x : null;
  }, 20_000);
  summary.heard[who] = r;
  log(`heard ${who}:`, JSON.stringify(r));
  return r;
}

function sessionOf(page) {
  return page.evaluate(() => JSON.parse(localStorage.getItem('stoa.session') || 'null'));
}

async function signIn(page, name) {
  await page.goto('/');
  await page.waitForURL(/\/signin/);
  await page.getByLabel('Display name').fill(name);
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.getByRole('heading', { name: 'Rooms', level: 1 }).waitFor();
  return sessionOf(page);
}

function localDateTime(ms) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

async function scenario(host, listener, blocked) {
  const H = host.page;
  const L = listener.page;

  const hostSession = await step('host signs in', async () => {
    await H.goto('/');
    await H.waitForURL(/\/signin/);
    await shot(H, '01-sign-in');
    await H.getByLabel('Display name').fill('Hana Host');
    await H.getByRole('button', { name: 'Continue' }).click();
    await H.getByRole('heading', { name: 'Rooms', level: 1 }).waitFor();
    await shot(H, '02-directory-empty');
    return sessionOf(H);
  });

  await step('host schedules a room for tomorrow', async () => {
    await H.getByRole('link', { name: 'Create room' }).click();
    await H.getByRole('heading', { name: 'Create a room' }).waitFor();
    await H.getByLabel('Title').fill('Friday design review');
    await H.getByLabel('Topic').fill('What ships next week');
    await H.getByLabel('Schedule for later').check();
    await H.getByLabel('Date and time').fill(localDateTime(Date.now() + 26 * 3600_000));
    await shot(H, '03-create-scheduled');
    await H.getByRole('button', { name: 'Schedule' }).click();
    await H.getByText(/^Starts /).waitFor();
    await shot(H, '04-room-scheduled');
  });

  const roomId = await step('host creates a live room and goes live', async () => {
    await H.getByRole('link', { name: 'Create room' }).click();
    await H.getByLabel('Title').fill('Morning audio standup');
    await H.getByLabel('Topic').fill('Plans for the day');
    await H.getByLabel('Description').fill('A short daily check-in. Raise a hand to speak.');
    await H.getByLabel(/^Stage:/).check();
    await H.getByLabel('Who may ask to speak').selectOption('everyone');
    await H.getByLabel('Max participants').fill('50');
    await shot(H, '05-create-live');
    await H.getByRole('button', { name: 'Go live' }).click();
    await H.waitForURL(/\/rooms\/[^/]+$/);
    // The microphone is published once the Mute control shows.
    await H.getByRole('button', { name: 'Mute', exact: true }).waitFor();
    return decodeURIComponent(new URL(H.url()).pathname.split('/').pop());
  });
  summary.room = roomId;

  const listenerSession = await step('listener signs in and finds the room in the directory', async () => {
    const s = await signIn(L, 'Leo Listener');
    const card = L.getByRole('link', { name: /Morning audio standup, live/ });
    await card.waitFor();
    await L.getByText('🎙 Hana Host').waitFor();
    await L.getByRole('button', { name: 'Remind me about Friday design review' }).click();
    await until('the reminder to be set', async () =>
      (await L.getByRole('button', { name: 'Remind me about Friday design review' }).getAttribute('aria-pressed')) === 'true',
    );
    await shot(L, '06-directory');
    await L.getByRole('searchbox', { name: 'Search rooms' }).fill('standup');
    await until('the search to narrow the list', async () => (await L.getByText('Friday design review').count()) === 0);
    await shot(L, '07-directory-search');
    await card.click();
    return s;
  });

  await step('listener joins and hears the host', async () => {
    await L.getByRole('heading', { name: 'Morning audio standup' }).waitFor();
    await L.getByRole('button', { name: 'Raise hand' }).waitFor();
    await hears(L, hostSession.user, 'host (by the listener)');
    await until('the host speaking ring on the listener page', async () => {
      const ring = await L.locator(`.tile.speaking[data-user="${hostSession.user}"]`).count();
      const active = await L.evaluate(() => window.stoaRoom?.activeSpeakers.map((p) => [p.identity, p.audioLevel]));
      return ring > 0 ? { ring, active } : ring === 0 && active?.length && false;
    }, 10_000).catch(async (e) => {
      const active = await L.evaluate(() => ({
        active: window.stoaRoom?.activeSpeakers.map((p) => [p.identity, p.audioLevel]),
        remote: [...(window.stoaRoom?.remoteParticipants.values() ?? [])].map((p) => [p.identity, p.audioLevel, p.isSpeaking]),
      }));
      throw new Error(`${e.message}; speakers as the listener's room sees them: ${JSON.stringify(active)}`);
    });
    await shot(L, '08-room-listener');
  });

  await step('listener raises a hand; host approves', async () => {
    await L.getByRole('button', { name: 'Raise hand' }).click();
    await L.getByRole('button', { name: 'Lower hand' }).waitFor();
    const approve = H.getByRole('button', { name: 'Approve: Leo Listener' });
    await approve.waitFor();
    await shot(H, '09-room-host-hand-queue');
    await approve.click();
  });

  await step('listener speaks and the host hears them', async () => {
    await L.getByRole('button', { name: 'Mute', exact: true }).waitFor();
    await hears(H, listenerSession.user, 'listener (by the host)');
    await H.getByRole('button', { name: 'Move to audience: Leo Listener' }).waitFor();
    await shot(H, '10-room-host-with-speaker');
    await shot(L, '11-room-speaker');
  });

  await step('host moves the listener back to the audience', async () => {
    await H.getByRole('button', { name: 'Move to audience: Leo Listener' }).click();
    await L.getByRole('button', { name: 'Raise hand' }).waitFor();
    if (await L.getByRole('button', { name: 'Mute', exact: true }).count()) throw new Error('the listener still has a Mute control');
    await until("the listener's track to leave the host's room", async () => {
      const x = await inbound(H, listenerSession.user);
      return x.tracks === 0;
    });
  });

  await step('a refused microphone is explained; a kicked member is told why', async () => {
    const M = blocked.page;
    await signIn(M, 'Mia Mic');
    await M.getByRole('link', { name: 'Create room' }).click();
    await M.getByLabel('Title').fill('Open mic');
    await M.getByLabel(/^Open:/).check();
    await M.getByRole('button', { name: 'Go live' }).click();
    await M.getByText('Microphone access is blocked').waitFor();
    await shot(M, '12a-room-microphone-blocked');
    await M.getByRole('button', { name: 'End room' }).click();
    await M.getByRole('button', { name: 'End for everyone' }).click();
    await M.getByRole('heading', { name: 'This room has ended' }).waitFor();
    await M.goto(`/rooms/${encodeURIComponent(roomId)}`);
    await M.getByRole('button', { name: 'Raise hand' }).waitFor();
    const kick = H.getByRole('button', { name: 'Kick: Mia Mic' });
    await kick.waitFor();
    await kick.click();
    await M.getByRole('heading', { name: 'You were removed from this room' }).waitFor();
    await shot(M, '12b-removed');
    await blocked.browser.close();
  });

  await step("the listener's reaction floats on the host's page", async () => {
    await L.getByRole('button', { name: 'React 👏' }).click();
    const float = H.locator(`.float[data-user="${listenerSession.user}"]`, { hasText: '👏' });
    await float.first().waitFor({ state: 'attached', timeout: 10_000 });
    await H.screenshot({ path: join(SHOTS, '12-reaction-desktop.png') });
    summary.screenshots.push('12-reaction-desktop.png');
  });

  await step('share dialog and the embeddable card', async () => {
    await H.getByRole('button', { name: 'Share', exact: true }).click();
    await H.getByRole('heading', { name: 'Share this room' }).waitFor();
    await shot(H, '13-share');
    await H.getByRole('button', { name: 'Done' }).click();
    const embed = await host.context.newPage();
    embed.setDefaultTimeout(WAIT);
    await embed.goto(`/embed/rooms/${encodeURIComponent(roomId)}`);
    await embed.getByText('LIVE', { exact: true }).waitFor();
    await shot(embed, '14-embed-live');
    await embed.close();
  });

  await step('host ends the room; both land on the ended screen', async () => {
    await H.getByRole('button', { name: 'End room' }).click();
    await shot(H, '15-end-confirm');
    await H.getByRole('button', { name: 'End for everyone' }).click();
    await H.getByRole('heading', { name: 'This room has ended' }).waitFor();
    await L.getByRole('heading', { name: 'This room has ended' }).waitFor({ timeout: 20_000 });
    await H.getByText('Peak listeners').waitFor();
    await shot(H, '16-ended-host');
    await shot(L, '17-ended-listener');
    const embed = await listener.context.newPage();
    embed.setDefaultTimeout(WAIT);
    await embed.goto(`/embed/rooms/${encodeURIComponent(roomId)}`);
    await embed.getByText('Ended', { exact: true }).waitFor();
    await shot(embed, '18-embed-ended');
    await embed.close();
  });
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'stoa-web-'));
  const hostWav = join(work, 'host-440.wav');
  const listenerWav = join(work, 'listener-660.wav');
  writeFileSync(hostWav, sineWav(440, 20, 0.5));
  writeFileSync(listenerWav, sineWav(660, 20, 0.5));
  let host;
  let listener;
  let blocked;
  const deadline = setTimeout(() => {
    summary.error = `whole walk-through exceeded ${DEADLINE_MS} ms`;
    console.error(consoleLines.join('\n'));
    console.log(JSON.stringify(summary));
    process.exit(1);
  }, DEADLINE_MS);
  try {
    host = await launch(work, 'host', hostWav);
    listener = await launch(work, 'listener', listenerWav);
    blocked = await launch(work, 'blocked', listenerWav, { micAllowed: false });
    await scenario(host, listener, blocked);
    summary.ok = true;
    summary.step = undefined;
  } catch (err) {
    summary.error = String(err?.stack || err);
    log(`FAILED at step "${summary.step}": ${err?.message || err}`);
    for (const [label, b] of [
      ['host', host],
      ['listener', listener],
    ]) {
      if (b?.page) await b.page.screenshot({ path: join(SHOTS, `failure-${label}.png`), timeout: 5000 }).catch(() => {});
    }
    console.error('----- browser console -----');
    console.error(consoleLines.slice(-300).join('\n'));
  } finally {
    clearTimeout(deadline);
    await Promise.race([Promise.allSettled([host?.browser.close(), listener?.browser.close(), blocked?.browser.close()]), sleep(5000)]);
    rmSync(work, { recursive: true, force: true });
  }
  log(`screenshots in ${SHOTS}`);
  console.log(JSON.stringify(summary));
  process.exit(summary.ok ? 0 : 1);
}

await main();
