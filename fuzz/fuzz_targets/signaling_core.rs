//! Fuzzes the signaling core as a whole: random request sequences from several clients in two
//! rooms, administrative calls and the passing of time, fed to `proto::Server` driving real
//! engine shards and str0m clients in memory (`stoa_signaling::sim`). After every action the
//! invariants must hold: no panic; a participant without `canPublish` never has a published
//! track; every session's peers are known to the engine and the engine has no others; the
//! counts agree.
//!
//! Input layout: `[op][x][y]` repeated (at most 48 actions); see `Sim::act`.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use stoa_signaling::proto::ServerConfig;
use stoa_signaling::sim::Sim;

/// One start instant for every run: the core and the engine never read the clock.
fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fuzz_target!(|data: &[u8]| {
    let seed = data.first().copied().map_or(0, u64::from);
    // Odd seeds spread every room over both shards (a room's peers alternate between them);
    // even ones keep each room on one shard.
    let config = ServerConfig {
        room_peers_per_shard: if seed % 2 == 1 { 1 } else { 2_000 },
        ..ServerConfig::default()
    };
    let mut sim = Sim::new(start(), seed, 2, config);
    sim.max_steps = 200_000;
    for (step, chunk) in data.chunks_exact(3).take(48).enumerate() {
        sim.act(chunk[0], chunk[1], chunk[2]);
        if let Err(e) = sim.check_invariants() {
            panic!("step {step} {chunk:?}: {e}");
        }
    }
});
