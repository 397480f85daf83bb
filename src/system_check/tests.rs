//! `report` on made-up machines: each check's verdict and its fix.

use super::*;

fn fast_features(kernel: (u32, u32)) -> Features {
    Features {
        kernel_release: format!("{}.{}.0", kernel.0, kernel.1),
        kernel,
        io_uring: true,
        multishot_accept: true,
        multishot_recv: true,
        buf_ring: true,
        direct_descriptors: true,
        compat_ops: true,
    }
}

fn compat_features() -> Features {
    Features {
        kernel_release: "5.10.0".into(),
        kernel: (5, 10),
        io_uring: true,
        compat_ops: true,
        ..Features::default()
    }
}

/// This box: nofile 20000 hard, 24 GiB, kernel 6.x, stock sysctls.
fn this_box() -> Inputs {
    Inputs {
        nofile: Some(Limit {
            soft: 20_000,
            hard: 20_000,
        }),
        memlock: Some(Limit {
            soft: 8 << 20,
            hard: 8 << 20,
        }),
        nr_open: Some(1 << 20),
        file_max: Some(4_194_304),
        somaxconn: Some(4096),
        tcp_max_syn_backlog: Some(4096),
        tcp_mem_pages: Some([1_572_864, 2_097_152, 3_145_728]),
        port_range: Some((1024, 65535)),
        tcp_ehash_entries: Some(262_144),
        io_uring_disabled: Some(0),
        mem_available_bytes: Some(24 << 30),
        page_bytes: 4096,
        features: fast_features((6, 8)),
    }
}

fn target(connections: u64, shards: usize) -> Target {
    Target {
        connections,
        shards,
        io_mode: IoMode::Auto,
        local_clients: false,
    }
}

fn status(r: &Report, check: &str) -> Status {
    r.finding(check)
        .unwrap_or_else(|| panic!("no {check}"))
        .status
}

fn fix(r: &Report, check: &str) -> String {
    r.finding(check).unwrap().fix.clone().unwrap_or_default()
}

#[test]
fn a_million_on_two_rings_is_blocked_by_nofile_and_says_how_many_shards() {
    let r = report(&this_box(), &target(1_000_000, 2));
    assert!(r.blocked());
    assert_eq!(status(&r, "nofile"), Status::Block);
    // 19,936 direct descriptors per ring: 51 rings.
    assert!(
        fix(&r, "nofile").contains("--shards 51"),
        "{}",
        fix(&r, "nofile")
    );
    let r = report(&this_box(), &target(1_000_000, 56));
    assert_eq!(status(&r, "nofile"), Status::Ok);
    assert!(!r.blocked(), "{}", r.render());
}

#[test]
fn compat_mode_needs_one_fd_per_connection() {
    let t = Target {
        io_mode: IoMode::Compat,
        ..target(100_000, 56)
    };
    let r = report(&this_box(), &t);
    assert_eq!(status(&r, "nofile"), Status::Block);
    assert!(fix(&r, "nofile").contains("LimitNOFILE=100064"));
    assert_eq!(status(&r, "fs.nr_open"), Status::Ok);
    let r = report(&this_box(), &target(19_000, 1));
    assert_eq!(status(&r, "nofile"), Status::Ok);
}

#[test]
fn nr_open_caps_what_nofile_can_be_raised_to() {
    let inputs = Inputs {
        features: compat_features(),
        nofile: Some(Limit {
            soft: u64::MAX,
            hard: u64::MAX,
        }),
        ..this_box()
    };
    let r = report(&inputs, &target(2_000_000, 4));
    assert_eq!(status(&r, "nofile"), Status::Ok);
    assert_eq!(status(&r, "fs.nr_open"), Status::Block);
    assert!(fix(&r, "fs.nr_open").contains("fs.nr_open=2097152"));
}

#[test]
fn io_uring_missing_or_old() {
    let none = Inputs {
        features: Features::default(),
        ..this_box()
    };
    let r = report(&none, &target(1000, 1));
    assert_eq!(status(&r, "io_uring"), Status::Block);
    let disabled = Inputs {
        io_uring_disabled: Some(2),
        ..this_box()
    };
    assert!(fix(&report(&disabled, &target(1000, 1)), "io_uring").contains("io_uring_disabled=0"));

    let old = Inputs {
        features: compat_features(),
        ..this_box()
    };
    assert_eq!(
        status(&report(&old, &target(1000, 1)), "io_uring"),
        Status::Warn
    );
    let fast = Target {
        io_mode: IoMode::Fast,
        ..target(1000, 1)
    };
    assert_eq!(status(&report(&old, &fast), "io_uring"), Status::Block);
}

