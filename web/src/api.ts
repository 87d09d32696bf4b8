// The control API (`/api`): typed calls with the signed-in user's token.

export type Role = 'host' | 'co_host' | 'speaker' | 'listener';
export type RoomState = 'scheduled' | 'live' | 'ended' | 'archived';
export type RoomKind = 'stage' | 'open';
export type SpeakerMode = 'everyone' | 'followers' | 'invited';

export interface Member {
  user: string;
  name: string;
  role: Role;
  muted: boolean;
  hard_muted: boolean;
  present: boolean;
  hand_raised: boolean;
  /** Their page is hidden (where the room shows away listeners). */
  away: boolean;
  /** They turned the room's sound off. */
  deafened: boolean;
}

/**
 * Someone in the audience. Every member of the room sees who of the audience is connected now
 * (id, name, role, profile); hosts and co-hosts see every member and the optional fields too.
 */
export interface AudienceMember {
  user: string;
  name: string;
  role: Role;
  /** Where their profile is read (`GET`). */
  profile: string;
  /** Hosts and co-hosts only. */
  present?: boolean;
  hand_raised?: boolean;
  muted?: boolean;
  hard_muted?: boolean;
  /** Their page is hidden (where the room shows away listeners); absent when not. */
  away?: boolean;
}

export interface Hand {
  user: string;
  name: string;
  raised_at: number;
}

/** A day of the week, as the API names it. */
export type Day = 'mon' | 'tue' | 'wed' | 'thu' | 'fri' | 'sat' | 'sun';

/** When a recurring room happens: days of the week at a local time in an IANA time zone. */
export interface Recurrence {
  days: Day[];
  /** `HH:MM`, 24 h. */
  time: string;
  /** e.g. `Europe/Paris`. */
  time_zone: string;
}

/** How a scheduled room behaves. */
export interface Schedule {
  /** Goes live by itself at its time (else the host starts it). */
  auto_start: boolean;
  /** Each occurrence, once over, schedules the next one as a new room. */
  repeat: Recurrence | null;
}

export interface RoomView {
  id: string;
  title: string;
  topic: string;
  description: string;
  kind: RoomKind;
  speaker_mode: SpeakerMode;
  max_participants: number;
  host: string;
  /** The host's display name ("" when not known yet). */
  host_name: string;
  state: RoomState;
  created_at: number;
  scheduled_for: number | null;
  /** Auto-start and recurrence. */
  schedule: Schedule;
  started_at: number | null;
  ended_at: number | null;
  /** The first room of its recurring series (later occurrences only). */
  series: string | null;
  listeners: number;
  present: number;
  members: number;
  raised_hands: number;
  /** Being recorded (also on the LiveKit room: `room.isRecording`). */
  recording: boolean;
  /** Seconds without speaking before someone on stage is muted (0: never). */
  idle_mute_after: number;
  /** Seconds without speaking before a speaker goes back to the audience (0: never). */
  idle_audience_after: number;
  /** Listeners whose page is hidden show as away. */
  show_away: boolean;
  stage: Member[];
  you: Member | null;
  hands: Hand[] | null;
  /** The first page of the audience (moderators); more, and for everyone, with `api.audience`. */
  audience: AudienceMember[] | null;
  audience_next: string | null;
  banned: string[] | null;
  /** Kicked and banned people (hosts and co-hosts only). */
  removed: Removed[] | null;
}

export interface Removed {
  user: string;
  name: string;
  banned: boolean;
  /** Unix ms until which a kicked person may not rejoin. */
  until: number | null;
}

/** A page of the audience (`GET /api/rooms/{id}/audience`). */
export interface AudiencePage {
  members: AudienceMember[];
  next: string | null;
}

export interface Directory {
  live: RoomView[];
  scheduled: RoomView[];
  archived: RoomView[];
}

/** What anyone may see of a room without signing in (`GET /api/rooms/{id}/card`). */
export interface RoomCard {
  id: string;
  title: string;
  topic: string;
  kind: RoomKind;
  state: RoomState;
  scheduled_for: number | null;
  started_at: number | null;
  ended_at: number | null;
  listeners: number;
  speakers: string[];
  host_name: string;
}

export interface Stats {
  room: string;
  state: RoomState;
  peak_listeners: number;
  total_joins: number;
  average_listening_ms: number;
  stage_ms: Record<string, number>;
  speaking_ms: Record<string, number>;
  /** Display names of the users the statistics name. */
  names: Record<string, string>;
  reactions: number;
  hands_raised: number;
  duration_ms: number;
}

