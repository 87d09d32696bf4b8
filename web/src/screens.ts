// The screens around a room: sign-in, directory, create room, ended summary (with its replay),
// embeddable card.
import { api, ApiError, session, setSession, subscribe, type RoomCard, type RoomView, type Stats } from './api';
import { fill, formatDuration, formatWhen, h, plural } from './dom';
import { icon } from './icons';
import { navigate, type Screen } from './main';
import { recurrenceText, scheduleErrorText, scheduleFields } from './recurrence';
import { embedReplay, replaySection } from './replay';

/** What the server's error codes mean, said to the person in front of the screen. */
const SENTENCES: Record<string, string> = {
  network: 'Cannot reach the server. Check your connection and try again.',
  unauthorized: 'Your sign-in has expired. Sign in again to continue.',
  room_full: 'This room is full right now. Try again in a little while.',
  banned: 'A host banned you from this room, so you cannot join it.',
  kicked: 'A host removed you from this room. You can rejoin a little later.',
  room_ended: 'This room has ended.',
  room_not_live: 'This room has not started yet.',
  already_in_room: 'You are still in another room. Leave it first, then try again.',
  rate_limited: 'That was a lot at once. Wait a moment and try again.',
  not_a_member: 'You are not in this room any more. Rejoin it first.',
  not_recorded: 'This room is not being recorded, so there is nothing to clip.',
  hard_muted: 'A host turned off your microphone, so you cannot unmute.',
  guests_disabled: 'Guest sign-in is turned off on this server.',
  unavailable: 'The server is having trouble right now. Try again in a moment.',
  not_found: 'This room does not exist, or it was removed.',
  // Moderation that came too late: the person or their state moved on meanwhile.
  no_raised_hand: 'That hand is no longer raised.',
  not_a_listener: 'They are already on stage.',
  not_on_stage: 'They are not on stage any more.',
  not_banned: 'They can already come back.',
  not_a_co_host: 'They are not a co-host any more.',
  invalid_action: 'That action is not available here.',
};

