// People: avatars (the user's own picture, else generated from their id and name) and the profile
// sheet opened by tapping someone (name, role here, bio, follow; for oneself, editing the bio and
// picture).
import { api, session, type Profile, type Role } from './api';
import { avatar, fill, h, ROLE_LABEL } from './dom';
import { icon } from './icons';
import { errorText } from './screens';

/** Profiles fetched this session, one request per person. */
const profiles = new Map<string, Promise<Profile | null>>();

function profileOf(user: string): Promise<Profile | null> {
  let p = profiles.get(user);
  if (!p) {
    p = api.profile(user).catch(() => null);
    profiles.set(user, p);
  }
  return p;
}

/** Shows `url` (or, when null, the generated initials) in every avatar of `user` on the page. */
function showPicture(user: string, url: string | null): void {
  for (const el of document.querySelectorAll<HTMLElement>(`.avatar[data-user="${CSS.escape(user)}"]`)) paint(el, url);
}

function paint(el: HTMLElement, url: string | null): void {
  el.querySelector('img')?.remove();
  if (url) el.prepend(h('img', { src: url, alt: '' }));
}

/** An avatar of `user`: generated at once, their own picture once their profile is known. */
export function personAvatar(user: string, name: string, size: 'large' | 'medium' | 'small' = 'large'): HTMLElement {
  const el = avatar(user, name, size);
  el.dataset.user = user;
  void profileOf(user).then((p) => {
    if (p?.avatar) paint(el, p.avatar);
  });
  return el;
}

export interface Person {
  user: string;
  name: string;
  /** Their role in this room, if they are in one. */
  role: Role | null;
  /** Whether they host the room. */
  host: boolean;
}

/**
 * A Follow / Following toggle for `user` (whose rooms going live then reach the follower as
 * notifications); `name`, when given, is said on it ("Follow Hana"). Problems go to `onError`.
 */
export function followButton(user: string, name: string, onError: (err: unknown) => void): HTMLButtonElement {
  const follow = h('button', { type: 'button', class: 'primary follow', 'aria-pressed': 'false', disabled: true }, 'Follow');
  const show = (on: boolean) => {
    follow.setAttribute('aria-pressed', String(on));
    follow.classList.toggle('toggled', on);
    follow.classList.toggle('primary', !on);
    fill(follow, icon(on ? 'check' : 'plus'), on ? 'Following' : 'Follow', name ? ` ${name}` : '');
    follow.disabled = false;
  };
  api.follows().then((f) => show(f.follows.some((x) => x.kind === 'user' && x.id === user)), onError);
  follow.addEventListener('click', async () => {
    const on = follow.getAttribute('aria-pressed') === 'true';
    follow.disabled = true;
    try {
      if (on) await api.unfollow('users', user);
      else await api.follow('users', user);
      show(!on);
    } catch (err) {
      onError(err);
      follow.disabled = false;
    }
  });
  return follow;
}

export function profileSheet(dialog: HTMLDialogElement, p: Person): void {
  const self = session()?.user === p.user;
  const status = h('p', { class: 'error', role: 'alert' });
  const bio = h('p', { class: 'bio' }, '…');
  void profileOf(p.user).then((x) => {
    bio.textContent = x?.bio || (self ? 'You have not written a bio yet.' : 'No bio yet.');
    bio.classList.toggle('muted', !x?.bio);
  });
  const follow = self ? null : followButton(p.user, '', (err) => (status.textContent = errorText(err)));
  const role = p.host ? 'Host of this room' : p.role ? `${ROLE_LABEL[p.role]} in this room` : self ? 'That is you' : 'Not in this room now';
  const edit = h('button', { type: 'button', onclick: () => void editProfile(dialog, p) }, icon('user'), 'Edit profile');
  fill(
    dialog,
    h('div', { class: 'profile' }, personAvatar(p.user, p.name, 'large'), h('h2', { id: 'profile-heading' }, p.name, self ? ' (you)' : ''), h('p', { class: 'muted' }, role), bio),
    status,
    h('div', { class: 'row end' }, follow ?? edit, h('button', { type: 'button', onclick: () => dialog.close() }, 'Close')),
  );
  if (!dialog.open) dialog.showModal();
}

/** A picture file as a small square JPEG data URL (centre-cropped, 128×128). */
async function shrink(file: File): Promise<string> {
  const bitmap = await createImageBitmap(file);
  const side = Math.min(bitmap.width, bitmap.height);
  const canvas = h('canvas', { width: '128', height: '128' });
  const g = canvas.getContext('2d');
  if (!g) throw new Error('This browser cannot resize pictures.');
  g.drawImage(bitmap, (bitmap.width - side) / 2, (bitmap.height - side) / 2, side, side, 0, 0, 128, 128);
  bitmap.close();
  for (const quality of [0.85, 0.7, 0.5]) {
    const url = canvas.toDataURL('image/jpeg', quality);
    if (url.length <= 12_000) return url;
  }
  throw new Error('That picture is too detailed to use; try another one.');
}

async function editProfile(dialog: HTMLDialogElement, p: Person): Promise<void> {
  const current = await profileOf(p.user);
  let picture = current?.avatar ?? null;
  const status = h('p', { class: 'error', role: 'alert' });
  const preview = avatar(p.user, p.name, 'large');
  paint(preview, picture);
  const bio = h('textarea', { id: 'profile-bio', rows: '3', maxlength: '160' }, current?.bio ?? '');
  const file = h('input', { id: 'profile-photo', type: 'file', accept: 'image/png,image/jpeg,image/webp' });
  file.addEventListener('change', async () => {
    const f = file.files?.[0];
    if (!f) return;
    try {
      picture = await shrink(f);
      paint(preview, picture);
      status.textContent = '';
    } catch (err) {
      status.textContent = errorText(err);
    }
  });
  const remove = h('button', { type: 'button', class: 'small', onclick: () => { picture = null; paint(preview, null); } }, 'Remove photo');
  const save = h('button', { type: 'button', class: 'primary' }, 'Save');
  save.addEventListener('click', async () => {
    save.disabled = true;
    try {
      const saved = await api.setProfile({ bio: bio.value.trim(), avatar: picture });
      profiles.set(p.user, Promise.resolve(saved));
      showPicture(p.user, saved.avatar);
      profileSheet(dialog, p);
    } catch (err) {
      status.textContent = errorText(err);
      save.disabled = false;
    }
  });
  fill(
    dialog,
    h('h2', { id: 'profile-heading' }, 'Edit your profile'),
    h('div', { class: 'profile' }, preview),
    h('label', { for: 'profile-photo' }, 'Photo'),
    h('div', { class: 'row photo-row' }, file, remove),
    h('label', { for: 'profile-bio' }, 'Bio'),
    bio,
    h('p', { class: 'hint small' }, 'Up to 160 characters. Everyone signed in can see your photo and bio.'),
    status,
    h('div', { class: 'row end' }, h('button', { type: 'button', onclick: () => profileSheet(dialog, p) }, 'Cancel'), save),
  );
  bio.focus();
}