export interface JoinGrant {
  token: string;
  url: string;
  room: string;
  identity: string;
  role: Role;
}

export interface Session {
  token: string;
  user: string;
  name: string;
}

export interface NewRoom {
  title: string;
  topic?: string;
  description?: string;
  kind: RoomKind;
  speaker_mode: SpeakerMode;
  max_participants?: number;
  scheduled_for?: number;
  /** Auto-start and recurrence; with a recurrence and no `scheduled_for`, the first occurrence. */
  schedule?: Schedule;
  /** Seconds without speaking before someone on stage is muted (0: never). */
  idle_mute_after?: number;
  /** Seconds without speaking before a speaker goes back to the audience (0: never). */
  idle_audience_after?: number;
  /** Show listeners whose page is hidden as away. */
  show_away?: boolean;
}

export type Follow = { kind: 'user' | 'room'; id: string };

/** An invitation link as anyone holding it sees it (`GET /api/invitations/{token}`). */
export interface Invitation {
  token: string;
  room: RoomView;
  expires_at: number;
  requires_confirmation: boolean;
  /** `listener`, `speaker` or `co_host`. */
  role: Role;
  max_uses: number | null;
  uses: number;
}

/** One of a room's invitation links, as its hosts list them. */
export interface InvitationEntry {
  token: string;
  role: Role;
  max_uses: number | null;
  uses: number;
  created_at: number;
  expires_at: number;
  created_by: string;
  revoked: boolean;
  /** Still accepted now. */
  usable: boolean;
}

/** What a new invitation link gives. */
export interface NewInvitation {
  role: Role;
  /** 1: single-use; absent: any number. */
  max_uses?: number;
  /** Seconds it lasts. */
  expires_in?: number;
}

/** An entry of the signed-in user's notification feed. */
export interface Notice {
  id: string;
  /** Unix ms it was made. */
  at: number;
  /** A followed room or host went live, or a room one asked to be reminded of starts soon. */
  kind: 'room_live' | 'reminder';
  room: string;
  title: string;
  host: string;
  scheduled_for: number | null;
  /** In a feed page only: read already. */
  read?: boolean;
}

export interface NoticePage {
  notifications: Notice[];
  unread: number;
  next: string | null;
}

/** What a user tells about themselves. */
export interface Profile {
  user: string;
  bio: string;
  /** A small picture as a data URL. */
  avatar: string | null;
}

export type ModerationAction =
  | 'approve_hand'
  | 'deny_hand'
  | 'invite_to_speak'
  | 'move_to_audience'
  | 'force_mute'
  | 'hard_mute'
  | 'restore'
  | 'kick'
  | 'ban'
  | 'unban'
  | 'add_co_host'
  | 'remove_co_host'
  | 'transfer_host';

/** An error answer of the API (`{code, message}`), or a network failure (status 0). */
/** One stretch of a replay's timeline: someone speaking. */
export interface TimelineEntry {
  user: string;
  name: string;
  start_ms: number;
  end_ms: number;
}

/** A recording of a room (`GET /api/rooms/{id}/recordings`). */
export interface Recording {
  id: string;
  state: 'recording' | 'complete' | 'failed';
  started_at: number;
  ended_at: number | null;
  duration_ms: number;
  size: number;
  audio_url: string;
  timeline: TimelineEntry[];
}

/** A clip: its card and where to play and share it. */
export interface Clip {
  id: string;
  title: string;
  room: { id: string; title: string; host_name: string };
  recording: string;
  start_ms: number;
  end_ms: number;
  duration_ms: number;
  speakers: { user: string; name: string }[];
  created_by: string | null;
  created_at: number;
  audio_url: string;
  link: string;
}

/** What to cut: the last N seconds, or a start and end in the recording. */
export interface NewClip {
  recording?: string;
  last_seconds?: number;
  start_ms?: number;
  end_ms?: number;
  title?: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** Seconds after which the same call may succeed (e.g. a kick's cooldown). */
    readonly retryAfter: number | null = null,
    /** The other room the error is about (`already_in_room`: the room the caller is in). */
    readonly room: { id: string; title: string } | null = null,
  ) {
    super(message);
  }
}

const STORAGE_KEY = 'stoa.session';

let current: Session | null = load();