/** A server message as a sentence: capitalised, ending in a full stop. */
function sentence(message: string): string {
  const t = message.trim();
  if (!t) return 'Something went wrong. Try again.';
  const s = t[0].toUpperCase() + t.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

/** An error as people read it: a known code's sentence, else the server's message as a sentence. */
export function errorText(err: unknown): string {
  if (err instanceof ApiError) {
    // Field checks and permission rules say precisely what to change: keep their words (roles
    // read as words, not identifiers).
    if (err.code === 'invalid_field' || err.code === 'speaker_mode' || err.code === 'not_allowed') return sentence(err.message.replace(/_/g, '-'));
    if (err.code === 'not_found' && /^no member/.test(err.message)) return 'That person is no longer in this room.';
    if (err.code === 'invalid_schedule') return scheduleErrorText(err.message);
    return SENTENCES[err.code] ?? sentence(err.message);
  }
  return sentence(err instanceof Error ? err.message : String(err));
}

/** Sign-in with a display name (a guest user token). */
export const signInScreen: Screen = (main) => {
  const next = new URLSearchParams(location.search).get('next') || '/';
  const safeNext = next.startsWith('/') && !next.startsWith('//') ? next : '/';
  const error = h('p', { class: 'error', role: 'alert', id: 'signin-error' });
  const name = h('input', {
    id: 'name',
    name: 'name',
    autocomplete: 'nickname',
    required: true,
    maxlength: '64',
    placeholder: 'e.g. Ada',
    'aria-describedby': 'signin-error',
  });
  const submit = h('button', { class: 'primary', type: 'submit' }, 'Continue');
  const form = h(
    'form',
    {
      class: 'card narrow',
      onsubmit: async (e: Event) => {
        e.preventDefault();
        submit.disabled = true;
        error.textContent = '';
        try {
          const s = await api.guest(name.value.trim());
          setSession(s);
          navigate(safeNext, true);
        } catch (err) {
          error.textContent = errorText(err);
          submit.disabled = false;
        }
      },
    },
    h('h1', { tabindex: '-1' }, 'Join Stoa'),
    h('p', { class: 'muted' }, 'Live audio rooms. Pick the name people will see.'),
    h('label', { for: 'name' }, 'Display name'),
    name,
    error,
    submit,
    h('p', { class: 'muted small' }, 'No account needed: your name is all people see.'),
  );
  main.append(form);
  if (session()) {
    navigate(safeNext, true);
    return;
  }
  name.focus();
  // A shared room link: say which room the visitor is about to join.
  const invited = safeNext.match(/^\/rooms\/([^/?#]+)\/?$/);
  if (invited) {
    api.card(decodeURIComponent(invited[1])).then(
      (r) => {
        const intro = h(
          'section',
          { class: 'invited', 'aria-label': 'The room you were invited to' },
          h('p', { class: 'muted' }, r.state === 'ended' ? 'You were invited to a room that has ended.' : 'You are invited to'),
          h('p', { class: 'invited-title' }, r.title),
          r.topic ? h('p', { class: 'topic' }, r.topic) : null,
          r.host_name ? h('p', { class: 'muted small' }, `Hosted by ${r.host_name}`) : null,
          stateBadge(r),
        );
        form.querySelector('h1')?.after(intro);
        submit.textContent = r.state === 'live' ? 'Continue to the room' : 'Continue';
      },
      () => {},
    );
  }
};

/** Live and scheduled rooms, with search and a kind filter. */
export const directoryScreen: Screen = (main) => {
  const search = h('input', { id: 'search', type: 'search', placeholder: 'Title or topic', autocomplete: 'off' });
  const kind = h(
    'select',
    { id: 'kind' },
    h('option', { value: '' }, 'All rooms'),
    h('option', { value: 'stage' }, 'Stage'),
    h('option', { value: 'open' }, 'Open'),
  );
  const status = h('p', { class: 'error', role: 'alert' });
  const live = h('ul', { class: 'rooms', 'aria-labelledby': 'live-heading' });
  const scheduled = h('ul', { class: 'rooms', 'aria-labelledby': 'scheduled-heading' });
  let followed = new Set<string>();
  let seq = 0;

  const load = async () => {
    const mine = ++seq;
    try {
      const [dir, follows] = await Promise.all([api.directory(search.value.trim(), kind.value), api.follows()]);
      if (mine !== seq) return;
      followed = new Set(follows.follows.filter((f) => f.kind === 'room').map((f) => f.id));
      status.textContent = '';
      fill(live, dir.live.length ? dir.live.map(liveCard) : h('li', { class: 'empty' }, 'No live rooms right now.'));
      fill(
        scheduled,
        dir.scheduled.length ? dir.scheduled.map(scheduledCard) : h('li', { class: 'empty' }, 'Nothing scheduled.'),
      );
    } catch (err) {
      if (mine === seq) status.textContent = errorText(err);
    }
  };

  const scheduledCard = (r: RoomView) => {
    // "Remind me" on an occurrence of a recurring room follows its whole series.
    const followId = r.series ?? r.id;
    const on = followed.has(followId);
    const remind = h(
      'button',
      {
        type: 'button',
        class: on ? 'small toggled' : 'small',
        'aria-pressed': String(on),
        onclick: async () => {
          try {
            if (followed.has(followId)) await api.unfollow('rooms', r.id);
            else await api.follow('rooms', r.id);
            await load();
          } catch (err) {
            status.textContent = errorText(err);
          }
        },
      },
      icon(on ? 'bellOn' : 'bell'),
      // A toggle keeps its name; pressed, it shows as set.
      'Remind me',
      h('span', { class: 'visually-hidden' }, ` about ${r.title}`),
      on ? icon('check') : null,
    );
    return h(
      'li',
      { class: 'room-card scheduled' },
      h('a', { href: `/rooms/${encodeURIComponent(r.id)}`, 'data-link': true, class: 'room-link' },
        h('span', { class: 'when' }, icon('calendar'), r.scheduled_for ? formatWhen(r.scheduled_for) : 'Not scheduled'),
        h('span', { class: 'title' }, r.title),
        r.topic ? h('span', { class: 'topic' }, r.topic) : null,
        r.schedule?.repeat ? h('span', { class: 'repeat' }, recurrenceText(r.schedule.repeat)) : null,
        r.host_name ? h('span', { class: 'host' }, `Hosted by ${r.host_name}`) : null,
      ),
      remind,
    );
  };

  let timer: number | undefined;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = window.setTimeout(load, 250);
  });
  kind.addEventListener('change', load);

  main.append(
    h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Rooms'), h('a', { href: '/new', 'data-link': true, class: 'button primary' }, 'Start a room')),
    h(
      'form',
      { class: 'filters', role: 'search', onsubmit: (e: Event) => { e.preventDefault(); void load(); } },
      h('label', { for: 'search', class: 'visually-hidden' }, 'Search rooms'),
      search,
      h('label', { for: 'kind', class: 'visually-hidden' }, 'Room type'),
      kind,
    ),
    status,
    h('section', {}, h('h2', { id: 'live-heading' }, h('span', { class: 'live-dot', 'aria-hidden': 'true' }), 'Live now'), live),
    h('section', {}, h('h2', { id: 'scheduled-heading' }, 'Scheduled'), scheduled),
  );
  void load();
  const poll = window.setInterval(load, 5000);
  const events = subscribe(undefined, (e) => {
    if (e.type === 'room_created' || e.type === 'room_live' || e.type === 'room_ended' || e.type === 'audience') {
      clearTimeout(timer);
      timer = window.setTimeout(load, 200);
    }
  });
  return () => {
    clearInterval(poll);
    clearTimeout(timer);
    events.close();
  };
};

function liveCard(r: RoomView): HTMLElement {
  const speakers = r.stage.filter((m) => m.present).map((m) => m.name);
  return h(
    'li',
    { class: 'room-card live' },
    h(
      'a',
      { href: `/rooms/${encodeURIComponent(r.id)}`, 'data-link': true, class: 'room-link' },
      h('span', { class: 'badge live-badge' }, h('span', { class: 'pulse', 'aria-hidden': 'true' }), 'LIVE'),
      h('span', { class: 'title' }, r.title),
      r.topic ? h('span', { class: 'topic' }, r.topic) : null,
      r.host_name ? h('span', { class: 'host' }, `Hosted by ${r.host_name}`) : null,
      speakers.length ? h('span', { class: 'speakers' }, icon('mic'), speakers.join(', ')) : null,
      h('span', { class: 'count' }, icon('headphones'), `${r.listeners} listening`),
    ),
  );
}

/** Create a room: every field; start now or schedule. */
export const createScreen: Screen = (main) => {
  const error = h('p', { class: 'error', role: 'alert' });
  const field = (id: string, label: string, input: HTMLElement, hint?: string) =>
    h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null);
  const title = h('input', { id: 'title', name: 'title', required: true, maxlength: '120' });
  const topic = h('input', { id: 'topic', name: 'topic', maxlength: '120' });
  const description = h('textarea', { id: 'description', name: 'description', rows: '3', maxlength: '2000' });
  const radio = (name: string, value: string, label: string, checked = false) =>
    h('label', { class: 'choice' }, h('input', { type: 'radio', name, value, checked }), label);
  const speakerMode = h(
    'select',
    { id: 'speaker_mode', name: 'speaker_mode' },
    h('option', { value: 'everyone' }, 'Everyone may raise a hand'),
    h('option', { value: 'followers' }, 'Only my followers'),
    h('option', { value: 'invited' }, 'Only people I invite'),
  );
  const max = h('input', { id: 'max', name: 'max', type: 'number', min: '0', step: '1', inputmode: 'numeric', placeholder: 'No limit' });
  const when = h('input', { id: 'when', name: 'when', type: 'datetime-local', 'aria-describedby': 'when-hint', disabled: true });
  const schedule = scheduleFields('create', null);
  schedule.el.disabled = true;
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Go live');
  const minutes = (id: string, chosen: number, options: number[]) =>
    h(
      'select',
      { id, name: id },
      ...options.map((m) => h('option', { value: String(m * 60), selected: m === chosen }, m === 0 ? 'Never' : `${m} minutes`)),
    );
  const idleMute = minutes('idle_mute', 10, [0, 2, 5, 10, 30]);
  const idleMove = minutes('idle_move', 30, [0, 15, 30, 60]);
  const showAway = h('input', { type: 'checkbox', id: 'show_away', name: 'show_away' });
  const form = h(
    'form',
    { class: 'card', 'aria-labelledby': 'create-heading' },
    h('h1', { id: 'create-heading', tabindex: '-1' }, 'Create a room'),
    field('title', 'Title', title),
    field('topic', 'Topic', topic),
    field('description', 'Description', description),
    h('fieldset', {}, h('legend', {}, 'Room type'),
      radio('kind', 'stage', 'Stage: hosts and speakers talk, the audience raises hands', true),
      radio('kind', 'open', 'Open: everyone may speak')),
    field('speaker_mode', 'Who may ask to speak', speakerMode),
    field('max', 'Max participants', max),
    h('fieldset', {}, h('legend', {}, 'Quiet speakers and away listeners'),
      field('idle_mute', 'Mute a speaker who has not spoken for', idleMute),
      field('idle_move', 'Move a silent speaker back to the audience after', idleMove, 'Hosts and co-hosts stay on stage.'),
      h('label', { class: 'choice' }, showAway, 'Show listeners who step away from the page as away')),
    h('fieldset', {}, h('legend', {}, 'When'),
      radio('start', 'now', 'Start now', true),
      radio('start', 'later', 'Schedule for later'),
      field('when', 'Date and time', when, 'In your local time zone. A repeating room may leave it empty: it starts at its first occurrence.'),
      schedule.el),
    error,
    h('div', { class: 'row' }, submit, h('p', { class: 'hint small', id: 'go-live-hint' }, 'When the room goes live, your microphone stays off until you unmute.')),
  );
  form.addEventListener('change', () => {
    const later = (form.querySelector('input[name=start]:checked') as HTMLInputElement).value === 'later';
    when.disabled = !later;
    when.required = later && !schedule.repeats();
    schedule.el.disabled = !later;
    submit.textContent = later ? 'Schedule' : 'Go live';
  });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    const kind = (form.querySelector('input[name=kind]:checked') as HTMLInputElement).value as 'stage' | 'open';
    const later = !when.disabled;
    let scheduled_for: number | undefined;
    if (later && (when.value || !schedule.repeats())) {
      scheduled_for = new Date(when.value).getTime();
      if (!Number.isFinite(scheduled_for) || scheduled_for <= Date.now()) {
        error.textContent = 'Pick a date and time in the future.';
        when.focus();
        return;
      }
    }
    const idle_mute_after = Number(idleMute.value);
    const idle_audience_after = Number(idleMove.value);
    if (idle_mute_after > 0 && idle_audience_after > 0 && idle_audience_after <= idle_mute_after) {
      error.textContent = 'Move speakers back to the audience later than they are muted.';
      idleMove.focus();
      return;
    }
    submit.disabled = true;
    try {
      const room = await api.create({
        idle_mute_after,
        idle_audience_after,
        show_away: showAway.checked,
        title: title.value.trim(),
        topic: topic.value.trim() || undefined,
        description: description.value.trim() || undefined,
        kind,
        speaker_mode: speakerMode.value as 'everyone' | 'followers' | 'invited',
        max_participants: max.value ? Number(max.value) : undefined,
        scheduled_for,
        schedule: later ? schedule.read() : undefined,
      });
      navigate(`/rooms/${encodeURIComponent(room.id)}`);
    } catch (err) {
      error.textContent = errorText(err);
      submit.disabled = false;
    }
  });
  main.append(form);
};

