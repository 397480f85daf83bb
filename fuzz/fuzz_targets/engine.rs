//! Fuzz target: two sans-IO engines (two shards with their registries, the
//! control plane delivered by the input, in any order) driven by an
//! arbitrary sequence of opens, bytes, ticks, peer closes, finished closes,
//! refused sends and shutdowns. After every step it checks, against a model
//! kept here:
//! - at most one live (online, open) holder per client_id across shards;
//! - no slot both free and live: each slot's state equals the model's, a
//!   free slot has no flags and no stash entry, counts agree;
//! - every close emits exactly one offline event for an online connection
//!   (and none for one that never went online), and each slot closes once;
//! - no eviction before the timeout after the last complete frame, and none
//!   missed after a sweep (no open slot older than its timeout).
#![no_main]

mod model;

use libfuzzer_sys::fuzz_target;
use model::{Cluster, Step};

fuzz_target!(|steps: Vec<Step>| {
    let mut cluster = Cluster::new();
    for step in steps.into_iter().take(model::STEPS_MAX) {
        cluster.apply(step);
        cluster.check();
    }
});
