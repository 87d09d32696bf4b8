// Invitation links: the panel where hosts and co-hosts make, copy and revoke them, and the
// `/invite/{token}` screen where whoever holds one accepts it.
import { api, ApiError, type InvitationEntry, type Role } from './api';
import { fill, formatWhen, h, ROLE_LABEL } from './dom';
import { icon } from './icons';
import { navigate, type Screen } from './main';
import { errorText } from './screens';

/** The link of an invitation token. */
export function inviteUrl(token: string): string {
  return `${location.origin}/invite/${encodeURIComponent(token)}`;
}

/** What a link gives, said to people. */
const GIVES: Record<string, string> = {
  listener: 'may ask to speak',
  speaker: 'joins on stage as a speaker',
  co_host: 'joins on stage as a co-host',
};

/** Why a link no longer works, said to the person holding it. */
const REFUSED: Record<string, string> = {
  invitation_expired: 'This invitation link has expired. Ask the host for a new one.',
  invitation_revoked: 'The host revoked this invitation link. Ask them for a new one.',
  invitation_used_up: 'This invitation link has already been used. Ask the host for a new one.',
  not_found: 'This invitation link does not exist. Check that you copied all of it.',
};

function refusal(err: unknown): string {
  return err instanceof ApiError && REFUSED[err.code] ? REFUSED[err.code] : errorText(err);
}

/** The hosts' panel of a room's invitation links: make one (role, single-use, how long), copy it, revoke. */
export class InvitePanel {
  readonly el = h('section', { class: 'card invite-panel', 'aria-labelledby': 'invite-heading', hidden: true });
  private readonly role = h(
    'select',
    { id: 'invite-role', name: 'invite-role' },
    h('option', { value: 'speaker' }, 'Speaker: on stage when they join'),
    h('option', { value: 'co_host' }, 'Co-host: on stage, and moderates'),
    h('option', { value: 'listener' }, 'Listener: may ask to speak'),
  );
  private readonly once = h('input', { type: 'checkbox', id: 'invite-once', name: 'invite-once', checked: true });
  private readonly lasts = h(
    'select',
    { id: 'invite-lasts', name: 'invite-lasts' },
    h('option', { value: String(3600) }, '1 hour'),
    h('option', { value: String(24 * 3600), selected: true }, '1 day'),
    h('option', { value: String(7 * 24 * 3600) }, '7 days'),
  );
  private readonly made = h('div', { class: 'invite-made' });
  private readonly list = h('ul', { class: 'invite-list', 'aria-label': 'Invitation links' });
  private readonly status = h('p', { role: 'status', class: 'muted small' });
  private loaded = false;
  private lastLoad = 0;

  constructor(private readonly room: string) {
    const create = h('button', { type: 'button', class: 'primary small' }, icon('link'), 'Create invitation link');
    create.addEventListener('click', () => void this.create(create));
    fill(
      this.el,
      h('h2', { id: 'invite-heading' }, 'Invitation links'),
      h('div', { class: 'field' }, h('label', { for: 'invite-role' }, 'Role'), this.role),
      h('div', { class: 'field' }, h('label', { for: 'invite-lasts' }, 'Works for'), this.lasts),
      h('label', { class: 'choice' }, this.once, 'Single use'),
      create,
      this.made,
      this.status,
      this.list,
    );
  }

  /** Loads the list when the panel shows, and again as the room changes (at most every 4 s), so that uses show up. */
  show(): void {
    if (this.loaded && Date.now() - this.lastLoad < 4000) return;
    this.loaded = true;
    void this.refresh();
  }

  private async create(button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    this.status.textContent = '';
    try {
      const made = await api.invite(this.room, {
        role: this.role.value as Role,
        max_uses: this.once.checked ? 1 : undefined,
        expires_in: Number(this.lasts.value),
      });
      const url = inviteUrl(made.token);
      const field = h('input', { id: 'invite-link', readonly: true, value: url, 'aria-label': 'Invitation link', onfocus: (e: Event) => (e.target as HTMLInputElement).select() });
      const copy = h('button', { type: 'button', class: 'small' }, icon('copy'), 'Copy');
      copy.addEventListener('click', async () => {
        try {
          await navigator.clipboard.writeText(url);
          this.status.textContent = 'Copied.';
        } catch {
          field.select();
          this.status.textContent = 'Select the link and copy it.';
        }
      });
      fill(this.made, h('div', { class: 'row' }, field, copy));
      await this.refresh();
    } catch (err) {
      this.status.textContent = errorText(err);
    } finally {
      button.disabled = false;
    }
  }

