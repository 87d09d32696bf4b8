// A small DOM builder: h('button', {class: 'x', onclick}, 'text').

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, unknown>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value as EventListener);
    } else if (key === 'class') {
      el.className = String(value);
    } else if (key === 'value' && 'value' in el) {
      (el as HTMLInputElement).value = String(value);
    } else if (key === 'checked' || key === 'disabled' || key === 'required' || key === 'selected') {
      (el as unknown as Record<string, boolean>)[key] = Boolean(value);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el: Node, children: (Child | Child[])[]): void {
  for (const child of children) {
    if (Array.isArray(child)) append(el, child);
    else if (child !== null && child !== undefined && child !== false) {
      el.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)));
    }
  }
}

/** Replaces `el`'s children. */
export function fill(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

export function initials(name: string): string {
  const parts = name.trim().split(/\s+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] ?? '?').slice(0, 2);
  return letters.toUpperCase();
}

export function formatWhen(ms: number): string {
  return new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(ms));
}

export function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  // No line breaks between a number and its unit.
  if (h > 0) return `${h}\u00a0h ${m}\u00a0min`;
  if (m > 0) return `${m}\u00a0min ${sec}\u00a0s`;
  return `${sec}\u00a0s`;
}

export const ROLE_LABEL: Record<string, string> = {
  host: 'Host',
  co_host: 'Co-host',
  speaker: 'Speaker',
  listener: 'Listener',
};

/** A stable hue (0..359) for a user id, so that someone's avatar keeps its colour everywhere. */
export function hue(user: string): number {
  let x = 2166136261;
  for (let i = 0; i < user.length; i++) {
    x ^= user.charCodeAt(i);
    x = Math.imul(x, 16777619);
  }
  return (x >>> 0) % 360;
}

/** A generated avatar: the name's initials on a colour of the user's own. */
export function avatar(user: string, name: string, size: 'large' | 'medium' | 'small' = 'large'): HTMLElement {
  const c = hue(user);
  return h(
    'span',
    { class: `avatar av-${size}`, 'aria-hidden': 'true', style: `--av1:hsl(${c} 55% 38%);--av2:hsl(${(c + 40) % 360} 60% 52%)` },
    h('span', { class: 'initials' }, initials(name)),
  );
}

/** "1 person" / "3 people" style counts. */
export function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}
