//! RFC 2198 redundant audio (RED): reading a RED payload, finding its primary encoding and
//! renumbering its block payload types.
//!
//! A RED payload is a list of block headers followed by the blocks' data:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |1|   block PT  |  timestamp offset         |   block length    |   redundant block header
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |0|   block PT  |                                                   primary (last) header
//! +-+-+-+-+-+-+-+-+
//! | redundant data ... | primary data ...                          |
//! ```
//!
//! The primary encoding is the last block, with the packet's own timestamp; each redundant block
//! repeats an earlier frame, `timestamp offset` ticks before it. Browsers wrap Opus this way
//! (`a=rtpmap:63 red/48000/2`, `a=fmtp:63 111/111`), so a subscriber that negotiated only Opus
//! gets the primary block alone, with the packet's sequence number and timestamp: that is a valid
//! Opus RTP packet (what LiveKit forwards to such subscribers too).
//!
//! Everything here reads untrusted bytes: malformed input is an [`RedError`], never a panic.

use std::ops::Range;
use std::sync::Arc;

use super::MediaPacket;

/// Most blocks one RED payload may have. Browsers send at most a few (libwebrtc: 1 or 2
/// redundant levels); a longer header chain is treated as malformed.
pub const MAX_BLOCKS: usize = 16;

/// Length of a redundant block's header.
const REDUNDANT_HEADER_LEN: usize = 4;

/// Why a RED payload cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedError {
    /// The header chain runs past the payload's end, or never ends.
    #[error("RED header chain is truncated")]
    TruncatedHeader,
    /// The blocks' lengths add up to more than the payload holds.
    #[error("RED block lengths exceed the payload")]
    TruncatedData,
    /// More than [`MAX_BLOCKS`] blocks.
    #[error("RED payload has too many blocks")]
    TooManyBlocks,
    /// The primary block is not the publisher's Opus.
    #[error("RED primary block is not Opus")]
    NotOpus,
}

/// One redundant block: an earlier frame repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedundantBlock {
    /// Its payload type (the primary codec's, for browsers).
    pub pt: u8,
    /// How many RTP timestamp ticks before the packet's timestamp this frame started.
    pub ts_offset: u16,
    /// Where its data is in the payload.
    pub data: Range<usize>,
}

/// A parsed RED payload, as positions into the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedPayload {
    /// The redundant blocks, oldest first.
    pub redundant: Vec<RedundantBlock>,
    /// The primary block's payload type.
    pub primary_pt: u8,
    /// Where the primary block's data is: always the payload's tail.
    pub primary: Range<usize>,
}

/// The primary encoding of a RED payload: its payload type and where its data is. This is what
/// the forwarding path needs per packet; it reads only the header chain and allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Primary {
    /// Payload type of the primary block.
    pub pt: u8,
    /// Offset of the primary block's data in the payload; it runs to the payload's end.
    pub offset: usize,
}

/// Finds the primary block of `payload`.
pub fn primary(payload: &[u8]) -> Result<Primary, RedError> {
    let mut pos = 0;
    let mut data_len = 0usize;
    for _ in 0..MAX_BLOCKS {
        let &first = payload.get(pos).ok_or(RedError::TruncatedHeader)?;
        if first & 0x80 == 0 {
            let offset = pos + 1 + data_len;
            if offset > payload.len() {
                return Err(RedError::TruncatedData);
            }
            return Ok(Primary {
                pt: first & 0x7f,
                offset,
            });
        }
        let header = payload
            .get(pos..pos + REDUNDANT_HEADER_LEN)
            .ok_or(RedError::TruncatedHeader)?;
        data_len += usize::from(block_len(header));
        pos += REDUNDANT_HEADER_LEN;
    }
    Err(RedError::TooManyBlocks)
}

/// Reads every block of `payload`.
pub fn parse(payload: &[u8]) -> Result<RedPayload, RedError> {
    let primary = primary(payload)?;
    // `primary` checked the chain: every header below is whole and the data fits.
    let mut redundant = Vec::new();
    let mut pos = 0;
    let mut data = 0;
    while let Some(header) = payload
        .get(pos..pos + REDUNDANT_HEADER_LEN)
        .filter(|h| h[0] & 0x80 != 0)
    {
        let len = usize::from(block_len(header));
        redundant.push(RedundantBlock {
            pt: header[0] & 0x7f,
            ts_offset: (u16::from(header[1]) << 6) | (u16::from(header[2]) >> 2),
            data: data..data + len,
        });
        data += len;
        pos += REDUNDANT_HEADER_LEN;
    }
    // The data follows the whole chain (`pos` is at the final, one-byte header).
    let header_len = pos + 1;
    for block in &mut redundant {
        block.data = block.data.start + header_len..block.data.end + header_len;
    }
    Ok(RedPayload {
        redundant,
        primary_pt: primary.pt,
        primary: primary.offset..payload.len(),
    })
}

