//! Tiles (issue 24): one 4K frame's latency, from its task to its result, through the
//! transports `vpd run` uses: two filter threads (`LocalTransport`), the frame whole (one thread
//! has it) against cut into 2x2 tiles (`TiledTransport`: cut, two tiles a thread, join, and the
//! steps that need the whole frame on the assembler's thread). One frame in flight, so this is
//! the latency a frame sees, without a decoder or an encoder sharing the cores.
//!
//! `cargo bench --bench tiles` (or `make bench`).

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use crossbeam_channel::{bounded, unbounded};
use opencv::core::{Mat, Size};
use opencv::imgproc;
use vpd::cancel::Stop;
use vpd::filters::tiles::{Grid, Tiles};
use vpd::filters::{Chain, FilterEnv};
use vpd::media::MediaSource;
use vpd::pipeline::FrameSource;
use vpd::protocol::job::JobId;
use vpd::protocol::task::{FrameOutcome, FrameTask};
use vpd::protocol::wire::TransportEncoding;
use vpd::run::TILE_BYTES;
use vpd::transport::JobContext;
use vpd::transport::local::LocalTransport;
use vpd::transport::tiled::tiling;

/// Frame 100 of the sample (the portrait and the ball), scaled to 3840x2160.
fn frame_4k() -> Mat {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample.mp4");
    let mut source = MediaSource::open(std::path::Path::new(path)).expect("open sample");
    let mut frame = None;
    for _ in 0..=100 {
        frame = Some(source.next_frame().unwrap().expect("the sample has 200 frames"));
    }
    let mut out = Mat::default();
    let size = Size::new(3840, 2160);
    imgproc::resize(&frame.unwrap(), &mut out, size, 0.0, 0.0, imgproc::INTER_CUBIC).unwrap();
    out
}

fn tiles(c: &mut Criterion) {
    // As vpd runs them: OpenCV itself single-threaded, the parallelism vpd's own.
    opencv::core::set_num_threads(1).unwrap();
    let frame = Arc::new(frame_4k());
    let env = FilterEnv::default();
    let threads = LocalTransport::new(NonZeroUsize::new(2).unwrap(), env.clone()).unwrap();
    let mut group = c.benchmark_group("tiles-4k");
    group.sample_size(20).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(8));
    for chain in ["blur,sharpen,edges", "blur,sharpen", "edges"] {
        let parsed: Chain = chain.parse().unwrap();
        for tiles in [Tiles::Off, Tiles::Grid(Grid { cols: 2, rows: 2 })] {
            let tiling = tiling(&threads, tiles, &parsed, ((3840, 2160), TILE_BYTES), true, &env);
            assert_eq!(tiling.tiled.is_some(), tiles != Tiles::Off, "{chain} {tiles}: {:?}", tiling.summary);
            let transport = tiling.transport(&threads);
            let job = JobContext {
                id: JobId::new(),
                chain: parsed.clone(),
                stop: Stop::never(),
                encoding: TransportEncoding::Raw,
            };
            std::thread::scope(|s| {
                let (task_tx, task_rx) = bounded(1);
                let (result_tx, result_rx) = unbounded();
                let served = s.spawn(|| transport.serve(&job, task_rx, result_tx));
                let mut index = 0;
                group.bench_function(BenchmarkId::new(chain, tiles.to_string()), |b| {
                    b.iter(|| {
                        task_tx.send(FrameTask { index, frame: frame.clone(), previous: None }).unwrap();
                        index += 1;
                        let result = result_rx.recv().unwrap();
                        assert!(matches!(result.outcome, FrameOutcome::Processed(_)), "{chain}: a frame failed");
                        black_box(result)
                    })
                });
                drop(task_tx);
                served.join().unwrap().unwrap();
            });
        }
    }
    group.finish();
}

criterion_group!(benches, tiles);
criterion_main!(benches);
