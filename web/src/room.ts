// The room screen: a scheduled room's card, the live room (stage, audience, controls, host
// tools, reactions) on the unmodified livekit-client, a refusal when the user may not come in,
// or the ended summary. Leaving the screen without leaving the room docks it as a mini-player
// that keeps playing while the user browses.
import {
  ConnectionState,
  DisconnectReason,
  Participant,
  RemoteParticipant,
  RemoteTrack,
  Room,
  RoomEvent,
  Track,
} from 'livekit-client';

import { api, ApiError, session, subscribe, type JoinGrant, type Member, type Role, type RoomView } from './api';
import { Audience } from './audience';
import { fill, formatWhen, h, plural, ROLE_LABEL } from './dom';
import { icon, reactionGlyph, type IconName } from './icons';
import { navigate, type Screen } from './main';
import { Moderation, requestCount } from './moderation';
import { followButton, personAvatar, profileSheet } from './profile';
import { embedSnippet, endedView, errorText } from './screens';
import { CLIP_SECONDS, cutClip } from './replay';
import { dismiss, toast } from './toast';
import { InvitePanel } from './invitations';
import { editDialog, lineUpEditor } from './planning';
import { recurrenceText } from './recurrence';
import { leftElsewhere, MOVE_CHECK_MS, MOVE_CHECKS, noteLeftElsewhere, REJOIN_DELAYS, rejoinReason } from './reconnect';
import { microphoneProblem } from './microphone';

/** The reactions people can send, with the word each stands for. */
export const REACTIONS: [string, string][] = [
  ['👏', 'Applause'],
  ['❤️', 'Love'],
  ['😂', 'Laugh'],
  ['🔥', 'Fire'],
  ['💯', 'Hundred'],
  ['🙌', 'Celebrate'],
];
const ON_STAGE = new Set(['host', 'co_host', 'speaker']);
/** Audio level (0..1, as WebRTC stats report it) above which someone counts as speaking. */
const SPEECH_LEVEL = 0.02;

/** The room kept playing while the user browses other screens, if any. */
let docked: RoomController | null = null;
/** The leave call of the last room left, which the next join waits for (one room at a time). */
let lastLeave: Promise<unknown> = Promise.resolve();

export const roomScreen: Screen = (main, params) => {
  let controller: RoomController;
  if (docked && docked.id === params.id) {
    controller = docked;
    docked = null;
    controller.undock(main);
  } else {
    closeDock();
    controller = new RoomController(main, params.id);
    void controller.open();
  }
  return () => {
    if (controller.live()) {
      docked = controller;
      controller.dock();
    } else controller.destroy();
  };
};

/** Leaves the docked room, if any (signing out, joining another room). */
export function closeDock(): void {
  const d = docked;
  docked = null;
  d?.destroy();
}

declare global {
  interface Window {
    /** The live LiveKit room, for tests and debugging. */
    stoaRoom?: Room;
  }
}

const onStage = (m: Member | null | undefined): boolean => Boolean(m && ON_STAGE.has(m.role));

let chimeContext: AudioContext | null = null;

/** A soft two-note chime for moderators when someone asks to speak. */
function chime(): void {
  try {
    chimeContext ??= new AudioContext();
    const ctx = chimeContext;
    const t = ctx.currentTime;
    [880, 1320].forEach((f, i) => {
      const o = ctx.createOscillator();
      const g = ctx.createGain();
      const at = t + i * 0.12;
      o.frequency.value = f;
      g.gain.setValueAtTime(0.0001, at);
      g.gain.exponentialRampToValueAtTime(0.08, at + 0.02);
      g.gain.exponentialRampToValueAtTime(0.0001, at + 0.35);
      o.connect(g).connect(ctx.destination);
      o.start(at);
      o.stop(at + 0.4);
    });
  } catch {
    // No audio output here: the toast, the badge and the tab title still tell.
  }
}

class RoomController {
  private view: RoomView | null = null;
  private lk: Room | null = null;
  private destroyed = false;
  private leaving = false;
  private finished = false;
  private docked = false;
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
  private countdown: number | undefined;
  private readonly recent = new Map<string, number>();
  private readonly tiles = new Map<string, HTMLElement>();
  private readonly signatures = new Map<string, string>();
  /** Names of everyone seen in the room, for the summary once the room has ended. */
  private readonly names = new Map<string, string>();
  /** The user's own membership and the raised hands as last seen, to tell what changed. */
  private prevYou: Member | null = null;
  private prevHands: Set<string> | null = null;
  /** Changes the user made themselves (until when), so that they raise no "a host did" toast. */
  private readonly expected = new Map<string, number>();
  /** The "you're a speaker, unmute when ready" moment was answered (reset on leaving the stage). */
  private calloutDone = false;
  /** Open the requests queue once the room's screen is back (a toast's Review while docked). */
  private reviewOnMount = false;

