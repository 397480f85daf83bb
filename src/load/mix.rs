//! Fault scenarios and how they are mixed across clients.

use std::fmt;
use std::str::FromStr;

/// What one simulated client does once its fault time comes. Before that
/// every client behaves like a healthy one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Scenario {
    /// PINGs every interval (with jitter) and answers server PINGs.
    Healthy = 0,
    /// Stops sending but keeps the socket: a pulled cable as the server sees it.
    Silent = 1,
    /// Aborts the connection (SO_LINGER 0 → RST).
    Reset = 2,
    /// Sends CLOSE(NORMAL) and closes.
    Close = 3,
    /// Sends an invalid header.
    Garbage = 4,
    /// Keeps PINGing, one byte at a time.
    Dribble = 5,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Healthy,
        Scenario::Silent,
        Scenario::Reset,
        Scenario::Close,
        Scenario::Garbage,
        Scenario::Dribble,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Healthy => "healthy",
            Scenario::Silent => "silent",
            Scenario::Reset => "reset",
            Scenario::Close => "close",
            Scenario::Garbage => "garbage",
            Scenario::Dribble => "dribble",
        }
    }

    /// Whether the server must keep this client connected to the end.
    pub fn stays_alive(self) -> bool {
        matches!(self, Scenario::Healthy | Scenario::Dribble)
    }
}

/// Shares of each scenario, in parts per million; healthy takes the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    ppm: [u32; 6],
}

const PPM: u32 = 1_000_000;

impl Default for Mix {
    fn default() -> Self {
        let mut ppm = [0; 6];
        ppm[Scenario::Healthy as usize] = PPM;
        Mix { ppm }
    }
}

impl Mix {
    /// The share of `s` in parts per million.
    pub fn ppm(&self, s: Scenario) -> u32 {
        self.ppm[s as usize]
    }

    /// The scenario of client `index`. Deterministic, and spread so that
    /// every run of consecutive clients carries about the configured mix.
    pub fn scenario_of(&self, index: u64) -> Scenario {
        // A multiplicative hash spreads indices uniformly over 0..PPM.
        let x = (index.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % u64::from(PPM);
        let mut acc = 0u64;
        for s in Scenario::ALL.into_iter().skip(1) {
            acc += u64::from(self.ppm[s as usize]);
            if x < acc {
                return s;
            }
        }
        Scenario::Healthy
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `healthy=0.9,silent=0.05,reset=0.05`: shares as fractions (or
    /// percentages with `%`); healthy takes whatever is not given.
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut ppm = [0u32; 6];
        let mut given_healthy = None;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected NAME=SHARE"))?;
            let scenario = Scenario::ALL
                .into_iter()
                .find(|sc| sc.name() == name.trim())
                .ok_or_else(|| format!("unknown scenario {name:?} (healthy, silent, reset, close, garbage, dribble)"))?;
            let share = parse_share(value.trim())?;
            if scenario == Scenario::Healthy {
                given_healthy = Some(share);
            } else {
                ppm[scenario as usize] = share;
            }
        }
        let faults: u32 = ppm.iter().sum();
        if faults > PPM {
            return Err(format!("shares add up to more than 1 ({faults} ppm)"));
        }
        let healthy = PPM - faults;
        if let Some(h) = given_healthy {
            if h.abs_diff(healthy) > 1 {
                return Err(format!(
                    "healthy={} but the faults leave {}",
                    f64::from(h) / 1e6,
                    f64::from(healthy) / 1e6
                ));
            }
        }
        ppm[Scenario::Healthy as usize] = healthy;
        Ok(Mix { ppm })
    }
}

fn parse_share(v: &str) -> Result<u32, String> {
    let (num, scale) = match v.strip_suffix('%') {
        Some(n) => (n, 1e4),
        None => (v, 1e6),
    };
    let x: f64 = num.parse().map_err(|_| format!("{v:?} is not a number"))?;
    if !(0.0..=1e6 / scale).contains(&x) {
        return Err(format!("share {v:?} is outside 0..=1"));
    }
    Ok((x * scale).round() as u32)
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Scenario::ALL
            .into_iter()
            .filter(|&s| self.ppm(s) > 0)
            .map(|s| format!("{}={}", s.name(), f64::from(self.ppm(s)) / 1e6))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fractions_and_percentages() {
        let m: Mix = "silent=0.1,reset=5%".parse().unwrap();
        assert_eq!(m.ppm(Scenario::Silent), 100_000);
        assert_eq!(m.ppm(Scenario::Reset), 50_000);
        assert_eq!(m.ppm(Scenario::Healthy), 850_000);
        assert_eq!(m.to_string(), "healthy=0.85,silent=0.1,reset=0.05");
    }

    #[test]
    fn rejects_bad_mixes() {
        for bad in [
            "silent=2",
            "silent=0.7,reset=0.7",
            "sleepy=0.1",
            "silent",
            "healthy=0.5",
        ] {
            assert!(bad.parse::<Mix>().is_err(), "{bad} accepted");
        }
        assert!("healthy=0.9,silent=0.1".parse::<Mix>().is_ok());
    }

    #[test]
    fn assignment_follows_the_shares() {
        let m: Mix = "silent=0.1,garbage=0.02".parse().unwrap();
        let mut counts = [0u32; 6];
        for i in 0..100_000 {
            counts[m.scenario_of(i) as usize] += 1;
        }
        let silent = counts[Scenario::Silent as usize];
        let garbage = counts[Scenario::Garbage as usize];
        assert!((9_000..11_000).contains(&silent), "silent {silent}");
        assert!((1_500..2_500).contains(&garbage), "garbage {garbage}");
        assert_eq!(counts.iter().sum::<u32>(), 100_000);
    }
}
