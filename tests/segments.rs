//! Segments as compressed packets: cut from the input in one pass, each decoded, filtered and
//! encoded on its own (as a worker will), then joined, they give the frames `vpd run` gives
//! with the same segment length.

use std::path::{Path, PathBuf};
use std::process::Command;

use vpd::filters::{Chain, FilterEnv, Processor};
use vpd::media::index::VideoIndex;
use vpd::media::packets::{Cutter, SegmentInput, decode, encode};
use vpd::media::{MediaSource, OutputOptions, SegmentRecord, frames_per_segment, join_segments, segment_path};

use crate::util::*;

/// 90 frames of 320x240 H.264 at 25 fps with up to 3 B-frames and a keyframe every 20 frames,
/// so that segments of 25 frames start inside GOPs and their frames are reordered.
fn input(dir: &Path) -> PathBuf {
    let path = dir.join("in.mp4");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25,noise=alls=20:allf=t"])
        .args(["-frames:v", "90", "-c:v", "libx264", "-g", "20", "-bf", "3", "-pix_fmt", "yuv420p"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

/// `input` through `chain` in segments of one second cut as packets, each segment on its own
/// processor and encoder, joined into `output`.
fn through_packet_segments(input: &Path, chain: &Chain, output: &Path, options: &OutputOptions) -> usize {
    let source = MediaSource::open(input).unwrap();
    let info = source.info();
    let per_segment = frames_per_segment(info.fps, 1.0);
    let index = VideoIndex::build(input).unwrap();
    assert_eq!(index.unusable(), None);
    let mut cutter = Cutter::open(input, index, per_segment, chain.needs_previous(), info.fps).unwrap();
    let out = chain.output_size(info.width, info.height);
    let size = (out != (info.width, info.height)).then_some(out);
    let dir = output.with_extension("segments");
    std::fs::create_dir_all(&dir).unwrap();
    let mut records = Vec::new();
    while let Some(segment) = cutter.next_segment().unwrap() {
        // As a task carries it.
        let segment: SegmentInput = postcard::from_bytes(&postcard::to_stdvec(&segment).unwrap()).unwrap();
        let decoded = decode(&segment, input).unwrap();
        assert_eq!(decoded.previous.is_some(), chain.needs_previous() && segment.number > 0);
        let mut processor = Processor::new(chain, &FilterEnv::default()).unwrap();
        let mut previous = decoded.previous;
        let mut filtered = Vec::new();
        for (_, frame) in decoded.frames {
            filtered.push(processor.apply(&frame, previous.as_ref()).unwrap());
            previous = Some(frame);
        }
        let bytes = encode(&segment, &filtered, output, options, size).unwrap();
        std::fs::write(segment_path(&dir, segment.number), &bytes).unwrap();
        records.push(SegmentRecord {
            number: segment.number,
            first_frame: segment.number * per_segment,
            frames: filtered.len() as u64,
            last_pts: segment.frames.last().copied(),
            bytes: bytes.len() as u64,
            last: false,
        });
    }
    assert_eq!(records.len() as u64, cutter.segments());
    join_segments(&source, &dir, &records, output, options, size).unwrap();
    records.len()
}

#[test]
fn segments_cut_as_packets_and_processed_apart_give_the_frames_of_vpd_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    // `motion` needs the true previous frame at every boundary; scale changes the size; FFV1
    // is lossless, so what it keeps is what the filters made.
    let cases =
        [("motion,edges", "h264", "mp4"), ("blur:ksize=5,scale:width=160", "h264", "mp4"), ("motion", "ffv1", "mkv")];
    for (i, (chain, codec, container)) in cases.into_iter().enumerate() {
        let reference = dir.path().join(format!("run-{i}.{container}"));
        let want = crate::util::cluster::reference_in_segments(&input, chain, &reference, codec);
        let output = dir.path().join(format!("packets-{i}.{container}"));
        let options = OutputOptions { codec: codec.parse().unwrap(), ..OutputOptions::default() };
        let segments = through_packet_segments(&input, &chain.parse().unwrap(), &output, &options);
        assert_eq!(segments, 4, "90 frames in segments of 25");
        let got = decode_all(&output);
        assert_eq!((want.len(), got.len()), (90, 90), "{chain}");
        for (n, (a, b)) in want.iter().zip(&got).enumerate() {
            assert_eq!(max_diff(a, b), 0.0, "{chain}: frame {n} differs");
        }
    }
}

#[test]
fn an_input_without_timestamps_is_not_cut_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // A raw H.264 stream: its packets carry no presentation times.
    let path = dir.path().join("in.h264");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-frames:v", "30"])
        .args(["-c:v", "libx264", "-bf", "2"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let index = VideoIndex::build(&path).unwrap();
    assert_eq!(index.frames(), 30);
    assert_eq!(index.unusable().as_deref(), Some("some video packets have no timestamp"));
    let err = Cutter::open(&path, index, 10, false, 25.0).err().expect("refused").to_string();
    assert!(err.ends_with("cannot be processed in segments of packets: some video packets have no timestamp"), "{err}");
}
