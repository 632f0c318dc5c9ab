//! Segment mode over the real RabbitMQ: `vpd server` cuts the upload into segments of packets,
//! `vpd worker`s decode, filter and encode them, and the joined output decodes to the frames
//! `vpd run` gives with the same segment length, audio included; workers killed mid-segment,
//! segments too large for a message, and inputs that cannot be cut.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::cluster::*;
use crate::util::*;

/// `frames` frames of `w`x`h` H.264 at 25 fps with up to 3 B-frames, a keyframe every 20
/// frames (so that 1 s segments start inside GOPs and their frames are reordered), and AAC.
fn h264_with_audio(dir: &Path, frames: u32, (w, h): (u32, u32)) -> PathBuf {
    let path = dir.join(format!("in-{frames}-{w}.mp4"));
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={w}x{h}:rate=25,noise=alls=20:allf=t"))
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-frames:v", &frames.to_string(), "-c:v", "libx264", "-g", "20", "-bf", "3", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-shortest"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

/// `vpd run` with 1 s segments, as the reference.
fn run_reference(input: &Path, chain: &str, output: &Path, codec: &str) -> Vec<opencv::core::Mat> {
    let out = run_vpd(&[
        "run",
        input.to_str().unwrap(),
        "-f",
        chain,
        "-o",
        output.to_str().unwrap(),
        "--codec",
        codec,
        "--segment-seconds",
        "1",
        "-q",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    decode_all(output)
}

/// The MD5 of `path`'s audio stream's packets as FFmpeg demuxes them.
fn audio_md5(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:a", "-c", "copy", "-f", "md5", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn same(got: &Path, want: &[opencv::core::Mat], what: &str) {
    let got = decode_all(got);
    assert_eq!(got.len(), want.len(), "{what}: frame count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(max_diff(g, w), 0.0, "{what}: frame {i} differs from vpd run's");
    }
}

fn segment_server(ns: &Namespace, extra: &[&str]) -> Server {
    let mut args = vec!["--listen", "127.0.0.1:0", "--amqp", &amqp_url_static(), "--namespace", &ns.name];
    args.extend(["--segment-seconds", "1"]);
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// [`amqp_url`], kept for the life of the test process (server arguments borrow it).
fn amqp_url_static() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(amqp_url)
}

#[test]
fn segment_mode_gives_the_frames_and_audio_of_vpd_run() {
    let ns = Namespace::new("segsame");
    let dir = tempfile::tempdir().unwrap();
    let input = h264_with_audio(dir.path(), 90, (320, 240));
    let server = segment_server(&ns, &[]);
    let _workers = [Worker::start(&ns, 1), Worker::start(&ns, 1)];
    ns.wait_for_workers(2);
    // `motion` needs the true previous frame at every boundary; FFV1 keeps what the filters made.
    for (chain, codec, container) in [("motion,edges", "h264", "mp4"), ("motion", "ffv1", "mkv")] {
        let reference = dir.path().join(format!("run.{container}"));
        let want = run_reference(&input, chain, &reference, codec);
        assert_eq!(want.len(), 90);
        let output = dir.path().join(format!("seg.{container}"));
        // (`client` asks for FFV1 in .mkv.)
        let codec_args: &[&str] = if container == "mp4" { &["--codec", "h264"] } else { &[] };
        let s = summary(&client(&server.addr(), &input, chain, &output, &[&["--split", "segments"], codec_args].concat()));
        assert_eq!((s.frames, s.failed_frames), (90, 0), "{chain}");
        assert_eq!(s.split.as_deref(), Some("segments"), "{chain}");
        assert_eq!(s.split_why.as_deref(), Some("--split segments: 4 segments of 25 frames"));
        assert_eq!(s.workers.values().sum::<u64>(), 90, "{chain}: {:?}", s.workers);
        same(&output, &want, &format!("{chain} in {codec}, segment mode"));
        assert_eq!(audio_md5(&output), audio_md5(&reference), "{chain}: the audio, muxed once");
        // Compressed packets, not pixels: about the input's size (`motion` also takes the
        // frames from a keyframe to each segment's previous one), far below the raw frames.
        let (raw, file) = (90 * 320 * 240 * 3, std::fs::metadata(&input).unwrap().len());
        assert!(s.wire_bytes_sent < 2 * file && 4 * file < raw, "sent {} bytes of a {file}-byte input", s.wire_bytes_sent);
    }
    // `auto` (the default) takes segments for 4 of them, frames for fewer than 3.
    let s = summary(&client(&server.addr(), &input, "edges", &dir.path().join("auto.mp4"), &[]));
    assert_eq!(
        (s.split.as_deref(), s.split_why.as_deref()),
        (Some("segments"), Some("auto: 4 segments of 25 frames"))
    );
    let short = h264_with_audio(dir.path(), 40, (320, 240));
    let s = summary(&client(&server.addr(), &short, "edges", &dir.path().join("short.mp4"), &[]));
    assert_eq!(
        (s.split.as_deref(), s.split_why.as_deref()),
        (Some("frames"), Some("auto: 2 segment(s) of 25 frames, fewer than 3"))
    );
    // A raw H.264 stream has no timestamps to cut by: frame mode, saying why.
    let raw = dir.path().join("in.h264");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&input)
        .args(["-map", "0:v", "-c", "copy"])
        .arg(&raw)
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = summary(&client(&server.addr(), &raw, "edges", &dir.path().join("raw.mp4"), &["--split", "segments"]));
    assert_eq!(s.frames, 90);
    assert_eq!(
        (s.split.as_deref(), s.split_why.as_deref()),
        (Some("frames"), Some("the video cannot be cut as packets: some video packets have no timestamp"))
    );
}

#[test]
fn killing_a_worker_mid_segment_loses_nothing() {
    let ns = Namespace::new("segkill");
    let dir = tempfile::tempdir().unwrap();
    let input = h264_with_audio(dir.path(), 125, (640, 480));
    let chain = "blur:ksize=51,motion";
    let want = run_reference(&input, chain, &dir.path().join("run.mkv"), "ffv1");
    let server = segment_server(&ns, &[]);
    let mut doomed = Worker::start(&ns, 1);
    ns.wait_for_workers(1);
    let events = Events::subscribe(&ns);
    let output = dir.path().join("out.mkv");
    let mut survivor = None;
    let job = std::thread::scope(|s| {
        let job = s.spawn(|| client(&server.addr(), &input, chain, &output, &["--split", "segments"]));
        // Five frames into its first segment (workers say so every five): kill -9, mid-segment.
        events.wait_for_progress(5);
        signal(&doomed.child.0, libc::SIGKILL);
        let _ = doomed.child.0.wait();
        survivor = Some(Worker::start(&ns, 1));
        job.join().unwrap()
    });
    let s = summary(&job);
    assert_eq!((s.frames, s.failed_frames, s.split.as_deref()), (125, 0, Some("segments")));
    assert!(s.retries >= 1, "the segment the killed worker held was redelivered and counted: {s:?}");
    drop(survivor);
    same(&output, &want, "after kill -9 mid-segment");
}

#[test]
fn a_segment_over_the_message_limit_is_done_frame_by_frame() {
    let ns = Namespace::new("segbig");
    let dir = tempfile::tempdir().unwrap();
    let input = h264_with_audio(dir.path(), 75, (640, 480));
    let chain = "motion,edges";
    let want = run_reference(&input, chain, &dir.path().join("run.mkv"), "ffv1");
    // 64 KiB: every segment of this noisy 640x480 video is larger.
    let server = segment_server(&ns, &["--max-message", "65536"]);
    let _worker = Worker::start(&ns, 2);
    ns.wait_for_workers(1);
    let output = dir.path().join("out.mkv");
    let s = summary(&client(&server.addr(), &input, chain, &output, &["--split", "segments"]));
    assert_eq!((s.frames, s.failed_frames, s.split.as_deref()), (75, 0, Some("segments")));
    // Frame tasks: the raw frames went over the wire.
    assert!(s.wire_bytes_sent > 75 * 640 * 480, "sent {} bytes", s.wire_bytes_sent);
    same(&output, &want, "segments done frame by frame");
}