function load(): Session | null {
  try {
    const raw = localStorage.getItem(STORAGE_KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}

export function session(): Session | null {
  return current;
}

export function setSession(s: Session | null): void {
  current = s;
  try {
    if (s) localStorage.setItem(STORAGE_KEY, JSON.stringify(s));
    else localStorage.removeItem(STORAGE_KEY);
  } catch {
    // Storage may be off (private mode, embedded frame): the session lives in memory then.
  }
}

/** Called when the server no longer accepts the token. */
let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(f: () => void): void {
  onUnauthorized = f;
}

/**
 * One API call. `token` overrides the session's token; `null` sends none (public reads), and a
 * 401 then is just an error, not a reason to sign out.
 */
async function call<T>(method: string, path: string, body?: unknown, token?: string | null): Promise<T> {
  const headers: Record<string, string> = {};
  const bearer = token === null ? undefined : (token ?? current?.token);
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(15_000),
    });
  } catch {
    throw new ApiError(0, 'network', 'Cannot reach the server. Check your connection and try again.');
  }
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  let data: unknown = undefined;
  try {
    data = text ? JSON.parse(text) : undefined;
  } catch {
    data = undefined;
  }
  if (!response.ok) {
    const err = (data ?? {}) as { code?: string; message?: string; retry_after?: number; room?: { id: string; title: string } };
    if (response.status === 401 && token === undefined) onUnauthorized();
    throw new ApiError(
      response.status,
      err.code ?? 'error',
      err.message ?? `${response.status} ${response.statusText}`,
      err.retry_after ?? null,
      err.room && typeof err.room.id === 'string' ? { id: err.room.id, title: String(err.room.title ?? '') } : null,
    );
  }
  return data as T;
}

export const api = {
  guest: (name: string) => call<Session>('POST', '/api/session/guest', { name }),
  me: (token: string) => call<{ user: string; name: string }>('GET', '/api/me', undefined, token),
  directory: (q: string, kind: string) => {
    const params = new URLSearchParams();
    if (q) params.set('q', q);
    if (kind) params.set('kind', kind);
    const query = params.toString();
    return call<Directory>('GET', `/api/rooms${query ? `?${query}` : ''}`);
  },
  create: (room: NewRoom) => call<RoomView>('POST', '/api/rooms', room),
  room: (id: string) => call<RoomView>('GET', `/api/rooms/${enc(id)}`),
  card: (id: string) => call<RoomCard>('GET', `/api/rooms/${enc(id)}/card`, undefined, null),
  start: (id: string) => call<RoomView>('POST', `/api/rooms/${enc(id)}/start`),
  end: (id: string) => call<RoomView>('POST', `/api/rooms/${enc(id)}/end`),
  /** Starts (`true`) or stops recording the room: hosts and co-hosts. */
  record: (id: string, on: boolean) => call<RoomView>(on ? 'POST' : 'DELETE', `/api/rooms/${enc(id)}/recording`),
  join: (id: string) => call<JoinGrant>('POST', `/api/rooms/${enc(id)}/token`),
  leave: (id: string) => call<RoomView>('POST', `/api/rooms/${enc(id)}/leave`),
  raiseHand: (id: string) => call<RoomView>('POST', `/api/rooms/${enc(id)}/hand`),
  lowerHand: (id: string) => call<RoomView>('DELETE', `/api/rooms/${enc(id)}/hand`),
  mute: (id: string) => call<RoomView>('POST', `/api/rooms/${enc(id)}/mute`),
  unmute: (id: string) => call<RoomView>('POST', `/api/rooms/${enc(id)}/unmute`),
  stepDown: (id: string) => call<RoomView>('POST', `/api/rooms/${enc(id)}/step_down`),
  presence: (id: string, state: { away?: boolean; deafened?: boolean }) => call<RoomView>('POST', `/api/rooms/${enc(id)}/presence`, state),
  edit: (id: string, changes: Partial<Pick<NewRoom, 'title' | 'topic' | 'description' | 'scheduled_for' | 'schedule' | 'idle_mute_after' | 'idle_audience_after' | 'show_away'>>) =>
    call<RoomView>('PATCH', `/api/rooms/${enc(id)}`, changes),
  lineup: (id: string) => call<{ lineup: { user: string; name: string; role: Role }[] }>('GET', `/api/rooms/${enc(id)}/lineup`),
  lineUp: (id: string, user: string, role: Role) => call<unknown>('PUT', `/api/rooms/${enc(id)}/lineup/${enc(user)}`, { role }),
  lineUpRemove: (id: string, user: string) => call<unknown>('DELETE', `/api/rooms/${enc(id)}/lineup/${enc(user)}`),
  invite: (id: string, invitation: NewInvitation) => call<Invitation>('POST', `/api/rooms/${enc(id)}/invitations`, invitation),
  invitations: (id: string) => call<{ invitations: InvitationEntry[] }>('GET', `/api/rooms/${enc(id)}/invitations`),
  revokeInvitation: (id: string, token: string) => call<void>('DELETE', `/api/rooms/${enc(id)}/invitations/${enc(token)}`),
  invitation: (token: string) => call<Invitation>('GET', `/api/invitations/${enc(token)}`),
  acceptInvitation: (token: string) => call<RoomView>('POST', `/api/invitations/${enc(token)}/accept`),
  react: (id: string, emoji: string) => call<void>('POST', `/api/rooms/${enc(id)}/reactions`, { emoji }),
  moderate: (id: string, user: string, action: ModerationAction) =>
    call<RoomView>('POST', `/api/rooms/${enc(id)}/members/${enc(user)}/${action}`),
  /** A page of the audience after cursor `after` (the first page without one). */
  audience: (id: string, after: string | null, limit = 50) =>
    call<AudiencePage>('GET', `/api/rooms/${enc(id)}/audience?limit=${limit}${after ? `&after=${enc(after)}` : ''}`),
  stats: (id: string) => call<Stats>('GET', `/api/rooms/${enc(id)}/stats`),
  profile: (user: string) => call<Profile>('GET', `/api/users/${enc(user)}/profile`),
  setProfile: (p: { bio: string; avatar: string | null }) => call<Profile>('PUT', '/api/me/profile', p),
  recordings: (id: string) => call<{ recordings: Recording[] }>('GET', `/api/rooms/${enc(id)}/recordings`),
  clip: (id: string) => call<Clip>('GET', `/api/clips/${enc(id)}`),
  cutClip: (id: string, clip: NewClip) => call<Clip>('POST', `/api/rooms/${enc(id)}/clips`, clip),
  follows: () => call<{ follows: Follow[] }>('GET', '/api/follows'),
  notifications: () => call<NoticePage>('GET', '/api/me/notifications?limit=30'),
  markRead: () => call<void>('POST', '/api/me/notifications/read', {}),
  follow: (kind: 'users' | 'rooms', id: string) => call<void>('PUT', `/api/follows/${kind}/${enc(id)}`),
  unfollow: (kind: 'users' | 'rooms', id: string) => call<void>('DELETE', `/api/follows/${kind}/${enc(id)}`),
};

