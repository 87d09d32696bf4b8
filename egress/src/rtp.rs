//! What the engine hands over for each received audio packet, and the extension of RTP's
//! wrapping 16-bit sequence numbers and 32-bit timestamps to 64 bits.

use std::fmt;

/// An RTP synchronisation source. A publisher that rejoins (or whose client restarts its
/// sender) comes back with another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ssrc(pub u32);

impl fmt::Display for Ssrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One received Opus RTP packet, as the engine decrypted it (header fields and payload; no
/// header extensions needed).
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<'a> {
    /// Synchronisation source.
    pub ssrc: Ssrc,
    /// RTP sequence number.
    pub sequence: u16,
    /// RTP timestamp, 48 kHz for Opus (RFC 7587).
    pub timestamp: u32,
    /// RTP marker bit (set by senders on the first packet after a silence, not relied on).
    pub marker: bool,
    /// The Opus packet.
    pub payload: &'a [u8],
}

/// Extends a wrapping counter of `BITS` bits to `i64`, each value placed nearest the previous
/// one, so a packet slightly older than the newest gets a slightly smaller value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unwrapper<const BITS: u32> {
    last: Option<i64>,
}

impl<const BITS: u32> Unwrapper<BITS> {
    pub(crate) fn new() -> Self {
        Unwrapper { last: None }
    }

    /// The extended value of `value`, updating the reference when it is newer.
    pub(crate) fn extend(&mut self, value: u32) -> i64 {
        let extended = self.peek(value);
        if self.last.is_none_or(|last| extended > last) {
            self.last = Some(extended);
        }
        extended
    }

    /// The extended value of `value`, leaving the reference as it is.
    pub(crate) fn peek(&self, value: u32) -> i64 {
        let modulus = 1i64 << BITS;
        let value = i64::from(value) & (modulus - 1);
        let Some(last) = self.last else {
            return value;
        };
        let mut delta = (value - last).rem_euclid(modulus);
        if delta >= modulus / 2 {
            delta -= modulus;
        }
        last + delta
    }

    /// The newest extended value so far.
    pub(crate) fn newest(&self) -> Option<i64> {
        self.last
    }
}

/// Sequence numbers (16 bits).
pub(crate) type SeqUnwrapper = Unwrapper<16>;
/// Timestamps (32 bits).
pub(crate) type TsUnwrapper = Unwrapper<32>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_across_the_wrap_and_back() {
        let mut u = SeqUnwrapper::new();
        assert_eq!(u.extend(65_534), 65_534);
        assert_eq!(u.extend(65_535), 65_535);
        assert_eq!(u.extend(0), 65_536);
        assert_eq!(u.extend(65_535), 65_535); // reordered, older
        assert_eq!(u.extend(2), 65_538);
        let mut t = TsUnwrapper::new();
        assert_eq!(t.extend(u32::MAX - 959), i64::from(u32::MAX) - 959);
        assert_eq!(t.extend(1), i64::from(u32::MAX) + 2);
    }
}
