//! The sans-IO core: STUN/TURN messages, credentials, the peer policy and the relay's state
//! machine. No sockets, clocks or randomness: time and the nonce key come in as inputs.

pub mod allocation;
pub mod credentials;
pub mod ledger;
pub mod message;
pub mod policy;
pub mod rate_limit;
pub mod server;

pub use credentials::{Credentials, Secret};
pub use ledger::Ledger;
pub use policy::{PeerPolicy, PeerRule, PublicPeers};
pub use rate_limit::RateLimit;
pub use server::{Client, Command, Config, Now, Quotas, Server, Stats, Transport};
