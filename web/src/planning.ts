// What a host prepares before a scheduled room goes live: editing its description and time
// (PATCH /api/rooms/{id}) and its line-up of co-hosts and speakers (/api/rooms/{id}/lineup).
import { api, type Role, type RoomView } from './api';
import { fill, h, ROLE_LABEL } from './dom';
import { icon } from './icons';
import { scheduleFields } from './recurrence';
import { errorText } from './screens';

/** `ms` as the value of a `datetime-local` input, in local time. */
function localInput(ms: number): string {
  const d = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/**
 * The "Edit room" dialog of a scheduled room: title, topic, description, date and time,
 * recurrence and auto-start. Calls
 * `done` with the room as the server has it after a change.
 */
export function editDialog(dialog: HTMLDialogElement, v: RoomView, done: (v: RoomView) => void): void {
  const error = h('p', { class: 'error', role: 'alert' });
  const title = h('input', { id: 'edit-title', name: 'title', required: true, maxlength: '120', value: v.title });
  const topic = h('input', { id: 'edit-topic', name: 'topic', maxlength: '60', value: v.topic });
  const description = h('textarea', { id: 'edit-description', name: 'description', rows: '3', maxlength: '2000' }, v.description);
  const when = h('input', { id: 'edit-when', name: 'when', type: 'datetime-local', value: v.scheduled_for ? localInput(v.scheduled_for) : '', 'aria-describedby': 'edit-when-hint' });
  const schedule = scheduleFields('edit', v.schedule);
  const save = h('button', { type: 'submit', class: 'primary' }, 'Save');
  const field = (id: string, label: string, input: HTMLElement) => h('div', { class: 'field' }, h('label', { for: id }, label), input);
  const form = h(
    'form',
    { method: 'dialog' },
    h('h2', { id: 'edit-heading' }, 'Edit room'),
    field('edit-title', 'Title', title),
    field('edit-topic', 'Topic', topic),
    field('edit-description', 'Description', description),
    field('edit-when', 'Date and time', when),
    h('p', { class: 'hint', id: 'edit-when-hint' }, 'In your local time zone. A repeating room takes place then, and after that as it repeats.'),
    schedule.el,
    error,
    h('div', { class: 'row end' }, h('button', { type: 'button', onclick: () => dialog.close() }, 'Cancel'), save),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    const at = when.value ? new Date(when.value).getTime() : undefined;
    if (at !== undefined && (!Number.isFinite(at) || at <= Date.now())) {
      error.textContent = 'Pick a date and time in the future.';
      when.focus();
      return;
    }
    const sched = schedule.read();
    save.disabled = true;
    try {
      const after = await api.edit(v.id, {
        title: title.value.trim(),
        topic: topic.value.trim(),
        description: description.value.trim(),
        scheduled_for: at !== v.scheduled_for ? at : undefined,
        schedule: JSON.stringify(sched) !== JSON.stringify({ auto_start: v.schedule.auto_start, repeat: v.schedule.repeat }) ? sched : undefined,
      });
      dialog.close();
      done(after);
    } catch (err) {
      error.textContent = errorText(err);
      save.disabled = false;
    }
  });
  fill(dialog, form);
  dialog.setAttribute('aria-labelledby', 'edit-heading');
  dialog.showModal();
}

/** The host's line-up editor: who is a co-host or speaker whenever they join, by user id. */
export function lineUpEditor(roomId: string): HTMLElement {
  const list = h('ul', { class: 'lineup-list', 'aria-label': 'Line-up' });
  const status = h('p', { role: 'status', class: 'muted small' });
  const user = h('input', { id: 'lineup-user', name: 'lineup-user', required: true, maxlength: '64', autocomplete: 'off', 'aria-describedby': 'lineup-user-hint' });
  const role = h('select', { id: 'lineup-role', name: 'lineup-role' }, h('option', { value: 'speaker' }, 'Speaker'), h('option', { value: 'co_host' }, 'Co-host'));
  const add = h('button', { type: 'submit', class: 'small' }, icon('plus'), 'Add to line-up');
  const refresh = async () => {
    try {
      const { lineup } = await api.lineup(roomId);
      fill(
        list,
        lineup.length
          ? lineup.map((e) => {
              const remove = h('button', { type: 'button', class: 'small', 'aria-label': `Remove from line-up: ${e.name}` }, 'Remove');
              remove.addEventListener('click', async () => {
                remove.disabled = true;
                try {
                  await api.lineUpRemove(roomId, e.user);
                  status.textContent = `${e.name} is off the line-up.`;
                  await refresh();
                } catch (err) {
                  status.textContent = errorText(err);
                  remove.disabled = false;
                }
              });
              return h('li', { 'data-user': e.user }, h('span', {}, `${e.name} · ${ROLE_LABEL[e.role] ?? e.role}`), remove);
            })
          : h('li', { class: 'muted' }, 'Nobody lined up yet.'),
      );
    } catch (err) {
      status.textContent = errorText(err);
    }
  };
  const form = h(
    'form',
    { class: 'lineup-add' },
    h('div', { class: 'field' }, h('label', { for: 'lineup-user' }, 'User id'), user, h('p', { class: 'hint', id: 'lineup-user-hint' }, 'As shown on their profile; invitation links work without it.')),
    h('div', { class: 'field' }, h('label', { for: 'lineup-role' }, 'Role'), role),
    add,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    add.disabled = true;
    status.textContent = '';
    try {
      await api.lineUp(roomId, user.value.trim(), role.value as Role);
      user.value = '';
      await refresh();
    } catch (err) {
      status.textContent = errorText(err);
    } finally {
      add.disabled = false;
    }
  });
  void refresh();
  return h('section', { class: 'card lineup-panel', 'aria-labelledby': 'lineup-heading' }, h('h2', { id: 'lineup-heading' }, 'Line-up'), h('p', { class: 'muted small' }, 'Co-hosts and speakers come on stage as soon as they join.'), list, form, status);
}
