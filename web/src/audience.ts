// The audience as everyone in the room sees it: who is listening, by name and avatar, a page at
// a time ("Show more"), each opening their profile sheet. Hosts and co-hosts get the first page
// with the room's view; everyone else reads `GET /api/rooms/{id}/audience`, which shows members
// only who of the audience is connected now. The first pages are read again when the number of
// listeners changes, and every half minute, so names follow people coming and going.
import { api, session, type AudienceMember, type Role, type RoomView } from './api';
import { fill, h, plural } from './dom';
import { icon } from './icons';
import { personAvatar } from './profile';

/** People per page. */
const PAGE = 30;
/** The most people read again at once when refreshing (the server's largest page). */
const MAX_PAGE = 200;
/** How often the list is read again while nothing else changed (ms). */
const REFRESH_MS = 30_000;

export interface AudienceContext {
  readonly id: string;
  /** Opens someone's profile sheet. */
  openProfile(user: string, name: string, role: Role): void;
}

export class Audience {
  readonly el = h('div', { class: 'audience' });
  private people: AudienceMember[] = [];
  private cursor: string | null = null;
  /** What the list was last read for: the listener count and the caller's role. */
  private readFor = '';
  private readAt = 0;
  /** Bumped by every read of the first pages, so that an older answer is dropped. */
  private generation = 0;
  private loading = false;
  private listeners = 0;
  private signature = '';
  private mode: 'moderator' | 'member' | null = null;
  /** A moderator's first page, from the view; later pages are in `people`. */
  private firstPage: AudienceMember[] | null = null;
  /** Whether pages beyond the view's first were read (their cursor is then ours). */
  private morePages = false;

  constructor(private readonly cx: AudienceContext) {}

  /** Redraws for `v`, reading the list again when it may have changed. */
  update(v: RoomView): void {
    this.listeners = v.listeners;
    const mode = v.audience ? 'moderator' : 'member';
    if (mode !== this.mode) {
      // Promoted to co-host or back: start over with what this role sees.
      this.mode = mode;
      this.generation++;
      this.people = [];
      this.cursor = null;
      this.readFor = '';
      this.morePages = false;
    }
    if (v.audience) {
      // The first page came with the view; later pages ("Show more") are kept under it.
      this.firstPage = v.audience;
      if (!this.morePages) this.cursor = v.audience_next;
    } else {
      this.firstPage = null;
      const key = JSON.stringify([v.listeners, v.you?.role ?? null]);
      if (key !== this.readFor || Date.now() - this.readAt > REFRESH_MS) {
        this.readFor = key;
        void this.reload();
      }
    }
    this.draw();
  }

  /** Reads the first pages again, as many people as are shown now (at least a page). */
  private async reload(): Promise<void> {
    const generation = ++this.generation;
    this.readAt = Date.now();
    const limit = Math.min(MAX_PAGE, Math.max(PAGE, this.people.length));
    try {
      const page = await api.audience(this.cx.id, null, limit);
      if (generation !== this.generation) return;
      this.people = page.members;
      this.cursor = page.next;
    } catch {
      // Not a member any more (removed, or the room ended): the room screen says so.
      if (generation !== this.generation) return;
      this.people = [];
      this.cursor = null;
    }
    this.draw();
  }

  /** Reads the page after the cursor and adds it under the others. */
  private async more(): Promise<void> {
    const after = this.cursor;
    if (!after || this.loading) return;
    this.loading = true;
    const generation = this.generation;
    try {
      const page = await api.audience(this.cx.id, after, PAGE);
      if (generation !== this.generation) return;
      const known = new Set([...(this.firstPage ?? []), ...this.people].map((m) => m.user));
      this.people = [...this.people, ...page.members.filter((m) => !known.has(m.user))];
      this.cursor = page.next;
      this.morePages = true;
    } catch {
      // The next refresh shows the list again; nothing to undo.
    } finally {
      this.loading = false;
    }
    this.draw();
  }

  /** Everyone listed now, each once: connected members only. */
  private shown(): AudienceMember[] {
    const first = this.firstPage ?? [];
    const seen = new Set(first.map((m) => m.user));
    return [...first, ...this.people.filter((m) => !seen.has(m.user))].filter((m) => m.present !== false);
  }

  private draw(): void {
    const people = this.shown();
    const sig = JSON.stringify([this.listeners, people.map((m) => [m.user, m.name, m.hand_raised, m.away]), this.cursor]);
    if (sig === this.signature) return;
    this.signature = sig;
    const me = session()?.user;
    const count = h('p', { class: 'muted' }, icon('headphones'), `${plural(this.listeners, 'person', 'people')} listening`);
    // Keep the keyboard on "Show more" (or the list) when the list grows under it.
    const focused = this.el.contains(document.activeElement) ? document.activeElement?.getAttribute('data-user') ?? 'more' : null;
    fill(
      this.el,
      count,
      people.length
        ? h(
            'ul',
            { class: 'people', 'aria-label': 'Listeners' },
            people.map((m) =>
              h(
                'li',
                {},
                h(
                  'button',
                  { type: 'button', class: 'person', 'data-user': m.user, onclick: () => this.cx.openProfile(m.user, m.name, m.role) },
                  personAvatar(m.user, m.name, 'small'),
                  h('span', {}, m.name, m.user === me ? h('span', { class: 'you' }, ' (you)') : null),
                  m.hand_raised ? [icon('hand', undefined, 'icon hand-icon'), h('span', { class: 'visually-hidden' }, ', hand raised')] : null,
                  m.away ? h('span', { class: 'away-badge' }, h('span', { class: 'visually-hidden' }, ', '), 'away') : null,
                ),
              ),
            ),
          )
        : null,
      this.cursor ? h('button', { type: 'button', class: 'small show-more', onclick: () => void this.more() }, 'Show more') : null,
    );
    if (focused) {
      const buttons = [...this.el.querySelectorAll<HTMLElement>('.person')];
      const target =
        focused === 'more'
          ? (this.el.querySelector<HTMLElement>('.show-more') ?? buttons[buttons.length - 1])
          : this.el.querySelector<HTMLElement>(`[data-user="${CSS.escape(focused)}"]`);
      target?.focus();
    }
  }
}
