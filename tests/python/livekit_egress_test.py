"""The official PyPI `livekit-api` egress calls against a running Stoa, over application/protobuf.

Driven by tests/egress.rs, which starts the server on 127.0.0.1, makes ROOM and keeps a speaker
sending a tone in it:

    python livekit_egress_test.py URL KEY SECRET ROOM

Starts an audio-only room composite egress to an Ogg file (the deprecated `file` field, as older
code sends it), prints {"started": id}, waits for a line on stdin, lists, stops, lists again.
One JSON line per step; the last is {"done": ...} with the file. Exits 1 on the first failure.
Every call is bounded.
"""

import asyncio
import json
import sys

import aiohttp
from livekit import api


def check(cond, what):
    if not cond:
        raise AssertionError(f"check failed: {what}")
    print(json.dumps({"ok": what}), flush=True)


async def expect_error(coro, status, code, what):
    try:
        await coro
    except api.TwirpError as e:
        check(e.status == status and e.code == code, f"{what} (got {e.status} {e.code}: {e.message})")
        return
    raise AssertionError(f"{what}: expected an error")


async def main(url, key, secret, room):
    timeout = aiohttp.ClientTimeout(total=10)
    async with api.LiveKitAPI(url, key, secret, timeout=timeout) as lk:
        await expect_error(
            lk.egress.start_room_composite_egress(
                api.RoomCompositeEgressRequest(
                    room_name=room,
                    audio_only=True,
                    segment_outputs=[api.SegmentedFileOutput(filename_prefix="x")],
                )
            ),
            501,
            "unimplemented",
            "segments refused",
        )
        await expect_error(
            lk.egress.start_track_egress(
                api.TrackEgressRequest(room_name=room, track_id="TR_x", websocket_url="ws://127.0.0.1:1/x")
            ),
            501,
            "unimplemented",
            "websocket track output refused",
        )
        info = await lk.egress.start_room_composite_egress(
            api.RoomCompositeEgressRequest(
                room_name=room,
                audio_only=True,
                file=api.EncodedFileOutput(file_type=api.EncodedFileType.OGG, filepath="py.ogg"),
            )
        )
        check(info.egress_id.startswith("EG_") and info.room_name == room, "start_room_composite_egress")
        check(info.status in (api.EgressStatus.EGRESS_STARTING, api.EgressStatus.EGRESS_ACTIVE), "status")
        print(json.dumps({"started": info.egress_id}), flush=True)
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline), 30)

        listed = await lk.egress.list_egress(api.ListEgressRequest(room_name=room, active=True))
        check([i.egress_id for i in listed.items] == [info.egress_id], "list_egress active")
        check(listed.items[0].status == api.EgressStatus.EGRESS_ACTIVE, "active")
        stopped = await lk.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
        check(stopped.egress_id == info.egress_id, "stop_egress")
        check(stopped.status == api.EgressStatus.EGRESS_ENDING, "stop_egress answers EGRESS_ENDING")
        done = (await lk.egress.list_egress(api.ListEgressRequest(egress_id=info.egress_id))).items
        check(len(done) == 1 and done[0].status == api.EgressStatus.EGRESS_COMPLETE, "complete")
        check(done[0].ended_at >= done[0].started_at > 0, "times")
        f = done[0].file_results[0]
        check(f.size > 0 and f.duration > 0 and f.location.endswith("/py.ogg"), "file result at its filepath")
        print(json.dumps({"done": {"egress_id": info.egress_id, "location": f.location}}), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main(*sys.argv[1:5]))
    except Exception as e:  # noqa: BLE001 - any failure ends the run with its reason
        print(json.dumps({"failed": repr(e)}), flush=True)
        sys.exit(1)