/** The summary of an ended room, with its statistics. */
export async function endedView(main: HTMLElement, room: RoomView, known: Map<string, string> = new Map()): Promise<void> {
  let stats: Stats | null = null;
  try {
    stats = await api.stats(room.id);
  } catch {
    stats = null;
  }
  // Names the server kept for everyone the statistics name; those seen here fill any gap.
  const names = new Map([...known, ...room.stage.map((m): [string, string] => [m.user, m.name]), ...Object.entries(stats?.names ?? {})]);
  const nameOf = (user: string) => names.get(user) ?? 'Someone who has left';
  // The recording, when the room was recorded: a player with who spoke when.
  const replay = await replaySection(room.id);
  const dl = (label: string, value: string) => h('div', {}, h('dt', {}, label), h('dd', {}, value));
  fill(
    main,
    h(
      'section',
      { class: 'card ended', 'aria-labelledby': 'ended-heading' },
      h('p', { class: 'badge ended-badge' }, 'Ended'),
      h('h1', { id: 'ended-heading', tabindex: '-1' }, 'This room has ended'),
      h('p', { class: 'title' }, room.title),
      room.host_name ? h('p', { class: 'muted' }, `Hosted by ${room.host_name}`) : null,
      stats
        ? h(
            'dl',
            { class: 'stats' },
            dl('Duration', formatDuration(stats.duration_ms)),
            dl('Peak listeners', String(stats.peak_listeners)),
            dl('Joins', String(stats.total_joins)),
            dl('Average listening', formatDuration(stats.average_listening_ms)),
            dl('Reactions', String(stats.reactions)),
            dl('Hands raised', String(stats.hands_raised)),
          )
        : h('p', { class: 'muted' }, 'Statistics are not available.'),
      stats && Object.keys(stats.stage_ms).length
        ? h(
            'section',
            {},
            h('h2', {}, 'Time on stage'),
            h(
              'ul',
              { class: 'stage-times' },
              Object.entries(stats.stage_ms)
                .sort((a, b) => b[1] - a[1])
                .map(([user, ms]) => {
                  const spoke = stats.speaking_ms?.[user] ?? 0;
                  return h(
                    'li',
                    { 'data-user': user },
                    h('span', { class: 'who' }, nameOf(user)),
                    h('span', { class: 'muted' }, formatDuration(ms), spoke ? ` · spoke ${formatDuration(spoke)}` : ''),
                  );
                }),
            ),
          )
        : null,
      replay,
      h('a', { href: '/', 'data-link': true, class: 'button primary' }, 'Back to rooms'),
    ),
  );
  main.querySelector<HTMLElement>('h1')?.focus();
}

