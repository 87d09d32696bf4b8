//! STUN messages (RFC 8489) with the TURN methods and attributes (RFC 8656), and TURN
//! ChannelData frames: parsing borrowed views of untrusted bytes and encoding replies.
//!
//! Parsing never panics and never allocates more than one small vector of attribute
//! positions, bounded by [`MAX_ATTRIBUTES`]. Everything malformed is a [`ParseError`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The magic cookie in every STUN header.
/// <https://www.rfc-editor.org/rfc/rfc8489#section-5>
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;

/// At most this many attributes are read from one message; more is a malformed message.
pub const MAX_ATTRIBUTES: usize = 48;

/// XOR applied to the CRC-32 in FINGERPRINT.
/// <https://www.rfc-editor.org/rfc/rfc8489#section-14.7>
const FINGERPRINT_XOR: u32 = 0x5354_554E;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// STUN methods Stoa's relay handles.
/// <https://www.rfc-editor.org/rfc/rfc8656#name-stun-methods>
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Binding (0x001).
    Binding,
    /// Allocate (0x003).
    Allocate,
    /// Refresh (0x004).
    Refresh,
    /// Send (0x006), an indication.
    Send,
    /// Data (0x007), an indication.
    Data,
    /// CreatePermission (0x008).
    CreatePermission,
    /// ChannelBind (0x009).
    ChannelBind,
    /// Any other method number.
    Other(u16),
}

impl Method {
    fn from_number(number: u16) -> Self {
        match number {
            0x001 => Self::Binding,
            0x003 => Self::Allocate,
            0x004 => Self::Refresh,
            0x006 => Self::Send,
            0x007 => Self::Data,
            0x008 => Self::CreatePermission,
            0x009 => Self::ChannelBind,
            other => Self::Other(other),
        }
    }

    fn number(self) -> u16 {
        match self {
            Self::Binding => 0x001,
            Self::Allocate => 0x003,
            Self::Refresh => 0x004,
            Self::Send => 0x006,
            Self::Data => 0x007,
            Self::CreatePermission => 0x008,
            Self::ChannelBind => 0x009,
            Self::Other(number) => number & 0x0FFF,
        }
    }
}

/// STUN message classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A request, answered by a success or error response.
    Request,
    /// An indication, never answered.
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

/// A transaction id (96 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

/// Attribute types.
/// <https://www.rfc-editor.org/rfc/rfc8489#section-18.3>,
/// <https://www.rfc-editor.org/rfc/rfc8656#name-stun-attributes>
pub mod attr {
    /// MAPPED-ADDRESS.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// CHANNEL-NUMBER.
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME.
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA.
    pub const DATA: u16 = 0x0013;
    /// REALM.
    pub const REALM: u16 = 0x0014;
    /// NONCE.
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY.
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT.
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT.
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT.
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESERVATION-TOKEN.
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
}

/// Why bytes are not a STUN message or ChannelData frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than its header or than the length the header claims.
    #[error("truncated")]
    Truncated,
    /// The first two bits are neither STUN (00) nor ChannelData (01).
    #[error("neither STUN nor ChannelData")]
    NotStun,
    /// The magic cookie is wrong.
    #[error("bad magic cookie")]
    BadCookie,
    /// An attribute runs past the end, or the length is not a multiple of 4.
    #[error("malformed attributes")]
    BadAttributes,
    /// More than [`MAX_ATTRIBUTES`] attributes.
    #[error("too many attributes")]
    TooManyAttributes,
    /// FINGERPRINT does not match.
    #[error("bad fingerprint")]
    BadFingerprint,
    /// An attribute value has the wrong size or an unknown address family.
    #[error("malformed attribute value")]
    BadValue,
}

/// What the first bytes of a datagram or stream frame say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A STUN message of this total length.
    Stun(usize),
    /// A ChannelData message of this total length, without stream padding.
    ChannelData(usize),
}

