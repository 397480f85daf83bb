//! Detection quality from the server's events file (sans-IO): for silent
//! clients time-to-suspect and time-to-evict from their last PING, for live
//! ones false suspicions per 1,000 client-hours, for flappers the
//! offline/online pairs they caused against `resumed` events.

use std::collections::HashMap;

use serde_json::{json, Value};

/// What the load generator knows about one connection (one per slot that
/// connected; a flapper has two with the same `client_id`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RosterEntry {
    pub client_id: u64,
    /// `jitter::Profile::name`, or "silent".
    pub role: &'static str,
    pub connected_ns: u64,
    /// When a silent client sent its last frame; `None` for live ones.
    pub silent_from_ns: Option<u64>,
    /// Whether this connection was closed by the client to flap.
    pub flapped: bool,
}

/// One line of the server's events file, as far as detection needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerEvent {
    /// Milliseconds since the load run started (may be negative).
    pub at_ms: i64,
    pub event: String,
    pub client_id: u64,
    pub reason: Option<String>,
}

/// Parses the events file; `start_epoch_ms` is the run's start (wall clock).
/// Lines that do not parse are counted, not fatal.
pub fn parse_events(text: &str, start_epoch_ms: u64) -> (Vec<ServerEvent>, u64) {
    let (mut out, mut bad) = (Vec::new(), 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            bad += 1;
            continue;
        };
        let (Some(ts), Some(ev)) = (v["ts_ms"].as_u64(), v["event"].as_str()) else {
            bad += 1;
            continue;
        };
        out.push(ServerEvent {
            at_ms: ts as i64 - start_epoch_ms as i64,
            event: ev.to_string(),
            client_id: v["client_id"].as_u64().unwrap_or(0),
            reason: v["reason"].as_str().map(str::to_string),
        });
    }
    (out, bad)
}

