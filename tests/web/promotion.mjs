#!/usr/bin/env node
// A listener on an edge is brought on stage and speaks, all through the web app: two
// `stoa serve` nodes on one redis-server, each carrying one participant (tests/failover/run.sh
// starts them with FAILOVER_NODE_CAPACITY=1, inside a private network namespace), a host and a
// listener in headless Chromium (fake microphones: the host a 440 Hz sine, the listener 660 Hz).
//   1. the room is placed on node 0 (node 1 drained meanwhile, then lifted); the host unmutes;
//   2. node 0 is full: the listener's token names node 1, an edge, where her page connects and
//      hears the host through the relay;
//   3. she raises her hand, and the host approves it in the side panel: the edge tells her
//      session to leave (LiveKit's MIGRATION), and her page says so ("Moving you to another
//      server…"), takes a fresh token, which names node 0, and connects there by itself,
//      allowed to publish; no page offers a manual Rejoin;
//   4. she is told she is on stage, unmutes in the control bar and the host hears her;
//   5. the same for a second listener (node 0 is full again), whom the host invites to speak
//      from the audience instead.
// Every wait is bounded; the last stdout line is a JSON summary; exit 0 on success.

import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { sineWav } from './audio.mjs';
import { bothRegistered, createRoom, drain, flowing, launch, log, media, nodeOf, run, shown, signIn, step, summary, until } from './twonodes.mjs';

/** The media URLs the API's token answers named for `page`, oldest first. */
function recordGrants(page) {
  const urls = [];
  page.on('response', async (r) => {
    if (r.request().method() !== 'POST' || !/\/api\/rooms\/[^/]+\/token$/.test(new URL(r.url()).pathname) || !r.ok()) return;
    try {
      urls.push((await r.json()).url);
    } catch {
      urls.push('(unreadable)');
    }
  });
  return urls;
}

/** Where `L` connects on entering the room: node 1 (the edge), hearing the host through the relay. */
async function joinsTheEdge(L, grants, roomPath, hostUser) {
  await L.goto(roomPath);
  await until("the listener's token", () => grants.length > 0 || null);
  if (grants[0] !== 'ws://127.0.0.1:7881') throw new Error(`the listener's token names ${grants[0]}, not the edge`);
  const l = await until('the listener connected', async () => {
    const m = await media(L);
    return m.state === 'connected' ? m : null;
  });
  if (l.port !== 7881) throw new Error(`the listener's page is not on node 1: ${JSON.stringify(l)}`);
  await flowing(L, hostUser, 'host (through the edge)');
  const canPublish = await L.evaluate(() => window.stoaRoom?.localParticipant.permissions?.canPublish ?? null);
  if (canPublish !== false) throw new Error(`the edge listener may publish: ${canPublish}`);
  return l;
}

/** After `L`'s promotion: her page moves to node 0 by itself, told so, allowed to publish, muted. */
async function movesToTheOrigin(L, grants, before, hostUser) {
  const after = await until('the listener connected to node 0 with a new session', async () => {
    const m = await media(L);
    return m.state === 'connected' && m.port === 7880 && m.sid && m.sid !== before.sid ? m : null;
  }, 25_000);
  const seen = await shown(L);
  const move = { before, after, grants: [...grants], banners: seen.banners };
  log('moved:', JSON.stringify(move));
  if (seen.rejoinOffered) throw new Error('the page offered a manual Rejoin');
  if (!seen.banners.some((b) => b.includes('Moving you to another server'))) throw new Error(`the move was not shown: ${JSON.stringify(seen.banners)}`);
  if (grants.length < 2 || grants.at(-1) !== 'ws://127.0.0.1:7880') throw new Error(`the last token does not name the origin: ${JSON.stringify(grants)}`);
  await until('the permission to publish', () => L.evaluate(() => window.stoaRoom?.localParticipant.permissions?.canPublish === true || null));
  await L.getByRole('heading', { name: 'You are a speaker now' }).waitFor();
  await L.locator('.me-state', { hasText: 'You are muted' }).waitFor();
  if ((await media(L)).mic) throw new Error('on stage with an open microphone');
  // Still hearing the host, now from the origin.
  await flowing(L, hostUser, 'host (on the origin)');
  return move;
}

