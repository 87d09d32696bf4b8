// The notification centre: a bell in the top bar with the unread count, a list of the feed
// (`GET /api/me/notifications`) that marks it read when opened, and live arrivals from the
// user's own stream (`/api/events?notifications_only=true`) shown as a toast with "Join" and, when
// the person allowed it, as a browser notification (the Notification API).
import { api, subscribe, type Notice } from './api';
import { fill, formatWhen, h } from './dom';
import { icon } from './icons';
import { navigate } from './main';
import { toast } from './toast';

let user: string | null = null;
let stream: { close(): void } | null = null;
let items: Notice[] = [];
let unread = 0;
/** The bell on the page (the top bar is drawn again with every screen: the latest one). */
let bellButton: HTMLButtonElement | null = null;
const panel = h('dialog', { class: 'dialog notices-dialog', 'aria-labelledby': 'notices-heading' });
document.body.append(panel);

/** What a notification says, as a title and a line. */
function words(n: Notice): { title: string; body: string } {
  if (n.kind === 'room_live') return { title: `Live now: ${n.title}`, body: 'A room you follow is live. Join in.' };
  const when = n.scheduled_for ? `Starts ${formatWhen(n.scheduled_for)}` : 'Starting soon';
  return { title: `Starting soon: ${n.title}`, body: when };
}

function roomPath(n: Notice): string {
  return `/rooms/${encodeURIComponent(n.room)}`;
}

function paint(): void {
  const b = bellButton;
  if (b) {
    b.setAttribute('aria-label', unread ? `Notifications, ${unread} unread` : 'Notifications');
    fill(b, icon(unread ? 'bellOn' : 'bell'), unread ? h('span', { class: 'count', 'aria-hidden': 'true' }, String(unread > 99 ? '99+' : unread)) : null);
  }
  if (panel.open) list();
}

function list(): void {
  const canAsk = 'Notification' in window && Notification.permission === 'default';
  const allow = h('button', { type: 'button', class: 'small' }, icon('bellOn'), 'Also notify me outside this tab');
  allow.addEventListener('click', async () => {
    allow.disabled = true;
    await Notification.requestPermission().catch(() => 'denied');
    list();
  });
  fill(
    panel,
    h('h2', { id: 'notices-heading' }, 'Notifications'),
    items.length
      ? h(
          'ul',
          { class: 'notices' },
          items.map((n) => {
            const w = words(n);
            return h(
              'li',
              { class: n.read === false ? 'unread' : '' },
              h(
                'a',
                { href: roomPath(n), 'data-link': true, onclick: () => panel.close() },
                icon(n.kind === 'room_live' ? 'signal' : 'calendar'),
                h('span', { class: 'notice-text' }, h('strong', {}, w.title), h('span', { class: 'muted small' }, w.body)),
              ),
            );
          }),
        )
      : h('p', { class: 'muted' }, 'Nothing yet. Follow hosts or tap "Remind me" on a scheduled room to hear when they go live.'),
    h('div', { class: 'row end' }, canAsk ? allow : null, h('button', { type: 'button', onclick: () => panel.close() }, 'Close')),
  );
}

async function open(): Promise<void> {
  try {
    const page = await api.notifications();
    items = page.notifications;
    unread = page.unread;
  } catch {
    // Keep what is known; the list still opens.
  }
  list();
  if (!panel.open) panel.showModal();
  if (unread) {
    unread = 0;
    paint();
    api.markRead().catch(() => {});
  }
}

function arrived(n: Notice): void {
  if (items.some((x) => x.id === n.id)) return;
  items = [{ ...n, read: false }, ...items].slice(0, 30);
  unread++;
  paint();
  const w = words(n);
  toast(w.title, { icon: n.kind === 'room_live' ? 'signal' : 'bellOn', key: `notice-${n.id}`, action: { label: 'Join', run: () => navigate(roomPath(n)) }, ms: 12_000 });
  if ('Notification' in window && Notification.permission === 'granted') {
    try {
      const shown = new Notification(w.title, { body: w.body, tag: n.id });
      shown.onclick = () => {
        window.focus();
        navigate(roomPath(n));
        shown.close();
      };
    } catch {
      // Some browsers only show notifications from a service worker: the toast is enough.
    }
  }
}

/** Follows `me`'s notifications (again when the signed-in user changes); `null` stops. */
export function followNotifications(me: string | null): void {
  if (me === user) return;
  stream?.close();
  stream = null;
  items = [];
  unread = 0;
  user = me;
  if (!me) {
    paint();
    return;
  }
  api.notifications().then(
    (page) => {
      if (user !== me) return;
      items = page.notifications;
      unread = page.unread;
      paint();
    },
    () => {},
  );
  stream = subscribe(
    undefined,
    (e) => {
      if (e.type === 'notification' && e.notification && user === me) arrived(e.notification);
    },
    true,
  );
}

/** The top bar's bell: the unread count; opens the list. */
export function bell(): HTMLButtonElement {
  const b = h('button', { type: 'button', class: 'bell small ghost' });
  b.addEventListener('click', () => void open());
  bellButton = b;
  paint();
  return b;
}
