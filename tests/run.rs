//! `vpd run`: the real binary on generated clips, outputs checked frame by frame.

use std::path::Path;
use std::time::Duration;

use opencv::core::Mat;
use opencv::prelude::*;
use vpd::filters::{Chain, FilterEnv, Processor};

use crate::util::*;

/// The filter applied by the library itself, frame by frame, as `vpd run` should.
fn expected_frames(input: &[Mat], chain: &str) -> Vec<Mat> {
    let chain: Chain = chain.parse().unwrap();
    let mut p = Processor::new(&chain, &FilterEnv::default()).unwrap();
    input.iter().enumerate().map(|(i, f)| p.apply(f, i.checked_sub(1).map(|j| &input[j])).unwrap()).collect()
}

fn lossless_clip(dir: &Path, spec: &ClipSpec) -> std::path::PathBuf {
    let path = dir.join("in.mkv");
    write_clip(&path, spec, "FFV1");
    path
}

#[test]
fn output_has_the_input_frame_count_size_and_rate() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    write_clip(&input, &ClipSpec { frames: 40, width: 320, height: 240, fps: 24.0, face: false }, "mp4v");
    let output = dir.path().join("out.mp4");
    let out = run_vpd(&["run", input.to_str().unwrap(), "--filter", "blur:ksize=3", "-o", output.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        ffprobe(&output),
        Probe { codec: "h264".into(), width: 320, height: 240, rate: "24/1".into(), frames: 40 }
    );
    // Frames come out in input order: each carries its number as a barcode a light blur keeps.
    let numbers: Vec<u32> = decode_all(&output).iter().map(frame_number).collect();
    assert_eq!(numbers, (0..40).collect::<Vec<_>>());
}

#[test]
fn every_frame_equals_the_library_filter_of_the_input_frame() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClipSpec { frames: 24, width: 480, height: 360, fps: 25.0, face: true };
    let input = lossless_clip(dir.path(), &spec);
    let source = decode_all(&input);
    assert_eq!(source.len(), 24);
    for chain in [
        "blur:ksize=9",
        "edges:low=40:high=120",
        "faces",
        "faces:mode=blur",
        "motion",
        "blur:ksize=5,motion,faces,edges",
        "denoise",
        "sharpen:amount=0.8:radius=2",
        "grade:contrast=1.1:brightness=0.05:saturation=1.2:gamma=1.1:warmth=0.3",
        "denoise,grade:contrast=1.1:saturation=1.15,sharpen",
        "scale:width=240",
        "motion,grade:saturation=0.5,scale:height=200",
    ] {
        let output = dir.path().join("out.mkv");
        let out = run_vpd(&[
            "run",
            input.to_str().unwrap(),
            "--filter",
            chain,
            "-o",
            output.to_str().unwrap(),
            "--codec",
            "ffv1",
            "--threads",
            "3",
        ]);
        assert!(out.status.success(), "{chain}: {}", stderr(&out));
        let got = decode_all(&output);
        let want = expected_frames(&source, chain);
        assert_eq!(got.len(), want.len(), "{chain}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(max_diff(g, w), 0.0, "{chain}: frame {i} differs from the library's result");
        }
        // The filter did something: the output is not the input.
        let changed = |g: &Mat, s: &Mat| g.size().unwrap() != s.size().unwrap() || max_diff(g, s) > 0.0;
        assert!(got.iter().zip(&source).any(|(g, s)| changed(g, s)), "{chain} changed nothing");
    }
}

#[test]
fn one_worker_and_four_workers_write_identical_frames() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    write_clip(&input, &ClipSpec { frames: 60, face: true, ..ClipSpec::default() }, "mp4v");
    let mut outputs = Vec::new();
    // Lossless output: what is compared is the pool's frames, not an encoder's choices.
    for workers in ["1", "4"] {
        let output = dir.path().join(format!("out{workers}.mkv"));
        let out = run_vpd(&[
            "run",
            input.to_str().unwrap(),
            "-f",
            "motion,faces:mode=blur,blur:ksize=3",
            "-o",
            output.to_str().unwrap(),
            "--codec",
            "ffv1",
            "-t",
            workers,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        outputs.push(decode_all(&output));
    }
    assert_eq!(outputs[0].len(), 60);
    assert_eq!(outputs[1].len(), 60);
    for (i, (a, b)) in outputs[0].iter().zip(&outputs[1]).enumerate() {
        assert_eq!(max_diff(a, b), 0.0, "frame {i}");
    }
}

#[test]
fn every_codec_writes_a_playable_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    write_clip(&input, &ClipSpec { frames: 12, ..ClipSpec::default() }, "mp4v");
    // The names earlier versions took (OpenCV's fourccs) still work.
    for (codec, ext, ffmpeg_name) in [
        ("mp4v", "mp4", "mpeg4"),
        ("avc1", "mp4", "h264"),
        ("mjpg", "avi", "mjpeg"),
        ("xvid", "avi", "mpeg4"),
        ("ffv1", "mkv", "ffv1"),
    ] {
        let output = dir.path().join(format!("out-{codec}.{ext}"));
        let out =
            run_vpd(&["run", input.to_str().unwrap(), "-f", "blur", "-o", output.to_str().unwrap(), "--codec", codec]);
        assert!(out.status.success(), "{codec}: {}", stderr(&out));
        let p = ffprobe(&output);
        assert_eq!((p.codec.as_str(), p.frames, p.width, p.height), (ffmpeg_name, 12, 320, 240), "{codec}");
    }
}