function enc(s: string): string {
  return encodeURIComponent(s);
}

/** An API file's URL for an audio element, which cannot send a header: the token rides along. */
export function mediaUrl(path: string): string {
  return current ? `${path}?access_token=${enc(current.token)}` : path;
}

/** The events WebSocket (`/api/events`), for one room, every room, or only one's notifications. */
export function eventsUrl(room?: string, notificationsOnly = false): string {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const params = new URLSearchParams();
  if (room) params.set('room', room);
  if (notificationsOnly) params.set('notifications_only', 'true');
  if (current) params.set('access_token', current.token);
  return `${proto}//${location.host}/api/events?${params}`;
}

/** A live event from `/api/events`. */
export interface ControlEvent {
  type: 'room_created' | 'room_live' | 'room_ended' | 'audience' | 'hand' | 'role' | 'muted' | 'removed' | 'reaction' | 'notification' | 'idle' | 'presence';
  /** `notification` messages: the signed-in user's new feed entry. */
  notification?: Notice;
  room: string;
  user?: string;
  emoji?: string;
  listeners?: number;
  present?: number;
  banned?: boolean;
  /** `idle`: moved to the audience (else muted). */
  moved?: boolean;
}

/**
 * Follows `/api/events` until `close()`; reconnects with backoff when the socket drops.
 */
export function subscribe(room: string | undefined, onEvent: (e: ControlEvent) => void, notificationsOnly = false): { close(): void } {
  let socket: WebSocket | null = null;
  let closed = false;
  let delay = 1000;
  let timer: number | undefined;
  const open = () => {
    if (closed || !current) return;
    socket = new WebSocket(eventsUrl(room, notificationsOnly));
    socket.onopen = () => {
      delay = 1000;
    };
    socket.onmessage = (m) => {
      try {
        onEvent(JSON.parse(String(m.data)) as ControlEvent);
      } catch {
        // Not an event: ignore it.
      }
    };
    socket.onclose = () => {
      if (closed) return;
      timer = window.setTimeout(open, delay);
      delay = Math.min(delay * 2, 15_000);
    };
  };
  open();
  return {
    close() {
      closed = true;
      if (timer !== undefined) clearTimeout(timer);
      socket?.close();
    },
  };
}
