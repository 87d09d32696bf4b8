// In-page side of the browser end-to-end test (see e2e.mjs). Drives the unmodified
// livekit-client UMD bundle (global `LivekitClient`) and exposes a small API as `window.e2e`
// for e2e.mjs to call through Playwright. Every method returns plain JSON-able values.
'use strict';

(() => {
  const LK = window.LivekitClient;
  const { Room, RoomEvent, Track } = LK || {};

  // Capture settings for level checks: browser audio processing off (see test-peers.md).
  const AUDIO_CAPTURE = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };

  const state = {
    room: undefined,
    events: [],
    audioElements: [],
    t0: performance.now(),
  };

  const ms = () => Math.round(performance.now() - state.t0);

  // Every peer connection the page creates, to read the descriptions a receiver negotiated.
  state.peerConnections = [];
  const NativePeerConnection = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends NativePeerConnection {
    constructor(...args) {
      super(...args);
      state.peerConnections.push(this);
    }
  };

  // The signaling path of every WebSocket the page opens (`/rtc/v1` or `/rtc`), in order: which
  // protocol livekit-client spoke, as the page saw it.
  state.signalPaths = [];
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      try {
        state.signalPaths.push(new URL(String(url)).pathname);
      } catch {
        state.signalPaths.push(String(url));
      }
    }
  };

  function describeError(err) {
    if (err === undefined || err === null) return { message: String(err) };
    return {
      name: err.name,
      message: err.message ?? String(err),
      status: err.status,
      reason: err.reason,
      reasonName: err.reasonName,
      code: err.code,
    };
  }

  function record(event, fields) {
    const entry = { t: ms(), event, ...fields };
    state.events.push(entry);
    console.log(`[e2e] ${event} ${JSON.stringify(fields)}`);
  }

  function pubFields(publication, participant) {
    return {
      participant: participant?.identity,
      participantSid: participant?.sid,
      trackSid: publication?.trackSid,
      source: publication?.source,
      kind: publication?.kind,
    };
  }

  function hookRoom(room) {
    room
      .on(RoomEvent.SignalConnected, () => record('SignalConnected', {}))
      .on(RoomEvent.Connected, () => record('Connected', {}))
      .on(RoomEvent.ConnectionStateChanged, (s) => record('ConnectionStateChanged', { state: s }))
      .on(RoomEvent.Reconnecting, () => record('Reconnecting', {}))
      .on(RoomEvent.SignalReconnecting, () => record('SignalReconnecting', {}))
      .on(RoomEvent.Reconnected, () => record('Reconnected', {}))
      .on(RoomEvent.Disconnected, (reason) => record('Disconnected', { reason }))
      .on(RoomEvent.ParticipantConnected, (p) =>
        record('ParticipantConnected', { participant: p.identity, participantSid: p.sid }),
      )
      .on(RoomEvent.ParticipantDisconnected, (p) =>
        record('ParticipantDisconnected', { participant: p.identity, participantSid: p.sid }),
      )
      .on(RoomEvent.TrackPublished, (pub, p) => record('TrackPublished', pubFields(pub, p)))
      .on(RoomEvent.TrackUnpublished, (pub, p) => record('TrackUnpublished', pubFields(pub, p)))
      .on(RoomEvent.LocalTrackPublished, (pub, p) =>
        record('LocalTrackPublished', pubFields(pub, p)),
      )
      .on(RoomEvent.TrackSubscribed, (track, pub, p) => {
        record('TrackSubscribed', pubFields(pub, p));
        if (track.kind === Track.Kind.Audio) {
          // One <audio> element per remote track, or levels read 0 (test-peers.md gotcha 1).
          const el = track.attach();
          el.id = `audio-${pub.trackSid}`;
          el.autoplay = true;
          document.getElementById('audio').appendChild(el);
          state.audioElements.push(el);
        }
      })
      .on(RoomEvent.TrackSubscriptionFailed, (trackSid, p, reason) =>
        record('TrackSubscriptionFailed', { trackSid, participant: p?.identity, reason }),
      )
      .on(RoomEvent.TrackMuted, (pub, p) => record('TrackMuted', pubFields(pub, p)))
      .on(RoomEvent.TrackUnmuted, (pub, p) => record('TrackUnmuted', pubFields(pub, p)))
      .on(RoomEvent.DataReceived, (payload, p, _kind, topic) =>
        record('DataReceived', {
          participant: p?.identity,
          topic,
          text: new TextDecoder().decode(payload),
        }),
      )
      .on(RoomEvent.ParticipantPermissionsChanged, (_prev, p) =>
        record('ParticipantPermissionsChanged', {
          participant: p?.identity,
          local: p === room.localParticipant,
          canPublish: p?.permissions?.canPublish,
        }),
      )
      .on(RoomEvent.MediaDevicesError, (e) => record('MediaDevicesError', describeError(e)));
  }

  function remoteAudioPublication(identity) {
    const p = state.room?.remoteParticipants
      ? [...state.room.remoteParticipants.values()].find((x) => x.identity === identity)
      : undefined;
    if (!p) return { participant: undefined, publication: undefined };
    const publication = [...p.audioTrackPublications.values()][0];
    return { participant: p, publication };
  }

  window.e2e = {
    /** Is the bundle loaded and WebRTC usable? */
    info() {
      return {
        loaded: !!LK,
        version: LK?.version,
        browserSupported: LK ? LK.isBrowserSupported() : false,
        userAgent: navigator.userAgent,
      };
    },

    /**
     * Harness self-check, independent of the server: this page sends its fake microphone from
     * one RTCPeerConnection to another over loopback and plays it in an <audio> element, until
     * the receiver's inbound-rtp shows packetsReceived > 50 and totalAudioEnergy > 0. Proves
     * that Chromium gathers loopback candidates in the namespace, captures the WAV and that
     * these stats move, so a later failure of steps a-c is the server's.
     */
    async loopbackSelfTest(timeoutMs) {
      const deadline = performance.now() + timeoutMs;
      const stream = await navigator.mediaDevices.getUserMedia({ audio: AUDIO_CAPTURE });
      const pc1 = new RTCPeerConnection();
      const pc2 = new RTCPeerConnection();
      const candidates = [];
      const el = document.createElement('audio');
      el.autoplay = true;
      try {
        const exchange = (from, to) => {
          from.onicecandidate = (e) => {
            if (e.candidate) {
              candidates.push(e.candidate.candidate);
              to.addIceCandidate(e.candidate).catch(() => {});
            }
          };
        };
        exchange(pc1, pc2);
        exchange(pc2, pc1);
        pc2.ontrack = (e) => {
          el.srcObject = new MediaStream([e.track]);
        };
        document.body.appendChild(el);
        for (const track of stream.getAudioTracks()) pc1.addTrack(track, stream);
        await pc1.setLocalDescription();
        await pc2.setRemoteDescription(pc1.localDescription);
        await pc2.setLocalDescription();
        await pc1.setRemoteDescription(pc2.localDescription);
        for (;;) {
          const stats = await pc2.getStats();
          let inbound;
          let pair;
          stats.forEach((s) => {
            if (s.type === 'inbound-rtp' && s.kind === 'audio') inbound = s;
            if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
              const local = stats.get(s.localCandidateId);
              const remote = stats.get(s.remoteCandidateId);
              pair = `${local?.address}:${local?.port} -> ${remote?.address}:${remote?.port} ${local?.protocol}`;
            }
          });
          const packets = inbound?.packetsReceived ?? 0;
          const energy = inbound?.totalAudioEnergy ?? 0;
          if (packets > 50 && energy > 0) {
            return {
              ok: true,
              pair,
              packetsReceived: packets,
              totalAudioEnergy: energy,
              audioLevel: inbound.audioLevel,
              candidates,
            };
          }
          if (performance.now() > deadline) {
            throw new Error(
              `loopback self-test: after ${timeoutMs} ms packetsReceived=${packets} ` +
                `totalAudioEnergy=${energy} ice=${pc2.iceConnectionState} ` +
                `candidates=${JSON.stringify(candidates)}`,
            );
          }
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
      } finally {
        pc1.close();
        pc2.close();
        el.remove();
        for (const track of stream.getTracks()) track.stop();
      }
    },

    /** Joins the room. Resolves once livekit-client says connected. */
    async connect(url, token, rtcConfig, options) {
      LK.setLogLevel(window.__e2eLogLevel || 'debug');
      // options.legacy: livekit-client's two-connection protocol on /rtc
      // (`singlePeerConnection: false`) instead of its default, one connection on /rtc/v1.
      const room = new Room({
        audioCaptureDefaults: AUDIO_CAPTURE,
        ...(options?.legacy ? { singlePeerConnection: false } : {}),
      });
      state.room = room;
      hookRoom(room);
      try {
        // rtcConfig (e.g. {iceTransportPolicy: 'relay'}) is merged with the JoinResponse's
        // ICE servers by livekit-client.
        await room.connect(url, token, rtcConfig ? { rtcConfig } : undefined);
      } catch (e) {
        record('ConnectFailed', describeError(e));
        return { ok: false, error: describeError(e) };
      }
      const lp = room.localParticipant;
      return {
        ok: true,
        roomName: room.name,
        identity: lp.identity,
        sid: lp.sid,
        canPublish: lp.permissions?.canPublish,
        canSubscribe: lp.permissions?.canSubscribe,
        serverVersion: room.serverInfo?.version,
        remote: [...room.remoteParticipants.values()].map((p) => p.identity),
        signalPaths: [...state.signalPaths],
      };
    },

    /** The signaling paths of the WebSockets opened so far, in order. */
    signalPaths() {
      return [...state.signalPaths];
    },

    /** Turns on the microphone and publishes it. */
    async publishMicrophone() {
      try {
        const pub = await state.room.localParticipant.setMicrophoneEnabled(true, AUDIO_CAPTURE);
        if (!pub) return { ok: false, error: { message: 'setMicrophoneEnabled returned no publication' } };
        return {
          ok: true,
          trackSid: pub.trackSid,
          source: pub.source,
          muted: pub.isMuted,
        };
      } catch (e) {
        return { ok: false, error: describeError(e) };
      }
    },

    /** Remote participants and their publications, as this page sees them. */
    remoteView() {
      if (!state.room) return [];
      return [...state.room.remoteParticipants.values()].map((p) => ({
        identity: p.identity,
        sid: p.sid,
        tracks: [...p.trackPublications.values()].map((pub) => ({
          trackSid: pub.trackSid,
          source: pub.source,
          kind: pub.kind,
          subscribed: pub.isSubscribed,
          hasTrack: !!pub.track,
          muted: pub.isMuted,
        })),
      }));
    },

    /** Events recorded so far, optionally only those named `name`. */
    events(name) {
      return name ? state.events.filter((e) => e.event === name) : state.events;
    },

    /** Inbound RTP stats of the audio track `identity` publishes, as this page receives it. */
    async inboundAudioStats(identity) {
      const { publication } = remoteAudioPublication(identity);
      const track = publication?.track;
      if (!track) return { ok: false, why: `no subscribed audio track from ${identity}` };
      const report = await track.getRTCStatsReport();
      if (!report) return { ok: false, why: 'track has no receiver stats' };
      let inbound;
      let pair;
      let localCandidate;
      let codec;
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') inbound = s;
      });
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
          const local = report.get(s.localCandidateId);
          const remote = report.get(s.remoteCandidateId);
          pair = `${local?.address}:${local?.port} -> ${remote?.address}:${remote?.port} ${local?.protocol}`;
          localCandidate = local;
        }
        if (inbound && s.type === 'codec' && s.id === inbound.codecId) codec = s.mimeType;
      });
      if (!inbound) return { ok: false, why: 'no inbound-rtp audio entry yet' };
      const el = document.getElementById(`audio-${publication.trackSid}`);
      return {
        ok: true,
        trackSid: publication.trackSid,
        packetsReceived: inbound.packetsReceived ?? 0,
        packetsLost: inbound.packetsLost ?? 0,
        bytesReceived: inbound.bytesReceived ?? 0,
        totalAudioEnergy: inbound.totalAudioEnergy ?? 0,
        totalSamplesDuration: inbound.totalSamplesDuration ?? 0,
        audioLevel: inbound.audioLevel ?? 0,
        jitter: inbound.jitter,
        codec,
        pair,
        // 'relay' when the media goes through a TURN server; relayProtocol is how this page
        // reaches that server ('udp', 'tcp' or 'tls').
        localCandidateType: localCandidate?.candidateType,
        relayProtocol: localCandidate?.relayProtocol,
        audioElementPlaying: el ? !el.paused : false,
      };
    },

    /**
     * The dominant frequency (Hz) of the audio `identity` publishes, as this page decodes it:
     * WebAudio's analyser over the subscribed track, its spectra averaged over `ms`.
     */
    async dominantFrequency(identity, ms) {
      const { publication } = remoteAudioPublication(identity);
      const track = publication?.track?.mediaStreamTrack;
      if (!track) return { ok: false, why: `no subscribed audio track from ${identity}` };
      const ctx = new AudioContext();
      try {
        await ctx.resume();
        const source = ctx.createMediaStreamSource(new MediaStream([track]));
        const analyser = ctx.createAnalyser();
        analyser.fftSize = 8192;
        analyser.smoothingTimeConstant = 0;
        source.connect(analyser);
        const bins = new Float32Array(analyser.frequencyBinCount);
        const sum = new Float64Array(analyser.frequencyBinCount);
        const end = performance.now() + ms;
        let frames = 0;
        while (performance.now() < end) {
          await new Promise((resolve) => setTimeout(resolve, 100));
          analyser.getFloatFrequencyData(bins);
          for (let i = 0; i < bins.length; i++) sum[i] += Math.pow(10, bins[i] / 10);
          frames += 1;
        }
        let best = 1;
        for (let i = 2; i < sum.length; i++) if (sum[i] > sum[best]) best = i;
        const peakDb = 10 * Math.log10(sum[best] / frames);
        return { ok: true, hz: (best * ctx.sampleRate) / analyser.fftSize, peakDb, frames };
      } finally {
        await ctx.close();
      }
    },

    /**
     * The codecs negotiated for audio, in order (the first is the one sent): of the local
     * microphone's sender when `identity` is empty, else of the receiver of `identity`'s audio.
     */
    negotiatedAudioCodecs(identity) {
      let params;
      if (!identity) {
        const pub = state.room?.localParticipant?.getTrackPublication(Track.Source.Microphone);
        params = pub?.track?.sender?.getParameters();
      } else {
        params = remoteAudioPublication(identity).publication?.track?.receiver?.getParameters();
      }
      if (!params) return { ok: false, why: 'no sender or receiver yet' };
      return {
        ok: true,
        codecs: params.codecs.map((c) => `${c.mimeType}/${c.clockRate}${c.sdpFmtpLine ? ` ${c.sdpFmtpLine}` : ''}`),
      };
    },

    /**
     * The codecs of the answer for the m-line on which `identity`'s audio arrives, in the
     * answer's order: what the sender may send there. The answer is the page's own (two
     * connections: the server offers) or the server's (one connection: the page offers).
     */
    answeredAudioCodecs(identity) {
      const receiver = remoteAudioPublication(identity).publication?.track?.receiver;
      if (!receiver) return { ok: false, why: 'no receiver yet' };
      for (const pc of state.peerConnections) {
        const transceiver = pc.getTransceivers().find((t) => t.receiver === receiver);
        if (!transceiver) continue;
        const answer =
          pc.currentLocalDescription?.type === 'answer' ? pc.currentLocalDescription : pc.currentRemoteDescription;
        const sections = (answer?.sdp ?? '').split(/\r?\nm=/);
        const section = sections.find((m) => m.split(/\r?\n/).includes(`a=mid:${transceiver.mid}`));
        if (!section) return { ok: false, why: `no m-line with mid ${transceiver.mid} in the answer` };
        const lines = section.split(/\r?\n/);
        const pts = lines[0].split(' ').slice(3);
        const names = Object.fromEntries(
          lines
            .map((l) => l.match(/^a=rtpmap:(\d+) ([^/]+)\/(\d+)/))
            .filter(Boolean)
            .map((m) => [m[1], `audio/${m[2]}/${m[3]}`]),
        );
        return { ok: true, codecs: pts.map((pt) => names[pt] ?? pt), direction: transceiver.currentDirection };
      }
      return { ok: false, why: 'no connection holds the receiver' };
    },

    /** Sends `text` as a reliable data message under `topic`. */
    async publishData(text, topic) {
      try {
        await state.room.localParticipant.publishData(new TextEncoder().encode(text), {
          reliable: true,
          topic,
        });
        return { ok: true };
      } catch (e) {
        return { ok: false, error: describeError(e) };
      }
    },

    /** Tries to publish the microphone; reports whether (and how) it was refused. */
    async tryPublishMicrophone() {
      try {
        const pub = await state.room.localParticipant.setMicrophoneEnabled(true, AUDIO_CAPTURE);
        return { refused: false, trackSid: pub?.trackSid };
      } catch (e) {
        return { refused: true, error: describeError(e) };
      }
    },

    /** Mutes the local microphone (keeps it published). */
    async muteMicrophone() {
      try {
        const pub = await state.room.localParticipant.setMicrophoneEnabled(false);
        return { ok: true, trackSid: pub?.trackSid, muted: pub?.isMuted };
      } catch (e) {
        return { ok: false, error: describeError(e) };
      }
    },

    /**
     * Hostile use of the unmodified client: claims permissions the server did not grant
     * (livekit-client checks its local copy before it asks the server), then turns the
     * microphone on. Bounded by `timeoutMs`; reports how the attempt ended.
     */
    async forcePublishMicrophone(timeoutMs) {
      const lp = state.room.localParticipant;
      if (lp.permissions) {
        lp.permissions.canPublish = true;
        lp.permissions.canPublishSources = [];
      }
      const attempt = lp.setMicrophoneEnabled(true, AUDIO_CAPTURE).then(
        (pub) => ({ published: !!pub?.trackSid, trackSid: pub?.trackSid }),
        (e) => ({ published: false, error: describeError(e) }),
      );
      const timeout = new Promise((resolve) =>
        setTimeout(() => resolve({ published: false, error: { message: `no answer in ${timeoutMs} ms` } }), timeoutMs),
      );
      return Promise.race([attempt, timeout]);
    },

    /**
     * Every way the client has to send data to the room, each bounded by `timeoutMs`:
     * publishData (reliable and lossy), sendText and streamText, on `topic`. With `forgedIdentity`
     * the client names that identity as the sender of its user packets. Returns each outcome.
     */
    async sendEverything(text, topic, forgedIdentity, timeoutMs) {
      const lp = state.room.localParticipant;
      if (lp.permissions) lp.permissions.canPublishData = true;
      const bounded = (name, p) =>
        Promise.race([
          p.then(
            () => ({ name, sent: true }),
            (e) => ({ name, sent: false, error: describeError(e) }),
          ),
          new Promise((resolve) => setTimeout(() => resolve({ name, sent: false, timedOut: true }), timeoutMs)),
        ]);
      const bytes = new TextEncoder().encode(text);
      const real = lp.identity;
      const results = [];
      // publishData stamps the packet with `this.identity` synchronously.
      if (forgedIdentity) lp.identity = forgedIdentity;
      const reliable = lp.publishData(bytes, { reliable: true, topic });
      const lossy = lp.publishData(bytes, { reliable: false, topic });
      lp.identity = real;
      results.push(await bounded('publishData reliable', reliable));
      results.push(await bounded('publishData lossy', lossy));
      if (typeof lp.sendText === 'function') {
        results.push(await bounded('sendText', lp.sendText(text, { topic })));
      }
      if (typeof lp.streamText === 'function') {
        results.push(
          await bounded(
            'streamText',
            (async () => {
              const writer = await lp.streamText({ topic });
              await writer.write(text);
              await writer.close();
            })(),
          ),
        );
      }
      return results;
    },

    /** Records text streams on `topics` as TextStreamReceived events. */
    watchTextStreams(topics) {
      for (const topic of topics) {
        state.room.registerTextStreamHandler(topic, async (reader, info) => {
          let text;
          try {
            text = await reader.readAll();
          } catch (e) {
            text = `(unreadable: ${describeError(e).message})`;
          }
          record('TextStreamReceived', { participant: info?.identity, topic, text });
        });
      }
      return { ok: true };
    },

    /** This page's own permissions as livekit-client holds them (the server's last word). */
    localPermissions() {
      const p = state.room?.localParticipant?.permissions;
      return { canPublish: p?.canPublish, canPublishData: p?.canPublishData };
    },

    /** This page's own participant sid and the room's connection state. */
    localSid() {
      return { sid: state.room?.localParticipant?.sid, state: state.room?.state };
    },

    /**
     * The local UDP ports of the connection that receives `identity`'s audio (its local ICE
     * candidates), so that a test can cut exactly this page's media path.
     */
    async mediaPorts(identity) {
      const { publication } = remoteAudioPublication(identity);
      const report = await publication?.track?.getRTCStatsReport();
      if (!report) return [];
      const ports = new Set();
      report.forEach((s) => {
        if (s.type === 'local-candidate' && s.protocol === 'udp' && s.port) ports.add(s.port);
      });
      return [...ports];
    },

    /** Leaves the room. */
    async disconnect() {
      if (!state.room) return { ok: true };
      await state.room.disconnect();
      return { ok: true, state: state.room.state };
    },
  };
})();
