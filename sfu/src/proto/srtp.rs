//! SRTP for the forwarding fast path: the engine seals forwarded RTP itself instead of running a
//! full str0m send (write, timer run, pacer, poll) per packet and subscriber.
//!
//! - **Keys.** str0m keeps its SRTP contexts private, but its crypto is pluggable. The engine
//!   builds every `Rtc` with a [`CryptoProvider`] whose DTLS factory wraps the default one; the
//!   wrapper passes every call through and, when DTLS exports the keying material
//!   ([`DtlsOutput::KeyingMaterial`]), also leaves a copy in the peer's [`KeySlot`]. The slot is
//!   handed to the wrapper while [`build_rtc`] runs `RtcConfig::build` (which creates the DTLS
//!   instance synchronously), so each peer gets its own slot and nothing is shared between peers.
//! - **Key derivation.** RFC 5764 §4.2 splits the material into client key, server key, client
//!   salt, server salt; the sending direction uses the client half when the engine is the DTLS
//!   client. RFC 3711 §4.3 derives the session key (label 0x00) and salt (label 0x02) with the
//!   AES-CM PRF (AES-256 for 256-bit master keys), key derivation rate 0; RFC 7714 §11 keeps
//!   that KDF for AEAD-AES-GCM.
//! - **Sealing.** RFC 7714 §8: the IV is `(0x0000 || SSRC || ROC || SEQ) XOR salt`, the header
//!   is the associated data, the tag (16 bytes) follows the ciphertext. The AES primitives are
//!   the crypto provider's own (AES-ECB rounds for the KDF, AES-GCM for sealing).
//!
//! Only the AEAD-AES-GCM profiles (str0m's and Chrome's preference) are sealed here; with
//! AES-CM-SHA1-80 the engine falls back to str0m's own send path.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
    SrtpProfile,
};
use str0m::crypto::{AeadAes128GcmCipher, AeadAes256GcmCipher, CryptoError, CryptoProvider};
use str0m::{Rtc, RtcConfig};

/// RFC 3711 §4.3.1 key derivation label of the SRTP encryption key.
const LABEL_RTP_KEY: u8 = 0x00;
/// RFC 3711 §4.3.1 key derivation label of the SRTP salting key.
const LABEL_RTP_SALT: u8 = 0x02;

/// AEAD-AES-GCM salt length (RFC 7714 §12: 96 bits).
const GCM_SALT_LEN: usize = 12;

/// AEAD-AES-GCM authentication tag length (RFC 7714 §12: 16 octets).
pub(crate) const GCM_TAG_LEN: usize = 16;

/// SRTP keying material exported by a peer's DTLS handshake.
#[derive(Clone)]
pub(crate) struct DtlsKeys {
    /// RFC 5764 §4.2: client key, server key, client salt, server salt.
    material: Vec<u8>,
    profile: SrtpProfile,
    /// Whether the engine was the DTLS client.
    active: bool,
}

impl std::fmt::Debug for DtlsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsKeys")
            .field("profile", &self.profile)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Where one peer's DTLS instance leaves its keying material (set once per DTLS association).
pub(crate) type KeySlot = Arc<OnceLock<DtlsKeys>>;

thread_local! {
    /// The slot for the `Rtc` being built on this thread, taken by the DTLS factory.
    static HANDOVER: RefCell<Option<KeySlot>> = const { RefCell::new(None) };
}

/// Clears the handover slot even if `build` unwinds, so it never reaches another peer.
struct HandoverGuard;

impl Drop for HandoverGuard {
    fn drop(&mut self) {
        HANDOVER.with(|h| h.borrow_mut().take());
    }
}

/// Build an `Rtc` whose DTLS keying material lands in the returned slot. `config` must use the
/// provider from [`capturing_provider`]; otherwise the slot simply stays empty.
pub(crate) fn build_rtc(config: RtcConfig, now: Instant) -> (Rtc, KeySlot) {
    let slot = KeySlot::default();
    HANDOVER.with(|h| *h.borrow_mut() = Some(slot.clone()));
    let _guard = HandoverGuard;
    let rtc = config.build(now);
    (rtc, slot)
}

