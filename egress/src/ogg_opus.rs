//! Ogg/Opus files (RFC 7845): the identification and comment headers, a writer that flushes a
//! page about every second of audio, and a reader that gives every audio packet its position.
//!
//! Positions are granule positions: 48 kHz samples decoded since the stream's start, pre-skip
//! included. Playback time of granule `g` is `g - pre_skip`.

use crate::ogg::{self, FLAG_EOS, PageWriter};
use crate::packet::{self, SAMPLE_RATE};

/// Audio on one page before the writer closes it: one second. A crash loses at most this.
pub const FLUSH_SAMPLES: u64 = SAMPLE_RATE as u64;

/// Why a buffer is not an Ogg/Opus stream this crate can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No valid Ogg page starts an Opus stream (no `OpusHead` packet).
    #[error("no Ogg/Opus identification header")]
    NotOpus,
    /// The `OpusHead` packet is malformed or asks for something unsupported (channel mapping
    /// family other than 0).
    #[error("unsupported or malformed OpusHead: {0}")]
    Head(&'static str),
    /// The stream ends before its headers are complete: there is nothing to resume.
    #[error("the stream's headers are incomplete")]
    Incomplete,
    /// The stream was finished (it has its end-of-stream page): there is nothing to resume.
    #[error("the stream is finished")]
    Finished,
}

/// Where an interrupted stream continues (see [`OggOpusWriter::resume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumption {
    /// Bytes of the file up to its last complete page: cut it there before appending.
    pub valid_len: usize,
    /// The stream's serial number.
    pub serial: u32,
    /// Granule position at the end of the last complete page.
    pub granule: u64,
    /// The stream's pre-skip.
    pub pre_skip: u16,
    /// TOC byte of the last audio packet, if any.
    pub last_toc: Option<u8>,
}

/// The identification header (<https://www.rfc-editor.org/rfc/rfc7845#section-5.1>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusHead {
    /// Output channels, 1 or 2 (mapping family 0).
    pub channels: u8,
    /// Samples to discard from the decoder's output at the start.
    pub pre_skip: u16,
}

impl OpusHead {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(19);
        b.extend_from_slice(b"OpusHead");
        b.push(1); // version
        b.push(self.channels);
        b.extend_from_slice(&self.pre_skip.to_le_bytes());
        b.extend_from_slice(&SAMPLE_RATE.to_le_bytes()); // input sample rate, informational
        b.extend_from_slice(&0i16.to_le_bytes()); // output gain
        b.push(0); // channel mapping family 0: mono or stereo, no table
        b
    }

    fn decode(b: &[u8]) -> Result<OpusHead, ReadError> {
        if b.len() < 19 || &b[..8] != b"OpusHead" {
            return Err(ReadError::NotOpus);
        }
        // Versions 0-15 are compatible with version 1 (§5.1).
        if b[8] > 15 {
            return Err(ReadError::Head("version"));
        }
        let channels = b[9];
        if !(1..=2).contains(&channels) || b[18] != 0 {
            return Err(ReadError::Head("only mono or stereo, mapping family 0"));
        }
        Ok(OpusHead {
            channels,
            pre_skip: u16::from_le_bytes([b[10], b[11]]),
        })
    }
}

/// The comment header (<https://www.rfc-editor.org/rfc/rfc7845#section-5.2>).
fn tags(vendor: &str, comments: &[String]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"OpusTags");
    b.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    b.extend_from_slice(vendor.as_bytes());
    b.extend_from_slice(&(comments.len() as u32).to_le_bytes());
    for c in comments {
        b.extend_from_slice(&(c.len() as u32).to_le_bytes());
        b.extend_from_slice(c.as_bytes());
    }
    b
}