#[test]
fn json_summary_reports_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    write_clip(&input, &ClipSpec { frames: 20, ..ClipSpec::default() }, "mp4v");
    let output = dir.path().join("out.mp4");
    let out =
        run_vpd(&["run", input.to_str().unwrap(), "-f", "edges", "-o", output.to_str().unwrap(), "--json", "-t", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty() || stderr(&out).contains("20 frames"), "{}", stderr(&out));
    let s: vpd::metrics::JobSummary = serde_json::from_slice(&out.stdout).expect("one JSON summary on stdout");
    assert_eq!((s.frames, s.failed_frames, s.width, s.height), (20, 0, 320, 240));
    assert_eq!(s.filters, "edges:low=50:high=150");
    assert_eq!(s.workers.values().sum::<u64>(), 20);
    assert!(s.workers.keys().all(|k| k.starts_with("local-")));
    assert!(s.fps > 0.0 && s.wall_seconds > 0.0);
    assert!(s.filter_latency_ms.p50 > 0.0 && s.filter_latency_ms.p50 <= s.filter_latency_ms.p99);
    assert!(s.latency_ms.p50 >= s.filter_latency_ms.p50, "dispatch-to-result includes filtering");
}

#[test]
fn quiet_prints_nothing_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    write_clip(&input, &ClipSpec { frames: 5, ..ClipSpec::default() }, "mp4v");
    let output = dir.path().join("out.mp4");
    let out = run_vpd(&["run", input.to_str().unwrap(), "-f", "blur", "-o", output.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success());
    assert_eq!(stderr(&out), "");
    assert!(out.stdout.is_empty());
}

