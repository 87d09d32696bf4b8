//! Every metric `stoa serve` exports, in Prometheus text format on `GET /metrics`.
//!
//! The cores keep plain counters ([`SfuStats`] per engine shard, the shards' socket
//! [`TrafficSnapshot`], [`SignalingStats`], [`WebhookStats`]); on each scrape they are read (each
//! bounded by [`QUERY_TIMEOUT`]) and copied into the `metrics` facade, whose Prometheus recorder
//! renders them. The two latency histograms have fixed buckets counted by the cores and are
//! rendered here ([`render_histograms`]) after the recorder's text. The TURN relay exports its
//! own `turn_*` metrics through the facade. No room or user ids are ever labels.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, anyhow};
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use stoa_sfu::SfuStats;
use stoa_sfu::shell::SfuHandle;
use stoa_sfu::shell::traffic::{HistogramSnapshot, Queue, TrafficSnapshot};
use stoa_signaling::service::{Signaling, SignalingStats};
use stoa_signaling::webhook::{Notifier, WebhookStats};

/// How long a scrape waits for the engine or the session service to answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Rooms that exist (gauge).
pub const SIGNALING_ROOMS: &str = "signaling_rooms";
/// Participants, labelled `role` = `publisher` | `listener` (gauge).
pub const SIGNALING_PARTICIPANTS: &str = "signaling_participants";
/// Open WebSocket signaling sessions (gauge).
pub const SIGNALING_SESSIONS: &str = "signaling_sessions";
/// Sessions held for a resume, their connection lost (gauge).
pub const SIGNALING_SESSIONS_HELD: &str = "signaling_sessions_held";
/// Published tracks as signaling sees them (gauge).
pub const SIGNALING_TRACKS: &str = "signaling_tracks";
/// Webhook events by `outcome` = `delivered` | `failed` | `dropped` (counter).
pub const SIGNALING_WEBHOOK_EVENTS: &str = "signaling_webhook_events_total";
/// Live peer connections in the media engine (gauge).
pub const SFU_PEERS: &str = "sfu_peers";
/// Published tracks in the media engine (gauge).
pub const SFU_TRACKS: &str = "sfu_tracks";
/// RTP packets received from publishers (counter).
pub const SFU_RTP_RECEIVED: &str = "sfu_rtp_packets_received_total";
/// RTP packets written to subscribers (counter).
pub const SFU_RTP_FORWARDED: &str = "sfu_rtp_packets_forwarded_total";
/// RTP packets publishers sent that never reached the engine (sequence gaps) (counter).
pub const SFU_RTP_LOST: &str = "sfu_rtp_packets_lost_total";
/// Of the lost packets, those rebuilt from a later RED packet's redundant blocks (counter).
pub const SFU_RTP_RECOVERED: &str = "sfu_rtp_packets_recovered_total";
/// UDP datagrams read by the engine's sockets (counter).
pub const SFU_DATAGRAMS_RECEIVED: &str = "sfu_datagrams_received_total";
/// UDP payload bytes read by the engine's sockets (counter).
pub const SFU_BYTES_RECEIVED: &str = "sfu_bytes_received_total";
/// UDP datagrams sent by the engine's sockets (counter).
pub const SFU_DATAGRAMS_SENT: &str = "sfu_datagrams_sent_total";
/// UDP payload bytes sent by the engine's sockets (counter).
pub const SFU_BYTES_SENT: &str = "sfu_bytes_sent_total";
/// Time from reading a datagram batch to handing what it produced to the kernel (histogram).
pub const SFU_FORWARDING_SECONDS: &str = "sfu_forwarding_seconds";
/// Joins by signaling `path` = `v1` (`/rtc/v1`, one peer connection) | `legacy` (`/rtc`, two)
/// (counter; resumes are not joins).
pub const SIGNALING_JOINS: &str = "signaling_joins_total";
/// Time from a join to the participant's media connection being up (histogram).
pub const SIGNALING_JOIN_SECONDS: &str = "signaling_join_seconds";
/// Of the forwarded packets, those the engine sealed itself: the forwarding fast path (counter).
pub const SFU_RTP_FORWARDED_DIRECT: &str = "sfu_rtp_packets_forwarded_direct_total";
/// RTP packets dropped, by `reason` = `unauthorized` | `muted` | `duplicate` | `malformed` (counter).
pub const SFU_RTP_DROPPED: &str = "sfu_rtp_packets_dropped_total";
/// UDP datagrams that matched no peer (counter).
pub const SFU_DATAGRAMS_UNKNOWN: &str = "sfu_datagrams_unknown_total";
/// Offers refused for publishing without permission (counter).
pub const SFU_OFFERS_REFUSED: &str = "sfu_offers_refused_total";
/// Messages dropped because a bounded signaling queue was full, by `queue` = `requests`
/// (a client's request; the client is closed) | `outbox` (a session's outbox; the client is
/// disconnected) | `engine` (an engine command; the session is told to rejoin) | `observer`
/// (an event for the control plane) | `data` (a client's data packet: over its sender's rate,
/// without the data permission, or on a server-only topic) | `recorder` (a recorded track's name
/// for the recorder, which then leaves that track out) (counter).
pub const SIGNALING_DROPPED: &str = "signaling_dropped_total";
/// Messages dropped because a bounded queue of the media engine's shell was full, by `queue` =
/// `commands` | `relays` | `events` | `tap` (a recorded packet on its way to the recorder) |
/// `tap_core` (a recorded packet the shard did not take from its core in time) | `data_core` (a
/// data message to one peer of a broadcast that found too many waiting) (counter).
pub const SFU_QUEUE_DROPPED: &str = "sfu_queue_dropped_total";
/// Media engine shards that answered the last scrape (gauge).
pub const SFU_SHARDS: &str = "sfu_shards";
/// Live peer connections of each media engine shard, by `shard` (gauge): a room's peers stay
/// on one shard until it outgrows `rtc.room_peers_per_shard`.
pub const SFU_SHARD_PEERS: &str = "sfu_shard_peers";
/// 1 while the server drains for shutdown, else 0 (gauge).
pub const STOA_DRAINING: &str = "stoa_draining";