fn parse_tags(b: &[u8]) -> Option<(String, Vec<String>)> {
    let rest = b.strip_prefix(b"OpusTags")?;
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = rest.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let len = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let vendor_len = len(take(4)?);
    let vendor = String::from_utf8_lossy(take(vendor_len)?).into_owned();
    let count = len(take(4)?);
    let mut comments = Vec::new();
    for _ in 0..count.min(1_000) {
        let n = len(take(4)?);
        comments.push(String::from_utf8_lossy(take(n)?).into_owned());
    }
    Some((vendor, comments))
}

/// Writes one Ogg/Opus stream: headers first, then audio packets, a page about every second.
#[derive(Debug)]
pub struct OggOpusWriter {
    pages: PageWriter,
    pre_skip: u16,
    granule: u64,
    page_samples: u64,
}

impl OggOpusWriter {
    /// A writer for stream `serial`; the header pages (`OpusHead` on the first page alone,
    /// `OpusTags` on the second, RFC 7845 §3) are appended to `out`. Comments are
    /// `KEY=value` strings.
    pub fn new(
        serial: u32,
        head: OpusHead,
        comments: &[String],
        out: &mut Vec<u8>,
    ) -> OggOpusWriter {
        let mut pages = PageWriter::new(serial);
        pages.push(&head.encode(), 0);
        out.extend(pages.page(0));
        pages.push(
            &tags(concat!("stoa-egress ", env!("CARGO_PKG_VERSION")), comments),
            0,
        );
        out.extend(pages.page(0));
        OggOpusWriter {
            pages,
            pre_skip: head.pre_skip,
            granule: 0,
            page_samples: 0,
        }
    }

    /// A writer continuing the stream in `bytes` (a file cut by a crash): same serial number,
    /// the next page sequence number, the granule position where the last complete page ended.
    /// The caller cuts the file to [`Resumption::valid_len`] first.
    pub fn resume(bytes: &[u8]) -> Result<(OggOpusWriter, Resumption), ReadError> {
        let stream = OpusStream::parse(bytes)?;
        if stream.end_granule.is_some() {
            return Err(ReadError::Finished);
        }
        if !stream.has_tags {
            // Continuing would put audio where the comment header belongs.
            return Err(ReadError::Incomplete);
        }
        let mut reader = ogg::PageReader::new(bytes);
        let mut serial = None;
        let mut sequence = 0u32;
        let mut granule = 0u64;
        let mut valid_len = 0usize;
        while let Some(page) = reader.next() {
            if *serial.get_or_insert(page.serial) != page.serial {
                continue;
            }
            sequence = page.sequence.wrapping_add(1);
            if page.granule != u64::MAX {
                granule = page.granule;
            }
            valid_len = reader.offset();
        }
        let serial = serial.ok_or(ReadError::NotOpus)?;
        let last_toc = stream.packets.last().and_then(|p| p.data.first().copied());
        let writer = OggOpusWriter {
            pages: PageWriter::resume(serial, sequence, granule),
            pre_skip: stream.head.pre_skip,
            granule,
            page_samples: 0,
        };
        Ok((
            writer,
            Resumption {
                valid_len,
                serial,
                granule,
                pre_skip: stream.head.pre_skip,
                last_toc,
            },
        ))
    }

    /// Granule position after the last packet pushed.
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// The header's pre-skip.
    pub fn pre_skip(&self) -> u16 {
        self.pre_skip
    }

    /// Appends an audio packet of `samples` samples; any page it closes goes to `out`.
    pub fn push(&mut self, packet: &[u8], samples: u32, out: &mut Vec<u8>) {
        if !self.pages.fits(packet.len()) {
            self.flush(out);
        }
        self.granule += u64::from(samples);
        self.page_samples += u64::from(samples);
        if !self.pages.push(packet, self.granule) {
            // Over 64 KiB: never an Opus packet, and the caller validated it. Keep the
            // timeline right with a lost frame of the same length instead.
            for gap in packet::gap_packets(u64::from(samples), None) {
                self.pages.push(&gap, self.granule);
            }
        }
        if self.page_samples >= FLUSH_SAMPLES {
            self.flush(out);
        }
    }

