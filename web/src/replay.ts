// Replays and clips: an ended room's recording with who spoke when, a "Clip" that cuts the 30 s
// before the playhead, and a clip's own page (/clips/{id}) that plays it and shares its link.
import { api, mediaUrl, type Clip, type Recording } from './api';
import { fill, formatDuration, h } from './dom';
import { icon } from './icons';
import { navigate, type Screen } from './main';
import { errorText } from './screens';
import { toast } from './toast';

/** What a "Clip" cuts: the last 30 seconds. */
export const CLIP_SECONDS = 30;

/** A time on a player's scale, `m:ss`. */
function clock(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

/** Cuts a clip of room `id` and opens its page, or says why it could not. */
export async function cutClip(id: string, request: { recording?: string; last_seconds?: number; start_ms?: number; end_ms?: number }, open = true): Promise<Clip | null> {
  try {
    const clip = await api.cutClip(id, request);
    if (open) navigate(clip.link);
    else toast(`Clip saved: ${formatDuration(clip.duration_ms)}`, { icon: 'check', tone: 'ok', action: { label: 'Open', run: () => navigate(clip.link) } });
    return clip;
  } catch (e) {
    toast(errorText(e), { icon: 'alert', tone: 'warn' });
    return null;
  }
}

/**
 * Who spoke when, as coloured stretches along the recording (a colour per speaker); a click
 * seeks `seek` there. Decorative for screen readers: the player and the list say the same.
 */
function timelineBar(recording: Recording, seek: (ms: number) => void): HTMLElement {
  const length = Math.max(recording.duration_ms, 1);
  const bar = h(
    'div',
    { class: 'timeline-bar', 'aria-hidden': 'true' },
    recording.timeline.map((s) =>
      h('span', {
        class: 'timeline-span',
        title: `${s.name} ${clock(s.start_ms)}–${clock(s.end_ms)}`,
        // Signed out, the timeline names people without ids: colour by name then.
        style: `left:${(100 * s.start_ms) / length}%;width:${Math.max(0.5, (100 * (s.end_ms - s.start_ms)) / length)}%;--hue:${[...(s.user || s.name)].reduce((a, c) => a + c.charCodeAt(0), 0) % 360}`,
      }),
    ),
  );
  bar.addEventListener('click', (e) => {
    const box = bar.getBoundingClientRect();
    if (box.width > 0) seek(((e.clientX - box.left) / box.width) * length);
  });
  return bar;
}

/** The newest finished recording of a room (else the one running), or `null`. */
async function latestRecording(roomId: string): Promise<Recording | null> {
  try {
    const recordings = (await api.recordings(roomId)).recordings;
    return recordings.filter((r) => r.state !== 'recording').pop() ?? recordings.pop() ?? null;
  } catch {
    return null;
  }
}

/**
 * The embed card's player for an ended room: the recording (range requests, so it seeks) and
 * who spoke when along it. A public room's replay needs no token, so the card signs nobody
 * in; `null` when the room has no recording (or the reader may not hear it).
 */
export async function embedReplay(roomId: string): Promise<{ player: HTMLElement; duration_ms: number } | null> {
  const recording = await latestRecording(roomId);
  if (!recording) return null;
  const audio = h('audio', { controls: true, preload: 'metadata', src: mediaUrl(recording.audio_url), 'aria-label': 'Recording of the room' });
  const seek = (ms: number) => {
    audio.currentTime = ms / 1000;
    void audio.play().catch(() => undefined);
  };
  const speakers = [...new Set(recording.timeline.map((s) => s.name))];
  return {
    player: h('div', { class: 'embed-replay', title: speakers.length ? `Speaking: ${speakers.join(', ')}` : '' }, audio, recording.timeline.length ? timelineBar(recording, seek) : null),
    duration_ms: recording.duration_ms,
  };
}

/**
 * The replay of an ended room: a player on the recording (range requests, so it seeks), the
 * timeline of who spoke when (each stretch seeks the player), and Clip. `null` when the room
 * has no recording.
 */
export async function replaySection(roomId: string): Promise<HTMLElement | null> {
  const recording = await latestRecording(roomId);
  if (!recording) return null;
  const audio = h('audio', { controls: true, preload: 'metadata', src: mediaUrl(recording.audio_url), class: 'replay-audio' });
  const seek = (ms: number) => {
    audio.currentTime = ms / 1000;
    void audio.play().catch(() => undefined);
  };
  const bar = timelineBar(recording, seek);
  const clipButton = h('button', { type: 'button', class: 'secondary' }, icon('plus'), `Clip the last ${CLIP_SECONDS} s`);
  clipButton.addEventListener('click', async () => {
    clipButton.disabled = true;
    // The 30 s before the playhead; from the start, the recording's last 30 s.
    const at = Math.round(audio.currentTime * 1000);
    const request = at >= 1000 ? { recording: recording.id, start_ms: Math.max(0, at - CLIP_SECONDS * 1000), end_ms: at } : { recording: recording.id, last_seconds: CLIP_SECONDS };
    await cutClip(roomId, request);
    clipButton.disabled = false;
  });
  return h(
    'section',
    { class: 'replay', 'aria-labelledby': 'replay-heading' },
    h('h2', { id: 'replay-heading' }, 'Replay'),
    h('p', { class: 'muted' }, `Recording · ${formatDuration(recording.duration_ms)}`),
    audio,
    bar,
    recording.timeline.length
      ? h(
          'ol',
          { class: 'timeline', 'aria-label': 'Who spoke when' },
          recording.timeline.map((s) =>
            h(
              'li',
              {},
              h('button', { type: 'button', class: 'ghost small', onclick: () => seek(s.start_ms) }, h('span', { class: 'when' }, clock(s.start_ms)), ' ', h('span', { class: 'who' }, s.name)),
            ),
          ),
        )
      : h('p', { class: 'muted' }, 'Nobody spoke in this recording.'),
    h('div', { class: 'row' }, clipButton),
  );
}

/** A clip's page: its card, its audio, and its link to share. */
export const clipScreen: Screen = (main, params) => {
  let cancelled = false;
  fill(main, h('p', { class: 'muted' }, 'Loading the clip…'));
  void (async () => {
    let clip: Clip;
    try {
      clip = await api.clip(params.id);
    } catch (e) {
      if (!cancelled) fill(main, h('section', { class: 'card refused' }, h('h1', { tabindex: '-1' }, 'Clip not available'), h('p', {}, errorText(e)), h('a', { href: '/', 'data-link': true, class: 'button primary' }, 'Back to rooms')));
      return;
    }
    if (cancelled) return;
    document.title = `${clip.title} · Stoa`;
    const link = new URL(clip.link, location.origin).toString();
    const copy = h('button', { type: 'button', class: 'secondary' }, icon('copy'), 'Copy link');
    copy.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(link);
        toast('Link copied', { icon: 'check', tone: 'ok' });
      } catch {
        toast(link, { icon: 'link' });
      }
    });
    fill(
      main,
      h(
        'section',
        { class: 'card clip', 'aria-labelledby': 'clip-heading' },
        h('p', { class: 'badge ended-badge' }, 'Clip'),
        h('h1', { id: 'clip-heading', tabindex: '-1' }, clip.title),
        h('p', { class: 'muted' }, 'From ', h('a', { href: `/rooms/${encodeURIComponent(clip.room.id)}`, 'data-link': true }, clip.room.title), clip.room.host_name ? ` · hosted by ${clip.room.host_name}` : '', ` · ${formatDuration(clip.duration_ms)}`),
        h('audio', { controls: true, preload: 'metadata', src: mediaUrl(clip.audio_url), class: 'replay-audio' }),
        clip.speakers.length
          ? h('p', { class: 'clip-speakers' }, 'Speaking: ', clip.speakers.map((s) => s.name).join(', '))
          : h('p', { class: 'muted' }, 'Nobody speaks in this clip.'),
        h('div', { class: 'row' }, h('input', { type: 'text', readonly: true, value: link, 'aria-label': 'Link to this clip' }), copy),
      ),
    );
    main.querySelector<HTMLElement>('h1')?.focus();
  })();
  return () => {
    cancelled = true;
  };
};
