//! Crash-safe `vpd run`: the output committed in segments, a killed run resumed from its last
//! committed segment with the frames an uninterrupted run writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use vpd::media::OutputOptions;

use crate::util::*;

const FRAMES: u32 = 150;
/// A second of frames a segment.
const SEGMENT: &str = "1";
/// `motion` needs the true previous frame at every segment boundary; the blur keeps one
/// thread busy long enough to be killed midway.
const CHAIN: &str = "motion,blur:ksize=81";

/// An H.264 input with a keyframe every 25 frames (segments are 24), so that a resume seeks
/// to a keyframe before its point and decodes up to it, and AAC audio running a little past
/// the last frame.
fn input(dir: &Path) -> PathBuf {
    let path = dir.join("in.mp4");
    let video = dir.join("video.mp4");
    let spec = ClipSpec { frames: FRAMES, width: 320, height: 240, ..ClipSpec::default() };
    let options = OutputOptions { codec: "h264".parse().unwrap(), keyint: Some(25), ..OutputOptions::default() };
    let mut sink = vpd::media::MediaSink::for_frames(&video, &options, 320, 240, spec.fps).unwrap();
    for i in 0..spec.frames {
        vpd::pipeline::FrameSink::write(&mut sink, &synth_frame(&spec, i)).unwrap();
    }
    sink.finish().unwrap();
    let seconds = (f64::from(spec.frames) / spec.fps + 0.5).to_string();
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&video)
        .args(["-f", "lavfi", "-i", &format!("sine=frequency=440:duration={seconds}")])
        .args(["-c:v", "copy", "-c:a", "aac"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(video).unwrap();
    path
}

fn args<'a>(input: &'a Path, output: &'a Path, chain: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", input.to_str().unwrap(), "-f", chain, "-o", output.to_str().unwrap()];
    a.extend_from_slice(&["-t", "1", "--segment-seconds", SEGMENT]);
    a.extend_from_slice(extra);
    a
}

fn checkpoint(output: &Path) -> PathBuf {
    output.with_file_name(format!(".{}.vpd-resume", output.file_name().unwrap().to_string_lossy()))
}

/// The segments the checkpoint beside `output` records as committed: their frame counts.
fn segments(output: &Path) -> Vec<u64> {
    let log = std::fs::read_to_string(checkpoint(output).join("segments.jsonl")).unwrap_or_default();
    log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).map(|r| r["frames"].as_u64().unwrap()).collect()
}

/// Frames the checkpoint beside `output` records as committed.
fn committed(output: &Path) -> u64 {
    segments(output).iter().sum()
}

/// Starts a run and kills it (SIGKILL: no chance to clean up) once two segments are
/// committed; returns the frames committed when it died.
fn kill_midway(input: &Path, output: &Path) -> u64 {
    let child = vpd().args(args(input, output, CHAIN, &["-q"])).spawn().unwrap();
    let mut child = ChildGuard(child);
    assert!(wait_for(Duration::from_secs(60), || segments(output).len() >= 2), "two segments were never committed");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGKILL) };
    child.0.wait().unwrap();
    let frames = committed(output);
    assert!(frames < u64::from(FRAMES), "killed before the end: {frames} frames were committed");
    assert!(!output.exists(), "no output from a killed run");
    frames
}

