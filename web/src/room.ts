// The room screen: a scheduled room's card, the live room (stage, audience, controls, host
// panel, reactions) on the unmodified livekit-client, or the ended summary.
import {
  DisconnectReason,
  Participant,
  RemoteParticipant,
  RemoteTrack,
  Room,
  RoomEvent,
  Track,
} from 'livekit-client';

import { api, ApiError, session, subscribe, type Member, type ModerationAction, type RoomView } from './api';
import { fill, formatWhen, h, initials, ROLE_LABEL } from './dom';
import { navigate, type Screen } from './main';
import { endedView, errorText } from './screens';

const REACTIONS = ['👏', '❤️', '😂', '🔥', '💯', '🙌'];
const ON_STAGE = new Set(['host', 'co_host', 'speaker']);
/** Audio level (0..1, as WebRTC stats report it) above which someone counts as speaking. */
const SPEECH_LEVEL = 0.02;

export const roomScreen: Screen = (main, params) => {
  const controller = new RoomController(main, params.id);
  void controller.open();
  return () => controller.destroy();
};

declare global {
  interface Window {
    /** The live LiveKit room, for tests and debugging. */
    stoaRoom?: Room;
  }
}

/** Explains why the microphone could not start, in words a listener can act on. */
export function microphoneProblem(err: unknown): string {
  const name = err instanceof Error ? err.name : '';
  if (!window.isSecureContext) return 'Your browser only lets secure pages (https) use the microphone. Open this room over https to speak.';
  switch (name) {
    case 'NotAllowedError':
    case 'PermissionDeniedError':
      return 'Microphone access is blocked. Allow the microphone for this site (the icon next to the address bar), then press Unmute.';
    case 'NotFoundError':
    case 'DevicesNotFoundError':
      return 'No microphone was found. Connect one, then press Unmute.';
    case 'NotReadableError':
    case 'TrackStartError':
      return 'Your microphone is busy or unavailable; another app may be using it. Close it, then press Unmute.';
    default:
      return `The microphone could not start: ${err instanceof Error ? err.message : String(err)}`;
  }
}

class RoomController {
  private view: RoomView | null = null;
  private lk: Room | null = null;
  private destroyed = false;
  private leaving = false;
  private finished = false;
  /** Active speakers as the server reports them (SpeakersChanged). */
  private readonly speaking = new Set<string>();
  /** Speakers measured here from received audio levels, for when the server reports none. */
  private readonly heard = new Set<string>();
  private meter: number | undefined;
  private readonly volumes = new Map<string, number>();
  private deafened = false;
  private events: { close(): void } | null = null;
  private poll: number | undefined;
  private refreshTimer: number | undefined;
  private readonly recent = new Map<string, number>();
  private readonly tiles = new Map<string, HTMLElement>();
  private readonly signatures = new Map<string, string>();
  /** Names of everyone seen in the room, for the summary once the room has ended. */
  private readonly names = new Map<string, string>();