/// Classifies the start of a frame and reads its length from the first four bytes.
///
/// Over TCP and TLS, ChannelData frames are padded to a multiple of four bytes
/// (<https://www.rfc-editor.org/rfc/rfc8656#section-12.5>); [`padded`] gives the stream length.
pub fn frame_kind(header: &[u8]) -> Result<FrameKind, ParseError> {
    let [b0, _, l0, l1, ..] = *header else {
        return Err(ParseError::Truncated);
    };
    let length = usize::from(u16::from_be_bytes([l0, l1]));
    match b0 >> 6 {
        0b00 => Ok(FrameKind::Stun(HEADER_LEN + length)),
        0b01 => Ok(FrameKind::ChannelData(4 + length)),
        _ => Err(ParseError::NotStun),
    }
}

/// `len` rounded up to a multiple of four.
pub fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

/// A ChannelData frame: channel number and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel number, 0x4000..=0x7FFF.
    pub channel: u16,
    /// The application data.
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a ChannelData frame; trailing padding is allowed.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let FrameKind::ChannelData(len) = frame_kind(bytes)? else {
            return Err(ParseError::NotStun);
        };
        let data = bytes.get(4..len).ok_or(ParseError::Truncated)?;
        let channel = u16::from_be_bytes([bytes[0], bytes[1]]);
        Ok(Self { channel, data })
    }

    /// Encodes a ChannelData frame, padded to four bytes when `pad` is true (streams).
    pub fn encode(channel: u16, data: &[u8], pad: Padding) -> Vec<u8> {
        let len = 4 + data.len();
        let total = match pad {
            Padding::Stream => padded(len),
            Padding::Datagram => len,
        };
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&channel.to_be_bytes());
        // Data larger than 64 KiB cannot arrive: relay datagrams are read into 64 KiB buffers
        // minus nothing, and the frame check in the server bounds it again.
        out.extend_from_slice(&u16::try_from(data.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(data);
        out.resize(total, 0);
        out
    }
}

/// Whether a ChannelData frame is padded: streams (TCP, TLS) pad, datagrams do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Over UDP: no padding.
    Datagram,
    /// Over TCP or TLS: padded to four bytes.
    Stream,
}

/// A parsed STUN message: a view of the bytes and where its attributes are.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    /// The method.
    pub method: Method,
    /// The class.
    pub class: Class,
    /// The transaction id.
    pub transaction: TransactionId,
    /// `(type, value offset, value length, attribute offset)` of each attribute, in order.
    attributes: Vec<(u16, usize, usize, usize)>,
}

