//! Counters, histograms and their Prometheus text. Counters and gauges are
//! prometheus-client metrics, resolved per label once at start-up so the hot
//! path is one relaxed atomic add. The two latency histograms are recorded in
//! hdrhistogram (per shard, merged once a second) and rendered as Prometheus
//! histograms with fixed bucket bounds.

use std::fmt::Write;
use std::sync::{Arc, Mutex, OnceLock};

use hdrhistogram::Histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::events::{EventDrops, OfflineReason};
use crate::protocol::{CloseReason, Kind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// Upper bounds (seconds) of the sweep-duration buckets.
const SWEEP_BUCKETS_S: [f64; 10] = [1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5];
/// Upper bounds (seconds) of the tick-lag buckets.
const LAG_BUCKETS_S: [f64; 10] = [1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.5, 1.0];
/// Upper bounds (seconds) of the probe-RTT buckets.
const RTT_BUCKETS_S: [f64; 10] = [1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0];

/// Renders metrics another module keeps into the exposition.
pub type ExtraRender = Box<dyn Fn(&mut String) + Send + Sync>;

/// The attached renderers.
struct Extras(Mutex<Vec<ExtraRender>>);

impl std::fmt::Debug for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Extras")
    }
}

/// Process-wide metrics. Shards hold a [`ShardStats`] of pre-resolved handles.
#[derive(Debug)]
pub struct Stats {
    registry: Registry,
    pub connections: Gauge,
    shard_connections: Family<ShardLabel, Gauge>,
    pub accepted: Counter,
    pub evicted: Counter,
    closed: Family<ReasonLabel, Counter>,
    frames: Family<KindLabel, Counter>,
    pub protocol_errors: Counter,
    pub probes_sent: Counter,
    pub recv_no_buffers: Counter,
    pub send_pool_exhausted: Counter,
    /// Passes that sent their queued replies early to get send chunks back.
    pub send_pool_reliefs: Counter,
    /// Accepted connections that waited for a later pass (shard::intake).
    pub accepts_paced: Counter,
    pub stash_exhausted: Counter,
    pub recv_paused: Counter,
    pub io_errors: Counter,
    /// Connections the server can hold (the effective limit).
    pub capacity: Gauge,
    pub refused_overloaded: Counter,
    limited: Family<LimitLabel, Counter>,
    pub unauthorized: Counter,
    pub resumed: Counter,
    pub suspected: Counter,
    pub recovered: Counter,
    pub proxied: Counter,
    pub proxy_refused: Counter,
    pub sweeps_deferred: Counter,
    pub evictions_deferred: Counter,
    /// Shards that stopped on an I/O error (each stops the server).
    pub shard_failures: Counter,
    close_frames_unsent: Family<ReasonLabel, Counter>,
    /// The event channel's loss counters, once a sink is attached.
    event_drops: OnceLock<Arc<EventDrops>>,
    /// Renderers of metrics kept by other modules (authenticator, cluster),
    /// appended to the exposition; attached at start-up.
    extra: Extras,
    /// Sweep durations in nanoseconds.
    sweep_ns: Mutex<Histogram<u64>>,
    /// How late each tick (and so each sweep) ran, in nanoseconds.
    tick_lag_ns: Mutex<Histogram<u64>>,
    /// Probe round trips in microseconds.
    rtt_us: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("valid bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        let mut s = Stats {
            registry: Registry::default(),
            connections: Gauge::default(),
            shard_connections: Family::default(),
            accepted: Counter::default(),
            evicted: Counter::default(),
            closed: Family::default(),
            frames: Family::default(),
            protocol_errors: Counter::default(),
            probes_sent: Counter::default(),
            recv_no_buffers: Counter::default(),
            send_pool_exhausted: Counter::default(),
            send_pool_reliefs: Counter::default(),
            accepts_paced: Counter::default(),
            stash_exhausted: Counter::default(),
            recv_paused: Counter::default(),
            io_errors: Counter::default(),
            capacity: Gauge::default(),
            refused_overloaded: Counter::default(),
            limited: Family::default(),
            unauthorized: Counter::default(),
            resumed: Counter::default(),
            suspected: Counter::default(),
            recovered: Counter::default(),
            proxied: Counter::default(),
            proxy_refused: Counter::default(),
            sweeps_deferred: Counter::default(),
            evictions_deferred: Counter::default(),
            shard_failures: Counter::default(),
            close_frames_unsent: Family::default(),
            event_drops: OnceLock::new(),
            extra: Extras(Mutex::new(Vec::new())),
            sweep_ns: Mutex::new(histogram()),
            tick_lag_ns: Mutex::new(histogram()),
            rtt_us: Mutex::new(histogram()),
        };
        s.register();
        s
    }

    /// The registry, for modules that add their own metrics at start-up
    /// (the cluster's `ringbeat_cluster_*`).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "ringbeat_connections",
            "Live connections",
            self.connections.clone(),
        );
        r.register(
            "ringbeat_shard_connections",
            "Live connections per shard",
            self.shard_connections.clone(),
        );
        r.register(
            "ringbeat_accepted",
            "Connections accepted",
            self.accepted.clone(),
        );
        r.register(
            "ringbeat_evicted",
            "Connections evicted by the sweep",
            self.evicted.clone(),
        );
        r.register(
            "ringbeat_closed",
            "Connections ended, by reason",
            self.closed.clone(),
        );
        r.register(
            "ringbeat_frames_received",
            "Complete valid frames, by kind",
            self.frames.clone(),
        );
        r.register(
            "ringbeat_protocol_errors",
            "Connections ended by bad input",
            self.protocol_errors.clone(),
        );
        r.register(
            "ringbeat_probes_sent",
            "Server probe PINGs",
            self.probes_sent.clone(),
        );
        r.register(
            "ringbeat_recv_no_buffers",
            "Receives re-armed after ENOBUFS",
            self.recv_no_buffers.clone(),
        );
        r.register(
            "ringbeat_send_pool_exhausted",
            "Connections closed because the shard's send chunks ran out",
            self.send_pool_exhausted.clone(),
        );
        r.register(
            "ringbeat_send_pool_reliefs",
            "Passes that sent their queued replies early because the shard's send chunks ran low (a burst); each spares connections a CLOSE(OVERLOADED)",
            self.send_pool_reliefs.clone(),
        );
        r.register(
            "ringbeat_accepts_paced",
            "Accepted connections that waited for a later pass: a burst larger than a pass takes (half the receive buffers) is handed to the engine in order, a pass at a time",
            self.accepts_paced.clone(),
        );
        r.register(
            "ringbeat_stash_exhausted",
            "Connections closed because the partial-frame stash ran out",
            self.stash_exhausted.clone(),
        );
        r.register(
            "ringbeat_recv_paused",
            "Connections whose input was held because they did not read their replies",
            self.recv_paused.clone(),
        );
        r.register(
            "ringbeat_io_errors",
            "Unexpected I/O errors",
            self.io_errors.clone(),
        );
        r.register(
            "ringbeat_capacity",
            "Connections the server can hold: the smaller of --max-connections and what the rings (or nofile) hold",
            self.capacity.clone(),
        );
        r.register(
            "ringbeat_overloaded_refusals",
            "Connections answered CLOSE(OVERLOADED) at accept: over the connection limit",
            self.refused_overloaded.clone(),
        );
        r.register(
            "ringbeat_limited",
            "Connections answered CLOSE(LIMITED): per source address (--max-conns-per-ip), takeovers of one client_id over the rate limit, PINGs over --max-ping-rate",
            self.limited.clone(),
        );
        r.register(
            "ringbeat_unauthorized",
            "Connections answered CLOSE(UNAUTHORIZED): no valid token where --auth asks for one",
            self.unauthorized.clone(),
        );
        r.register(
            "ringbeat_resumed",
            "Clients back within --offline-grace: one resumed event instead of offline + online",
            self.resumed.clone(),
        );
        r.register(
            "ringbeat_suspected",
            "Connections the phi detector suspected (--detector phi)",
            self.suspected.clone(),
        );
        r.register(
            "ringbeat_recovered",
            "Suspected connections that sent a frame again",
            self.recovered.clone(),
        );
        r.register(
            "ringbeat_proxied",
            "Connections whose PROXY v2 header named the client (--proxy-protocol)",
            self.proxied.clone(),
        );
        r.register(
            "ringbeat_proxy_refused",
            "Connections closed for a missing or invalid PROXY v2 header",
            self.proxy_refused.clone(),
        );
        r.register(
            "ringbeat_sweeps_deferred",
            "Sweeps whose evictions were deferred: the shard ran late",
            self.sweeps_deferred.clone(),
        );
        r.register(
            "ringbeat_evictions_deferred",
            "Evictions deferred one tick: input was waiting in the kernel",
            self.evictions_deferred.clone(),
        );
        r.register(
            "ringbeat_shard_failures",
            "Shards stopped by an I/O error from their ring (each stops the server)",
            self.shard_failures.clone(),
        );
        r.register(
            "ringbeat_close_frames_unsent",
            "CLOSE frames owed to a peer that could not be written (peer gone or not reading for the whole linger)",
            self.close_frames_unsent.clone(),
        );
    }

    /// Handles for shard `shard`, resolved once.
    pub fn for_shard(&self, shard: u16) -> ShardStats {
        let label = ShardLabel {
            shard: shard.to_string(),
        };
        ShardStats {
            connections: self.connections.clone(),
            shard_connections: self.shard_connections.get_or_create(&label).clone(),
            accepted: self.accepted.clone(),
            evicted: self.evicted.clone(),
            closed: OfflineReason::ALL.map(|r| {
                self.closed
                    .get_or_create(&ReasonLabel {
                        reason: r.name().into(),
                    })
                    .clone()
            }),
            frames: Kind::ALL.map(|k| {
                self.frames
                    .get_or_create(&KindLabel {
                        kind: k.name().into(),
                    })
                    .clone()
            }),
            protocol_errors: self.protocol_errors.clone(),
            probes_sent: self.probes_sent.clone(),
            recv_no_buffers: self.recv_no_buffers.clone(),
            send_pool_exhausted: self.send_pool_exhausted.clone(),
            stash_exhausted: self.stash_exhausted.clone(),
            recv_paused: self.recv_paused.clone(),
            io_errors: self.io_errors.clone(),
            refused_overloaded: self.refused_overloaded.clone(),
            limited_ip: self.limited(LimitLabel { limit: "ip".into() }),
            limited_takeover: self.limited(LimitLabel {
                limit: "takeover".into(),
            }),
            limited_ping: self.limited(LimitLabel {
                limit: "ping_rate".into(),
            }),
            unauthorized: self.unauthorized.clone(),
            resumed: self.resumed.clone(),
            suspected: self.suspected.clone(),
            recovered: self.recovered.clone(),
            proxied: self.proxied.clone(),
            proxy_refused: self.proxy_refused.clone(),
            sweeps_deferred: self.sweeps_deferred.clone(),
            evictions_deferred: self.evictions_deferred.clone(),
            close_frames_unsent: CloseReason::ALL.map(|r| {
                self.close_frames_unsent
                    .get_or_create(&ReasonLabel {
                        reason: r.name().into(),
                    })
                    .clone()
            }),
            sweep_ns: histogram(),
            tick_lag_ns: histogram(),
            rtt_us: histogram(),
        }
    }

    fn limited(&self, label: LimitLabel) -> Counter {
        self.limited.get_or_create(&label).clone()
    }

    /// Merges a shard's local histograms and clears them.
    pub fn absorb(&self, shard: &mut ShardStats) {
        for (total, local) in [
            (&self.sweep_ns, &mut shard.sweep_ns),
            (&self.tick_lag_ns, &mut shard.tick_lag_ns),
            (&self.rtt_us, &mut shard.rtt_us),
        ] {
            if !local.is_empty() {
                let _ = total.lock().expect("stats lock").add(&*local);
                local.reset();
            }
        }
    }

    /// Sweep duration quantile in nanoseconds (for logs and tests).
    pub fn sweep_ns_quantile(&self, q: f64) -> u64 {
        self.sweep_ns
            .lock()
            .expect("stats lock")
            .value_at_quantile(q)
    }

    /// Exports `drops` as `ringbeat_events_dropped_total{cause}`. The first
    /// call wins; without one, the counters read 0.
    pub fn attach_event_drops(&self, drops: Arc<EventDrops>) {
        let _ = self.event_drops.set(drops);
    }

    /// Appends `render`'s lines (Prometheus text, with their HELP and TYPE)
    /// to every exposition.
    pub fn attach_render(&self, render: ExtraRender) {
        self.extra.0.lock().expect("stats lock").push(render);
    }

    fn render_event_drops(&self, out: &mut String) {
        let none = EventDrops::default();
        let drops = self.event_drops.get().map_or(&none, |d| &**d);
        out.push_str("# HELP ringbeat_events_dropped Events lost, by cause.\n");
        out.push_str("# TYPE ringbeat_events_dropped counter\n");
        for (cause, n) in drops.by_cause() {
            let _ = writeln!(
                out,
                "ringbeat_events_dropped_total{{cause=\"{cause}\"}} {n}"
            );
        }
    }

    /// The whole exposition in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        let h = self.sweep_ns.lock().expect("stats lock");
        render_histogram(
            &mut out,
            "ringbeat_sweep_duration_seconds",
            "Duration of one shard's sweep",
            &h,
            1e-9,
            &SWEEP_BUCKETS_S,
        );
        drop(h);
        let h = self.tick_lag_ns.lock().expect("stats lock");
        render_histogram(
            &mut out,
            "ringbeat_tick_lag_seconds",
            "How late each shard tick and its sweep ran",
            &h,
            1e-9,
            &LAG_BUCKETS_S,
        );
        drop(h);
        let h = self.rtt_us.lock().expect("stats lock");
        render_histogram(
            &mut out,
            "ringbeat_probe_rtt_seconds",
            "Round trip of server probes",
            &h,
            1e-6,
            &RTT_BUCKETS_S,
        );
        self.render_event_drops(&mut out);
        for render in self.extra.0.lock().expect("stats lock").iter() {
            render(&mut out);
        }
        out.push_str("# EOF\n");
        out
    }
}

