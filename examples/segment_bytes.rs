//! What one video costs on the broker per frame, as frame tasks against segment tasks: the
//! bytes of each frame raw and as LZ4 (frame mode's payloads), against the bytes of each
//! segment's task (its packets and stream parameters, as postcard) over its frames.
//! `cargo run --release --example segment_bytes -- INPUT [SEGMENT_SECONDS] [motion]`

use opencv::prelude::*;
use vpd::media::index::VideoIndex;
use vpd::media::packets::Cutter;
use vpd::media::{FrameSource, MediaSource, frames_per_segment};
use vpd::protocol::wire::{Encoder, TransportEncoding};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(input) = args.next().map(std::path::PathBuf::from) else {
        anyhow::bail!("usage: segment_bytes INPUT [SEGMENT_SECONDS] [motion]");
    };
    let seconds: f64 = args.next().map_or(Ok(10.0), |s| s.parse())?;
    let with_previous = args.next().as_deref() == Some("motion");

    let mut source = MediaSource::open(&input)?;
    let info = source.info();
    let (mut frames, mut raw, mut lz4) = (0u64, 0u64, 0u64);
    let mut encoder = Encoder::new(TransportEncoding::Lz4);
    let mut out = Vec::new();
    while let Some(frame) = source.next_frame()? {
        frames += 1;
        raw += (frame.total() * frame.elem_size()?) as u64;
        out.clear();
        encoder.encode(&frame, &mut out)?;
        lz4 += out.len() as u64;
    }

    let per_segment = frames_per_segment(info.fps, seconds);
    let mut cutter = Cutter::open(&input, VideoIndex::build(&input)?, per_segment, with_previous, info.fps)?;
    let (mut tasks, mut task_bytes, mut largest) = (0u64, 0u64, 0usize);
    while let Some(segment) = cutter.next_segment()? {
        let bytes = postcard::to_stdvec(&segment)?.len();
        tasks += 1;
        task_bytes += bytes as u64;
        largest = largest.max(bytes);
    }
    let per = |b: u64| b as f64 / frames.max(1) as f64 / 1024.0;
    println!("{}: {frames} frames of {}x{} at {:.2} fps", input.display(), info.width, info.height, info.fps);
    println!("frame mode, raw:  {:10.1} KiB a frame", per(raw));
    println!("frame mode, lz4:  {:10.1} KiB a frame", per(lz4));
    println!(
        "segment mode:     {:10.1} KiB a frame ({tasks} tasks of {per_segment} frames{}, the largest {:.1} MiB): {:.2} % of lz4",
        per(task_bytes),
        if with_previous { " and the one before" } else { "" },
        largest as f64 / (1 << 20) as f64,
        100.0 * task_bytes as f64 / lz4.max(1) as f64
    );
    Ok(())
}
