//! `stoa-turn`: Stoa's embedded TURN relay (RFC 8656) over UDP, TCP and TLS, with time-limited
//! REST-style credentials and a peer policy that makes it a relay for Stoa's SFU only.
//!
//! # Why its own core
//!
//! Three existing engines were weighed:
//!
//! - webrtc-rs `turn` 0.17: UDP only (no `transport=tcp`, no `turns:`), in bug-fix-only mode,
//!   its nonce map never shrinks, and its REST auth handler parses the whole username as the
//!   expiry, so `expiry:identity` usernames fail.
//! - `turn-server` 4.x: UDP, TCP and TLS, but a whole server (its own config, gRPC hooks,
//!   Prometheus, axum and tonic in the default features) rather than a library; the policy
//!   Stoa needs (peers limited to the SFU's addresses, per-identity quotas, a rate limit on
//!   Allocate) is not a hook it offers.
//! - `turn-server-proto` 0.7: sans-IO and close to the house style, but users are added with
//!   static passwords, so REST credentials, quotas and the peer policy would sit around it
//!   rather than in it.
//!
//! The part of TURN a relay for browsers needs (Allocate, Refresh, CreatePermission,
//! ChannelBind, Send and Data indications, ChannelData; UDP relayed transport, clients over
//! UDP, TCP and TLS) is small. Owning it keeps the policy, quotas and bounds in one
//! deterministic state machine that unit tests, fuzzing and coturn's own test client exercise
//! directly, in the shape of Firezone's `relay-proto`: [`proto`] is sans-IO; [`shell`] runs one
//! core per shard thread (an `epoll` loop over UDP with `recvmmsg`/`sendmmsg`) and serves TCP
//! and TLS with tokio.
//!
//! # Run-loop contract
//!
//! [`proto::Server`] takes input through `handle_client_input`, `handle_peer_input`,
//! `handle_client_closed` and `handle_timeout` (all given the current time), and returns side
//! effects through `poll_command`, which must be drained after every input, in order. Call
//! `handle_timeout` when `poll_timeout` says (once a second while anything is live).
//! Several cores can serve one relay, each with its own relay ports, sharing one
//! [`proto::Ledger`] (`Server::with_ledger`) so quotas and the rate limit hold relay-wide.
//!
//! # Errors and bugs
//!
//! Network input never panics: malformed or unauthorised input is answered with a STUN error
//! or dropped, and counted in [`proto::Stats`]. A panic is a bug. Configuration errors are
//! reported once, at start-up, by the shell.
//!
//! # Bounds
//!
//! Nonces are stateless (an expiry and a MAC), permission and channel tables per allocation are
//! capped, allocations are capped per identity and in total (and by the relay port range), and
//! the per-IP Allocate rate limiter keeps a bounded table.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod proto;

#[cfg(feature = "runtime")]
pub mod shell;
