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

import { sineWav } from './audio.mjs';
import { PIDS, bothRegistered, createRoom, drain, flowing, launch, media, run, shown as whatShown, signIn, step, summary, until } from './twonodes.mjs';

summary.moves = [];

/** Waits until both pages are connected again, to `port`, with new sessions; what they showed meanwhile. */
async function moved(pages, before, port, what, ms) {
  const after = await until(what, async () => {
    const now = await Promise.all(pages.map(media));
    return now.every((m, i) => m.state === 'connected' && m.port === port && m.sid && m.sid !== before[i].sid) ? now : null;
  }, ms);
  const seen = await Promise.all(pages.map(whatShown));
  for (const s of seen) if (s.rejoinOffered) throw new Error(`${what}: a page offered a manual Rejoin`);
  return { after, shown: seen };
}

async function main() {
  const work = mkdtempSync(join(tmpdir(), 'stoa-failover-'));
  const wav = join(work, 'host.wav');
  writeFileSync(wav, sineWav(440, 30, 0.5));
  const silent = join(work, 'listener.wav');
  writeFileSync(silent, sineWav(660, 30, 0.0));
  const host = await launch('host', wav);
  const listener = await launch('listener', silent);
  const [H, L] = [host.page, listener.page];
  try {
    await step('both nodes registered', bothRegistered);

    const { hostUser, roomPath } = await step('the host goes live on node 0 and the listener hears them', async () => {
      const s = await signIn(H, 'Hana Host');
      // Node 1 drained while the room is made: it is placed on node 0.
      await drain(7881, true);
      const room = await createRoom(H, s.token, 'Failover hour');
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
  } finally {
    await host.browser.close().catch(() => {});
    await listener.browser.close().catch(() => {});
    rmSync(work, { recursive: true, force: true });
  }
}

await run('failover', 180_000, main);
