//! `ringbeat-load`: drives many simulated heartbeat clients against a
//! ringbeat server over loopback and measures what a user cares about — RTT,
//! heartbeats lost, how fast silent peers are detected, false evictions.
//!
//! Layout: `mix` (fault scenarios), `jitter` (jittery, bursty and
//! flapping clients, sans-IO), `args` (flags), `clients` (per-thread
//! client state and frame handling, sans-IO), `detect` (detection quality
//! from the server's events file, sans-IO), `mqtt` (the MQTT 3.1.1 slice
//! for benchmarking a broker), `wheel` (timer wheel),
//! `report` (counters, histograms, JSON), `hold` (a held storm's
//! stopped server), `sample` (server and kernel
//! memory/CPU from /proc), `worker` (the io_uring driver, one per thread).

pub mod args;
pub mod clients;
pub mod detect;
pub mod hold;
pub mod jitter;
pub mod mix;
pub mod mqtt;
pub mod report;
pub mod sample;
pub mod wheel;
pub mod worker;