fn render_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    h: &Histogram<u64>,
    unit_s: f64,
    bounds_s: &[f64],
) {
    let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} histogram");
    for &le in bounds_s {
        let limit = (le / unit_s) as u64;
        let count: u64 = h
            .iter_recorded()
            .filter(|v| v.value_iterated_to() <= limit)
            .map(|v| v.count_at_value())
            .sum();
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    let sum: f64 = h
        .iter_recorded()
        .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
        .sum();
    let _ = writeln!(out, "{name}_sum {}", sum * unit_s);
    let _ = writeln!(out, "{name}_count {}", h.len());
}

/// One shard's handles: atomics shared with [`Stats`], histograms local.
#[derive(Debug)]
pub struct ShardStats {
    pub connections: Gauge,
    pub shard_connections: Gauge,
    pub accepted: Counter,
    pub evicted: Counter,
    closed: [Counter; OfflineReason::ALL.len()],
    frames: [Counter; Kind::ALL.len()],
    pub protocol_errors: Counter,
    pub probes_sent: Counter,
    pub recv_no_buffers: Counter,
    pub send_pool_exhausted: Counter,
    pub stash_exhausted: Counter,
    pub recv_paused: Counter,
    pub io_errors: Counter,
    pub refused_overloaded: Counter,
    pub limited_ip: Counter,
    pub limited_takeover: Counter,
    pub limited_ping: Counter,
    pub unauthorized: Counter,
    pub resumed: Counter,
    pub suspected: Counter,
    pub recovered: Counter,
    pub proxied: Counter,
    pub proxy_refused: Counter,
    pub sweeps_deferred: Counter,
    pub evictions_deferred: Counter,
    close_frames_unsent: [Counter; CloseReason::ALL.len()],
    pub sweep_ns: Histogram<u64>,
    pub tick_lag_ns: Histogram<u64>,
    pub rtt_us: Histogram<u64>,
}

