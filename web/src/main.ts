// Stoa's web app: a small router over the screens. Paths:
//   /                 directory (live and scheduled rooms)
//   /signin?next=…    sign-in (guest name); `#token=…` on any path signs in with an app's token
//   /new              create a room
//   /rooms/{id}       a room: scheduled card, live room, or the ended summary
//   /embed/rooms/{id} an embeddable card for feeds and posts
//   /invite/{token}   an invitation link: what it gives, and "Accept and join"
//   /clips/{id}       a clip of a recorded room: its card, its audio, its link
import './style.css';
import { api, session, setSession, setUnauthorizedHandler } from './api';
import { h } from './dom';
import { personAvatar, profileSheet } from './profile';
import { icon } from './icons';
import { createScreen, directoryScreen, embedScreen, signInScreen } from './screens';
import { closeDock, roomScreen } from './room';
import { inviteScreen } from './invitations';
import { clipScreen } from './replay';
import { bell, followNotifications } from './notifications';

/** A screen: renders into `main` and returns its teardown. */
export type Screen = (main: HTMLElement, params: Record<string, string>) => (() => void) | void;

const app = document.getElementById('app') as HTMLElement;
/** The profile sheet the top bar opens, outside the screens so that it survives them. */
const profileDialog = h('dialog', { class: 'dialog profile-dialog', 'aria-labelledby': 'profile-heading' });
document.body.append(profileDialog);
let teardown: (() => void) | void = undefined;

export function navigate(path: string, replace = false): void {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  void render();
}

/** Takes `#token=…` from the URL: an embedding app hands over a user token this way. */
async function adoptFragmentToken(): Promise<void> {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get('token');
  if (!token) return;
  history.replaceState(null, '', location.pathname + location.search);
  try {
    const me = await api.me(token);
    setSession({ token, user: me.user, name: me.name });
  } catch {
    setSession(null);
  }
}

function route(path: string): { screen: Screen; params: Record<string, string>; auth: boolean; embed?: boolean } {
  let m: RegExpMatchArray | null;
  if ((m = path.match(/^\/embed\/rooms\/([^/]+)\/?$/))) return { screen: embedScreen, params: { id: decodeURIComponent(m[1]) }, auth: false, embed: true };
  if ((m = path.match(/^\/rooms\/([^/]+)\/?$/))) return { screen: roomScreen, params: { id: decodeURIComponent(m[1]) }, auth: true };
  if ((m = path.match(/^\/invite\/([^/]+)\/?$/))) return { screen: inviteScreen, params: { token: decodeURIComponent(m[1]) }, auth: true };
  if ((m = path.match(/^\/clips\/([^/]+)\/?$/))) return { screen: clipScreen, params: { id: decodeURIComponent(m[1]) }, auth: true };
  if (path === '/signin') return { screen: signInScreen, params: {}, auth: false };
  if (path === '/new') return { screen: createScreen, params: {}, auth: true };
  if (path === '/' || path === '') return { screen: directoryScreen, params: {}, auth: true };
  return { screen: notFound, params: {}, auth: false };
}

const notFound: Screen = (main) => {
  main.append(
    h('h1', { tabindex: '-1' }, 'Page not found'),
    h('p', {}, h('a', { href: '/', 'data-link': true }, 'Go to the rooms')),
  );
};

async function render(): Promise<void> {
  await adoptFragmentToken();
  if (teardown) teardown();
  teardown = undefined;
  const r = route(location.pathname);
  if (r.auth && !session()) {
    navigate(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`, true);
    return;
  }
  document.body.classList.toggle('embed', Boolean(r.embed));
  document.documentElement.classList.toggle('embed', Boolean(r.embed));
  document.title = 'Stoa';
  followNotifications(r.embed ? null : (session()?.user ?? null));
  const main = h('main', { id: 'main', class: r.embed ? 'embed-main' : '' });
  const chrome = r.embed ? [] : [header()];
  app.replaceChildren(...chrome, main);
  teardown = r.screen(main, r.params);
  // Move focus to the new screen's heading, for keyboard and screen-reader users.
  const heading = main.querySelector<HTMLElement>('h1');
  if (heading && !r.embed) heading.focus({ preventScroll: true });
}

function header(): HTMLElement {
  const s = session();
  return h(
    'header',
    { class: 'topbar' },
    h('a', { href: '/', 'data-link': true, class: 'brand', 'aria-label': 'Stoa, all rooms' }, h('span', { class: 'logo', 'aria-hidden': 'true' }), 'Stoa'),
    s
      ? h(
          'nav',
          { 'aria-label': 'Account' },
          h('a', { href: '/new', 'data-link': true, class: 'button primary small' }, icon('plus'), h('span', { class: 'label-wide' }, 'Create room')),
          bell(),
          h(
            'button',
            { type: 'button', class: 'who-am-i', onclick: () => profileSheet(profileDialog, { user: s.user, name: s.name, role: null, host: false }) },
            personAvatar(s.user, s.name, 'small'),
            h('span', { class: 'who-name' }, s.name),
            h('span', { class: 'visually-hidden' }, ', your profile'),
          ),
          h(
            'button',
            {
              class: 'small ghost',
              type: 'button',
              onclick: () => {
                closeDock();
                setSession(null);
                followNotifications(null);
                navigate('/signin');
              },
            },
            'Sign out',
          ),
        )
      : null,
  );
}

document.addEventListener('click', (e) => {
  const a = (e.target as Element | null)?.closest?.('a[data-link]') as HTMLAnchorElement | null;
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  if (a.target && a.target !== '_self') return;
  e.preventDefault();
  navigate(a.getAttribute('href') ?? '/');
});
window.addEventListener('popstate', () => void render());
setUnauthorizedHandler(() => {
  closeDock();
  setSession(null);
  if (!location.pathname.startsWith('/embed/')) navigate(`/signin?next=${encodeURIComponent(location.pathname)}`, true);
});

void render();
