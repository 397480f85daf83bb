//! `ringbeat-load` flags, checked into a [`LoadConfig`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;

use super::clients::{Timing, Wire};
use super::jitter::JitterModel;
use super::mix::Mix;

/// Sockets one worker ring holds at most: its fixed-file table is capped by
/// RLIMIT_NOFILE, less a margin for the process's own fds.
pub const CLIENTS_PER_WORKER_MAX: u64 = 19_000;

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (use e.g. 200ms, 3s, 1m)"))
}

/// Drive simulated heartbeat clients against a ringbeat server (loopback,
/// or from addresses named with --source-from).
#[derive(Parser, Debug, Clone)]
#[command(name = "ringbeat-load", version)]
pub struct LoadArgs {
    /// Server address (repeatable); clients are spread over them
    #[arg(long = "connect", value_name = "ADDR", required = true)]
    pub connect: Vec<SocketAddr>,
    /// Simulated clients
    #[arg(long, default_value_t = 1000)]
    pub clients: u64,
    /// New connections per second
    #[arg(long, value_name = "PER_SEC", default_value_t = 10_000)]
    pub ramp: u64,
    /// PING interval of healthy clients
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub interval: Duration,
    /// ± jitter of the interval, percent
    #[arg(long, value_name = "PCT", default_value_t = 10.0)]
    pub jitter: f64,
    /// Total run time (the run always stops by itself)
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Start with HELLO carrying a unique client_id
    #[arg(long)]
    pub hello: bool,
    /// What the clients speak: ringbeat frames, or MQTT 3.1.1 keepalive
    /// (CONNECT with keepalive = 2/3 of --timeout, then PINGREQ) to
    /// benchmark a broker
    #[arg(long, value_enum, default_value = "ringbeat")]
    pub protocol: Wire,
    /// Fault shares, e.g. healthy=0.9,silent=0.05,reset=0.05
    #[arg(long, default_value = "healthy=1")]
    pub mix: Mix,
    /// When a faulty client turns faulty, after it connected
    #[arg(long, value_parser = parse_duration)]
    pub fault_after: Option<Duration>,
    /// No fault before this time since the start (e.g. after the ramp, so
    /// that every client is live at once first)
    #[arg(long, value_parser = parse_duration)]
    pub fault_at: Option<Duration>,
    /// The server's --timeout (to judge detection latency)
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// The server's --tick
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub tick: Duration,
    /// Worker threads, one io_uring each [default: clients / 19000, rounded up]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Source addresses 127.0.0.1 .. 127.0.0.N, or N from --source-from
    /// (ephemeral ports are per source)
    #[arg(long, default_value_t = 64)]
    pub sources: u8,
    /// First source address, the rest consecutive: a local address that
    /// reaches the targets (e.g. one end of a veth pair). Required for
    /// targets outside 127.0.0.0/8, so a load never leaves loopback by
    /// accident
    #[arg(long, value_name = "IPV4")]
    pub source_from: Option<Ipv4Addr>,
    /// Also measure server CPU per heartbeat over a steady window: from this
    /// time since the start (after the ramp, first PINGs and evictions)
    /// until the end, so connects and teardown are left out
    #[arg(long, value_parser = parse_duration)]
    pub steady_after: Option<Duration>,
    /// Sample this server process (RSS, CPU) and kernel memory
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// A held storm: stop the server (SIGSTOP to --server-pid) while every
    /// client connects and says HELLO into its accept queue, resume it, and
    /// time how fast it answers them all: the server's own accept rate, not
    /// the load generator's connect rate. Needs every client at once
    /// (--ramp >= --clients) and --hello or MQTT; the accept queue must
    /// hold them (the server's listen backlog, net.core.somaxconn)
    #[arg(long)]
    pub hold_server: bool,
    /// Write the result JSON here
    #[arg(long, value_name = "PATH")]
    pub json: Option<std::path::PathBuf>,
    /// How long a busy worker may gather completions before handling them
    /// (fewer wake-ups; RTTs and detections are then measured up to this
    /// late, and the detection slack grows by it; kernel 6.12+)
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub batch_wait: Duration,
    /// Use regular fds instead of direct descriptors (capped by nofile)
    #[arg(long)]
    pub compat: bool,
    /// Normal jitter on each PING's send time: SD in ms, for a FRACTION of
    /// the healthy clients (default all); clipped at ±3 SD
    #[arg(long, value_name = "SD[,FRACTION]", value_parser = super::jitter::parse_jitter_ms)]
    pub jitter_ms: Option<(u64, u32)>,
    /// Bursty delay episodes: a FRACTION of healthy clients that, with
    /// CHANCE per PING (default 0.1), hold their PINGs for a uniform pause
    /// up to MAXPAUSE, then send the held ones at once
    #[arg(long, value_name = "FRACTION,MAXPAUSE[,CHANCE]", value_parser = super::jitter::parse_episodes)]
    pub delay_episodes: Option<(u32, u64, f64)>,
    /// Network-change reconnects: a FRACTION of clients (pairs of slots
    /// sharing a client_id; needs --hello) close at their fault time and
    /// say HELLO again with the same id GAP later
    #[arg(long, value_name = "FRACTION,GAP", value_parser = super::jitter::parse_flap)]
    pub flap: Option<(u32, u64)>,
    /// The server's --events file, read at the end (needs --hello): late
    /// evictions are re-judged by the server's own eviction times, and
    /// detection quality is measured (time to suspect and evict, false
    /// suspicions, flapping)
    #[arg(long, value_name = "PATH")]
    pub server_events: Option<std::path::PathBuf>,
}