/// The process's default str0m crypto (stateless static references).
fn base() -> &'static CryptoProvider {
    static BASE: OnceLock<CryptoProvider> = OnceLock::new();
    BASE.get_or_init(|| {
        CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(str0m::crypto::from_feature_flags)
    })
}

/// The default crypto provider with a DTLS factory that captures SRTP keying material.
pub(crate) fn capturing_provider() -> Arc<CryptoProvider> {
    static CAPTURING: CapturingDtlsProvider = CapturingDtlsProvider;
    let mut provider = base().clone();
    provider.dtls_provider = &CAPTURING;
    Arc::new(provider)
}

#[derive(Debug)]
struct CapturingDtlsProvider;

impl DtlsProvider for CapturingDtlsProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        base().dtls_provider.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = match (shared_dtls_config(mtu), self.is_test()) {
            (Some(config), false) => new_dimpl(config, cert, now, dtls_version)?,
            _ => base()
                .dtls_provider
                .new_dtls(cert, now, dtls_version, mtu)?,
        };
        Ok(match HANDOVER.with(|h| h.borrow_mut().take()) {
            Some(slot) => Box::new(CapturingDtls { inner, slot }),
            None => inner,
        })
    }

    fn is_test(&self) -> bool {
        base().dtls_provider.is_test()
    }
}

/// The DTLS configuration of every peer with this MTU, built once. str0m's provider builds
/// (and so validates, with a full P-384 key exchange) a fresh one per `Rtc`: under a join storm
/// that was several percent of the engine's core. A handful of MTUs are kept; beyond them a
/// peer gets str0m's own path.
fn shared_dtls_config(mtu: Option<usize>) -> Option<Arc<dimpl::Config>> {
    const KEPT: usize = 4;
    static CONFIGS: Mutex<Vec<(Option<usize>, Arc<dimpl::Config>)>> = Mutex::new(Vec::new());
    let mut configs = CONFIGS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, c)) = configs.iter().find(|(m, _)| *m == mtu) {
        return Some(c.clone());
    }
    if configs.len() >= KEPT {
        return None;
    }
    // As str0m's provider: ICE checks return routability before DTLS, so no cookies.
    let mut builder = dimpl::Config::builder().use_server_cookie(false);
    if let Some(mtu) = mtu {
        builder = builder.mtu(mtu);
    }
    let config = Arc::new(builder.build().ok()?);
    configs.push((mtu, config.clone()));
    Some(config)
}

/// A DTLS instance on a shared configuration, as str0m's aws-lc-rs provider makes one.
fn new_dimpl(
    config: Arc<dimpl::Config>,
    cert: &DtlsCert,
    now: Instant,
    version: DtlsVersion,
) -> Result<Box<dyn DtlsInstance>, CryptoError> {
    let certificate = dimpl::DtlsCertificate {
        certificate: cert.certificate.clone(),
        private_key: cert.private_key.clone(),
    };
    let dtls = match version {
        DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, certificate, now),
        DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, certificate, now),
        DtlsVersion::Auto => dimpl::Dtls::new_auto(config, certificate, now),
        other => {
            return Err(CryptoError::Other(format!(
                "unsupported DTLS version: {other}"
            )));
        }
    };
    Ok(Box::new(Dimpl(dtls)))
}

/// `dimpl::Dtls` as str0m's DTLS instance: every call passes straight through.
struct Dimpl(dimpl::Dtls);

impl std::fmt::Debug for Dimpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dimpl")
    }
}

impl DtlsInstance for Dimpl {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.0.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}

/// A DTLS instance that behaves exactly as the wrapped one and copies the keying material.
#[derive(Debug)]
struct CapturingDtls {
    inner: Box<dyn DtlsInstance>,
    slot: KeySlot,
}