/** The state of a room as a badge: LIVE (pulsing), Scheduled with its time, or Ended. */
function stateBadge(r: RoomCard): HTMLElement {
  if (r.state === 'live') return h('span', { class: 'badge live-badge' }, h('span', { class: 'pulse', 'aria-hidden': 'true' }), 'LIVE');
  if (r.state === 'scheduled') return h('span', { class: 'badge' }, r.scheduled_for ? `Scheduled · ${formatWhen(r.scheduled_for)}` : 'Scheduled');
  return h('span', { class: 'badge ended-badge' }, 'Ended');
}

/**
 * A card for feeds and posts: scheduled, live or ended, and a link into the room; an ended
 * room's card plays its recording (a public room's replay needs no token). It reads the room's
 * public card, so it signs nobody in.
 */
export const embedScreen: Screen = (main, params) => {
  const card = h('article', { class: 'embed-card', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  main.append(card);
  let shown = '';
  const brand = () => h('span', { class: 'brand' }, h('span', { class: 'logo', 'aria-hidden': 'true' }), 'Stoa');
  // An ended room's recording, once found: polling keeps the player (and its playback).
  let replay: { player: HTMLElement; duration_ms: number } | null = null;
  // Looked for a few times (a recording may still be finishing), then no more.
  let replayLooks = 0;
  const load = async () => {
    try {
      const r = await api.card(params.id);
      const ended = r.state !== 'live' && r.state !== 'scheduled';
      // Polling rebuilds nothing unless the card changed (so a screen reader hears changes
      // only), or an ended room's recording is still to be found.
      const signature = JSON.stringify(r);
      const looking = ended && !replay && replayLooks < 3;
      if (signature === shown && !looking) return;
      if (looking) {
        replayLooks += 1;
        replay = await embedReplay(r.id);
      }
      const link = h('a', { class: 'button primary', href: `/rooms/${encodeURIComponent(r.id)}`, target: '_blank', rel: 'noopener' },
        r.state === 'live' ? [icon('headphones'), 'Listen live'] : r.state === 'scheduled' ? 'Open room' : 'See summary');
      const view = [
        h('div', { class: 'embed-top' }, brand(), stateBadge(r)),
        h('h1', {}, r.title),
        r.topic ? h('p', { class: 'topic' }, r.topic) : null,
        h(
          'p',
          { class: 'muted embed-meta' },
          r.state !== 'live' && r.host_name ? h('span', {}, `Hosted by ${r.host_name}`) : null,
          ended && replay ? h('span', {}, icon('headphones'), `Replay · ${formatDuration(replay.duration_ms)}`) : null,
          r.state === 'live' && r.speakers.length ? h('span', { class: 'speakers' }, icon('mic'), r.speakers.join(', ')) : null,
          r.state === 'live' ? h('span', { class: 'listening' }, icon('headphones'), plural(r.listeners, 'listener', 'listeners')) : null,
        ),
        ended ? replay?.player : null,
        link,
      ];
      shown = signature;
      card.classList.toggle('replaying', Boolean(ended && replay));
      fill(card, view);
    } catch (err) {
      shown = '';
      fill(
        card,
        h('div', { class: 'embed-top' }, brand()),
        h('p', { class: 'error' }, err instanceof ApiError && err.status === 404 ? 'This room does not exist.' : errorText(err)),
      );
    }
  };
  void load();
  const poll = window.setInterval(load, 10_000);
  return () => clearInterval(poll);
};

/** The `<iframe>` that shows a room's card, sized to fit it whole, corners transparent. */
export function embedSnippet(id: string, title: string): string {
  const t = title.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;');
  return `<iframe src="${location.origin}/embed/rooms/${encodeURIComponent(id)}" width="${EMBED_SIZE.width}" height="${EMBED_SIZE.height}" style="border:0;max-width:100%;background:transparent" allowtransparency="true" loading="lazy" title="${t}"></iframe>`;
}

/** The embed card's size; its styles clamp the text so that every state fits it. */
export const EMBED_SIZE = { width: 440, height: 232 };