impl<'a> Message<'a> {
    /// Parses one STUN message. Trailing bytes after the length the header gives are ignored.
    /// A FINGERPRINT, if present, is checked.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let FrameKind::Stun(len) = frame_kind(bytes)? else {
            return Err(ParseError::NotStun);
        };
        let bytes = bytes.get(..len).ok_or(ParseError::Truncated)?;
        if len < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        if len % 4 != 0 {
            return Err(ParseError::BadAttributes);
        }
        let kind = u16::from_be_bytes([bytes[0], bytes[1]]);
        let cookie = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if cookie != MAGIC_COOKIE {
            return Err(ParseError::BadCookie);
        }
        let mut transaction = [0; 12];
        transaction.copy_from_slice(&bytes[8..20]);
        // Method bits M0-M3, M4-M6, M7-M11 around class bits C0 (bit 4) and C1 (bit 8).
        // <https://www.rfc-editor.org/rfc/rfc8489#section-5>
        let method = (kind & 0x000F) | ((kind & 0x00E0) >> 1) | ((kind & 0x3E00) >> 2);
        let class = match ((kind >> 4) & 1) | ((kind >> 7) & 2) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };

        let mut attributes = Vec::new();
        let mut offset = HEADER_LEN;
        while offset < len {
            let head = bytes
                .get(offset..offset + 4)
                .ok_or(ParseError::BadAttributes)?;
            let kind = u16::from_be_bytes([head[0], head[1]]);
            let value_len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let value = offset + 4;
            if value + value_len > len {
                return Err(ParseError::BadAttributes);
            }
            if attributes.len() == MAX_ATTRIBUTES {
                return Err(ParseError::TooManyAttributes);
            }
            attributes.push((kind, value, value_len, offset));
            offset = value + padded(value_len);
        }
        let message = Self {
            bytes,
            method: Method::from_number(method),
            class,
            transaction: TransactionId(transaction),
            attributes,
        };
        message.check_fingerprint()?;
        Ok(message)
    }

    /// The raw value of the first attribute of type `kind` that counts (RFC 8489: only
    /// FINGERPRINT may follow MESSAGE-INTEGRITY; anything else after it is ignored).
    pub fn attribute(&self, kind: u16) -> Option<&'a [u8]> {
        self.counted()
            .find(|(k, ..)| *k == kind)
            .and_then(|(_, value, len, _)| self.bytes.get(value..value + len))
    }

    /// Every value of attribute type `kind` (XOR-PEER-ADDRESS may repeat).
    pub fn attributes(&self, kind: u16) -> impl Iterator<Item = &'a [u8]> + '_ {
        let bytes = self.bytes;
        self.counted()
            .filter(move |(k, ..)| *k == kind)
            .filter_map(move |(_, value, len, _)| bytes.get(value..value + len))
    }

    /// Comprehension-required attribute types (0x0000-0x7FFF) not in `known`.
    pub fn unknown_required(&self, known: &[u16]) -> Vec<u16> {
        self.counted()
            .map(|(kind, ..)| kind)
            .filter(|kind| *kind < 0x8000 && !known.contains(kind))
            .collect()
    }

    /// Whether the message carries a FINGERPRINT (replies then carry one too).
    pub fn has_fingerprint(&self) -> bool {
        self.attributes
            .iter()
            .any(|(kind, ..)| *kind == attr::FINGERPRINT)
    }

    /// Checks MESSAGE-INTEGRITY with the long-term `key`. `false` when absent or wrong.
    /// <https://www.rfc-editor.org/rfc/rfc8489#section-14.5>
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(&(_, value, len, offset)) = self
            .attributes
            .iter()
            .find(|(kind, ..)| *kind == attr::MESSAGE_INTEGRITY)
        else {
            return false;
        };
        let Some(expected) = self.bytes.get(value..value + len) else {
            return false;
        };
        if len != 20 {
            return false;
        }
        // The HMAC covers the message up to MESSAGE-INTEGRITY, with the header length set as if
        // MESSAGE-INTEGRITY were the last attribute.
        let Ok(adjusted) = u16::try_from(offset + 24 - HEADER_LEN) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
            return false;
        };
        mac.update(&self.bytes[..2]);
        mac.update(&adjusted.to_be_bytes());
        mac.update(&self.bytes[4..offset]);
        mac.verify_slice(expected).is_ok()
    }

    /// The attributes that count: everything up to MESSAGE-INTEGRITY, that, and FINGERPRINT.
    fn counted(&self) -> impl Iterator<Item = (u16, usize, usize, usize)> + '_ {
        let end = self
            .attributes
            .iter()
            .position(|(kind, ..)| *kind == attr::MESSAGE_INTEGRITY)
            .map_or(self.attributes.len(), |index| index + 1);
        self.attributes[..end].iter().copied()
    }

    fn check_fingerprint(&self) -> Result<(), ParseError> {
        let Some(&(_, value, len, offset)) = self.attributes.last() else {
            return Ok(());
        };
        if self.attributes.last().map(|a| a.0) != Some(attr::FINGERPRINT) {
            return Ok(());
        }
        let got = self
            .bytes
            .get(value..value + len)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .ok_or(ParseError::BadValue)?;
        // The header length already ends with FINGERPRINT (it is the last attribute).
        let expected = CRC32.checksum(&self.bytes[..offset]) ^ FINGERPRINT_XOR;
        if u32::from_be_bytes(got) == expected {
            Ok(())
        } else {
            Err(ParseError::BadFingerprint)
        }
    }
}

