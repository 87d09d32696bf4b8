//! Real Opus for speakers, and the send stamp each packet carries.
//!
//! Speakers send a 1 kHz tone encoded once by libopus into a one-second loop of 20 ms frames
//! (encoding per speaker would cost the harness CPU the server should get). Each sent packet is
//! rewritten from Opus code 0 (one frame) to code 3 (one frame, with padding) and the padding
//! carries a [`Stamp`]: decoders skip padding (RFC 6716 §3.2.5), so what listeners receive is
//! still the real audio, and the listener that decodes ([`AudioCheck`]) proves it.

use opus::{Application, Channels, Decoder, Encoder};

/// Opus sample rate used throughout (the WebRTC clock rate).
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples per 20 ms frame at 48 kHz; also the RTP timestamp step per packet.
pub const FRAME_SAMPLES: usize = 960;
/// Frames in the pre-encoded loop: one second.
const LOOP_FRAMES: usize = 50;
/// Tone frequency; an integer number of cycles per frame keeps the loop seamless.
const TONE_HZ: f64 = 1_000.0;
/// Encoder bitrate, typical of voice in WebRTC.
const BITRATE: i32 = 32_000;
/// Marks a stamp in Opus padding, so unrelated padding is never read as one.
const MAGIC: [u8; 4] = *b"STB1";
/// Bytes of padding a stamp occupies: magic, sequence, send time.
const STAMP_LEN: usize = 4 + 4 + 8;

/// What went wrong with libopus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// libopus refused to create a codec or to encode or decode.
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
}

/// A one-second loop of real Opus frames of a tone, shared by every speaker.
#[derive(Debug, Clone)]
pub struct ToneLoop {
    frames: Vec<Vec<u8>>,
}

impl ToneLoop {
    /// Encode the loop of the 1 kHz tone with libopus.
    pub fn encode() -> Result<ToneLoop, AudioError> {
        ToneLoop::encode_tone(TONE_HZ as u32)
    }

    /// Encode the loop of a `hz` tone (whole hertz, so the one-second loop is seamless): tests
    /// give speakers different tones to tell them apart in a mix.
    pub fn encode_tone(hz: u32) -> Result<ToneLoop, AudioError> {
        let mut encoder = Encoder::new(SAMPLE_RATE, Channels::Mono, Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(BITRATE))?;
        let mut frames = Vec::with_capacity(LOOP_FRAMES);
        let mut pcm = vec![0i16; FRAME_SAMPLES];
        let mut n = 0usize;
        // Two loops' worth, keeping the second: the encoder has settled by then.
        for i in 0..2 * LOOP_FRAMES {
            for s in &mut pcm {
                let t = n as f64 / f64::from(SAMPLE_RATE);
                *s = (0.3
                    * f64::from(i16::MAX)
                    * (2.0 * std::f64::consts::PI * f64::from(hz) * t).sin())
                    as i16;
                n += 1;
            }
            let packet = encoder.encode_vec(&pcm, 1500)?;
            if i >= LOOP_FRAMES {
                frames.push(packet);
            }
        }
        Ok(ToneLoop { frames })
    }

    /// Frame `index` of the endless loop.
    pub fn frame(&self, index: u64) -> &[u8] {
        let i = usize::try_from(index % self.frames.len() as u64).unwrap_or(0);
        &self.frames[i]
    }
}

/// What a speaker puts into each packet's padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The speaker's frame counter.
    pub seq: u32,
    /// Send time, nanoseconds since the run's [`Clock`](crate::clock::Clock) epoch.
    pub sent_ns: u64,
}

