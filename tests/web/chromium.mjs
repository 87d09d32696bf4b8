// How the web scenarios start headless Chromium: the binary and the flags every page needs in
// a test's private network namespace, with a fake microphone.

/** The Chromium binary (`CHROMIUM` overrides Debian's). */
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/**
 * Chromium's flags for a page whose fake microphone plays `wav`. `micAllowed: false` refuses the
 * microphone prompt, as when a person blocks it; `autoplay: false` keeps Chrome's default
 * policy, so a page opened without a gesture is blocked and shows "Tap to listen".
 */
export function chromiumArgs(wav, { micAllowed = true, autoplay = true } = {}) {
  return [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    ...(micAllowed ? ['--use-fake-ui-for-media-stream'] : []),
    '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${wav}`,
    autoplay ? '--autoplay-policy=no-user-gesture-required' : '--autoplay-policy=document-user-activation-required',
    // Loopback is the only network in the test's namespace.
    '--allow-loopback-in-peer-connection',
    '--disable-features=WebRtcHideLocalIpsWithMdns',
  ];
}
