// The official npm `livekit-server-sdk` against a running Stoa: every RoomServiceClient call,
// Twirp errors, and WebhookReceiver over the webhooks Stoa sent. Driven by
// signaling/tests/twirp.rs (`npm_server_sdk`) and signaling/tests/admin_media.rs, which start
// the server on 127.0.0.1, join the participant given here and check the effects on its live
// session.
//
//   node server_sdk.mjs rooms URL KEY SECRET ROOM IDENTITY
//   node server_sdk.mjs mute URL KEY SECRET ROOM IDENTITY TRACK_SID   (a live, published track)
//   node server_sdk.mjs webhooks FILE KEY SECRET     (FILE: JSON [[authorization, body], ...])
//
// Prints one JSON line per step; exits 1 on the first failure.
import { readFileSync } from 'node:fs';
import {
  DataPacket_Kind,
  RoomServiceClient,
  WebhookReceiver,
} from 'livekit-server-sdk';

function check(cond, what) {
  if (!cond) {
    throw new Error(`check failed: ${what}`);
  }
  console.log(JSON.stringify({ ok: what }));
}

async function expectError(promise, status, code, what) {
  try {
    await promise;
  } catch (e) {
    check(e.status === status && e.code === code, `${what} (got ${e.status} ${e.code}: ${e.message})`);
    return;
  }
  throw new Error(`${what}: expected an error`);
}

async function rooms(url, key, secret, room, identity) {
  const svc = new RoomServiceClient(url, key, secret);
  // CreateRoom is idempotent: the live room is returned unchanged.
  const created = await svc.createRoom({
    name: 'sdk-new-room',
    emptyTimeout: 120,
    departureTimeout: 10,
    maxParticipants: 20,
    metadata: 'hello',
  });
  check(created.name === 'sdk-new-room' && created.sid.startsWith('RM_'), 'createRoom');
  check(created.emptyTimeout === 120 && created.maxParticipants === 20, 'createRoom settings');
  check(created.metadata === 'hello', 'createRoom metadata');
  const again = await svc.createRoom({ name: 'sdk-new-room' });
  check(again.sid === created.sid, 'createRoom idempotent');

  const all = await svc.listRooms();
  check(all.some((r) => r.name === room) && all.some((r) => r.name === 'sdk-new-room'), 'listRooms');
  const named = await svc.listRooms(['sdk-new-room']);
  check(named.length === 1 && named[0].name === 'sdk-new-room', 'listRooms by name');

  const participants = await svc.listParticipants(room);
  check(participants.length === 1 && participants[0].identity === identity, 'listParticipants');
  const p = await svc.getParticipant(room, identity);
  check(p.sid.startsWith('PA_'), 'getParticipant');

  // Made a speaker, effective at once (the driver checks its live session).
  const updated = await svc.updateParticipant(room, identity, {
    metadata: 'speaker',
    name: 'Speaker',
    attributes: { role: 'speaker' },
    permission: { canPublish: true, canSubscribe: true, canPublishData: true },
  });
  check(updated.metadata === 'speaker' && updated.name === 'Speaker', 'updateParticipant');
  check(updated.permission.canPublish === true, 'updateParticipant permission');
  check(updated.attributes.role === 'speaker', 'updateParticipant attributes');

  await expectError(
    svc.mutePublishedTrack(room, identity, 'TR_unknown', true),
    404,
    'not_found',
    'mutePublishedTrack unknown track',
  );
  const meta = await svc.updateRoomMetadata(room, 'room-meta');
  check(meta.metadata === 'room-meta', 'updateRoomMetadata');
  await svc.sendData(room, new TextEncoder().encode('hi'), DataPacket_Kind.RELIABLE, {
    topic: 'chat',
  });
  check(true, 'sendData');
  await svc.updateSubscriptions(room, identity, ['TR_none'], true);
  check(true, 'updateSubscriptions');

  // Errors: unknown rooms and participants, wrong grants, a bad secret.
  await expectError(svc.deleteRoom('no-such-room'), 404, 'not_found', 'deleteRoom unknown');
  await expectError(svc.getParticipant(room, 'nobody'), 404, 'not_found', 'getParticipant unknown');
  const bad = new RoomServiceClient(url, key, 'wrong-secret');
  await expectError(bad.listRooms(), 401, 'unauthenticated', 'wrong secret');

  await svc.removeParticipant(room, identity);
  check((await svc.listParticipants(room)).length === 0, 'removeParticipant');
  await svc.deleteRoom('sdk-new-room');
  await svc.deleteRoom(room);
  check((await svc.listRooms()).length === 0, 'deleteRoom');
}

async function mute(url, key, secret, room, identity, trackSid) {
  const svc = new RoomServiceClient(url, key, secret);
  const p = await svc.getParticipant(room, identity);
  check(p.permission.canPublish && p.tracks.some((t) => t.sid === trackSid), 'speaker publishes');
  const track = await svc.mutePublishedTrack(room, identity, trackSid, true);
  check(track.sid === trackSid && track.muted === true, 'mutePublishedTrack');
  await expectError(
    svc.mutePublishedTrack(room, identity, trackSid, false),
    412,
    'failed_precondition',
    'remote unmute refused',
  );
}

async function webhooks(file, key, secret) {
  const received = JSON.parse(readFileSync(file, 'utf8'));
  const receiver = new WebhookReceiver(key, secret);
  const names = [];
  for (const [auth, body] of received) {
    const event = await receiver.receive(body, auth);
    check(event.id.startsWith('EV_') && Number(event.createdAt) > 0, `webhook ${event.event}`);
    names.push(event.event);
    let rejected = false;
    try {
      await receiver.receive(body.replace('"event"', '"event" '), auth);
    } catch {
      rejected = true;
    }
    check(rejected, `tampered ${event.event} rejected`);
  }
  const bad = new WebhookReceiver(key, 'wrong-secret');
  let rejected = false;
  try {
    await bad.receive(received[0][1], received[0][0]);
  } catch {
    rejected = true;
  }
  check(rejected, 'wrong secret rejected');
  console.log(JSON.stringify({ events: names }));
}

const [mode, ...args] = process.argv.slice(2);
try {
  if (mode === 'rooms') {
    await rooms(...args);
  } else if (mode === 'mute') {
    await mute(...args);
  } else if (mode === 'webhooks') {
    await webhooks(...args);
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} catch (e) {
  console.log(JSON.stringify({ failed: String(e && e.stack ? e.stack : e) }));
  process.exit(1);
}
