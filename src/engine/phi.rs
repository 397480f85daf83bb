//! Suspicion before death (`--detector phi`): the phi accrual detector of
//! Hayashibara et al. (2004), as Akka and Cassandra use it. Each connection
//! keeps an estimate of its frames' inter-arrival mean and deviation; the
//! sweep emits `suspect` once phi (how unlikely the current silence is,
//! -log10 of the tail probability) crosses the threshold, and `recovered`
//! when a frame then arrives. Eviction stays at `timeout`: suspicion comes
//! earlier for regular clients and later, or never, for jittery ones that
//! are still alive.
//!
//! phi grows with the silence, so `phi ≥ threshold` is `silence ≥ mean +
//! y·σ` for a `y` fixed by the threshold (solved once, with the logistic
//! approximation of the normal tail Akka uses). Each frame updates the
//! estimates and a per-slot "suspect after" in ticks; the sweep then
//! compares integers, as it does for the timeout.
//!
//! State: 6 bytes per slot (mean and deviation in 16ths of a tick, the
//! suspicion point in ticks), allocated only in phi mode.

use super::{Command, Engine};
use crate::conn_table::{flag, State};
use crate::events::{Event, EventKind};

/// Fixed point: estimates are kept in 16ths of a tick.
const SCALE: f32 = 16.0;
/// Weight of a new sample in the moving averages.
const ALPHA: f32 = 1.0 / 8.0;

/// `y` with phi(mean + y·σ) = `threshold` under the logistic approximation
/// phi(y) = -log10(e / (1 + e)), e = exp(-y·(1.5976 + 0.070566·y²)).
pub fn sigmas_for(threshold: f64) -> f64 {
    let phi = |y: f64| {
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        -(e / (1.0 + e)).log10()
    };
    let (mut lo, mut hi) = (0.0_f64, 50.0_f64);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if phi(mid) < threshold {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// Per-slot inter-arrival estimates.
#[derive(Debug)]
pub(super) struct Phi {
    mean16: Vec<u16>,
    dev16: Vec<u16>,
    suspect_after_ticks: Vec<u16>,
    sigmas: f32,
}

impl Phi {
    pub(super) fn new(slots: u32, threshold: f64) -> Phi {
        Phi {
            mean16: vec![0; slots as usize],
            dev16: vec![0; slots as usize],
            suspect_after_ticks: vec![u16::MAX; slots as usize],
            sigmas: sigmas_for(threshold) as f32,
        }
    }

    /// A connection expected every `interval_ticks`: the prior before any
    /// sample is that interval with half of it as deviation (a quarter
    /// suspected a client with gaps of 0.3/2.7 intervals while it was
    /// still learning).
    pub(super) fn start(&mut self, slot: u32, interval_ticks: u32) {
        let mean = (interval_ticks as f32 * SCALE).min(f32::from(u16::MAX));
        self.set(slot, mean, mean / 2.0);
    }

    /// A frame arrived `gap_ticks` after the previous one.
    pub(super) fn sample(&mut self, slot: u32, gap_ticks: u32) {
        let i = slot as usize;
        let x = (gap_ticks as f32 * SCALE).min(f32::from(u16::MAX));
        let mean = f32::from(self.mean16[i]);
        let dev = f32::from(self.dev16[i]);
        let diff = x - mean;
        let new_mean = mean + ALPHA * diff;
        let new_var = (1.0 - ALPHA) * (dev * dev + ALPHA * diff * diff);
        self.set(slot, new_mean, new_var.sqrt());
    }

    fn set(&mut self, slot: u32, mean: f32, dev: f32) {
        let i = slot as usize;
        self.mean16[i] = mean.round() as u16;
        self.dev16[i] = dev.round() as u16;
        // Deviation floors: a tick (clock granularity) and a tenth of the
        // mean, so a perfectly regular client is not suspected at the first
        // late tick (Akka's min-std-deviation).
        let dev = dev.max(SCALE).max(mean / 10.0);
        let after = (mean + self.sigmas * dev) / SCALE;
        self.suspect_after_ticks[i] = after.ceil().min(f32::from(u16::MAX - 1)) as u16;
    }

    /// Ticks of silence after which `slot` is suspected.
    pub(super) fn suspect_after(&self, slot: u32) -> u32 {
        u32::from(self.suspect_after_ticks[slot as usize])
    }
}

impl Engine {
    /// A complete frame on `slot`, before its `last_seen_tick` moves.
    pub(super) fn phi_frame(&mut self, slot: u32) {
        let Some(phi) = &mut self.phi else {
            return;
        };
        let gap = self
            .now_tick
            .wrapping_sub(self.table.last_seen_tick[slot as usize]);
        if self.table.has(slot, flag::SEEN_FRAME) {
            phi.sample(slot, gap);
        }
        if self.table.has(slot, flag::SUSPECTED) {
            self.table.clear(slot, flag::SUSPECTED);
            self.stats.recovered.inc();
            self.phi_event(slot, EventKind::Recovered);
        }
    }

    /// Once a tick: open slots whose silence crossed their threshold are
    /// suspected (once, until a frame arrives).
    pub(super) fn phi_sweep(&mut self) {
        let Some(phi) = &self.phi else {
            return;
        };
        let mut suspects = Vec::new();
        for slot in 0..self.table.high_water() {
            let silence = self
                .now_tick
                .wrapping_sub(self.table.last_seen_tick[slot as usize]);
            if silence > phi.suspect_after(slot)
                && self.table.state(slot) == State::Open
                && !self.table.has(slot, flag::SUSPECTED)
            {
                suspects.push(slot);
            }
        }
        for slot in suspects {
            self.table.set(slot, flag::SUSPECTED);
            self.stats.suspected.inc();
            self.phi_event(slot, EventKind::Suspect);
        }
    }

    fn phi_event(&mut self, slot: u32, kind: EventKind) {
        if self.cfg.events {
            let peer = self.table.peer(slot);
            let id = self.table.client_id[slot as usize];
            let ev = Event::new(kind, self.session(slot), id, peer);
            self.push(Command::Event(ev));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_8_is_about_5_sigmas() {
        let y = sigmas_for(8.0);
        assert!((5.0..5.5).contains(&y), "{y}");
        assert!(sigmas_for(1.0) < sigmas_for(3.0));
    }

    #[test]
    fn a_regular_client_is_suspected_sooner_than_a_jittery_one() {
        let mut p = Phi::new(2, 8.0);
        p.start(0, 100);
        p.start(1, 100);
        for i in 0..50 {
            p.sample(0, 100);
            p.sample(1, if i % 2 == 0 { 40 } else { 160 });
        }
        let (regular, jittery) = (p.suspect_after(0), p.suspect_after(1));
        assert!(regular < 160, "regular: {regular}");
        assert!(jittery > 300, "jittery: {jittery}");
    }
}
