//! A hashed timer wheel of client indices: O(1) to schedule, one bucket per
//! slot period to fire. Client deadlines are coarse (a PING is due "about
//! now"), so the slot period bounds the error.

/// Clients due per wheel slot.
#[derive(Debug)]
pub struct Wheel {
    slots: Vec<Vec<u32>>,
    slot_ns: u64,
    /// The next slot to fire, as an absolute slot number.
    next_slot: u64,
}

impl Wheel {
    /// A wheel whose horizon is at least `horizon_ns`.
    pub fn new(slot_ns: u64, horizon_ns: u64, start_ns: u64) -> Wheel {
        assert!(slot_ns > 0);
        let count = (horizon_ns / slot_ns + 2) as usize;
        Wheel {
            slots: vec![Vec::new(); count],
            slot_ns,
            next_slot: start_ns / slot_ns,
        }
    }

    /// Schedules `client` at `at_ns`; a time in the past fires next.
    pub fn schedule(&mut self, client: u32, at_ns: u64) {
        let horizon = self.next_slot + self.slots.len() as u64 - 1;
        let slot = (at_ns / self.slot_ns).clamp(self.next_slot, horizon);
        let n = self.slots.len() as u64;
        self.slots[(slot % n) as usize].push(client);
    }

    /// Moves every client due by `now_ns` into `out`.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<u32>) {
        let n = self.slots.len() as u64;
        while self.next_slot <= now_ns / self.slot_ns {
            out.append(&mut self.slots[(self.next_slot % n) as usize]);
            self.next_slot += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_and_never_early() {
        let mut w = Wheel::new(10, 1_000, 0);
        w.schedule(1, 55);
        w.schedule(2, 5);
        w.schedule(3, 5_000); // beyond the horizon: clamped to its end
        let mut out = Vec::new();
        w.expire(49, &mut out);
        assert_eq!(out, [2]);
        out.clear();
        w.expire(59, &mut out);
        assert_eq!(out, [1]);
        out.clear();
        w.expire(2_000, &mut out);
        assert_eq!(out, [3]);
    }

    #[test]
    fn a_past_deadline_fires_at_once() {
        let mut w = Wheel::new(10, 100, 1_000);
        w.schedule(7, 0);
        let mut out = Vec::new();
        w.expire(1_000, &mut out);
        assert_eq!(out, [7]);
    }
}