impl DtlsInstance for CapturingDtls {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let out = self.inner.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(material, profile) = &out {
            let keys = DtlsKeys {
                material: material.to_vec(),
                profile: *profile,
                active: self.inner.is_active(),
            };
            if self.slot.set(keys).is_err() {
                // DTLS-SRTP exports once per association (RFC 5764 §4.2); a second export
                // would be a new association, which WebRTC does not do on one connection.
                tracing::debug!("DTLS exported SRTP keys twice; keeping the first");
            }
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}

/// RFC 3711 §4.3.1 / §4.3.3: derive `out` from a master key and salt with the AES-CM PRF
/// (AES-128 or AES-256 by master key length), key derivation rate 0.
///
/// The input block is `(master_salt XOR (label << 48)) * 2^16 + i`: the salt occupies the first
/// 14 octets (a 12-octet GCM master salt fills the first 12 and the next two stay zero, as the
/// receiving SRTP stacks derive it), the label sits in octet 7, the block counter in the last
/// two.
fn derive(
    crypto: &CryptoProvider,
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) {
    let mut block = [0u8; 16];
    block[..master_salt.len().min(14)].copy_from_slice(&master_salt[..master_salt.len().min(14)]);
    block[7] ^= label;
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        block[14..].copy_from_slice(&(i as u16).to_be_bytes());
        // The providers encrypt in place into `output[..16]`; leave room for their padding.
        let mut keystream = [0u8; 32];
        if master_key.len() == 32 {
            crypto
                .srtp_provider
                .srtp_aes_256_ecb_round(master_key, &block, &mut keystream);
        } else {
            crypto
                .srtp_provider
                .srtp_aes_128_ecb_round(master_key, &block, &mut keystream);
        }
        chunk.copy_from_slice(&keystream[..chunk.len()]);
    }
}

/// RFC 7714 §8.1 IV: `(0x0000 || SSRC || ROC || SEQ) XOR salt`, with `index = ROC << 16 | SEQ`.
fn rtp_iv(salt: &[u8; GCM_SALT_LEN], ssrc: u32, index: u64) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&((index >> 16) as u32).to_be_bytes());
    iv[10..12].copy_from_slice(&(index as u16).to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}

enum Cipher {
    Gcm128(Box<dyn AeadAes128GcmCipher>),
    Gcm256(Box<dyn AeadAes256GcmCipher>),
}

/// Seals outgoing SRTP packets of one peer connection (the engine's sending direction).
pub(crate) struct Sealer {
    salt: [u8; GCM_SALT_LEN],
    cipher: Cipher,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let profile = match self.cipher {
            Cipher::Gcm128(_) => "AEAD_AES_128_GCM",
            Cipher::Gcm256(_) => "AEAD_AES_256_GCM",
        };
        f.debug_struct("Sealer")
            .field("profile", &profile)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// The sealer for the engine's sending direction, or `None` for a profile the fast path
    /// does not implement (AES-CM-SHA1-80) or malformed material.
    pub fn from_keys(crypto: &CryptoProvider, keys: &DtlsKeys) -> Option<Self> {
        let key_len = match keys.profile {
            SrtpProfile::AEAD_AES_128_GCM => 16,
            SrtpProfile::AEAD_AES_256_GCM => 32,
            _ => return None,
        };
        let m = &keys.material;
        if m.len() != 2 * (key_len + GCM_SALT_LEN) {
            return None;
        }
        // RFC 5764 §4.2: [client key | server key | client salt | server salt].
        let side = usize::from(!keys.active);
        let master_key = &m[side * key_len..(side + 1) * key_len];
        let salts = &m[2 * key_len..];
        let master_salt = &salts[side * GCM_SALT_LEN..(side + 1) * GCM_SALT_LEN];
        Some(Self::from_master(crypto, master_key, master_salt))
    }

