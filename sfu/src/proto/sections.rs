//! Single-connection peers (LiveKit's `/rtc/v1`): the client offers every m-line, including
//! the recvonly audio m-lines the engine sends subscribed tracks on, and the engine never
//! offers.
//!
//! - A subscription takes a free client-offered audio m-line (a *section*) for its slot. When
//!   there is none, the engine asks the client for more with [`Event::SectionsNeeded`]; the
//!   client adds recvonly m-lines and offers again, and queued slots take the new ones.
//! - A slot whose section the client does not know about yet (bound since the last answer)
//!   also needs a new offer: the engine asks for zero sections, which makes the client offer
//!   again.
//! - Nothing is asked before the connection is up (the client may still be applying the
//!   first answer); the subscriptions a peer starts with are bound before that answer is
//!   written (`EngineCommand::AcceptOffer`'s `subscribe`), so a client joining a room with
//!   speakers gets them labelled in the first answer.
//! - An audio or video m-line the client offered live and the engine rejected (video: the
//!   engine takes no video codec) is answered `inactive`, not with port 0, so the client's
//!   transceiver is not stopped under an offer it made meanwhile
//!   ([`inactive_not_rejected`]).
//! - In every answer, a section that carries a slot is `sendonly` with the slot's msid (str0m
//!   would write a random one, which LiveKit clients cannot place), and a section without a
//!   slot is `inactive`, so that the browser fires `ontrack` only once the msid is right.
//!   The answer's text is rewritten; str0m's own state is unchanged (it sends nothing on an
//!   idle section).
//!
//! [`Event::SectionsNeeded`]: super::Event::SectionsNeeded

use std::collections::HashMap;

use str0m::change::SdpAnswer;
use str0m::media::Mid;

use super::id::{MediaLabel, PeerId};
use super::peer::SlotId;
use super::{Event, Sfu};

/// What a single-connection peer knows about the client's sections.
#[derive(Debug, Default)]
pub(crate) struct Sections {
    /// Every client-offered audio m-line the engine may send on, in order of appearance.
    pub all: Vec<Mid>,
    /// Those no slot holds yet.
    pub free: Vec<Mid>,
    /// Sections asked for with [`Event::SectionsNeeded`] and not yet offered.
    pub asked: u32,
    /// A new offer was asked for since the last one.
    pub reoffer_asked: bool,
}

impl Sfu {
    /// After the engine answered a single-connection peer's offer: learn its new sections,
    /// give them to waiting slots, and rewrite the answer's sending m-lines (see the module
    /// docs). Returns the answer and the mids the engine sends on with their labels; the
    /// caller then asks for what slots still wait for ([`Sfu::ask_sections`]).
    pub(super) fn answer_sections(
        &mut self,
        peer: PeerId,
        answer: SdpAnswer,
        offer: Option<&str>,
    ) -> (SdpAnswer, Vec<(Mid, MediaLabel)>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return (answer, Vec::new());
        };
        if !p.single {
            return (answer, Vec::new());
        }
        let sdp = answer.to_sdp_string();
        let mut offered = 0u32;
        for mid in sending_audio_mids(&sdp) {
            let mid = Mid::from(mid.as_str());
            if !p.sections.all.contains(&mid) {
                p.sections.all.push(mid);
                p.sections.free.push(mid);
                offered += 1;
            }
        }
        p.sections.asked = p.sections.asked.saturating_sub(offered);
        p.sections.reoffer_asked = false;
        self.bind_sections(peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return (answer, Vec::new());
        };
        let mut labels = HashMap::new();
        let mut sending = Vec::new();
        for mid in &p.sections.all {
            let Some(&slot) = p.slot_by_mid.get(mid) else {
                continue;
            };
            let Some(s) = p.slots.get_mut(slot.0 as usize) else {
                continue;
            };
            s.negotiated = true;
            labels.insert(mid.to_string(), s.label.clone());
            sending.push((*mid, s.label.clone()));
        }
        let mut rewritten = rewrite_answer(&sdp, &labels);
        if let Some(offer) = offer {
            rewritten = inactive_not_rejected(&rewritten, offer);
        }
        let answer = match SdpAnswer::from_sdp_string(&rewritten) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "rewritten answer does not parse; sent as is");
                answer
            }
        };
        (answer, sending)
    }

    /// Gives free sections of a single-connection peer to slots waiting for one, oldest first.
    pub(super) fn bind_sections(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        while !p.negotiation.queued.is_empty() && !p.sections.free.is_empty() {
            let slot = p.negotiation.queued.remove(0);
            let mid = p.sections.free.remove(0);
            if let Some(s) = p.slots.get_mut(slot.0 as usize) {
                s.mid = Some(mid);
                s.negotiated = false;
                p.slot_by_mid.insert(mid, slot);
            }
        }
    }

    /// Asks the client of a single-connection peer for what its slots still need: as many
    /// sections as wait for one and were not asked for yet, or a new offer when a slot holds
    /// a section the client has not been told about.
    ///
    /// Nothing is asked before the connection is up (then [`Sfu::ask_sections`] runs again):
    /// until then the client may still be applying the first answer, and a LiveKit client
    /// that starts its next offer in that window fails to set it and reconnects. Once the
    /// connection is up the client has applied that answer (it needed the answer's candidate
    /// to connect), and a later request during a negotiation only queues another round.
    pub(super) fn ask_sections(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.connected {
            return;
        }
        let waiting = p.negotiation.queued.len() as u32;
        let missing = waiting.saturating_sub(p.sections.asked);
        let unannounced = p.slots.iter().any(|s| s.mid.is_some() && !s.negotiated);
        if missing > 0 || (unannounced && !p.sections.reoffer_asked) {
            p.sections.asked += missing;
            p.sections.reoffer_asked = true;
            self.events.push_back(Event::SectionsNeeded {
                peer,
                audios: missing,
            });
        }
    }

    /// A new slot on a single-connection peer: it takes a free section or waits for one.
    pub(super) fn queue_single_slot(&mut self, peer: PeerId, slot: SlotId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.negotiation.queued.push(slot);
        }
        self.bind_sections(peer);
        self.ask_sections(peer);
    }
}

