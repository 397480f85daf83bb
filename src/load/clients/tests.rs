//! Unit tests of `load::clients`.

use super::*;

fn timing() -> Timing {
    Timing {
        interval_ns: 1_000_000_000,
        jitter: 0.0,
        fault_after_ns: 3_000_000_000,
        fault_not_before_ns: 0,
        server_timeout_ns: 3_000_000_000,
        server_tick_ns: 100_000_000,
        slack_ns: crate::load::report::MEASURE_SLACK_NS,
        model: JitterModel::default(),
    }
}

fn live(scenarios: Vec<Scenario>) -> Clients {
    let mut c = Clients::new(scenarios, Wire::Ringbeat);
    for i in 0..c.len() as u32 {
        c.on_connected(i, 0, &timing());
    }
    c
}

#[test]
fn healthy_pings_every_interval_and_measures_rtt() {
    let (t, mut tally) = (timing(), Tally::default());
    tally.steady = true;
    let mut c = live(vec![Scenario::Healthy]);
    let Due::Send { bytes, next_ns } = c.on_due(0, 5_000, 0.5, &t, &mut tally) else {
        panic!("a healthy client pings");
    };
    assert_eq!(bytes, protocol::ping_frame(5_000u64.to_be_bytes()));
    assert_eq!(next_ns, Some(1_000_005_000));
    let pong = protocol::pong_frame(5_000u64.to_be_bytes());
    let mut out = Vec::new();
    // Split at every byte: reassembly must not care.
    for b in pong {
        c.on_bytes(0, &[b], 2_005_000, &t, &mut tally, &mut out);
    }
    assert!(out.is_empty());
    assert_eq!((tally.heartbeats_sent, tally.heartbeats_answered), (1, 1));
    assert_eq!(tally.rtt_us.max(), 2_000);
}

#[test]
fn an_unanswered_ping_is_lost() {
    let (t, mut tally) = (timing(), Tally::default());
    let mut c = live(vec![Scenario::Healthy]);
    c.on_due(0, 0, 0.5, &t, &mut tally);
    c.on_due(0, 1_000_000_000, 0.5, &t, &mut tally);
    assert_eq!(tally.heartbeats_lost, 1);
}

#[test]
fn silent_client_stops_and_its_eviction_is_a_detection() {
    let (t, mut tally) = (timing(), Tally::default());
    let mut c = live(vec![Scenario::Silent]);
    c.on_due(0, 2_000_000_000, 0.5, &t, &mut tally);
    assert_eq!(
        c.on_due(0, 3_000_000_000, 0.5, &t, &mut tally),
        Due::Nothing
    );
    let close = protocol::close_frame(CloseReason::Timeout, "timeout");
    let mut out = Vec::new();
    c.on_bytes(0, &close, 5_050_000_000, &t, &mut tally, &mut out);
    assert_eq!(out, [Reply::Close]);
    assert_eq!((tally.silent_evicted, tally.false_evictions), (1, 0));
    let max = tally.detection_ms.max();
    assert!(
        (3_049..=3_051).contains(&max),
        "{max} (3 significant digits)"
    );
    assert_eq!(
        (tally.detection_within_bound, tally.detection_early),
        (1, 0)
    );
}

#[test]
fn a_healthy_client_timed_out_is_a_false_eviction() {
    let (t, mut tally) = (timing(), Tally::default());
    let mut c = live(vec![Scenario::Healthy]);
    let mut out = Vec::new();
    let close = protocol::close_frame(CloseReason::Timeout, "");
    c.on_bytes(0, &close, 1, &t, &mut tally, &mut out);
    assert_eq!(tally.false_evictions, 1);
}

#[test]
fn an_eviction_is_the_servers_fault_only_if_the_last_ping_left_within_timeout() {
    let timeout_ns = 3_000_000_000;
    assert_eq!(
        attribute(1_000, 1_000 + timeout_ns - 1, timeout_ns),
        Fault::Server
    );
    assert_eq!(
        attribute(1_000, 1_000 + timeout_ns, timeout_ns),
        Fault::LateClient
    );
    // A CLOSE seen before the send completed: the server's fault.
    assert_eq!(attribute(5_000, 1_000, timeout_ns), Fault::Server);
}

#[test]
fn a_healthy_client_that_sent_late_is_a_late_client_eviction() {
    let (t, mut tally) = (timing(), Tally::default());
    let mut c = live(vec![Scenario::Healthy, Scenario::Healthy]);
    let mut out = Vec::new();
    let close = protocol::close_frame(CloseReason::Timeout, "");
    // Client 0's PING left at 1 s, client 1's at 0 s; both CLOSEs at 3.5 s.
    c.on_send_done(0, 1_000_000_000);
    c.on_bytes(0, &close, 3_500_000_000, &t, &mut tally, &mut out);
    c.on_bytes(1, &close, 3_500_000_000, &t, &mut tally, &mut out);
    assert_eq!((tally.false_evictions, tally.late_client_evictions), (1, 1));
}

