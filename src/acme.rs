//! Certificates by ACME (`[http] acme_domains`): obtained and renewed by Stoa itself with the
//! TLS-ALPN-01 challenge (RFC 8737), answered on the HTTPS listener, and served for HTTPS, WSS
//! and TURN over TLS through one certificate resolver, so a renewal takes effect on the next
//! handshake without a restart.
//!
//! - At start-up the cached certificate (`acme_cache_dir`) is served at once, if there is one.
//! - A task obtains a certificate when there is none or it is due: `min(30 days, a third of its
//!   lifetime)` before it expires, or when it does not cover every configured domain.
//! - The ACME account key (`acme_account_key`, ECDSA P-256, PKCS#8 PEM) is made on first use and
//!   kept; the same key finds the same account again.
//! - A failed attempt leaves the current certificate in use, logs why in one line and is retried
//!   with a backoff (1 minute, doubling, at most 1 hour).

// The shell owns the clock: certificate validity is compared with the wall clock.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, Key, NewOrder, OrderStatus,
    RetryPolicy,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tracing::{info, warn};

/// Let's Encrypt's production directory, the default `acme_directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737, section 6.2).
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Renew at most this long before expiry (a third of the lifetime for shorter certificates).
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// First retry after a failed attempt; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// Longest sleep between checks, so that a clock jump or a suspended VM is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Bound on one whole attempt (account, order, validation, certificate).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The validated ACME settings (`[http] acme_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// DNS names the certificate covers; never empty.
    pub domains: Vec<String>,
    /// Contact e-mail address given to the CA (`mailto:`), if any.
    pub email: Option<String>,
    /// The ACME directory URL.
    pub directory: String,
    /// PEM CA certificate the directory's HTTPS certificate is verified with instead of the
    /// system's trust store (a private ACME CA).
    pub ca_file: Option<PathBuf>,
    /// The account's private key (PKCS#8 PEM); made on first use.
    pub account_key: PathBuf,
    /// Where the certificate and its key are kept.
    pub cache_dir: PathBuf,
}

impl AcmeSettings {
    fn certificate_file(&self) -> PathBuf {
        self.cache_dir.join("certificate.pem")
    }

    fn private_key_file(&self) -> PathBuf {
        self.cache_dir.join("private-key.pem")
    }
}

/// Checks one `acme_domains` entry: a DNS name TLS-ALPN-01 can validate (no wildcard, no IP).
pub fn check_domain(domain: &str) -> Result<String, String> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return Err("an empty domain".to_owned());
    }
    if domain.contains('*') {
        return Err(format!(
            "{domain}: wildcards need the DNS-01 challenge, which Stoa does not answer"
        ));
    }
    if domain.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{domain}: an IP address, not a domain name"));
    }
    let labels_ok = domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if !labels_ok || !domain.contains('.') || domain.len() > 253 {
        return Err(format!(
            "{domain:?} is not a domain name such as rooms.example.com"
        ));
    }
    Ok(domain)
}

