//! Ogg pages (RFC 3533): writing one logical stream, reading pages back with their CRC checked.
//!
//! A page is self-contained (capture pattern, granule position, CRC over the whole page), so a
//! file cut anywhere still reads up to its last complete page: the reader stops at a torn page
//! and skips a corrupt one by searching for the next capture pattern.

/// "OggS", the capture pattern that starts every page.
const CAPTURE: &[u8; 4] = b"OggS";
/// Bytes of a page header before its segment table.
const HEADER_LEN: usize = 27;
/// Header type flag: the page continues a packet from the previous page.
const FLAG_CONTINUED: u8 = 0x01;
/// Header type flag: first page of a logical stream.
pub const FLAG_BOS: u8 = 0x02;
/// Header type flag: last page of a logical stream.
pub const FLAG_EOS: u8 = 0x04;
/// Granule position of a page on which no packet completes.
const NO_GRANULE: u64 = u64::MAX;
/// The most lacing values one page holds.
const MAX_SEGMENTS: usize = 255;

/// The Ogg CRC-32: polynomial 0x04c11db7, MSB first, initial value 0, no final XOR
/// (<https://www.rfc-editor.org/rfc/rfc3533#section-6>).
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut r = (i as u32) << 24;
            let mut k = 0;
            while k < 8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04c1_1db7
                } else {
                    r << 1
                };
                k += 1;
            }
            table[i] = r;
            i += 1;
        }
        table
    };
    let mut crc = 0u32;
    for &b in bytes {
        crc = (crc << 8) ^ TABLE[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

/// Lacing values of a packet of `len` bytes: `len / 255` values of 255, then the remainder.
fn lacing_len(len: usize) -> usize {
    len / 255 + 1
}

/// Packs whole packets into pages of one logical stream.
///
/// Packets never span pages (every Opus packet, at most 120 ms, fits one page), which keeps
/// every page independently decodable after a crash.
#[derive(Debug)]
pub struct PageWriter {
    serial: u32,
    sequence: u32,
    lacing: Vec<u8>,
    body: Vec<u8>,
    granule: u64,
    first: bool,
}

impl PageWriter {
    /// A writer for the logical stream `serial`; its first page carries the BOS flag.
    pub fn new(serial: u32) -> PageWriter {
        PageWriter {
            serial,
            sequence: 0,
            lacing: Vec::new(),
            body: Vec::new(),
            granule: NO_GRANULE,
            first: true,
        }
    }

    /// A writer continuing stream `serial` after a crash: its next page gets `sequence` and,
    /// until a packet is pushed, `granule`.
    pub fn resume(serial: u32, sequence: u32, granule: u64) -> PageWriter {
        PageWriter {
            serial,
            sequence,
            lacing: Vec::new(),
            body: Vec::new(),
            granule,
            first: false,
        }
    }

    /// Whether a packet of `len` bytes still fits the open page.
    pub fn fits(&self, len: usize) -> bool {
        self.lacing.len() + lacing_len(len) <= MAX_SEGMENTS
    }

    /// Packets on the open page.
    pub fn is_empty(&self) -> bool {
        self.lacing.is_empty()
    }

    /// Adds a packet to the open page; `granule` is the stream's granule position once this
    /// packet is complete. Call [`fits`](Self::fits) first and [`page`](Self::page) if it
    /// does not fit. A packet larger than a page can hold (over 64 KiB, never Opus) is refused.
    pub fn push(&mut self, packet: &[u8], granule: u64) -> bool {
        if !self.fits(packet.len()) {
            return false;
        }
        let mut len = packet.len();
        while len >= 255 {
            self.lacing.push(255);
            len -= 255;
        }
        self.lacing.push(len as u8);
        self.body.extend_from_slice(packet);
        self.granule = granule;
        true
    }

    /// Closes the open page and returns its bytes (also when empty, for an end-of-stream page
    /// with nothing left to carry). `flags` may add [`FLAG_EOS`].
    pub fn page(&mut self, flags: u8) -> Vec<u8> {
        let mut header_type = flags & FLAG_EOS;
        if self.first {
            header_type |= FLAG_BOS;
            self.first = false;
        }
        let mut page = Vec::with_capacity(HEADER_LEN + self.lacing.len() + self.body.len());
        page.extend_from_slice(CAPTURE);
        page.push(0); // stream structure version
        page.push(header_type);
        page.extend_from_slice(&self.granule.to_le_bytes());
        page.extend_from_slice(&self.serial.to_le_bytes());
        page.extend_from_slice(&self.sequence.to_le_bytes());
        page.extend_from_slice(&[0; 4]); // CRC, filled below
        page.push(self.lacing.len() as u8);
        page.extend_from_slice(&self.lacing);
        page.extend_from_slice(&self.body);
        let crc = crc32(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        self.sequence = self.sequence.wrapping_add(1);
        self.lacing.clear();
        self.body.clear();
        // An empty page keeps the last granule (a later EOS page must not go backwards).
        page
    }

    /// Sets the granule position the next page carries even if no packet is pushed (the
    /// end-trimmed position of a final page).
    pub fn set_granule(&mut self, granule: u64) {
        self.granule = granule;
    }
}

/// One page read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<'a> {
    /// Header type flags ([`FLAG_BOS`], [`FLAG_EOS`], continuation).
    pub flags: u8,
    /// Granule position, `u64::MAX` when no packet completes on the page.
    pub granule: u64,
    /// Logical stream serial number.
    pub serial: u32,
    /// Page sequence number.
    pub sequence: u32,
    /// Lacing values.
    pub lacing: &'a [u8],
    /// Packet data.
    pub body: &'a [u8],
}

/// Reads pages out of a byte buffer: checks each CRC, skips what is not a valid page, stops at
/// a torn last page.
#[derive(Debug)]
pub struct PageReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    skipped: usize,
}

impl<'a> PageReader<'a> {
    /// A reader over a whole file (or whatever part of it was written).
    pub fn new(bytes: &'a [u8]) -> PageReader<'a> {
        PageReader {
            bytes,
            pos: 0,
            skipped: 0,
        }
    }

    /// Bytes skipped so far because they were not part of a valid page.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Offset just past the last page returned: the file's valid length so far.
    pub fn offset(&self) -> usize {
        self.pos
    }

    fn parse_at(&self, at: usize) -> Option<Result<(Page<'a>, usize), ()>> {
        let b = &self.bytes[at..];
        if b.len() < HEADER_LEN {
            return None;
        }
        if &b[..4] != CAPTURE || b[4] != 0 {
            return Some(Err(()));
        }
        let nseg = usize::from(b[26]);
        let lacing = b.get(HEADER_LEN..HEADER_LEN + nseg)?;
        let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let end = HEADER_LEN + nseg + body_len;
        let page = b.get(..end)?;
        let crc = u32::from_le_bytes([b[22], b[23], b[24], b[25]]);
        let mut check = page.to_vec();
        check[22..26].fill(0);
        if crc32(&check) != crc {
            return Some(Err(()));
        }
        let le_u32 = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut granule = [0u8; 8];
        granule.copy_from_slice(&b[6..14]);
        Some(Ok((
            Page {
                flags: b[5],
                granule: u64::from_le_bytes(granule),
                serial: le_u32(14),
                sequence: le_u32(18),
                lacing,
                body: &page[HEADER_LEN + nseg..],
            },
            end,
        )))
    }
}

impl<'a> Iterator for PageReader<'a> {
    type Item = Page<'a>;

    fn next(&mut self) -> Option<Page<'a>> {
        while self.pos < self.bytes.len() {
            match self.parse_at(self.pos) {
                // Torn: the rest of the buffer is an incomplete page (a crash mid-write).
                None => return None,
                Some(Ok((page, len))) => {
                    self.pos += len;
                    return Some(page);
                }
                Some(Err(())) => {
                    // Resynchronise on the next capture pattern.
                    let from = self.pos + 1;
                    let next = self.bytes[from..]
                        .windows(4)
                        .position(|w| w == CAPTURE)
                        .map(|i| from + i)
                        .unwrap_or(self.bytes.len());
                    self.skipped += next - self.pos;
                    self.pos = next;
                }
            }
        }
        None
    }
}

/// A packet reassembled from pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The packet's bytes.
    pub data: Vec<u8>,
    /// The page's granule position when this packet is the last one completed on its page.
    pub granule: Option<u64>,
    /// Whether the packet ends on the stream's last page.
    pub eos: bool,
}

