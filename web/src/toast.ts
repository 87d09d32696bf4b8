// Toasts: short messages that do not move the page, read out politely, each gone after a few
// seconds (or at once when its action is taken). One region for the whole app, so that a toast
// raised while the room is docked still shows on the screen the user browses.
import { h } from './dom';
import { icon, type IconName } from './icons';

let region: HTMLElement | null = null;

function container(): HTMLElement {
  if (!region || !region.isConnected) {
    region = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite', 'aria-label': 'Notifications' });
    document.body.append(region);
  }
  return region;
}

export interface ToastOptions {
  /** An icon before the text. */
  icon?: IconName;
  /** `warn` for things done to the user (muted, moved), `ok` for good news. */
  tone?: 'info' | 'ok' | 'warn';
  /** A button in the toast, e.g. Undo; taking it closes the toast. */
  action?: { label: string; run: () => void };
  /** How long it stays (ms). */
  ms?: number;
  /** Replaces a toast with the same key instead of stacking another. */
  key?: string;
}

export function toast(text: string, options: ToastOptions = {}): HTMLElement {
  const box = container();
  if (options.key) box.querySelector(`[data-key="${CSS.escape(options.key)}"]`)?.remove();
  const close = () => el.remove();
  const el = h(
    'div',
    { class: `toast ${options.tone ?? 'info'}`, 'data-key': options.key },
    options.icon ? icon(options.icon) : null,
    h('span', { class: 'toast-text' }, text),
    options.action
      ? h('button', { type: 'button', class: 'small toast-action', onclick: () => { close(); options.action?.run(); } }, options.action.label)
      : null,
    h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', onclick: close }, icon('x')),
  );
  box.append(el);
  // Never more than four at once: the oldest go first.
  while (box.children.length > 4) box.firstElementChild?.remove();
  window.setTimeout(close, options.ms ?? (options.action ? 9000 : 6000));
  return el;
}

/** Takes away the toast with `key`, if it still shows (what it announced is no longer so). */
export function dismiss(key: string): void {
  region?.querySelector(`[data-key="${CSS.escape(key)}"]`)?.remove();
}
