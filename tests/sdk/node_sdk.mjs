#!/usr/bin/env node
// Conformance scenario for LiveKit's Node SDK (`@livekit/rtc-node`) against a Stoa server.
//
// Run by tests/sdk/run.sh inside a private network namespace, with the server at STOA_URL
// (ws://127.0.0.1:7880). Two participants of this SDK join one room:
//   a. alice (may publish) joins and publishes a 440 Hz tone from an AudioSource;
//   b. bob (a listener: canPublish=false) joins, subscribes and decodes alice's audio: the
//      dominant frequency must be 440 Hz and the level well above silence;
//   c. the server mutes alice's track (livekit-server-sdk, Twirp MutePublishedTrack): bob sees
//      TrackMuted (rtc-node 1.1 has no local mute call);
//   d. alice and bob exchange reliable data messages (payload, topic and sender checked);
//   e. the server lets bob publish (UpdateParticipant): bob publishes a 660 Hz tone and alice
//      hears 660 Hz (rtc-node 1.1 has no permission-changed event);
//   f. alice leaves: bob sees ParticipantDisconnected for her.
// Each step has its own timeout and a failure names it. The last stdout line is a JSON summary;
// exit 0 on success, 1 on a failed step.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  AudioFrame,
  AudioSource,
  AudioStream,
  LocalAudioTrack,
  Room,
  RoomEvent,
  TrackKind,
  TrackPublishOptions,
  TrackSource,
  dispose,
} from '@livekit/rtc-node';
import { AccessToken, RoomServiceClient } from 'livekit-server-sdk';

const here = dirname(fileURLToPath(import.meta.url));
const packageVersion = (name) =>
  JSON.parse(readFileSync(join(here, 'node_modules', name, 'package.json'), 'utf8')).version;
const URL = process.env.STOA_URL || 'ws://127.0.0.1:7880';
const API_KEY = process.env.STOA_API_KEY || 'devkey';
const API_SECRET = process.env.STOA_API_SECRET || 'secret';
const RATE = 48_000;
const FRAME = 480; // 10 ms

const started = Date.now();
const log = (...args) =>
  console.error(`[node +${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);

const summary = {
  sdk: 'node',
  ok: false,
  room: `sdk-node-${randomBytes(4).toString('hex')}`,
  versions: { '@livekit/rtc-node': packageVersion('@livekit/rtc-node') },
  steps: [],
};

class StepError extends Error {}

async function step(name, timeoutMs, fn) {
  const t0 = Date.now();
  log(`step ${name}: start (timeout ${timeoutMs} ms)`);
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new StepError(`${name}: timed out after ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    const value = await Promise.race([fn(), timeout]);
    const ms = Date.now() - t0;
    summary.steps.push({ step: name, ok: true, ms });
    log(`step ${name}: ok in ${ms} ms`);
    return value;
  } catch (err) {
    summary.steps.push({ step: name, ok: false });
    if (err instanceof StepError) throw err;
    throw new StepError(`${name}: ${err?.message ?? err}`);
  } finally {
    clearTimeout(timer);
  }
}

async function token(identity, grant) {
  const at = new AccessToken(API_KEY, API_SECRET, { identity, name: identity, ttl: '10m' });
  at.addGrant({ roomJoin: true, room: summary.room, ...grant });
  return at.toJwt();
}

/** Resolves once, on the first `event` from `emitter` that `pick` maps to a value. */
function once(emitter, event, pick = () => true) {
  return new Promise((resolve) => {
    const handler = (...args) => {
      const value = pick(...args);
      if (value) {
        emitter.off(event, handler);
        resolve(value);
      }
    };
    emitter.on(event, handler);
  });
}

/** Pushes a sine tone into an AudioSource in real time until stopped. */
class Tone {
  constructor(freq) {
    this.freq = freq;
    this.source = new AudioSource(RATE, 1);
    this.running = false;
  }

  start() {
    this.running = true;
    this.done = (async () => {
      let n = 0;
      while (this.running) {
        const data = new Int16Array(FRAME);
        for (let i = 0; i < FRAME; i++) {
          data[i] = Math.round(0.5 * 32767 * Math.sin((2 * Math.PI * this.freq * (n + i)) / RATE));
        }
        await this.source.captureFrame(new AudioFrame(data, RATE, 1, FRAME));
        n += FRAME;
      }
    })();
  }

  async stop() {
    this.running = false;
    await this.done?.catch(() => {});
  }
}

/** Dominant frequency (Goertzel scan, 5 Hz steps from 100 to 2000 Hz) and RMS of `x`. */
function analyse(x) {
  let best = { hz: 0, power: -1 };
  for (let hz = 100; hz <= 2000; hz += 5) {
    const w = (2 * Math.PI * hz) / RATE;
    const c = 2 * Math.cos(w);
    let s1 = 0;
    let s2 = 0;
    for (let i = 0; i < x.length; i++) {
      const s0 = x[i] + c * s1 - s2;
      s2 = s1;
      s1 = s0;
    }
    const power = s1 * s1 + s2 * s2 - c * s1 * s2;
    if (power > best.power) best = { hz, power };
  }
  let sum = 0;
  for (const v of x) sum += v * v;
  return { hz: best.hz, rms: Math.sqrt(sum / x.length) };
}