#[test]
fn pings_sent_after_their_schedule_record_the_lag() {
    let (t, mut tally) = (timing(), Tally::default());
    let mut c = live(vec![Scenario::Healthy]);
    c.set_due(0, 1_000_000_000);
    let Due::Send { next_ns, .. } = c.on_due(0, 1_250_000_000, 0.5, &t, &mut tally) else {
        panic!("a healthy client pings");
    };
    c.on_due(0, next_ns.unwrap(), 0.5, &t, &mut tally);
    assert_eq!(tally.send_lag_us.len(), 2);
    assert!(tally.send_lag_us.value_at_quantile(1.0) >= 249_000);
    assert!(tally.send_lag_us.min() <= 1);
}

/// Simulated clock: a flapper closes at its fault time (and only then),
/// a bursty client's held PINGs go out together after its pause.
#[test]
fn flappers_flap_once_and_bursty_clients_send_held_pings() {
    let mut t = timing();
    t.model = JitterModel {
        episode_ppm: 1_000_000,
        episode_max_pause_ns: 2_500_000_000,
        episode_chance: 1.0,
        flap_gap_ns: 2_000_000_000,
        ..JitterModel::default()
    };
    let mut tally = Tally::default();
    let mut c = Clients::new(vec![Scenario::Healthy; 2], Wire::Ringbeat);
    c.profile = vec![Profile::FlapFirst, Profile::Bursty];
    c.on_connected(0, 1, &t);
    c.on_connected(1, 1, &t);
    assert!(matches!(
        c.on_due(0, 2_000_000_000, 0.5, &t, &mut tally),
        Due::Send { .. }
    ));
    assert_eq!(
        c.on_due(0, 3_100_000_000, 0.5, &t, &mut tally),
        Due::Flap {
            gap_ns: 2_000_000_000
        }
    );
    assert!(c.roster_entry(0, 1).unwrap().flapped);
    let ping_len = protocol::ping_frame([0; 8]).len();
    let mut now_ns = 0;
    let mut sizes = Vec::new();
    for k in 0..20 {
        let unit = (f64::from(k) * 0.137) % 1.0;
        let Due::Send { bytes, next_ns } = c.on_due(1, now_ns, unit, &t, &mut tally) else {
            panic!("bursty clients ping");
        };
        sizes.push(bytes.len() / ping_len);
        let gap = next_ns.unwrap() - now_ns;
        assert!((1_000_000_000..3_500_000_000).contains(&gap), "{gap}");
        now_ns = next_ns.unwrap();
    }
    assert_eq!(sizes[0], 1, "nothing held before the first pause");
    assert!(sizes[1..].iter().any(|&n| n > 1), "{sizes:?}");
}

#[test]
fn server_pings_are_answered_and_long_frames_skipped() {
    let (t, mut tally) = (timing(), Tally::default());
    let mut c = live(vec![Scenario::Healthy]);
    let mut bytes = protocol::data_frame(&[7; 300], 1024).unwrap();
    bytes.extend(protocol::ping_frame([9; 8]));
    let mut out = Vec::new();
    c.on_bytes(0, &bytes, 1, &t, &mut tally, &mut out);
    assert_eq!(out, [Reply::Pong([9; 8])]);
}

#[test]
fn faults_follow_their_scenario() {
    let (t, mut tally) = (timing(), Tally::default());
    let mut c = live(vec![
        Scenario::Reset,
        Scenario::Close,
        Scenario::Garbage,
        Scenario::Dribble,
    ]);
    let at = 3_000_000_000;
    assert_eq!(c.on_due(0, at, 0.5, &t, &mut tally), Due::Reset);
    assert!(matches!(
        c.on_due(1, at, 0.5, &t, &mut tally),
        Due::Send { next_ns: None, .. }
    ));
    assert_eq!(c.state[1], ClientState::Closing);
    assert!(matches!(
        c.on_due(2, at, 0.5, &t, &mut tally),
        Due::Send { next_ns: None, .. }
    ));
    let Due::Send { bytes, next_ns } = c.on_due(3, at, 0.5, &t, &mut tally) else {
        panic!("dribble sends");
    };
    assert_eq!((bytes.len(), next_ns), (1, Some(at + DRIBBLE_STEP_NS)));
}

fn live_mqtt(scenarios: Vec<Scenario>) -> Clients {
    let mut c = Clients::new(scenarios, Wire::Mqtt);
    for i in 0..c.len() as u32 {
        c.on_connected(i, 0, &timing());
    }
    c
}