impl ShardStats {
    pub fn frame(&self, kind: Kind) {
        self.frames[kind as usize - 1].inc();
    }

    /// A CLOSE frame with `code` could not be written.
    pub fn close_frame_unsent(&self, code: u16) {
        if let Some(c) = self.close_frames_unsent.get(usize::from(code)) {
            c.inc();
        }
    }

    pub fn closed(&self, reason: OfflineReason) {
        let i = OfflineReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.closed[i].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_contract_names() {
        let stats = Stats::new();
        let mut shard = stats.for_shard(0);
        shard.frame(Kind::Ping);
        shard.closed(OfflineReason::Timeout);
        shard.sweep_ns.record(20_000).unwrap();
        shard.tick_lag_ns.record(2_000_000).unwrap();
        stats.absorb(&mut shard);
        let text = stats.render();
        for name in [
            "ringbeat_connections ",
            "ringbeat_shard_connections{shard=\"0\"}",
            "ringbeat_accepted_total",
            "ringbeat_evicted_total",
            "ringbeat_closed_total{reason=\"timeout\"} 1",
            "ringbeat_frames_received_total{kind=\"ping\"} 1",
            "ringbeat_protocol_errors_total",
            "ringbeat_sweep_duration_seconds_bucket{le=\"0.00005\"} 1",
            "ringbeat_sweep_duration_seconds_count 1",
            "ringbeat_tick_lag_seconds_bucket{le=\"0.001\"} 0",
            "ringbeat_tick_lag_seconds_bucket{le=\"0.005\"} 1",
            "ringbeat_probe_rtt_seconds_count 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
