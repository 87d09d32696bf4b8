// Icons as inline SVG (24×24, drawn with the current text colour), so that they render the same
// everywhere: no icon depends on an emoji font. Each shape is a path, or `c cx cy r` (circle),
// or `r x y w h rx` (rounded rectangle).

const SHAPES = {
  mic: ['M12 3a3 3 0 0 0-3 3v6a3 3 0 0 0 6 0V6a3 3 0 0 0-3-3z', 'M5 11a7 7 0 0 0 14 0', 'M12 18v3', 'M9 21h6'],
  micOff: ['M9 9v3a3 3 0 0 0 5.1 2.1', 'M15 10V6a3 3 0 0 0-5.7-1.3', 'M5 11a7 7 0 0 0 11.4 5.4', 'M19 11a7 7 0 0 1-.6 2.8', 'M12 18v3', 'M9 21h6', 'M4 4l16 16'],
  hand: [
    'M8 13V6a1.5 1.5 0 0 1 3 0v5',
    'M11 11V4.5a1.5 1.5 0 0 1 3 0V11',
    'M14 11V6a1.5 1.5 0 0 1 3 0v7.5a7 7 0 0 1-7 7h-.6a6 6 0 0 1-4.9-2.5l-2.6-3.7a1.6 1.6 0 0 1 2.5-2L8 15',
  ],
  leave: ['M14 4h4a2 2 0 0 1 2 2v12a2 2 0 0 1-2 2h-4', 'M9 17l-5-5 5-5', 'M4 12h11'],
  share: ['c 18 5 2.6', 'c 6 12 2.6', 'c 18 19 2.6', 'M8.3 13.3l7.4 4.4', 'M15.7 6.3l-7.4 4.4'],
  headphones: ['M4 17v-5a8 8 0 0 1 16 0v5', 'M4 14h3v6H5.5A1.5 1.5 0 0 1 4 18.5z', 'M20 14h-3v6h1.5a1.5 1.5 0 0 0 1.5-1.5z'],
  headphonesOff: ['M4 17v-5a8 8 0 0 1 2.3-5.7', 'M9 4.6A8 8 0 0 1 20 12v4', 'M4 14h3v6H5.5A1.5 1.5 0 0 1 4 18.5z', 'M17 17v3h1.5', 'M3 3l18 18'],
  bell: ['M6 9a6 6 0 0 1 12 0c0 6 2.5 7.5 2.5 7.5h-17S6 15 6 9', 'M10.3 20a2 2 0 0 0 3.4 0'],
  bellOn: ['M6 9a6 6 0 0 1 12 0c0 6 2.5 7.5 2.5 7.5h-17S6 15 6 9', 'M10.3 20a2 2 0 0 0 3.4 0', 'M2.5 7.5A9 9 0 0 1 5 3', 'M21.5 7.5A9 9 0 0 0 19 3'],
  users: ['c 9 8 3.5', 'M2.5 20a6.5 6.5 0 0 1 13 0', 'c 17 9 2.5', 'M16.5 14.2a5 5 0 0 1 5 5.3'],
  user: ['c 12 8 4', 'M4 21a8 8 0 0 1 16 0'],
  check: ['M5 12.5l4.5 4.5L19 7.5'],
  x: ['M6 6l12 12', 'M18 6L6 18'],
  down: ['M12 4v14', 'M6 12l6 6 6-6'],
  undo: ['M9 14L4 9l5-5', 'M4 9h10.5a5.5 5.5 0 0 1 0 11H11'],
  ban: ['c 12 12 9', 'M5.7 5.7l12.6 12.6'],
  clock: ['c 12 12 9', 'M12 7v5l3 2'],
  link: ['M10 14a4 4 0 0 0 5.7 0l3-3a4 4 0 0 0-5.7-5.7l-1 1', 'M14 10a4 4 0 0 0-5.7 0l-3 3a4 4 0 0 0 5.7 5.7l1-1'],
  copy: ['r 8 8 12 12 2', 'M16 8V6a2 2 0 0 0-2-2H6a2 2 0 0 0-2 2v8a2 2 0 0 0 2 2h2'],
  speaker: ['M4 9h4l5-4v14l-5-4H4z', 'M16.5 8.5a5 5 0 0 1 0 7', 'M19 6a8.5 8.5 0 0 1 0 12'],
  open: ['M7 17L17 7', 'M8 7h9v9'],
  plus: ['M12 5v14', 'M5 12h14'],
  star: ['M12 3l2.7 5.6 6.1.9-4.4 4.3 1 6.1L12 17l-5.5 2.9 1-6.1-4.4-4.3 6.1-.9z'],
  calendar: ['r 3 5 18 16 2', 'M3 10h18', 'M8 3v4', 'M16 3v4'],
  stop: ['r 6 6 12 12 2'],
  alert: ['M12 3l9.5 17h-19z', 'M12 10v4', 'M12 17.5v.5'],
  smile: ['c 12 12 9', 'M8.5 14.5a4.5 4.5 0 0 0 7 0', 'M9 9.5v.5', 'M15 9.5v.5'],
  signal: ['c 12 12 2', 'M7.8 7.8a6 6 0 0 0 0 8.4', 'M16.2 7.8a6 6 0 0 1 0 8.4', 'M5 5a10 10 0 0 0 0 14', 'M19 5a10 10 0 0 1 0 14'],
} as const;