/// All packets of the first logical stream in `bytes` (others are ignored), with the granule
/// markers of their pages. Packets torn by a missing page are dropped.
pub fn packets(bytes: &[u8]) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut serial = None;
    let mut partial: Vec<u8> = Vec::new();
    let mut expected_sequence = None;
    for page in PageReader::new(bytes) {
        if *serial.get_or_insert(page.serial) != page.serial {
            continue;
        }
        // A lost page breaks any packet spanning it.
        if expected_sequence.is_some_and(|s| s != page.sequence) {
            partial.clear();
        }
        expected_sequence = Some(page.sequence.wrapping_add(1));
        if page.flags & FLAG_CONTINUED == 0 {
            partial.clear();
        }
        let complete = page.lacing.iter().filter(|&&l| l < 255).count();
        let mut done = 0;
        let mut at = 0usize;
        for &l in page.lacing {
            let l = usize::from(l);
            partial.extend_from_slice(&page.body[at..at + l]);
            at += l;
            if l < 255 {
                done += 1;
                let last = done == complete;
                out.push(Packet {
                    data: std::mem::take(&mut partial),
                    granule: (last && page.granule != NO_GRANULE).then_some(page.granule),
                    eos: page.flags & FLAG_EOS != 0,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_ogg_reference_value() {
        // The CRC of "123456789" under Ogg's parameters: CRC-32/CKSUM's polynomial and
        // initial value without its final XOR (0x765e7680 ^ 0xffffffff).
        assert_eq!(crc32(b"123456789"), 0x89a1_897f);
    }

    #[test]
    fn pages_round_trip_and_survive_garbage_and_truncation() {
        let mut w = PageWriter::new(7);
        let mut file = Vec::new();
        let mut expected = Vec::new();
        for i in 0..40u64 {
            let packet: Vec<u8> = (0..(i * 37 % 600) as usize).map(|b| b as u8).collect();
            if !w.fits(packet.len()) {
                file.extend(w.page(0));
            }
            assert!(w.push(&packet, i * 960));
            expected.push(packet);
            if i % 10 == 9 {
                file.extend(w.page(0));
            }
        }
        file.extend(w.page(FLAG_EOS));
        let got: Vec<Vec<u8>> = packets(&file).into_iter().map(|p| p.data).collect();
        assert_eq!(got, expected);

        // Garbage before and inside: pages around it still read.
        let mut dirty = b"junk".to_vec();
        dirty.extend_from_slice(&file);
        assert_eq!(packets(&dirty).len(), expected.len());

        // Every truncation reads a prefix of the packets, never panics.
        for cut in 0..file.len() {
            let got = packets(&file[..cut]);
            assert!(got.len() <= expected.len());
            for (g, e) in got.iter().zip(&expected) {
                assert_eq!(&g.data, e);
            }
        }

        // A flipped bit fails the CRC of one page only.
        let mut flipped = file.clone();
        flipped[40] ^= 0x10;
        let got = packets(&flipped);
        assert!(got.len() < expected.len() && got.len() >= expected.len() - 10);
    }
}
