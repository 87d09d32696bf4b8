#!/usr/bin/env node
// LiveKit's `EgressClient` (npm `livekit-server-sdk`, unmodified, pinned by package-lock.json)
// against a running Stoa: driven by tests/egress.rs, which starts the server on 127.0.0.1,
// makes the room and keeps a speaker sending a tone in it.
//
//   node egress_sdk.mjs HTTP_URL KEY SECRET ROOM
//
// Steps: refusals (video, MP4, a stream output, UpdateLayout) with their Twirp codes; start an
// audio-only room composite egress to an Ogg file; print {"started": id} and wait for a line on
// stdin (the test checks the room meanwhile); list by room, by id and active; stop; list again.
// One JSON line per step; the last line is {"done": …} with the final EgressInfo. Exit 1 on the
// first failure. Every call is bounded by the SDK's request timeout.

import { createInterface } from 'node:readline';

import {
  EgressClient,
  EgressStatus,
  EncodedFileOutput,
  EncodedFileType,
  StreamOutput,
  StreamProtocol,
  TwirpError,
} from 'livekit-server-sdk';

const [url, key, secret, room] = process.argv.slice(2);
const egress = new EgressClient(url, key, secret, { requestTimeout: 10 });

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(JSON.stringify({ ok: what }));
}

async function refused(promise, code, what) {
  try {
    await promise;
  } catch (e) {
    check(e instanceof TwirpError && e.code === code, `${what} (got ${e.code}: ${e.message})`);
    return;
  }
  throw new Error(`${what}: expected a ${code} error`);
}

const ogg = () => new EncodedFileOutput({ fileType: EncodedFileType.OGG, filepath: 'node/{room_name}.ogg' });

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function main() {
  await refused(egress.startRoomCompositeEgress(room, ogg()), 'invalid_argument', 'video refused');
  await refused(
    egress.startRoomCompositeEgress(
      room,
      new EncodedFileOutput({ fileType: EncodedFileType.MP4, filepath: 'x.mp4' }),
      { audioOnly: true },
    ),
    'invalid_argument',
    'mp4 refused',
  );
  await refused(
    egress.startRoomCompositeEgress(
      room,
      new StreamOutput({ protocol: StreamProtocol.RTMP, urls: ['rtmp://127.0.0.1/live'] }),
      { audioOnly: true },
    ),
    'unimplemented',
    'stream output refused',
  );
  await refused(egress.startRoomCompositeEgress('no-such-room', ogg(), { audioOnly: true }), 'not_found', 'unknown room');

  const info = await egress.startRoomCompositeEgress(room, ogg(), { audioOnly: true });
  check(info.egressId.startsWith('EG_'), `egress id ${info.egressId}`);
  check(info.roomName === room && info.roomId.startsWith('RM_'), 'room name and id');
  check(
    info.status === EgressStatus.EGRESS_STARTING || info.status === EgressStatus.EGRESS_ACTIVE,
    `status ${info.status}`,
  );
  check(info.startedAt > 0n, 'started_at');
  check(info.request.case === 'roomComposite' && info.request.value.audioOnly, 'request');
  console.log(JSON.stringify({ started: info.egressId }));
  await stdinLines.next();

  const byRoom = await egress.listEgress({ roomName: room });
  check(byRoom.some((i) => i.egressId === info.egressId), 'listEgress by room');
  const active = await egress.listEgress({ roomName: room, active: true });
  check(active.length === 1 && active[0].status === EgressStatus.EGRESS_ACTIVE, 'active and recording');
  const byId = await egress.listEgress({ egressId: info.egressId });
  check(byId.length === 1 && byId[0].fileResults.length >= 1, 'listEgress by id');
  await refused(egress.updateLayout(info.egressId, 'grid'), 'unimplemented', 'updateLayout');
  await refused(egress.updateStream(info.egressId, ['rtmp://127.0.0.1/x']), 'unimplemented', 'updateStream');

  const stopped = await egress.stopEgress(info.egressId);
  check(stopped.egressId === info.egressId, 'stopEgress');
  check(stopped.status === EgressStatus.EGRESS_ENDING, `stopEgress answers EGRESS_ENDING (got ${stopped.status})`);
  await refused(egress.stopEgress(info.egressId), 'failed_precondition', 'stop twice');
  await refused(egress.stopEgress('EG_unknown'), 'not_found', 'stop unknown');
  const after = await egress.listEgress({ roomName: room, active: true });
  check(after.length === 0, 'nothing active after stop');
  const [done] = await egress.listEgress({ egressId: info.egressId });
  check(done.status === EgressStatus.EGRESS_COMPLETE && done.endedAt >= done.startedAt, 'complete');
  const file = done.fileResults[0];
  check(file.size > 0n && file.duration > 0n && file.location.endsWith(`/node/${room}.ogg`), `file result at its filepath (${file.location})`);
  console.log(
    JSON.stringify({
      done: {
        egress_id: done.egressId,
        location: file.location,
        filename: file.filename,
        duration_ns: file.duration.toString(),
        size: file.size.toString(),
      },
    }),
  );
}

main().then(
  () => process.exit(0),
  (e) => {
    console.log(JSON.stringify({ failed: String(e && e.stack ? e.stack : e) }));
    process.exit(1);
  },
);
