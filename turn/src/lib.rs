//! `stoa-turn`: Stoa's embedded TURN relay.
//!
//! This crate owns the TURN relay over UDP, TCP and TLS, time-limited REST-style credentials
//! (the scheme TURN REST APIs use) and the relay policy: by default it relays only to the SFU's
//! own addresses and refuses loopback, private and link-local peers unless configured to allow
//! them. It depends on nothing else in the workspace.
//!
//! Not implemented yet: the crate holds no code beyond this description.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
