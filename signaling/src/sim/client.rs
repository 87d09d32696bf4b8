//! The simulated clients: LiveKit-like peers of str0m connections ([`Client`]), and how a
//! connection's outputs reach the world.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::signal_response;
use stoa_sfu::str0m::change::SdpPendingOffer;
use stoa_sfu::str0m::channel::ChannelId;
use stoa_sfu::str0m::media::{Mid, Pt};
use stoa_sfu::str0m::{Candidate, Event as RtcEvent, Input, Output as RtcOutput, Rtc, RtcConfig};

use crate::join;
use crate::proto::SessionId;

/// Which of a client's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Publisher,
    Subscriber,
}

/// A str0m peer connection of a simulated client.
pub struct ClientPc {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub deadline: Instant,
    pub connected: bool,
    pub channels: HashMap<String, ChannelId>,
}

impl ClientPc {
    pub(super) fn new(addr: SocketAddr, now: Instant) -> Self {
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            // Offered only on the video m-lines a browser adds (`Sim::join_v1_with_videos`).
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        ClientPc {
            rtc,
            addr,
            deadline: now,
            connected: false,
            channels: HashMap::new(),
        }
    }
}

/// A simulated LiveKit client: one signaling session, a publisher and a subscriber
/// connection, and everything it received.
pub struct Client {
    pub identity: String,
    pub session: Option<SessionId>,
    pub publisher: ClientPc,
    pub subscriber: ClientPc,
    /// Every signaling message received, in order.
    pub log: Vec<signal_response::Message>,
    /// Why the server closed the session, once it did.
    pub closed: Option<String>,
    pub(super) pending_pub: Option<SdpPendingOffer>,
    /// The publisher's audio m-line and Opus payload type, once negotiated.
    pub send: Option<(Mid, Pt)>,
    pub sent: u32,
    pub(super) offer_id: u32,
    /// RTP packets heard on the subscriber connection: (mid, publisher byte, index).
    pub heard: Vec<(Option<Mid>, u8, u32)>,
    /// Data channel messages received on the subscriber connection.
    pub data: Vec<Vec<u8>>,
    /// Whether the client pings every ping interval (LiveKit clients do).
    pub pinging: bool,
    pub(super) last_ping: Instant,
    /// Whether it answers the server's offers (LiveKit clients do).
    pub answering: bool,
    /// One connection (`/rtc/v1`): `publisher` is it, and it also receives; `subscriber` is
    /// unused.
    pub single: bool,
    /// On one connection: its recvonly audio m-lines, in order.
    pub recv_mids: Vec<Mid>,
    /// For each `MediaSectionsRequirement` received (one connection), whether the client's
    /// connection was up then.
    pub asked_when_connected: Vec<bool>,
    /// For each `TrackPublishedResponse` received, whether the client's connection (its
    /// publisher's, or its one connection) was up then.
    pub published_when_connected: Vec<bool>,
    /// On one connection: recvonly audio m-lines to add to the next offer, and whether the
    /// server asked for a new offer (sent once the pending one is answered, as livekit-client
    /// does).
    pub(super) wanted_sections: u32,
    pub(super) reoffer: bool,
    /// A `/rtc/v1` first offer kept back ([`Sim::join_v1_without_offer`]).
    pub(super) first_offer: Option<join::InitialOffer>,
    pub(super) tag: u8,
}

impl Client {
    /// Whether the session is still open.
    pub fn is_open(&self) -> bool {
        self.session.is_some() && self.closed.is_none()
    }

    /// The first message `pick` accepts.
    pub fn find<T>(&self, pick: impl FnMut(&signal_response::Message) -> Option<T>) -> Option<T> {
        self.log.iter().find_map(pick)
    }

    /// The last `ParticipantInfo` of `identity` this client received (join or update).
    pub fn seen(&self, identity: &str) -> Option<lk::ParticipantInfo> {
        let mut last = None;
        for m in &self.log {
            let infos: Vec<&lk::ParticipantInfo> = match m {
                signal_response::Message::Join(j) => j.other_participants.iter().collect(),
                signal_response::Message::Update(u) => u.participants.iter().collect(),
                _ => vec![],
            };
            for i in infos {
                if i.identity == identity {
                    last = Some(i.clone());
                }
            }
        }
        last
    }

    /// This client's own participant, as its JoinResponse described it.
    pub fn me(&self) -> Option<lk::ParticipantInfo> {
        self.find(|m| match m {
            signal_response::Message::Join(j) => j.participant.clone(),
            _ => None,
        })
    }

    /// The latest `ParticipantInfo` about itself (join, then updates).
    pub fn me_now(&self) -> Option<lk::ParticipantInfo> {
        let sid = self.me()?.sid;
        let mut last = self.me();
        for m in &self.log {
            if let signal_response::Message::Update(u) = m
                && let Some(p) = u.participants.iter().find(|p| p.sid == sid)
            {
                last = Some(p.clone());
            }
        }
        last
    }

    /// The leave request the server sent, if any.
    pub fn leave(&self) -> Option<lk::LeaveRequest> {
        self.find(|m| match m {
            signal_response::Message::Leave(l) => Some(l.clone()),
            _ => None,
        })
    }

    /// Request errors the server answered.
    pub fn errors(&self) -> Vec<lk::RequestResponse> {
        self.log
            .iter()
            .filter_map(|m| match m {
                signal_response::Message::RequestResponse(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Drain a client connection's outputs (datagrams to the engine, events recorded), then run
/// its timers once: str0m schedules ICE checks only after it has seen a timeout input.
pub(super) fn drain_pc(
    pc: &mut ClientPc,
    now: Instant,
    to_sfu: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    _client: usize,
    _side: Side,
    mut sink: Option<(&mut Vec<(Option<Mid>, u8, u32)>, &mut Vec<Vec<u8>>)>,
) {
    drain_once(pc, now, to_sfu, &mut sink);
    if pc.rtc.handle_input(Input::Timeout(now)).is_ok() {
        drain_once(pc, now, to_sfu, &mut sink);
    }
}

fn drain_once(
    pc: &mut ClientPc,
    now: Instant,
    to_sfu: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    sink: &mut Option<(&mut Vec<(Option<Mid>, u8, u32)>, &mut Vec<Vec<u8>>)>,
) {
    loop {
        match pc.rtc.poll_output() {
            Ok(RtcOutput::Timeout(t)) => {
                pc.deadline = t;
                return;
            }
            Ok(RtcOutput::Transmit(t)) => {
                to_sfu.push((t.source, t.destination, t.contents.to_vec()));
            }
            Ok(RtcOutput::Event(e)) => match e {
                RtcEvent::Connected => pc.connected = true,
                RtcEvent::ChannelOpen(id, label) => {
                    pc.channels.insert(label, id);
                }
                RtcEvent::RtpPacket(p) => {
                    if let Some((heard, _)) = sink.as_mut() {
                        let b = &p.payload;
                        let index = b
                            .get(0..4)
                            .map_or(u32::MAX, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                        heard.push((p.header.ext_vals.mid, b.get(4).copied().unwrap_or(0), index));
                    }
                }
                RtcEvent::ChannelData(d) => {
                    if let Some((_, data)) = sink.as_mut() {
                        data.push(d.data);
                    }
                }
                _ => {}
            },
            Err(_) => {
                pc.deadline = now + Duration::from_secs(3600);
                return;
            }
        }
    }
}