/// Transport attributes, the same in every m-section of a bundled answer.
const TRANSPORT: [&str; 5] = [
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "a=ice-options:",
    "a=fingerprint:",
    "a=setup:",
];

/// Answers as `inactive`, not rejected, the audio and video m-lines the client offered live
/// and the engine rejected (port 0: video, whose codecs the engine does not take). A rejected
/// m-line stops the client's transceiver; a LiveKit client whose next offer was made before
/// it applied this answer (its first negotiations race) then cannot set that offer
/// ("Transceiver not found based on m-line index") and reconnects. An inactive m-line keeps
/// the transceiver, carries nothing either way, and stays in the bundle. The engine's own
/// state is unchanged: it still takes nothing on that m-line.
pub(crate) fn inactive_not_rejected(answer: &str, offer: &str) -> String {
    let (session, sections) = split(answer);
    let (offer_session, offered) = split(offer);
    // Only m-lines the client bundled: the answer may not add a mid to the group.
    let bundled: Vec<&str> = offer_session
        .iter()
        .find_map(|l| l.strip_prefix("a=group:BUNDLE"))
        .map(|mids| mids.split_whitespace().collect())
        .unwrap_or_default();
    // The bundle's transport, from the first section that has it (str0m writes it into
    // every section, rejected ones included).
    let transport: Vec<&str> = sections
        .iter()
        .map(|s| {
            s.lines
                .iter()
                .copied()
                .filter(|l| TRANSPORT.iter().any(|t| l.starts_with(t)))
                .collect::<Vec<&str>>()
        })
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    let mut revived: Vec<&str> = Vec::new();
    let mut body = String::with_capacity(answer.len() + 256);
    for s in &sections {
        let offered = s
            .mid()
            .filter(|mid| bundled.contains(mid))
            .and_then(|mid| offered.iter().find(|o| o.mid() == Some(mid)));
        match offered.and_then(|o| s.revived(o, &transport)) {
            Some((mid, lines)) => {
                revived.push(mid);
                for line in lines {
                    body.push_str(&line);
                    body.push_str("\r\n");
                }
            }
            None => {
                for line in &s.lines {
                    body.push_str(line);
                    body.push_str("\r\n");
                }
            }
        }
    }
    let mut out = String::with_capacity(body.len() + 512);
    for line in session {
        match line.strip_prefix("a=group:BUNDLE") {
            // The group names its mids in the order of their m-lines (str0m insists).
            Some(group) if !revived.is_empty() => {
                let grouped: Vec<&str> = group
                    .split_whitespace()
                    .chain(revived.iter().copied())
                    .collect();
                out.push_str("a=group:BUNDLE");
                for mid in sections
                    .iter()
                    .filter_map(Section::mid)
                    .filter(|m| grouped.contains(m))
                {
                    out.push(' ');
                    out.push_str(mid);
                }
            }
            _ => out.push_str(line),
        }
        out.push_str("\r\n");
    }
    out.push_str(&body);
    out
}

/// One m-section of an SDP: its lines without line ends.
pub(crate) struct Section<'a> {
    pub(crate) lines: Vec<&'a str>,
}

impl<'a> Section<'a> {
    pub(crate) fn is_live_audio(&self) -> bool {
        self.lines.first().is_some_and(|m| {
            let mut parts = m.trim_start_matches("m=").split_whitespace();
            parts.next() == Some("audio") && parts.next() != Some("0")
        })
    }