/// The jitter model of the flags, checked: no jittery or bursty PING may
/// come later than the server's timeout allows.
fn jitter_model(args: &LoadArgs) -> Result<JitterModel, String> {
    let (jitter_sd_ns, jittery_ppm) = args.jitter_ms.unwrap_or((0, 0));
    let (episode_ppm, episode_max_pause_ns, episode_chance) =
        args.delay_episodes.unwrap_or((0, 0, 0.0));
    let (flap_ppm, flap_gap_ns) = args.flap.unwrap_or((0, 0));
    let m = JitterModel {
        jitter_sd_ns,
        jittery_ppm,
        episode_ppm,
        episode_max_pause_ns,
        episode_chance,
        flap_ppm,
        flap_gap_ns,
    };
    if u64::from(jittery_ppm) + u64::from(episode_ppm) > 1_000_000 {
        return Err("--jitter-ms and --delay-episodes fractions add up to more than 1".into());
    }
    let latest = args.interval.as_nanos() as f64 * (1.0 + args.jitter / 100.0);
    if latest + m.worst_delay_ns() as f64 >= args.timeout.as_nanos() as f64 {
        return Err(
            "interval + jitter + 3 × --jitter-ms SD (or the episodes' MAXPAUSE) must stay below --timeout: those clients are meant to be alive".into(),
        );
    }
    if (flap_ppm > 0 || args.server_events.is_some()) && !args.hello {
        return Err("--flap and --server-events need --hello (client ids)".into());
    }
    Ok(m)
}

/// Checked settings.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub args: LoadArgs,
    pub threads: usize,
    pub sources: Vec<Ipv4Addr>,
    pub timing: Timing,
    /// MQTT keepalive in seconds (`--protocol mqtt`).
    pub mqtt_keepalive_s: u16,
}

impl LoadConfig {
    pub fn from_args(args: LoadArgs) -> Result<LoadConfig, String> {
        for a in &args.connect {
            if !matches!(a.ip(), IpAddr::V4(_)) {
                return Err(format!("--connect {a}: IPv4 only"));
            }
            if !a.ip().is_loopback() && args.source_from.is_none() {
                return Err(format!(
                    "--connect {a}: a target outside 127.0.0.0/8 needs --source-from (the local addresses to load it from)"
                ));
            }
        }
        if args.clients == 0 || args.ramp == 0 {
            return Err("--clients and --ramp must be positive".into());
        }
        if !(0.0..=90.0).contains(&args.jitter) {
            return Err("--jitter must be within 0..=90 percent".into());
        }
        if args.interval.is_zero() || args.tick.is_zero() || args.timeout <= args.interval {
            return Err("need 0 < --interval < --timeout and --tick > 0".into());
        }
        if args.batch_wait > Duration::from_millis(50) {
            return Err("--batch-wait must be at most 50ms".into());
        }
        if args.sources == 0 {
            return Err("--sources must be at least 1".into());
        }
        if args
            .steady_after
            .is_some_and(|d| d + Duration::from_secs(2) > args.duration)
        {
            return Err("--steady-after must end at least 2s before --duration".into());
        }
        if args.steady_after.is_some() && args.server_pid.is_none() {
            return Err("--steady-after measures the server: give --server-pid".into());
        }
        if args.hold_server {
            if args.server_pid.is_none() {
                return Err("--hold-server stops the server: give --server-pid".into());
            }
            if args.ramp < args.clients {
                return Err("--hold-server is a storm: give --ramp of at least --clients".into());
            }
            if !args.hello && args.protocol != Wire::Mqtt {
                return Err("--hold-server times the server's answers: give --hello".into());
            }
        }
        let min_threads = args.clients.div_ceil(CLIENTS_PER_WORKER_MAX) as usize;
        let threads = args.threads.unwrap_or(min_threads).max(1);
        if !args.compat && threads < min_threads {
            return Err(format!(
                "--threads {threads} is too few: each ring holds at most {CLIENTS_PER_WORKER_MAX} sockets, so {} clients need {min_threads}",
                args.clients
            ));
        }
        let mqtt_keepalive_s = match args.protocol {
            Wire::Mqtt => super::mqtt::keepalive_for_timeout(args.timeout.as_millis() as u64)?,
            Wire::Ringbeat => 0,
        };
        if args.protocol == Wire::Mqtt && args.hello {
            return Err("--hello is for ringbeat; MQTT clients always send CONNECT".into());
        }
        let model = jitter_model(&args)?;
        let first = args.source_from.unwrap_or(Ipv4Addr::new(127, 0, 0, 1));
        let sources = (0..u32::from(args.sources))
            .map(|i| u32::from(first).checked_add(i).map(Ipv4Addr::from))
            .collect::<Option<Vec<_>>>()
            .ok_or("--source-from + --sources runs past 255.255.255.255")?;
        let timing = Timing {
            interval_ns: args.interval.as_nanos() as u64,
            jitter: args.jitter / 100.0,
            fault_after_ns: args.fault_after.unwrap_or(args.interval).as_nanos() as u64,
            fault_not_before_ns: args.fault_at.map_or(0, |d| d.as_nanos() as u64),
            server_timeout_ns: args.timeout.as_nanos() as u64,
            server_tick_ns: args.tick.as_nanos() as u64,
            slack_ns: super::report::MEASURE_SLACK_NS + args.batch_wait.as_nanos() as u64,
            model,
        };
        Ok(LoadConfig {
            args,
            threads,
            sources,
            timing,
            mqtt_keepalive_s,
        })
    }

