//! Frame header parse and encode, and stream reassembly: ns per frame.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringbeat::protocol::{self, Decoder, HEADER_LEN};

fn header(c: &mut Criterion) {
    let ping = protocol::ping_frame(7u64.to_be_bytes());
    let hdr: [u8; HEADER_LEN] = ping[..HEADER_LEN].try_into().unwrap();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_header", |b| {
        b.iter(|| protocol::parse_header(black_box(&hdr), 1024))
    });
    g.bench_function("encode_pong", |b| {
        b.iter(|| protocol::pong_frame(black_box([1, 2, 3, 4, 5, 6, 7, 8])))
    });
    g.finish();
}

fn decoder(c: &mut Criterion) {
    // 1,000 PINGs fed in 7-byte pieces: every frame split across feeds.
    let stream: Vec<u8> = (0..1000u64)
        .flat_map(|i| protocol::ping_frame(i.to_be_bytes()))
        .collect();
    let mut g = c.benchmark_group("decoder");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("split_pings_x1000", |b| {
        b.iter(|| {
            let mut d = Decoder::new(1024);
            let mut n = 0;
            for piece in stream.chunks(7) {
                d.feed(piece);
                while let Ok(Some(_)) = d.next_frame() {
                    n += 1;
                }
            }
            assert_eq!(n, 1000);
        })
    });
    g.finish();
}

criterion_group!(benches, header, decoder);
criterion_main!(benches);