    pub(crate) fn mid(&self) -> Option<&'a str> {
        self.lines
            .iter()
            .copied()
            .find_map(|l| l.strip_prefix("a=mid:"))
    }

    pub(crate) fn sends(&self) -> bool {
        self.lines.contains(&"a=sendonly")
    }

    /// The m-line's media, port and protocol.
    fn media(&self) -> Option<(&str, &str, &str)> {
        let mut parts = self.lines.first()?.strip_prefix("m=")?.split_whitespace();
        Some((parts.next()?, parts.next()?, parts.next()?))
    }

    /// This answer section as an inactive m-line, if the engine rejected it and the client
    /// offered it live as `offered` ([`inactive_not_rejected`]): its mid and its lines.
    fn revived<'o>(
        &self,
        offered: &Section<'o>,
        transport: &[&str],
    ) -> Option<(&'o str, Vec<String>)> {
        let (kind, port, proto) = self.media()?;
        let (offered_kind, offered_port, _) = offered.media()?;
        let mid = offered.mid()?;
        if !matches!(kind, "audio" | "video")
            || port != "0"
            || offered_kind != kind
            || offered_port == "0"
            || transport.is_empty()
        {
            return None;
        }
        // The first offered media format (not a retransmission or repair format), described
        // as offered: its rtpmap and its parameters.
        let format = offered.lines.iter().copied().find_map(|l| {
            let (pt, codec) = l.strip_prefix("a=rtpmap:")?.split_once(' ')?;
            let name = codec.split('/').next()?.to_ascii_lowercase();
            (!matches!(name.as_str(), "rtx" | "red" | "ulpfec" | "flexfec-03")).then_some(pt)
        })?;
        let mut lines = vec![
            format!("m={kind} 9 {proto} {format}"),
            "c=IN IP4 0.0.0.0".to_owned(),
            format!("a=mid:{mid}"),
        ];
        lines.extend(transport.iter().map(|l| (*l).to_owned()));
        lines.push("a=inactive".to_owned());
        lines.push("a=rtcp-mux".to_owned());
        let rtpmap = format!("a=rtpmap:{format} ");
        let fmtp = format!("a=fmtp:{format} ");
        lines.extend(
            offered
                .lines
                .iter()
                .filter(|l| l.starts_with(&rtpmap) || l.starts_with(&fmtp))
                .map(|l| (*l).to_owned()),
        );
        Some((mid, lines))
    }
}

/// Splits an SDP into its session part and its m-sections.
pub(crate) fn split(sdp: &str) -> (Vec<&str>, Vec<Section<'_>>) {
    let mut session = Vec::new();
    let mut sections: Vec<Section<'_>> = Vec::new();
    for line in sdp.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            sections.push(Section { lines: vec![line] });
        } else if let Some(s) = sections.last_mut() {
            s.lines.push(line);
        } else {
            session.push(line);
        }
    }
    (session, sections)
}

/// The mids of an answer's live audio m-lines on which the answerer sends (`a=sendonly`): the
/// client's recvonly sections.
pub(crate) fn sending_audio_mids(sdp: &str) -> Vec<String> {
    let (_, sections) = split(sdp);
    sections
        .iter()
        .filter(|s| s.is_live_audio() && s.sends())
        .filter_map(|s| s.mid().map(str::to_owned))
        .collect()
}