/// The certificate to serve and the TLS-ALPN-01 challenge certificates in flight.
pub struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if validation {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&name)
                .cloned();
        }
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl CertResolver {
    fn set_current(&self, key: Arc<CertifiedKey>) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
    }

    fn challenges(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<CertifiedKey>>> {
        self.challenges
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A certificate in use: what serves it and when it is due for renewal.
struct Current {
    not_after: SystemTime,
    renew_at: SystemTime,
    covers_domains: bool,
}

/// ACME certificates for the HTTPS listener and TURN over TLS.
#[derive(Debug, Clone)]
pub struct Acme {
    resolver: Arc<CertResolver>,
}

impl Acme {
    /// Serves the cached certificate, if any, and starts the task that obtains and renews
    /// certificates (needs a tokio runtime). Fails only on what an operator must fix before
    /// anything can work: a cache directory or account key that cannot be created or read.
    pub fn start(settings: AcmeSettings) -> Result<Acme> {
        // The ACME client's HTTPS connector builds its TLS configuration from the process-wide
        // provider; the rest of Stoa names aws-lc-rs explicitly. Already installed is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        std::fs::create_dir_all(&settings.cache_dir).with_context(|| {
            format!(
                "http.acme_cache_dir: cannot create {}",
                settings.cache_dir.display()
            )
        })?;
        let account_key = load_or_make_account_key(&settings.account_key)?;
        let resolver = Arc::new(CertResolver {
            current: RwLock::new(None),
            challenges: RwLock::new(HashMap::new()),
        });
        let current = match load_cached(&settings) {
            Ok(Some((key, current))) => {
                resolver.set_current(key);
                info!(
                    domains = %settings.domains.join(","),
                    valid_until = %Utc(current.not_after),
                    "ACME: serving the cached certificate"
                );
                Some(current)
            }
            Ok(None) => None,
            Err(e) => {
                warn!("ACME: the cached certificate cannot be used ({e:#}); obtaining a new one");
                None
            }
        };
        tokio::spawn(manage(settings, account_key, resolver.clone(), current));
        Ok(Acme { resolver })
    }

    /// The HTTPS listener's configuration: HTTP/1.1, and `acme-tls/1` for validation.
    pub fn https_config(&self) -> Arc<ServerConfig> {
        self.server_config(vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()])
    }

    /// A configuration serving the ACME certificate with `alpn` (TURN over TLS: none).
    pub fn server_config(&self, alpn: Vec<Vec<u8>>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            // INVARIANT: aws-lc-rs supports the default protocol versions.
            .expect("default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = alpn;
        Arc::new(config)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Obtains a certificate whenever none is served or the current one is due; never returns.
async fn manage(
    settings: AcmeSettings,
    account_key: PrivatePkcs8KeyDer<'static>,
    resolver: Arc<CertResolver>,
    mut current: Option<Current>,
) {
    let mut retry = FIRST_RETRY;
    loop {
        let now = SystemTime::now();
        if let Some(c) = current
            .as_ref()
            .filter(|c| c.covers_domains && c.renew_at > now)
        {
            let wait = c.renew_at.duration_since(now).unwrap_or_default();
            tokio::time::sleep(wait.min(MAX_SLEEP)).await;
            continue;
        }
        let attempt =
            tokio::time::timeout(ATTEMPT_TIMEOUT, obtain(&settings, &account_key, &resolver))
                .await
                .unwrap_or_else(|_| Err(anyhow!("no certificate within {ATTEMPT_TIMEOUT:?}")));
        resolver.challenges().clear();
        match attempt {
            Ok((key, issued)) => {
                resolver.set_current(key);
                info!(
                    domains = %settings.domains.join(","),
                    valid_until = %Utc(issued.not_after),
                    renew_at = %Utc(issued.renew_at),
                    renewal = current.is_some(),
                    "ACME: certificate obtained; serving it from now on"
                );
                current = Some(issued);
                retry = FIRST_RETRY;
            }
            Err(e) => {
                let keeping = match &current {
                    Some(c) => format!(
                        "keeping the current certificate (valid until {})",
                        Utc(c.not_after)
                    ),
                    None => "no certificate to serve yet: HTTPS handshakes fail".to_owned(),
                };
                warn!(
                    "ACME: no certificate from {} for {}: {e:#}; {keeping}; retrying in {}s",
                    settings.directory,
                    settings.domains.join(","),
                    retry.as_secs()
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

/// One ACME attempt: account, order, TLS-ALPN-01 for every domain, certificate; the new
/// certificate is written to the cache before it is returned.
async fn obtain(
    settings: &AcmeSettings,
    account_key: &PrivatePkcs8KeyDer<'static>,
    resolver: &CertResolver,
) -> Result<(Arc<CertifiedKey>, Current)> {
    let builder = match &settings.ca_file {
        Some(ca) => Account::builder_with_root(ca)
            .with_context(|| format!("http.acme_ca_file {}", ca.display()))?,
        None => Account::builder().context("the system's trust store")?,
    };
    let key = Key::from_pkcs8_der(account_key.clone_key()).context("the account key")?;
    let (account, _) = builder
        .create_from_key(
            (key, PrivateKeyDer::Pkcs8(account_key.clone_key())),
            settings.directory.clone(),
        )
        .await
        .context("account")?;
    if let Some(email) = &settings.email {
        let contact = format!("mailto:{email}");
        account
            .update_contacts(&[contact.as_str()])
            .await
            .context("account contact")?;
    }

    let identifiers: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("new order")?;
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.context("authorization")?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => bail!("authorization is {status:?}"),
        }
        let mut challenge = authorization
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| anyhow!("the CA offers no tls-alpn-01 challenge"))?;
        let domain = challenge.identifier().to_string();
        let digest = challenge.key_authorization().digest();
        let validation = challenge_certificate(&domain, digest.as_ref())?;
        resolver.challenges().insert(domain, validation);
        challenge.set_ready().await.context("challenge")?;
    }
    let policy = RetryPolicy::new().timeout(Duration::from_secs(90));
    let status = order.poll_ready(&policy).await.context("validation")?;
    if status != OrderStatus::Ready {
        bail!(
            "the CA did not validate the domains (order {status:?}; is port 443 of each domain \
             this server's HTTPS listener?)"
        );
    }
    let private_key_pem = order.finalize().await.context("finalize")?;
    let chain_pem = order
        .poll_certificate(&policy)
        .await
        .context("certificate")?;

    let (key, current) = certified_key(&chain_pem, &private_key_pem, &settings.domains)?;
    write_private(&settings.private_key_file(), private_key_pem.as_bytes())?;
    write_private(&settings.certificate_file(), chain_pem.as_bytes())?;
    Ok((key, current))
}

/// The self-signed TLS-ALPN-01 certificate for `domain` carrying the key authorization's
/// SHA-256 `digest` in a critical acmeIdentifier extension (RFC 8737, section 3).
fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>> {
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_owned()]).context("challenge certificate")?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().context("challenge key")?;
    let cert = params.self_signed(&key).context("challenge certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its consistency check parses the certificate with webpki,
    // which refuses the critical acmeIdentifier extension that validation requires.
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow!("challenge key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// The cached certificate and key, if both files exist.
fn load_cached(settings: &AcmeSettings) -> Result<Option<(Arc<CertifiedKey>, Current)>> {
    let (cert_file, key_file) = (settings.certificate_file(), settings.private_key_file());
    if !cert_file.exists() || !key_file.exists() {
        return Ok(None);
    }
    let chain = std::fs::read_to_string(&cert_file)
        .with_context(|| format!("cannot read {}", cert_file.display()))?;
    let key = std::fs::read_to_string(&key_file)
        .with_context(|| format!("cannot read {}", key_file.display()))?;
    certified_key(&chain, &key, &settings.domains).map(Some)
}

/// Parses a PEM chain and key into what rustls serves, with the leaf's validity.
fn certified_key(
    chain_pem: &str,
    key_pem: &str,
    domains: &[String],
) -> Result<(Arc<CertifiedKey>, Current)> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("certificate PEM: {e}"))?;
    let leaf = chain
        .first()
        .ok_or_else(|| anyhow!("no certificate in the PEM chain"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| anyhow!("certificate: {e}"))?;
    let validity = parsed.validity();
    let not_before = unix(validity.not_before.timestamp());
    let not_after = unix(validity.not_after.timestamp());
    let names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        Some(dns.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let covers_domains = domains.iter().all(|d| names.contains(d));
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let renew_at = not_after - RENEW_BEFORE.min(lifetime / 3);
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| anyhow!("private key PEM: {e}"))?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| anyhow!("certificate and key: {e}"))?;
    Ok((
        Arc::new(certified),
        Current {
            not_after,
            renew_at,
            covers_domains,
        },
    ))
}

fn unix(seconds: i64) -> SystemTime {
    match u64::try_from(seconds) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

/// The account key at `path`, made (ECDSA P-256, readable by the owner only) if absent.
fn load_or_make_account_key(path: &Path) -> Result<PrivatePkcs8KeyDer<'static>> {
    if path.exists() {
        let key = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| {
            anyhow!(
                "http.acme_account_key {}: not a PKCS#8 PEM private key ({e})",
                path.display()
            )
        })?;
        Key::from_pkcs8_der(key.clone_key()).map_err(|e| {
            anyhow!(
                "http.acme_account_key {}: not an ECDSA P-256 key ({e})",
                path.display()
            )
        })?;
        return Ok(key);
    }
    let (_, key) =
        Key::generate_pkcs8().map_err(|e| anyhow!("cannot make an ACME account key: {e}"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("http.acme_account_key: cannot create {}", dir.display()))?;
    }
    let pem = pem_encode("PRIVATE KEY", key.secret_pkcs8_der());
    write_private(path, pem.as_bytes())
        .with_context(|| format!("http.acme_account_key {}", path.display()))?;
    info!(path = %path.display(), "ACME: made a new account key");
    Ok(key)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// Writes `bytes` to `path` readable by the owner only, through a temporary file renamed over
/// it, so a crash never leaves half a key.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// A time shown as RFC 3339 UTC to the second.
struct Utc(SystemTime);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let at = i64::try_from(secs)
            .ok()
            .and_then(|s| jiff::Timestamp::from_second(s).ok())
            .unwrap_or(jiff::Timestamp::MAX);
        write!(f, "{at}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_checked() {
        assert_eq!(
            check_domain("Rooms.Example.com."),
            Ok("rooms.example.com".to_owned())
        );
        for bad in [
            "",
            "*.example.com",
            "127.0.0.1",
            "localhost",
            "a..b",
            "-a.com",
            "a b.com",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn utc_is_rfc3339() {
        assert_eq!(Utc(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Utc(UNIX_EPOCH + Duration::from_secs(1_796_515_200 + 3661)).to_string(),
            "2026-12-06T01:01:01Z"
        );
    }

    #[test]
    fn a_cached_certificate_is_due_a_third_of_its_lifetime_before_expiry() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["rooms.example.com".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 10);
        let cert = params.self_signed(&key).expect("cert");
        let (_, current) = certified_key(
            &cert.pem(),
            &key.serialize_pem(),
            &["rooms.example.com".to_owned()],
        )
        .expect("parsed");
        assert!(current.covers_domains);
        assert_eq!(
            current
                .not_after
                .duration_since(current.renew_at)
                .expect("before"),
            Duration::from_secs(3 * 24 * 3600)
        );
        let (_, other) = certified_key(
            &cert.pem(),
            &key.serialize_pem(),
            &[
                "rooms.example.com".to_owned(),
                "turn.example.com".to_owned(),
            ],
        )
        .expect("parsed");
        assert!(!other.covers_domains, "a missing domain makes it due");
    }
}