fn percentiles(mut v: Vec<i64>) -> Value {
    if v.is_empty() {
        return json!({"count": 0, "p50": null, "p99": null, "max": null});
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    json!({"count": v.len(), "p50": at(0.5), "p99": at(0.99), "max": v[v.len() - 1]})
}

/// The `detection_quality` object of the result JSON. `end_ns` is when the
/// run stopped (since its start).
pub fn analyze(roster: &[RosterEntry], events: &[ServerEvent], end_ns: u64) -> Value {
    let mut by_id: HashMap<u64, Vec<&ServerEvent>> = HashMap::new();
    for e in events.iter().filter(|e| e.client_id != 0) {
        by_id.entry(e.client_id).or_default().push(e);
    }
    let none = Vec::new();
    let (mut suspect_ms, mut evict_ms, mut silent) = (Vec::new(), Vec::new(), 0u64);
    let mut live_ms: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut flapper_ids = Vec::new();
    let mut flaps = 0u64;
    for r in roster {
        let evs = by_id.get(&r.client_id).unwrap_or(&none);
        let silent_ms = r.silent_from_ns.map(|ns| (ns / 1_000_000) as i64);
        if let Some(from) = silent_ms {
            silent += 1;
            // The server's clock is read at most a millisecond apart from ours.
            let after = |kind: &str| {
                evs.iter()
                    .find(|e| e.event == kind && e.at_ms + 1 >= from)
                    .map(|e| e.at_ms - from)
            };
            suspect_ms.extend(after("suspect"));
            evict_ms.extend(
                evs.iter()
                    .find(|e| e.event == "offline" && e.reason.as_deref() == Some("timeout"))
                    .map(|e| e.at_ms - from),
            );
        }
        // Live time: until silence, or the end of the run.
        let until_ms = silent_ms.unwrap_or((end_ns / 1_000_000) as i64);
        let live = until_ms
            .saturating_sub((r.connected_ns / 1_000_000) as i64)
            .max(0) as u64;
        let slot = live_ms.entry(r.role).or_default();
        slot.0 += live;
        if r.flapped {
            flaps += 1;
        }
        if r.role == "flapper" && !flapper_ids.contains(&r.client_id) {
            flapper_ids.push(r.client_id);
        }
    }
    // False suspicions: a `suspect` while the client was not silent.
    let silent_from: HashMap<u64, i64> = roster
        .iter()
        .filter_map(|r| Some((r.client_id, (r.silent_from_ns? / 1_000_000) as i64)))
        .collect();
    let role_of: HashMap<u64, &str> = roster.iter().map(|r| (r.client_id, r.role)).collect();
    for e in events.iter().filter(|e| e.event == "suspect") {
        let Some(role) = role_of.get(&e.client_id) else {
            continue;
        };
        let was_silent = silent_from
            .get(&e.client_id)
            .is_some_and(|&f| e.at_ms + 1 >= f);
        if !was_silent {
            live_ms.entry(role).or_default().1 += 1;
        }
    }
    let per_khours = |ms: u64, n: u64| n as f64 / (ms as f64 / 3.6e6 / 1000.0).max(1e-12);
    let (all_ms, all_n) = live_ms
        .values()
        .fold((0, 0), |(a, b), (ms, n)| (a + ms, b + n));
    let by_role: serde_json::Map<String, Value> = live_ms
        .iter()
        .map(|(role, &(ms, n))| {
            (
                role.to_string(),
                json!({"client_hours": ms as f64 / 3.6e6, "false_suspicions": n,
                       "per_1000_client_hours": per_khours(ms, n)}),
            )
        })
        .collect();
    json!({
        "silent": {
            "clients": silent,
            "suspected": suspect_ms.len(),
            "evicted": evict_ms.len(),
            "time_to_suspect_ms": percentiles(suspect_ms),
            "time_to_evict_ms": percentiles(evict_ms),
        },
        "live": {
            "client_hours": all_ms as f64 / 3.6e6,
            "false_suspicions": all_n,
            "false_suspicions_per_1000_client_hours": per_khours(all_ms, all_n),
            "by_profile": by_role,
        },
        "flap": flap_json(&flapper_ids, &by_id, flaps),
    })
}

/// Flappers: reconnects they made, the offline/online pairs the server
/// emitted for them (an `online` after their first), and `resumed` events.
fn flap_json(ids: &[u64], by_id: &HashMap<u64, Vec<&ServerEvent>>, flaps: u64) -> Value {
    let (mut pairs, mut resumed) = (0u64, 0u64);
    for id in ids {
        let Some(evs) = by_id.get(id) else { continue };
        let online = evs.iter().filter(|e| e.event == "online").count() as u64;
        pairs += online.saturating_sub(1);
        resumed += evs.iter().filter(|e| e.event == "resumed").count() as u64;
    }
    json!({"clients": ids.len(), "reconnects": flaps,
           "offline_online_pairs": pairs, "resumed": resumed})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at_ms: i64, event: &str, id: u64, reason: Option<&str>) -> ServerEvent {
        ServerEvent {
            at_ms,
            event: event.into(),
            client_id: id,
            reason: reason.map(str::to_string),
        }
    }

    fn entry(id: u64, role: &'static str, silent_from_ms: Option<u64>) -> RosterEntry {
        RosterEntry {
            client_id: id,
            role,
            connected_ns: 0,
            silent_from_ns: silent_from_ms.map(|m| m * 1_000_000),
            flapped: false,
        }
    }

    #[test]
    fn parses_lines_relative_to_the_start_and_counts_bad_ones() {
        let text = "{\"ts_ms\":1005,\"event\":\"suspect\",\"session\":1,\"client_id\":7,\"peer\":null,\"reason\":null}\nnot json\n";
        let (evs, bad) = parse_events(text, 1000);
        assert_eq!(evs, vec![ev(5, "suspect", 7, None)]);
        assert_eq!(bad, 1);
    }

    #[test]
    fn silent_clients_time_from_their_last_ping() {
        let roster = [
            entry(1, "silent", Some(10_000)),
            entry(2, "silent", Some(20_000)),
        ];
        let events = [
            ev(5_000, "suspect", 1, None), // before silence: false, not a detection
            ev(12_000, "suspect", 1, None),
            ev(15_100, "offline", 1, Some("timeout")),
            ev(25_050, "offline", 2, Some("timeout")),
        ];
        let q = analyze(&roster, &events, 60_000_000_000);
        assert_eq!(q["silent"]["time_to_suspect_ms"]["p50"], 2_000);
        assert_eq!(q["silent"]["time_to_suspect_ms"]["count"], 1);
        assert_eq!(q["silent"]["time_to_evict_ms"]["max"], 5_100);
        assert_eq!(q["silent"]["evicted"], 2);
        assert_eq!(q["live"]["false_suspicions"], 1);
    }

    #[test]
    fn false_suspicions_are_per_live_client_hour() {
        // 1,000 jittery clients live for 3.6 s each = 1 client-hour.
        let roster: Vec<_> = (1..=1_000).map(|i| entry(i, "jittery", None)).collect();
        let events = [ev(100, "suspect", 3, None), ev(200, "recovered", 3, None)];
        let q = analyze(&roster, &events, 3_600_000_000);
        let live = &q["live"];
        assert_eq!(live["false_suspicions"], 1);
        let rate = live["false_suspicions_per_1000_client_hours"]
            .as_f64()
            .unwrap();
        assert!((rate - 1_000.0).abs() < 1e-6, "{rate}");
        assert_eq!(live["by_profile"]["jittery"]["false_suspicions"], 1);
    }

    #[test]
    fn flappers_pairs_against_resumed() {
        let mut first = entry(5, "flapper", None);
        first.flapped = true;
        let roster = [first, entry(5, "flapper", None), entry(6, "flapper", None)];
        let events = [
            ev(0, "online", 5, None),
            ev(1_000, "offline", 5, Some("closed")),
            ev(3_000, "online", 5, None),
            ev(0, "online", 6, None),
            ev(4_000, "resumed", 6, None),
        ];
        let q = analyze(&roster, &events, 10_000_000_000);
        assert_eq!(
            q["flap"],
            json!({"clients": 2, "reconnects": 1, "offline_online_pairs": 1, "resumed": 1})
        );
    }
}
