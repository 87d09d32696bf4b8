#!/usr/bin/env node
// Walk-through of Stoa's web app (web/, embedded in the stoa binary) in headless Chromium,
// against `stoa serve --dev` at STOA_WEB_URL (http://127.0.0.1:7880). Run it through run.sh,
// inside a private network namespace:
//   unshare -n bash tests/web/run.sh target/debug/stoa
//
// Browsers, each with its own fake microphone (a sine WAV: the host at 440 Hz, the others at
// 660 Hz), walk the scenario:
//   1. the host signs in, schedules a room, then creates a live room and goes live;
//   2. the listener signs in, sets "remind me" on the scheduled room, finds the live room in the
//      directory and joins it, hears the host (inbound audio energy > 0) and sees them speak: the
//      server's SpeakersChanged names the host and the speaking ring lights up;
//   3. the listener raises a hand, the host approves it; the listener's microphone goes live
//      and the host hears them;
//   4. the host moves them back to the audience; their track is gone;
//   5. the listener's network drops for real (its browser's network service process is stopped):
//      the reconnect banner shows; the network comes back, the banner goes and the host is heard
//      again;
//   6. a third browser that refuses the microphone hosts its own room and is told why it cannot
//      speak, then joins the first room and is kicked, and is told so;
//   7. a guest browser without the autoplay exemption opens the shared room link: it goes through
//      sign-in, which names the room, and lands in it; opened again without a user gesture, the
//      browser blocks playback, "Tap to listen" shows, and a tap makes the host heard;
//   8. the listener reacts and the reaction floats up on the host's page;
//   9. the share dialog and the embeddable card (live, scheduled, unknown room);
//  10. the host ends the room; both land on the ended screen; the card says Ended.
// Every screen is captured at desktop (1280x800) and phone (390x844) sizes into
// WEB_SCREENSHOTS (target/web-screenshots). Every wait is bounded; a failure names its step.
// The last stdout line is a JSON summary; exit 0 on success.