    /// A sealer from a master key (16 or 32 octets) and 12-octet master salt.
    fn from_master(crypto: &CryptoProvider, master_key: &[u8], master_salt: &[u8]) -> Self {
        let mut salt = [0u8; GCM_SALT_LEN];
        derive(crypto, master_key, master_salt, LABEL_RTP_SALT, &mut salt);
        let cipher = if master_key.len() == 32 {
            let mut key = [0u8; 32];
            derive(crypto, master_key, master_salt, LABEL_RTP_KEY, &mut key);
            Cipher::Gcm256(
                crypto
                    .srtp_provider
                    .aead_aes_256_gcm()
                    .create_cipher(key, true),
            )
        } else {
            let mut key = [0u8; 16];
            derive(crypto, master_key, master_salt, LABEL_RTP_KEY, &mut key);
            Cipher::Gcm128(
                crypto
                    .srtp_provider
                    .aead_aes_128_gcm()
                    .create_cipher(key, true),
            )
        };
        Sealer { salt, cipher }
    }

    /// A sealer from session key and salt directly (for known-answer tests).
    #[cfg(test)]
    fn from_session(crypto: &CryptoProvider, key: &[u8], salt: [u8; GCM_SALT_LEN]) -> Self {
        let cipher = match key.len() {
            32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(key);
                Cipher::Gcm256(
                    crypto
                        .srtp_provider
                        .aead_aes_256_gcm()
                        .create_cipher(k, true),
                )
            }
            _ => {
                let mut k = [0u8; 16];
                k.copy_from_slice(key);
                Cipher::Gcm128(
                    crypto
                        .srtp_provider
                        .aead_aes_128_gcm()
                        .create_cipher(k, true),
                )
            }
        };
        Sealer { salt, cipher }
    }

    /// Seal one RTP packet in place: `packet[..header_len]` holds the RTP header (the associated
    /// data), `payload` the plaintext; ciphertext and tag are written after the header.
    /// `packet` must hold `header_len + payload.len() + GCM_TAG_LEN` octets. `index` is the
    /// packet's SRTP index (ROC << 16 | SEQ) and must never repeat under one key.
    pub fn seal(
        &mut self,
        packet: &mut [u8],
        header_len: usize,
        payload: &[u8],
        ssrc: u32,
        index: u64,
    ) -> Result<(), CryptoError> {
        let iv = rtp_iv(&self.salt, ssrc, index);
        let (aad, body) = packet.split_at_mut(header_len);
        let body = &mut body[..payload.len() + GCM_TAG_LEN];
        match &mut self.cipher {
            Cipher::Gcm128(c) => c.encrypt(&iv, aad, payload, body),
            Cipher::Gcm256(c) => c.encrypt(&iv, aad, payload, body),
        }
    }
}

/// The SRTP indices already sealed under one key for one SSRC, so that none is sealed twice
/// (an AES-GCM nonce must never repeat). Keeps the highest index and a 64-packet window below.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SealedIndices {
    highest: Option<u64>,
    /// Bit `i` set: `highest - i` was sealed.
    window: u64,
}

impl SealedIndices {
    /// Mark `index` as sealed; `false` if it was sealed before or is too old to tell.
    pub fn claim(&mut self, index: u64) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(index);
            self.window = 1;
            return true;
        };
        if index > highest {
            let shift = index - highest;
            self.window = if shift >= 64 { 0 } else { self.window << shift } | 1;
            self.highest = Some(index);
            return true;
        }
        let age = highest - index;
        if age >= 64 || self.window & (1 << age) != 0 {
            return false;
        }
        self.window |= 1 << age;
        true
    }
}

/// The RTP header fields of one forwarded packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtpHeaderOut<'a> {
    pub payload_type: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// RFC 6464 audio level: extension id and the level octet (V bit and −dBov).
    pub audio_level: Option<(u8, u8)>,
    /// RFC 8843 MID: extension id and value (at most 16 octets).
    pub mid: Option<(u8, &'a [u8])>,
}

/// Longest header [`write_header`] produces: 12 fixed octets, 4 of extension header, audio
/// level (2), MID (1 + 16), padding.
pub(crate) const MAX_HEADER_LEN: usize = 12 + 4 + 2 + 17 + 3;

