//! Opus packets as RFC 6716 §3 frames them: duration from the TOC byte, validity, and the
//! zero-length "lost frame" packets that fill gaps.
//!
//! Nothing here decodes audio: the per-track recorder only needs each packet's duration (for
//! granule positions) and a way to say "nothing was sent here" that every player understands.

/// Samples per second of every Opus timeline here (RTP clock rate and Ogg granule rate).
pub const SAMPLE_RATE: u32 = 48_000;

/// Samples in 2.5 ms, the smallest Opus frame and the unit gaps are filled in
/// (<https://www.rfc-editor.org/rfc/rfc7845#section-4.1>).
pub const GAP_QUANTUM: u64 = 120;

/// The longest packet Opus allows: 120 ms (<https://www.rfc-editor.org/rfc/rfc6716#section-3.2.5>).
pub const MAX_PACKET_SAMPLES: u32 = 5_760;

/// The longest frame payload in bytes (<https://www.rfc-editor.org/rfc/rfc6716#section-3.4>, R2).
const MAX_FRAME_BYTES: usize = 1_275;

/// TOC configuration of a fullband CELT 20 ms frame; configs 28..=31 are fullband CELT frames of
/// 2.5, 5, 10 and 20 ms (<https://www.rfc-editor.org/rfc/rfc6716#section-3.1>).
const CELT_FB_20MS: u8 = 31;

/// Why a payload is not an Opus packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// No bytes at all (R1).
    #[error("empty Opus packet")]
    Empty,
    /// The frame framing of codes 1-3 does not fit the packet's length (R2-R7).
    #[error("Opus packet framing does not fit its length")]
    Framing,
    /// A code 3 packet with no frames or more than 120 ms of them (R5).
    #[error("Opus packet holds no frames or more than 120 ms")]
    FrameCount,
}

/// Samples (at 48 kHz) of one frame of TOC configuration `config` (0..=31).
pub fn frame_samples(config: u8) -> u32 {
    match config {
        // SILK: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1_920, 2_880][usize::from(config % 4)],
        // Hybrid: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    }
}

/// Duration of an Opus packet in 48 kHz samples, after checking that its framing is valid
/// (RFC 6716 §3.4 R1-R7). The frames' contents are not checked: that is the decoder's job, and
/// a decoder treats a corrupt frame as a lost one.
pub fn packet_samples(packet: &[u8]) -> Result<u32, PacketError> {
    let (&toc, rest) = packet.split_first().ok_or(PacketError::Empty)?;
    let frame = frame_samples(toc >> 3);
    let frames = match toc & 0b11 {
        0 => {
            if rest.len() > MAX_FRAME_BYTES {
                return Err(PacketError::Framing);
            }
            1
        }
        1 => {
            if rest.len() % 2 != 0 || rest.len() / 2 > MAX_FRAME_BYTES {
                return Err(PacketError::Framing);
            }
            2
        }
        2 => {
            let (first, used) = frame_length(rest).ok_or(PacketError::Framing)?;
            let remaining = rest.len() - used;
            if first > remaining || remaining - first > MAX_FRAME_BYTES {
                return Err(PacketError::Framing);
            }
            2
        }
        _ => code3_frames(rest, frame)?,
    };
    Ok(frame * frames)
}

/// Frame count of a code 3 packet (`rest` is the packet after its TOC byte), after checking
/// its padding and frame lengths fit.
fn code3_frames(rest: &[u8], frame: u32) -> Result<u32, PacketError> {
    let (&count, mut rest) = rest.split_first().ok_or(PacketError::Framing)?;
    let frames = u32::from(count & 0x3f);
    if frames == 0 || frames * frame > MAX_PACKET_SAMPLES {
        return Err(PacketError::FrameCount);
    }
    let vbr = count & 0x80 != 0;
    let padded = count & 0x40 != 0;
    let mut padding = 0usize;
    if padded {
        // Padding length: each 255 byte adds 254 and continues (§3.2.5).
        loop {
            let (&b, r) = rest.split_first().ok_or(PacketError::Framing)?;
            rest = r;
            if b == 255 {
                padding += 254;
            } else {
                padding += usize::from(b);
                break;
            }
        }
    }
    let data = rest
        .len()
        .checked_sub(padding)
        .ok_or(PacketError::Framing)?;
    if vbr {
        let mut used = 0usize;
        let mut sum = 0usize;
        for _ in 1..frames {
            let (len, n) = frame_length(&rest[used..]).ok_or(PacketError::Framing)?;
            used += n;
            sum += len;
        }
        let total = data.checked_sub(used).ok_or(PacketError::Framing)?;
        let last = total.checked_sub(sum).ok_or(PacketError::Framing)?;
        if last > MAX_FRAME_BYTES {
            return Err(PacketError::Framing);
        }
    } else {
        let n = frames as usize;
        if data % n != 0 || data / n > MAX_FRAME_BYTES {
            return Err(PacketError::Framing);
        }
    }
    Ok(frames)
}

/// A frame length as codes 2 and 3 write it (§3.2.1): one byte below 252, else two. Returns the
/// length and the bytes it took.
fn frame_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let b0 = usize::from(*bytes.first()?);
    if b0 < 252 {
        Some((b0, 1))
    } else {
        let b1 = usize::from(*bytes.get(1)?);
        Some((b0 + 4 * b1, 2))
    }
}