/// Reads an XOR-MAPPED-ADDRESS-style value.
/// <https://www.rfc-editor.org/rfc/rfc8489#section-14.2>
pub fn decode_xor_address(
    value: &[u8],
    transaction: &TransactionId,
) -> Result<SocketAddr, ParseError> {
    let [_, family, p0, p1, ref rest @ ..] = *value else {
        return Err(ParseError::BadValue);
    };
    let port = u16::from_be_bytes([p0, p1]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (family, rest.len()) {
        (0x01, 4) => {
            let mut ip = [0; 4];
            for (i, byte) in ip.iter_mut().enumerate() {
                *byte = rest[i] ^ cookie[i];
            }
            Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 16) => {
            let mut mask = [0; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(&transaction.0);
            let mut ip = [0; 16];
            for (i, byte) in ip.iter_mut().enumerate() {
                *byte = rest[i] ^ mask[i];
            }
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => Err(ParseError::BadValue),
    }
}

/// Writes a STUN message: header, attributes, then optional MESSAGE-INTEGRITY and FINGERPRINT.
#[derive(Debug)]
pub struct Builder {
    out: Vec<u8>,
    transaction: TransactionId,
}

impl Builder {
    /// Starts a message.
    pub fn new(method: Method, class: Class, transaction: TransactionId) -> Self {
        let method = method.number();
        let class = match class {
            Class::Request => 0,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        };
        let kind = (method & 0x000F)
            | ((method & 0x0070) << 1)
            | ((method & 0x0F80) << 2)
            | ((class & 1) << 4)
            | ((class & 2) << 7);
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&transaction.0);
        Self { out, transaction }
    }

    /// Appends an attribute with padding. Values over 64 KiB are truncated (never produced).
    pub fn attribute(mut self, kind: u16, value: &[u8]) -> Self {
        let value = &value[..value.len().min(usize::from(u16::MAX))];
        self.out.extend_from_slice(&kind.to_be_bytes());
        self.out
            .extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        self.out.extend_from_slice(value);
        let padded_len = padded(self.out.len());
        self.out.resize(padded_len, 0);
        self
    }

    /// Appends an XOR-encoded address attribute.
    pub fn xor_address(self, kind: u16, addr: SocketAddr) -> Self {
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let cookie = MAGIC_COOKIE.to_be_bytes();
        let mut value = Vec::with_capacity(20);
        value.push(0);
        match addr.ip() {
            IpAddr::V4(ip) => {
                value.push(0x01);
                value.extend_from_slice(&port.to_be_bytes());
                value.extend(ip.octets().iter().zip(cookie).map(|(a, b)| a ^ b));
            }
            IpAddr::V6(ip) => {
                value.push(0x02);
                value.extend_from_slice(&port.to_be_bytes());
                let mut mask = [0; 16];
                mask[..4].copy_from_slice(&cookie);
                mask[4..].copy_from_slice(&self.transaction.0);
                value.extend(ip.octets().iter().zip(mask).map(|(a, b)| a ^ b));
            }
        }
        self.attribute(kind, &value)
    }

    /// Appends ERROR-CODE.
    pub fn error(self, code: u16, reason: &str) -> Self {
        let mut value = vec![
            0,
            0,
            u8::try_from(code / 100).unwrap_or(5),
            (code % 100) as u8,
        ];
        value.extend_from_slice(reason.as_bytes());
        self.attribute(attr::ERROR_CODE, &value)
    }

    /// Finishes the message, adding MESSAGE-INTEGRITY with `key` if given and FINGERPRINT if
    /// asked for.
    pub fn finish(mut self, key: Option<&[u8]>, fingerprint: Fingerprint) -> Vec<u8> {
        if let Some(key) = key {
            self.set_length(self.out.len() + 24);
            let mut mac = Hmac::<Sha1>::new_from_slice(key)
                // INVARIANT: HMAC accepts keys of any length.
                .expect("HMAC takes any key length");
            mac.update(&self.out);
            let tag = mac.finalize().into_bytes();
            self = self.attribute(attr::MESSAGE_INTEGRITY, &tag);
        }
        if fingerprint == Fingerprint::Add {
            self.set_length(self.out.len() + 8);
            let crc = CRC32.checksum(&self.out) ^ FINGERPRINT_XOR;
            self = self.attribute(attr::FINGERPRINT, &crc.to_be_bytes());
        }
        self.set_length(self.out.len());
        self.out
    }

    /// Sets the header's length field for a message `total` bytes long.
    fn set_length(&mut self, total: usize) {
        let len = u16::try_from(total - HEADER_LEN).unwrap_or(u16::MAX);
        self.out[2..4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Whether [`Builder::finish`] appends FINGERPRINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fingerprint {
    /// Append FINGERPRINT (the request had one).
    Add,
    /// Leave it out.
    Omit,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txid() -> TransactionId {
        TransactionId([7; 12])
    }

    #[test]
    fn round_trips_with_integrity_and_fingerprint() {
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let peer6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let bytes = Builder::new(Method::CreatePermission, Class::Request, txid())
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .xor_address(attr::XOR_PEER_ADDRESS, peer6)
            .attribute(attr::USERNAME, b"123:alice")
            .finish(Some(b"key"), Fingerprint::Add);
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.method, Method::CreatePermission);
        assert_eq!(message.class, Class::Request);
        assert_eq!(message.transaction, txid());
        assert!(message.has_fingerprint());
        assert!(message.verify_integrity(b"key"));
        assert!(!message.verify_integrity(b"other"));
        let peers: Vec<_> = message
            .attributes(attr::XOR_PEER_ADDRESS)
            .map(|v| decode_xor_address(v, &message.transaction).unwrap())
            .collect();
        assert_eq!(peers, [peer, peer6]);
        assert_eq!(message.attribute(attr::USERNAME), Some(&b"123:alice"[..]));
    }

    #[test]
    fn classes_and_methods_encode_as_rfc_says() {
        // Allocate error response is 0x0113; ChannelBind success 0x0109; Data indication 0x0017.
        let head = |m, c| Builder::new(m, c, txid()).finish(None, Fingerprint::Omit)[..2].to_vec();
        assert_eq!(head(Method::Allocate, Class::Error), [0x01, 0x13]);
        assert_eq!(head(Method::ChannelBind, Class::Success), [0x01, 0x09]);
        assert_eq!(head(Method::Data, Class::Indication), [0x00, 0x17]);
        assert_eq!(head(Method::Binding, Class::Request), [0x00, 0x01]);
    }

    #[test]
    fn corrupted_fingerprint_is_refused() {
        let mut bytes = Builder::new(Method::Binding, Class::Request, txid())
            .attribute(attr::SOFTWARE, b"x")
            .finish(None, Fingerprint::Add);
        bytes[21] ^= 1;
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            ParseError::BadFingerprint
        );
    }

    #[test]
    fn channel_data_round_trips_with_padding() {
        let frame = ChannelData::encode(0x4001, b"hello", Padding::Stream);
        assert_eq!(frame.len(), 12);
        assert_eq!(frame_kind(&frame), Ok(FrameKind::ChannelData(9)));
        let parsed = ChannelData::parse(&frame).unwrap();
        assert_eq!((parsed.channel, parsed.data), (0x4001, &b"hello"[..]));
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error() {
        for bytes in [
            &[][..],
            &[0, 1],
            &[0x80; 40],
            &[0, 1, 0, 8, 0x21, 0x12, 0xA4, 0x42],
        ] {
            assert!(Message::parse(bytes).is_err());
        }
        // An attribute claiming more bytes than the message has.
        let mut bytes = Builder::new(Method::Binding, Class::Request, txid())
            .attribute(attr::SOFTWARE, b"abcd")
            .finish(None, Fingerprint::Omit);
        bytes[23] = 200;
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            ParseError::BadAttributes
        );
    }
}
