//! The cluster's Prometheus metrics, registered into the server's registry
//! (see [`crate::stats::Stats::registry_mut`]). Names are a contract (issue 14).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

/// Upper bounds (seconds) of the transition-to-directory lag buckets.
const LAG_BUCKETS_S: [f64; 12] = [
    5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// 1 while the NATS connection is up.
    pub connected: Gauge,
    takeovers: Family<DirectionLabel, Counter>,
    pub directory_writes: Counter,
    /// Transition (claim or offline queued) to directory write acked.
    pub lag_seconds: Histogram,
    /// Claims and events the cluster queue could not take (full), and
    /// directory writes that failed after their retries.
    pub dropped: Counter,
    /// Claims refused (outage in `refuse` mode, or no CAS win in time).
    pub claims_refused: Counter,
    /// Clients whose offline `node_lost` this node published as reaper.
    pub reaped: Counter,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics {
            connected: Gauge::default(),
            takeovers: Family::default(),
            directory_writes: Counter::default(),
            lag_seconds: Histogram::new(LAG_BUCKETS_S),
            dropped: Counter::default(),
            claims_refused: Counter::default(),
            reaped: Counter::default(),
        }
    }
}

impl ClusterMetrics {
    /// A takeover where a remote holder was closed for a local HELLO (`in`)
    /// or a local holder was closed for a remote HELLO (`out`).
    pub fn takeover(&self, inbound: bool) -> u64 {
        let direction = if inbound { "in" } else { "out" };
        self.takeovers
            .get_or_create(&DirectionLabel {
                direction: direction.into(),
            })
            .inc()
    }

    pub fn takeovers(&self, inbound: bool) -> u64 {
        let direction = if inbound { "in" } else { "out" };
        self.takeovers
            .get_or_create(&DirectionLabel {
                direction: direction.into(),
            })
            .get()
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "ringbeat_cluster_connected",
            "1 while the NATS connection is up",
            self.connected.clone(),
        );
        r.register(
            "ringbeat_cluster_takeovers",
            "Takeovers across nodes (in: we took a remote id; out: ours was taken)",
            self.takeovers.clone(),
        );
        r.register(
            "ringbeat_cluster_directory_writes",
            "Presence directory writes acked (creates, updates, deletes)",
            self.directory_writes.clone(),
        );
        r.register(
            "ringbeat_cluster_lag_seconds",
            "Transition to directory write acked",
            self.lag_seconds.clone(),
        );
        r.register(
            "ringbeat_cluster_dropped",
            "Claims, events or directory writes lost (queue full or retries spent)",
            self.dropped.clone(),
        );
        r.register(
            "ringbeat_cluster_claims_refused",
            "HELLOs with an id refused by the cluster (outage in refuse mode, lost races)",
            self.claims_refused.clone(),
        );
        r.register(
            "ringbeat_cluster_reaped",
            "Clients of lost nodes this node reaped (offline node_lost published)",
            self.reaped.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_render() {
        let m = ClusterMetrics::default();
        m.takeover(true);
        m.directory_writes.inc();
        m.lag_seconds.observe(0.002);
        let mut r = Registry::default();
        m.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &r).unwrap();
        for name in [
            "ringbeat_cluster_connected ",
            "ringbeat_cluster_takeovers_total{direction=\"in\"} 1",
            "ringbeat_cluster_directory_writes_total 1",
            "ringbeat_cluster_lag_seconds_bucket",
        ] {
            assert!(out.contains(name), "{name} missing in\n{out}");
        }
    }
}
