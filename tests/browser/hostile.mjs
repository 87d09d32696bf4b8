// Hostile attempts with the unmodified livekit-client in Chromium (run by e2e.mjs with
// E2E_SCENARIO=hostile, inside run.sh's private network namespace; see tests/browser.rs).
//
// Everyone is admitted through the product path: a user token (`stoa token --user`), then
// POST /api/rooms (the host) and POST /api/rooms/{id}/token. Three pages: H the host, L a
// listener, S a listener brought on stage. The attacker pages use livekit-client as a hostile
// client would: they claim permissions the server did not grant (the client checks only its own
// copy) and name another identity in their data packets. Every check is on what H sees:
//   1. L turns its microphone on (plainly, then with forged local permissions): refused, and H
//      never sees a track of L's, while H does hear S once S is on stage (the control);
//   2. L sends data every way the client has (publishData reliable and lossy, sendText,
//      streamText) on an ordinary topic and on the server's `stoa.reaction`: nothing reaches H;
//   3. S, who may send data, names L as the sender and sends a reaction on `stoa.reaction`
//      naming H: H gets the ordinary packet stamped as S's, never as L's, and no reaction; a
//      reaction through the API (POST /reactions) does reach H, stamped by the server;
//   4. the host hard-mutes S: H sees S's track go; S unmutes through the API (403
//      hard_muted) and turns its microphone on with forged permissions: H sees no new track;
//   5. the room is full; L's client leaves (a LeaveRequest): its seat is free at once, a new
//      user gets it.

import { execFile } from 'node:child_process';

const STOA_BINARY = process.env.STOA_BINARY || 'stoa';

const T = {
  load: 15_000,
  api: 10_000,
  connect: 20_000,
  publish: 20_000,
  hear: 20_000,
  refuse: 15_000,
  data: 20_000,
  settle: 2_000,
};

function userToken(identity, name) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.STOA_CONFIG;
    execFile(
      STOA_BINARY,
      ['token', '--dev', '--user', '--identity', identity, '--name', name],
      { env, timeout: 10_000 },
      (err, stdout, stderr) => (err ? reject(new Error(`stoa token: ${err} ${stderr}`)) : resolve(stdout.trim())),
    );
  });
}

