//! Unit tests of `config`.

use super::*;

#[test]
fn defaults_match_the_contract() {
    let c = Config::default();
    assert_eq!(c.listen, vec!["127.0.0.1:7700".parse().unwrap()]);
    assert_eq!(c.interval, Duration::from_secs(10));
    assert_eq!(c.timeout, Duration::from_secs(30));
    assert_eq!(c.tick, Duration::from_millis(100));
    assert_eq!(c.max_payload, 1024);
    assert_eq!(c.io_mode, IoMode::Auto);
    assert!(!c.probe);
}

#[test]
fn flags_override_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        "interval = \"2s\"\ntimeout = \"6s\"\nshards = 3\nprobe = true\ntcp_keepalive = \"60s,10s,5\"\n",
    )
    .unwrap();
    let args = ServeArgs {
        config: Some(path),
        shards: Some(5),
        ..ServeArgs::default()
    };
    let c = Config::resolve(args).unwrap();
    assert_eq!(c.interval, Duration::from_secs(2));
    assert_eq!(c.shards, 5);
    assert!(c.probe);
    assert_eq!(c.tcp_keepalive.unwrap().count, 5);
}

#[test]
fn batch_wait_defaults_to_a_quarter_tick_at_most_and_is_bounded() {
    let fine_tick = Config::resolve(ServeArgs {
        tick: Some(Duration::from_millis(20)),
        interval: Some(Duration::from_secs(1)),
        timeout: Some(Duration::from_secs(3)),
        ..ServeArgs::default()
    })
    .unwrap();
    assert_eq!(fine_tick.batch_wait, Duration::from_millis(5));
    assert_eq!(Config::default().batch_wait, Duration::from_millis(10));
    let err = Config::resolve(ServeArgs {
        batch_wait: Some(Duration::from_millis(60)),
        ..ServeArgs::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("--batch-wait"), "{err}");
}

#[test]
fn rtt_budget_caps_the_batch_window_and_batch_wait_caps_it() {
    let c = Config::default();
    assert_eq!(c.batch_window_cap(), DEFAULT_RTT_BUDGET);
    let small = Config::resolve(ServeArgs {
        batch_wait: Some(Duration::from_micros(500)),
        ..ServeArgs::default()
    })
    .unwrap();
    assert_eq!(small.batch_window_cap(), Duration::from_micros(500));
    let err = Config::resolve(ServeArgs {
        rtt_budget: Some(Duration::from_millis(200)),
        ..ServeArgs::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("--rtt-budget"), "{err}");
}

#[test]
fn unknown_key_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, "intervall = \"2s\"\n").unwrap();
    let err = Config::resolve(ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("intervall"), "{err}");
}

#[test]
fn rejects_timeout_not_above_interval() {
    let err = Config::resolve(ServeArgs {
        interval: Some(Duration::from_secs(5)),
        timeout: Some(Duration::from_secs(5)),
        ..ServeArgs::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("--timeout"));
}

#[test]
fn max_interval_defaults_to_interval_and_may_be_raised_on_purpose() {
    let c = Config::resolve(ServeArgs {
        interval: Some(Duration::from_secs(5)),
        timeout: Some(Duration::from_secs(15)),
        ..ServeArgs::default()
    })
    .unwrap();
    assert_eq!(c.max_interval, Duration::from_secs(5));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, "max_interval = \"1m\"\n").unwrap();
    let c = Config::resolve(ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    })
    .unwrap();
    assert_eq!(c.max_interval, Duration::from_secs(60));
    let err = Config::resolve(ServeArgs {
        max_interval: Some(Duration::from_secs(1)),
        ..ServeArgs::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("max_interval"), "{err}");
}

#[test]
fn auth_mode_follows_keys_and_required_needs_one() {
    assert_eq!(Config::default().auth, AuthMode::Off);
    assert!(!Config::default().proxy_protocol);
    let key: KeySpec = "k1=hs256:/etc/ringbeat/k1".parse().unwrap();
    let c = Config::resolve(ServeArgs {
        auth_key: vec![key.clone()],
        ..ServeArgs::default()
    })
    .unwrap();
    assert_eq!((c.auth, c.auth_keys), (AuthMode::Required, vec![key]));
    let err = Config::resolve(ServeArgs {
        auth: Some(AuthMode::Required),
        ..ServeArgs::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("--auth-key"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    let toml = "auth = \"optional\"\nauth_key = [\"a=eddsa:/k.pem\"]\nproxy_protocol = true\n";
    std::fs::write(&path, toml).unwrap();
    let c = Config::resolve(ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    })
    .unwrap();
    assert_eq!(c.auth, AuthMode::Optional);
    assert_eq!(c.auth_keys[0].kid, "a");
    assert!(c.proxy_protocol);
}

#[test]
fn keepalive_parses_and_rejects() {
    let k: Keepalive = "60s,10s,5".parse().unwrap();
    assert_eq!(k.idle, Duration::from_secs(60));
    assert!("60s,10s".parse::<Keepalive>().is_err());
    assert!("60s,10s,0".parse::<Keepalive>().is_err());
}

// --- cluster mode ---

#[test]
fn cluster_flags_resolve_with_defaults_and_file() {
    let c = Config::resolve(ServeArgs {
        listen: vec!["127.0.0.1:7711".parse().unwrap()],
        cluster: Some("nats://127.0.0.1:4222".into()),
        ..ServeArgs::default()
    })
    .unwrap()
    .cluster
    .expect("cluster mode");
    assert!(c.node.ends_with(":7711"), "{}", c.node);
    assert_eq!(c.lease, crate::cluster::DEFAULT_LEASE);
    assert_eq!(c.outage, OutageMode::Refuse);
    assert!(Config::default().cluster.is_none());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let toml = "cluster = \"nats://h:1\"\nnode_id = \"n1\"\n\
                cluster_lease = \"3s\"\ncluster_outage = \"local\"\n";
    std::fs::write(&path, toml).unwrap();
    let c = Config::resolve(ServeArgs {
        config: Some(path),
        ..ServeArgs::default()
    })
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(
        (c.node.as_str(), c.lease, c.outage),
        ("n1", Duration::from_secs(3), OutageMode::Local)
    );
}

#[test]
fn cluster_rejects_bad_url_and_tiny_lease() {
    let bad = |args: ServeArgs| Config::resolve(args).unwrap_err().to_string();
    let url = bad(ServeArgs {
        cluster: Some("127.0.0.1:4222".into()),
        ..ServeArgs::default()
    });
    assert!(url.contains("nats://"), "{url}");
    let lease = bad(ServeArgs {
        cluster: Some("nats://h:1".into()),
        cluster_lease: Some(Duration::from_millis(10)),
        ..ServeArgs::default()
    });
    assert!(lease.contains("--cluster-lease"), "{lease}");
}