    /// Appends the stream's last audio packet: like [`push`](Self::push) but never closing the
    /// page after it, so that [`finish`](Self::finish) writes it on the end-of-stream page
    /// (which end trimming needs).
    pub fn push_last(&mut self, packet: &[u8], samples: u32, out: &mut Vec<u8>) {
        if !self.pages.fits(packet.len()) {
            self.flush(out);
        }
        self.granule += u64::from(samples);
        self.page_samples += u64::from(samples);
        self.pages.push(packet, self.granule);
    }

    /// Closes the open page, if it holds any packet, into `out`. Call it when a page has been
    /// open long enough in wall time (sparse audio) that a crash should not lose it.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if !self.pages.is_empty() {
            out.extend(self.pages.page(0));
            self.page_samples = 0;
        }
    }

    /// Writes the last page, flagged end of stream. With `end`, the final granule position is
    /// set to it (end trimming, RFC 7845 §4.5): `end` must not be below the granule of the
    /// previous page, nor above [`granule`](Self::granule).
    pub fn finish(&mut self, end: Option<u64>, out: &mut Vec<u8>) {
        if let Some(end) = end {
            self.pages.set_granule(end.min(self.granule));
        }
        out.extend(self.pages.page(FLAG_EOS));
        self.page_samples = 0;
    }

    /// Whether a packet is waiting on the open page.
    pub fn has_open_page(&self) -> bool {
        !self.pages.is_empty()
    }
}

/// One audio packet read back, with its place on the stream's granule timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPacket {
    /// The Opus packet.
    pub data: Vec<u8>,
    /// Granule position at the packet's first sample.
    pub start: u64,
    /// Its duration in samples.
    pub samples: u32,
}

/// An Ogg/Opus stream read back: headers and positioned audio packets.
#[derive(Debug, Clone)]
pub struct OpusStream {
    /// The identification header.
    pub head: OpusHead,
    /// Whether the comment header was read (a file cut right after its first page has none).
    pub has_tags: bool,
    /// Vendor string of the comment header.
    pub vendor: String,
    /// `KEY=value` comments.
    pub comments: Vec<String>,
    /// Audio packets in order. Packets that are not valid Opus framing are left out.
    pub packets: Vec<AudioPacket>,
    /// Granule position of the end-of-stream page, when the stream was finished (a file cut by
    /// a crash has none).
    pub end_granule: Option<u64>,
}

impl OpusStream {
    /// Reads a whole (or truncated) Ogg/Opus file.
    pub fn parse(bytes: &[u8]) -> Result<OpusStream, ReadError> {
        let packets = ogg::packets(bytes);
        let mut iter = packets.into_iter().peekable();
        let head = OpusHead::decode(&iter.next().ok_or(ReadError::NotOpus)?.data)?;
        // The comment header; a page lost to damage leaves audio next, which stays audio.
        let tags = iter
            .peek()
            .filter(|p| p.data.starts_with(b"OpusTags"))
            .map(|p| parse_tags(&p.data).unwrap_or_default());
        if tags.is_some() {
            iter.next();
        }
        let has_tags = tags.is_some();
        let (vendor, comments) = tags.unwrap_or_default();
        let mut audio = Vec::new();
        let mut marks = Vec::new();
        let mut end_granule = None;
        for p in iter {
            let Ok(samples) = packet::packet_samples(&p.data) else {
                continue;
            };
            if p.eos {
                end_granule = p.granule.or(end_granule);
            }
            marks.push(p.granule);
            audio.push(AudioPacket {
                data: p.data,
                start: 0,
                samples,
            });
        }
        // The first page's granule minus its packets' durations is where the stream starts
        // (RFC 7845 §4.3); from there, positions add up.
        let mut sum = 0u64;
        let mut start = 0u64;
        for (p, mark) in audio.iter().zip(&marks) {
            sum += u64::from(p.samples);
            if let Some(g) = mark {
                start = g.saturating_sub(sum);
                break;
            }
        }
        for p in &mut audio {
            p.start = start;
            start += u64::from(p.samples);
        }
        Ok(OpusStream {
            head,
            has_tags,
            vendor,
            comments,
            packets: audio,
            end_granule,
        })
    }