/// Packets of zero-length frames covering `samples` (a multiple of [`GAP_QUANTUM`]; any
/// remainder is dropped). A zero-length frame tells the decoder nothing was transmitted, so it
/// conceals (PLC) and soon fades to silence: RFC 7845 §4.1 asks muxers to fill gaps this way,
/// because granule positions must match packet durations.
///
/// `previous_toc` is the TOC of the packet before the gap: its configuration and channel bit
/// are reused where its frame size fits, which RFC 7845 §4.1 recommends for the concealment's
/// sake; what remains is filled with CELT frames of 2.5 to 20 ms.
pub fn gap_packets(samples: u64, previous_toc: Option<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut left = samples - samples % GAP_QUANTUM;
    let (config, stereo) = match previous_toc {
        Some(toc) => (toc >> 3, toc & 0b100),
        None => (CELT_FB_20MS, 0),
    };
    let mut configs = vec![config];
    // The CELT sizes, largest first, take what the previous frame size cannot.
    configs.extend([31u8, 30, 29, 28].into_iter().filter(|c| *c != config));
    for config in configs {
        let frame = u64::from(frame_samples(config));
        let per_packet = u64::from(MAX_PACKET_SAMPLES) / frame;
        while left >= frame {
            let frames = (left / frame).min(per_packet);
            let toc = (config << 3) | stereo;
            if frames == 1 {
                out.push(vec![toc]); // code 0: one frame, zero bytes
            } else {
                // Code 3, CBR, no padding: `frames` frames sharing zero bytes.
                out.push(vec![toc | 0b11, frames as u8]);
            }
            left -= frames * frame;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_of_each_code() {
        // Config 31 (CELT FB 20 ms), code 0.
        assert_eq!(packet_samples(&[31 << 3, 1, 2, 3]), Ok(960));
        // Config 1 (SILK NB 20 ms), code 1: two equal frames.
        assert_eq!(packet_samples(&[(1 << 3) | 1, 1, 2]), Ok(1_920));
        assert_eq!(
            packet_samples(&[(1 << 3) | 1, 1, 2, 3]),
            Err(PacketError::Framing)
        );
        // Code 2: first frame 1 byte, second 2.
        assert_eq!(packet_samples(&[(16 << 3) | 2, 1, 9, 8, 7]), Ok(240));
        assert_eq!(
            packet_samples(&[(16 << 3) | 2, 9, 1]),
            Err(PacketError::Framing)
        );
        // Code 3, CBR, 3 frames of 20 ms with 2 bytes each.
        assert_eq!(
            packet_samples(&[(31 << 3) | 3, 3, 0, 0, 0, 0, 0, 0]),
            Ok(2_880)
        );
        // 7 frames of 20 ms is over 120 ms.
        assert_eq!(
            packet_samples(&[(31 << 3) | 3, 7]),
            Err(PacketError::FrameCount)
        );
        assert_eq!(
            packet_samples(&[(31 << 3) | 3, 0]),
            Err(PacketError::FrameCount)
        );
        // Code 3, VBR with padding: 2 frames, first 1 byte, padding 2.
        assert_eq!(
            packet_samples(&[(31 << 3) | 3, 0x80 | 0x40 | 2, 2, 1, 5, 6, 7, 0, 0]),
            Ok(1_920)
        );
        assert_eq!(packet_samples(&[]), Err(PacketError::Empty));
    }

    #[test]
    fn gap_packets_cover_the_gap_exactly() {
        for samples in [120u64, 960, 1_000, 4_800, 48_000, 123_480] {
            for previous in [None, Some(31 << 3), Some(1 << 3), Some((9 << 3) | 0b100)] {
                let packets = gap_packets(samples, previous);
                let total: u64 = packets
                    .iter()
                    .map(|p| u64::from(packet_samples(p).unwrap()))
                    .sum();
                assert_eq!(
                    total,
                    samples - samples % GAP_QUANTUM,
                    "{samples} {previous:?}"
                );
                assert!(packets.iter().all(|p| p.len() <= 2));
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678u32;
        for len in 0..64usize {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        state as u8
                    })
                    .collect();
                if let Ok(n) = packet_samples(&bytes) {
                    assert!(n <= MAX_PACKET_SAMPLES);
                }
            }
        }
    }
}