import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const BASE = process.env.STOA_WEB_URL || 'http://127.0.0.1:7880';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = resolve(process.env.WEB_SCREENSHOTS || join(here, '..', '..', 'target', 'web-screenshots'));
const DEADLINE_MS = Number(process.env.WEB_TIMEOUT_MS || 270_000);
const WAIT = 15_000;
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const started = Date.now();
const log = (...args) => console.error(`[web +${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const summary = { ok: false, step: undefined, error: undefined, screenshots: [], heard: {}, speakers: undefined, reconnect: undefined, autoplay: undefined };
/** Processes this run stopped (SIGSTOP), continued whatever happens. */
const frozen = new Set();
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

async function step(name, f, ms = 30_000) {
  summary.step = name;
  log(`step: ${name}`);
  const result = await Promise.race([
    f(),
    sleep(ms).then(() => {
      throw new Error(`step timed out after ${ms / 1000} s`);
    }),
  ]);
  return result;
}

/** Pid, parent pid and command line of every process visible in /proc. */
function processes() {
  const out = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      out.push({ pid: Number(name), ppid, cmdline });
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

/** The Chromium browser processes this script started (its children). */
function browserPids() {
  return new Set(processes().filter((p) => p.ppid === process.pid && p.cmdline[0].includes('chrom')).map((p) => p.pid));
}

/**
 * The network service of the browser `pid`: the process that carries all of that browser's
 * HTTP, WebSocket and WebRTC (UDP) traffic. Stopping it drops that one browser's network.
 */
function networkServiceOf(pid) {
  // Chromium rewrites its children's command lines into one space-separated string.
  const p = processes().find((x) => x.ppid === pid && x.cmdline.join(' ').includes('--utility-sub-type=network.mojom.NetworkService'));
  if (!p) {
    const near = processes().filter((x) => x.pid === pid || x.ppid === pid).map((x) => `${x.pid}<${x.ppid} ${x.cmdline.join(' ').slice(0, 120)}`);
    throw new Error(`no network service process under browser ${pid}: ${near.join('; ')}`);
  }
  return p.pid;
}

async function launch(work, label, wav, { micAllowed = true, autoplay = true } = {}) {
  const before = browserPids();
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
      // Most browsers play audio without a gesture; the guest gets Chrome's default policy, so
      // a page opened without one is blocked and shows "Tap to listen".
      autoplay ? '--autoplay-policy=no-user-gesture-required' : '--autoplay-policy=document-user-activation-required',
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
  const pids = [...browserPids()].filter((x) => !before.has(x));
  return { browser, context, page, pid: pids.length === 1 ? pids[0] : undefined };
}

/**
 * Captures `page` at desktop and phone sizes as `<name>-desktop.png` and `<name>-phone.png`,
 * whole: the viewport is made as tall as the page, so the fixed control bar sits where it does
 * at the end of the page (a full-page capture would draw it across the middle). Checks first,
 * at each size, that nothing ends behind the control bar. Looks at the page without a gesture
 * (see `withoutGesture`), so a screenshot never unblocks audio.
 */
async function shot(page, name) {
  for (const [size, viewport] of [
    ['desktop', DESKTOP],
    ['phone', PHONE],
  ]) {
    await page.setViewportSize(viewport);
    await sleep(150);
    const covered = await withoutGesture(page, COVERED_BY_BAR);
    if (covered?.length) throw new Error(`${name} (${size}): behind the control bar: ${JSON.stringify(covered)}`);
    const height = await withoutGesture(page, 'document.documentElement.scrollHeight');
    if (height > viewport.height) {
      await page.setViewportSize({ width: viewport.width, height });
      await sleep(150);
    }
    const file = join(SHOTS, `${name}-${size}.png`);
    await page.screenshot({ path: file, timeout: WAIT });
    summary.screenshots.push(`${name}-${size}.png`);
  }
  await page.setViewportSize(DESKTOP);
}

/**
 * An expression: with the page scrolled to its end, what of the room (buttons, links, fields,
 * list items, text) the fixed control bar still covers. `null` without a bar.
 */
const COVERED_BY_BAR = `(() => {
  const bar = document.querySelector('nav.controls');
  if (!bar || !bar.getClientRects().length) return null;
  const y = window.scrollY;
  window.scrollTo(0, document.documentElement.scrollHeight);
  const top = bar.getBoundingClientRect().top;
  const covered = [...document.querySelectorAll('main button, main a, main input, main select, main li, main p, main h2, main h3')]
    .filter((e) => !bar.contains(e) && !e.closest('dialog, .floats, .audio-sink') && e.getClientRects().length)
    .filter((e) => e.getBoundingClientRect().bottom > top + 1)
    .map((e) => e.textContent.trim().slice(0, 40));
  window.scrollTo(0, y);
  return covered;
})()`;

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

/**
 * Whether `identity`'s audio reaches `page` now: on one receiver, packets and audio energy grow
 * over a second. Unlike `hears`, it cannot pass on energy counted before an outage.
 */
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

/**
 * Evaluates `expression` in `page` without a user gesture. Playwright's own evaluate (and its
 * locators) run with one, which counts as the person having interacted with the page and would
 * let blocked audio start.
 */
async function withoutGesture(page, expression) {
  const cdp = await page.context().newCDPSession(page);
  try {
    const r = await cdp.send('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true, userGesture: false });
    if (r.exceptionDetails) throw new Error(`evaluate failed: ${JSON.stringify(r.exceptionDetails)}`);
    return r.result.value;
  } finally {
    await cdp.detach().catch(() => {});
  }
}

/** An expression for `withoutGesture`: the "Tap to listen" button, playback state and `identity`'s track. */
function blockedPlaybackProbe(identity) {
  return `(async () => {
    const room = window.stoaRoom;
    const button = [...document.querySelectorAll('button')].find((b) => b.textContent.includes('Tap to listen'));
    const p = room?.remoteParticipants.get(${JSON.stringify(identity)});
    const receiver = p && [...p.audioTrackPublications.values()].find((x) => x.track?.receiver)?.track.receiver;
    let energy = 0;
    for (const s of (await receiver?.getStats())?.values() ?? []) if (s.type === 'inbound-rtp') energy = s.totalAudioEnergy ?? 0;
    return {
      button: Boolean(button && !button.hidden),
      subscribed: Boolean(receiver),
      canPlaybackAudio: room?.canPlaybackAudio ?? null,
      energy,
      elements: [...document.querySelectorAll('.audio-sink audio')].map((a) => ({ identity: a.dataset.identity, paused: a.paused })),
    };
  })()`;
}

/** Whether the page's audio elements play: LiveKit's playback flag and each element's state. */
function playback(page) {
  return page.evaluate(() => ({
    canPlaybackAudio: window.stoaRoom?.canPlaybackAudio ?? null,
    elements: [...document.querySelectorAll('.audio-sink audio')].map((a) => ({ identity: a.dataset.identity, paused: a.paused })),
  }));
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

async function scenario(host, listener, blocked, launchGuest) {
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

  const scheduledId = await step('host schedules a room for tomorrow', async () => {
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
    return decodeURIComponent(new URL(H.url()).pathname.split('/').pop());
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
  const roomPath = `/rooms/${encodeURIComponent(roomId)}`;

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

  await step('listener joins, hears the host and sees them speak', async () => {
    await L.getByRole('heading', { name: 'Morning audio standup' }).waitFor();
    await L.getByRole('button', { name: 'Raise hand' }).waitFor();
    await hears(L, hostSession.user, 'host (by the listener)');
    // The server's active-speaker detection (SpeakersChanged) is what livekit-client's
    // activeSpeakers list holds; the page's own level meter does not feed it.
    // For a failure report: the SpeakersChanged messages that arrive from here on.
    await L.evaluate(() => {
      window.speakerUpdates = [];
      window.stoaRoom?.engine?.on('speakersChanged', (u) => window.speakerUpdates.push(u.map((x) => ({ sid: x.sid, level: x.level, active: x.active }))));
    });
    summary.speakers = await until('SpeakersChanged to name the host an active speaker', () =>
      L.evaluate((id) => {
        const p = window.stoaRoom?.activeSpeakers.find((x) => x.identity === id);
        return p ? { identity: p.identity, level: p.audioLevel, speaking: p.isSpeaking } : null;
      }, hostSession.user), 10_000).catch(async (e) => {
      // What the host's publisher negotiated: the server needs the audio-level extension.
      const sdp = await H.evaluate(() => {
        const pc = window.stoaRoom?.engine?.pcManager?.publisher?.pc;
        const ext = (d) => (d?.sdp ?? '').split('\r\n').filter((l) => l.startsWith('a=extmap') || l.startsWith('m='));
        return { offer: ext(pc?.localDescription), answer: ext(pc?.remoteDescription) };
      });
      const seen = await L.evaluate(async (room) => ({
        updates: window.speakerUpdates,
        sids: [...(window.stoaRoom?.remoteParticipants.values() ?? [])].map((p) => [p.identity, p.sid]),
        stats: await (await fetch(`/api/rooms/${room}/stats`, { headers: { Authorization: `Bearer ${JSON.parse(localStorage.getItem('stoa.session')).token}` } })).json(),
      }), roomId);
      throw new Error(`${e.message}; the host's publisher SDP: ${JSON.stringify(sdp)}; the listener saw ${JSON.stringify(seen)}`);
    });
    log('server-reported speaker:', JSON.stringify(summary.speakers));
    await L.locator(`.tile.speaking[data-user="${hostSession.user}"]`).waitFor({ timeout: 10_000 });
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
    await H.locator(`.tile.speaking[data-user="${listenerSession.user}"]`).waitFor({ timeout: 10_000 });
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

  await step("the listener's network drops; the page says so and recovers by itself", async () => {
    if (!listener.pid) throw new Error("cannot tell the listener's browser process apart");
    const net = networkServiceOf(listener.pid);
    const sidBefore = await L.evaluate(() => window.stoaRoom?.localParticipant.sid);
    const banner = L.getByText('Connection lost. Reconnecting…');
    const started = Date.now();
    frozen.add(net);
    process.kill(net, 'SIGSTOP');
    let shown;
    try {
      // The client notices when its pings go unanswered (the server's 15 s ping timeout).
      await banner.waitFor({ timeout: 28_000 });
      shown = Date.now() - started;
      log(`reconnect banner after ${shown} ms without network`);
      await shot(L, '12-room-reconnecting');
    } finally {
      process.kill(net, 'SIGCONT');
      frozen.delete(net);
    }
    const restored = Date.now();
    await banner.waitFor({ state: 'hidden', timeout: 28_000 });
    const recovered = Date.now() - restored;
    await L.getByRole('button', { name: 'Raise hand' }).waitFor();
    await flowing(L, hostSession.user, 'host after the outage');
    // The host sees the listener in the audience again.
    await H.getByRole('button', { name: 'Invite to speak: Leo Listener' }).waitFor();
    // Sessions are never resumed: the page rejoined as a new participant session.
    const sidAfter = await L.evaluate(() => window.stoaRoom?.localParticipant.sid);
    if (!sidAfter || sidAfter === sidBefore) throw new Error(`no rejoin: participant sid ${sidBefore} -> ${sidAfter}`);
    summary.reconnect = { bannerAfterMs: shown, recoveredAfterMs: recovered, sidBefore, sidAfter };
    log('reconnect:', JSON.stringify(summary.reconnect));
  }, 90_000);

  await step('a refused microphone is explained; a kicked member is told why', async () => {
    const M = blocked.page;
    await signIn(M, 'Mia Mic');
    await M.getByRole('link', { name: 'Create room' }).click();
    await M.getByLabel('Title').fill('Open mic');
    await M.getByLabel(/^Open:/).check();
    await M.getByRole('button', { name: 'Go live' }).click();
    await M.getByText('Microphone access is blocked').waitFor();
    await shot(M, '13-room-microphone-blocked');
    await M.getByRole('button', { name: 'End room' }).click();
    await M.getByRole('button', { name: 'End for everyone' }).click();
    await M.getByRole('heading', { name: 'This room has ended' }).waitFor();
    await M.goto(roomPath);
    await M.getByRole('button', { name: 'Raise hand' }).waitFor();
    const kick = H.getByRole('button', { name: 'Kick: Mia Mic' });
    await kick.waitFor();
    await kick.click();
    await M.getByRole('heading', { name: 'You were removed from this room' }).waitFor();
    await shot(M, '14-removed');
    await blocked.browser.close();
  });

  await step('a shared link goes through sign-in into the room; blocked playback asks for a tap', async () => {
    const guest = await launchGuest();
    let G = guest.page;
    try {
      // The link the share dialog gives, opened by someone not signed in.
      await G.goto(roomPath);
      await G.waitForURL(/\/signin\?next=/);
      await G.getByText('You are invited to').waitFor();
      await G.getByText('Morning audio standup').waitFor();
      await shot(G, '15-sign-in-invited');
      await G.getByLabel('Display name').fill('Gus Guest');
      await G.getByRole('button', { name: 'Continue' }).click();
      await G.waitForURL((u) => u.pathname === roomPath);
      await G.getByRole('heading', { name: 'Morning audio standup' }).waitFor();
      const guestSession = await sessionOf(G);
      await H.getByRole('button', { name: 'Invite to speak: Gus Guest' }).waitFor();

      // The link opened again later in a new tab, signed in, with no gesture on the site yet
      // (Chrome lets a gesture carry over same-site navigations, so a fresh context): the
      // browser refuses to play.
      const signedIn = await guest.context.storageState();
      await guest.context.close();
      guest.context = await guest.browser.newContext({ viewport: DESKTOP, baseURL: BASE, storageState: signedIn });
      G = await guest.context.newPage();
      G.setDefaultTimeout(WAIT);
      G.on('console', (m) => consoleLines.push(`[guest] ${m.type()}: ${m.text()}`));
      guest.page = G;
      await G.goto(roomPath);
      // Until the tap, the page is only looked at without a gesture (see `withoutGesture`).
      const blockedState = await until('"Tap to listen" with the host track subscribed', async () => {
        const x = await withoutGesture(G, blockedPlaybackProbe(hostSession.user));
        return x.button && x.subscribed ? x : null;
      });
      if (blockedState.canPlaybackAudio !== false || blockedState.elements.some((e) => !e.paused)) {
        throw new Error(`playback not blocked: ${JSON.stringify(blockedState)}`);
      }
      await shot(G, '16-room-tap-to-listen');
      const tap = G.getByRole('button', { name: 'Tap to listen' });
      await tap.click();
      await tap.waitFor({ state: 'hidden' });
      const playing = await until('the host audio element to play', async () => {
        const x = await playback(G);
        return x.canPlaybackAudio && x.elements.some((e) => e.identity === hostSession.user && !e.paused) ? x : null;
      });
      const heard = await flowing(G, hostSession.user, 'host (by the guest, after the tap)');
      summary.autoplay = { blocked: blockedState, afterTap: playing, heard };
      await G.getByRole('button', { name: 'Leave' }).click();
      await G.getByRole('heading', { name: 'Rooms', level: 1 }).waitFor();
      await until("the guest to leave the host's audience", async () =>
        (await H.getByRole('button', { name: 'Invite to speak: Gus Guest' }).count()) === 0,
      );
      summary.guest = guestSession.user;
    } finally {
      await guest.browser.close();
    }
  }, 75_000);

  await step("the listener's reaction floats on the host's page", async () => {
    await L.getByRole('button', { name: 'React 👏' }).click();
    const float = H.locator(`.float[data-user="${listenerSession.user}"]`, { hasText: '👏' });
    await float.first().waitFor({ state: 'attached', timeout: 10_000 });
    await shot(H, '17-reaction');
  });

  await step('share dialog and the embeddable card', async () => {
    await H.getByRole('button', { name: 'Share', exact: true }).click();
    await H.getByRole('heading', { name: 'Share this room' }).waitFor();
    if ((await H.getByLabel('Link').inputValue()) !== `${BASE}${roomPath}`) throw new Error('the share link is not the room link');
    await shot(H, '18-share');
    await H.getByRole('button', { name: 'Done' }).click();
    // A page with no session at all, as in someone else's site: the card needs none and makes
    // none.
    const outsider = await host.browser.newContext({ viewport: DESKTOP, baseURL: BASE });
    try {
      const embed = await outsider.newPage();
      embed.setDefaultTimeout(WAIT);
      const calls = [];
      embed.on('request', (r) => calls.push(`${r.method()} ${new URL(r.url()).pathname}`));
      await embed.goto(`/embed/rooms/${encodeURIComponent(roomId)}`);
      await embed.getByText('LIVE', { exact: true }).waitFor();
      await embed.getByText(/🎙 Hana Host · 🎧 \d+ listening/).waitFor();
      await shot(embed, '19-embed-live');
      await embed.goto(`/embed/rooms/${encodeURIComponent(scheduledId)}`);
      await embed.getByText(/^Scheduled · /).waitFor();
      await embed.getByRole('heading', { name: 'Friday design review' }).waitFor();
      await shot(embed, '20-embed-scheduled');
      await embed.goto('/embed/rooms/zzzzzzzzzzzzzzzz');
      await embed.getByText('This room does not exist.').waitFor();
      await shot(embed, '21-embed-not-found');
      const api = calls.filter((c) => c.includes('/api/'));
      const unexpected = api.filter((c) => !/^GET \/api\/rooms\/[^/]+\/card$/.test(c));
      if (unexpected.length) throw new Error(`the embed card called more than its public card: ${unexpected.join(', ')}`);
      if (await embed.evaluate(() => localStorage.getItem('stoa.session'))) throw new Error('the embed card signed someone in');
      summary.embedCalls = api.length;
    } finally {
      await outsider.close();
    }
  });

  await step('host ends the room; both land on the ended screen', async () => {
    await H.getByRole('button', { name: 'End room' }).click();
    await shot(H, '22-end-confirm');
    await H.getByRole('button', { name: 'End for everyone' }).click();
    await H.getByRole('heading', { name: 'This room has ended' }).waitFor();
    await L.getByRole('heading', { name: 'This room has ended' }).waitFor({ timeout: 20_000 });
    await H.getByText('Peak listeners').waitFor();
    await shot(H, '23-ended-host');
    await shot(L, '24-ended-listener');
    const embed = await listener.context.newPage();
    embed.setDefaultTimeout(WAIT);
    await embed.goto(`/embed/rooms/${encodeURIComponent(roomId)}`);
    await embed.getByText('Ended', { exact: true }).waitFor();
    await shot(embed, '25-embed-ended');
    await embed.close();
  });
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  // Only this run's screenshots: names change as screens are added.
  for (const f of readdirSync(SHOTS)) if (f.endsWith('.png')) rmSync(join(SHOTS, f));
  const work = mkdtempSync(join(tmpdir(), 'stoa-web-'));
  const hostWav = join(work, 'host-440.wav');
  const listenerWav = join(work, 'listener-660.wav');
  writeFileSync(hostWav, sineWav(440, 20, 0.5));
  writeFileSync(listenerWav, sineWav(660, 20, 0.5));
  let host;
  let listener;
  let blocked;
  let guest;
  const deadline = setTimeout(() => {
    for (const pid of frozen) process.kill(pid, 'SIGCONT');
    summary.error = `whole walk-through exceeded ${DEADLINE_MS} ms`;
    console.error(consoleLines.join('\n'));
    console.log(JSON.stringify(summary));
    process.exit(1);
  }, DEADLINE_MS);
  try {
    host = await launch(work, 'host', hostWav);
    listener = await launch(work, 'listener', listenerWav);
    blocked = await launch(work, 'blocked', listenerWav, { micAllowed: false });
    const launchGuest = async () => {
      guest = await launch(work, 'guest', listenerWav, { autoplay: false });
      return guest;
    };
    await scenario(host, listener, blocked, launchGuest);
    summary.ok = true;
    summary.step = undefined;
  } catch (err) {
    summary.error = String(err?.stack || err);
    log(`FAILED at step "${summary.step}": ${err?.message || err}`);
    for (const pid of frozen) process.kill(pid, 'SIGCONT');
    for (const [label, b] of [
      ['host', host],
      ['listener', listener],
      ['guest', guest],
    ]) {
      if (b?.page) await b.page.screenshot({ path: join(SHOTS, `failure-${label}.png`), timeout: 5000 }).catch(() => {});
    }
    console.error('----- browser console -----');
    console.error(consoleLines.slice(-300).join('\n'));
  } finally {
    clearTimeout(deadline);
    await Promise.race([Promise.allSettled([host, listener, blocked, guest].map((b) => b?.browser.close())), sleep(5000)]);
    rmSync(work, { recursive: true, force: true });
  }
  log(`screenshots in ${SHOTS}`);
  console.log(JSON.stringify(summary));
  process.exit(summary.ok ? 0 : 1);
}

await main();