/// Installs the process-wide Prometheus recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|err| anyhow!("cannot install the metrics recorder: {err}"))?;
    describe();
    Ok(handle)
}

/// `# HELP` texts and units.
pub fn describe() {
    stoa_control::telemetry::describe();
    describe_gauge!(SIGNALING_ROOMS, Unit::Count, "Rooms that exist");
    describe_gauge!(
        SIGNALING_PARTICIPANTS,
        Unit::Count,
        "Participants by role (publisher: may publish; listener: may not)"
    );
    describe_gauge!(
        SIGNALING_SESSIONS,
        Unit::Count,
        "Open WebSocket signaling sessions"
    );
    describe_gauge!(
        SIGNALING_SESSIONS_HELD,
        Unit::Count,
        "Signaling sessions held for a resume: connection lost, participant kept until the room's \
         departure timeout"
    );
    describe_gauge!(SIGNALING_TRACKS, Unit::Count, "Published tracks");
    describe_counter!(
        SIGNALING_JOINS,
        Unit::Count,
        "Joins by signaling path (v1: /rtc/v1, one peer connection; legacy: /rtc, two)"
    );
    describe_counter!(
        SIGNALING_WEBHOOK_EVENTS,
        Unit::Count,
        "Webhook events by outcome (delivered, failed after retries, certificate_refused: the \
         https receiver's certificate did not verify, dropped on a full queue)"
    );
    describe_counter!(
        SIGNALING_DROPPED,
        Unit::Count,
        "Messages dropped on a full signaling queue, by queue (the clients concerned are closed or told to rejoin)"
    );
    describe_counter!(
        SFU_QUEUE_DROPPED,
        Unit::Count,
        "Messages dropped on a full queue of the media engine's shell, by queue"
    );
    describe_gauge!(SFU_PEERS, Unit::Count, "Live peer connections");
    describe_gauge!(
        SFU_SHARD_PEERS,
        Unit::Count,
        "Live peer connections of each media engine shard"
    );
    describe_gauge!(
        SFU_TRACKS,
        Unit::Count,
        "Published tracks in the media engine"
    );
    describe_counter!(
        SFU_RTP_RECEIVED,
        Unit::Count,
        "RTP packets received from publishers"
    );
    describe_counter!(
        SFU_RTP_FORWARDED,
        Unit::Count,
        "RTP packets written to subscribers"
    );
    describe_counter!(
        SFU_RTP_FORWARDED_DIRECT,
        Unit::Count,
        "RTP packets sealed by the engine's forwarding fast path (part of those forwarded)"
    );
    describe_counter!(
        SFU_RTP_DROPPED,
        Unit::Count,
        "RTP packets dropped, by reason (unauthorized, muted, duplicate, malformed)"
    );
    describe_counter!(
        SFU_DATAGRAMS_UNKNOWN,
        Unit::Count,
        "UDP datagrams that matched no peer"
    );
    describe_counter!(
        SFU_OFFERS_REFUSED,
        Unit::Count,
        "Offers refused for publishing without permission"
    );
    describe_gauge!(
        SFU_SHARDS,
        Unit::Count,
        "Media engine shards that answered the last scrape"
    );
    describe_gauge!(STOA_DRAINING, "1 while draining for shutdown");
    describe_counter!(
        SFU_RTP_LOST,
        Unit::Count,
        "RTP packets publishers sent that never arrived (sequence gaps)"
    );
    describe_counter!(
        SFU_RTP_RECOVERED,
        Unit::Count,
        "Lost RTP packets rebuilt from the redundant blocks of a later RED packet"
    );
    describe_counter!(
        SFU_DATAGRAMS_RECEIVED,
        Unit::Count,
        "UDP datagrams read by the media engine"
    );
    describe_counter!(
        SFU_BYTES_RECEIVED,
        Unit::Bytes,
        "UDP payload bytes read by the media engine"
    );
    describe_counter!(
        SFU_DATAGRAMS_SENT,
        Unit::Count,
        "UDP datagrams sent by the media engine"
    );
    describe_counter!(
        SFU_BYTES_SENT,
        Unit::Bytes,
        "UDP payload bytes sent by the media engine"
    );
}