/// Renumbers, in place, every block of `payload` whose payload type is `from` to `to` (when a
/// publisher and a subscriber number the primary codec differently). `to` must be below 128.
pub fn renumber(payload: &mut [u8], from: u8, to: u8) -> Result<(), RedError> {
    let primary = primary(payload)?;
    let to = to & 0x7f;
    let mut pos = 0;
    loop {
        // `primary` checked the chain, so every index below is in bounds.
        let Some(octet) = payload.get_mut(pos) else {
            return Err(RedError::TruncatedHeader);
        };
        let last = *octet & 0x80 == 0;
        if *octet & 0x7f == from {
            *octet = (*octet & 0x80) | to;
        }
        if last || pos >= primary.offset {
            return Ok(());
        }
        pos += REDUNDANT_HEADER_LEN;
    }
}

/// Longest frame spacing a redundant block may claim: 120 ms at 48 kHz, Opus's longest packet.
const MAX_FRAME_TICKS: u32 = 5_760;

/// A lost packet rebuilt from a later packet's redundant block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// How many packets before the RED packet it was (1 = the one just before).
    pub distance: u64,
    /// How many RTP timestamp ticks before the RED packet's timestamp.
    pub ts_offset: u32,
    /// Where its Opus data is in the RED payload.
    pub data: Range<usize>,
}

/// The packets among the `gap` lost just before a RED packet that its redundant blocks carry,
/// oldest first. The newest redundant block is taken for the packet just before, the next for
/// the one before that, and so on (browsers repeat the last one or two frames); a block is used
/// only if it is Opus (`opus_pt`), not empty, and its timestamp offset is the same multiple of
/// the newest block's offset as its distance, so blocks of unequal frames are never misplaced.
pub fn recover(payload: &[u8], opus_pt: u8, gap: u64) -> Vec<Recovered> {
    let Ok(parsed) = parse(payload) else {
        return Vec::new();
    };
    let Some(newest) = parsed.redundant.last() else {
        return Vec::new();
    };
    let unit = u32::from(newest.ts_offset);
    if unit == 0 || unit > MAX_FRAME_TICKS {
        return Vec::new();
    }
    let usable = gap.min(parsed.redundant.len() as u64);
    let mut out = Vec::new();
    for distance in (1..=usable).rev() {
        let Some(block) = parsed
            .redundant
            .get(parsed.redundant.len() - distance as usize)
        else {
            continue;
        };
        let ts_offset = u32::from(block.ts_offset);
        if block.pt != opus_pt
            || block.data.is_empty()
            || u64::from(ts_offset) != distance * u64::from(unit)
        {
            continue;
        }
        out.push(Recovered {
            distance,
            ts_offset,
            data: block.data.clone(),
        });
    }
    out
}

/// The packets among the `gap` lost just before `media` that it carries as redundant blocks, as
/// plain Opus packets with their own sequence numbers and timestamps, oldest first: for the
/// subscribers that get plain Opus (those that negotiated RED recover them from RED themselves;
/// to them these are harmless repeats). Empty unless `media` is RED and `gap` is not 0.
pub(crate) fn rebuild_lost(media: &MediaPacket, gap: u64) -> Vec<MediaPacket> {
    let Encoding::Red { opus_pt, .. } = media.encoding else {
        return Vec::new();
    };
    if gap == 0 {
        return Vec::new();
    }
    recover(&media.payload, opus_pt, gap)
        .into_iter()
        .filter_map(|r| {
            let data = media.payload.get(r.data)?;
            Some(MediaPacket {
                seq_no: media.seq_no.wrapping_sub(r.distance),
                timestamp: media.timestamp.wrapping_sub(r.ts_offset),
                marker: false,
                payload: Arc::from(data),
                encoding: Encoding::Opus,
                ..media.clone()
            })
        })
        .collect()
}

