//! The cost of `--cluster-key-file` per frame: HMAC-SHA256 over a task body the size of a raw
//! 720p and 1080p frame (`raw` transport, the largest body; a compressed one costs in
//! proportion to its size), set against LZ4 compressing the same frame, a per-frame cost vpd
//! already pays. The MAC is made once by the sender and checked once by the receiver.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vpd::broker::ClusterKey;

fn frame(width: usize, height: usize) -> Vec<u8> {
    // A gradient with noise in its low bits, as a camera's sensor leaves it.
    let mut state = 0x2545_f491_u32;
    (0..width * height * 3)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            ((i / 3 % width * 255 / width) as u8 & 0xf0) | (state as u8 & 0x0f)
        })
        .collect()
}

fn mac(c: &mut Criterion) {
    let key = ClusterKey::new(b"0123456789abcdef0123456789abcdef-bench").unwrap();
    let mut group = c.benchmark_group("mac-per-frame");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for (name, w, h) in [("720p", 1280, 720), ("1080p", 1920, 1080)] {
        let raw = frame(w, h);
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("hmac-raw", name), |b| b.iter(|| key.task_mac("j0123:7", &raw)));
        group.bench_function(BenchmarkId::new("lz4-compress", name), |b| {
            b.iter(|| lz4_flex::compress_prepend_size(&raw))
        });
    }
    group.finish();
}

criterion_group!(benches, mac);
criterion_main!(benches);
