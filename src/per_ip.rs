//! Connections per source address, shared by all shards (a source's
//! connections land on any shard by SO_REUSEPORT hashing). Touched once per
//! accept and once per close, never per frame, behind striped locks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Lock stripes: enough that shards rarely contend.
const STRIPES: usize = 64;

/// The limit and the live count per address.
#[derive(Debug)]
pub struct PerIpLimit {
    max: u32,
    stripes: Vec<Mutex<HashMap<IpAddr, u32>>>,
}

impl PerIpLimit {
    pub fn new(max: u32) -> PerIpLimit {
        assert!(max > 0);
        PerIpLimit {
            max,
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    fn stripe(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(v4) as usize,
            IpAddr::V6(v6) => (u128::from(v6) as usize) ^ ((u128::from(v6) >> 64) as usize),
        };
        &self.stripes[h.wrapping_mul(0x9E37_79B9) % STRIPES]
    }

    /// Counts one more connection from `ip`, unless it is at the limit.
    pub fn try_acquire(&self, ip: IpAddr) -> bool {
        let mut map = self.stripe(ip).lock().expect("per-ip lock");
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// A connection counted by [`PerIpLimit::try_acquire`] is gone.
    pub fn release(&self, ip: IpAddr) {
        let mut map = self.stripe(ip).lock().expect("per-ip lock");
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Live connections counted for `ip`.
    pub fn count(&self, ip: IpAddr) -> u32 {
        let map = self.stripe(ip).lock().expect("per-ip lock");
        map.get(&ip).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_address_apart() {
        let l = PerIpLimit::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.try_acquire(a) && l.try_acquire(a));
        assert!(!l.try_acquire(a), "third from a");
        assert!(l.try_acquire(b), "b has its own count");
        l.release(a);
        assert!(l.try_acquire(a), "room again after a close");
        assert_eq!(l.count(a), 2);
    }
}
