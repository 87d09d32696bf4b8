// What the room screen says when the microphone will not start.

/** Explains why the microphone could not start, in words a listener can act on. */
export function microphoneProblem(err: unknown): string {
  const name = err instanceof Error ? err.name : '';
  if (!window.isSecureContext) return 'Your browser only lets secure pages (https) use the microphone. Open this room over https to speak.';
  switch (name) {
    case 'NotAllowedError':
    case 'PermissionDeniedError':
      return 'Microphone access is blocked. Allow the microphone for this site (the icon next to the address bar), then press Unmute.';
    case 'NotFoundError':
    case 'DevicesNotFoundError':
      return 'No microphone was found. Connect one, then press Unmute.';
    case 'NotReadableError':
    case 'TrackStartError':
      return 'Your microphone is busy or unavailable; another app may be using it. Close it, then press Unmute.';
    default:
      return `The microphone could not start: ${err instanceof Error ? err.message : String(err)}`;
  }
}
