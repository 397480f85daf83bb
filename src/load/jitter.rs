//! The per-client jitter model (sans-IO): which healthy clients are
//! jittery, bursty or flapping, and how late each of their PINGs goes.

use std::time::Duration;

/// How a healthy client keeps its schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Profile {
    /// Interval ± the uniform `--jitter` only.
    Regular = 0,
    /// Plus normal jitter of `--jitter-ms` SD on every PING.
    Jittery = 1,
    /// Now and then holds its PINGs for a pause, then sends them at once.
    Bursty = 2,
    /// First connection of a flapping client: closes at its fault time…
    FlapFirst = 3,
    /// …and this slot reconnects with the same client_id a gap later.
    FlapSecond = 4,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Regular => "regular",
            Profile::Jittery => "jittery",
            Profile::Bursty => "bursty",
            Profile::FlapFirst | Profile::FlapSecond => "flapper",
        }
    }
}

/// Shares are in parts per million of all clients.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JitterModel {
    pub jitter_sd_ns: u64,
    pub jittery_ppm: u32,
    pub episode_ppm: u32,
    pub episode_max_pause_ns: u64,
    /// Chance that a bursty client's next PING starts an episode.
    pub episode_chance: f64,
    pub flap_ppm: u32,
    pub flap_gap_ns: u64,
}

/// The longest pause or gap the flags accept (runs are short and bounded).
pub const PAUSE_MAX: Duration = Duration::from_secs(600);

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform draw in [0, 1) derived from `x`.
fn unit_of(x: u64) -> f64 {
    (splitmix(x) >> 11) as f64 / (1u64 << 53) as f64
}

impl JitterModel {
    /// The profile of global client `index`. Flappers come in pairs of
    /// consecutive slots (2k, 2k+1) sharing one client_id.
    pub fn profile_of(&self, index: u64) -> Profile {
        if splitmix((index / 2) ^ 0xF1A9) % 1_000_000 < u64::from(self.flap_ppm) {
            return if index % 2 == 0 {
                Profile::FlapFirst
            } else {
                Profile::FlapSecond
            };
        }
        let x = splitmix(index ^ 0x7177) % 1_000_000;
        if x < u64::from(self.jittery_ppm) {
            Profile::Jittery
        } else if x < u64::from(self.jittery_ppm) + u64::from(self.episode_ppm) {
            Profile::Bursty
        } else {
            Profile::Regular
        }
    }

    /// Extra delay of the next PING of a `profile` client (`base_ns` is its
    /// scheduled gap) from one uniform draw `unit`, and how many PINGs it
    /// held meanwhile (sent together with it).
    pub fn delay(&self, profile: Profile, base_ns: u64, unit: f64) -> (i64, u32) {
        let bits = unit.to_bits();
        match profile {
            Profile::Jittery => {
                let (u1, u2) = (unit_of(bits).max(1e-12), unit_of(bits ^ 0x55));
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let sd = self.jitter_sd_ns as f64;
                // Clipped at ±3 SD and so that the gap stays ≥ 5% of the base.
                let off = (z.clamp(-3.0, 3.0) * sd).max(-(base_ns as f64) * 0.95);
                (off as i64, 0)
            }
            Profile::Bursty if unit_of(bits ^ 0xB0) < self.episode_chance => {
                let pause = (unit_of(bits ^ 0xB1) * self.episode_max_pause_ns as f64) as u64;
                (pause as i64, (pause / base_ns.max(1)) as u32)
            }
            _ => (0, 0),
        }
    }

    /// The largest extra delay any PING can get (for checking against the
    /// server's timeout).
    pub fn worst_delay_ns(&self) -> u64 {
        let mut worst = 0;
        if self.jittery_ppm > 0 {
            worst = 3 * self.jitter_sd_ns;
        }
        if self.episode_ppm > 0 {
            worst = worst.max(self.episode_max_pause_ns);
        }
        worst
    }
}

fn share(v: &str) -> Result<u32, String> {
    let x: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a fraction"))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("fraction {v:?} is outside 0..=1"));
    }
    Ok((x * 1e6).round() as u32)
}

fn dur(v: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(v.trim()).map_err(|e| format!("{v:?}: {e}"))?;
    if d > PAUSE_MAX {
        return Err(format!("{v:?} is longer than {PAUSE_MAX:?}"));
    }
    Ok(d)
}

/// `--jitter-ms SD[,FRACTION]` (fraction of clients, default 1).
pub fn parse_jitter_ms(s: &str) -> Result<(u64, u32), String> {
    let (sd, frac) = s.split_once(',').unwrap_or((s, "1"));
    let sd_ms: u64 = sd
        .trim()
        .parse()
        .map_err(|_| format!("{sd:?} is not whole milliseconds"))?;
    if sd_ms > PAUSE_MAX.as_millis() as u64 {
        return Err(format!("SD {sd_ms} ms is too large"));
    }
    Ok((sd_ms * 1_000_000, share(frac)?))
}

