import { defineConfig } from 'vite';

// The app is served by `stoa serve` from the embedded `dist/`; `npm run dev` proxies the
// server's routes to a local `stoa serve --dev`.
const server = 'http://127.0.0.1:7880';

export default defineConfig({
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 1024 },
  server: {
    proxy: {
      '/api': { target: server, ws: true },
      '/rtc': { target: server, ws: true },
    },
  },
});