/// Rewrites an answer's sending audio m-lines: those in `labels` (by mid) carry that msid, in
/// `a=msid` and `a=ssrc … msid`; the others become `inactive` and lose their msid and ssrc
/// lines. Everything else is kept as it is.
pub(crate) fn rewrite_answer(sdp: &str, labels: &HashMap<String, MediaLabel>) -> String {
    let (session, sections) = split(sdp);
    let mut out = String::with_capacity(sdp.len() + 64);
    for line in session {
        out.push_str(line);
        out.push_str("\r\n");
    }
    for s in &sections {
        let sending = s.is_live_audio() && s.sends();
        let label = s.mid().and_then(|m| labels.get(m)).filter(|_| sending);
        for line in &s.lines {
            let line = *line;
            if !sending {
                out.push_str(line);
            } else if let Some(label) = label {
                let msid = format!("{} {}", label.stream_id, label.track_id);
                if line.starts_with("a=msid:") {
                    out.push_str("a=msid:");
                    out.push_str(&msid);
                } else if let Some(rest) = line.strip_prefix("a=ssrc:")
                    && let Some((ssrc, attr)) = rest.split_once(' ')
                    && attr.starts_with("msid:")
                {
                    out.push_str(&format!("a=ssrc:{ssrc} msid:{msid}"));
                } else {
                    out.push_str(line);
                }
            } else if line == "a=sendonly" {
                out.push_str("a=inactive");
            } else if line.starts_with("a=msid:")
                || line.starts_with("a=ssrc:")
                || line.starts_with("a=ssrc-group:")
            {
                continue;
            } else {
                out.push_str(line);
            }
            out.push_str("\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0 1 2 3 4\r\na=msid-semantic: WMS\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=sendonly\r\na=msid:rnd1 rnd2\r\n\
        a=rtpmap:111 opus/48000/2\r\na=ssrc:11 cname:c\r\na=ssrc:11 msid:rnd1 rnd2\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:3\r\na=sendonly\r\na=msid:rnd3 rnd4\r\n\
        a=ssrc:12 cname:c\r\na=ssrc:12 msid:rnd3 rnd4\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:4\r\na=sendonly\r\n";

    #[test]
    fn offered_m_lines_the_engine_rejects_are_answered_inactive() {
        // Mid 2: live video, H264 first after its retransmission format. Mid 3: offered
        // rejected. Mid 4: live but outside the client's bundle.
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            a=group:BUNDLE 0 1 2 3\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\n\
            a=rtpmap:111 opus/48000/2\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 97 102\r\na=mid:2\r\na=recvonly\r\n\
            a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=102\r\na=rtpmap:102 H264/90000\r\n\
            a=rtcp-fb:102 nack\r\na=fmtp:102 profile-level-id=42e01f;packetization-mode=1\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=inactive\r\n\
            a=rtpmap:96 VP8/90000\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:4\r\na=recvonly\r\n\
            a=rtpmap:96 VP8/90000\r\n";
        let ice = "a=ice-ufrag:u\r\na=ice-pwd:p\r\na=fingerprint:sha-256 AB\r\na=setup:passive\r\n";
        let rejected = |mid: u32| {
            format!(
                "m=video 0 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\n{ice}a=mid:{mid}\r\na=inactive\r\n"
            )
        };
        let answer = format!(
            "v=0\r\no=- 3 4 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
             m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
             {ice}a=mid:0\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n{ice}a=mid:1\r\n\
             a=inactive\r\na=rtpmap:111 opus/48000/2\r\n{}{}{}",
            rejected(2),
            rejected(3),
            rejected(4)
        );
        let out = inactive_not_rejected(&answer, offer);
        // The video the client offered live and bundled: inactive, its first media format as
        // offered, bundled, with the bundle's transport.
        let want = format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n{ice}\
             a=inactive\r\na=rtcp-mux\r\na=rtpmap:102 H264/90000\r\n\
             a=fmtp:102 profile-level-id=42e01f;packetization-mode=1\r\n"
        );
        assert!(out.contains(&want), "{out}");
        // In the group, in the order of the m-lines.
        assert!(out.contains("a=group:BUNDLE 0 1 2\r\n"), "{out}");
        // Offered rejected, or outside the client's bundle: rejected as before.
        assert!(out.contains(&rejected(3)), "{out}");
        assert!(out.ends_with(&rejected(4)), "{out}");
        assert!(out.contains("a=mid:1\r\na=inactive\r\na=rtpmap:111 opus/48000/2\r\n"));
        assert!(
            out.starts_with("v=0\r\no=- 3 4 IN IP4 0.0.0.0\r\n"),
            "{out}"
        );
        assert!(SdpAnswer::from_sdp_string(&out).is_ok(), "{out}");
        // Nothing left to revive: the answer as it was.
        assert_eq!(inactive_not_rejected(&out, offer), out);
        // No transport to give it: left rejected.
        let bare = answer.replace(ice, "");
        assert_eq!(inactive_not_rejected(&bare, offer), bare);
    }

    #[test]
    fn finds_the_sections_the_answerer_sends_on() {
        assert_eq!(sending_audio_mids(ANSWER), vec!["2", "3"]);
    }

    #[test]
    fn labels_bound_sections_and_idles_the_others() {
        let label = MediaLabel {
            stream_id: "PA_a|TR_b".into(),
            track_id: "TR_b".into(),
        };
        let labels = HashMap::from([("2".to_owned(), label)]);
        let out = rewrite_answer(ANSWER, &labels);
        assert!(
            out.contains("a=mid:2\r\na=sendonly\r\na=msid:PA_a|TR_b TR_b\r\n"),
            "{out}"
        );
        assert!(out.contains("a=ssrc:11 msid:PA_a|TR_b TR_b\r\n"), "{out}");
        assert!(out.contains("a=ssrc:11 cname:c\r\n"), "{out}");
        assert!(!out.contains("rnd"), "{out}");
        assert!(out.contains("a=mid:3\r\na=inactive\r\n"), "{out}");
        assert!(!out.contains("a=ssrc:12"), "{out}");
        // The publisher's own m-line, the data channel and the rejected video stay as they are.
        assert!(out.contains("a=mid:1\r\na=recvonly\r\n"), "{out}");
        assert!(out.contains("m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:4\r\na=sendonly\r\n"));
        assert!(out.starts_with("v=0\r\n"));
    }
}
