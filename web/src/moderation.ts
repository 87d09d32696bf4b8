// The host's tools in a live room: the queue of requests to speak (in the side panel and in a
// dialog the control bar opens), the people on stage and in the audience with their actions,
// removals confirmed before they happen and undoable after, and the list of kicked and banned
// people.
import { api, type AudienceMember, type Member, type ModerationAction, type Removed, type RoomView } from './api';
import { fill, h, ROLE_LABEL } from './dom';
import { personAvatar } from './profile';
import { icon } from './icons';
import { toast } from './toast';

export interface ModerationContext {
  readonly id: string;
  /** Runs a call that answers with the room; false (and the error shown) if it failed. */
  act(f: () => Promise<RoomView | void>): Promise<boolean>;
  /** Asks to end the room. */
  openEnd(): void;
  /** Opens someone's profile sheet. */
  openProfile(user: string, name: string): void;
}

export class Moderation {
  readonly panel = h('section', { class: 'host-panel card', 'aria-labelledby': 'host-heading', hidden: true });
  readonly requests = h('dialog', { class: 'dialog requests-dialog', 'aria-labelledby': 'requests-heading' });
  readonly confirm = h('dialog', { class: 'dialog', 'aria-labelledby': 'confirm-heading' });
  private signature = '';
  private view: RoomView | null = null;
  private me = '';
  /** Later pages of the audience, fetched by cursor ("Show more"); the first comes with the view. */
  private moreAudience: AudienceMember[] = [];
  private audienceCursor: string | null = null;

  constructor(private readonly cx: ModerationContext) {}

  /** Redraws the panel (and the requests dialog when open) for `v`, seen by moderator `me`. */
  render(v: RoomView, me: string): void {
    this.view = v;
    this.me = me;
    const sig = JSON.stringify([v.hands, v.raised_hands, v.stage, v.audience, v.audience_next, v.removed, v.you, this.moreAudience.length, this.audienceCursor]);
    if (sig === this.signature) return;
    this.signature = sig;
    // Keep the keyboard where it was when a list is redrawn.
    const within = [this.panel, this.requests].find((el) => el.contains(document.activeElement));
    const focused = within ? document.activeElement?.getAttribute('aria-label') : null;
    this.renderPanel(v, me);
    if (this.requests.open) this.renderRequests();
    if (within && focused) within.querySelector<HTMLElement>(`[aria-label="${CSS.escape(focused)}"]`)?.focus();
  }

  /** Forgets what was drawn, so that the next render draws again (after the panel moved). */
  reset(): void {
    this.signature = '';
  }

  /** Fetches the audience's next page after `after` and draws it under the first. */
  private async showMore(after: string): Promise<void> {
    try {
      const page = await api.audience(this.cx.id, after);
      this.moreAudience = [...this.moreAudience, ...page.members];
      this.audienceCursor = page.next;
      if (this.view) this.render(this.view, this.me);
    } catch {
      // The next refresh shows the first page again; nothing else to undo.
    }
  }

  openRequests(): void {
    this.renderRequests();
    if (!this.requests.open) this.requests.showModal();
  }

  private button(label: string, m: { user: string; name: string }, action: ModerationAction, cls = 'small'): HTMLElement {
    return h(
      'button',
      {
        type: 'button',
        class: cls,
        'aria-label': `${label}: ${m.name}`,
        onclick: () => {
          if (action === 'kick' || action === 'ban') this.confirmRemoval(m, action);
          else if (action === 'transfer_host') this.confirmTransfer(m);
          else void this.cx.act(() => api.moderate(this.cx.id, m.user, action));
        },
      },
      label,
    );
  }

  private handList(v: RoomView): HTMLElement {
    const hands = v.hands ?? [];
    if (!hands.length) return h('p', { class: 'muted empty-note' }, 'No requests right now.');
    return h(
      'ol',
      { class: 'queue' },
      hands.map((x) =>
        h(
          'li',
          { 'data-user': x.user },
          h('span', { class: 'member' }, personAvatar(x.user, x.name, 'small'), h('span', {}, x.name), icon('hand', undefined, 'icon hand-icon')),
          h(
            'span',
            { class: 'actions' },
            this.button('Approve', x, 'approve_hand', 'small primary'),
            this.button('Deny', x, 'deny_hand'),
          ),
        ),
      ),
    );
  }

