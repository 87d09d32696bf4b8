//! Discovering the node's public address with STUN (`[rtc] use_external_ip`, LiveKit's
//! `rtc.use_external_ip`): a Binding request from the media address to each configured STUN
//! server in turn; the first XOR-MAPPED-ADDRESS that comes back is what clients are told to
//! reach (behind 1:1 NAT, the public address; the sockets stay bound to the private one).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use stoa_turn::proto::message::{
    Builder, Class, Fingerprint, Message, Method, TransactionId, attr, decode_xor_address,
};
use tokio::net::UdpSocket;
use tracing::{debug, info};

/// LiveKit's defaults, used when `use_external_ip` is on and no servers are configured.
pub const DEFAULT_STUN_SERVERS: [&str; 2] = ["stun.l.google.com:19302", "stun1.l.google.com:19302"];

/// How long one server gets to answer one request.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Requests sent to each server before trying the next (UDP may drop one).
const ATTEMPTS: usize = 2;

/// A STUN Binding request with transaction id `transaction`.
pub fn binding_request(transaction: [u8; 12]) -> Vec<u8> {
    Builder::new(Method::Binding, Class::Request, TransactionId(transaction))
        .finish(None, Fingerprint::Add)
}

/// The address a Binding success response to `transaction` reports, if `bytes` is one:
/// XOR-MAPPED-ADDRESS, or the older MAPPED-ADDRESS.
pub fn mapped_address(bytes: &[u8], transaction: [u8; 12]) -> Option<SocketAddr> {
    let message = Message::parse(bytes).ok()?;
    if message.method != Method::Binding
        || message.class != Class::Success
        || message.transaction.0 != transaction
    {
        return None;
    }
    if let Some(value) = message.attribute(attr::XOR_MAPPED_ADDRESS) {
        return decode_xor_address(value, &message.transaction).ok();
    }
    plain_address(message.attribute(attr::MAPPED_ADDRESS)?)
}

/// A MAPPED-ADDRESS value (RFC 8489 §14.1): reserved, family, port, address, in the clear.
fn plain_address(value: &[u8]) -> Option<SocketAddr> {
    let [_, family, p0, p1, ref ip @ ..] = *value else {
        return None;
    };
    let port = u16::from_be_bytes([p0, p1]);
    let ip = match (family, ip.len()) {
        (0x01, 4) => IpAddr::from(<[u8; 4]>::try_from(ip).ok()?),
        (0x02, 16) => IpAddr::from(<[u8; 16]>::try_from(ip).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Asks `servers` (`host:port`, in order) for the address `bind_ip` is seen from, and returns
/// its IP. One clear error when none answers.
pub async fn discover(bind_ip: IpAddr, servers: &[String]) -> Result<IpAddr> {
    let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0))
        .await
        .map_err(|e| anyhow!("STUN discovery: cannot bind a UDP socket on {bind_ip}: {e}"))?;
    let mut failures = Vec::new();
    for server in servers {
        match ask(&socket, bind_ip, server).await {
            Ok(mapped) => {
                info!(server = %server, "public address discovered with STUN");
                debug!(address = %mapped, "STUN mapped address");
                return Ok(mapped.ip());
            }
            Err(e) => {
                debug!(server = %server, error = %e, "STUN server did not answer");
                failures.push(format!("{server}: {e}"));
            }
        }
    }
    bail!(
        "rtc.use_external_ip: no STUN server told this node its public address ({}); \
         set advertise_ip (LiveKit: rtc.node_ip) instead, or allow UDP to the STUN servers",
        failures.join("; ")
    )
}

async fn ask(socket: &UdpSocket, bind_ip: IpAddr, server: &str) -> Result<SocketAddr> {
    let address = tokio::net::lookup_host(server)
        .await
        .map_err(|e| anyhow!("cannot resolve: {e}"))?
        .find(|a| a.is_ipv4() == bind_ip.is_ipv4())
        .ok_or_else(|| anyhow!("no address of the bind address's family"))?;
    let mut buf = [0u8; 512];
    for _ in 0..ATTEMPTS {
        let mut transaction = [0u8; 12];
        getrandom::fill(&mut transaction).map_err(|e| anyhow!("no randomness: {e}"))?;
        socket
            .send_to(&binding_request(transaction), address)
            .await
            .map_err(|e| anyhow!("cannot send: {e}"))?;
        let answer = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
            loop {
                let (n, from) = socket.recv_from(&mut buf).await?;
                if from == address
                    && let Some(mapped) = mapped_address(&buf[..n], transaction)
                {
                    return Ok::<_, std::io::Error>(mapped);
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(mapped)) => return Ok(mapped),
            Ok(Err(e)) => return Err(anyhow!("{e}")),
            Err(_) => continue,
        }
    }
    bail!("no answer within {:?}", ATTEMPT_TIMEOUT * ATTEMPTS as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TX: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn success(kind: u16, addr: SocketAddr, transaction: [u8; 12]) -> Vec<u8> {
        let builder = Builder::new(Method::Binding, Class::Success, TransactionId(transaction));
        if kind == attr::XOR_MAPPED_ADDRESS {
            builder.xor_address(kind, addr)
        } else {
            // MAPPED-ADDRESS: the plain form.
            let SocketAddr::V4(v4) = addr else {
                unreachable!("tests use IPv4")
            };
            let mut value = vec![0, 1];
            value.extend_from_slice(&v4.port().to_be_bytes());
            value.extend_from_slice(&v4.ip().octets());
            builder.attribute(kind, &value)
        }
        .finish(None, Fingerprint::Add)
    }

    #[test]
    fn request_is_a_binding_request_with_fingerprint() {
        let request = binding_request(TX);
        let message = Message::parse(&request).expect("parses");
        assert_eq!(message.method, Method::Binding);
        assert_eq!(message.class, Class::Request);
        assert_eq!(message.transaction.0, TX);
        assert!(message.has_fingerprint());
    }

    #[test]
    fn reads_xor_mapped_and_mapped_addresses() {
        let public: SocketAddr = "203.0.113.7:40000".parse().expect("addr");
        let xor = success(attr::XOR_MAPPED_ADDRESS, public, TX);
        assert_eq!(mapped_address(&xor, TX), Some(public));
        let plain = success(attr::MAPPED_ADDRESS, public, TX);
        assert_eq!(mapped_address(&plain, TX), Some(public));
    }

    #[test]
    fn ignores_other_transactions_and_garbage() {
        let public: SocketAddr = "203.0.113.7:40000".parse().expect("addr");
        let other = success(attr::XOR_MAPPED_ADDRESS, public, [9; 12]);
        assert_eq!(mapped_address(&other, TX), None);
        assert_eq!(mapped_address(&binding_request(TX), TX), None);
        assert_eq!(mapped_address(b"not stun at all, not at all", TX), None);
        assert_eq!(mapped_address(&[], TX), None);
    }
}
