#!/usr/bin/env node
// Browser end-to-end test: unmodified livekit-client in headless Chromium against a
// LiveKit-compatible server (stoa).
//
// Run it inside a private network namespace together with the server, through run.sh:
//   unshare -n bash tests/browser/run.sh target/debug/stoa
//
// It serves page.html, page.js and livekit-client's UMD bundle from an HTTP server on
// 127.0.0.1 (ephemeral port), launches Debian's Chromium headless with a generated 1 kHz WAV
// as the fake microphone, opens two pages A and B, and walks the scenario:
//   a. A joins room e2e-<random> (canPublish) and publishes its microphone;
//   b. B joins (canPublish=false, canSubscribe=true), sees A and subscribes to A's audio;
//   c. B hears A: inbound-rtp audio packetsReceived > 50 and totalAudioEnergy > 0;
//   d. B's publish attempt is refused (client-side 403);
//  then, not in the relay runs:
//   c2. A sends RED (audio/red, as livekit-client offers by default) and B receives RED; the
//       dominant frequency B decodes is A's 1 kHz;
//   d2. A sends B a data message;
//   d3. the server (livekit-server-sdk, Twirp UpdateParticipant) lets B publish: B sees
//       ParticipantPermissionsChanged, publishes, and A decodes B's 1 kHz;
//  with E2E_CUT=1 (run.sh STOA_E2E_CUT=1), after c:
//   x. B's network path is cut (iptables in the namespace: its signaling connection, which goes
//      through a relay here, gets TCP resets; its media UDP is dropped) for E2E_CUT_MS (6 s)
//      and restored; B resumes: Reconnected, the same sid on both pages, no leave or join seen
//      by either, B hears A again; the time from restoration to audio is printed;
//   e. A mutes, B sees TrackMuted for A's publication;
//   f. A leaves, B sees ParticipantDisconnected for A.
// Each step has its own timeout and a failure names it. The last stdout line is a JSON summary;
// exit 0 on success, 1 on a failed step. Browser console and Chromium's own log are printed
// (to stderr) on failure.
//
// Environment: STOA_URL (ws://127.0.0.1:7880), STOA_API_KEY (devkey), STOA_API_SECRET (secret),
// CHROMIUM (/usr/bin/chromium), E2E_LOG_LEVEL (livekit-client log level in the pages, debug),
// E2E_TIMEOUT_MS (whole-run deadline, 100000), E2E_VERBOSE=1 (print browser logs on success too).

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { connect as tcpConnect, createServer as createTcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

import { chromium } from 'playwright-core';
import { AccessToken, RoomServiceClient } from 'livekit-server-sdk';

import { sineWav } from '../web/audio.mjs';
import { call, startPageServer } from './pages.mjs';

const require = createRequire(import.meta.url);

const STOA_URL = process.env.STOA_URL || 'ws://127.0.0.1:7880';
const API_KEY = process.env.STOA_API_KEY || 'devkey';
const API_SECRET = process.env.STOA_API_SECRET || 'secret';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const LOG_LEVEL = process.env.E2E_LOG_LEVEL || 'debug';
const DEADLINE_MS = Number(process.env.E2E_TIMEOUT_MS || 100_000);
const VERBOSE = process.env.E2E_VERBOSE === '1';
// E2E_RELAY=udp|tcp|tls: both pages relay-only (iceTransportPolicy 'relay') through the TURN
// server the JoinResponse names, and B must hear A over a relay candidate of that protocol.
const RELAY = process.env.E2E_RELAY || '';
const RTC_CONFIG = RELAY ? { iceTransportPolicy: 'relay' } : undefined;
// Extra Chromium flags, space-separated, e.g. E2E_CHROMIUM_ARGS='--vmodule=*/webrtc/*=1'.
const EXTRA_ARGS = (process.env.E2E_CHROMIUM_ARGS || '').split(/\s+/).filter(Boolean);
// E2E_RESTART_COMMAND: after B hears A, run this shell command, which restarts the server under
// the live room (run.sh with STOA_E2E_RESTART=1); both pages must then reconnect by themselves
// and B must hear A again before steps d-f run against the restarted server.
const RESTART_COMMAND = process.env.E2E_RESTART_COMMAND || '';
// E2E_SCENARIO=hostile: instead of the steps above, hostile.mjs's attempts (a listener and a
// hard-muted speaker publishing, data sent without permission or under another identity), each
// checked on what the host's page sees.
const SCENARIO = process.env.E2E_SCENARIO || '';
// E2E_CUT=1: page B reaches the server's signaling through a TCP relay in this process, so that
// B's path alone can be cut: once B hears A, iptables (E2E_IPTABLES) refuses B's signaling
// connection (TCP resets, as a firewall or NAT that lost its state does) and drops the UDP of
// B's media connection for CUT_MS, then the rules are removed. B must resume (same sid, no
// leave or join seen by A), hear A again, and the time from restoration to audio is reported.
const CUT = process.env.E2E_CUT === '1';
// E2E_SIGNALING=legacy: both pages use livekit-client's two-connection protocol on /rtc
// (`singlePeerConnection: false`); otherwise its default, one connection on /rtc/v1. Either way
// each page must have spoken only that path (the URLs of the WebSockets it opened).
const SIGNALING = process.env.E2E_SIGNALING === 'legacy' ? 'legacy' : 'v1';
const SIGNAL_PATH = SIGNALING === 'legacy' ? '/rtc' : '/rtc/v1';
const CONNECT_OPTIONS = SIGNALING === 'legacy' ? { legacy: true } : undefined;
const IPTABLES = process.env.E2E_IPTABLES || 'iptables';
const CUT_MS = Number(process.env.E2E_CUT_MS || 6000);

// Per-step timeouts (ms).
const T = {
  launch: 30_000,
  load: 15_000,
  selftest: 10_000,
  connect: 20_000,
  publish: 20_000,
  subscribe: 15_000,
  hear: 20_000,
  restart: 40_000,
  cut: 25_000,
  resume: 40_000,
  reconnect: 60_000,
  refuse: 15_000,
  mute: 10_000,
  leave: 10_000,
  frequency: 10_000,
  data: 10_000,
  permission: 25_000,
};

const started = Date.now();
const elapsed = () => Date.now() - started;
const log = (...args) => console.error(`[e2e +${(elapsed() / 1000).toFixed(1)}s]`, ...args);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class StepError extends Error {
  constructor(step, message) {
    super(message);
    this.step = step;
  }
}

const summary = {
  ok: false,
  failedStep: undefined,
  error: undefined,
  url: STOA_URL,
  relay: RELAY || undefined,
  signaling: SIGNALING,
  room: `e2e-${randomBytes(4).toString('hex')}`,
  versions: {},
  steps: [],
};

let currentStep = 'setup';

/** Fails unless every WebSocket a page opened went to the expected signaling path. */
function checkSignalPaths(page, paths) {
  summary.signalPaths = { ...summary.signalPaths, [page]: paths };
  if (!paths?.length || paths.some((p) => !p.endsWith(SIGNAL_PATH) || (SIGNAL_PATH === '/rtc' && p.endsWith('/v1')))) {
    throw new Error(`page ${page} spoke ${JSON.stringify(paths)}, want only ${SIGNAL_PATH} (${SIGNALING})`);
  }
}

/** Runs `fn` as step `name`, failing it after `timeoutMs`. */
async function step(name, timeoutMs, fn) {
  const t0 = Date.now();
  currentStep = name;
  log(`step ${name}: start (timeout ${timeoutMs} ms)`);
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new StepError(name, `timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  try {
    const value = await Promise.race([fn(), timeout]);
    const ms = Date.now() - t0;
    summary.steps.push({ step: name, ok: true, ms });
    log(`step ${name}: ok in ${ms} ms`);
    return value;
  } catch (err) {
    const ms = Date.now() - t0;
    summary.steps.push({ step: name, ok: false, ms });
    if (err instanceof StepError) throw err;
    throw new StepError(name, err?.message ?? String(err));
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `probe` every `everyMs` until it returns a truthy `done`; the step's timeout bounds it. */
async function pollUntil(probe, everyMs = 250) {
  for (;;) {
    const { done, value } = await probe();
    if (done) return value;
    await sleep(everyMs);
  }
}

function errorText(e) {
  if (!e) return 'unknown error';
  const parts = [e.name, e.message].filter(Boolean).join(': ');
  const extra = ['status', 'reason', 'reasonName', 'code']
    .filter((k) => e[k] !== undefined && e[k] !== null)
    .map((k) => `${k}=${e[k]}`);
  return extra.length ? `${parts} (${extra.join(', ')})` : parts;
}

async function token(identity, grant) {
  const at = new AccessToken(API_KEY, API_SECRET, { identity, name: identity, ttl: '10m' });
  at.addGrant({ roomJoin: true, room: summary.room, ...grant });
  return at.toJwt();
}

const consoleLines = [];
const pendingConsole = [];
let chromiumLogPath;
let failFast; // rejects the running step when the browser or a page dies

/** Hides tokens and join requests and clips very long lines, for printing logs. */
function clip(line) {
  const redacted = line.replace(/(access_token|join_request)=[^&\s'"]+/g, '$1=<redacted>');
  const max = 2000;
  return redacted.length > max
    ? `${redacted.slice(0, max)}… (${redacted.length - max} more characters)`
    : redacted;
}

function capturePage(page, label) {
  page.on('console', (msg) => {
    const index = consoleLines.length;
    const at = (elapsed() / 1000).toFixed(1);
    consoleLines.push(`[${label} +${at}s] ${msg.type()}: ${msg.text()}`);
    // Objects print as "Object" in msg.text(); replace them with their JSON when we can.
    pendingConsole.push(
      Promise.all(
        msg.args().map((a) =>
          a.jsonValue().then(
            (v) => (typeof v === 'string' ? v : JSON.stringify(v)),
            () => undefined,
          ),
        ),
      ).then(
        (parts) => {
          if (parts.length && parts.every((p) => p !== undefined)) {
            consoleLines[index] = `[${label} +${at}s] ${msg.type()}: ${parts.join(' ')}`;
          }
        },
        () => {},
      ),
    );
  });
  page.on('pageerror', (err) => {
    consoleLines.push(`[${label} +${(elapsed() / 1000).toFixed(1)}s] pageerror: ${err.stack || err}`);
  });
  page.on('requestfailed', (req) => {
    consoleLines.push(
      `[${label} +${(elapsed() / 1000).toFixed(1)}s] requestfailed: ${req.method()} ${req.url()} ${req.failure()?.errorText}`,
    );
  });
  page.on('crash', () => failFast?.(new Error(`page ${label} crashed`)));
}

async function printBrowserLogs() {
  await Promise.race([Promise.allSettled(pendingConsole), sleep(2000)]);
  console.error('----- browser console (A = publisher page, B = subscriber page) -----');
  for (const line of consoleLines) console.error(clip(line));
  console.error('----- chromium log (D-Bus noise left out) -----');
  let lines = [];
  try {
    lines = readFileSync(chromiumLogPath, 'utf8').split('\n');
  } catch {
    // no log written
  }
  for (const line of lines) {
    // Page console lines are already above.
    if (line && !/dbus|bluez|Floss|:INFO:CONSOLE/i.test(line)) console.error(clip(line));
  }
  console.error('----- end of browser logs -----');
}

/** A TCP relay on 127.0.0.1:<ephemeral> to the server's signaling port (page B's path). */
async function startSignalRelay() {
  const target = new URL(STOA_URL);
  const server = createTcpServer((down) => {
    const up = tcpConnect(Number(target.port || 80), target.hostname);
    const end = () => {
      down.destroy();
      up.destroy();
    };
    down.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

/** Runs iptables with `args` (inside the test's network namespace). */
function iptables(args) {
  return new Promise((resolve, reject) => {
    execFile(IPTABLES, args, (err, _stdout, stderr) => {
      if (err) reject(new Error(`${IPTABLES} ${args.join(' ')}: ${stderr || err.message}`));
      else resolve();
    });
  });
}

/** The rules that cut B: its signaling relay port (TCP resets) and its media ports (UDP drops). */
function cutRules(relayPort, udpPorts) {
  // The resets these rules send cross INPUT too (loopback): they must not be caught.
  const reset = ['!', '--tcp-flags', 'RST', 'RST', '-j', 'REJECT', '--reject-with', 'tcp-reset'];
  const rules = [
    ['-p', 'tcp', '--dport', String(relayPort), ...reset],
    ['-p', 'tcp', '--sport', String(relayPort), ...reset],
  ];
  for (const port of udpPorts) {
    rules.push(['-p', 'udp', '--sport', String(port), '-j', 'DROP']);
    rules.push(['-p', 'udp', '--dport', String(port), '-j', 'DROP']);
  }
  return rules;
}

async function scenario(ctx) {
  const { context } = ctx;

  const [pageA, pageB] = await step('load pages', T.load, async () => {
    const a = context.pages()[0] ?? (await context.newPage());
    const b = await context.newPage();
    capturePage(a, 'A');
    capturePage(b, 'B');
    for (const [label, page] of [
      ['A', a],
      ['B', b],
    ]) {
      await page.addInitScript((level) => {
        window.__e2eLogLevel = level;
      }, LOG_LEVEL);
      await page.goto(ctx.pageUrl, { timeout: T.load });
      const info = await call(page, 'info');
      if (!info.loaded) throw new Error(`page ${label}: livekit-client UMD bundle did not load`);
      if (!info.browserSupported) {
        throw new Error(`page ${label}: livekit-client says this browser is not supported`);
      }
      summary.versions.livekitClient = info.version;
      summary.versions.userAgent = info.userAgent;
    }
    return [a, b];
  });

  summary.loopbackSelfTest = await step('self-test: loopback audio call inside page A', T.selftest, () =>
    call(pageA, 'loopbackSelfTest', T.selftest - 1000),
  );

  // a. A joins and publishes its microphone.
  const tokenA = await token('pub-A', { canPublish: true, canSubscribe: true });
  const joinA = await step('a: A joins the room', T.connect, async () => {
    const r = await call(pageA, 'connect', STOA_URL, tokenA, RTC_CONFIG, CONNECT_OPTIONS);
    if (!r.ok) throw new Error(`livekit-client could not connect: ${errorText(r.error)}`);
    if (r.canPublish !== true) throw new Error(`A joined without canPublish: ${JSON.stringify(r)}`);
    checkSignalPaths('A', r.signalPaths);
    return r;
  });
  summary.versions.server = joinA.serverVersion;
  const pubA = await step('a: A publishes its microphone', T.publish, async () => {
    const r = await call(pageA, 'publishMicrophone');
    if (!r.ok) throw new Error(`setMicrophoneEnabled(true) failed: ${errorText(r.error)}`);
    if (!String(r.trackSid).startsWith('TR')) throw new Error(`odd track sid ${r.trackSid}`);
    return r;
  });
  summary.publisher = { identity: joinA.identity, sid: joinA.sid, trackSid: pubA.trackSid };

  // b. B joins receive-only, sees A and is subscribed to A's audio.
  const tokenB = await token('sub-B', {
    canPublish: false,
    canSubscribe: true,
    canPublishData: false,
  });
  const urlB = ctx.relay ? `ws://127.0.0.1:${ctx.relay.address().port}` : STOA_URL;
  const joinB = await step('b: B joins the room (canPublish=false)', T.connect, async () => {
    const r = await call(pageB, 'connect', urlB, tokenB, RTC_CONFIG, CONNECT_OPTIONS);
    if (!r.ok) throw new Error(`livekit-client could not connect: ${errorText(r.error)}`);
    checkSignalPaths('B', r.signalPaths);
    if (r.canPublish !== false) {
      throw new Error(`B's permissions say canPublish=${r.canPublish}, want false`);
    }
    return r;
  });
  summary.subscriber = { identity: joinB.identity, sid: joinB.sid };
  await step("b: B sees A and subscribes to A's audio", T.subscribe, () =>
    pollUntil(async () => {
      const view = await call(pageB, 'remoteView');
      const a = view.find((p) => p.identity === joinA.identity);
      const track = a?.tracks.find((t) => t.trackSid === pubA.trackSid);
      const subscribed = await call(pageB, 'events', 'TrackSubscribed');
      const ok =
        track?.subscribed &&
        track.hasTrack &&
        subscribed.some((e) => e.trackSid === pubA.trackSid && e.participant === joinA.identity);
      return { done: ok, value: track };
    }),
  ).catch(async (err) => {
    const view = await call(pageB, 'remoteView').catch(() => 'unavailable');
    throw new StepError(err.step, `${err.message}; B's view of the room: ${JSON.stringify(view)}`);
  });

  // c. B hears A.
  let lastStats;
  summary.stats = await step('c: B hears A (inbound-rtp audio)', T.hear, () =>
    pollUntil(async () => {
      lastStats = await call(pageB, 'inboundAudioStats', joinA.identity);
      const relayed =
        !RELAY || (lastStats.localCandidateType === 'relay' && lastStats.relayProtocol === RELAY);
      const ok =
        lastStats.ok && relayed && lastStats.packetsReceived > 50 && lastStats.totalAudioEnergy > 0;
      return { done: ok, value: lastStats };
    }, 500),
  ).catch((err) => {
    throw new StepError(err.step, `${err.message}; last stats: ${JSON.stringify(lastStats)}`);
  });

  // r. The server restarts under the live room; the pages reconnect by themselves.
  if (RESTART_COMMAND) {
    await step('r: the server restarts (E2E_RESTART_COMMAND)', T.restart, () =>
      new Promise((resolve, reject) => {
        execFile('bash', ['-c', RESTART_COMMAND], (err, stdout, stderr) => {
          if (stdout) log(`restart: ${stdout.trim()}`);
          if (stderr) log(`restart (stderr): ${stderr.trim()}`);
          if (err) reject(new Error(`restart command failed: ${err.message}`));
          else resolve();
        });
      }),
    );
    await step('r: A and B reconnect by themselves', T.reconnect, () =>
      pollUntil(async () => {
        const a = await call(pageA, 'events', 'Reconnected');
        const b = await call(pageB, 'events', 'Reconnected');
        return { done: a.length > 0 && b.length > 0, value: { a: a.length, b: b.length } };
      }, 500),
    );
    summary.statsAfterRestart = await step('r: B hears A again after the restart', T.reconnect, () =>
      pollUntil(async () => {
        // A's track as the restarted server published it anew (a new sid), heard for a second
        // on a new receiver: not the stats of the connection before the restart.
        lastStats = await call(pageB, 'inboundAudioStats', joinA.identity);
        const ok =
          lastStats.ok &&
          lastStats.trackSid !== pubA.trackSid &&
          lastStats.packetsReceived > 50 &&
          lastStats.totalSamplesDuration > 1 &&
          lastStats.totalAudioEnergy > 0;
        return { done: ok, value: lastStats };
      }, 500),
    ).catch((err) => {
      throw new StepError(err.step, `${err.message}; last stats: ${JSON.stringify(lastStats)}`);
    });
  }

  // x. B's network path is cut for a few seconds and restored: B resumes its session.
  if (CUT) {
    const relayPort = ctx.relay.address().port;
    const ports = await call(pageB, 'mediaPorts', joinA.identity);
    if (!ports.length) throw new StepError('x: cut', "no local UDP port found for B's media");
    const count = async (page, name, identity) =>
      (await call(page, 'events', name)).filter((e) => !identity || e.participant === identity).length;
    const before = {
      aSawBJoin: await count(pageA, 'ParticipantConnected', joinB.identity),
      aSawBLeave: await count(pageA, 'ParticipantDisconnected', joinB.identity),
      bSawAJoin: await count(pageB, 'ParticipantConnected', joinA.identity),
      bSawALeave: await count(pageB, 'ParticipantDisconnected', joinA.identity),
      bReconnecting: (await count(pageB, 'Reconnecting')) + (await count(pageB, 'SignalReconnecting')),
      bReconnected: await count(pageB, 'Reconnected'),
    };
    const rules = cutRules(relayPort, ports);
    let restoredAt;
    summary.cut = await step(`x: B's network is cut (TCP ${relayPort}, UDP ${ports.join(',')}) and restored`, T.cut, async () => {
      const t0 = Date.now();
      for (const r of rules) await iptables(['-I', 'INPUT', ...r]);
      try {
        // At least CUT_MS, and until B noticed (its WebSocket meets a reset at its next ping;
        // livekit-client then says SignalReconnecting, or Reconnecting for a failed connection).
        await sleep(CUT_MS);
        await pollUntil(async () => {
          const noticed =
            (await count(pageB, 'Reconnecting')) + (await count(pageB, 'SignalReconnecting'));
          return { done: noticed > before.bReconnecting };
        }, 250);
      } finally {
        for (const r of rules) await iptables(['-D', 'INPUT', ...r]).catch((e) => log(String(e)));
      }
      restoredAt = Date.now();
      return { ms: restoredAt - t0, udpPorts: ports, signalingPort: relayPort };
    });
    const baseline = await call(pageB, 'inboundAudioStats', joinA.identity);
    const fresh = (stats, since) =>
      stats.ok &&
      (stats.totalAudioEnergy ?? 0) > (since.totalAudioEnergy ?? 0) &&
      (stats.packetsReceived ?? 0) - (since.packetsReceived ?? 0);
    let firstAudioMs;
    const reconnectedMs = await step('x: B resumes (Reconnected)', T.resume, () =>
      pollUntil(async () => {
        // Audio may come back before the resume completes: the old ICE path recovers.
        lastStats = await call(pageB, 'inboundAudioStats', joinA.identity);
        if (firstAudioMs === undefined && fresh(lastStats, baseline) >= 3) {
          firstAudioMs = Date.now() - restoredAt;
        }
        const reconnected = (await count(pageB, 'Reconnected')) > before.bReconnected;
        return { done: reconnected, value: Date.now() - restoredAt };
      }, 50),
    );
    const atReconnect = await call(pageB, 'inboundAudioStats', joinA.identity);
    summary.resume = await step('x: B hears A again after the resume (ICE restarted)', T.hear, () =>
      pollUntil(async () => {
        lastStats = await call(pageB, 'inboundAudioStats', joinA.identity);
        if (firstAudioMs === undefined && fresh(lastStats, baseline) >= 3) {
          firstAudioMs = Date.now() - restoredAt;
        }
        return {
          done: fresh(lastStats, atReconnect) >= 50,
          value: {
            restorationToAudioMs: firstAudioMs,
            restorationToReconnectedMs: reconnectedMs,
            restorationToSecondOfAudioAfterResumeMs: Date.now() - restoredAt,
            packetsReceived: lastStats.packetsReceived,
          },
        };
      }, 50),
    ).catch((err) => {
      throw new StepError(err.step, `${err.message}; last stats: ${JSON.stringify(lastStats)}`);
    });
    log(
      `x: time from restoration to audio at B: ${summary.resume.restorationToAudioMs} ms; ` +
        `to Reconnected: ${reconnectedMs} ms; to a second of audio after the resume: ` +
        `${summary.resume.restorationToSecondOfAudioAfterResumeMs} ms`,
    );
    await step('x: it was a resume: same sids, nobody saw a leave or a join', T.refuse, async () => {
      const me = await call(pageB, 'localSid');
      if (me.sid !== joinB.sid) throw new Error(`B's sid changed: ${joinB.sid} -> ${me.sid} (a full rejoin)`);
      const seenByA = (await call(pageA, 'remoteView')).find((p) => p.identity === joinB.identity);
      if (seenByA?.sid !== joinB.sid) throw new Error(`A sees B as ${JSON.stringify(seenByA)}, want sid ${joinB.sid}`);
      const seenByB = (await call(pageB, 'remoteView')).find((p) => p.identity === joinA.identity);
      if (seenByB?.sid !== joinA.sid) throw new Error(`B sees A as ${JSON.stringify(seenByB)}, want sid ${joinA.sid}`);
      const after = {
        aSawBJoin: await count(pageA, 'ParticipantConnected', joinB.identity),
        aSawBLeave: await count(pageA, 'ParticipantDisconnected', joinB.identity),
        bSawAJoin: await count(pageB, 'ParticipantConnected', joinA.identity),
        bSawALeave: await count(pageB, 'ParticipantDisconnected', joinA.identity),
      };
      for (const k of Object.keys(after)) {
        if (after[k] !== before[k]) throw new Error(`${k}: ${before[k]} -> ${after[k]}`);
      }
      const disconnected = await count(pageB, 'Disconnected');
      if (disconnected) throw new Error('B saw Disconnected');
      // The resume went over the same signaling path as the join.
      checkSignalPaths('B (after the resume)', await call(pageB, 'signalPaths'));
      return { sid: me.sid };
    });
  }

  // d. B may not publish.
  const refusal = await step("d: B's publish attempt is refused", T.refuse, async () => {
    const r = await call(pageB, 'tryPublishMicrophone');
    if (!r.refused) {
      throw new Error(`B published track ${r.trackSid} although its token has canPublish=false`);
    }
    if (r.error?.status !== 403) {
      throw new Error(`refused, but not with a 403 permission error: ${errorText(r.error)}`);
    }
    return r.error;
  });
  summary.refusal = errorText(refusal);

  if (!RELAY) {
    summary.red = await step('c2: A sends RED and B receives RED', T.frequency, async () => {
      const sent = await call(pageA, 'negotiatedAudioCodecs', '');
      // What the answer for B's m-line lets the server send there (B's own receiver parameters
      // list its offer's codecs when B is the offerer, on one connection).
      const received = await call(pageB, 'answeredAudioCodecs', joinA.identity);
      const red = (r) => r.ok && r.codecs[0]?.toLowerCase().startsWith('audio/red/');
      if (!red(sent) || !red(received)) {
        throw new Error(`RED not negotiated: A sends ${JSON.stringify(sent)}, B receives ${JSON.stringify(received)}`);
      }
      return { sent: sent.codecs, received: received.codecs };
    });

    summary.frequencyAtB = await step('c2: B decodes 1 kHz from A', T.frequency, async () => {
      const f = await call(pageB, 'dominantFrequency', joinA.identity, 1500);
      if (!f.ok || Math.abs(f.hz - 1000) > 15) {
        throw new Error(`B decoded ${JSON.stringify(f)}, want about 1000 Hz`);
      }
      return f;
    });

    await step('d2: A sends B a data message', T.data, async () => {
      const r = await call(pageA, 'publishData', 'hello from A', 'chat');
      if (!r.ok) throw new Error(`publishData failed: ${errorText(r.error)}`);
      return pollUntil(async () => {
        const got = await call(pageB, 'events', 'DataReceived');
        const hit = got.find(
          (e) => e.participant === joinA.identity && e.topic === 'chat' && e.text === 'hello from A',
        );
        return { done: !!hit, value: hit };
      });
    });

    summary.frequencyAtA = await step(
      'd3: the server lets B publish; B publishes and A decodes 1 kHz',
      T.permission,
      async () => {
        const service = new RoomServiceClient(STOA_URL.replace(/^ws/, 'http'), API_KEY, API_SECRET);
        await service.updateParticipant(summary.room, joinB.identity, undefined, {
          canSubscribe: true,
          canPublish: true,
          canPublishData: true,
        });
        await pollUntil(async () => {
          const changed = await call(pageB, 'events', 'ParticipantPermissionsChanged');
          const hit = changed.find((e) => e.local && e.canPublish === true);
          return { done: !!hit, value: hit };
        });
        const r = await call(pageB, 'tryPublishMicrophone');
        if (r.refused) throw new Error(`B may publish now but was refused: ${errorText(r.error)}`);
        return pollUntil(async () => {
          const f = await call(pageA, 'dominantFrequency', joinB.identity, 1000);
          return { done: f.ok && Math.abs(f.hz - 1000) <= 15, value: f };
        }, 300);
      },
    );
  }

  // e. A mutes; B sees it.
  await step("e: A mutes, B sees TrackMuted", T.mute, async () => {
    const r = await call(pageA, 'muteMicrophone');
    if (!r.ok) throw new Error(`A could not mute: ${errorText(r.error)}`);
    return pollUntil(async () => {
      const muted = await call(pageB, 'events', 'TrackMuted');
      // After a restart A's track is published anew, with a new sid.
      const hit = muted.find(
        (e) =>
          (RESTART_COMMAND || e.trackSid === pubA.trackSid) && e.participant === joinA.identity,
      );
      return { done: !!hit, value: hit };
    });
  });

  // f. A leaves; B sees it.
  await step('f: A leaves, B sees ParticipantDisconnected', T.leave, async () => {
    await call(pageA, 'disconnect');
    return pollUntil(async () => {
      const gone = await call(pageB, 'events', 'ParticipantDisconnected');
      const hit = gone.find((e) => e.participant === joinA.identity);
      const view = await call(pageB, 'remoteView');
      return { done: !!hit && !view.some((p) => p.identity === joinA.identity), value: hit };
    });
  });

  await call(pageB, 'disconnect').catch(() => {});
}

async function main() {
  if (!existsSync(CHROMIUM)) {
    throw new StepError('setup', `${CHROMIUM} not found: run ./test.sh (it installs chromium)`);
  }
  const work = mkdtempSync(join(tmpdir(), 'stoa-e2e-'));
  const wav = join(work, 'tone1k.wav');
  writeFileSync(wav, sineWav(1000, 10, 0.5));

  const chromiumLog = join(work, 'chromium.log');
  chromiumLogPath = chromiumLog;
  const http = await startPageServer();
  const pageUrl = `http://127.0.0.1:${http.address().port}/`;
  log(`page server on ${pageUrl}, stoa at ${STOA_URL}, room ${summary.room}, work dir ${work}`);

  let context;
  let relay;
  const deaths = new Promise((_, reject) => {
    failFast = reject;
  });
  deaths.catch(() => {});
  const overall = setTimeout(() => {
    failFast?.(new Error(`whole run exceeded E2E_TIMEOUT_MS=${DEADLINE_MS} ms`));
  }, DEADLINE_MS);

  try {
    context = await step('launch chromium', T.launch, () =>
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
          // Receive-only pages would otherwise hide host candidates behind mDNS names,
          // which nothing resolves in the namespace.
          '--disable-features=WebRtcHideLocalIpsWithMdns',
          // Chromium's own log (errors and warnings), printed on failure.
          '--enable-logging',
          `--log-file=${chromiumLog}`,
          '--v=0',
          ...EXTRA_ARGS,
        ],
      }),
    );
    context.on('close', () => failFast?.(new Error('browser closed unexpectedly')));
    summary.versions.chromium = context.browser()?.version();
    summary.versions.playwright = require('playwright-core/package.json').version;

    relay = CUT ? await startSignalRelay() : undefined;
    const run =
      SCENARIO === 'hostile'
        ? (await import('./hostile.mjs')).hostileScenario(
            { context, pageUrl },
            { step, call, pollUntil, capturePage, sleep, errorText, summary, stoaUrl: STOA_URL, logLevel: LOG_LEVEL },
          )
        : scenario({ context, pageUrl, relay });
    await Promise.race([run, deaths]);
    summary.ok = true;
  } catch (err) {
    summary.failedStep = err.step ?? currentStep;
    summary.error = err.message ?? String(err);
  } finally {
    clearTimeout(overall);
    failFast = undefined;
    if (!summary.ok || VERBOSE) await printBrowserLogs();
    if (context) await Promise.race([context.close().catch(() => {}), sleep(5000)]);
    await new Promise((resolve) => http.close(resolve));
    relay?.close();
    http.closeAllConnections?.();
    rmSync(work, { recursive: true, force: true });
  }

  summary.ms = elapsed();
  if (!summary.ok) {
    console.error(`E2E FAILED at step "${summary.failedStep}": ${summary.error}`);
  } else {
    console.error(`E2E PASSED in ${summary.ms} ms`);
  }
  console.log(JSON.stringify(summary));
  return summary.ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`E2E FAILED at step "${err.step ?? 'harness'}": ${err.stack ?? err}`);
    summary.failedStep = err.step ?? 'harness';
    summary.error = err.message ?? String(err);
    console.log(JSON.stringify(summary));
    process.exit(1);
  },
);
