//! `stoa-bench`: Stoa's load generator and reports.
//!
//! Many client peers speak the client side of the LiveKit protocol over real sockets (a
//! WebSocket to `/rtc`, str0m peer connections with real ICE, DTLS and SRTP), so the same harness
//! drives Stoa or any LiveKit-compatible server, and its numbers mean what users get.
//!
//! - [`client`]: one participant: signaling, a subscriber connection, and for speakers a
//!   publisher connection sending real Opus ([`audio`]) in 20 ms frames.
//! - [`reception`]: what one listener measured: join-to-first-audio, loss, jitter, latency.
//! - [`scenario`]: audio room, join storm, churn and speaker rotation, bounded in time and count.
//! - [`server`]: the server under test as a child process, and its CPU and memory from `/proc`.
//! - [`report`]: the summary table and JSON; [`capacity`]: the listener ramp;
//!   [`baseline`]: what the kernel alone sends per core with `sendmmsg`.
//! - [`product`]: the product path (a user token, `POST /api/rooms/{id}/token`, then `/rtc`)
//!   and a minimal keep-alive HTTP client; [`apiload`]: token minting and admission alone,
//!   without media, ramped to a large room.
//! - [`sink`]: one thread reading every header-only listener's socket.
//! - [`threads`]: a process's threads' CPU time and run-queue wait over a phase.
//! - [`janus`]: Janus's videoroom as a comparison SFU, and the adapter that lets the same
//!   clients drive it; [`compare`]: the baseline and both servers through the same ramp and
//!   join storm, in one run; [`two_rooms`]: join storms in one room while another is busy;
//!   [`recording`]: a room's recording on and off, side by side (server CPU, listeners'
//!   latency and loss); [`relay`]: one room across three nodes, each in its own network
//!   namespace ([`netns`]), the relay's added latency and its CPU cost side by side;
//!   [`failover`]: a node of three killed under a room, and how soon its listeners hear audio
//!   again.
//!
//! One-way latency needs one clock: speakers and listeners run in this one process and share a
//! [`clock::Clock`]; each Opus packet carries its send time in Opus padding (RFC 6716 §3.2.5),
//! which decoders ignore, so the audio stays real and decodable.
//!
//! Errors: network and server input never panics; a client that fails records why and the run
//! goes on, so a report also counts failures.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod affinity;
pub mod apiload;
pub mod audio;
pub mod baseline;
pub mod capacity;
pub mod chart;
pub mod client;
pub mod clock;
pub mod compare;
pub mod failover;
pub mod janus;
pub mod netns;
mod peer;
pub mod product;
pub mod reception;
pub mod recording;
pub mod relay;
pub mod report;
pub mod scenario;
pub mod server;
pub mod sink;
pub mod threads;
pub mod two_rooms;