/// Write an RTP header (RFC 3550 §5.1) with one-byte header extensions (RFC 8285 §4.2) into
/// `buf` (at least [`MAX_HEADER_LEN`] octets). Extension ids must be 1..=14. Returns its length.
pub(crate) fn write_header(buf: &mut [u8], h: &RtpHeaderOut<'_>) -> usize {
    let has_ext = h.audio_level.is_some() || h.mid.is_some();
    buf[0] = 0x80 | if has_ext { 0x10 } else { 0 };
    buf[1] = (h.payload_type & 0x7f) | if h.marker { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&h.seq.to_be_bytes());
    buf[4..8].copy_from_slice(&h.timestamp.to_be_bytes());
    buf[8..12].copy_from_slice(&h.ssrc.to_be_bytes());
    if !has_ext {
        return 12;
    }
    buf[12..14].copy_from_slice(&[0xbe, 0xde]);
    let mut at = 16;
    if let Some((id, level)) = h.audio_level {
        buf[at] = id << 4;
        buf[at + 1] = level;
        at += 2;
    }
    if let Some((id, mid)) = h.mid {
        buf[at] = (id << 4) | ((mid.len() as u8).wrapping_sub(1) & 0x0f);
        buf[at + 1..at + 1 + mid.len()].copy_from_slice(mid);
        at += 1 + mid.len();
    }
    while (at - 16) % 4 != 0 {
        buf[at] = 0;
        at += 1;
    }
    let words = ((at - 16) / 4) as u16;
    buf[14..16].copy_from_slice(&words.to_be_bytes());
    at
}