/// How a forwarded packet's payload is encoded, decided once per received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Plain Opus.
    #[default]
    Opus,
    /// RED around Opus.
    Red {
        /// The publisher's Opus payload type, which numbers the blocks.
        opus_pt: u8,
        /// Offset of the primary (Opus) block's data in the payload.
        primary: usize,
    },
}

impl Encoding {
    /// Reads a packet that arrived with the publisher's RED payload type: RED whose primary
    /// block is Opus (`opus_pt`), or an error for anything else.
    pub fn of_red(payload: &[u8], opus_pt: u8) -> Result<Encoding, RedError> {
        let primary = primary(payload)?;
        if primary.pt != opus_pt {
            return Err(RedError::NotOpus);
        }
        Ok(Encoding::Red {
            opus_pt,
            primary: primary.offset,
        })
    }
}

/// What one subscriber gets of a packet, given what it negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// The payload as received, under payload type `pt`.
    Whole(u8),
    /// Only the bytes from offset `from` on (the primary Opus block), under `pt`.
    Tail {
        /// Payload type to send with.
        pt: u8,
        /// Where the primary block starts.
        from: usize,
    },
    /// A RED payload with its blocks renumbered for this subscriber, under `pt`.
    Renumbered {
        /// Payload type to send with.
        pt: u8,
        /// The renumbered payload.
        payload: Vec<u8>,
    },
}

impl Outgoing {
    /// Chooses for a subscriber whose Opus payload type is `opus_pt` and whose RED payload type
    /// is `red_pt` (`None` when it did not negotiate RED): RED to RED subscribers, the primary
    /// Opus block to the others, plain Opus to everyone as Opus.
    pub fn choose(encoding: Encoding, payload: &[u8], opus_pt: u8, red_pt: Option<u8>) -> Self {
        match (encoding, red_pt) {
            (Encoding::Opus, _) => Outgoing::Whole(opus_pt),
            (Encoding::Red { primary, .. }, None) => Outgoing::Tail {
                pt: opus_pt,
                from: primary,
            },
            (Encoding::Red { opus_pt: from, .. }, Some(red)) if from == opus_pt => {
                Outgoing::Whole(red)
            }
            (
                Encoding::Red {
                    opus_pt: from,
                    primary,
                },
                Some(red),
            ) => {
                let mut copy = payload.to_vec();
                match renumber(&mut copy, from, opus_pt) {
                    Ok(()) => Outgoing::Renumbered {
                        pt: red,
                        payload: copy,
                    },
                    // Checked on arrival; should it fail, plain Opus is still right.
                    Err(_) => Outgoing::Tail {
                        pt: opus_pt,
                        from: primary,
                    },
                }
            }
        }
    }

    /// The payload type to send with.
    pub fn pt(&self) -> u8 {
        match self {
            Outgoing::Whole(pt) | Outgoing::Tail { pt, .. } | Outgoing::Renumbered { pt, .. } => {
                *pt
            }
        }
    }

    /// The bytes to send, given the received payload.
    pub fn bytes<'a>(&'a self, received: &'a [u8]) -> &'a [u8] {
        match self {
            Outgoing::Whole(_) => received,
            Outgoing::Tail { from, .. } => received.get(*from..).unwrap_or_default(),
            Outgoing::Renumbered { payload, .. } => payload,
        }
    }
}