    /// Granule position where the audio ends: the end-of-stream page's (end trimming
    /// included), else the end of the last packet.
    pub fn end(&self) -> u64 {
        let last = self
            .packets
            .last()
            .map(|p| p.start + u64::from(p.samples))
            .unwrap_or(0);
        self.end_granule.map_or(last, |g| g.min(last))
    }

    /// Granule position of the first packet.
    pub fn start(&self) -> u64 {
        self.packets.first().map_or(0, |p| p.start)
    }

    /// Playback length in samples: what a player plays, pre-skip and end trimming applied.
    pub fn playback_samples(&self) -> u64 {
        self.end()
            .saturating_sub(self.start().max(u64::from(self.head.pre_skip)))
    }
}

/// Decoded audio: mono 48 kHz samples from playback time `offset` (in samples) on.
#[derive(Debug, Clone, Default)]
pub struct Pcm {
    /// Playback time of `samples[0]`, in samples.
    pub offset: u64,
    /// Mono samples in [-1, 1].
    pub samples: Vec<f32>,
}

/// Decodes a stream to mono PCM as a player would: pre-skip discarded, end trimming applied,
/// corrupt packets concealed (libopus PLC) instead of failing.
pub fn decode(stream: &OpusStream) -> Result<Pcm, opus::Error> {
    let mut decoder = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?;
    let mut samples = Vec::new();
    let mut buf = vec![0f32; packet::MAX_PACKET_SAMPLES as usize];
    for p in &stream.packets {
        let want = p.samples as usize;
        let n = match decoder.decode_float(&p.data, &mut buf, false) {
            Ok(n) => n,
            Err(_) => decoder
                .decode_float(&[], &mut buf[..want], false)
                .unwrap_or(0),
        };
        let mut chunk = buf[..n.min(want)].to_vec();
        chunk.resize(want, 0.0);
        samples.extend_from_slice(&chunk);
    }
    let start = stream.start();
    let end = stream.end();
    let pre_skip = u64::from(stream.head.pre_skip);
    samples.truncate(end.saturating_sub(start) as usize);
    let skip = pre_skip.saturating_sub(start) as usize;
    let samples = samples.get(skip..).map(<[f32]>::to_vec).unwrap_or_default();
    Ok(Pcm {
        offset: start.saturating_sub(pre_skip),
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_packets_round_trip() {
        let mut file = Vec::new();
        let head = OpusHead {
            channels: 1,
            pre_skip: 312,
        };
        let comments = vec!["TITLE=room".to_string()];
        let mut w = OggOpusWriter::new(42, head, &comments, &mut file);
        for _ in 0..120 {
            w.push(&[31 << 3, 0xaa, 0xbb], 960, &mut file);
        }
        w.finish(Some(120 * 960 - 500), &mut file);
        let s = OpusStream::parse(&file).unwrap();
        assert_eq!(s.head, head);
        assert_eq!(s.comments, comments);
        assert_eq!(s.packets.len(), 120);
        assert_eq!(s.packets[5].start, 5 * 960);
        assert_eq!(s.end(), 120 * 960 - 500);
        assert_eq!(s.playback_samples(), 120 * 960 - 500 - 312);
    }

    #[test]
    fn not_opus_is_an_error() {
        assert_eq!(OpusStream::parse(b"").unwrap_err(), ReadError::NotOpus);
        let mut w = PageWriter::new(1);
        w.push(b"OpusHead\x01\x03", 0);
        assert_eq!(
            OpusStream::parse(&w.page(0)).unwrap_err(),
            ReadError::NotOpus
        );
    }
}
