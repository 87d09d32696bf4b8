//! One str0m peer connection on its own UDP socket on a loopback address, driven by its
//! client's task.
//!
//! The client feeds it datagrams and timeouts; after every input the `Rtc` is drained to its
//! next timeout (str0m's run-loop contract), sending transmits at once without blocking.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use str0m::config::DtlsCert;
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpPacket;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;

/// Largest datagram a peer reads.
pub(crate) const MAX_DATAGRAM: usize = 2048;

/// What draining a peer reported besides packets.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Drained {
    /// ICE and DTLS completed during this drain.
    pub connected: bool,
    /// ICE gave up.
    pub disconnected: bool,
}

#[derive(Debug)]
pub(crate) struct Peer {
    pub rtc: Rtc,
    /// The socket, non-blocking: sends go straight out on it.
    pub socket: Arc<std::net::UdpSocket>,
    /// The same socket (a duplicate descriptor) registered with tokio for reading, until the
    /// listener's sink takes the reading over.
    pub reader: Option<UdpSocket>,
    pub local: SocketAddr,
    pub connected: bool,
    pub next_timeout: Instant,
    /// Datagrams not sent: the socket would not take them (its buffer was full), or their
    /// destination was not one the harness may send to ([`crate::netns::reachable`]).
    pub send_drops: u64,
}

impl Peer {
    /// A peer with one host candidate on a fresh port of `ip` (a loopback address, or the
    /// harness's own address in the namespaces it made, see [`crate::netns`]); Opus
    /// only, RTP mode; DTLS with `cert` (shared by the harness: generating one per client
    /// costs the harness, not the server, and the server still runs a full handshake per peer).
    pub fn bind(now: Instant, cert: &DtlsCert, ip: Ipv4Addr) -> io::Result<Peer> {
        if !crate::netns::reachable(ip.into()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "peers bind loopback addresses (or the harness's namespace address) only",
            ));
        }
        let std_socket = std::net::UdpSocket::bind((ip, 0))?;
        std_socket.set_nonblocking(true)?;
        let local = std_socket.local_addr()?;
        let reader = UdpSocket::from_std(std_socket.try_clone()?)?;
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .set_dtls_cert(cert.clone())
            .build(now);
        let candidate = Candidate::host(local, "udp")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        rtc.add_local_candidate(candidate);
        Ok(Peer {
            rtc,
            socket: Arc::new(std_socket),
            reader: Some(reader),
            local,
            connected: false,
            next_timeout: now,
            send_drops: 0,
        })
    }

    /// Feed one received datagram, then drain.
    pub fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        on_rtp: &mut impl FnMut(RtpPacket),
    ) -> Drained {
        // One peer per socket: everything that parses is for this `Rtc`.
        if let Ok(r) = Receive::new(Protocol::Udp, from, self.local, data)
            && let Err(e) = self.rtc.handle_input(Input::Receive(now, r))
        {
            tracing::debug!(error = %e, "peer input refused");
        }
        self.drain(on_rtp)
    }

    /// Advance time, then drain.
    pub fn timeout(&mut self, now: Instant, on_rtp: &mut impl FnMut(RtpPacket)) -> Drained {
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(error = %e, "peer timeout failed");
        }
        self.drain(on_rtp)
    }

    /// Poll the `Rtc` until it asks for a timeout: send transmits, hand RTP to `on_rtp`.
    pub fn drain(&mut self, on_rtp: &mut impl FnMut(RtpPacket)) -> Drained {
        let mut drained = Drained::default();
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    // The harness sends only on this machine (loopback, or the namespaces it
                    // made), whatever a server advertises.
                    if !crate::netns::reachable(t.destination.ip())
                        || self.socket.send_to(&t.contents, t.destination).is_err()
                    {
                        self.send_drops += 1;
                    }
                }
                Ok(Output::Event(Event::Connected)) => {
                    self.connected = true;
                    drained.connected = true;
                }
                Ok(Output::Event(Event::IceConnectionStateChange(
                    str0m::IceConnectionState::Disconnected,
                ))) => drained.disconnected = true,
                Ok(Output::Event(Event::RtpPacket(p))) => on_rtp(p),
                Ok(Output::Event(_)) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "peer poll failed");
                    break;
                }
            }
        }
        drained
    }
}