/** Decodes `track` until `seconds` of audio above silence; checks the frequency and level. */
async function hear(track, expectHz, seconds = 1) {
  const stream = new AudioStream(track, RATE, 1);
  const reader = stream.getReader();
  const audio = [];
  try {
    while (audio.length < seconds * RATE) {
      const { value: frame, done } = await reader.read();
      if (done) throw new StepError('the audio stream ended');
      const samples = Array.from(frame.data, (v) => v / 32768);
      const rms = Math.sqrt(samples.reduce((a, v) => a + v * v, 0) / samples.length);
      if (rms < 0.01) continue; // start-up silence, or a gap
      audio.push(...samples);
    }
  } finally {
    reader.releaseLock();
    await stream.cancel().catch(() => {});
  }
  const { hz, rms } = analyse(audio);
  log(`heard ${hz} Hz (expected ${expectHz}), rms ${rms.toFixed(3)}`);
  if (Math.abs(hz - expectHz) > 15) throw new StepError(`heard ${hz} Hz, expected ${expectHz} Hz`);
  if (rms < 0.05) throw new StepError(`level too low: rms ${rms.toFixed(3)}`);
  return { hz, rms: Number(rms.toFixed(3)) };
}

function audioFrom(room, identity) {
  return once(room, RoomEvent.TrackSubscribed, (track, _pub, participant) =>
    track.kind === TrackKind.KIND_AUDIO && participant.identity === identity ? track : null,
  );
}

function micOptions() {
  const options = new TrackPublishOptions();
  options.source = TrackSource.SOURCE_MICROPHONE;
  return options;
}

async function main() {
  const alice = new Room();
  const bob = new Room();
  const toneA = new Tone(440);
  const toneB = new Tone(660);
  const http = URL.replace(/^ws/, 'http');
  const service = new RoomServiceClient(http, API_KEY, API_SECRET);
  for (const [name, room] of [['alice', alice], ['bob', bob]]) {
    room.on(RoomEvent.DataReceived, (payload, p, kind, topic) =>
      log(`${name} received ${payload.length} bytes from ${p?.identity} (kind ${kind}, topic ${topic})`),
    );
  }
  try {
    const aliceTrack = await step('alice-joins-and-publishes', 30_000, async () => {
      await alice.connect(URL, await token('alice', { canPublish: true }), { autoSubscribe: true });
      const track = LocalAudioTrack.createAudioTrack('mic', toneA.source);
      toneA.start();
      return alice.localParticipant.publishTrack(track, micOptions());
    });

    const bobHearsAlice = audioFrom(bob, 'alice');
    await step('bob-joins-as-listener', 30_000, async () => {
      // A listener that may send data (absent, canPublishData follows canPublish, as in LiveKit).
      const grant = { canPublish: false, canSubscribe: true, canPublishData: true };
      await bob.connect(URL, await token('bob', grant), {
        autoSubscribe: true,
      });
    });
    const remote = await step('bob-subscribes', 20_000, () => bobHearsAlice);
    summary.heardByBob = await step('bob-hears-440', 20_000, () => hear(remote, 440));

    await step('server-mutes-alice', 15_000, async () => {
      const muted = once(bob, RoomEvent.TrackMuted, (_pub, p) => p.identity === 'alice');
      await service.mutePublishedTrack(summary.room, 'alice', aliceTrack.sid, true);
      await muted;
    });

    await step('data-messages', 15_000, async () => {
      const enc = new TextEncoder();
      const dec = new TextDecoder();
      const atBob = once(bob, RoomEvent.DataReceived, (payload, p, _kind, topic) => ({
        text: dec.decode(payload),
        from: p?.identity,
        topic,
      }));
      await alice.localParticipant.publishData(enc.encode('hello from alice'), {
        reliable: true,
        topic: 'chat',
      });
      log('alice sent her message');
      const got = await atBob;
      if (got.text !== 'hello from alice' || got.from !== 'alice' || got.topic !== 'chat') {
        throw new StepError(`bob got ${JSON.stringify(got)}`);
      }
      const atAlice = once(alice, RoomEvent.DataReceived, (payload, p, _kind, topic) => ({
        text: dec.decode(payload),
        from: p?.identity,
        topic,
      }));
      await bob.localParticipant.publishData(enc.encode('hi alice'), { reliable: true, topic: 'chat' });
      const back = await atAlice;
      if (back.text !== 'hi alice' || back.from !== 'bob' || back.topic !== 'chat') {
        throw new StepError(`alice got ${JSON.stringify(back)}`);
      }
    });

    summary.heardByAlice = await step('permission-granted-then-bob-publishes', 40_000, async () => {
      await service.updateParticipant(summary.room, 'bob', undefined, {
        canSubscribe: true,
        canPublish: true,
        canPublishData: true,
      });
      const aliceHearsBob = audioFrom(alice, 'bob');
      const track = LocalAudioTrack.createAudioTrack('mic', toneB.source);
      toneB.start();
      await bob.localParticipant.publishTrack(track, micOptions());
      return hear(await aliceHearsBob, 660);
    });

    await step('alice-leaves', 15_000, async () => {
      const left = once(bob, RoomEvent.ParticipantDisconnected, (p) => p.identity === 'alice');
      await alice.disconnect();
      await left;
    });
    summary.ok = true;
  } finally {
    await toneA.stop();
    await toneB.stop();
    for (const room of [alice, bob]) {
      await Promise.race([room.disconnect().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
    }
  }
}

let code = 1;
try {
  await Promise.race([
    main(),
    new Promise((_, reject) => setTimeout(() => reject(new StepError('whole run: timed out after 150 s')), 150_000)),
  ]);
  code = 0;
} catch (err) {
  summary.error = err?.message ?? String(err);
}
summary.seconds = Number(((Date.now() - started) / 1000).toFixed(1));
console.log(JSON.stringify(summary));
await Promise.race([dispose().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
process.exit(code);
