// Coming back to a room after its connection ended: the automatic rejoin's pace and words, and
// the note a page leaves when it left a room to join another (so that the other page does not
// rejoin it).
import { DisconnectReason } from 'livekit-client';

/** Where a page notes the room it left to join another (read by other pages of the browser). */
const LEFT_ELSEWHERE = 'stoa.left-elsewhere';

/** Whether a page of this browser just left room `id` to join another. */
export function leftElsewhere(id: string): boolean {
  try {
    const note = JSON.parse(localStorage.getItem(LEFT_ELSEWHERE) ?? 'null') as { room?: string; at?: number } | null;
    return note?.room === id && typeof note.at === 'number' && Date.now() - note.at < 60_000;
  } catch {
    return false;
  }
}

/** Notes that this page left room `id` to join another (throws when storage is off). */
export function noteLeftElsewhere(id: string): void {
  localStorage.setItem(LEFT_ELSEWHERE, JSON.stringify({ room: id, at: Date.now() }));
}

/**
 * Automatic rejoin after an unexpected disconnect (the node drained, restarted or died): the
 * delay before each attempt (ms), each stretched by a random share of up to half, so that a
 * node's members do not all come back in step. Six attempts over about half a minute.
 */
export const REJOIN_DELAYS = [0, 1000, 2000, 4000, 8000, 15000];

/**
 * While livekit-client tries to resume its session at the same node, the page asks the API
 * every so often (ms, this many times) where the room's media is now: a node that died cannot
 * be resumed at, and the SDK's own attempts take about 45 s to give up.
 * (A minute in all: past it, the SDK's last attempts and {@link REJOIN_DELAYS} remain.)
 */
export const MOVE_CHECK_MS = 3000;
export const MOVE_CHECKS = 12;

/** Why the connection ended, in the words of the rejoin banner. */
export function rejoinReason(reason?: DisconnectReason): string {
  if (reason === DisconnectReason.MIGRATION) return 'Moving you to another server…';
  if (reason === DisconnectReason.SERVER_SHUTDOWN) return 'The server is restarting. Reconnecting…';
  return 'Connection lost. Reconnecting…';
}
