//! The per-tick sweep over the flat last-seen array: ns per entry at 10K,
//! 100K and 1M connections, with 0.1% and 10% of them stale; and the
//! conn-table bytes per entry.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringbeat::conn_table::{ConnTable, BYTES_PER_SLOT};
use ringbeat::heartbeat::{self, Timing};

const TIMEOUT_TICKS: u32 = 300;

fn table(entries: u32, stale_per_mille: u32) -> ConnTable {
    let mut t = ConnTable::new(entries, false, 1);
    for slot in 0..entries {
        // A stale entry was last seen before the timeout; spread them out.
        let stale = (slot.wrapping_mul(2_654_435_761) % 1000) < stale_per_mille;
        let seen = if stale { 0 } else { 1_000 };
        t.open(slot, seen, TIMEOUT_TICKS, None);
    }
    t
}

fn sweep(c: &mut Criterion) {
    eprintln!("conn table: {BYTES_PER_SLOT} bytes per entry");
    let timing = Timing {
        tick_ms: 100,
        interval_ms: 10_000,
        timeout_ms: 30_000,
        min_interval_ms: 100,
        max_interval_ms: 3_600_000,
    };
    let mut g = c.benchmark_group("sweep");
    for entries in [10_000u32, 100_000, 1_000_000] {
        for (label, per_mille) in [("0.1%", 1), ("10%", 100)] {
            let t = table(entries, per_mille);
            assert_eq!(t.bytes(), entries as usize * BYTES_PER_SLOT);
            let mut out = Vec::with_capacity(entries as usize);
            g.throughput(Throughput::Elements(u64::from(entries)));
            let id = BenchmarkId::new(format!("stale_{label}"), entries);
            g.bench_with_input(id, &t, |b, t| {
                b.iter(|| {
                    out.clear();
                    heartbeat::sweep(black_box(t), 1_100, &timing, false, &mut out);
                    black_box(out.len())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, sweep);
criterion_main!(benches);