/// One reading of every source, taken at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// The session service's counts; `None` if it did not answer.
    pub signaling: Option<SignalingStats>,
    /// Each engine shard's counters; `None` if the engine did not answer.
    pub sfu: Option<Vec<SfuStats>>,
    /// The engine's socket traffic, summed over its shards.
    pub traffic: TrafficSnapshot,
    /// Webhook counters (delivered, failed, dropped, certificate refused), if configured.
    pub webhooks: Option<[u64; 4]>,
    /// Whether the server is draining.
    pub draining: bool,
}

/// What a scrape reads.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The session service.
    pub signaling: Signaling,
    /// The media engine.
    pub sfu: SfuHandle,
    /// The webhook notifier, if any.
    pub webhooks: Option<Notifier>,
}

impl Sources {
    /// Reads every source, each bounded by [`QUERY_TIMEOUT`].
    pub async fn snapshot(&self, draining: bool) -> Snapshot {
        let signaling = tokio::time::timeout(QUERY_TIMEOUT, self.signaling.stats());
        let sfu = tokio::time::timeout(QUERY_TIMEOUT, self.sfu.stats());
        let (signaling, sfu) = tokio::join!(signaling, sfu);
        Snapshot {
            signaling: signaling.ok().and_then(Result::ok),
            sfu: sfu.ok().and_then(Result::ok),
            traffic: self.sfu.traffic(),
            webhooks: self.webhooks.as_ref().map(|n| webhook_counts(n.stats())),
            draining,
        }
    }
}

