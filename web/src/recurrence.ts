// A scheduled room's recurrence (days of the week, local time, IANA time zone) and auto-start:
// the fields that set them in the create form and the "Edit room" dialog, the recurrence in
// words for the room's card, and the server's `invalid_schedule` refusals as sentences.
import type { Day, Recurrence, Schedule } from './api';
import { h } from './dom';

const DAYS: [Day, string, string][] = [
  ['mon', 'Monday', 'Mon'],
  ['tue', 'Tuesday', 'Tue'],
  ['wed', 'Wednesday', 'Wed'],
  ['thu', 'Thursday', 'Thu'],
  ['fri', 'Friday', 'Fri'],
  ['sat', 'Saturday', 'Sat'],
  ['sun', 'Sunday', 'Sun'],
];

/** The browser's own IANA time zone (UTC when it cannot tell). */
export function browserTimeZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  } catch {
    return 'UTC';
  }
}

/** The time zones to pick from: the browser's list when it has one, always with `keep`. */
function timeZones(keep: string[]): string[] {
  const intl = Intl as unknown as { supportedValuesOf?: (key: string) => string[] };
  let zones: string[] = [];
  try {
    zones = intl.supportedValuesOf?.('timeZone') ?? [];
  } catch {
    zones = [];
  }
  if (!zones.length) zones = ['UTC', 'Europe/London', 'Europe/Paris', 'Europe/Berlin', 'America/New_York', 'America/Chicago', 'America/Denver', 'America/Los_Angeles', 'America/Sao_Paulo', 'Asia/Kolkata', 'Asia/Shanghai', 'Asia/Tokyo', 'Australia/Sydney'];
  const all = new Set([...zones, 'UTC', ...keep]);
  return [...all].sort();
}

/** "Every Tue and Thu at 20:00 (Europe/Paris)". */
export function recurrenceText(r: Recurrence): string {
  const names = DAYS.filter(([d]) => r.days.includes(d)).map(([, , short]) => short);
  const days =
    names.length === 7 ? 'day' : names.length > 1 ? `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}` : (names[0] ?? '');
  return `Every ${days} at ${r.time} (${r.time_zone})`;
}

/** The server's refusal of a schedule (`invalid_schedule`), said as what to change. */
export function scheduleErrorText(message: string): string {
  if (message.startsWith('repeat.days')) return 'Tick at least one day of the week for the room to repeat on.';
  if (message.startsWith('repeat.time_zone')) return 'The server does not know that time zone. Pick another one, e.g. Europe/Paris.';
  if (message.startsWith('repeat.time')) return 'Give the time of day as hours and minutes, from 00:00 to 23:59.';
  if (message.startsWith('auto_start')) return 'A room can only start by itself when it has a date and time or repeats.';
  const text = message.trim();
  return text ? text[0].toUpperCase() + text.slice(1) + (/[.!?]$/.test(text) ? '' : '.') : 'That schedule is not valid.';
}

/** The recurrence and auto-start fields, ids prefixed by `prefix`; `read` gives the schedule. */
export interface ScheduleFields {
  el: HTMLFieldSetElement;
  /** True when the room repeats (the form may then leave its date empty). */
  repeats: () => boolean;
  read: () => Schedule;
}

export function scheduleFields(prefix: string, current: Schedule | null, onChange: () => void = () => {}): ScheduleFields {
  const repeat = current?.repeat ?? null;
  const zone = repeat?.time_zone ?? browserTimeZone();
  const repeats = h('input', { type: 'checkbox', id: `${prefix}-repeat`, name: `${prefix}-repeat`, checked: repeat !== null });
  const days = DAYS.map(([d]) => h('input', { type: 'checkbox', name: `${prefix}-day`, value: d, checked: repeat?.days.includes(d) ?? false }));
  const time = h('input', { id: `${prefix}-time`, name: `${prefix}-time`, type: 'time', value: repeat?.time ?? '20:00' });
  const timeZone = h(
    'select',
    { id: `${prefix}-zone`, name: `${prefix}-zone` },
    timeZones([zone]).map((z) => h('option', { value: z, selected: z === zone }, z)),
  );
  const autoStart = h('input', { type: 'checkbox', id: `${prefix}-auto`, name: `${prefix}-auto`, checked: current?.auto_start ?? false });
  const field = (id: string, label: string, input: HTMLElement) => h('div', { class: 'field' }, h('label', { for: id }, label), input);
  const detail = h(
    'fieldset',
    { class: 'repeat-detail', disabled: repeat === null },
    h('legend', {}, 'Repeat on'),
    h('div', { class: 'days' }, DAYS.map(([, long], i) => h('label', { class: 'choice' }, days[i], long))),
    field(`${prefix}-time`, 'Time of day', time),
    field(`${prefix}-zone`, 'Time zone', timeZone),
  );
  repeats.addEventListener('change', () => {
    detail.disabled = !repeats.checked;
    onChange();
  });
  const el = h(
    'fieldset',
    { class: 'schedule-fields' },
    h('legend', {}, 'Repeat and auto-start'),
    h('label', { class: 'choice' }, repeats, 'Repeat every week'),
    detail,
    h('label', { class: 'choice' }, autoStart, 'Go live by itself at its time'),
  );
  return {
    el,
    repeats: () => repeats.checked,
    read: () => ({
      auto_start: autoStart.checked,
      repeat: repeats.checked
        ? { days: DAYS.map(([d]) => d).filter((_, i) => days[i].checked), time: time.value, time_zone: timeZone.value }
        : null,
    }),
  };
}
