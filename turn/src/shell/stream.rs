//! TURN over TCP and TLS: one task per connection splits the byte stream into STUN messages
//! and ChannelData frames (RFC 8656 section 12.5 framing) and writes the core's replies back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::debug;

use super::shard::Inbox;
use super::{Input, StartError, TlsCertificates, TlsConfig};
use crate::proto::message::{FrameKind, frame_kind, padded};
use crate::proto::{Client, Transport};

/// A connection that sends nothing for this long is closed (clients refresh well within it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(900);

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames queued for one connection's writer; more are dropped.
const WRITE_QUEUE: usize = 512;

/// Builds the TLS acceptor from PEM files or a ready configuration.
pub(super) fn tls_acceptor(config: &TlsConfig) -> Result<TlsAcceptor, StartError> {
    match &config.certificates {
        TlsCertificates::Files {
            certificate,
            private_key,
        } => {
            let server =
                server_config(certificate, private_key, Vec::new()).map_err(StartError::Tls)?;
            Ok(TlsAcceptor::from(Arc::new(server)))
        }
        TlsCertificates::Config(server) => Ok(TlsAcceptor::from(server.clone())),
    }
}

/// A rustls server configuration from a PEM certificate chain and its private key, offering
/// `alpn`. Errors name the file and the problem in one line. `stoa serve`'s HTTPS uses it too.
pub fn server_config(
    certificate: &Path,
    private_key: &Path,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, String> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|error| format!("certificate {}: {error}", certificate.display()))?;
    if certificates.is_empty() {
        return Err(format!("no certificate in {}", certificate.display()));
    }
    let key = PrivateKeyDer::from_pem_file(private_key)
        .map_err(|error| format!("private key {}: {error}", private_key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|error| {
            format!(
                "certificate {} with key {}: {error}",
                certificate.display(),
                private_key.display()
            )
        })?;
    server.alpn_protocols = alpn;
    Ok(server)
}

/// Accepts connections until the shards go away, handing them to the shards in turn.
pub(super) async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
    inboxes: Arc<[Inbox]>,
) {
    let mut next: usize = 0;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "TURN accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        next = next.wrapping_add(1);
        let Some(input) = inboxes
            .get(next % inboxes.len().max(1))
            .filter(|inbox| !inbox.is_closed())
            .cloned()
        else {
            return;
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            debug!("TURN connection limit reached; closing a new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let client = Client {
                        transport: Transport::Tcp,
                        addr,
                    };
                    serve(stream, client, input).await;
                }
                Some(acceptor) => {
                    let client = Client {
                        transport: Transport::Tls,
                        addr,
                    };
                    match handshake(&acceptor, stream).await {
                        Some(stream) => serve(stream, client, input).await,
                        None => debug!("TURN TLS handshake failed"),
                    }
                }
            }
        });
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .ok()?
        .ok()
}

/// Runs one connection: frames in, queued frames out, until either side ends.
async fn serve<S>(stream: S, client: Client, input: Inbox)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (sender, mut outgoing) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    if input
        .send(Input::Connected { client, sender })
        .await
        .is_err()
    {
        return;
    }
    let write = async move {
        while let Some(frame) = outgoing.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    };
    let read = async {
        while let Ok(Some(bytes)) =
            tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut reader)).await
        {
            if input.send(Input::Client { client, bytes }).await.is_err() {
                break;
            }
        }
    };
    // Whichever side ends first ends the connection.
    tokio::select! {
        () = read => {}
        () = write => {}
    }
    let _ = input.send(Input::Closed { client }).await;
}

/// Reads one frame; `None` on end of stream, an error or bytes that are not TURN.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Option<Vec<u8>> {
    let mut header = [0; 4];
    reader.read_exact(&mut header).await.ok()?;
    let len = match frame_kind(&header).ok()? {
        FrameKind::Stun(len) => len,
        FrameKind::ChannelData(len) => padded(len),
    };
    let mut frame = vec![0; len];
    frame[..4].copy_from_slice(&header);
    reader.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}