fn webhook_counts(stats: &WebhookStats) -> [u64; 4] {
    [
        stats.delivered.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
        stats.refused_certificate.load(Ordering::Relaxed),
    ]
}

/// Copies a snapshot into the installed recorder. Counters are set to the cores' totals.
pub fn record(snapshot: &Snapshot) {
    gauge!(STOA_DRAINING).set(if snapshot.draining { 1.0 } else { 0.0 });
    if let Some(s) = &snapshot.signaling {
        gauge!(SIGNALING_ROOMS).set(s.rooms as f64);
        gauge!(SIGNALING_SESSIONS).set(s.sessions as f64);
        gauge!(SIGNALING_SESSIONS_HELD).set(s.held as f64);
        gauge!(SIGNALING_TRACKS).set(s.tracks as f64);
        gauge!(SIGNALING_PARTICIPANTS, "role" => "publisher").set(s.publishers as f64);
        gauge!(SIGNALING_PARTICIPANTS, "role" => "listener").set(s.listeners as f64);
        counter!(SIGNALING_JOINS, "path" => "v1").absolute(s.joins_single);
        counter!(SIGNALING_JOINS, "path" => "legacy").absolute(s.joins_legacy);
        counter!(SIGNALING_DROPPED, "queue" => "requests").absolute(s.requests_dropped);
        counter!(SIGNALING_DROPPED, "queue" => "outbox").absolute(s.clients_overflowed);
        counter!(SIGNALING_DROPPED, "queue" => "engine").absolute(s.engine_undelivered);
        counter!(SIGNALING_DROPPED, "queue" => "observer").absolute(s.observer_dropped);
        counter!(SIGNALING_DROPPED, "queue" => "data").absolute(s.data_dropped);
        counter!(SIGNALING_DROPPED, "queue" => "recorder").absolute(s.recorder_dropped);
        counter!(SIGNALING_DROPPED, "queue" => "relay").absolute(s.relay_dropped);
    }
    if let Some(shards) = &snapshot.sfu {
        let total = shards.iter().fold(SfuStats::default(), |mut sum, s| {
            sum.peers += s.peers;
            sum.tracks += s.tracks;
            sum.rtp_in += s.rtp_in;
            sum.rtp_forwarded += s.rtp_forwarded;
            sum.rtp_lost += s.rtp_lost;
            sum.rtp_recovered += s.rtp_recovered;
            sum.rtp_forwarded_direct += s.rtp_forwarded_direct;
            sum.rtp_dropped_duplicate += s.rtp_dropped_duplicate;
            sum.rtp_dropped_unauthorized += s.rtp_dropped_unauthorized;
            sum.rtp_dropped_muted += s.rtp_dropped_muted;
            sum.rtp_dropped_malformed += s.rtp_dropped_malformed;
            sum.rtp_tap_dropped += s.rtp_tap_dropped;
            sum.data_dropped += s.data_dropped;
            sum.datagrams_unknown += s.datagrams_unknown;
            sum.offers_refused += s.offers_refused;
            sum
        });
        gauge!(SFU_SHARDS).set(shards.len() as f64);
        for (shard, stats) in shards.iter().enumerate() {
            gauge!(SFU_SHARD_PEERS, "shard" => shard.to_string()).set(stats.peers as f64);
        }
        gauge!(SFU_PEERS).set(total.peers as f64);
        gauge!(SFU_TRACKS).set(total.tracks as f64);
        counter!(SFU_RTP_RECEIVED).absolute(total.rtp_in);
        counter!(SFU_RTP_FORWARDED).absolute(total.rtp_forwarded);
        counter!(SFU_RTP_LOST).absolute(total.rtp_lost);
        counter!(SFU_RTP_RECOVERED).absolute(total.rtp_recovered);
        counter!(SFU_RTP_DROPPED, "reason" => "unauthorized")
            .absolute(total.rtp_dropped_unauthorized);
        counter!(SFU_RTP_DROPPED, "reason" => "muted").absolute(total.rtp_dropped_muted);
        counter!(SFU_RTP_DROPPED, "reason" => "malformed").absolute(total.rtp_dropped_malformed);
        counter!(SFU_QUEUE_DROPPED, "queue" => "tap_core").absolute(total.rtp_tap_dropped);
        counter!(SFU_QUEUE_DROPPED, "queue" => "data_core").absolute(total.data_dropped);
        counter!(SFU_RTP_FORWARDED_DIRECT).absolute(total.rtp_forwarded_direct);
        counter!(SFU_RTP_DROPPED, "reason" => "duplicate").absolute(total.rtp_dropped_duplicate);
        counter!(SFU_DATAGRAMS_UNKNOWN).absolute(total.datagrams_unknown);
        counter!(SFU_OFFERS_REFUSED).absolute(total.offers_refused);
    }
    let traffic = &snapshot.traffic;
    counter!(SFU_DATAGRAMS_RECEIVED).absolute(traffic.datagrams_in);
    counter!(SFU_BYTES_RECEIVED).absolute(traffic.bytes_in);
    counter!(SFU_DATAGRAMS_SENT).absolute(traffic.datagrams_out);
    counter!(SFU_BYTES_SENT).absolute(traffic.bytes_out);
    for queue in Queue::ALL {
        counter!(SFU_QUEUE_DROPPED, "queue" => queue.name()).absolute(traffic.dropped_from(queue));
    }
    let [delivered, failed, dropped, certificate_refused] = snapshot.webhooks.unwrap_or_default();
    counter!(SIGNALING_WEBHOOK_EVENTS, "outcome" => "delivered").absolute(delivered);
    counter!(SIGNALING_WEBHOOK_EVENTS, "outcome" => "failed").absolute(failed);
    counter!(SIGNALING_WEBHOOK_EVENTS, "outcome" => "dropped").absolute(dropped);
    counter!(SIGNALING_WEBHOOK_EVENTS, "outcome" => "certificate_refused")
        .absolute(certificate_refused);
}