#[test]
fn interrupt_cancels_the_job_and_removes_the_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mkv");
    write_clip(&input, &ClipSpec { frames: 150, width: 640, height: 480, ..ClipSpec::default() }, "FFV1");
    let output = dir.path().join("out.mp4");
    // A heavy blur on one thread keeps the job running well past the moment we interrupt it.
    let child = vpd()
        .args([
            "run",
            input.to_str().unwrap(),
            "-f",
            "blur:ksize=151,blur:ksize=151",
            "-t",
            "1",
            "-o",
            output.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    // The job writes its first segment into its checkpoint beside the output.
    let checkpoint = dir.path().join(".out.mp4.vpd-resume");
    let writing = || std::fs::read_dir(&checkpoint).is_ok_and(|d| d.count() > 0);
    assert!(wait_for(Duration::from_secs(20), writing), "the job never started");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    assert!(!output.exists(), "no output after a cancelled job");
    assert!(partial_files(dir.path()).is_empty(), "partial output removed");
    // What was committed is kept for --resume, and the user is told; a segment not yet
    // committed is not.
    if checkpoint.exists() {
        assert!(err.contains("--resume"), "{err}");
        let names: Vec<String> =
            std::fs::read_dir(&checkpoint).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(!names.iter().any(|n| n.ends_with(".partial")), "{names:?}");
    }
}

#[test]
fn the_sample_video_runs_through_every_filter() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("sample.mp4");
    let out = run_vpd(&[
        "run",
        asset("sample.mp4").to_str().unwrap(),
        "-f",
        "faces,motion,edges",
        "-o",
        output.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: vpd::metrics::JobSummary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((s.frames, s.failed_frames, s.width, s.height), (200, 0, 960, 540));
    assert_eq!(ffprobe(&output).frames, 200);
}

#[test]
fn a_preset_equals_its_chain_frame_for_frame_and_an_unknown_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClipSpec { frames: 12, width: 320, height: 240, fps: 25.0, face: false };
    let input = lossless_clip(dir.path(), &spec);
    let run = |args: &[&str], out: &str| {
        let output = dir.path().join(out);
        let mut argv = vec![
            "run",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
            "--codec",
            "ffv1",
            "--json",
            "--quiet",
        ];
        argv.extend_from_slice(args);
        (run_vpd(&argv), output)
    };
    let (by_name, preset_out) = run(&["--preset", "cinematic"], "preset.mkv");
    let (by_chain, chain_out) = run(&["-f", "denoise,grade:contrast=1.1:saturation=1.15,sharpen"], "chain.mkv");
    assert!(by_name.status.success() && by_chain.status.success(), "{}{}", stderr(&by_name), stderr(&by_chain));
    let (a, b) = (decode_all(&preset_out), decode_all(&chain_out));
    assert_eq!(a.len(), 12);
    assert!(a.iter().zip(&b).all(|(x, y)| max_diff(x, y) == 0.0), "the preset is its chain");
    // The summary shows the resolved chain.
    let summary: serde_json::Value = serde_json::from_slice(&by_name.stdout).unwrap();
    assert_eq!(
        summary["filters"],
        "denoise:size=5,grade:contrast=1.1:brightness=0:saturation=1.15:gamma=1:warmth=0,sharpen:amount=1:radius=1.5"
    );

    let (unknown, out) = run(&["--preset", "noir"], "noir.mkv");
    assert_eq!(unknown.status.code(), Some(2));
    let err = stderr(&unknown);
    assert!(err.contains("unknown preset 'noir' (known presets: anonymise, cinematic, security, sketch)"), "{err}");
    assert!(!out.exists());

    // A user preset from the configuration file, listed by `vpd presets`.
    let config = dir.path().join("vpd.toml");
    std::fs::write(&config, "[presets]\nnoir = \"grade:saturation=0\"\n").unwrap();
    let listed = vpd().args(["presets", "--config", config.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(text.lines().any(|l| l.starts_with("noir") && l.contains("config") && l.contains("grade:")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("cinematic") && l.contains("built-in")), "{text}");
    let (grey, out) = run(&["--preset", "noir", "--config", config.to_str().unwrap()], "grey.mkv");
    assert!(grey.status.success(), "{}", stderr(&grey));
    let frames = decode_all(&out);
    let bytes = frames[3].data_bytes().unwrap();
    assert!(bytes.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]), "noir is grey");
}

#[test]
fn a_batch_writes_each_input_reports_a_bad_one_and_a_rerun_skips_what_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let clips = dir.path().join("clips");
    std::fs::create_dir(&clips).unwrap();
    let spec = ClipSpec { frames: 8, width: 160, height: 120, fps: 25.0, face: false };
    for name in ["a", "c"] {
        write_clip(&clips.join(format!("{name}.mkv")), &spec, "FFV1");
    }
    std::fs::write(clips.join("b.mkv"), b"not a video: a corrupt file among good ones").unwrap();
    let out = dir.path().join("graded");
    std::fs::create_dir(&out).unwrap();
    let inputs: Vec<String> =
        ["a", "b", "c"].iter().map(|n| clips.join(format!("{n}.mkv")).display().to_string()).collect();
    let batch = || {
        let mut argv: Vec<&str> = vec!["run"];
        argv.extend(inputs.iter().map(String::as_str));
        argv.extend(["--preset", "sketch", "-o", out.to_str().unwrap(), "--codec", "ffv1", "--json"]);
        run_vpd(&argv)
    };

    let first = batch();
    assert_eq!(first.status.code(), Some(1), "a failed file fails the batch: {}", stderr(&first));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let rows = report["files"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let outcomes: Vec<&str> = rows.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["done", "failed", "done"]);
    assert!(rows[1]["error"].as_str().unwrap().contains("b.mkv"), "{}", rows[1]);
    assert_eq!((rows[0]["frames"].as_u64(), rows[2]["frames"].as_u64()), (Some(8), Some(8)));
    assert_eq!(
        (report["done"].as_u64(), report["failed"].as_u64(), report["frames"].as_u64()),
        (Some(2), Some(1), Some(16))
    );
    let err = stderr(&first);
    assert!(err.lines().any(|l| l.starts_with("failed") && l.contains("b.mkv")), "a line per file as it ends: {err}");
    assert!(err.contains("3 files: 2 done, 0 skipped, 1 failed"), "{err}");
    let mut written: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    written.sort();
    assert_eq!(written, ["a.mkv", "c.mkv"], "two outputs, nothing else");
    assert_eq!(ffprobe(&out.join("a.mkv")).frames, 8);

    // Again: the complete outputs are skipped and left as they are.
    let before = std::fs::metadata(out.join("a.mkv")).unwrap().modified().unwrap();
    let second = batch();
    assert_eq!(second.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    let outcomes: Vec<&str> =
        report["files"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["skipped", "failed", "skipped"]);
    assert_eq!(std::fs::metadata(out.join("a.mkv")).unwrap().modified().unwrap(), before, "not touched");

    // A batch needs a directory to write into.
    let r =
        run_vpd(&["run", &inputs[0], &inputs[2], "-f", "edges", "-o", dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2));
    assert!(stderr(&r).contains("a batch writes into a directory"), "{}", stderr(&r));
}

#[test]
fn ctrl_c_in_a_batch_keeps_what_finished_and_reports_the_rest() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let quick = ClipSpec { frames: 4, width: 160, height: 120, fps: 25.0, face: false };
    let slow = ClipSpec { frames: 400, width: 640, height: 480, fps: 25.0, face: false };
    write_clip(&dir.path().join("a.mkv"), &quick, "FFV1");
    write_clip(&dir.path().join("b.mkv"), &slow, "FFV1");
    write_clip(&dir.path().join("c.mkv"), &quick, "FFV1");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut child = vpd()
        .arg("run")
        .args(["a", "b", "c"].map(|n| dir.path().join(format!("{n}.mkv"))))
        .args(["-f", "blur:ksize=151", "--threads", "1", "--codec", "ffv1", "--json", "-o"])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // The event: the first file's line. Then Ctrl-C, while the second runs.
    let first = lines.find_map(|l| l.ok().filter(|l| l.starts_with("done"))).expect("the first file ends");
    assert!(first.contains("a.mkv"), "{first}");
    // The second has started once its checkpoint exists beside its output.
    assert!(wait_for(Duration::from_secs(30), || out.join(".b.mkv.vpd-resume").exists()), "b never started");
    crate::util::cluster::signal(&child, libc::SIGINT);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let outcomes: Vec<&str> =
        report["files"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["done", "cancelled", "not started"]);
    let kept: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(kept, ["a.mkv"], "what finished stays, nothing partial is left");
}