/** `L` unmutes in the control bar and the host's page `H` hears `user`, both still on node 0. */
async function speaks(L, H, user, hostBefore) {
  await L.getByRole('button', { name: 'Unmute', exact: true }).click();
  await L.getByRole('button', { name: 'Mute', exact: true }).waitFor();
  await flowing(H, user, 'new speaker (by the host)');
  if ((await media(L)).port !== 7880) throw new Error('the new speaker left the origin');
  // The host stayed in the session it started with.
  const h = await media(H);
  if (h.sid !== hostBefore.sid || h.port !== 7880) throw new Error(`the host's page moved: ${JSON.stringify({ before: hostBefore, after: h })}`);
  if ((await shown(H)).rejoinOffered) throw new Error("the host's page offered a manual Rejoin");
}

async function main() {
  const work = mkdtempSync(join(tmpdir(), 'stoa-promotion-'));
  const wav = (name, freq) => {
    const path = join(work, `${name}.wav`);
    writeFileSync(path, sineWav(freq, 30, 0.5));
    return path;
  };
  const browsers = [];
  const open = async (label, freq) => {
    const b = await launch(label, wav(label, freq));
    browsers.push(b.browser);
    return b.page;
  };
  try {
    const H = await open('host', 440);
    const L = await open('listener', 660);
    const I = await open('invitee', 880);
    const grants = { L: recordGrants(L), I: recordGrants(I) };
    summary.moves = {};

    await step('both nodes registered', bothRegistered);

    const { hostUser, roomPath, hostBefore } = await step('the host goes live on node 0 and unmutes', async () => {
      const s = await signIn(H, 'Hana Host');
      // Node 1 drained while the room is made: it is placed on node 0.
      await drain(7881, true);
      const room = await createRoom(H, s.token, 'Edge to stage');
      await drain(7881, false);
      const path = `/rooms/${encodeURIComponent(room.id)}`;
      await H.goto(path);
      await H.getByRole('button', { name: 'Unmute microphone' }).click();
      await H.getByRole('button', { name: 'Mute', exact: true }).waitFor();
      const h = await media(H);
      if (h.port !== 7880) throw new Error(`the host is not on node 0: ${JSON.stringify(h)}`);
      // Node 0 is full once its record counts the host (one participant, its capacity).
      await until('node 0 to count the host', async () => (await nodeOf(7880)).participants >= 1 || null);
      return { hostUser: s.user, roomPath: path, hostBefore: h };
    }, 60_000);
    summary.room = roomPath;

    const lea = await step('a listener is sent to node 1 and hears the host through the relay', async () => {
      const s = await signIn(L, 'Lea Listener');
      return { user: s.user, before: await joinsTheEdge(L, grants.L, roomPath, hostUser) };
    }, 60_000);

    await step('she raises her hand and the host approves it', async () => {
      await L.getByRole('button', { name: 'Raise hand' }).click();
      await L.getByRole('button', { name: 'Lower hand' }).waitFor();
      await H.getByRole('button', { name: 'Requests to speak, 1 waiting' }).waitFor();
      await H.locator('.host-panel').getByRole('button', { name: 'Approve: Lea Listener' }).click();
      // Told as on one node (the toast stays 6 s).
      await L.locator('.toast', { hasText: 'You are on stage' }).waitFor();
    });

    await step('her page moves to node 0 by itself, allowed to publish', async () => {
      summary.moves.approved = await movesToTheOrigin(L, grants.L, lea.before, hostUser);
    }, 45_000);

    await step('she unmutes and the host hears her', () => speaks(L, H, lea.user, hostBefore), 45_000);

    const ivo = await step('a second listener is sent to node 1 once it counts nobody', async () => {
      await until('node 1 to count nobody', async () => (await nodeOf(7881)).participants === 0 || null);
      const s = await signIn(I, 'Ivo Invitee');
      return { user: s.user, before: await joinsTheEdge(I, grants.I, roomPath, hostUser) };
    }, 60_000);

    await step('the host invites him to speak from the audience; his page moves to node 0 by itself', async () => {
      await H.getByRole('button', { name: 'Invite to speak: Ivo Invitee' }).click();
      await I.locator('.toast', { hasText: 'You are on stage' }).waitFor();
      summary.moves.invited = await movesToTheOrigin(I, grants.I, ivo.before, hostUser);
    }, 45_000);

    await step('he unmutes and the host hears him', () => speaks(I, H, ivo.user, hostBefore), 45_000);
  } finally {
    for (const b of browsers) await b.close().catch(() => {});
    rmSync(work, { recursive: true, force: true });
  }
}

await run('promotion', 180_000, main);