/// `--delay-episodes FRACTION,MAXPAUSE[,CHANCE]` (chance per PING, default 0.1).
pub fn parse_episodes(s: &str) -> Result<(u32, u64, f64), String> {
    let parts: Vec<&str> = s.split(',').collect();
    let (frac, pause, chance) = match parts[..] {
        [f, p] => (f, p, "0.1"),
        [f, p, c] => (f, p, c),
        _ => return Err(format!("{s:?}: expected FRACTION,MAXPAUSE[,CHANCE]")),
    };
    let chance = f64::from(share(chance)?) / 1e6;
    Ok((share(frac)?, dur(pause)?.as_nanos() as u64, chance))
}

/// `--flap FRACTION,GAP`.
pub fn parse_flap(s: &str) -> Result<(u32, u64), String> {
    let (frac, gap) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?}: expected FRACTION,GAP"))?;
    Ok((share(frac)?, dur(gap)?.as_nanos() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> JitterModel {
        JitterModel {
            jitter_sd_ns: 200_000_000,
            jittery_ppm: 200_000,
            episode_ppm: 100_000,
            episode_max_pause_ns: 3_000_000_000,
            episode_chance: 0.1,
            flap_ppm: 100_000,
            flap_gap_ns: 2_000_000_000,
        }
    }

    #[test]
    fn profiles_follow_the_shares_and_flappers_pair_up() {
        let m = model();
        let mut counts = [0u32; 5];
        for i in 0..100_000 {
            let p = m.profile_of(i);
            counts[p as usize] += 1;
            if p == Profile::FlapFirst {
                assert_eq!(m.profile_of(i + 1), Profile::FlapSecond, "slot {i}");
            }
        }
        assert_eq!(counts[3], counts[4]);
        let flap = counts[3] + counts[4];
        assert!((9_000..11_000).contains(&flap), "flap {flap}");
        // Jittery and bursty are shares of all clients, taken from non-flappers.
        assert!((16_000..20_000).contains(&counts[1]), "{counts:?}");
        assert!((8_000..10_000).contains(&counts[2]), "{counts:?}");
        assert_eq!(JitterModel::default().profile_of(7), Profile::Regular);
    }

    /// A simulated clock: a jittery client's gaps have the configured SD, and
    /// none go past 3 SD.
    #[test]
    fn jittery_gaps_are_normal_with_the_configured_sd() {
        let m = model();
        let (mut now_ns, mut gaps) = (0u64, Vec::new());
        for k in 0..20_000u64 {
            let unit = unit_of(k ^ 0xABCD);
            let (off, held) = m.delay(Profile::Jittery, 1_000_000_000, unit);
            assert_eq!(held, 0);
            let next = (now_ns as i64 + 1_000_000_000 + off) as u64;
            gaps.push((next - now_ns) as f64 / 1e6);
            now_ns = next;
        }
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!((990.0..1010.0).contains(&mean), "mean {mean}");
        assert!((185.0..215.0).contains(&sd), "sd {sd}");
        let max = gaps.iter().cloned().fold(0.0, f64::max);
        assert!(max <= 1_600.0 + 1e-6, "max gap {max}");
        assert_eq!(m.delay(Profile::Regular, 1_000_000_000, 0.3), (0, 0));
    }

    #[test]
    fn bursty_clients_pause_sometimes_below_the_cap_and_hold_pings() {
        let m = model();
        let (mut episodes, mut held_total) = (0u32, 0u32);
        for k in 0..10_000u64 {
            let (off, held) = m.delay(Profile::Bursty, 1_000_000_000, unit_of(k));
            if off > 0 {
                episodes += 1;
                assert!(off < 3_000_000_000, "{off}");
                assert_eq!(held, (off / 1_000_000_000) as u32);
                held_total += held;
            }
        }
        assert!((800..1_200).contains(&episodes), "{episodes} episodes");
        assert!(held_total > 0);
        assert_eq!(m.worst_delay_ns(), 3_000_000_000);
    }

    #[test]
    fn flags_parse_and_refuse_nonsense() {
        assert_eq!(parse_jitter_ms("150").unwrap(), (150_000_000, 1_000_000));
        assert_eq!(parse_jitter_ms("150,0.2").unwrap(), (150_000_000, 200_000));
        assert_eq!(
            parse_episodes("0.1,3s").unwrap(),
            (100_000, 3_000_000_000, 0.1)
        );
        assert_eq!(parse_flap("0.05,2s").unwrap(), (50_000, 2_000_000_000));
        for bad in ["x", "150,2"] {
            assert!(parse_jitter_ms(bad).is_err(), "{bad}");
        }
        for bad in ["0.1", "2,3s", "0.1,3s,0.1,1", "0.1,20m"] {
            assert!(parse_episodes(bad).is_err(), "{bad}");
        }
        assert!(parse_flap("0.1").is_err());
    }
}
