"""The official PyPI `livekit-api` against a running Stoa, over application/protobuf.

Driven by signaling/tests/twirp.rs (`pypi_livekit_api`), which starts the server on 127.0.0.1
and joins IDENTITY to ROOM first:

    python livekit_api_test.py URL KEY SECRET ROOM IDENTITY

Prints one JSON line per step; exits 1 on the first failure. Every call is bounded.
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


async def main(url, key, secret, room, identity):
    timeout = aiohttp.ClientTimeout(total=10)
    async with api.LiveKitAPI(url, key, secret, timeout=timeout) as lk:
        created = await lk.room.create_room(
            api.CreateRoomRequest(name="py-room", empty_timeout=90, max_participants=3, metadata="py")
        )
        check(created.name == "py-room" and created.sid.startswith("RM_"), "create_room")
        check(created.empty_timeout == 90 and created.max_participants == 3, "create_room settings")
        again = await lk.room.create_room(api.CreateRoomRequest(name="py-room"))
        check(again.sid == created.sid, "create_room idempotent")

        rooms = await lk.room.list_rooms(api.ListRoomsRequest())
        names = sorted(r.name for r in rooms.rooms)
        check(names == sorted(["py-room", room]), f"list_rooms {names}")
        only = await lk.room.list_rooms(api.ListRoomsRequest(names=["py-room"]))
        check([r.name for r in only.rooms] == ["py-room"], "list_rooms by name")

        parts = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        check([p.identity for p in parts.participants] == [identity], "list_participants")
        p = await lk.room.update_participant(
            api.UpdateParticipantRequest(
                room=room,
                identity=identity,
                metadata="from-python",
                permission=api.ParticipantPermission(can_publish=True, can_subscribe=True),
            )
        )
        check(p.metadata == "from-python" and p.permission.can_publish, "update_participant")
        await expect_error(
            lk.room.mute_published_track(
                api.MuteRoomTrackRequest(room=room, identity=identity, track_sid="TR_x", muted=True)
            ),
            404,
            "not_found",
            "mute_published_track unknown track",
        )
        await lk.room.remove_participant(api.RoomParticipantIdentity(room=room, identity=identity))
        parts = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        check(len(parts.participants) == 0, "remove_participant")

        await lk.room.delete_room(api.DeleteRoomRequest(room="py-room"))
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        rooms = await lk.room.list_rooms(api.ListRoomsRequest())
        check(len(rooms.rooms) == 0, "delete_room")
        await expect_error(
            lk.room.delete_room(api.DeleteRoomRequest(room="py-room")),
            404,
            "not_found",
            "delete_room unknown",
        )

    async with api.LiveKitAPI(url, key, "wrong-secret", timeout=timeout) as bad:
        await expect_error(
            bad.room.list_rooms(api.ListRoomsRequest()), 401, "unauthenticated", "wrong secret"
        )


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(*sys.argv[1:6]), 60))
    except BaseException as e:  # noqa: BLE001 - report anything, then fail
        print(json.dumps({"failed": repr(e)}), flush=True)
        sys.exit(1)
