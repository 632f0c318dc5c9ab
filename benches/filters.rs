//! Each filter on one real frame (from assets/sample.mp4, scaled) at 720p and 1080p, through
//! `Processor::apply` as the pipeline calls it (output allocation included), on one thread.
//!
//! `cargo bench --bench filters` (or `make bench`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use opencv::core::{Mat, Size};
use opencv::imgproc;
use vpd::filters::{Chain, FilterEnv, Processor};
use vpd::media::MediaSource;
use vpd::pipeline::FrameSource;

/// Frames 99 and 100 of the sample: the portrait and the ball both moving.
fn sample_frames() -> (Mat, Mat) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample.mp4");
    let mut source = MediaSource::open(std::path::Path::new(path)).expect("open sample");
    let mut frames = Vec::new();
    for _ in 0..=100 {
        frames.push(source.next_frame().unwrap().expect("the sample has 200 frames"));
    }
    let current = frames.pop().unwrap();
    (frames.pop().unwrap(), current)
}

fn scaled(m: &Mat, width: i32, height: i32) -> Mat {
    let mut out = Mat::default();
    imgproc::resize(m, &mut out, Size::new(width, height), 0.0, 0.0, imgproc::INTER_CUBIC).unwrap();
    out
}

fn filters(c: &mut Criterion) {
    // As vpd runs them: frames in parallel, OpenCV itself single-threaded.
    opencv::core::set_num_threads(1).unwrap();
    let (previous, current) = sample_frames();
    let mut group = c.benchmark_group("filter");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for (label, w, h) in [("720p", 1280, 720), ("1080p", 1920, 1080)] {
        let (prev, cur) = (scaled(&previous, w, h), scaled(&current, w, h));
        for chain in [
            "blur",
            "blur:ksize=21",
            "edges",
            "faces",
            "faces:mode=blur",
            "motion",
            "denoise",
            "sharpen",
            "grade:contrast=1.1:saturation=1.2",
            "grade:contrast=1.1:brightness=0.05:gamma=1.1:warmth=0.2",
            "denoise,grade:contrast=1.1:saturation=1.15,sharpen",
            "scale:width=640",
            "scale:width=2560",
        ] {
            let parsed: Chain = chain.parse().unwrap();
            let mut processor = Processor::new(&parsed, &FilterEnv::default()).expect("opencv-data installed");
            group.bench_with_input(BenchmarkId::new(chain, label), &(&prev, &cur), |b, (prev, cur)| {
                b.iter(|| black_box(processor.apply(cur, Some(prev)).unwrap()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, filters);
criterion_main!(benches);