/// Prometheus text of the latency histograms in `snapshot`, to follow the recorder's text.
/// A histogram whose source did not answer is left out rather than shown as empty.
pub fn render_histograms(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    histogram(
        &mut out,
        SFU_FORWARDING_SECONDS,
        "Time from reading a datagram batch to handing the packets it produced to the kernel \
         (the batch's slowest packet)",
        &snapshot.traffic.forwarding,
    );
    if let Some(s) = &snapshot.signaling {
        histogram(
            &mut out,
            SIGNALING_JOIN_SECONDS,
            "Time from a join to the participant's media connection being up (ICE and DTLS)",
            &s.joins,
        );
    }
    out
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (bound, count) in h.cumulative() {
        let le = if bound.is_infinite() {
            "+Inf".to_owned()
        } else {
            bound.to_string()
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_sum {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count {}", h.count());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_renders_every_metric() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let shard = SfuStats {
            peers: 2,
            tracks: 1,
            rtp_in: 10,
            rtp_forwarded: 30,
            rtp_forwarded_direct: 25,
            rtp_dropped_duplicate: 3,
            rtp_dropped_unauthorized: 1,
            rtp_dropped_muted: 2,
            rtp_dropped_malformed: 1,
            rtp_lost: 3,
            rtp_recovered: 2,
            ..SfuStats::default()
        };
        let snapshot = Snapshot {
            signaling: Some(SignalingStats {
                rooms: 1,
                sessions: 3,
                held: 1,
                publishers: 1,
                listeners: 2,
                tracks: 1,
                joins: HistogramSnapshot::default(),
                requests_dropped: 7,
                clients_overflowed: 2,
                joins_single: 5,
                joins_legacy: 4,
                ..SignalingStats::default()
            }),
            sfu: Some(vec![shard, SfuStats { peers: 5, ..shard }]),
            traffic: TrafficSnapshot {
                datagrams_in: 7,
                bytes_in: 700,
                datagrams_out: 9,
                bytes_out: 900,
                dropped: [1, 0, 3, 2],
                ..TrafficSnapshot::default()
            },
            webhooks: Some([4, 5, 6, 7]),
            draining: false,
        };
        metrics::with_local_recorder(&recorder, || {
            describe();
            record(&snapshot);
        });
        let text = handle.render();
        for line in [
            "signaling_rooms 1",
            "signaling_sessions 3",
            "signaling_sessions_held 1",
            "signaling_joins_total{path=\"v1\"} 5",
            "signaling_joins_total{path=\"legacy\"} 4",
            "signaling_participants{role=\"publisher\"} 1",
            "signaling_participants{role=\"listener\"} 2",
            "sfu_peers 7",
            "sfu_tracks 2",
            "sfu_shards 2",
            "sfu_shard_peers{shard=\"0\"} 2",
            "sfu_shard_peers{shard=\"1\"} 5",
            "sfu_rtp_packets_received_total 20",
            "sfu_rtp_packets_forwarded_total 60",
            "sfu_rtp_packets_lost_total 6",
            "sfu_rtp_packets_recovered_total 4",
            "sfu_datagrams_received_total 7",
            "sfu_bytes_received_total 700",
            "sfu_datagrams_sent_total 9",
            "sfu_bytes_sent_total 900",
            "sfu_rtp_packets_dropped_total{reason=\"unauthorized\"} 2",
            "sfu_rtp_packets_dropped_total{reason=\"muted\"} 4",
            "sfu_rtp_packets_forwarded_direct_total 50",
            "sfu_rtp_packets_dropped_total{reason=\"duplicate\"} 6",
            "sfu_rtp_packets_dropped_total{reason=\"malformed\"} 2",
            "signaling_webhook_events_total{outcome=\"delivered\"} 4",
            "signaling_webhook_events_total{outcome=\"failed\"} 5",
            "signaling_webhook_events_total{outcome=\"dropped\"} 6",
            "signaling_webhook_events_total{outcome=\"certificate_refused\"} 7",
            "stoa_draining 0",
            "signaling_dropped_total{queue=\"requests\"} 7",
            "signaling_dropped_total{queue=\"outbox\"} 2",
            "signaling_dropped_total{queue=\"engine\"} 0",
            "sfu_queue_dropped_total{queue=\"commands\"} 1",
            "sfu_queue_dropped_total{queue=\"events\"} 3",
            "sfu_queue_dropped_total{queue=\"tap\"} 2",
            "# TYPE sfu_rtp_packets_forwarded_total counter",
            "# TYPE sfu_peers gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        let mut joins = HistogramSnapshot::default();
        joins.buckets[0] = 1; // ≤ 50 µs
        joins.buckets[8] = 2; // ≤ 25 ms
        joins.sum_seconds = 0.04;
        let snapshot = Snapshot {
            signaling: Some(SignalingStats {
                joins,
                ..SignalingStats::default()
            }),
            ..Snapshot::default()
        };
        let text = render_histograms(&snapshot);
        for line in [
            "# TYPE signaling_join_seconds histogram",
            "signaling_join_seconds_bucket{le=\"0.00005\"} 1",
            "signaling_join_seconds_bucket{le=\"0.01\"} 1",
            "signaling_join_seconds_bucket{le=\"0.025\"} 3",
            "signaling_join_seconds_bucket{le=\"+Inf\"} 3",
            "signaling_join_seconds_sum 0.04",
            "signaling_join_seconds_count 3",
            "# TYPE sfu_forwarding_seconds histogram",
            "sfu_forwarding_seconds_bucket{le=\"+Inf\"} 0",
            "sfu_forwarding_seconds_count 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // Without an answer from signaling there is no join histogram, rather than a false zero.
        let text = render_histograms(&Snapshot::default());
        assert!(!text.contains("signaling_join_seconds"), "{text}");
    }
}