#[test]
fn a_killed_run_resumes_from_its_last_segment_with_the_same_frames() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let uninterrupted = dir.path().join("whole.mp4");
    let out = run_vpd(&args(&input, &uninterrupted, CHAIN, &["-q"]));
    assert!(out.status.success(), "{}", stderr(&out));

    let output = dir.path().join("out.mp4");
    let at_kill = kill_midway(&input, &output);
    // A second of frames a segment (the clip's rate), and a resume starts at a segment's first.
    let per_segment = segments(&output)[0];
    assert_eq!(per_segment, ClipSpec::default().fps.round() as u64);
    assert_eq!(at_kill % per_segment, 0);
    let out = run_vpd(&args(&input, &output, CHAIN, &["--resume", "--json", "-q"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["resumed_at_frame"].as_u64(), Some(at_kill), "{summary}");
    assert_eq!(summary["frames"].as_u64(), Some(u64::from(FRAMES)));
    // No committed frame went through the filters again.
    let filtered: u64 = summary["workers"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(filtered, u64::from(FRAMES) - at_kill);

    // Frame for frame what the uninterrupted run wrote, and every frame there.
    let (whole, resumed) = (decode_all(&uninterrupted), decode_all(&output));
    assert_eq!((whole.len(), resumed.len()), (FRAMES as usize, FRAMES as usize));
    for (i, (a, b)) in whole.iter().zip(&resumed).enumerate() {
        assert_eq!(max_diff(a, b), 0.0, "frame {i} differs");
    }
    // The audio, which the segments carry: every packet once, past the last frame too, though
    // the resume read some again from the keyframe it sought to.
    assert_eq!(audio_md5(&output), audio_md5(&input), "the resumed output's audio");
    assert_eq!(audio_md5(&uninterrupted), audio_md5(&input), "the uninterrupted output's audio");
    assert!(!checkpoint(&output).exists(), "a finished run removes its checkpoint");
    assert!(partial_files(dir.path()).is_empty());
}

#[test]
fn a_leftover_checkpoint_is_replaced_without_resume_and_a_resume_of_another_job_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let output = dir.path().join("out.mkv");
    let at_kill = kill_midway(&input, &output);

    // Another chain: not the job the checkpoint is of.
    let out = run_vpd(&args(&input, &output, "edges", &["--resume"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot resume") && err.contains("without --resume"), "{err}");
    assert_eq!(committed(&output), at_kill, "the checkpoint is left as it was");

    // Without --resume: said, replaced, and the job done from the start.
    let out = run_vpd(&args(&input, &output, "edges", &["--json"]));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("replacing what an interrupted run left"), "{err}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary.get("resumed_at_frame"), None);
    assert_eq!(ffprobe(&output).frames, u64::from(FRAMES));
    assert!(!checkpoint(&output).exists());

    // Nothing to resume: said, and done from the start.
    let again = dir.path().join("again.mkv");
    let out = run_vpd(&args(&input, &again, "edges", &["--resume"]));
    assert!(out.status.success() && stderr(&out).contains("nothing to resume"), "{}", stderr(&out));
    // A pipe cannot be resumed.
    let out = run_vpd(&["run", input.to_str().unwrap(), "-f", "edges", "-o", "-", "--format", "matroska", "--resume"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--resume needs a file"), "{}", stderr(&out));
}

/// A second run writing the same output is refused at once, and the first goes on to a whole
/// output (the second used to delete the first's live checkpoint, failing both).
#[test]
fn a_second_run_on_the_same_output_is_refused_and_the_first_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    let output = dir.path().join("out.mp4");
    let first = vpd().args(args(&input, &output, CHAIN, &["-q"])).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut first = ChildGuard(first);
    assert!(wait_for(Duration::from_secs(30), || checkpoint(&output).exists()), "the first run began");
    let started = std::time::Instant::now();
    let second = run_vpd(&args(&input, &output, "edges", &["-q"]));
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused at once");
    assert_eq!(
        err.trim(),
        format!(
            "vpd: another vpd run is writing {} (it holds {}); wait for it to end, or write elsewhere",
            output.display(),
            checkpoint(&output).display()
        )
    );
    // With --resume too: the checkpoint is the first run's while it lives.
    let resumed = run_vpd(&args(&input, &output, CHAIN, &["--resume", "-q"]));
    assert!(stderr(&resumed).contains("another vpd run is writing"), "{}", stderr(&resumed));
    let status = first.0.wait().unwrap();
    let mut first_err = String::new();
    std::io::Read::read_to_string(first.0.stderr.as_mut().unwrap(), &mut first_err).unwrap();
    assert!(status.success(), "{first_err}");
    assert_eq!(ffprobe(&output).frames, FRAMES as u64);
    assert!(!checkpoint(&output).exists(), "the checkpoint goes once the output is whole");
}

/// A disk that fills up keeps the committed segments, and the error says where, how much, and
/// that --resume goes on; once there is room, it does.
#[test]
fn a_full_disk_says_what_it_kept_and_a_resume_finishes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let input = input(dir.path());
    // A disk with room for about half the output (the segments, then the joined file).
    let whole = dir.path().join("whole.mkv");
    let extra = ["--codec", "ffv1", "-q"];
    assert!(run_vpd(&args(&input, &whole, "edges", &extra)).status.success());
    let half_kb = std::fs::metadata(&whole).unwrap().len() / 2 / 1024;
    let Some(disk) = SmallDisk::mount(&dir.path().join("small"), &format!("{half_kb}k")) else {
        assert_ne!(unsafe { libc::geteuid() }, 0, "root can mount a tmpfs");
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let output = disk.0.join("out.mkv");
    let out = run_vpd(&args(&input, &output, "edges", &extra));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let frames = committed(&output);
    assert!(frames > 0 && frames < u64::from(FRAMES), "some segments were committed: {frames}; {err}");
    assert!(err.contains("no space left on device"), "{err}");
    assert!(
        err.contains(&format!("{frames} frames are committed in {} (", checkpoint(&output).display()))
            && err.contains("MB); run again with --resume to continue from there once there is room"),
        "{err}"
    );
    assert!(!output.exists());
    disk.resize("200m");
    let out = run_vpd(&args(&input, &output, "edges", &["--codec", "ffv1", "--resume", "--json", "-q"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["resumed_at_frame"].as_u64(), Some(frames), "{summary}");
    assert_eq!(ffprobe(&output).frames, FRAMES as u64);
}