/// RFC 6464 §3 level octet from str0m's values (level in −dBov, voice activity flag).
pub(crate) fn audio_level_octet(level: i8, voice: bool) -> u8 {
    (if voice { 0x80 } else { 0 }) | (level.unsigned_abs() & 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_share_one_dtls_configuration_per_mtu() {
        let a = shared_dtls_config(Some(1150)).expect("a configuration");
        let b = shared_dtls_config(Some(1150)).expect("a configuration");
        assert!(Arc::ptr_eq(&a, &b), "built once");
        assert_eq!(a.mtu(), 1150);
        let other = shared_dtls_config(Some(1200)).expect("a configuration");
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(other.mtu(), 1200);
        // And the engine's DTLS factory hands out instances on it.
        let cert = base()
            .dtls_provider
            .generate_certificate()
            .expect("certificate");
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let dtls = CapturingDtlsProvider.new_dtls(&cert, now, DtlsVersion::Auto, Some(1150));
        assert!(dtls.is_ok());
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn crypto() -> CryptoProvider {
        str0m::crypto::from_feature_flags()
    }

    /// RFC 3711 Appendix B.3 key derivation test vectors (AES-128 PRF).
    #[test]
    fn kdf_matches_rfc3711_appendix_b3() {
        let c = crypto();
        let master_key = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let master_salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut key = [0u8; 16];
        derive(&c, &master_key, &master_salt, LABEL_RTP_KEY, &mut key);
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut salt = [0u8; 14];
        derive(&c, &master_key, &master_salt, LABEL_RTP_SALT, &mut salt);
        assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        // The authentication key (label 0x01) spans two PRF blocks.
        let mut auth = [0u8; 20];
        derive(&c, &master_key, &master_salt, 0x01, &mut auth);
        assert_eq!(
            auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    /// RFC 7714 §16.1.1 (AEAD_AES_128_GCM) and §17.1.1 (AEAD_AES_256_GCM) RTP packets.
    #[test]
    fn seal_matches_rfc7714_vectors() {
        let c = crypto();
        let mut salt = [0u8; 12];
        salt.copy_from_slice(&hex("517569642070726f2071756f"));
        let plain = hex(
            "8040f17b8041f8d35501a0b2 47616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573",
        );
        let cases = [
            (
                hex("000102030405060708090a0b0c0d0e0f"),
                hex(
                    "8040f17b8041f8d35501a0b2 f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce",
                ),
            ),
            (
                hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"),
                hex(
                    "8040f17b8041f8d35501a0b2 32b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3b50b2a0276ffae0f1ba63799b87b7aa3db36dfffd6b0f9bb7878d7a76c13",
                ),
            ),
        ];
        for (key, expected) in cases {
            let mut sealer = Sealer::from_session(&c, &key, salt);
            let mut packet = vec![0u8; plain.len() + GCM_TAG_LEN];
            packet[..12].copy_from_slice(&plain[..12]);
            // SSRC 0x5501a0b2, SEQ 0xf17b, ROC 0 (from the header).
            sealer
                .seal(&mut packet, 12, &plain[12..], 0x5501_a0b2, 0xf17b)
                .unwrap();
            assert_eq!(packet, expected);
        }
    }

    #[test]
    fn iv_carries_roc_and_seq() {
        let salt = [0u8; 12];
        let iv = rtp_iv(&salt, 0x0102_0304, (7 << 16) | 0xabcd);
        assert_eq!(iv, [0, 0, 1, 2, 3, 4, 0, 0, 0, 7, 0xab, 0xcd]);
    }

    /// The material layout: the sending side takes the server half when passive.
    #[test]
    fn sealer_uses_own_sending_half() {
        let c = crypto();
        let mut material = Vec::new();
        material.extend([1u8; 16]); // client key
        material.extend([2u8; 16]); // server key
        material.extend([3u8; 12]); // client salt
        material.extend([4u8; 12]); // server salt
        let seal_with = |sealer: &mut Sealer| {
            let mut p = vec![0u8; 12 + 4 + GCM_TAG_LEN];
            p[0] = 0x80;
            sealer.seal(&mut p, 12, &[9, 9, 9, 9], 1, 1).unwrap();
            p
        };
        for (active, key, salt) in [(true, [1u8; 16], [3u8; 12]), (false, [2u8; 16], [4u8; 12])] {
            let keys = DtlsKeys {
                material: material.clone(),
                profile: SrtpProfile::AEAD_AES_128_GCM,
                active,
            };
            let mut from_keys = Sealer::from_keys(&c, &keys).unwrap();
            let mut direct = Sealer::from_master(&c, &key, &salt);
            assert_eq!(seal_with(&mut from_keys), seal_with(&mut direct));
        }
        let cm = DtlsKeys {
            material: vec![0; 60],
            profile: SrtpProfile::AES128_CM_SHA1_80,
            active: false,
        };
        assert!(Sealer::from_keys(&c, &cm).is_none(), "AES-CM falls back");
        let short = DtlsKeys {
            material: vec![0; 10],
            profile: SrtpProfile::AEAD_AES_256_GCM,
            active: false,
        };
        assert!(Sealer::from_keys(&c, &short).is_none());
    }

    #[test]
    fn sealed_indices_never_repeat() {
        let mut s = SealedIndices::default();
        assert!(s.claim(100));
        assert!(!s.claim(100));
        assert!(s.claim(102));
        assert!(s.claim(101));
        assert!(!s.claim(101));
        assert!(s.claim(200));
        assert!(!s.claim(102), "too old to tell: refused");
        assert!(s.claim(199));
        assert!(s.claim(1000));
        assert!(!s.claim(200));
    }

    #[test]
    fn header_with_extensions_is_padded_to_words() {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let h = RtpHeaderOut {
            payload_type: 111,
            marker: true,
            seq: 0x1234,
            timestamp: 0xdead_beef,
            ssrc: 0x0102_0304,
            audio_level: Some((1, audio_level_octet(-30, true))),
            mid: Some((4, b"12")),
        };
        let n = write_header(&mut buf, &h);
        assert_eq!(n, 24);
        assert_eq!(
            buf[..n].to_vec(),
            hex("90ef1234deadbeef01020304bede0002109e413132000000")
        );
        let bare = RtpHeaderOut {
            audio_level: None,
            mid: None,
            marker: false,
            ..h
        };
        assert_eq!(write_header(&mut buf, &bare), 12);
        assert_eq!(buf[0], 0x80);
        assert_eq!(buf[1], 111);
    }
}
