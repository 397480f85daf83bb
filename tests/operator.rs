//! The operator surface: the example config is the defaults and names every
//! key; `check-system` exits by its verdict; `tune-sysctl.sh` applies,
//! reports and reverts (on a fake /proc/sys, never the real one).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ringbeat::config::{Config, FileConfig, ServeArgs};

const BIN: &str = env!("CARGO_BIN_EXE_ringbeat");

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn example_config_is_the_defaults() {
    let from_file = Config::resolve(ServeArgs {
        config: Some(repo("config/ringbeat.toml")),
        ..ServeArgs::default()
    })
    .expect("config/ringbeat.toml is valid");
    // Config has no PartialEq; its Debug form shows every field.
    assert_eq!(format!("{from_file:?}"), format!("{:?}", Config::default()));
}

/// Every key the server accepts, from serde's own list (the error for an
/// unknown key names them all), so a key added to FileConfig fails this
/// test until the example documents it.
fn accepted_keys() -> BTreeSet<String> {
    let err = toml::from_str::<FileConfig>("no_such_key = 1").unwrap_err();
    let message = err.message().to_owned();
    let list = message.split("expected one of").nth(1).expect(&message);
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn example_config_names_every_key_with_a_valid_value() {
    let text = std::fs::read_to_string(repo("config/ringbeat.toml")).unwrap();
    // Keys left at an "off" or machine-dependent default are commented out;
    // uncommented, they must still parse.
    let uncommented: String = text
        .lines()
        .map(|l| {
            let t = l.trim_start_matches("# ");
            let is_key = t.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
            if is_key {
                t
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let table: toml::Table = toml::from_str(&uncommented).expect("uncommented example parses");
    let documented: BTreeSet<String> = table.keys().cloned().collect();
    let accepted = accepted_keys();
    assert!(accepted.contains("listen") && accepted.contains("send_chunks"));
    assert_eq!(documented, accepted);
    toml::from_str::<FileConfig>(&uncommented).expect("every documented value is valid");
}

#[test]
fn check_system_exit_code_follows_the_verdict() {
    let ok = Command::new(BIN)
        .args(["check-system", "--connections", "1000", "--shards", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(text.contains("nofile") && text.contains("memory"), "{text}");
    assert_eq!(ok.status.code(), Some(0), "{text}");

    // A trillion connections do not fit in any memory this box has.
    let blocked = Command::new(BIN)
        .args(["check-system", "--connections", "1000000000000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&blocked.stdout);
    assert_eq!(blocked.status.code(), Some(1), "{text}");
    assert!(text.contains("[BLOCK] memory"), "{text}");
    assert!(text.contains("fix:"), "{text}");

    let bad = Command::new(BIN)
        .args(["check-system", "--connections", "lots"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

fn fake_sysctl(root: &Path, key: &str, value: &str) {
    let path = root.join(key.replace('.', "/"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("{value}\n")).unwrap();
}

fn read_sysctl(root: &Path, key: &str) -> String {
    let raw = std::fs::read_to_string(root.join(key.replace('.', "/"))).unwrap();
    raw.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn tune(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo("scripts/tune-sysctl.sh"))
        .args(args)
        .env("RINGBEAT_SYSCTL_ROOT", dir.join("sys"))
        .env("RINGBEAT_SYSCTL_STATE", dir.join("state/saved"))
        .env("RINGBEAT_SYSCTL_CONF", dir.join("state/90-ringbeat.conf"))
        .env("RINGBEAT_MEMINFO", dir.join("meminfo"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn tune_sysctl_raises_prints_and_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    let before = [
        ("fs.nr_open", "1048576"),
        ("fs.file-max", "9999999"),
        ("net.core.somaxconn", "4096"),
        ("net.ipv4.tcp_max_syn_backlog", "512"),
        ("net.core.netdev_max_backlog", "1000"),
        ("net.ipv4.tcp_mem", "1000\t2000\t3000"),
        ("net.ipv4.ip_local_port_range", "32768\t60999"),
    ];
    for (key, value) in before {
        fake_sysctl(&sys, key, value);
    }
    std::fs::write(dir.path().join("meminfo"), "MemTotal:  16777216 kB\n").unwrap();

    let dry = tune(dir.path(), &["--dry-run"]);
    assert!(
        dry.contains("would set") && dry.contains("nothing changed"),
        "{dry}"
    );
    assert_eq!(read_sysctl(&sys, "net.core.somaxconn"), "4096");

    let applied = tune(dir.path(), &["--persist"]);
    assert!(
        applied.contains("before") && applied.contains("after"),
        "{applied}"
    );
    assert_eq!(read_sysctl(&sys, "fs.nr_open"), "2097152");
    assert_eq!(read_sysctl(&sys, "fs.file-max"), "9999999", "never lowered");
    assert_eq!(read_sysctl(&sys, "net.core.somaxconn"), "65535");
    assert_eq!(
        read_sysctl(&sys, "net.ipv4.tcp_mem"),
        "262144 524288 1048576"
    );
    assert_eq!(
        read_sysctl(&sys, "net.ipv4.ip_local_port_range"),
        "1024 65535"
    );
    assert!(dir.path().join("state/90-ringbeat.conf").exists());
    assert!(applied.contains("kernel.io_uring_disabled") && applied.contains("(skipped)"));

    // A second run changes nothing and keeps the first run's saved values.
    tune(dir.path(), &[]);
    tune(dir.path(), &["--revert"]);
    for (key, value) in before {
        assert_eq!(read_sysctl(&sys, key), value.replace('\t', " "), "{key}");
    }
    assert!(!dir.path().join("state/saved").exists());
    assert!(!dir.path().join("state/90-ringbeat.conf").exists());
    assert!(tune(dir.path(), &["--revert"]).contains("nothing to revert"));
}
