// Audio for the web tests: their fake microphones (Chromium's --use-file-for-fake-audio-capture)
// and whether a participant's audio reaches a page. Imports nothing, so that the browser tests'
// scripts (tests/browser/e2e.mjs, edge.mjs) take their fake microphones' tone from here too.

/** 16-bit mono PCM WAV, 48 kHz, `seconds` of a sine at `freq` Hz. */
export function sineWav(freq, seconds, amplitude) {
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

/**
 * Whether `identity`'s audio reaches the web app's `page` now: on one of its receivers, packets
 * and audio energy grow over a second (`{ before, after }` samples), else null. Unlike a check
 * of the energy so far, it cannot pass on audio counted before an outage.
 */
export function audioFlowing(page, identity) {
  return page.evaluate(async (id) => {
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
  }, identity);
}
