// What e2e.mjs and edge.mjs share: the static server for the test page (page.html, page.js and
// livekit-client's UMD bundle from node_modules), `call`, which runs one of the page's
// window.e2e methods, and `sineWav`, the tone their fake microphones play.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** Static server for the page and the livekit-client bundle, on 127.0.0.1:<ephemeral>. */
export async function startPageServer() {
  const umd = join(here, 'node_modules', 'livekit-client', 'dist', 'livekit-client.umd.js');
  const files = {
    '/': { path: join(here, 'page.html'), type: 'text/html; charset=utf-8' },
    '/page.js': { path: join(here, 'page.js'), type: 'text/javascript; charset=utf-8' },
    '/livekit-client.umd.js': { path: umd, type: 'text/javascript; charset=utf-8' },
  };
  const contents = {};
  for (const [route, f] of Object.entries(files)) {
    contents[route] = { body: readFileSync(f.path), type: f.type };
  }
  const server = createServer((req, res) => {
    const route = new URL(req.url, 'http://127.0.0.1').pathname;
    const file = contents[route];
    if (route === '/favicon.ico') {
      res.writeHead(204);
      res.end();
      return;
    }
    if (!file) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': file.type, 'cache-control': 'no-store' });
    res.end(file.body);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return server;
}

/** Calls window.e2e[method](...args) in `page`. */
export function call(page, method, ...args) {
  return page.evaluate(([m, a]) => window.e2e[m](...a), [method, args]);
}

/** 16-bit mono PCM WAV, 48 kHz, `seconds` of a sine at `freq` Hz and `amplitude` (0..1). */
export function sineWav(freq, seconds, amplitude) {
  const rate = 48_000;
  const samples = rate * seconds;
  const buf = Buffer.alloc(44 + samples * 2);
  buf.write('RIFF', 0);
  buf.writeUInt32LE(36 + samples * 2, 4);
  buf.write('WAVE', 8);
  buf.write('fmt ', 12);
  buf.writeUInt32LE(16, 16); // fmt chunk size
  buf.writeUInt16LE(1, 20); // PCM
  buf.writeUInt16LE(1, 22); // mono
  buf.writeUInt32LE(rate, 24);
  buf.writeUInt32LE(rate * 2, 28); // byte rate
  buf.writeUInt16LE(2, 32); // block align
  buf.writeUInt16LE(16, 34); // bits per sample
  buf.write('data', 36);
  buf.writeUInt32LE(samples * 2, 40);
  for (let i = 0; i < samples; i++) {
    const v = Math.round(amplitude * 32767 * Math.sin((2 * Math.PI * freq * i) / rate));
    buf.writeInt16LE(v, 44 + i * 2);
  }
  return buf;
}