  // Parts of the live screen.
  private readonly count = h('p', { class: 'count' });
  /** Shown to everyone while the room is recorded, as the law in many places requires. */
  private readonly recordingBadge = h(
    'span',
    { class: 'badge rec-badge', role: 'status', title: 'This room is being recorded', hidden: true },
    h('span', { class: 'rec-dot', 'aria-hidden': 'true' }),
    'REC',
    h('span', { class: 'visually-hidden' }, ': this room is being recorded'),
  );
  /** Starts and stops the recording (hosts and co-hosts). */
  private readonly recordButton = h('button', { type: 'button', class: 'secondary record-button', hidden: true });
  /** Cuts the last 30 s of the recording (members, while the room is recorded). */
  private readonly clipButton = h('button', { type: 'button', class: 'secondary clip-button', hidden: true }, 'Clip');
  private readonly reconnectText = h('span', { class: 'reconnect-text' }, 'Connection lost. Reconnecting…');
  private readonly reconnecting = h('p', { class: 'banner warn', role: 'status', hidden: true }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), this.reconnectText);
  /** An automatic rejoin is under way (its attempts' own disconnects are not new ones). */
  private rejoining = false;
  /** The user's microphone is open (they unmuted and nobody muted them since): a rejoin opens it again. */
  private micWanted = false;
  /** The media URL of the current connection (the grant's). */
  private mediaUrl = '';
  /** The room whose resumption {@link watchMove} watches. */
  private watching: Room | null = null;
  private readonly tapToListen = h('button', { type: 'button', class: 'banner-button primary', hidden: true }, icon('speaker'), 'Tap to listen');
  private readonly micError = h('p', { class: 'banner error', role: 'alert', hidden: true });
  private readonly notice = h('p', { class: 'banner info', role: 'status', hidden: true });
  private readonly callout = h('section', { class: 'callout', 'aria-labelledby': 'callout-heading', hidden: true });
  private readonly stage = h('ul', { class: 'tiles', 'aria-labelledby': 'stage-heading' });
  private readonly about = h('section', { class: 'about card', 'aria-labelledby': 'about-heading' });
  private readonly controls = h('nav', { class: 'controls', 'aria-label': 'Room controls' });
  private readonly floats = h('div', { class: 'floats', 'aria-hidden': 'true' });
  private readonly announcer = h('p', { class: 'visually-hidden', 'aria-live': 'polite' });
  /** Audio elements live outside the screen, so that the room keeps playing while docked. */
  private readonly sink = h('div', { class: 'audio-sink', hidden: true });
  private readonly dockBar = h('aside', { class: 'dock', 'aria-label': 'Now playing' });
  private readonly shareDialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'share-heading' });
  /** Editing a scheduled room (its host). */
  private readonly editDialog = h('dialog', { class: 'dialog' });
  /** Invitation links (hosts and co-hosts). */
  private readonly invites: InvitePanel;
  private readonly endDialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'end-heading' });
  private readonly profileDialog = h('dialog', { class: 'dialog profile-dialog', 'aria-labelledby': 'profile-heading' });
  private readonly moderation: Moderation;
  private readonly audience: Audience;
  /** Keeps `--controls-h` at the control bar's height, so the page ends above the bar. */
  private readonly barSize = new ResizeObserver(() => {
    const height = this.controls.isConnected ? this.controls.getBoundingClientRect().height : 0;
    document.documentElement.style.setProperty('--controls-h', `${Math.ceil(height)}px`);
  });
  private readonly dockSize = new ResizeObserver(() => {
    const height = this.dockBar.isConnected ? this.dockBar.getBoundingClientRect().height : 0;
    document.documentElement.style.setProperty('--dock-h', `${Math.ceil(height)}px`);
  });

  constructor(
    private main: HTMLElement,
    readonly id: string,
  ) {
    document.body.append(this.sink);
    this.recordButton.addEventListener('click', () => void this.toggleRecording());
    this.clipButton.setAttribute('aria-label', `Clip the last ${CLIP_SECONDS} seconds`);
    this.clipButton.addEventListener('click', async () => {
      this.clipButton.disabled = true;
      await cutClip(this.id, { last_seconds: CLIP_SECONDS }, false);
      this.clipButton.disabled = false;
    });
    this.moderation = new Moderation({
      id,
      act: (f) => this.act(f),
      openEnd: () => this.endDialogOpen(),
      openProfile: (user, name) => this.openProfile(user, name),
    });
    this.audience = new Audience({ id, openProfile: (user, name, role) => this.openProfile(user, name, role) });
    this.invites = new InvitePanel(id);
  }

  /** Whether the user is in the live room (so that leaving the screen docks it). */
  live(): boolean {
    return Boolean(this.lk) && !this.finished && !this.destroyed && !this.leaving;
  }

  async open(): Promise<void> {
    // A fresh start (also for Rejoin): nothing of an earlier session stays subscribed.
    this.events?.close();
    this.events = null;
    clearInterval(this.poll);
    clearInterval(this.countdown);
    if (this.lk) {
      this.leaving = true;
      await this.lk.disconnect();
      this.lk = null;
    }
    this.leaving = false;
    this.finished = false;
    this.tiles.clear();
    this.signatures.clear();
    this.moderation.reset();
    this.prevYou = null;
    this.prevHands = null;
    fill(this.main, h('h1', { tabindex: '-1', class: 'visually-hidden' }, 'Room'), h('p', { class: 'muted', role: 'status' }, 'Loading the room…'));
    try {
      this.view = await api.room(this.id);
    } catch (err) {
      fill(this.main, h('section', { class: 'card notice-card' }, h('h1', { tabindex: '-1' }, 'Room unavailable'), h('p', { class: 'error', role: 'alert' }, errorText(err)), h('a', { href: '/', 'data-link': true, class: 'button' }, 'Back to rooms')));
      return;
    }
    if (this.destroyed) return;
    const v = this.view;
    document.title = `${v.title} · Stoa`;
    if (v.state === 'scheduled') this.scheduled(v);
    else if (v.state === 'live') await this.enter();
    else await this.showEnded();
  }

  destroy(): void {
    this.destroyed = true;
    this.releaseBar();
    this.undockBar();
    this.events?.close();
    clearInterval(this.poll);
    clearInterval(this.meter);
    clearInterval(this.countdown);
    clearTimeout(this.refreshTimer);
    if (this.lk && !this.leaving && !this.finished) {
      this.leaving = true;
      lastLeave = api.leave(this.id).catch(() => {});
    }
    void this.lk?.disconnect();
    this.sink.remove();
    if (window.stoaRoom === this.lk) window.stoaRoom = undefined;
  }

  /** Leaves the screen but not the room: the mini-player takes over. */
  dock(): void {
    this.docked = true;
    this.releaseBar();
    for (const d of [this.shareDialog, this.endDialog, this.profileDialog, this.moderation.requests, this.moderation.confirm, this.editDialog]) if (d.open) d.close();
    document.body.append(this.dockBar);
    this.dockSize.observe(this.dockBar);
    this.renderDock();
  }

  /** Back on the room's screen from the mini-player: the same connection, drawn again. */
  undock(main: HTMLElement): void {
    this.docked = false;
    this.undockBar();
    this.main = main;
    this.signatures.clear();
    this.moderation.reset();
    this.mount();
    this.render();
    this.updatePlayback();
    this.scheduleRefresh();
    if (this.reviewOnMount) {
      this.reviewOnMount = false;
      this.moderation.openRequests();
    }
  }

  /** Shows the requests queue, going back to the room's screen first when docked. */
  private review(): void {
    if (!this.docked) {
      this.moderation.openRequests();
      return;
    }
    this.reviewOnMount = true;
    navigate(`/rooms/${encodeURIComponent(this.id)}`);
  }

  private undockBar(): void {
    this.dockSize.disconnect();
    this.dockBar.remove();
    document.documentElement.style.removeProperty('--dock-h');
  }

  // ----- scheduled -----

  private scheduled(v: RoomView): void {
    const me = session();
    const error = h('p', { class: 'error', role: 'alert' });
    const isHost = me?.user === v.host;
    const remind = h('button', { type: 'button', class: 'small', 'aria-pressed': 'false' });
    const updateRemind = (on: boolean) => {
      remind.setAttribute('aria-pressed', String(on));
      fill(remind, icon(on ? 'bellOn' : 'bell'), 'Remind me', on ? icon('check') : null);
      remind.classList.toggle('toggled', on);
    };
    updateRemind(false);
    // On an occurrence of a recurring room, "Remind me" follows its whole series.
    api.follows().then((f) => updateRemind(f.follows.some((x) => x.kind === 'room' && x.id === (v.series ?? v.id))), () => {});
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
    const start = h('button', { type: 'button', class: 'primary' }, icon('signal'), 'Start now');
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
        h('p', { class: 'badge' }, icon('calendar'), 'Scheduled'),
        h('h1', { id: 'room-title', tabindex: '-1' }, v.title),
        v.topic ? h('p', { class: 'topic' }, v.topic) : null,
        v.host_name ? h('p', { class: 'muted' }, `Hosted by ${v.host_name}`) : null,
        h('p', { class: 'when' }, icon('calendar'), v.scheduled_for ? `Starts ${formatWhen(v.scheduled_for)}` : 'Not scheduled yet'),
        v.schedule?.repeat ? h('p', { class: 'repeat' }, recurrenceText(v.schedule.repeat)) : null,
        v.schedule?.auto_start ? h('p', { class: 'muted small' }, 'Goes live by itself at its time.') : null,
        v.description ? h('p', {}, v.description) : null,
        error,
        h(
          'div',
          { class: 'row' },
          isHost ? start : null,
          isHost
            ? h('button', { type: 'button', class: 'small', onclick: () => editDialog(this.editDialog, v, () => void this.open()) }, icon('calendar'), 'Edit room')
            : null,
          remind,
          isHost || !me ? null : followButton(v.host, v.host_name, (err) => (error.textContent = errorText(err))),
          this.shareButton(v),
        ),
      ),
      // The host lines speakers and co-hosts up before going live with invitation links.
      isHost ? this.invites.el : null,
      isHost ? lineUpEditor(v.id) : null,
      this.shareDialog,
      this.editDialog,
    );
    if (isHost) {
      this.invites.el.hidden = false;
      this.invites.show();
    }
    this.events = subscribe(v.id, (e) => {
      if (e.type === 'room_live' && !this.destroyed) {
        this.events?.close();
        void this.open();
      }
    });
  }

  // ----- refused -----

  /** The user is still in another room: name it, and offer to leave it and join this one. */
  private elsewhere(other: { id: string; title: string }): void {
    const v = this.view as RoomView;
    const error = h('p', { class: 'error', role: 'alert' });
    const otherName = other.title || 'another room';
    const swap = h('button', { type: 'button', class: 'primary', id: 'leave-and-join' }, `Leave “${otherName}” and join`);
    swap.onclick = async () => {
      swap.disabled = true;
      error.textContent = '';
      try {
        // Another page of this browser may hold the other room: tell it that this was a
        // leave, not a removal, so that it does not try to join again.
        try {
          noteLeftElsewhere(other.id);
        } catch {
          // Storage off: the other page then offers to rejoin, as after any removal.
        }
        await api.leave(other.id);
      } catch (err) {
        // Already gone from it (ended, removed): joining may work all the same.
        if (!(err instanceof ApiError && (err.code === 'not_a_member' || err.code === 'not_found' || err.code === 'room_ended'))) {
          swap.disabled = false;
          error.textContent = errorText(err);
          return;
        }
      }
      await this.open();
    };
    const body = [
      h('span', { class: 'refused-icon' }, icon('alert')),
      h('h1', { id: 'refused-heading', tabindex: '-1' }, 'You are in another room'),
      h('p', { class: 'title' }, v.title),
      h(
        'p',
        { id: 'elsewhere-text' },
        'You can be in one room at a time, and you are still in ',
        h('a', { href: `/rooms/${encodeURIComponent(other.id)}`, 'data-link': true }, otherName),
        '. Leave it to join this one?',
      ),
      error,
    ];
    const actions = h('div', { class: 'row' }, swap, h('a', { href: '/', 'data-link': true, class: 'button' }, 'Back to rooms'));
    this.finished = true;
    fill(this.main, h('section', { class: 'card refused', 'aria-labelledby': 'refused-heading' }, body, actions));
    if (!this.docked) this.main.querySelector<HTMLElement>('h1')?.focus();
  }

  /** Why the user cannot come in, as a screen of its own: never the live room. */
  private async refused(err: unknown): Promise<void> {
    const v = this.view as RoomView;
    if (err instanceof ApiError && err.status === 409 && (err.code === 'room_ended' || err.code === 'room_not_live')) {
      await this.open();
      return;
    }
    if (err instanceof ApiError && err.code === 'already_in_room' && err.room) {
      this.elsewhere(err.room);
      return;
    }
    const kicked = err instanceof ApiError && err.code === 'kicked';
    const banned = err instanceof ApiError && err.code === 'banned';
    const actions = h('div', { class: 'row' });
    const back = h('a', { href: '/', 'data-link': true, class: 'button' }, 'Back to rooms');
    let body: (HTMLElement | null)[];
    if (kicked || banned) {
      const rejoin = h('button', { type: 'button', class: 'primary', onclick: () => void this.open() }, 'Rejoin');
      const timer = h('p', { class: 'countdown', role: 'timer' });
      if (kicked) {
        const until = Date.now() + ((err as ApiError).retryAfter ?? 0) * 1000;
        const tick = () => {
          const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
          rejoin.disabled = left > 0;
          timer.textContent = left > 0 ? `You can rejoin in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')}` : 'You can rejoin now.';
          if (left === 0) clearInterval(this.countdown);
        };
        tick();
        clearInterval(this.countdown);
        this.countdown = window.setInterval(tick, 1000);
      }
      body = [
        h('span', { class: 'refused-icon' }, icon(banned ? 'ban' : 'clock')),
        h('h1', { id: 'refused-heading', tabindex: '-1' }, banned ? 'You cannot join this room' : 'You were removed from this room'),
        h('p', { class: 'title' }, v.title),
        h('p', {}, banned ? 'A host banned you from this room. You can find other rooms in the directory.' : 'A host removed you from this room for a few minutes.'),
        kicked ? timer : null,
      ];
      fill(actions, kicked ? rejoin : null, back);
    } else {
      body = [
        h('span', { class: 'refused-icon' }, icon('alert')),
        h('h1', { id: 'refused-heading', tabindex: '-1' }, 'You cannot join this room right now'),
        h('p', { class: 'title' }, v.title),
        h('p', { role: 'alert' }, errorText(err)),
      ];
      fill(actions, h('button', { type: 'button', class: 'primary', onclick: () => void this.open() }, 'Try again'), back);
    }
    this.finished = true;
    fill(this.main, h('section', { class: 'card refused', 'aria-labelledby': 'refused-heading' }, body, actions));
    if (!this.docked) this.main.querySelector<HTMLElement>('h1')?.focus();
  }

  // ----- live -----

  private async enter(): Promise<void> {
    let grant: JoinGrant;
    try {
      await lastLeave;
      grant = await api.join(this.id);
    } catch (err) {
      await this.refused(err);
      return;
    }
    if (this.destroyed) {
      // Left before the room came up: give the place back.
      lastLeave = api.leave(this.id).catch(() => {});
      return;
    }
    this.tapToListen.onclick = () => void this.lk?.startAudio().then(() => this.updatePlayback());
    fill(this.stage);
    this.mount();
    this.render();
    this.events = subscribe(this.id, (e) => {
      if (e.type === 'room_ended') void this.showEnded();
      else if (e.type === 'reaction' && e.user && e.emoji) this.showReaction(e.user, e.emoji);
      else if (e.type === 'idle' && e.user === session()?.user) {
        toast(e.moved ? 'You were quiet for a while, so you are back in the audience. Raise a hand to speak again.' : 'You were quiet for a while, so your microphone was muted. Unmute when you want to speak.', {
          icon: e.moved ? 'leave' : 'micOff',
        });
        this.scheduleRefresh();
      }
      else this.scheduleRefresh();
    });
    this.poll = window.setInterval(() => this.scheduleRefresh(), 4000);
    this.awayReported = false;
    document.addEventListener('visibilitychange', this.onVisibility);
    await this.connect(grant);
    this.onVisibility();
  }

  /** Draws the live room's frame into the screen; its parts fill themselves. */
  private mount(): void {
    const v = this.view as RoomView;
    fill(
      this.main,
      h(
        'section',
        { class: 'room', 'aria-labelledby': 'room-title' },
        h(
          'header',
          { class: 'room-head' },
          h(
            'div',
            { class: 'room-badges' },
            h('span', { class: 'badge live-badge' }, h('span', { class: 'pulse', 'aria-hidden': 'true' }), 'LIVE'),
            this.recordingBadge,
            this.recordButton,
            this.clipButton,
          ),
          h('h1', { id: 'room-title', tabindex: '-1' }, v.title),
          v.topic ? h('p', { class: 'topic' }, v.topic) : null,
          this.count,
        ),
        h('div', { class: 'banners' }, this.reconnecting, this.tapToListen, this.micError, this.notice),
        h(
          'div',
          { class: 'room-body' },
          h(
            'div',
            { class: 'room-main' },
            this.callout,
            h('section', { class: 'stage', 'aria-labelledby': 'stage-heading' }, h('h2', { id: 'stage-heading' }, 'On stage'), this.stage),
            h('section', { class: 'audience-section', 'aria-labelledby': 'audience-heading' }, h('h2', { id: 'audience-heading' }, 'Audience'), this.audience.el),
            this.invites.el,
          ),
          h('div', { class: 'room-side' }, this.moderation.panel, this.about),
        ),
      ),
      this.controls,
      this.floats,
      this.announcer,
      this.shareDialog,
      this.endDialog,
      this.profileDialog,
      this.moderation.requests,
      this.moderation.confirm,
    );
    this.barSize.observe(this.controls);
  }

  /** Connects to the room's media with `grant`; `quiet`: a failure throws (a rejoin attempt) instead of offering Rejoin. */
  private async connect(grant: JoinGrant, quiet = false): Promise<void> {
    const lk = new Room({ adaptiveStream: false, dynacast: false });
    this.lk = lk;
    this.mediaUrl = grant.url;
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
        this.renderDock();
      })
      .on(RoomEvent.ParticipantPermissionsChanged, (prev: { canPublish?: boolean } | undefined, p: Participant) => {
        if (p === lk.localParticipant) {
          const now = p.permissions?.canPublish ?? false;
          // Nothing opens the microphone but the user: coming on stage shows the moment to unmute.
          if (now && !prev?.canPublish) this.calloutDone = false;
          if (!now) this.micError.hidden = true;
        }
        this.render();
        this.scheduleRefresh();
      })
      .on(RoomEvent.RecordingStatusChanged, (on: boolean) => {
        this.announcer.textContent = on ? 'This room is now being recorded' : 'The recording has stopped';
        this.render();
      })
      .on(RoomEvent.ParticipantAttributesChanged, () => this.scheduleRefresh())
      .on(RoomEvent.ParticipantConnected, () => this.scheduleRefresh())
      .on(RoomEvent.ParticipantDisconnected, () => this.scheduleRefresh())
      .on(RoomEvent.TrackMuted, (_pub, p: Participant) => {
        // Muted by a host or for being quiet: a rejoin does not open the microphone again (a
        // room given up, whose tracks stop, says nothing).
        if (p === lk.localParticipant && this.lk === lk) this.micWanted = false;
        this.afterTrackChange();
      })
      .on(RoomEvent.TrackUnmuted, () => this.afterTrackChange())
      .on(RoomEvent.TrackPublished, () => this.afterTrackChange())
      .on(RoomEvent.TrackUnpublished, () => this.afterTrackChange())
      .on(RoomEvent.LocalTrackPublished, () => this.afterTrackChange())
      .on(RoomEvent.LocalTrackUnpublished, () => this.afterTrackChange())
      .on(RoomEvent.DataReceived, (payload: Uint8Array, from?: RemoteParticipant, _k?: unknown, topic?: string) => {
        if (topic !== 'stoa.reaction') return;
        // Who reacted is the sender the server stamped on the packet (clients cannot send on
        // this topic); a name inside the payload is never trusted.
        if (!from) return;
        try {
          const r = JSON.parse(new TextDecoder().decode(payload)) as { emoji?: string };
          if (r.emoji) this.showReaction(from.identity, r.emoji);
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
      .on(RoomEvent.Disconnected, (reason?: DisconnectReason) => {
        // A room given up (an attempt that failed, or one replaced) says nothing any more.
        if (this.lk === lk) void this.disconnected(reason);
      });
    try {
      await lk.connect(grant.url, grant.token, { autoSubscribe: true });
    } catch (err) {
      if (this.lk === lk) this.lk = null;
      if (quiet) throw err;
      this.say(this.notice, `Could not connect to the room. ${errorText(err)}`);
      this.renderRejoin();
      return;
    }
    // Speakers the server named before the room counted as connected raised no event.
    this.speaking.clear();
    for (const p of lk.activeSpeakers) this.speaking.add(p.identity);
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
    this.renderDock();
  }

  /** Shows the reconnect banner; nobody counts as speaking until audio flows again. */
  private connectionLost(): void {
    this.reconnectText.textContent = 'Connection lost. Reconnecting…';
    this.reconnecting.hidden = false;
    this.speaking.clear();
    this.heard.clear();
    this.renderStage();
    void this.watchMove(this.lk);
  }

  /**
   * While `lk` tries to resume at its node, asks the API every {@link MOVE_CHECK_MS} where the
   * room's media is now. When the answer names another node (this one died, or the room moved
   * meanwhile), resuming cannot work: the page gives the session up and rejoins there at once,
   * instead of waiting out the SDK's attempts. The same node: the SDK goes on (a network blip
   * resumes the same session).
   */
  private async watchMove(lk: Room | null): Promise<void> {
    if (!lk || this.watching === lk) return;
    this.watching = lk;
    const resuming = () => this.lk === lk && lk.state !== ConnectionState.Connected && lk.state !== ConnectionState.Disconnected && !this.rejoining && !this.destroyed && !this.leaving && !this.finished;
    try {
      for (let i = 0; i < MOVE_CHECKS; i++) {
        await new Promise((done) => window.setTimeout(done, MOVE_CHECK_MS));
        if (!resuming()) return;
        let grant: JoinGrant;
        try {
          grant = await api.join(this.id);
        } catch {
          continue;
        }
        if (!resuming() || grant.url === this.mediaUrl) continue;
        // Given up: its own Disconnected is no news any more.
        this.lk = null;
        void lk.disconnect();
        if (!(await this.rejoin(undefined, grant))) this.lostForGood();
        return;
      }
    } finally {
      if (this.watching === lk) this.watching = null;
    }
  }

  private afterTrackChange(): void {
    this.renderControls();
    this.renderStage();
    this.renderCallout();
    this.renderDock();
    this.scheduleRefresh();
  }

  private updatePlayback(): void {
    this.tapToListen.hidden = !this.lk || this.lk.canPlaybackAudio;
  }

  private async disconnected(reason?: DisconnectReason): Promise<void> {
    if (this.destroyed || this.leaving || this.finished || this.rejoining) return;
    for (const el of this.sink.querySelectorAll('audio')) el.remove();
    const v = await api.room(this.id).catch(() => null);
    if (v && v.state !== 'live') {
      this.view = v;
      await this.showEnded();
      return;
    }
    if (reason === DisconnectReason.PARTICIPANT_REMOVED) {
      this.stop();
      if (leftElsewhere(this.id)) {
        if (this.docked) {
          closeDock();
          return;
        }
        this.finished = true;
        fill(
          this.main,
          h(
            'section',
            { class: 'card refused', 'aria-labelledby': 'refused-heading' },
            h('span', { class: 'refused-icon' }, icon('leave')),
            h('h1', { id: 'refused-heading', tabindex: '-1' }, 'You left this room'),
            h('p', { class: 'title' }, this.view?.title ?? ''),
            h('p', {}, 'You left it from another page to join another room.'),
            h('div', { class: 'row' }, h('a', { href: '/', 'data-link': true, class: 'button' }, 'Back to rooms')),
          ),
        );
        return;
      }
      if (this.docked) {
        toast(`A host removed you from “${this.view?.title ?? 'the room'}”.`, { icon: 'leave', tone: 'warn' });
        closeDock();
        return;
      }
      // Opening again asks to join, which the server refuses with the reason and how long.
      await this.open();
      return;
    }
    // Signed in on another page, or the room closed: no coming back by itself.
    const deliberate = reason === DisconnectReason.DUPLICATE_IDENTITY || reason === DisconnectReason.ROOM_DELETED || reason === DisconnectReason.ROOM_CLOSED;
    if (!deliberate && (await this.rejoin(reason))) return;
    this.lostForGood();
  }

  /** Out of the room for good (no rejoin, or every attempt failed): a Rejoin button, or when docked a toast. */
  private lostForGood(): void {
    if (this.destroyed || this.leaving || this.finished) return;
    if (this.docked) {
      toast(`You were disconnected from “${this.view?.title ?? 'the room'}”.`, { icon: 'alert', tone: 'warn' });
      this.stop();
      lastLeave = api.leave(this.id).catch(() => {});
      closeDock();
      return;
    }
    this.say(this.notice, 'You were disconnected from the room.');
    this.renderRejoin();
  }

  /**
   * Comes back by itself after an unexpected disconnect: a fresh token from the API (which
   * may name another node: the one this page was on drains or died), then the media
   * connection, up to {@link REJOIN_DELAYS} attempts with growing, jittered delays, the banner
   * saying so meanwhile (`first`: a grant already fetched, for the first attempt). A refusal by the API (removed, banned, the room ended) ends the tries
   * and says why as on entering. Whether the page is back in the room.
   */
  private async rejoin(reason?: DisconnectReason, first?: JoinGrant): Promise<boolean> {
    this.rejoining = true;
    this.lk = null;
    this.speaking.clear();
    this.heard.clear();
    this.renderStage();
    const why = rejoinReason(reason);
    this.reconnectText.textContent = why;
    this.reconnecting.hidden = false;
    try {
      for (const [attempt, delay] of REJOIN_DELAYS.entries()) {
        if (attempt > 0) this.reconnectText.textContent = `${why} (attempt ${attempt + 1} of ${REJOIN_DELAYS.length})`;
        await new Promise((done) => window.setTimeout(done, delay * (1 + Math.random() / 2)));
        if (this.destroyed || this.leaving || this.finished) return true;
        let grant: JoinGrant;
        try {
          grant = attempt === 0 && first ? first : await api.join(this.id);
        } catch (err) {
          // The server answered and said no: not a passing failure.
          if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 408 && err.status !== 429) {
            this.reconnecting.hidden = true;
            this.stop();
            if (this.docked) {
              toast(errorText(err), { icon: 'alert', tone: 'warn' });
              closeDock();
              return true;
            }
            this.finished = false;
            await this.refused(err);
            return true;
          }
          continue;
        }
        try {
          await this.connect(grant, true);
        } catch {
          continue;
        }
        if (this.destroyed || this.leaving || this.finished) return true;
        this.reconnecting.hidden = true;
        const lk = this.lk as Room | null;
        if (this.micWanted && lk?.localParticipant.permissions?.canPublish) await this.setMic(true);
        this.announcer.textContent = 'Reconnected to the room';
        return true;
      }
      this.reconnecting.hidden = true;
      return false;
    } finally {
      this.rejoining = false;
    }
  }

  private renderRejoin(): void {
    this.lk = null;
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

  /** Tells the server when the page is hidden or shown again (away), once per change. */
  private readonly onVisibility = (): void => {
    if (this.destroyed || this.finished || this.leaving) return;
    const away = document.visibilityState === 'hidden';
    if (away === this.awayReported) return;
    this.awayReported = away;
    api.presence(this.id, { away }).catch(() => {
      this.awayReported = null;
    });
  };
  private awayReported: boolean | null = null;

  private stop(): void {
    document.removeEventListener('visibilitychange', this.onVisibility);
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
    if (this.docked) {
      toast(`“${this.view?.title ?? 'The room'}” has ended.`, { icon: 'stop' });
      closeDock();
      return;
    }
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
    this.noticeChanges(v);
    this.render();
  }

  /** Whether the user made change `key` themselves within the last few seconds (and forgets it). */
  private mine(key: string): boolean {
    const until = this.expected.get(key) ?? 0;
    this.expected.delete(key);
    return until > Date.now();
  }

  private expect(key: string): void {
    this.expected.set(key, Date.now() + 10_000);
  }

  /** Tells the user what others did to them, and moderators who asks to speak. */
  private noticeChanges(v: RoomView): void {
    const prev = this.prevYou;
    const next = v.you;
    this.prevYou = next;
    if (prev && next) {
      if (!onStage(prev) && onStage(next)) {
        this.calloutDone = false;
        toast(v.kind === 'open' ? 'You can speak. Unmute when you are ready.' : 'You are on stage. Unmute when you are ready.', { icon: 'mic', tone: 'ok', key: 'role' });
      } else if (onStage(prev) && !onStage(next) && !this.mine('step')) {
        toast('A host moved you to the audience.', { icon: 'users', tone: 'warn', key: 'role' });
      } else if (onStage(prev) && onStage(next)) {
        if (!prev.hard_muted && next.hard_muted) toast('A host turned off your microphone.', { icon: 'micOff', tone: 'warn', key: 'mic' });
        else if (prev.hard_muted && !next.hard_muted) toast('A host gave your microphone back. Unmute when you are ready.', { icon: 'mic', tone: 'ok', key: 'mic' });
        else if (!prev.muted && next.muted && !this.mine('mute')) toast('A host muted you. Unmute when you want to speak again.', { icon: 'micOff', tone: 'warn', key: 'mic' });
        if (prev.role !== next.role && next.role === 'co_host') toast('You are now a co-host.', { icon: 'star', tone: 'ok' });
      }
      if (prev.hand_raised && !next.hand_raised && !onStage(next) && !this.mine('lower')) {
        toast('A host lowered your hand.', { icon: 'hand', key: 'hand' });
      }
    }
    const hands = v.hands;
    if (hands) {
      const seen = this.prevHands;
      this.prevHands = new Set(hands.map((x) => x.user));
      // A hand approved, denied or lowered: its toast has nothing left to review.
      for (const user of seen ?? []) if (!this.prevHands.has(user)) dismiss(`hand-${user}`);
      if (seen && !this.deafened && hands.some((x) => !seen.has(x.user))) chime();
      for (const x of hands) {
        if (seen && !seen.has(x.user)) {
          toast(`${x.name} raised a hand`, { icon: 'hand', key: `hand-${x.user}`, action: { label: 'Review', run: () => this.review() } });
          this.announcer.textContent = `${x.name} asks to speak`;
        }
      }
    } else this.prevHands = null;
  }

  /** Runs a call that answers with the room, and shows its error if it fails. */
  private async act(f: () => Promise<RoomView | void>): Promise<boolean> {
    try {
      const v = await f();
      if (v) this.apply(v);
      this.notice.hidden = true;
      return true;
    } catch (err) {
      this.say(this.notice, errorText(err));
      toast(errorText(err), { icon: 'alert', tone: 'warn', key: 'error' });
      return false;
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
    return p?.name || this.names.get(user) || 'Someone';
  }

  /** Whether `m` is muted as everyone hears it: by the server's record or by their own track. */
  private isMuted(m: Member): boolean {
    if (m.muted || m.hard_muted) return true;
    const lk = this.lk;
    if (!lk) return true;
    if (m.user === lk.localParticipant.identity) return !lk.localParticipant.isMicrophoneEnabled;
    const p = lk.remoteParticipants.get(m.user);
    return !p || !p.isMicrophoneEnabled;
  }

  // ----- rendering -----

  private render(): void {
    const v = this.view;
    if (!v || this.finished) return;
    // The view lists at most the first 100 on stage; the counts cover the whole room.
    const stage = Math.max(0, v.present - v.listeners);
    this.count.textContent = `${plural(v.present, 'person', 'people')} here · ${stage} on stage · ${v.listeners} listening`;
    const waiting = requestCount(v);
    if (!this.docked) document.title = `${waiting && this.moderates() ? `(${waiting}) ` : ''}${v.title} · Stoa`;
    this.renderStage();
    this.renderCallout();
    this.renderAudience();
    this.renderSide();
    this.renderControls();
    this.renderDock();
    this.renderRecording();
  }

  /** Whether the room is recorded: the media room says so to every SDK (LiveKit's
   * `Room.activeRecording`); the API's view says so before the connection is up. */
  private recording(): boolean {
    return this.lk?.state === 'connected' ? this.lk.isRecording : Boolean(this.view?.recording);
  }

  private renderRecording(): void {
    const on = this.recording();
    this.recordingBadge.hidden = !on;
    this.recordButton.hidden = !this.moderates();
    this.recordButton.textContent = on ? 'Stop recording' : 'Record';
    this.recordButton.setAttribute('aria-pressed', String(on));
    this.clipButton.hidden = !on || !this.view?.you;
  }

  private async toggleRecording(): Promise<void> {
    const on = !this.recording();
    this.recordButton.disabled = true;
    try {
      this.view = await api.record(this.id, on);
      this.render();
    } catch (e) {
      this.say(this.notice, e instanceof Error ? e.message : String(e));
    } finally {
      this.recordButton.disabled = false;
    }
  }

  private moderates(): boolean {
    const r = this.view?.you?.role;
    return r === 'host' || r === 'co_host';
  }

  private renderCallout(): void {
    const v = this.view;
    const you = v?.you;
    const lk = this.lk;
    const canPublish = lk?.localParticipant.permissions?.canPublish ?? false;
    const micOn = lk?.localParticipant.isMicrophoneEnabled ?? false;
    if (micOn) this.calloutDone = true;
    const show = Boolean(v && you && lk && onStage(you) && canPublish && !micOn && !you.hard_muted && !this.calloutDone);
    this.callout.hidden = !show;
    if (!show || !v || !you) return;
    if (!this.changed('callout', [you.role, v.kind])) return;
    const host = you.role === 'host';
    fill(
      this.callout,
      h('span', { class: 'callout-icon' }, icon('micOff')),
      h(
        'div',
        { class: 'callout-text' },
        h('h2', { id: 'callout-heading' }, host ? 'You are live, with your microphone off' : v.kind === 'open' ? 'You can speak in this room' : 'You are a speaker now'),
        h('p', {}, 'Your microphone stays off until you turn it on. Unmute when you are ready: everyone in the room will hear you.'),
      ),
      h('button', { type: 'button', class: 'primary', onclick: () => void this.setMic(true) }, icon('mic'), 'Unmute microphone'),
    );
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
      const muted = this.isMuted(m);
      const speaking = (this.speaking.has(m.user) || this.heard.has(m.user)) && !muted;
      tile.classList.toggle('speaking', speaking);
      tile.classList.toggle('away', !m.present);
      tile.classList.toggle('mic-off', muted);
      const badge = tile.querySelector('.mute-badge') as HTMLElement;
      badge.hidden = !muted;
      badge.title = m.hard_muted ? 'Microphone turned off by a host' : 'Muted';
      (tile.querySelector('.role') as HTMLElement).textContent = `${ROLE_LABEL[m.role] ?? m.role}${m.deafened ? ' · deafened' : ''}`;
      // Read after the visible name and role, so that the button's name starts with what shows.
      const state = tile.querySelector('.state') as HTMLElement;
      state.textContent = `${m.hard_muted ? ', microphone off by a host' : muted ? ', muted' : ''}${speaking ? ', speaking' : ''}`;
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
    const av = personAvatar(m.user, m.name, 'large');
    av.append(h('span', { class: 'mute-badge', hidden: true }, icon('micOff')));
    return h(
      'li',
      { class: 'tile', 'data-user': m.user },
      h(
        'button',
        { type: 'button', class: 'who', onclick: () => this.openProfile(m.user, m.name) },
        av,
        h('span', { class: 'name' }, m.name, mine ? h('span', { class: 'you' }, ' (you)') : null),
        h('span', { class: 'role' }, ROLE_LABEL[m.role]),
        h('span', { class: 'state visually-hidden' }),
      ),
      volume,
    );
  }

  /** Opens `user`'s profile sheet; `role` is what the list they were tapped in says. */
  private openProfile(user: string, name: string, role?: Role): void {
    const v = this.view;
    const m = v?.stage.find((x) => x.user === user) ?? v?.audience?.find((x) => x.user === user) ?? null;
    profileSheet(this.profileDialog, { user, name, role: m?.role ?? role ?? null, host: v?.host === user });
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
    if (this.view) this.audience.update(this.view);
  }

  private renderSide(): void {
    const v = this.view;
    const me = session()?.user ?? '';
    if (!v) return;
    const moderator = this.moderates();
    this.moderation.panel.hidden = !moderator;
    this.invites.el.hidden = !moderator;
    if (moderator) this.invites.show();
    this.about.hidden = moderator;
    if (moderator) this.moderation.render(v, me);
    else if (this.changed('about', [v.title, v.description, v.host_name, v.kind, v.you?.role])) {
      const listening = !onStage(v.you);
      fill(
        this.about,
        h('h2', { id: 'about-heading' }, 'About this room'),
        v.host_name ? h('p', { class: 'muted' }, `Hosted by ${v.host_name}`) : null,
        v.description ? h('p', {}, v.description) : null,
        listening
          ? h('p', { class: 'muted small' }, v.kind === 'stage' ? 'Raise your hand to ask to speak; a host brings you on stage with your microphone off.' : 'Everyone may speak here; your microphone stays off until you unmute.')
          : null,
      );
    }
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
      h('div', { class: 'row end' }, h('button', { type: 'button', onclick: () => this.endDialog.close() }, 'Cancel'), confirm),
    );
    this.endDialog.showModal();
  }

  private shareButton(v: RoomView): HTMLElement {
    return h('button', { type: 'button', class: 'small', onclick: () => this.share(v) }, icon('share'), 'Share');
  }

  /** The system share sheet on phones; elsewhere a dialog with the link and the embed code. */
  private share(v: RoomView): void {
    const url = `${location.origin}/rooms/${encodeURIComponent(v.id)}`;
    const data = { title: v.title, text: v.state === 'live' ? `Listen live: ${v.title}` : v.title, url };
    if (typeof navigator.share === 'function' && matchMedia('(pointer: coarse)').matches && (navigator.canShare?.(data) ?? true)) {
      navigator.share(data).catch(() => {});
      return;
    }
    const embed = embedSnippet(v.id, v.title);
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
      h('h2', { id: 'share-heading' }, icon('share'), 'Share this room'),
      h('label', { for: 'share-link' }, 'Link'),
      h('div', { class: 'row' }, h('input', { id: 'share-link', readonly: true, value: url, onfocus: (e: Event) => (e.target as HTMLInputElement).select() }), h('button', { type: 'button', onclick: copy(url) }, icon('copy'), 'Copy link')),
      h('label', { for: 'share-embed' }, 'Embed in a page'),
      h('div', { class: 'row' }, h('textarea', { id: 'share-embed', readonly: true, rows: '4' }, embed), h('button', { type: 'button', onclick: copy(embed) }, icon('copy'), 'Copy code')),
      status,
      h('div', { class: 'row end' }, h('button', { type: 'button', class: 'primary', onclick: () => this.shareDialog.close() }, 'Done')),
    );
    this.shareDialog.showModal();
  }

  private renderControls(): void {
    const v = this.view;
    if (!v || this.finished) return;
    const you = v.you;
    const lk = this.lk;
    const stage = onStage(you);
    const canPublish = lk?.localParticipant.permissions?.canPublish ?? false;
    const micOn = lk?.localParticipant.isMicrophoneEnabled ?? false;
    const waiting = requestCount(v);
    const moderator = this.moderates();
    const state = [you?.role, you?.hand_raised, you?.hard_muted, canPublish, micOn, this.deafened, v.kind, Boolean(lk), moderator, waiting];
    if (!this.changed('controls', state)) return;
    const focused = document.activeElement?.getAttribute('data-control');
    const ctl = (key: string, label: string, glyph: IconName, onclick: () => void, extra: Record<string, unknown> = {}, more?: (HTMLElement | null)[]) =>
      h('button', { type: 'button', class: 'ctl', 'data-control': key, onclick, ...extra }, h('span', { class: 'ctl-icon' }, icon(glyph)), h('span', { class: 'label' }, label), more);
    // What the room hears from the user, always in view.
    const me = !stage
      ? h('p', { class: 'me-state listening' }, icon('headphones'), you?.hand_raised ? 'Hand raised' : 'Listening')
      : you?.hard_muted
        ? h('p', { class: 'me-state off' }, icon('micOff'), 'Mic off by host')
        : micOn
          ? h('p', { class: 'me-state on' }, icon('mic'), 'Your mic is on')
          : h('p', { class: 'me-state off' }, icon('micOff'), 'You are muted');
    const items: (HTMLElement | null)[] = [];
    if (stage && lk && canPublish) {
      items.push(micOn ? ctl('mic', 'Mute', 'mic', () => void this.setMic(false), { class: 'ctl on' }) : ctl('mic', 'Unmute', 'micOff', () => void this.setMic(true), { class: 'ctl off' }));
    } else if (stage && you?.hard_muted) {
      items.push(ctl('mic', 'Mic off', 'micOff', () => {}, { disabled: true }));
    }
    if (you?.role === 'listener' && v.kind === 'stage') {
      items.push(
        you.hand_raised
          ? ctl('hand', 'Lower hand', 'hand', () => { this.expect('lower'); void this.act(() => api.lowerHand(this.id)); }, { class: 'ctl on', 'aria-pressed': 'true' })
          : ctl('hand', 'Raise hand', 'hand', () => void this.act(() => api.raiseHand(this.id)), { 'aria-pressed': 'false' }),
      );
    }
    if (moderator && v.kind === 'stage') {
      // Named "Requests to speak, n waiting": the words read out start with the ones that show.
      const more = [h('span', { class: 'visually-hidden' }, ` to speak, ${waiting} waiting`), waiting ? h('span', { class: 'badge-dot', 'aria-hidden': 'true' }, String(waiting)) : null];
      items.push(ctl('requests', 'Requests', 'hand', () => this.moderation.openRequests(), { class: waiting ? 'ctl alert' : 'ctl' }, more));
    }
    if (you?.role === 'speaker') items.push(ctl('step', 'Leave stage', 'down', () => { this.expect('step'); void this.act(() => api.stepDown(this.id)); }));
    const reactions = h(
      'div',
      { class: 'reactions', role: 'group', 'aria-label': 'Reactions' },
      REACTIONS.map(([emoji, word]) =>
        h('button', { type: 'button', class: 'reaction', 'data-control': `react-${word}`, 'aria-label': `React: ${word}`, title: word, onclick: () => void this.react(emoji) }, reactionGlyph(word) ?? h('span', { class: 'emoji', 'aria-hidden': 'true' }, emoji)),
      ),
    );
    const rest = [
      ctl('deafen', 'Deafen', this.deafened ? 'headphonesOff' : 'headphones', () => this.toggleDeafen(), { 'aria-pressed': String(this.deafened), class: this.deafened ? 'ctl off' : 'ctl' }),
      ctl('share', 'Share', 'share', () => this.share(v)),
      ctl('leave', 'Leave', 'leave', () => void this.leave(), { class: 'ctl danger' }),
    ];
    // On phones the reactions fold behind one button, so that the bar keeps to two short rows.
    const open = this.controls.classList.contains('reacting');
    const toggle = h(
      'button',
      {
        type: 'button',
        class: 'small react-toggle',
        'data-control': 'react-toggle',
        'aria-expanded': String(open),
        onclick: () => {
          const now = this.controls.classList.toggle('reacting');
          toggle.setAttribute('aria-expanded', String(now));
        },
      },
      icon('smile'),
      'React',
    );
    fill(this.controls, me, toggle, h('div', { class: 'actions' }, h('div', { class: 'buttons primary-actions' }, items), h('div', { class: 'buttons secondary-actions' }, rest)), reactions);
    if (focused) this.controls.querySelector<HTMLElement>(`[data-control="${CSS.escape(focused)}"]`)?.focus();
  }

  /** The mini-player: which room plays, who speaks, the user's mic, a way back and out. */
  private renderDock(): void {
    if (!this.docked) return;
    const v = this.view;
    const lk = this.lk;
    if (!v || !lk) return;
    const speaking = v.stage.filter((m) => (this.speaking.has(m.user) || this.heard.has(m.user)) && !this.isMuted(m)).map((m) => m.name);
    const stage = onStage(v.you);
    const canPublish = lk.localParticipant.permissions?.canPublish ?? false;
    const micOn = lk.localParticipant.isMicrophoneEnabled;
    if (!this.changed('dock', [v.title, speaking, stage, canPublish, micOn, v.listeners, v.present])) return;
    const onStageCount = Math.max(0, v.present - v.listeners);
    fill(
      this.dockBar,
      h(
        'button',
        { type: 'button', class: 'dock-open', onclick: () => navigate(`/rooms/${encodeURIComponent(this.id)}`) },
        h('span', { class: 'visually-hidden' }, 'Back to the room: '),
        h('span', { class: 'badge live-badge' }, h('span', { class: 'pulse', 'aria-hidden': 'true' }), 'LIVE'),
        h(
          'span',
          { class: 'dock-text' },
          h('span', { class: 'dock-title' }, v.title),
          h('span', { class: 'dock-sub' }, speaking.length ? `${speaking.join(', ')} speaking` : `${onStageCount} on stage · ${v.listeners} listening`),
        ),
        icon('open'),
      ),
      stage && canPublish
        ? h('button', { type: 'button', class: micOn ? 'dock-mic on' : 'dock-mic', 'aria-label': micOn ? 'Mute' : 'Unmute', onclick: () => void this.setMic(!micOn) }, icon(micOn ? 'mic' : 'micOff'))
        : null,
      h('button', { type: 'button', class: 'dock-leave', 'aria-label': `Leave ${v.title}`, onclick: () => void this.leave(false) }, icon('x')),
    );
  }

  private async setMic(on: boolean): Promise<void> {
    const lk = this.lk;
    if (!lk) return;
    if (on) {
      try {
        await api.unmute(this.id);
      } catch (err) {
        this.say(this.notice, errorText(err));
        return;
      }
      try {
        await lk.localParticipant.setMicrophoneEnabled(true);
        this.micWanted = true;
        this.micError.hidden = true;
        this.calloutDone = true;
      } catch (err) {
        this.say(this.micError, microphoneProblem(err));
        // The room must not show a microphone as open that is not.
        await api.mute(this.id).catch(() => {});
      }
    } else {
      this.expect('mute');
      this.micWanted = false;
      try {
        await lk.localParticipant.setMicrophoneEnabled(false);
        await api.mute(this.id);
      } catch (err) {
        this.say(this.notice, errorText(err));
      }
    }
    this.afterTrackChange();
  }

  private toggleDeafen(): void {
    this.deafened = !this.deafened;
    for (const p of this.lk?.remoteParticipants.values() ?? []) this.applyVolume(p);
    this.renderControls();
    // Others see it too (the server keeps it with the membership).
    api.presence(this.id, { deafened: this.deafened }).catch((err) => this.say(this.notice, errorText(err)));
  }

  private async react(emoji: string): Promise<void> {
    try {
      await api.react(this.id, emoji);
      const me = session();
      if (me) this.showReaction(me.user, emoji);
    } catch (err) {
      this.say(this.notice, errorText(err));
    }
  }

  private showReaction(user: string, emoji: string): void {
    if (this.docked) return;
    const key = `${user}|${emoji}`;
    const now = Date.now();
    if ((this.recent.get(key) ?? 0) > now - 1500) return;
    this.recent.set(key, now);
    const who = this.name(user);
    const word = REACTIONS.find(([e]) => e === emoji)?.[1] ?? emoji;
    const el = h('span', { class: 'float', 'data-user': user, 'data-reaction': word, style: `left:${10 + Math.random() * 75}%` }, reactionGlyph(word) ?? h('span', { class: 'emoji' }, emoji), h('span', { class: 'from' }, who));
    this.floats.append(el);
    this.announcer.textContent = `${who} reacted: ${word}`;
    const remove = () => el.remove();
    el.addEventListener('animationend', remove);
    window.setTimeout(remove, 4000);
  }

  private async leave(toDirectory = true): Promise<void> {
    this.leaving = true;
    const left = api.leave(this.id).catch(() => {});
    lastLeave = left;
    await left;
    await this.lk?.disconnect();
    if (this.docked) {
      docked = null;
      this.destroy();
      return;
    }
    if (toDirectory) navigate('/');
  }
}
