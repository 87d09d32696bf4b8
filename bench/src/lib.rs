//! `stoa-bench`: Stoa's load generator and reports.
//!
//! This crate owns load generation against a Stoa deployment: many client peers speaking the
//! client side of the LiveKit protocol over real sockets, and latency and capacity reports
//! derived from what those clients actually receive, so its numbers mean what users get.
//!
//! Not implemented yet: the crate holds no code beyond this description.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