#[test]
fn mqtt_clients_pingreq_and_time_the_pingresp() {
    let (t, mut tally) = (timing(), Tally::default());
    tally.steady = true;
    let mut c = live_mqtt(vec![Scenario::Healthy]);
    let mut out = Vec::new();
    // CONNACK (accepted) and PINGRESP, split at every byte.
    for b in [0x20, 0x02, 0x00, 0x00] {
        c.on_bytes(0, &[b], 1_000, &t, &mut tally, &mut out);
    }
    let Due::Send { bytes, .. } = c.on_due(0, 5_000, 0.5, &t, &mut tally) else {
        panic!("a healthy client pings");
    };
    assert_eq!(bytes, mqtt::PINGREQ);
    for b in [0xD0, 0x00] {
        c.on_bytes(0, &[b], 3_005_000, &t, &mut tally, &mut out);
    }
    assert!(out.is_empty());
    assert_eq!((tally.heartbeats_sent, tally.heartbeats_answered), (1, 1));
    let max = tally.rtt_us.max();
    assert!(
        (3_000..=3_002).contains(&max),
        "{max} (3 significant digits)"
    );
}

#[test]
fn mqtt_refused_connack_closes_and_other_packets_are_skipped() {
    let (t, mut tally) = (timing(), Tally::default());
    let mut c = live_mqtt(vec![Scenario::Healthy]);
    let mut out = Vec::new();
    // A PUBLISH with a 2-byte remaining length (200 bytes) is skipped whole.
    let mut bytes = vec![0x30, 0xC8, 0x01];
    bytes.extend([7; 200]);
    bytes.extend([0x20, 0x02, 0x00, 0x05]);
    c.on_bytes(0, &bytes, 1, &t, &mut tally, &mut out);
    assert_eq!(out, [Reply::Close]);
    assert_eq!(tally.closes_by_reason["mqtt_connack_refused"], 1);
}

#[test]
fn mqtt_eof_is_a_detection_for_silent_and_a_false_eviction_for_a_healthy_session() {
    let (t, mut tally) = (timing(), Tally::default());
    let mut c = live_mqtt(vec![Scenario::Silent, Scenario::Healthy, Scenario::Healthy]);
    let mut out = Vec::new();
    c.on_bytes(1, &[0x20, 0x02, 0x00, 0x00], 1, &t, &mut tally, &mut out);
    c.on_due(0, 3_000_000_000, 0.5, &t, &mut tally);
    c.on_send_done(1, 4_000_000_000);
    c.on_eof(0, false, 6_050_000_000, &t, &mut tally);
    c.on_eof(1, false, 6_050_000_000, &t, &mut tally);
    assert_eq!((tally.silent_evicted, tally.false_evictions), (1, 1));
    // Dropped before CONNACK: a failed connect, not an eviction.
    c.on_eof(2, true, 6_050_000_000, &t, &mut tally);
    assert_eq!(tally.false_evictions, 1);
    assert_eq!(tally.closes_by_reason["mqtt_before_connack"], 1);
}

#[test]
fn mqtt_faults_send_disconnect_and_a_reserved_packet() {
    let (t, mut tally) = (timing(), Tally::default());
    let mut c = live_mqtt(vec![Scenario::Close, Scenario::Garbage]);
    let at = 3_000_000_000;
    let sent = |d| match d {
        Due::Send { bytes, .. } => bytes,
        other => panic!("{other:?}"),
    };
    assert_eq!(sent(c.on_due(0, at, 0.5, &t, &mut tally)), mqtt::DISCONNECT);
    assert_eq!(sent(c.on_due(1, at, 0.5, &t, &mut tally)), mqtt::GARBAGE);
}

#[test]
fn a_welcome_or_accepting_connack_times_the_servers_answer() {
    let (t, mut tally) = (timing(), Tally::default());
    let mut c = Clients::new(vec![Scenario::Healthy; 2], Wire::Ringbeat);
    c.on_connected(0, 1_000_000, &t);
    c.on_connected(1, 2_000_000, &t);
    let mut out = Vec::new();
    c.on_bytes(
        0,
        &protocol::welcome_frame(9, 1_000, 3_000),
        4_000_000,
        &t,
        &mut tally,
        &mut out,
    );
    c.on_bytes(
        1,
        &protocol::welcome_frame(9, 1_000, 3_000),
        3_000_000,
        &t,
        &mut tally,
        &mut out,
    );
    assert_eq!((tally.welcomed, tally.last_welcomed_ns), (2, 4_000_000));
    // Three significant digits: 3,000 µs is kept as 3,001.
    assert_eq!(
        (tally.welcome_us.min(), tally.welcome_us.max()),
        (1_000, 3_001)
    );
    let mut m = live_mqtt(vec![Scenario::Healthy, Scenario::Healthy]);
    m.on_bytes(
        0,
        &[0x20, 0x02, 0x00, 0x00],
        5_000_000,
        &t,
        &mut tally,
        &mut out,
    );
    // A refused CONNACK is not an answer that served the client.
    m.on_bytes(
        1,
        &[0x20, 0x02, 0x00, 0x05],
        6_000_000,
        &t,
        &mut tally,
        &mut out,
    );
    assert_eq!((tally.welcomed, tally.last_welcomed_ns), (3, 5_000_000));
    let json = tally.welcome_json();
    assert_eq!(json["count"], 3);
    assert_eq!(json["rate_per_s"], 3.0 / 0.005);
}
