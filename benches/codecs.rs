//! Encoding cost of each output codec: 60 frames of 720p edges output (what `vpd run --filter
//! edges` writes) through `MediaSink`, as the writer thread does, into a temporary file.
//!
//! `cargo bench --bench codecs` (part of `make bench`).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use opencv::core::{Mat, Size};
use opencv::imgproc;
use vpd::filters::{Chain, FilterEnv, Processor};
use vpd::media::{MediaSink, MediaSource, OutputOptions};
use vpd::pipeline::{FrameSink, FrameSource};

const FRAMES: usize = 60;

fn edges_frames() -> Vec<Mat> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample.mp4");
    let mut source = MediaSource::open(std::path::Path::new(path)).expect("open sample");
    let chain: Chain = "edges".parse().unwrap();
    let mut edges = Processor::new(&chain, &FilterEnv::default()).unwrap();
    (0..FRAMES)
        .map(|_| {
            let m = source.next_frame().unwrap().expect("the sample has 200 frames");
            let mut big = Mat::default();
            imgproc::resize(&m, &mut big, Size::new(1280, 720), 0.0, 0.0, imgproc::INTER_CUBIC).unwrap();
            edges.apply(&big, None).unwrap()
        })
        .collect()
}

fn codecs(c: &mut Criterion) {
    opencv::core::set_num_threads(1).unwrap();
    let frames = edges_frames();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("encode-720p-edges");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(FRAMES as u64));
    for (codec, ext) in [("h264", "mp4"), ("mpeg4", "mp4"), ("mjpeg", "avi"), ("ffv1", "mkv"), ("hevc", "mkv")] {
        let options = OutputOptions { codec: codec.parse().unwrap(), ..OutputOptions::default() };
        group.bench_function(BenchmarkId::from_parameter(codec), |b| {
            b.iter(|| {
                let out = dir.path().join(format!("out.{ext}"));
                let mut sink = MediaSink::for_frames(&out, &options, 1280, 720, 30.0).unwrap();
                for f in &frames {
                    sink.write(f).unwrap();
                }
                sink.finish().unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