#[test]
fn scale_changes_the_outputs_size_with_its_aspect_kept() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClipSpec { frames: 6, width: 1280, height: 720, fps: 25.0, face: false };
    let input = lossless_clip(dir.path(), &spec);
    let output = dir.path().join("small.mp4");
    let out = run_vpd(&[
        "run",
        input.to_str().unwrap(),
        "-f",
        "scale:width=640",
        "-o",
        output.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let p = ffprobe(&output);
    assert_eq!((p.width, p.height, p.frames), (640, 360, 6));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((summary["width"].as_u64(), summary["height"].as_u64()), (Some(640), Some(360)));
}

/// Every count and duration a user types is bounded: out of range is a one-line usage error
/// that gives the range (exit 2), never an allocation failure, and leaves nothing behind.
#[test]
fn every_numeric_option_is_bounded_with_a_usage_error_that_gives_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let sample = asset("sample.mp4");
    let input = sample.to_str().unwrap();
    let out = format!("{d}/o.mp4");
    let run = |extra: &[&str]| -> Vec<String> {
        let mut a = vec!["run", input, "-f", "edges", "-o", &out];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect()
    };
    let client = |extra: &[&str]| -> Vec<String> {
        let mut a = vec!["client", input, "-f", "edges", "-o", &out, "--server", "127.0.0.1:1"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect()
    };
    let plain = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).collect() };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (run(&["--window", "1000000000"]), "--window must be between 1 and 4096 (got 1000000000)"),
        (run(&["--threads", "100000"]), "--threads must be between 1 and 1024"),
        (run(&["--keyint", "1000000"]), "--keyint must be between 1 and 100000"),
        (run(&["--segment-seconds", "1e9"]), "--segment-seconds must be between 0.1 and 3600"),
        (run(&["--crf", "4000000000"]), "4000000000 is not in 0..=63"),
        (client(&["--wait", "1000000"]), "1000000 is not in 0..=86400"),
        (client(&["--jobs", "0"]), "invalid value '0' for '--jobs <N>'"),
        (plain(&["server", "--max-jobs", "100000"]), "--max-jobs must be between 1 and 1024"),
        (plain(&["server", "--window", "5000"]), "--window must be between 1 and 4096"),
        (plain(&["server", "--redispatch-after", "1e12"]), "--redispatch-after must be between 0.1 and 86400"),
        (
            plain(&["worker", "--amqp", "amqp://127.0.0.1:1", "--threads", "5000"]),
            "--threads must be between 1 and 1024",
        ),
        (plain(&["worker", "--max-frame-pixels", "8193x8192"]), "out of range: 1 to 67108864 (8192x8192)"),
        (plain(&["jobs", "--limit", "0"]), "0 is not in 1..=10000"),
    ];
    for (args, expected) in cases {
        let got = vpd().args(&args).current_dir(dir.path()).output().unwrap();
        let err = stderr(&got);
        assert_eq!(got.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{args:?}: {err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}
