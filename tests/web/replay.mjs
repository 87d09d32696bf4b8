// The web walk-through's replay and clip part (tests/web/walkthrough.mjs calls `clipLive`
// while the room is recorded, and `replayAndClip` once it has ended): the ended page plays the recording, and WebAudio's analyser on the
// audio element hears it (energy > 0); the player can seek (the server answers range requests);
// the timeline says who spoke; "Clip" cuts the 30 s before the playhead and opens the clip's
// own page, which plays it too. `embedReplay`: signed out, the ended room's embed card plays the
// recording from its own player and seeks.

/**
 * In the live recorded room on `page`, a member clips the last 30 s once the recording holds
 * some audio, and is told it is saved.
 */
export async function clipLive(page, roomId, until) {
  await until('the recording to hold a second of audio', () =>
    page.evaluate(async (id) => {
      const token = JSON.parse(localStorage.getItem('stoa.session') || '{}').token;
      const r = await (await fetch(`/api/rooms/${id}/recordings`, { headers: { Authorization: `Bearer ${token}` } })).json();
      return r.recordings?.[0]?.size > 2000;
    }, roomId),
  );
  await page.getByRole('button', { name: 'Clip the last 30 seconds' }).click();
  await page.locator('.toast', { hasText: 'Clip saved' }).waitFor();
}

/**
 * Plays the page's first `selector` audio element through a WebAudio analyser for up to
 * `ms`; the loudest RMS seen, its duration and how far it can seek.
 */
export function listen(page, selector, ms = 6_000) {
  return page.evaluate(
    async ({ selector, ms }) => {
      const audio = document.querySelector(selector);
      if (!audio) return { error: `no ${selector}` };
      if (audio.readyState < 1) await new Promise((r) => audio.addEventListener('loadedmetadata', r, { once: true }));
      const ctx = new AudioContext();
      const source = ctx.createMediaElementSource(audio);
      const analyser = ctx.createAnalyser();
      analyser.fftSize = 2048;
      source.connect(analyser);
      analyser.connect(ctx.destination);
      await ctx.resume();
      audio.currentTime = 0;
      await audio.play();
      const buf = new Float32Array(analyser.fftSize);
      let rms = 0;
      const end = performance.now() + ms;
      while (performance.now() < end && rms < 0.01) {
        await new Promise((r) => setTimeout(r, 100));
        analyser.getFloatTimeDomainData(buf);
        let sum = 0;
        for (const x of buf) sum += x * x;
        rms = Math.max(rms, Math.sqrt(sum / buf.length));
      }
      const played = audio.currentTime;
      audio.pause();
      const seekable = audio.seekable.length ? audio.seekable.end(audio.seekable.length - 1) : 0;
      // Seek to the middle, as a person dragging the slider would.
      const middle = audio.duration / 2;
      audio.currentTime = middle;
      await new Promise((r) => audio.addEventListener('seeked', r, { once: true }));
      await ctx.close();
      return { rms, played, duration: audio.duration, seekable, seekedTo: audio.currentTime, middle };
    },
    { selector, ms },
  );
}

/**
 * On `page` (the ended room's page, after the room was recorded), the replay plays and seeks,
 * shows who spoke, and its Clip opens a clip page that plays. `ctx`: `{ log, shot, audit,
 * summary, hostName }`.
 */
export async function replayAndClip(page, { log, shot, audit, summary, hostName }) {
  const replay = page.getByRole('region', { name: 'Replay' });
  await replay.waitFor();
  await replay.getByRole('list', { name: 'Who spoke when' }).getByText(hostName).first().waitFor();
  const heard = await listen(page, '.replay audio');
  log('replay:', JSON.stringify(heard));
  if (heard.error || !(heard.rms > 0)) throw new Error(`the replay is silent in the page: ${JSON.stringify(heard)}`);
  if (!(heard.duration > 0 && heard.seekable >= heard.duration - 0.1)) throw new Error(`the replay cannot seek to its end: ${JSON.stringify(heard)}`);
  if (Math.abs(heard.seekedTo - heard.middle) > 0.5) throw new Error(`the replay did not seek: ${JSON.stringify(heard)}`);
  await shot(page, '31b-replay');
  // Clip: the 30 s before the playhead (the middle, now), on its own page.
  await replay.getByRole('button', { name: /^Clip the last 30 s/ }).click();
  await page.waitForURL(/\/clips\/[a-z0-9]{16}$/);
  await page.getByRole('heading', { level: 1 }).waitFor();
  await page.getByText(`Speaking: `).waitFor();
  const link = await page.getByRole('textbox', { name: 'Link to this clip' }).inputValue();
  if (!link.endsWith(new URL(page.url()).pathname)) throw new Error(`the clip's link ${link} is not its page ${page.url()}`);
  const clip = await listen(page, '.clip audio');
  log('clip:', JSON.stringify(clip));
  if (clip.error || !(clip.rms > 0)) throw new Error(`the clip is silent in the page: ${JSON.stringify(clip)}`);
  // The 30 s before the playhead, or (a playhead under 1 s) the recording's last 30 s.
  const expected = heard.seekedTo >= 1 ? Math.min(heard.seekedTo, 30) : Math.min(heard.duration, 30);
  if (Math.abs(clip.duration - expected) > 0.1) throw new Error(`the clip lasts ${clip.duration} s, not ${expected} s`);
  await shot(page, '31c-clip');
  await audit(page, 'clip');
  summary.replay = { replay: heard, clip };
}

/**
 * The ended room's embed card in a browser context with no session at all, as in someone else's
 * page: it plays the recording from the card's own player (WebAudio hears it, energy > 0), the
 * player seeks (range requests), who spoke when is drawn along it, the card still fits its
 * snippet, and nobody is signed in. `ctx`: `{ base, wait, viewport, fits, shot, log, summary }`.
 */
export async function embedReplay(browser, roomId, { base, wait, viewport, fits, shot, log, summary }) {
  const context = await browser.newContext({ viewport, baseURL: base });
  try {
    const embed = await context.newPage();
    embed.setDefaultTimeout(wait);
    const calls = [];
    embed.on('request', (r) => calls.push(`${r.method()} ${new URL(r.url()).pathname}`));
    await embed.goto(`/embed/rooms/${encodeURIComponent(roomId)}`);
    await embed.getByText('Ended', { exact: true }).waitFor();
    await embed.locator('.embed-card .embed-replay audio').waitFor();
    await embed.locator('.embed-card .timeline-span').first().waitFor();
    await fits(embed, 'ended, with its replay');
    await shot(embed, '33-embed-ended');
    const heard = await listen(embed, '.embed-card audio');
    log('embed replay:', JSON.stringify(heard));
    if (heard.error || !(heard.rms > 0)) throw new Error(`the embed card's replay is silent: ${JSON.stringify(heard)}`);
    if (!(heard.duration > 0 && heard.seekable >= heard.duration - 0.1)) throw new Error(`the embed card's replay cannot seek to its end: ${JSON.stringify(heard)}`);
    if (Math.abs(heard.seekedTo - heard.middle) > 0.5) throw new Error(`the embed card's replay did not seek: ${JSON.stringify(heard)}`);
    const audio = calls.filter((c) => /\/recordings\/[^/]+\/audio$/.test(c));
    if (!audio.length) throw new Error(`the embed card did not fetch the recording: ${calls.join(', ')}`);
    if (await embed.evaluate(() => localStorage.getItem('stoa.session'))) throw new Error('the embed card signed someone in');
    summary.embedReplay = heard;
  } finally {
    await context.close();
  }
}