  private renderRequests(): void {
    const v = this.view;
    if (!v) return;
    fill(
      this.requests,
      h('h2', { id: 'requests-heading' }, icon('hand'), 'Requests to speak'),
      h('p', { class: 'muted' }, 'Approving brings someone on stage with their microphone off; they unmute when ready.'),
      this.handList(v),
      h('div', { class: 'row end' }, h('button', { type: 'button', onclick: () => this.requests.close() }, 'Close')),
    );
  }

  private renderPanel(v: RoomView, me: string): void {
    const others = v.stage.filter((m) => m.user !== me && m.role !== 'host');
    // The first page came with the view; later pages are fetched on demand by cursor.
    const seen = new Set((v.audience ?? []).map((m) => m.user));
    const audience = [...(v.audience ?? []), ...this.moreAudience.filter((m) => !seen.has(m.user))].filter((m) => m.present);
    const cursor = this.moreAudience.length ? this.audienceCursor : v.audience_next;
    const removed = v.removed ?? [];
    const person = (m: Member | AudienceMember) =>
      h(
        'button',
        { type: 'button', class: 'member link-like', onclick: () => this.cx.openProfile(m.user, m.name) },
        personAvatar(m.user, m.name, 'small'),
        h('span', {}, m.name),
        m.role === 'listener' ? null : h('span', { class: 'muted small' }, ROLE_LABEL[m.role]),
        m.role !== 'listener' && (m.hard_muted || m.muted) ? [icon('micOff', undefined, 'icon small-icon'), h('span', { class: 'visually-hidden' }, ', muted')] : null,
      );
    fill(
      this.panel,
      h('h2', { id: 'host-heading' }, 'Host tools'),
      // Open rooms have no hands to raise: everyone may speak.
      v.kind === 'stage'
        ? h('section', { class: 'panel-part', 'aria-labelledby': 'queue-heading' }, h('h3', { id: 'queue-heading' }, 'Requests to speak', h('span', { class: v.raised_hands ? 'count-badge' : 'count-badge zero' }, String(v.raised_hands))), this.handList(v))
        : null,
      h(
        'section',
        { class: 'panel-part', 'aria-labelledby': 'manage-stage-heading' },
        h('h3', { id: 'manage-stage-heading' }, 'Speakers'),
        others.length
          ? h(
              'ul',
              { class: 'queue' },
              others.map((m) =>
                h(
                  'li',
                  { 'data-user': m.user },
                  person(m),
                  h(
                    'span',
                    { class: 'actions' },
                    this.button('Move to audience', m, 'move_to_audience'),
                    m.muted || m.hard_muted ? null : this.button('Mute', m, 'force_mute'),
                    m.hard_muted ? this.button('Restore mic', m, 'restore') : this.button('Turn off mic', m, 'hard_mute'),
                    m.role === 'co_host' ? this.button('Remove co-host', m, 'remove_co_host') : this.button('Make co-host', m, 'add_co_host'),
                    // The host hands the room to a co-host (and stays on as a co-host).
                    v.you?.role === 'host' && m.role === 'co_host' ? this.button('Make host', m, 'transfer_host') : null,
                    this.button('Kick', m, 'kick', 'small danger'),
                    this.button('Ban', m, 'ban', 'small danger'),
                  ),
                ),
              ),
            )
          : h('p', { class: 'muted empty-note' }, 'Nobody else is on stage.'),
      ),
      h(
        'section',
        { class: 'panel-part', 'aria-labelledby': 'manage-audience-heading' },
        h('h3', { id: 'manage-audience-heading' }, 'Listeners'),
        audience.length
          ? h(
              'ul',
              { class: 'queue' },
              audience.map((m) =>
                h(
                  'li',
                  { 'data-user': m.user },
                  person(m),
                  h('span', { class: 'actions' }, this.button('Invite to speak', m, 'invite_to_speak'), this.button('Kick', m, 'kick', 'small danger'), this.button('Ban', m, 'ban', 'small danger')),
                ),
              ),
            )
          : h('p', { class: 'muted empty-note' }, 'Nobody in the audience yet.'),
        cursor ? h('button', { type: 'button', class: 'small', onclick: () => void this.showMore(cursor) }, 'Show more') : null,
      ),
      h(
        'section',
        { class: 'panel-part', 'aria-labelledby': 'removed-list-heading' },
        h('h3', { id: 'removed-list-heading' }, 'Removed', h('span', { class: 'count-badge zero' }, String(removed.length))),
        removed.length
          ? h('ul', { class: 'queue removed-list' }, removed.map((r) => this.removedRow(r)))
          : h('p', { class: 'muted empty-note' }, 'Nobody was kicked or banned.'),
      ),
      v.you?.role === 'host' ? h('button', { type: 'button', class: 'danger end-room', onclick: () => this.cx.openEnd() }, icon('stop'), 'End room') : null,
    );
  }