  private async refresh(): Promise<void> {
    this.lastLoad = Date.now();
    let entries: InvitationEntry[];
    try {
      entries = (await api.invitations(this.room)).invitations;
    } catch (err) {
      this.status.textContent = errorText(err);
      return;
    }
    fill(
      this.list,
      entries.map((e) => {
        const uses = e.max_uses === null ? `${e.uses} used` : `${e.uses} of ${e.max_uses} used`;
        const state = e.revoked ? 'revoked' : e.usable ? `until ${formatWhen(e.expires_at)}` : e.expires_at <= Date.now() ? 'expired' : 'used up';
        const revoke = h('button', { type: 'button', class: 'small', 'aria-label': `Revoke ${ROLE_LABEL[e.role]} link ${e.token.slice(0, 6)}` }, 'Revoke');
        revoke.addEventListener('click', async () => {
          revoke.disabled = true;
          try {
            await api.revokeInvitation(this.room, e.token);
            this.status.textContent = 'Link revoked.';
            await this.refresh();
          } catch (err) {
            this.status.textContent = errorText(err);
            revoke.disabled = false;
          }
        });
        return h(
          'li',
          { 'data-token': e.token, class: e.usable ? '' : 'spent' },
          h('span', {}, `${ROLE_LABEL[e.role]} · ${uses} · ${state}`),
          e.usable ? revoke : null,
        );
      }),
    );
  }
}

/** `/invite/{token}`: what the link gives, and "Accept and join". */
export const inviteScreen: Screen = (main, params) => {
  const token = params.token;
  const card = h('section', { class: 'card invite', 'aria-labelledby': 'invite-screen-heading' }, h('h1', { id: 'invite-screen-heading', tabindex: '-1' }, 'Invitation'), h('p', { class: 'muted' }, 'Loading…'));
  main.append(card);
  let gone = false;
  void (async () => {
    let invitation;
    try {
      invitation = await api.invitation(token);
    } catch (err) {
      if (gone) return;
      fill(
        card,
        h('h1', { id: 'invite-screen-heading', tabindex: '-1' }, 'This invitation does not work'),
        h('p', { role: 'alert' }, refusal(err)),
        h('div', { class: 'row' }, h('a', { href: '/', 'data-link': true, class: 'button' }, 'Back to rooms')),
      );
      return;
    }
    if (gone) return;
    const v = invitation.room;
    const error = h('p', { class: 'error', role: 'alert' });
    const accept = h('button', { type: 'button', class: 'primary' }, 'Accept and join');
    accept.addEventListener('click', async () => {
      accept.disabled = true;
      error.textContent = '';
      try {
        await api.acceptInvitation(token);
        navigate(`/rooms/${encodeURIComponent(v.id)}`);
      } catch (err) {
        error.textContent = refusal(err);
        accept.disabled = false;
      }
    });
    fill(
      card,
      h('h1', { id: 'invite-screen-heading', tabindex: '-1' }, `You are invited to “${v.title}”`),
      v.host_name ? h('p', { class: 'muted' }, `Hosted by ${v.host_name}`) : null,
      h('p', { id: 'invite-gives' }, `With this link you ${GIVES[invitation.role] ?? 'may join'}.`),
      v.state === 'scheduled' && v.scheduled_for ? h('p', { class: 'when' }, icon('calendar'), `Starts ${formatWhen(v.scheduled_for)}`) : null,
      error,
      h('div', { class: 'row' }, accept, h('a', { href: '/', 'data-link': true, class: 'button' }, 'Not now')),
    );
  })();
  return () => {
    gone = true;
  };
};
