// A person's profile sheet, opened by tapping them on stage, in the audience or in the host's
// lists: their generated avatar, name and role here, and following them.
import { api, session, type Role } from './api';
import { avatar, fill, h, ROLE_LABEL } from './dom';
import { icon } from './icons';
import { errorText } from './screens';

export interface Person {
  user: string;
  name: string;
  /** Their role in this room, if they are in it. */
  role: Role | null;
  /** Whether they host the room. */
  host: boolean;
}

export function profileSheet(dialog: HTMLDialogElement, p: Person): void {
  const self = session()?.user === p.user;
  const status = h('p', { class: 'error', role: 'alert' });
  const follow = h('button', { type: 'button', class: 'primary', 'aria-pressed': 'false', disabled: true }, 'Follow');
  const show = (on: boolean) => {
    follow.setAttribute('aria-pressed', String(on));
    follow.classList.toggle('toggled', on);
    follow.classList.toggle('primary', !on);
    fill(follow, icon(on ? 'check' : 'plus'), on ? 'Following' : 'Follow');
    follow.disabled = false;
  };
  if (!self) {
    api.follows().then((f) => show(f.follows.some((x) => x.kind === 'user' && x.id === p.user)), (err) => {
      status.textContent = errorText(err);
    });
  }
  follow.addEventListener('click', async () => {
    const on = follow.getAttribute('aria-pressed') === 'true';
    follow.disabled = true;
    try {
      if (on) await api.unfollow('users', p.user);
      else await api.follow('users', p.user);
      show(!on);
    } catch (err) {
      status.textContent = errorText(err);
      follow.disabled = false;
    }
  });
  const role = p.host ? 'Host of this room' : p.role ? `${ROLE_LABEL[p.role]} in this room` : 'Not in this room now';
  fill(
    dialog,
    h('div', { class: 'profile' }, avatar(p.user, p.name, 'large'), h('h2', { id: 'profile-heading' }, p.name, self ? ' (you)' : ''), h('p', { class: 'muted' }, role)),
    status,
    h('div', { class: 'row end' }, self ? null : follow, h('button', { type: 'button', onclick: () => dialog.close() }, 'Close')),
  );
  dialog.showModal();
}