  private removedRow(r: Removed): HTMLElement {
    const status = r.banned
      ? 'Banned'
      : r.until && r.until > Date.now()
        ? `Kicked · may rejoin at ${new Intl.DateTimeFormat(undefined, { timeStyle: 'short' }).format(new Date(r.until))}`
        : 'Kicked · may rejoin now';
    return h(
      'li',
      { 'data-user': r.user },
      h('span', { class: 'member' }, personAvatar(r.user, r.name, 'small'), h('span', {}, r.name), h('span', { class: 'muted small status' }, status)),
      h(
        'span',
        { class: 'actions' },
        h(
          'button',
          { type: 'button', class: 'small', 'aria-label': `Let back in: ${r.name}`, onclick: () => void this.letBackIn(r.user, r.name) },
          icon('undo'),
          'Let back in',
        ),
      ),
    );
  }

  private async letBackIn(user: string, name: string): Promise<void> {
    if (await this.cx.act(() => api.moderate(this.cx.id, user, 'unban'))) {
      toast(`${name} can rejoin now.`, { icon: 'check', tone: 'ok' });
    }
  }

  /** Asks before a kick or ban; after it, a toast offers to undo it. */
  private confirmTransfer(m: { user: string; name: string }): void {
    const go = h('button', { type: 'button', class: 'primary' }, icon('star'), 'Make host');
    go.addEventListener('click', async () => {
      go.setAttribute('disabled', '');
      const ok = await this.cx.act(() => api.moderate(this.cx.id, m.user, 'transfer_host'));
      this.confirm.close();
      if (ok) toast(`${m.name} is the host now; you are a co-host.`, { icon: 'star' });
    });
    fill(
      this.confirm,
      h('h2', { id: 'confirm-heading' }, `Make ${m.name} the host?`),
      h('p', {}, 'They run the room from now on, and can end it. You stay on stage as a co-host.'),
      h('div', { class: 'row end' }, h('button', { type: 'button', onclick: () => this.confirm.close() }, 'Cancel'), go),
    );
    this.confirm.showModal();
  }

  private confirmRemoval(m: { user: string; name: string }, action: 'kick' | 'ban'): void {
    const ban = action === 'ban';
    const go = h('button', { type: 'button', class: 'danger' }, icon(ban ? 'ban' : 'leave'), ban ? 'Ban' : 'Remove');
    go.addEventListener('click', async () => {
      go.setAttribute('disabled', '');
      const ok = await this.cx.act(() => api.moderate(this.cx.id, m.user, action));
      this.confirm.close();
      if (!ok) return;
      toast(ban ? `${m.name} is banned from this room.` : `${m.name} was removed from the room.`, {
        icon: ban ? 'ban' : 'leave',
        action: { label: 'Undo', run: () => void this.letBackIn(m.user, m.name) },
      });
    });
    fill(
      this.confirm,
      h('h2', { id: 'confirm-heading' }, ban ? `Ban ${m.name}?` : `Remove ${m.name} from the room?`),
      h(
        'p',
        {},
        ban
          ? 'They are disconnected now and cannot come back to this room until you let them back in.'
          : 'They are disconnected now and can come back after a few minutes, or sooner if you let them back in.',
      ),
      h('div', { class: 'row end' }, h('button', { type: 'button', onclick: () => this.confirm.close() }, 'Cancel'), go),
    );
    this.confirm.showModal();
  }
}

/** How many requests wait, for the control bar's badge and the tab title. */
export function requestCount(v: RoomView | null): number {
  // The view lists the first requests; the count covers them all.
  return v?.hands ? Math.max(v.raised_hands, v.hands.length) : 0;
}