export async function hostileScenario(ctx, h) {
  const { context, pageUrl } = ctx;
  const { step, call, pollUntil, capturePage, sleep, errorText, summary, stoaUrl, logLevel } = h;
  const apiBase = stoaUrl.replace(/^ws/, 'http');

  async function api(method, path, token, body, expect = 200) {
    const r = await fetch(`${apiBase}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body ? { 'content-type': 'application/json' } : {}),
      },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(T.api),
    });
    const text = await r.text();
    const json = text ? JSON.parse(text) : {};
    const ok = Array.isArray(expect) ? expect.includes(r.status) : r.status === expect;
    if (!ok) throw new Error(`${method} ${path}: ${r.status} ${text} (expected ${expect})`);
    return { status: r.status, body: json };
  }

  const [pageH, pageL, pageS] = await step('load pages', T.load, async () => {
    const pages = [];
    for (const label of ['H', 'L', 'S']) {
      const page = pages.length === 0 && context.pages()[0] ? context.pages()[0] : await context.newPage();
      capturePage(page, label);
      await page.addInitScript((level) => {
        window.__e2eLogLevel = level;
      }, logLevel);
      await page.goto(pageUrl, { timeout: T.load });
      const info = await call(page, 'info');
      if (!info.loaded || !info.browserSupported) throw new Error(`page ${label}: livekit-client unusable`);
      summary.versions.livekitClient = info.version;
      pages.push(page);
    }
    return pages;
  });

  const [hana, lee, sam, kim] = await Promise.all([
    userToken('hana', 'Hana'),
    userToken('lee', 'Lee'),
    userToken('sam', 'Sam'),
    userToken('kim', 'Kim'),
  ]);
  const id = await step('the host creates a room', T.api, async () => {
    // Three seats: H, L and S (step 5 needs a full room).
    const r = await api('POST', '/api/rooms', hana, { title: 'Hostile guests', max_participants: 3 }, 201);
    return r.body.id;
  });
  summary.room = id;

  async function join(page, label, user) {
    const grant = await api('POST', `/api/rooms/${id}/token`, user);
    const r = await call(page, 'connect', grant.body.url || stoaUrl, grant.body.token);
    if (!r.ok) throw new Error(`${label} could not connect: ${errorText(r.error)}`);
    return r;
  }

  await step('H joins through the API, publishes and watches text streams', T.connect + T.publish, async () => {
    const r = await join(pageH, 'H', hana);
    if (r.canPublish !== true) throw new Error(`the host joined without canPublish: ${JSON.stringify(r)}`);
    await call(pageH, 'watchTextStreams', ['chat', 'stoa.reaction']);
    const pub = await call(pageH, 'publishMicrophone');
    if (!pub.ok) throw new Error(`the host could not publish: ${errorText(pub.error)}`);
  });

  await step('L and S join as listeners, without publish or data permission', T.connect, async () => {
    for (const [page, label, user] of [
      [pageL, 'L', lee],
      [pageS, 'S', sam],
    ]) {
      const r = await join(page, label, user);
      const perms = await call(page, 'localPermissions');
      if (r.canPublish !== false || perms.canPublishData !== false) {
        throw new Error(`${label} joined with ${JSON.stringify(perms)}`);
      }
    }
    await call(pageS, 'watchTextStreams', ['chat']);
  });

  // 1. A listener's microphone.
  summary.listenerPublish = await step('1: L publishes its microphone: refused', T.refuse * 2, async () => {
    const plain = await call(pageL, 'tryPublishMicrophone');
    if (!plain.refused) throw new Error(`livekit-client published for a listener: ${JSON.stringify(plain)}`);
    const forced = await call(pageL, 'forcePublishMicrophone', T.refuse - 2_000);
    if (forced.published) throw new Error(`the server accepted L's track: ${JSON.stringify(forced)}`);
    return { plain: plain.error, forced: forced.error };
  });

  // The control: S on stage is heard by H, so H's view of tracks is live.
  await step('S is brought on stage and H hears S', T.api + T.publish + T.hear, async () => {
    await api('POST', `/api/rooms/${id}/hand`, sam);
    await api('POST', `/api/rooms/${id}/members/sam/approve_hand`, hana);
    await pollUntil(async () => {
      const p = await call(pageS, 'localPermissions');
      return { done: p.canPublish === true && p.canPublishData === true };
    });
    const pub = await call(pageS, 'publishMicrophone');
    if (!pub.ok) throw new Error(`S could not publish on stage: ${errorText(pub.error)}`);
    return pollUntil(async () => {
      const s = await call(pageH, 'inboundAudioStats', 'sam');
      return { done: s.ok && s.packetsReceived > 20 };
    });
  });

  await step('1: H never saw a track of L', T.settle + 1_000, async () => {
    await sleep(T.settle);
    const view = await call(pageH, 'remoteView');
    const l = view.find((p) => p.identity === 'lee');
    if (!l) throw new Error(`H does not see L at all: ${JSON.stringify(view)}`);
    if (l.tracks.length) throw new Error(`H sees tracks of the listener L: ${JSON.stringify(l.tracks)}`);
    const published = (await call(pageH, 'events', 'TrackPublished')).filter((e) => e.participant === 'lee');
    if (published.length) throw new Error(`H saw L publish: ${JSON.stringify(published)}`);
  });

  // 2 and 3. Data.
  summary.listenerData = await step('2: L sends data every way it can', T.data, async () => [
    ...(await call(pageL, 'sendEverything', 'from L', 'chat', '', 3_000)),
    ...(await call(pageL, 'sendEverything', JSON.stringify({ user: 'hana', emoji: 'L' }), 'stoa.reaction', 'hana', 3_000)),
  ]);
  summary.speakerData = await step('3: S sends as L, and a reaction naming H', T.data, async () => [
    ...(await call(pageS, 'sendEverything', 'forged by S', 'chat', 'lee', 3_000)),
    ...(await call(pageS, 'sendEverything', JSON.stringify({ user: 'hana', emoji: 'S' }), 'stoa.reaction', 'hana', 3_000)),
  ]);
  await api('POST', `/api/rooms/${id}/reactions`, lee, { emoji: 'API' }, [200, 204]);

  await step('2, 3: H gets S data as S, the API reaction as L, and nothing else', T.data, async () => {
    const received = await pollUntil(async () => {
      const data = await call(pageH, 'events', 'DataReceived');
      const fromS = data.filter((e) => e.text === 'forged by S');
      const reaction = data.find((e) => e.topic === 'stoa.reaction' && e.text.includes('API'));
      return { done: fromS.length > 0 && !!reaction, value: { fromS, reaction } };
    });
    await sleep(T.settle);
    const data = await call(pageH, 'events', 'DataReceived');
    const streams = await call(pageH, 'events', 'TextStreamReceived');
    const problems = [];
    for (const e of [...data, ...streams]) {
      if (e.text.includes('from L')) problems.push(`L's data reached H: ${JSON.stringify(e)}`);
      if (e.text === 'forged by S' && e.participant !== 'sam') {
        problems.push(`S's packet shown as ${e.participant}'s: ${JSON.stringify(e)}`);
      }
      if (e.topic === 'stoa.reaction' && !e.text.includes('API')) {
        problems.push(`a client's packet on the server's topic reached H: ${JSON.stringify(e)}`);
      }
    }
    if (received.reaction.participant !== 'lee') {
      problems.push(`the API reaction is not stamped as L's: ${JSON.stringify(received.reaction)}`);
    }
    if (problems.length) throw new Error(problems.join('; '));
    return { fromS: received.fromS.length, streams: streams.length };
  });

  // 4. Hard mute.
  await step('4: the host hard-mutes S; H sees S unpublished', T.refuse, async () => {
    await api('POST', `/api/rooms/${id}/members/sam/hard_mute`, hana);
    return pollUntil(async () => {
      const view = await call(pageH, 'remoteView');
      const s = view.find((p) => p.identity === 'sam');
      const perms = await call(pageS, 'localPermissions');
      return { done: !!s && s.tracks.length === 0 && perms.canPublish === false };
    });
  });

  summary.afterHardMute = await step('4: S unmutes and publishes again: refused', T.api + T.refuse * 2, async () => {
    const unmute = await api('POST', `/api/rooms/${id}/unmute`, sam, undefined, 403);
    if (unmute.body.code !== 'hard_muted') throw new Error(`unmute answered ${JSON.stringify(unmute.body)}`);
    const plain = await call(pageS, 'tryPublishMicrophone');
    const forced = await call(pageS, 'forcePublishMicrophone', T.refuse - 2_000);
    if (forced.published) throw new Error(`the server accepted S's track after a hard mute: ${JSON.stringify(forced)}`);
    return { unmute: unmute.body.code, plain: plain.error, forced: forced.error };
  });

  await step('4: H sees no track of S after the hard mute', T.settle + 1_000, async () => {
    const before = (await call(pageH, 'events', 'TrackUnpublished')).filter((e) => e.participant === 'sam');
    await sleep(T.settle);
    const view = await call(pageH, 'remoteView');
    const s = view.find((p) => p.identity === 'sam');
    if (!s || s.tracks.length) throw new Error(`H sees S with tracks: ${JSON.stringify(s)}`);
    const published = (await call(pageH, 'events', 'TrackPublished')).filter((e) => e.participant === 'sam');
    // One publication while on stage, none after.
    if (published.length !== 1 || before.length !== 1) {
      throw new Error(`S published ${published.length} times, unpublished ${before.length} times`);
    }
  });

  // 5. Seats: the room is full (K is refused); L's client leaves the room (livekit-client's own
  // disconnect, a LeaveRequest): its seat is free at once, without waiting for the seat grace
  // (60 s here), and K gets it.
  await step('5: L leaves the media room; its seat is free at once', T.api + T.refuse, async () => {
    const full = await api('POST', `/api/rooms/${id}/token`, kim, undefined, 422);
    if (full.body.code !== 'room_full') throw new Error(`K was not refused: ${JSON.stringify(full.body)}`);
    await call(pageL, 'disconnect');
    return pollUntil(async () => {
      const r = await api('POST', `/api/rooms/${id}/token`, kim, undefined, [200, 422]);
      return { done: r.status === 200, value: { status: r.status } };
    });
  });

  for (const page of [pageS, pageH]) await call(page, 'disconnect').catch(() => {});
}
