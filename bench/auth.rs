//! HELLO token verification, µs per HELLO: HS256 and EdDSA, cold (a full
//! signature check: the first HELLO with a token) and cached (the same token
//! again: a reconnect), side by side with "auth off" in the same run.
//! Multiply by 1M for the CPU-seconds a storm of 1M reconnecting clients
//! costs (README, "Authentication").

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringbeat::auth::{keys, AuthMode, Authenticator, KeySpec};

const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIMi3OrXydilAZyPqTYpb3dIg/TAjTZ5/US1erU6H0i1K
-----END PRIVATE KEY-----
";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA6M6Pth//tQZzOHK4t91NFWctmfvg5/Uv+qpfr2lRIl4=
-----END PUBLIC KEY-----
";
const NOW: u64 = 1_800_000_000;

fn setup(dir: &std::path::Path) -> (Authenticator, Vec<(KeySpec, KeySpec)>) {
    std::fs::write(dir.join("hs"), "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::write(dir.join("ed"), ED_PRIVATE).unwrap();
    std::fs::write(dir.join("ed.pub"), ED_PUBLIC).unwrap();
    let spec = |s: String| -> KeySpec { s.parse().unwrap() };
    let d = dir.display();
    let hs = spec(format!("hs=hs256:{d}/hs"));
    let ed_sign = spec(format!("ed=eddsa:{d}/ed"));
    let ed_verify = spec(format!("ed=eddsa:{d}/ed.pub"));
    let auth = Authenticator::new(&[hs.clone(), ed_verify.clone()], None).unwrap();
    (auth, vec![(hs.clone(), hs), (ed_sign, ed_verify)])
}

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (auth, pairs) = setup(dir.path());
    let mut g = c.benchmark_group("auth_hello");
    g.throughput(Throughput::Elements(1));
    let off = Authenticator::new(&[], Some(AuthMode::Off)).unwrap();
    g.bench_function("off", |b| {
        b.iter(|| off.check_hello(black_box(42), black_box(b"x.y.z"), NOW))
    });
    for (name, (sign, _)) in ["hs256", "eddsa"].iter().zip(&pairs) {
        // Cold: a token the cache has not seen (1,000 distinct ids, cache
        // of 1 entry: every call misses).
        let tokens: Vec<String> = (1..=1000u64)
            .map(|id| keys::mint_from_file(sign, id, NOW - 10, 3600).unwrap())
            .collect();
        let cold = auth.clone().with_cache_entries(1);
        let mut i = 0usize;
        g.bench_function(format!("{name}_cold"), |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                cold.verify(i as u64 + 1, tokens[i].as_bytes(), NOW)
                    .unwrap()
            })
        });
        let warm = auth.clone();
        for (k, t) in tokens.iter().enumerate() {
            warm.verify(k as u64 + 1, t.as_bytes(), NOW).unwrap();
        }
        g.bench_function(format!("{name}_cached"), |b| {
            b.iter(|| {
                i = (i + 1) % tokens.len();
                warm.verify(i as u64 + 1, tokens[i].as_bytes(), NOW)
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