/// A 10-bit block length from a 4-byte redundant header.
fn block_len(header: &[u8]) -> u16 {
    (u16::from(header[2] & 0x03) << 8) | u16::from(header[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RED payload with `redundant` blocks (pt, ts offset, data) and a primary.
    fn build(redundant: &[(u8, u16, &[u8])], primary_pt: u8, primary: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (pt, ts, data) in redundant {
            let len = data.len() as u16;
            out.push(0x80 | pt);
            out.push((ts >> 6) as u8);
            out.push((((ts & 0x3f) << 2) as u8) | ((len >> 8) as u8 & 0x03));
            out.push(len as u8);
        }
        out.push(primary_pt & 0x7f);
        for (_, _, data) in redundant {
            out.extend_from_slice(data);
        }
        out.extend_from_slice(primary);
        out
    }

    #[test]
    fn primary_only() {
        let p = build(&[], 111, b"opus-frame");
        assert_eq!(primary(&p), Ok(Primary { pt: 111, offset: 1 }));
        let parsed = parse(&p).unwrap();
        assert!(parsed.redundant.is_empty());
        assert_eq!(&p[parsed.primary], b"opus-frame");
    }

    #[test]
    fn one_redundant_block_as_browsers_send_it() {
        let p = build(&[(111, 960, b"previous")], 111, b"current!");
        let prim = primary(&p).unwrap();
        assert_eq!(prim.pt, 111);
        assert_eq!(&p[prim.offset..], b"current!");
        let parsed = parse(&p).unwrap();
        assert_eq!(parsed.primary_pt, 111);
        assert_eq!(
            parsed.redundant,
            vec![RedundantBlock {
                pt: 111,
                ts_offset: 960,
                data: 5..13
            }]
        );
        assert_eq!(&p[parsed.redundant[0].data.clone()], b"previous");
    }

    #[test]
    fn two_redundant_blocks_and_extreme_fields() {
        let big = vec![7u8; 1023];
        let p = build(&[(111, 16_383, &big), (0, 1, b"")], 9, b"");
        let parsed = parse(&p).unwrap();
        assert_eq!(parsed.redundant.len(), 2);
        assert_eq!(parsed.redundant[0].ts_offset, 16_383);
        assert_eq!(parsed.redundant[0].data.len(), 1023);
        assert_eq!(parsed.redundant[1].pt, 0);
        assert_eq!(parsed.redundant[1].ts_offset, 1);
        assert!(parsed.redundant[1].data.is_empty());
        assert_eq!(parsed.primary_pt, 9);
        assert!(parsed.primary.is_empty());
        assert_eq!(primary(&p).unwrap().offset, p.len());
    }

    #[test]
    fn renumber_rewrites_every_block_of_one_type() {
        let mut p = build(&[(111, 960, b"a"), (13, 1920, b"bb")], 111, b"ccc");
        renumber(&mut p, 111, 96).unwrap();
        let parsed = parse(&p).unwrap();
        assert_eq!(parsed.redundant[0].pt, 96);
        assert_eq!(parsed.redundant[1].pt, 13, "other types are left alone");
        assert_eq!(parsed.primary_pt, 96);
        assert_eq!(parsed.redundant[0].ts_offset, 960, "offsets are untouched");
        assert_eq!(&p[parsed.primary], b"ccc");
        let mut bad = vec![0x80 | 111, 0, 0];
        assert_eq!(renumber(&mut bad, 111, 96), Err(RedError::TruncatedHeader));
        assert_eq!(
            bad,
            vec![0x80 | 111, 0, 0],
            "malformed input is left as it was"
        );
    }

    #[test]
    fn each_subscriber_gets_what_it_negotiated() {
        let red = build(&[(111, 960, b"previous")], 111, b"current!");
        let enc = Encoding::of_red(&red, 111).unwrap();
        assert_eq!(
            enc,
            Encoding::Red {
                opus_pt: 111,
                primary: 13
            }
        );
        // RED subscriber with the same numbering: the packet as it came.
        let out = Outgoing::choose(enc, &red, 111, Some(63));
        assert_eq!((out.pt(), out.bytes(&red)), (63, &red[..]));
        // Opus-only subscriber: the primary block, a plain Opus payload.
        let out = Outgoing::choose(enc, &red, 111, None);
        assert_eq!((out.pt(), out.bytes(&red)), (111, &b"current!"[..]));
        // RED subscriber numbering Opus 96 and RED 100: blocks renumbered.
        let out = Outgoing::choose(enc, &red, 96, Some(100));
        assert_eq!(out.pt(), 100);
        let parsed = parse(out.bytes(&red)).unwrap();
        assert_eq!((parsed.primary_pt, parsed.redundant[0].pt), (96, 96));
        // Plain Opus goes to everyone as Opus.
        let opus = b"opus";
        for red_pt in [None, Some(63)] {
            let out = Outgoing::choose(Encoding::Opus, opus, 111, red_pt);
            assert_eq!((out.pt(), out.bytes(opus)), (111, &opus[..]));
        }
        // A RED packet around something else is refused on arrival.
        let cn = build(&[], 13, b"noise");
        assert_eq!(Encoding::of_red(&cn, 111), Err(RedError::NotOpus));
        assert_eq!(
            Encoding::of_red(&[0x80], 111),
            Err(RedError::TruncatedHeader)
        );
    }

    #[test]
    fn lost_packets_are_rebuilt_from_redundant_blocks() {
        // Two redundant levels, 20 ms frames: blocks for the packets 2 and 1 before.
        let p = build(
            &[(111, 1920, b"two-back"), (111, 960, b"one-back")],
            111,
            b"now",
        );
        let got = recover(&p, 111, 1);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].distance, got[0].ts_offset), (1, 960));
        assert_eq!(&p[got[0].data.clone()], b"one-back");
        let got = recover(&p, 111, 5);
        let what: Vec<(u64, u32, &[u8])> = got
            .iter()
            .map(|r| (r.distance, r.ts_offset, &p[r.data.clone()]))
            .collect();
        assert_eq!(
            what,
            vec![(2, 1920, &b"two-back"[..]), (1, 960, &b"one-back"[..])],
            "oldest first, no more than the blocks carry"
        );
        assert!(
            recover(&p, 111, 0).is_empty(),
            "nothing lost, nothing rebuilt"
        );
        // Blocks that are not Opus, empty, or spaced unlike their distance are not used.
        let p = build(&[(13, 1920, b"cn"), (111, 960, b"one-back")], 111, b"now");
        assert_eq!(recover(&p, 111, 2).len(), 1);
        let p = build(&[(111, 960, b"")], 111, b"now");
        assert!(recover(&p, 111, 1).is_empty());
        let p = build(&[(111, 2000, b"odd"), (111, 960, b"one-back")], 111, b"now");
        assert_eq!(recover(&p, 111, 2).len(), 1);
        let p = build(&[(111, 0, b"zero")], 111, b"now");
        assert!(recover(&p, 111, 1).is_empty());
        let p = build(&[(111, 9000, b"too far")], 111, b"now");
        assert!(recover(&p, 111, 1).is_empty());
        // No redundancy, or not RED at all.
        assert!(recover(&build(&[], 111, b"now"), 111, 3).is_empty());
        assert!(recover(&[0x80], 111, 3).is_empty());
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert_eq!(primary(&[]), Err(RedError::TruncatedHeader));
        // A redundant header cut short.
        assert_eq!(primary(&[0x80 | 111, 0x0f]), Err(RedError::TruncatedHeader));
        // Headers only, never a final one.
        assert_eq!(
            primary(&[0x80 | 111, 0, 0, 0, 0x80 | 111, 0, 0, 0]),
            Err(RedError::TruncatedHeader)
        );
        // Block lengths beyond the end.
        let mut p = build(&[(111, 960, b"12345")], 111, b"");
        p.truncate(p.len() - 1);
        assert_eq!(primary(&p), Err(RedError::TruncatedData));
        assert_eq!(parse(&p), Err(RedError::TruncatedData));
        // An endless chain of empty redundant blocks.
        let chain: Vec<u8> = (0..=MAX_BLOCKS)
            .flat_map(|_| [0x80 | 111, 0, 0, 0])
            .chain([111])
            .collect();
        assert_eq!(primary(&chain), Err(RedError::TooManyBlocks));
    }

    /// Every byte string up to three bytes, and random longer ones from a fixed seed: each is a
    /// value or an error, and a success is self-consistent.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for a in 0..=255u8 {
            inputs.push(vec![a]);
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                inputs.push(vec![a, b]);
                inputs.push(vec![a, b, 0xff]);
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 80) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias towards long header chains with small lengths.
            if next() % 2 == 0 {
                for (i, b) in bytes.iter_mut().enumerate() {
                    if i % 4 == 0 && i < 40 {
                        *b |= 0x80;
                    } else if i % 4 == 2 {
                        *b &= 0xfc;
                    }
                }
            }
            inputs.push(bytes);
        }
        for input in inputs {
            match (primary(&input), parse(&input)) {
                (Ok(p), Ok(full)) => {
                    assert!(p.offset <= input.len());
                    assert_eq!(full.primary, p.offset..input.len());
                    assert_eq!(full.primary_pt, p.pt);
                    for block in &full.redundant {
                        assert!(block.data.end <= p.offset);
                    }
                    for r in recover(&input, p.pt, 3) {
                        assert!(r.data.end <= p.offset && r.distance >= 1 && r.distance <= 3);
                    }
                    let mut copy = input.clone();
                    renumber(&mut copy, p.pt, 5).unwrap();
                    assert_eq!(primary(&copy).unwrap().pt, 5);
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a, b);
                    let mut copy = input.clone();
                    assert!(renumber(&mut copy, 1, 2).is_err());
                    assert_eq!(copy, input);
                }
                (a, b) => panic!("primary {a:?} and parse {b:?} disagree on {input:?}"),
            }
        }
    }
}
