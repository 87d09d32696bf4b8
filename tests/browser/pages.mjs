// What e2e.mjs and edge.mjs share: the static server for the test page (page.html, page.js and
// livekit-client's UMD bundle from node_modules), and `call`, which runs one of the page's
// window.e2e methods. The tone their fake microphones play is tests/web/audio.mjs's `sineWav`.

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