#[test]
fn memory_counts_both_sides_for_local_clients() {
    let r = report(&this_box(), &target(1_000_000, 64));
    assert_eq!(status(&r, "memory"), Status::Ok);
    let local = Target {
        local_clients: true,
        ..target(4_000_000, 256)
    };
    let r = report(&this_box(), &local);
    assert_eq!(status(&r, "memory"), Status::Block);
    let tight = Inputs {
        mem_available_bytes: Some(5 << 30),
        ..this_box()
    };
    assert_eq!(
        status(&report(&tight, &target(1_000_000, 64)), "memory"),
        Status::Warn
    );
}

#[test]
fn memlock_matters_only_before_5_12() {
    let old = Inputs {
        features: fast_features((5, 11)),
        ..this_box()
    };
    let r = report(&old, &target(1_000_000, 64));
    assert_eq!(status(&r, "memlock"), Status::Block);
    assert!(fix(&r, "memlock").contains("LimitMEMLOCK=infinity"));
    assert_eq!(
        status(&report(&this_box(), &target(1_000_000, 64)), "memlock"),
        Status::Ok
    );
}

#[test]
fn small_tcp_mem_and_backlog_warn_with_the_sysctl() {
    let small = Inputs {
        tcp_mem_pages: Some([10_000, 20_000, 30_000]),
        somaxconn: Some(128),
        ..this_box()
    };
    let r = report(&small, &target(1_000_000, 64));
    assert_eq!(status(&r, "tcp_mem"), Status::Warn);
    assert!(fix(&r, "tcp_mem").contains("net.ipv4.tcp_mem=\"125000 250000 375000\""));
    assert_eq!(status(&r, "backlog"), Status::Warn);
    assert!(fix(&r, "backlog").contains("somaxconn=65535"));
    assert!(!r.blocked());
}

#[test]
fn port_range_limits_local_clients() {
    let local = Target {
        local_clients: true,
        ..target(1_000_000, 64)
    };
    let r = report(&this_box(), &local);
    assert_eq!(status(&r, "port range"), Status::Warn);
    assert!(fix(&r, "port range").contains("16 source addresses"));
    assert_eq!(
        status(&report(&this_box(), &target(1_000_000, 64)), "port range"),
        Status::Ok
    );
}

#[test]
fn unreadable_facts_warn_instead_of_passing() {
    let blind = Inputs {
        features: fast_features((6, 8)),
        ..Inputs::default()
    };
    let r = report(&blind, &target(1000, 1));
    assert_eq!(status(&r, "nofile"), Status::Warn);
    assert!(
        r.findings.iter().all(|f| f.status != Status::Block),
        "{}",
        r.render()
    );
}

#[test]
fn render_names_every_check_and_the_verdict() {
    let text = report(&this_box(), &target(1_000_000, 2)).render();
    for check in [
        "io_uring",
        "nofile",
        "fs.nr_open",
        "memory",
        "tcp_mem",
        "backlog",
    ] {
        assert!(text.contains(check), "{text}");
    }
    assert!(text.contains("[BLOCK] nofile"), "{text}");
    assert!(text.contains("fix: --shards 51"), "{text}");
    assert!(text
        .trim_end()
        .ends_with("BLOCKED: fix the BLOCK lines first"));
}

#[test]
fn gathers_from_a_proc_tree() {
    let dir = tempfile::tempdir().unwrap();
    let put = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    put(
        "self/limits",
        "Limit                     Soft Limit           Hard Limit           Units\n\
         Max open files            1024                 524288               files\n\
         Max locked memory         unlimited            unlimited            bytes\n",
    );
    put("sys/fs/nr_open", "1048576\n");
    put("sys/net/ipv4/tcp_mem", "1\t2\t3\n");
    put("sys/net/ipv4/ip_local_port_range", "32768\t60999\n");
    put("meminfo", "MemTotal:  100 kB\nMemAvailable:   2048 kB\n");
    let inputs = Inputs::gather_from(dir.path(), fast_features((6, 1)));
    assert_eq!(
        inputs.nofile,
        Some(Limit {
            soft: 1024,
            hard: 524_288
        })
    );
    assert_eq!(inputs.memlock.unwrap().hard, u64::MAX);
    assert_eq!(inputs.nr_open, Some(1 << 20));
    assert_eq!(inputs.tcp_mem_pages, Some([1, 2, 3]));
    assert_eq!(inputs.port_range, Some((32768, 60999)));
    assert_eq!(inputs.mem_available_bytes, Some(2 << 20));
    assert_eq!(inputs.somaxconn, None);
}

#[test]
fn a_small_established_hash_warns_with_the_boot_parameter() {
    let mut t = target(1_000_000, 56);
    let r = report(&this_box(), &t);
    assert_eq!(status(&r, "tcp ehash"), Status::Warn);
    assert!(fix(&r, "tcp ehash").contains("thash_entries=1048576"));
    t.local_clients = true;
    assert!(fix(&report(&this_box(), &t), "tcp ehash").contains("2097152"));
    assert_eq!(
        status(&report(&this_box(), &target(100_000, 2)), "tcp ehash"),
        Status::Ok
    );
}