impl Stamp {
    /// `frame` (one Opus packet) with this stamp in its padding. A packet that is not code 0
    /// (one frame, the only kind libopus emits for 20 ms) is returned unchanged.
    pub fn apply(&self, frame: &[u8]) -> Vec<u8> {
        let Some((&toc, data)) = frame.split_first() else {
            return frame.to_vec();
        };
        if toc & 0b11 != 0 {
            return frame.to_vec();
        }
        let mut out = Vec::with_capacity(frame.len() + 3 + STAMP_LEN);
        out.push(toc | 0b11); // code 3: frame count byte follows
        out.push(0b0100_0001); // v=0 (CBR), p=1 (padding), M=1 frame
        out.push(STAMP_LEN as u8); // padding length, < 255 so one byte
        out.extend_from_slice(data);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.sent_ns.to_be_bytes());
        out
    }

    /// The stamp in a received Opus packet's padding, if it has one.
    pub fn read(packet: &[u8]) -> Option<Stamp> {
        let (&toc, rest) = packet.split_first()?;
        if toc & 0b11 != 3 {
            return None;
        }
        let (&count, rest) = rest.split_first()?;
        if count & 0b0100_0000 == 0 {
            return None;
        }
        // Padding length: bytes of 255 add 254 and continue (RFC 6716 §3.2.5).
        let mut padding = 0usize;
        let mut rest = rest;
        loop {
            let (&b, r) = rest.split_first()?;
            rest = r;
            if b == 255 {
                padding += 254;
            } else {
                padding += usize::from(b);
                break;
            }
        }
        if padding < STAMP_LEN || padding > rest.len() {
            return None;
        }
        let pad = &rest[rest.len() - padding..];
        let stamp = &pad[pad.len() - STAMP_LEN..];
        if stamp[..4] != MAGIC {
            return None;
        }
        let seq = u32::from_be_bytes(stamp[4..8].try_into().ok()?);
        let sent_ns = u64::from_be_bytes(stamp[8..16].try_into().ok()?);
        Some(Stamp { seq, sent_ns })
    }
}

/// Decodes what one listener hears and measures its level, to check the audio itself.
#[derive(Debug)]
pub struct AudioCheck {
    decoder: Decoder,
    pcm: Vec<i16>,
    frames: u64,
    errors: u64,
    sum_squares: f64,
    samples: u64,
}

impl AudioCheck {
    /// A mono 48 kHz decoder.
    pub fn new() -> Result<AudioCheck, AudioError> {
        Ok(AudioCheck {
            decoder: Decoder::new(SAMPLE_RATE, Channels::Mono)?,
            pcm: vec![0; FRAME_SAMPLES * 6],
            frames: 0,
            errors: 0,
            sum_squares: 0.0,
            samples: 0,
        })
    }

    /// Decode one received packet.
    pub fn decode(&mut self, packet: &[u8]) {
        match self.decoder.decode(packet, &mut self.pcm, false) {
            Ok(n) => {
                self.frames += 1;
                for &s in &self.pcm[..n] {
                    let x = f64::from(s) / f64::from(i16::MAX);
                    self.sum_squares += x * x;
                }
                self.samples += n as u64;
            }
            Err(_) => self.errors += 1,
        }
    }

    /// Frames decoded, frames refused, and the RMS level (0..1) of what was decoded.
    pub fn summary(&self) -> (u64, u64, f64) {
        let rms = if self.samples == 0 {
            0.0
        } else {
            (self.sum_squares / self.samples as f64).sqrt()
        };
        (self.frames, self.errors, rms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_the_audio_still_decodes() {
        let tone = ToneLoop::encode().unwrap();
        let stamp = Stamp {
            seq: 7,
            sent_ns: 123_456_789,
        };
        let mut check = AudioCheck::new().unwrap();
        for i in 0..50 {
            let frame = tone.frame(i);
            assert_eq!(frame[0] & 0b11, 0, "libopus emits code 0 for 20 ms");
            let packet = stamp.apply(frame);
            assert_eq!(Stamp::read(&packet), Some(stamp));
            check.decode(&packet);
        }
        let (frames, errors, rms) = check.summary();
        assert_eq!((frames, errors), (50, 0));
        // A sine at 0.3 of full scale has an RMS near 0.21.
        assert!(rms > 0.1, "rms {rms}");
    }

    #[test]
    fn unstamped_and_garbage_packets_read_as_none() {
        assert_eq!(Stamp::read(&[]), None);
        assert_eq!(Stamp::read(&[0x78, 1, 2, 3]), None);
        assert_eq!(Stamp::read(&[0x7b, 0x41, 200, 1]), None);
        assert_eq!(Stamp::read(&[0x7b, 0x41, 255]), None);
    }
}