  // Parts of the live screen.
  private readonly count = h('p', { class: 'count', 'aria-live': 'polite' });
  private readonly reconnecting = h('p', { class: 'banner warn', role: 'status', hidden: true }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Connection lost. Reconnecting…');
  private readonly tapToListen = h('button', { type: 'button', class: 'banner-button primary', hidden: true }, '🔈 Tap to listen');
  private readonly micError = h('p', { class: 'banner error', role: 'alert', hidden: true });
  private readonly notice = h('p', { class: 'banner info', role: 'status', hidden: true });
  private readonly stage = h('ul', { class: 'tiles', 'aria-labelledby': 'stage-heading' });
  private readonly audience = h('div', { class: 'audience' });
  private readonly hostPanel = h('section', { class: 'host-panel card', 'aria-labelledby': 'host-heading', hidden: true });
  private readonly controls = h('nav', { class: 'controls', 'aria-label': 'Room controls' });
  private readonly floats = h('div', { class: 'floats', 'aria-hidden': 'true' });
  private readonly announcer = h('p', { class: 'visually-hidden', 'aria-live': 'polite' });
  private readonly sink = h('div', { class: 'audio-sink', hidden: true });
  private readonly shareDialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'share-heading' });
  private readonly endDialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'end-heading' });
  /** Keeps `--controls-h` at the control bar's height, so the page ends above the bar. */
  private readonly barSize = new ResizeObserver(() => {
    const height = this.controls.isConnected ? this.controls.getBoundingClientRect().height : 0;
    document.documentElement.style.setProperty('--controls-h', `${Math.ceil(height)}px`);
  });

  constructor(
    private readonly main: HTMLElement,
    private readonly id: string,
  ) {}

  async open(): Promise<void> {
    // A fresh start (also for Rejoin): nothing of an earlier session stays subscribed.
    this.events?.close();
    this.events = null;
    clearInterval(this.poll);
    if (this.lk) {
      this.leaving = true;
      await this.lk.disconnect();
      this.lk = null;
    }
    this.leaving = false;
    this.finished = false;
    this.tiles.clear();
    this.signatures.clear();
    fill(this.main, h('h1', { tabindex: '-1', class: 'visually-hidden' }, 'Room'), h('p', { class: 'muted', role: 'status' }, 'Loading the room…'));
    try {
      this.view = await api.room(this.id);
    } catch (err) {
      fill(this.main, h('h1', { tabindex: '-1' }, 'Room unavailable'), h('p', { class: 'error', role: 'alert' }, errorText(err)), h('a', { href: '/', 'data-link': true, class: 'button' }, 'Back to rooms'));
      return;
    }
    if (this.destroyed) return;
    const v = this.view;
    if (v.state === 'scheduled') this.scheduled(v);
    else if (v.state === 'live') await this.live();
    else await this.showEnded();
  }

  destroy(): void {
    this.destroyed = true;
    this.releaseBar();
    this.events?.close();
    clearInterval(this.poll);
    clearInterval(this.meter);
    clearTimeout(this.refreshTimer);
    if (this.lk && !this.leaving && !this.finished) {
      this.leaving = true;
      api.leave(this.id).catch(() => {});
    }
    void this.lk?.disconnect();
    if (window.stoaRoom === this.lk) window.stoaRoom = undefined;
  }

  // ----- scheduled -----

  private scheduled(v: RoomView): void {
    const me = session();
    const error = h('p', { class: 'error', role: 'alert' });
    const isHost = me?.user === v.host;
    const remind = h('button', { type: 'button', class: 'small', 'aria-pressed': 'false' }, '🔔 Remind me');
    const updateRemind = (on: boolean) => {
      remind.setAttribute('aria-pressed', String(on));
      remind.textContent = on ? '🔔 Reminder set' : '🔔 Remind me';
      remind.classList.toggle('toggled', on);
    };
    api.follows().then((f) => updateRemind(f.follows.some((x) => x.kind === 'room' && x.id === v.id)), () => {});
    remind.addEventListener('click', async () => {
      const on = remind.getAttribute('aria-pressed') === 'true';
      try {
        if (on) await api.unfollow('rooms', v.id);
        else await api.follow('rooms', v.id);
        updateRemind(!on);
      } catch (err) {
        error.textContent = errorText(err);
      }
    });
    const start = h('button', { type: 'button', class: 'primary' }, 'Start now');
    start.addEventListener('click', async () => {
      start.disabled = true;
      try {
        await api.start(v.id);
        await this.open();
      } catch (err) {
        error.textContent = errorText(err);
        start.disabled = false;
      }
    });
    fill(
      this.main,
      h(
        'section',
        { class: 'card scheduled-room', 'aria-labelledby': 'room-title' },
        h('p', { class: 'badge' }, 'Scheduled'),
        h('h1', { id: 'room-title', tabindex: '-1' }, v.title),
        v.topic ? h('p', { class: 'topic' }, v.topic) : null,
        h('p', { class: 'when' }, v.scheduled_for ? `Starts ${formatWhen(v.scheduled_for)}` : 'Not scheduled yet'),
        v.description ? h('p', {}, v.description) : null,
        error,
        h('div', { class: 'row' }, isHost ? start : null, remind, this.shareButton(v)),
      ),
      this.shareDialog,
    );
    this.events = subscribe(v.id, (e) => {
      if (e.type === 'room_live' && !this.destroyed) {
        this.events?.close();
        void this.open();
      }
    });
  }

  // ----- live -----

  private async live(): Promise<void> {
    const v = this.view as RoomView;
    this.tapToListen.onclick = () => void this.lk?.startAudio().then(() => this.updatePlayback());
    fill(this.stage);
    fill(
      this.main,
      h(
        'section',
        { class: 'room', 'aria-labelledby': 'room-title' },
        h(
          'header',
          { class: 'room-head' },
          h('span', { class: 'badge live-badge' }, h('span', { class: 'pulse', 'aria-hidden': 'true' }), 'LIVE'),
          h('h1', { id: 'room-title', tabindex: '-1' }, v.title),
          v.topic ? h('p', { class: 'topic' }, v.topic) : null,
          this.count,
        ),
        h('div', { class: 'banners' }, this.reconnecting, this.tapToListen, this.micError, this.notice),
        h('section', { class: 'stage', 'aria-labelledby': 'stage-heading' }, h('h2', { id: 'stage-heading' }, 'On stage'), this.stage),
        h('section', { class: 'audience-section', 'aria-labelledby': 'audience-heading' }, h('h2', { id: 'audience-heading' }, 'Audience'), this.audience),
        this.hostPanel,
      ),
      this.controls,
      this.floats,
      this.announcer,
      this.sink,
      this.shareDialog,
      this.endDialog,
    );
    this.barSize.observe(this.controls);
    this.render();
    this.events = subscribe(this.id, (e) => {
      if (e.type === 'room_ended') void this.showEnded();
      else if (e.type === 'reaction' && e.user && e.emoji) this.showReaction(e.user, e.emoji);
      else this.scheduleRefresh();
    });
    this.poll = window.setInterval(() => this.scheduleRefresh(), 4000);
    await this.join();
  }

  private async join(): Promise<void> {
    let grant;
    try {
      grant = await api.join(this.id);
    } catch (err) {
      this.say(this.notice, errorText(err));
      if (err instanceof ApiError && err.status === 409) {
        // In another room, or this one is not live any more.
        const v = await api.room(this.id).catch(() => null);
        if (v && v.state !== 'live') await this.showEnded();
      }
      return;
    }
    if (this.destroyed) return;
    const lk = new Room({ adaptiveStream: false, dynacast: false });
    this.lk = lk;
    window.stoaRoom = lk;
    lk.on(RoomEvent.TrackSubscribed, (track: RemoteTrack, _pub, participant: RemoteParticipant) => {
      if (track.kind !== Track.Kind.Audio) return;
      const el = track.attach();
      el.dataset.identity = participant.identity;
      this.sink.append(el);
      this.applyVolume(participant);
      this.updatePlayback();
    })
      .on(RoomEvent.TrackUnsubscribed, (track: RemoteTrack) => {
        for (const el of track.detach()) el.remove();
      })
      .on(RoomEvent.ActiveSpeakersChanged, (speakers: Participant[]) => {
        this.speaking.clear();
        for (const p of speakers) this.speaking.add(p.identity);
        this.renderStage();
      })
      .on(RoomEvent.ParticipantPermissionsChanged, (prev: { canPublish?: boolean } | undefined, p: Participant) => {
        if (p === lk.localParticipant) {
          const now = p.permissions?.canPublish ?? false;
          if (now && !prev?.canPublish) void this.enableMic();
          if (!now) this.micError.hidden = true;
        }
        this.render();
        this.scheduleRefresh();
      })
      .on(RoomEvent.ParticipantAttributesChanged, () => this.scheduleRefresh())
      .on(RoomEvent.ParticipantConnected, () => this.scheduleRefresh())
      .on(RoomEvent.ParticipantDisconnected, () => this.scheduleRefresh())
      .on(RoomEvent.TrackMuted, () => this.afterTrackChange())
      .on(RoomEvent.TrackUnmuted, () => this.afterTrackChange())
      .on(RoomEvent.LocalTrackPublished, () => this.afterTrackChange())
      .on(RoomEvent.LocalTrackUnpublished, () => this.afterTrackChange())
      .on(RoomEvent.DataReceived, (payload: Uint8Array, _p?: RemoteParticipant, _k?: unknown, topic?: string) => {
        if (topic !== 'stoa.reaction') return;
        try {
          const r = JSON.parse(new TextDecoder().decode(payload)) as { user?: string; emoji?: string };
          if (r.user && r.emoji) this.showReaction(r.user, r.emoji);
        } catch {
          // Not a reaction.
        }
      })
      .on(RoomEvent.Reconnecting, () => this.connectionLost())
      .on(RoomEvent.SignalReconnecting, () => this.connectionLost())
      .on(RoomEvent.Reconnected, () => {
        this.reconnecting.hidden = true;
        for (const p of lk.activeSpeakers) this.speaking.add(p.identity);
        this.scheduleRefresh();
      })
      .on(RoomEvent.AudioPlaybackStatusChanged, () => this.updatePlayback())
      .on(RoomEvent.MediaDevicesError, (err: Error) => this.say(this.micError, microphoneProblem(err)))
      .on(RoomEvent.Disconnected, (reason?: DisconnectReason) => void this.disconnected(reason));
    try {
      await lk.connect(grant.url, grant.token, { autoSubscribe: true });
    } catch (err) {
      this.say(this.notice, `Could not connect to the room: ${errorText(err)}`);
      this.renderRejoin();
      return;
    }
    // Speakers the server named before the room counted as connected raised no event.
    this.speaking.clear();
    for (const p of lk.activeSpeakers) this.speaking.add(p.identity);
    if (lk.localParticipant.permissions?.canPublish) await this.enableMic();
    clearInterval(this.meter);
    this.meter = window.setInterval(() => void this.measure(), 500);
    this.updatePlayback();
    this.render();
    this.scheduleRefresh();
  }

  /** Marks as speaking whoever is heard above a speech level, from WebRTC receiver and sender stats. */
  private async measure(): Promise<void> {
    const lk = this.lk;
    if (!lk) return;
    const heard = new Set<string>();
    const level = async (stats: RTCStatsReport | undefined, type: string) => {
      let max = 0;
      stats?.forEach((s: { type: string; kind?: string; audioLevel?: number }) => {
        if (s.type === type && s.kind === 'audio') max = Math.max(max, s.audioLevel ?? 0);
      });
      return max;
    };
    for (const p of lk.remoteParticipants.values()) {
      for (const pub of p.audioTrackPublications.values()) {
        if (pub.isMuted || !pub.track?.receiver) continue;
        const stats = await pub.track.receiver.getStats().catch(() => undefined);
        if ((await level(stats, 'inbound-rtp')) > SPEECH_LEVEL) heard.add(p.identity);
      }
    }
    const mic = lk.localParticipant.getTrackPublication(Track.Source.Microphone);
    if (mic?.track && !mic.isMuted) {
      const stats = await mic.track.sender?.getStats().catch(() => undefined);
      if ((await level(stats, 'media-source')) > SPEECH_LEVEL) heard.add(lk.localParticipant.identity);
    }
    const same = heard.size === this.heard.size && [...heard].every((x) => this.heard.has(x));
    if (same) return;
    this.heard.clear();
    for (const x of heard) this.heard.add(x);
    this.renderStage();
  }

  private async enableMic(): Promise<void> {
    const lk = this.lk;
    if (!lk) return;
    try {
      await lk.localParticipant.setMicrophoneEnabled(true);
      this.micError.hidden = true;
    } catch (err) {
      this.say(this.micError, microphoneProblem(err));
    }
    this.render();
  }

  /** Shows the reconnect banner; nobody counts as speaking until audio flows again. */
  private connectionLost(): void {
    this.reconnecting.hidden = false;
    this.speaking.clear();
    this.heard.clear();
    this.renderStage();
  }

  private afterTrackChange(): void {
    this.renderControls();
    this.scheduleRefresh();
  }

  private updatePlayback(): void {
    this.tapToListen.hidden = !this.lk || this.lk.canPlaybackAudio;
  }

  private async disconnected(reason?: DisconnectReason): Promise<void> {
    if (this.destroyed || this.leaving || this.finished) return;
    for (const el of this.sink.querySelectorAll('audio')) el.remove();
    const v = await api.room(this.id).catch(() => null);
    if (v && v.state !== 'live') {
      this.view = v;
      await this.showEnded();
      return;
    }
    if (reason === DisconnectReason.PARTICIPANT_REMOVED) {
      this.finished = true;
      this.stop();
      fill(
        this.main,
        h(
          'section',
          { class: 'card', 'aria-labelledby': 'removed-heading' },
          h('h1', { id: 'removed-heading', tabindex: '-1' }, 'You were removed from this room'),
          h('p', {}, 'A host removed you. You can find other rooms in the directory.'),
          h('a', { href: '/', 'data-link': true, class: 'button primary' }, 'Back to rooms'),
        ),
      );
      this.main.querySelector<HTMLElement>('h1')?.focus();
      return;
    }
    this.say(this.notice, 'You were disconnected from the room.');
    this.renderRejoin();
  }

  private renderRejoin(): void {
    fill(
      this.controls,
      h('button', { type: 'button', class: 'primary', onclick: () => void this.open() }, 'Rejoin'),
      h('button', { type: 'button', onclick: () => navigate('/') }, 'Back to rooms'),
    );
  }

  private releaseBar(): void {
    this.barSize.disconnect();
    document.documentElement.style.removeProperty('--controls-h');
  }

  private stop(): void {
    this.releaseBar();
    this.events?.close();
    clearInterval(this.poll);
    clearInterval(this.meter);
    clearTimeout(this.refreshTimer);
    if (this.lk) {
      this.leaving = true;
      void this.lk.disconnect();
    }
  }

  private async showEnded(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    this.stop();
    const v = (await api.room(this.id).catch(() => null)) ?? this.view;
    if (this.destroyed || !v) return;
    await endedView(this.main, v, this.names);
  }

  // ----- state -----

  private scheduleRefresh(): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = window.setTimeout(() => void this.refresh(), 150);
  }

  private async refresh(): Promise<void> {
    if (this.destroyed || this.finished) return;
    try {
      const v = await api.room(this.id);
      this.apply(v);
    } catch {
      // Kept as is; the next event or poll tries again.
    }
  }

  private apply(v: RoomView): void {
    if (this.destroyed || this.finished) return;
    this.view = v;
    for (const m of [...v.stage, ...(v.audience ?? [])]) this.names.set(m.user, m.name);
    if (v.state !== 'live') {
      void this.showEnded();
      return;
    }
    this.render();
  }

  /** Runs a call that answers with the room, and shows its error if it fails. */
  private async act(f: () => Promise<RoomView | void>): Promise<void> {
    try {
      const v = await f();
      if (v) this.apply(v);
      this.notice.hidden = true;
    } catch (err) {
      this.say(this.notice, errorText(err));
    }
  }

  private say(el: HTMLElement, text: string): void {
    el.textContent = text;
    el.hidden = false;
  }

  private name(user: string): string {
    const v = this.view;
    const m = v?.stage.find((x) => x.user === user) ?? v?.audience?.find((x) => x.user === user);
    if (m) return m.name;
    if (user === session()?.user) return session()?.name ?? 'You';
    const p = this.lk?.remoteParticipants.get(user);
    return p?.name || 'Someone';
  }

  // ----- rendering -----

  private render(): void {
    const v = this.view;
    if (!v || this.finished) return;
    this.count.textContent = `🎧 ${v.listeners} listening · ${v.present} here`;
    this.renderStage();
    this.renderAudience();
    this.renderHostPanel();
    this.renderControls();
  }

  private renderStage(): void {
    const v = this.view;
    if (!v) return;
    const me = session()?.user;
    const seen = new Set<string>();
    for (const m of v.stage) {
      seen.add(m.user);
      let tile = this.tiles.get(m.user);
      if (!tile) {
        tile = this.tile(m, m.user === me);
        this.tiles.set(m.user, tile);
      }
      const muted = m.muted || m.hard_muted || (m.user === me && this.lk !== null && !this.lk.localParticipant.isMicrophoneEnabled);
      const speaking = (this.speaking.has(m.user) || this.heard.has(m.user)) && !muted;
      tile.classList.toggle('speaking', speaking);
      tile.classList.toggle('away', !m.present);
      const badge = tile.querySelector('.mute-badge') as HTMLElement;
      badge.hidden = !muted;
      badge.title = m.hard_muted ? 'Muted by a host' : 'Muted';
      badge.setAttribute('aria-label', m.hard_muted ? 'muted by a host' : 'muted');
      (tile.querySelector('.role') as HTMLElement).textContent = ROLE_LABEL[m.role] ?? m.role;
      tile.setAttribute('aria-label', `${m.name}${m.user === me ? ' (you)' : ''}, ${ROLE_LABEL[m.role]}${muted ? ', muted' : ''}${speaking ? ', speaking' : ''}`);
    }
    for (const [user, tile] of this.tiles) {
      if (!seen.has(user)) {
        tile.remove();
        this.tiles.delete(user);
      }
    }
    // Keep the server's order (host first) without rebuilding tiles.
    const ordered = v.stage.map((m) => this.tiles.get(m.user)).filter((t): t is HTMLElement => Boolean(t));
    ordered.forEach((t, i) => {
      if (this.stage.children[i] !== t) this.stage.insertBefore(t, this.stage.children[i] ?? null);
    });
  }

  private tile(m: Member, mine: boolean): HTMLElement {
    const volume = mine
      ? null
      : h('input', {
          type: 'range',
          min: '0',
          max: '1',
          step: '0.05',
          value: String(this.volumes.get(m.user) ?? 1),
          class: 'volume',
          'aria-label': `Volume for ${m.name}`,
          oninput: (e: Event) => {
            this.volumes.set(m.user, Number((e.target as HTMLInputElement).value));
            const p = this.lk?.remoteParticipants.get(m.user);
            if (p) this.applyVolume(p);
          },
        });
    return h(
      'li',
      { class: 'tile', 'data-user': m.user, role: 'group' },
      h('span', { class: 'avatar', 'aria-hidden': 'true' }, initials(m.name), h('span', { class: 'mute-badge', hidden: true }, '🔇')),
      h('span', { class: 'name' }, m.name, mine ? ' (you)' : ''),
      h('span', { class: 'role' }, ROLE_LABEL[m.role]),
      volume,
    );
  }

  private applyVolume(p: RemoteParticipant): void {
    p.setVolume(this.deafened ? 0 : (this.volumes.get(p.identity) ?? 1));
  }

  private changed(key: string, value: unknown): boolean {
    const sig = JSON.stringify(value);
    if (this.signatures.get(key) === sig) return false;
    this.signatures.set(key, sig);
    return true;
  }

  private renderAudience(): void {
    const v = this.view;
    if (!v) return;
    const list = v.audience ? [...v.audience, ...this.moreAudience].filter((m) => m.present) : null;
    if (!this.changed('audience', [v.listeners, list])) return;
    if (list === null) {
      fill(this.audience, h('p', { class: 'muted' }, `${v.listeners} ${v.listeners === 1 ? 'person' : 'people'} listening`));
      return;
    }
    fill(
      this.audience,
      h('p', { class: 'muted' }, `${v.listeners} in the audience`),
      h(
        'ul',
        { class: 'people' },
        list.map((m) =>
          h('li', {}, h('span', { class: 'avatar small', 'aria-hidden': 'true' }, initials(m.name)), h('span', {}, m.name), m.hand_raised ? h('span', { class: 'hand', 'aria-label': 'hand raised' }, '✋') : null),
        ),
      ),
    );
  }

  /** Later pages of the audience, fetched by cursor from the host panel. */
  private moreAudience: Member[] = [];
  private audienceCursor: string | null = null;

  private async moreOfAudience(after: string): Promise<void> {
    try {
      const page = await api.audience(this.id, after);
      this.moreAudience = [...this.moreAudience, ...page.members];
      this.audienceCursor = page.next;
      this.renderHostPanel();
      this.renderAudience();
    } catch {
      // The next refresh shows the first page again; nothing else to undo.
    }
  }

  private moderate(user: string, action: ModerationAction): void {
    void this.act(() => api.moderate(this.id, user, action));
  }

  private renderHostPanel(): void {
    const v = this.view;
    const me = session()?.user;
    const moderator = v?.you && (v.you.role === 'host' || v.you.role === 'co_host');
    this.hostPanel.hidden = !moderator;
    if (!v || !moderator) return;
    if (!this.changed('host', [v.hands, v.stage, v.audience, v.banned, v.you, this.moreAudience.length])) return;
    const button = (label: string, name: string, user: string, action: ModerationAction, cls = 'small') =>
      h('button', { type: 'button', class: cls, 'aria-label': `${label}: ${name}`, onclick: () => this.moderate(user, action) }, label);
    const hands = v.hands ?? [];
    const others = v.stage.filter((m) => m.user !== me && m.role !== 'host');
    // The first page came with the view; later pages are fetched on demand by cursor.
    const seen = new Set((v.audience ?? []).map((m) => m.user));
    const audience = [...(v.audience ?? []), ...this.moreAudience.filter((m) => !seen.has(m.user))].filter((m) => m.present);
    const cursor = this.moreAudience.length ? this.audienceCursor : v.audience_next;
    fill(
      this.hostPanel,
      h('h2', { id: 'host-heading' }, 'Host controls'),
      h('h3', {}, `Raised hands (${v.raised_hands})`),
      hands.length
        ? h('ol', { class: 'queue' }, hands.map((x) => h('li', {}, h('span', { class: 'member' }, '✋ ', x.name), h('span', { class: 'actions' }, button('Approve', x.name, x.user, 'approve_hand', 'small primary'), button('Deny', x.name, x.user, 'deny_hand')))))
        : h('p', { class: 'muted' }, 'No hands raised.'),
      h('h3', {}, 'On stage'),
      others.length
        ? h(
            'ul',
            { class: 'queue' },
            others.map((m) =>
              h(
                'li',
                {},
                h('span', { class: 'member' }, m.name, ' · ', ROLE_LABEL[m.role]),
                h(
                  'span',
                  { class: 'actions' },
                  button('Move to audience', m.name, m.user, 'move_to_audience'),
                  m.role === 'co_host' ? button('Remove co-host', m.name, m.user, 'remove_co_host') : button('Make co-host', m.name, m.user, 'add_co_host'),
                  button('Mute', m.name, m.user, 'force_mute'),
                  m.hard_muted ? button('Restore mic', m.name, m.user, 'restore') : button('Hard mute', m.name, m.user, 'hard_mute'),
                  button('Kick', m.name, m.user, 'kick', 'small danger'),
                  button('Ban', m.name, m.user, 'ban', 'small danger'),
                ),
              ),
            ),
          )
        : h('p', { class: 'muted' }, 'Nobody else is on stage.'),
      h('h3', {}, 'Audience'),
      audience.length
        ? h(
            'ul',
            { class: 'queue' },
            audience.map((m) =>
              h(
                'li',
                {},
                h('span', { class: 'member' }, m.name),
                h('span', { class: 'actions' }, button('Invite to speak', m.name, m.user, 'invite_to_speak'), button('Kick', m.name, m.user, 'kick', 'small danger'), button('Ban', m.name, m.user, 'ban', 'small danger')),
              ),
            ),
          )
        : h('p', { class: 'muted' }, 'Nobody in the audience yet.'),
      cursor ? h('button', { type: 'button', class: 'small', onclick: () => void this.moreOfAudience(cursor) }, 'Show more') : null,
      v.banned?.length
        ? [h('h3', {}, 'Banned'), h('ul', { class: 'queue' }, v.banned.map((u) => h('li', {}, h('span', { class: 'member' }, u), button('Unban', u, u, 'unban'))))]
        : null,
      v.you?.role === 'host' ? h('button', { type: 'button', class: 'danger', onclick: () => this.endDialogOpen() }, 'End room') : null,
    );
  }

  private endDialogOpen(): void {
    const error = h('p', { class: 'error', role: 'alert' });
    const confirm = h('button', { type: 'button', class: 'danger' }, 'End for everyone');
    confirm.addEventListener('click', async () => {
      confirm.disabled = true;
      try {
        const v = await api.end(this.id);
        this.view = v;
        this.endDialog.close();
        await this.showEnded();
      } catch (err) {
        error.textContent = errorText(err);
        confirm.disabled = false;
      }
    });
    fill(
      this.endDialog,
      h('h2', { id: 'end-heading' }, 'End this room?'),
      h('p', {}, 'Everyone is disconnected and the room closes for good.'),
      error,
      h('div', { class: 'row' }, h('button', { type: 'button', onclick: () => this.endDialog.close() }, 'Cancel'), confirm),
    );
    this.endDialog.showModal();
  }

  private shareButton(v: RoomView): HTMLElement {
    return h('button', { type: 'button', class: 'ctl', onclick: () => this.share(v) }, h('span', { 'aria-hidden': 'true' }, '🔗'), ' Share');
  }

  private share(v: RoomView): void {
    const url = `${location.origin}/rooms/${encodeURIComponent(v.id)}`;
    const embed = `<iframe src="${location.origin}/embed/rooms/${encodeURIComponent(v.id)}" width="400" height="220" style="border:0" title="${v.title.replace(/"/g, '&quot;')}"></iframe>`;
    const status = h('p', { role: 'status', class: 'muted' });
    const copy = (text: string) => async () => {
      try {
        await navigator.clipboard.writeText(text);
        status.textContent = 'Copied.';
      } catch {
        status.textContent = 'Select the text and copy it.';
      }
    };
    fill(
      this.shareDialog,
      h('h2', { id: 'share-heading' }, 'Share this room'),
      h('label', { for: 'share-link' }, 'Link'),
      h('div', { class: 'row' }, h('input', { id: 'share-link', readonly: true, value: url, onfocus: (e: Event) => (e.target as HTMLInputElement).select() }), h('button', { type: 'button', onclick: copy(url) }, 'Copy link')),
      h('label', { for: 'share-embed' }, 'Embed in a page'),
      h('div', { class: 'row' }, h('textarea', { id: 'share-embed', readonly: true, rows: '3' }, embed), h('button', { type: 'button', onclick: copy(embed) }, 'Copy code')),
      status,
      h('div', { class: 'row' }, h('button', { type: 'button', class: 'primary', onclick: () => this.shareDialog.close() }, 'Done')),
    );
    this.shareDialog.showModal();
  }

  private renderControls(): void {
    const v = this.view;
    if (!v || this.finished) return;
    const you = v.you;
    const lk = this.lk;
    const onStage = you ? ON_STAGE.has(you.role) : false;
    const canPublish = lk?.localParticipant.permissions?.canPublish ?? false;
    const micOn = lk?.localParticipant.isMicrophoneEnabled ?? false;
    const state = [you?.role, you?.hand_raised, you?.hard_muted, canPublish, micOn, this.deafened, v.kind, Boolean(lk)];
    if (!this.changed('controls', state)) return;
    const focused = document.activeElement?.getAttribute('data-control');
    const ctl = (key: string, label: string, icon: string, onclick: () => void, extra: Record<string, unknown> = {}) =>
      h('button', { type: 'button', class: 'ctl', 'data-control': key, onclick, ...extra }, h('span', { class: 'icon', 'aria-hidden': 'true' }, icon), h('span', { class: 'label' }, label));
    const items: (HTMLElement | null)[] = [];
    if (onStage && lk) {
      items.push(
        you?.hard_muted
          ? ctl('mic', 'Muted by host', '🔇', () => {}, { disabled: true })
          : micOn
            ? ctl('mic', 'Mute', '🎙', () => void this.setMic(false), { class: 'ctl on' })
            : ctl('mic', 'Unmute', '🔇', () => void this.setMic(true)),
      );
    }
    if (you?.role === 'listener' && v.kind === 'stage') {
      items.push(
        you.hand_raised
          ? ctl('hand', 'Lower hand', '✋', () => void this.act(() => api.lowerHand(this.id)), { class: 'ctl on', 'aria-pressed': 'true' })
          : ctl('hand', 'Raise hand', '✋', () => void this.act(() => api.raiseHand(this.id)), { 'aria-pressed': 'false' }),
      );
    }
    if (you?.role === 'speaker') items.push(ctl('step', 'Leave stage', '⬇', () => void this.act(() => api.stepDown(this.id))));
    const reactions = h(
      'div',
      { class: 'reactions', role: 'group', 'aria-label': 'Reactions' },
      REACTIONS.map((emoji) => h('button', { type: 'button', class: 'reaction', 'data-control': `react-${emoji}`, 'aria-label': `React ${emoji}`, onclick: () => void this.react(emoji) }, emoji)),
    );
    items.push(
      ctl('deafen', this.deafened ? 'Undeafen' : 'Deafen', this.deafened ? '🔈' : '🎧', () => this.toggleDeafen(), { 'aria-pressed': String(this.deafened) }),
      ctl('share', 'Share', '🔗', () => this.share(v)),
      ctl('leave', 'Leave', '🚪', () => void this.leave(), { class: 'ctl danger' }),
    );
    fill(this.controls, reactions, h('div', { class: 'buttons' }, items));
    if (focused) this.controls.querySelector<HTMLElement>(`[data-control="${CSS.escape(focused)}"]`)?.focus();
  }

  private async setMic(on: boolean): Promise<void> {
    const lk = this.lk;
    if (!lk) return;
    try {
      if (on) {
        await api.unmute(this.id);
        await lk.localParticipant.setMicrophoneEnabled(true);
      } else {
        await lk.localParticipant.setMicrophoneEnabled(false);
        await api.mute(this.id);
      }
      this.micError.hidden = true;
    } catch (err) {
      if (err instanceof ApiError) this.say(this.notice, err.message);
      else this.say(this.micError, microphoneProblem(err));
    }
    this.renderControls();
    this.renderStage();
    this.scheduleRefresh();
  }

  private toggleDeafen(): void {
    this.deafened = !this.deafened;
    for (const p of this.lk?.remoteParticipants.values() ?? []) this.applyVolume(p);
    this.renderControls();
  }

  private async react(emoji: string): Promise<void> {
    try {
      await api.react(this.id, emoji);
      const me = session();
      if (me) this.showReaction(me.user, emoji);
    } catch (err) {
      this.say(this.notice, err instanceof ApiError && err.status === 429 ? 'Slow down a little: too many reactions.' : errorText(err));
    }
  }

  private showReaction(user: string, emoji: string): void {
    const key = `${user}|${emoji}`;
    const now = Date.now();
    if ((this.recent.get(key) ?? 0) > now - 1500) return;
    this.recent.set(key, now);
    const who = this.name(user);
    const el = h('span', { class: 'float', 'data-user': user, style: `left:${10 + Math.random() * 75}%` }, h('span', { class: 'emoji' }, emoji), h('span', { class: 'from' }, who));
    this.floats.append(el);
    this.announcer.textContent = `${who} reacted ${emoji}`;
    const remove = () => el.remove();
    el.addEventListener('animationend', remove);
    window.setTimeout(remove, 4000);
  }

  private async leave(): Promise<void> {
    this.leaving = true;
    await api.leave(this.id).catch(() => {});
    await this.lk?.disconnect();
    navigate('/');
  }
}