    /// Where global client `index` connects from and to.
    pub fn endpoints(&self, index: u64) -> (Ipv4Addr, u32) {
        let targets = self.args.connect.len() as u64;
        let target = (index % targets) as u32;
        let source = self.sources[((index / targets) % self.sources.len() as u64) as usize];
        (source, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<LoadConfig, String> {
        let mut argv = vec!["ringbeat-load", "--connect", "127.0.0.1:7700"];
        argv.extend_from_slice(extra);
        LoadConfig::from_args(LoadArgs::try_parse_from(argv).map_err(|e| e.to_string())?)
    }

    #[test]
    fn defaults_are_valid_and_threads_follow_clients() {
        let c = parse(&["--clients", "1000000"]).unwrap();
        assert_eq!(c.threads, 53);
        assert_eq!(c.timing.fault_after_ns, 10_000_000_000);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(parse(&["--connect", "10.0.0.1:80"]).is_err());
        assert!(parse(&["--interval", "40s"]).is_err());
        assert!(parse(&["--clients", "100000", "--threads", "2"]).is_err());
        assert!(parse(&["--mix", "silent=2"]).is_err());
        assert!(parse(&["--protocol", "mqtt", "--timeout", "2s", "--interval", "1s"]).is_err());
        assert!(parse(&["--protocol", "mqtt", "--hello"]).is_err());
        assert!(parse(&["--flap", "0.1,2s"]).is_err(), "flapping needs ids");
        assert!(parse(&["--hello", "--flap", "0.1,2s"]).is_ok());
        let t = ["--interval", "1s", "--timeout", "5s", "--jitter", "0"];
        assert!(parse(&[&t[..], &["--jitter-ms", "1500"]].concat()).is_err());
        assert!(parse(&[&t[..], &["--jitter-ms", "300,0.5"]].concat()).is_ok());
        assert!(parse(&[&t[..], &["--delay-episodes", "0.1,4s"]].concat()).is_err());
        assert!(parse(&[&t[..], &["--delay-episodes", "0.1,3s"]].concat()).is_ok());
        let mqtt = parse(&["--protocol", "mqtt", "--timeout", "3s", "--interval", "1s"]).unwrap();
        assert_eq!(mqtt.mqtt_keepalive_s, 2);
        let steady = ["--duration", "20s", "--steady-after", "8s"];
        assert!(parse(&steady).is_err(), "no --server-pid to measure");
        assert!(parse(&[&steady[..], &["--server-pid", "1"]].concat()).is_ok());
        assert!(parse(&[
            "--duration",
            "9s",
            "--steady-after",
            "8s",
            "--server-pid",
            "1"
        ])
        .is_err());
    }

    #[test]
    fn clients_spread_over_sources_and_targets() {
        let c = parse(&["--connect", "127.0.0.1:7701", "--sources", "4"]).unwrap();
        assert_eq!(c.endpoints(0), (Ipv4Addr::new(127, 0, 0, 1), 0));
        assert_eq!(c.endpoints(1), (Ipv4Addr::new(127, 0, 0, 1), 1));
        assert_eq!(c.endpoints(2), (Ipv4Addr::new(127, 0, 0, 2), 0));
        assert_eq!(c.endpoints(9), (Ipv4Addr::new(127, 0, 0, 1), 1));
    }

    #[test]
    fn a_target_off_loopback_needs_its_sources_named() {
        let off = ["--connect", "10.77.0.1:7701"];
        assert!(parse(&off).is_err());
        let c =
            parse(&[&off[..], &["--source-from", "10.77.0.2", "--sources", "3"]].concat()).unwrap();
        assert_eq!(c.endpoints(2), (Ipv4Addr::new(10, 77, 0, 3), 0));
        let wrap = ["--source-from", "255.255.255.254", "--sources", "3"];
        assert!(parse(&wrap).is_err());
    }
}