export type IconName = keyof typeof SHAPES;

const NS = 'http://www.w3.org/2000/svg';

/** An icon; decorative (hidden from assistive technology) unless `label` names it. */
export function icon(name: IconName, label?: string, cls = 'icon'): SVGSVGElement {
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', cls);
  svg.setAttribute('fill', 'none');
  svg.setAttribute('stroke', 'currentColor');
  svg.setAttribute('stroke-width', '2');
  svg.setAttribute('stroke-linecap', 'round');
  svg.setAttribute('stroke-linejoin', 'round');
  svg.setAttribute('data-icon', name);
  if (label) {
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', label);
  } else {
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
  }
  for (const shape of SHAPES[name]) {
    const [kind, ...n] = shape.split(' ');
    let el: SVGElement;
    if (kind === 'c') {
      el = document.createElementNS(NS, 'circle');
      el.setAttribute('cx', n[0]);
      el.setAttribute('cy', n[1]);
      el.setAttribute('r', n[2]);
    } else if (kind === 'r') {
      el = document.createElementNS(NS, 'rect');
      el.setAttribute('x', n[0]);
      el.setAttribute('y', n[1]);
      el.setAttribute('width', n[2]);
      el.setAttribute('height', n[3]);
      el.setAttribute('rx', n[4]);
    } else {
      el = document.createElementNS(NS, 'path');
      el.setAttribute('d', shape);
    }
    svg.append(el);
  }
  return svg;
}

/** Filled, coloured glyphs for the reactions: the same on every system, emoji font or not. */
const REACTION_GLYPHS: Record<string, (string | [string, string])[]> = {
  Applause: [
    ['M6.2 13.6l5.6-7.3a1.4 1.4 0 0 1 2.2 1.7l-2.3 3 4.5-5.8a1.4 1.4 0 0 1 2.2 1.7l-4.4 5.8 3.6-4.7a1.4 1.4 0 0 1 2.2 1.7l-4.9 6.4a6 6 0 0 1-8.7 1.1 5.2 5.2 0 0 1-.9-7z', '#ffc83d'],
    ['M4.5 4.5l1.5 1.8M8 2.5l.4 2.2M2.5 8l2.1.5', 'stroke:#ffc83d'],
  ],
  Love: [['M12 20.5l-1.4-1.3C5.4 14.5 2 11.4 2 7.6 2 4.5 4.4 2 7.5 2c1.7 0 3.4.8 4.5 2.1C13.1 2.8 14.8 2 16.5 2 19.6 2 22 4.5 22 7.6c0 3.8-3.4 6.9-8.6 11.6z', '#ff4f79']],
  Laugh: [
    ['M12 2a10 10 0 1 1 0 20 10 10 0 0 1 0-20z', '#ffcc4d'],
    ['M6.5 9.5q1.5-2 3 0M14.5 9.5q1.5-2 3 0', 'stroke:#6b3a00'],
    ['M6.5 13h11a5.5 5.5 0 0 1-11 0z', '#6b3a00'],
  ],
  Fire: [
    ['M12 2c1.2 3.6 6 6 6 11.5a6 6 0 0 1-12 0c0-2.4 1.1-4.2 2.4-5.4.1 2.2 1.2 3.4 2.4 3.4-.3-3.4-.6-6.4 1.2-9.5z', '#ff7a2f'],
    ['M12 21.5a3.2 3.2 0 0 1-3.2-3.2c0-1.9 1.6-3 3.2-5 1.6 2 3.2 3.1 3.2 5a3.2 3.2 0 0 1-3.2 3.2z', '#ffd166'],
  ],
  Hundred: [
    ['M3.5 7.5L5.5 6v11M11.5 6a2.3 5.5 0 1 0 .01 0M18 6a2.3 5.5 0 1 0 .01 0', 'stroke:#ff3b5c'],
    ['M3.5 19.5h17M5 22h14', 'stroke:#ff3b5c'],
  ],
  Celebrate: [
    ['M3 21l4.5-12 7.5 7.5z', '#ffb23f'],
    ['M13 3l.8 2.2M18.5 4.5l-1.6 1.8M21 10l-2.2.4M16 9.5l3-3', 'stroke:#8b6cff'],
    ['M10 6.5a1 1 0 1 1 0 .01M19.5 14a1 1 0 1 1 0 .01M15 2.5a.8.8 0 1 1 0 .01', '#3ddc97'],
  ],
};

/** The glyph of a reaction (by its word), or null for one this app does not draw. */
export function reactionGlyph(word: string): SVGSVGElement | null {
  const shapes = REACTION_GLYPHS[word];
  if (!shapes) return null;
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', 'glyph');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  for (const shape of shapes) {
    const [d, paint] = typeof shape === 'string' ? [shape, 'currentColor'] : shape;
    const path = document.createElementNS(NS, 'path');
    path.setAttribute('d', d);
    if (paint.startsWith('stroke:')) {
      path.setAttribute('fill', 'none');
      path.setAttribute('stroke', paint.slice(7));
      path.setAttribute('stroke-width', '1.8');
      path.setAttribute('stroke-linecap', 'round');
    } else path.setAttribute('fill', paint);
    svg.append(path);
  }
  return svg;
}
