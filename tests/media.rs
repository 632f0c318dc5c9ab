//! Media through FFmpeg's libraries (issue 8): real files made by FFmpeg's command line,
//! processed by `vpd run` (and the server), checked with ffprobe and decoded frame by frame.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::cluster::*;
use crate::util::*;

/// Makes a clip with FFmpeg: `inputs` are its input arguments (lavfi sources), `rest` the
/// encoding arguments.
fn ffmpeg(inputs: &[&str], rest: &[&str], out: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(inputs)
        .args(rest)
        .arg(out)
        .status()
        .expect("ffmpeg (Debian package ffmpeg) is installed");
    assert!(status.success(), "ffmpeg could not make {}", out.display());
}

/// ffprobe's JSON for `path` with `entries` (`-show_entries`).
fn probe(path: &Path, entries: &str) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries", entries, "-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Presentation times of the video packets, sorted.
fn video_pts(path: &Path) -> Vec<f64> {
    let v = {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time", "-of", "json"])
            .arg(path)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let mut pts: Vec<f64> =
        v["packets"].as_array().unwrap().iter().map(|p| p["pts_time"].as_str().unwrap().parse().unwrap()).collect();
    pts.sort_by(f64::total_cmp);
    pts
}

fn run(args: &[&str]) -> std::process::Output {
    let out = run_vpd(args);
    assert!(out.status.success(), "vpd {args:?}: {}", stderr(&out));
    out
}

/// A 2 s 320x240 clip at 25 fps with a 440 Hz tone: H.264 and AAC in MP4.
fn clip_with_tone(dir: &Path) -> std::path::PathBuf {
    let input = dir.join("tone.mp4");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
        ],
        &["-t", "2", "-c:v", "libx264", "-c:a", "aac", "-metadata", "title=vpd test", "-shortest"],
        &input,
    );
    input
}

#[test]
fn every_codec_round_trips_in_its_container() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip_with_tone(dir.path());
    for (codec, ext, name) in [
        ("h264", "mp4", "h264"),
        ("hevc", "mkv", "hevc"),
        ("vp9", "webm", "vp9"),
        ("av1", "mkv", "av1"),
        ("ffv1", "mkv", "ffv1"),
        ("mpeg4", "mp4", "mpeg4"),
        ("mjpeg", "avi", "mjpeg"),
        ("avc1", "mov", "h264"),
    ] {
        let output = dir.path().join(format!("out-{codec}.{ext}"));
        run(&["run", input.to_str().unwrap(), "-f", "edges", "-o", output.to_str().unwrap(), "--codec", codec, "-q"]);
        let p = ffprobe(&output);
        assert_eq!((p.codec.as_str(), p.frames, p.width, p.height), (name, 50, 320, 240), "{codec}");
    }
}

#[test]
fn the_default_output_is_h264_with_the_audio_copied_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip_with_tone(dir.path());
    let output = dir.path().join("out.mp4");
    run(&["run", input.to_str().unwrap(), "-f", "blur", "-o", output.to_str().unwrap(), "-q"]);
    let v = probe(&output, "stream=codec_name,codec_type,pix_fmt,nb_read_frames:format=duration:format_tags=title");
    let streams = v["streams"].as_array().unwrap();
    assert_eq!(streams[0]["codec_name"], "h264");
    assert_eq!(streams[0]["pix_fmt"], "yuv420p", "plays in any browser");
    assert_eq!(streams[1]["codec_type"], "audio");
    assert_eq!(audio_md5(&output), audio_md5(&input), "the audio packets are the input's");
    assert_eq!(v["format"]["tags"]["title"], "vpd test", "container metadata is kept");
    // The duration matches the input's to within a frame.
    let duration =
        |p: &Path| probe(p, "format=duration")["format"]["duration"].as_str().unwrap().parse::<f64>().unwrap();
    assert!((duration(&output) - duration(&input)).abs() <= 0.04, "{} against {}", duration(&output), duration(&input));
    // The index is at the front (faststart): `moov` before `mdat`.
    let bytes = std::fs::read(&output).unwrap();
    let at = |atom: &[u8]| bytes.windows(4).position(|w| w == atom).unwrap();
    assert!(at(b"moov") < at(b"mdat"), "moov at {}, mdat at {}", at(b"moov"), at(b"mdat"));
}

#[test]
fn audio_a_container_cannot_hold_is_re_encoded_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip_with_tone(dir.path());
    let output = dir.path().join("out.webm");
    let r =
        run(&["run", input.to_str().unwrap(), "-f", "blur", "-o", output.to_str().unwrap(), "--codec", "vp9", "-q"]);
    assert!(stderr(&r).contains("a webm file cannot hold stream #1 (aac): re-encoding it"), "{}", stderr(&r));
    let v = probe(&output, "stream=codec_name,nb_read_frames:format=duration");
    let streams = v["streams"].as_array().unwrap();
    assert_eq!((streams[0]["codec_name"].as_str(), streams[1]["codec_name"].as_str()), (Some("vp9"), Some("opus")));
    let duration: f64 = v["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((duration - 2.0).abs() <= 0.04, "{duration}");
    // The audio decodes, all of it: 2 s of Opus is 100 frames of 20 ms (one more for the padding).
    let opus_frames: u64 = streams[1]["nb_read_frames"].as_str().unwrap().parse().unwrap();
    assert!((100..=101).contains(&opus_frames), "{opus_frames}");
}

#[test]
fn a_variable_frame_rate_keeps_every_timestamp_in_every_container() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("vfr.mkv");
    // A phone's clip: about 30 fps, each frame a few milliseconds early or late, and a
    // half-second gap after frame 10 where it paused; times off any frame grid.
    ffmpeg(
        &["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"],
        &[
            "-vf",
            "setpts='(N/30+0.006*mod(7*N,5)+if(gt(N,10),0.5,0))/TB'",
            "-frames:v",
            "30",
            "-c:v",
            "libx264",
            "-fps_mode",
            "passthrough",
        ],
        &input,
    );
    let want = video_pts(&input);
    // Every container vpd writes that keeps frame times (AVI indexes frames, not times).
    for (ext, codec) in [("mkv", "h264"), ("mp4", "h264"), ("mov", "h264"), ("ts", "h264"), ("webm", "vp9")] {
        let output = dir.path().join(format!("out.{ext}"));
        let o = output.to_str().unwrap();
        run(&["run", input.to_str().unwrap(), "-f", "edges", "-o", o, "--codec", codec, "-q"]);
        let got = video_pts(&output);
        assert_eq!(got.len(), 30, "{ext}");
        // MPEG-TS starts its clock at 1.4 s: compare times from the first frame.
        let (w0, g0) = (want[0], got[0]);
        for (w, g) in want.iter().zip(&got) {
            assert!(((w - w0) - (g - g0)).abs() < 0.002, "{ext}: {want:?} against {got:?}");
        }
    }
}

#[test]
fn mpeg_ts_holds_h264_and_the_audio_in_a_file_and_on_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip_with_tone(dir.path());
    let output = dir.path().join("out.ts");
    run(&["run", input.to_str().unwrap(), "-f", "edges", "-o", output.to_str().unwrap(), "-q"]);
    let v = probe(&output, "stream=codec_name,codec_type,nb_read_frames:format=format_name");
    assert_eq!(v["format"]["format_name"], "mpegts");
    let streams = v["streams"].as_array().unwrap();
    assert_eq!((streams[0]["codec_name"].as_str(), streams[0]["nb_read_frames"].as_str()), (Some("h264"), Some("50")));
    assert_eq!(streams[1]["codec_name"], "aac", "the audio is kept");
    // The same to standard output, as a live tool would read it.
    let piped = dir.path().join("piped.ts");
    let out = vpd()
        .args(["run", input.to_str().unwrap(), "-f", "edges", "-o", "-", "--format", "mpegts", "-q"])
        .stdout(std::fs::File::create(&piped).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ffprobe(&piped).frames, 50);
    assert_eq!(audio_md5(&piped), audio_md5(&output));
    // What MPEG-TS cannot hold is still refused before any work.
    let out =
        run_vpd(&["run", input.to_str().unwrap(), "-f", "edges", "-o", output.to_str().unwrap(), "--codec", "ffv1"]);
    assert_eq!(stderr(&out).trim(), "vpd: the mpegts container cannot hold codec ffv1");
}

#[test]
fn rotated_input_is_turned_upright_and_colour_and_chapters_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let plain = clip_with_tone(dir.path());
    let input = dir.path().join("rotated.mkv");
    let chapters = dir.path().join("chapters.txt");
    std::fs::write(&chapters, ";FFMETADATA1\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=1000\ntitle=Intro\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=1000\nEND=2000\ntitle=Rest\n").unwrap();
    ffmpeg(
        &["-i", plain.to_str().unwrap(), "-i", chapters.to_str().unwrap()],
        &[
            "-map_metadata",
            "1",
            "-map",
            "0",
            "-c:a",
            "copy",
            "-c:v",
            "libx264",
            "-color_primaries",
            "bt709",
            "-color_trc",
            "bt709",
            "-colorspace",
            "bt709",
        ],
        &input,
    );
    let rotated = dir.path().join("rotated.mp4");
    ffmpeg(&["-i", input.to_str().unwrap()], &["-c", "copy", "-metadata:s:v:0", "rotate=90"], &rotated);
    let output = dir.path().join("out.mp4");
    run(&["run", rotated.to_str().unwrap(), "-f", "blur", "-o", output.to_str().unwrap(), "-q"]);
    let v = probe(&output, "stream=width,height,color_space,color_primaries,color_transfer:stream_side_data=rotation");
    let video = &v["streams"][0];
    // Upright: portrait, as players show the input, and no display matrix to turn it again.
    assert_eq!((video["width"].as_u64(), video["height"].as_u64()), (Some(240), Some(320)), "{v}");
    assert!(video["side_data_list"].is_null(), "{v}");
    // Turned the way FFmpeg's command line turns it: vpd's frames equal FFmpeg's, decoded
    // losslessly through an identity filter.
    let (ours, theirs) = (dir.path().join("ours.mkv"), dir.path().join("theirs.mkv"));
    run(&[
        "run",
        rotated.to_str().unwrap(),
        "-f",
        "blur:ksize=1",
        "-o",
        ours.to_str().unwrap(),
        "--codec",
        "ffv1",
        "-q",
    ]);
    ffmpeg(&["-i", rotated.to_str().unwrap()], &["-an", "-c:v", "ffv1", "-pix_fmt", "bgr0"], &theirs);
    let (ours, theirs) = (decode_all(&ours), decode_all(&theirs));
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(max_diff(a, b) <= 2.0, "frame {i} differs from FFmpeg's upright frame by {}", max_diff(a, b));
    }
    assert_eq!(
        (video["color_space"].as_str(), video["color_primaries"].as_str()),
        (Some("bt709"), Some("bt709")),
        "{v}"
    );
    // Chapters, through a container that holds them.
    let out_mkv = dir.path().join("out.mkv");
    run(&["run", input.to_str().unwrap(), "-f", "blur", "-o", out_mkv.to_str().unwrap(), "-q"]);
    let c = probe(&out_mkv, "chapter=start_time:chapter_tags=title");
    let titles: Vec<&str> =
        c["chapters"].as_array().unwrap().iter().map(|c| c["tags"]["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["Intro", "Rest"]);
}

/// Frames too small for FFV1's 16 slices (it refuses a grid wider than a plane) are written
/// with fewer: 1×1 in BGR and 4:4:4, 2×2 and 6×6 in 4:2:0; 8×8 takes the full 16.
#[test]
fn tiny_frames_are_written_in_ffv1() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h, pix) in [(1, 1, "bgr0"), (1, 1, "yuv444p"), (2, 2, "yuv420p"), (6, 6, "yuv420p"), (8, 8, "yuv420p")] {
        let raw = dir.path().join(format!("{w}x{h}.rgb"));
        let bytes: Vec<u8> = (0..w * h * 3 * 5).map(|i| (i * 37 % 251) as u8).collect();
        let (w, h) = (w as u32, h as u32);
        std::fs::write(&raw, bytes).unwrap();
        let input = dir.path().join(format!("{w}x{h}-{pix}.mkv"));
        let size = format!("{w}x{h}");
        ffmpeg(
            &["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", &size, "-r", "25", "-i", raw.to_str().unwrap()],
            &["-pix_fmt", pix, "-c:v", "ffv1"],
            &input,
        );
        let out = dir.path().join(format!("out-{w}x{h}-{pix}.mkv"));
        let (input, output) = (input.to_str().unwrap(), out.to_str().unwrap());
        run(&["run", input, "-f", "blur:ksize=3", "-o", output, "--codec", "ffv1", "--pix-fmt", pix, "-q"]);
        let p = ffprobe(&out);
        assert_eq!((p.width, p.height, p.frames), (w, h, 5), "{size} {pix}");
    }
}

#[test]
fn ten_bit_and_odd_sized_inputs_are_processed() {
    let dir = tempfile::tempdir().unwrap();
    let ten = dir.path().join("ten.mkv");
    ffmpeg(
        &["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"],
        &["-t", "1", "-pix_fmt", "yuv420p10le", "-c:v", "libx265", "-x265-params", "log-level=error"],
        &ten,
    );
    let out = dir.path().join("ten-out.mkv");
    run(&["run", ten.to_str().unwrap(), "-f", "edges", "-o", out.to_str().unwrap(), "-q"]);
    assert_eq!(ffprobe(&out).frames, 25);

    let odd = dir.path().join("odd.mkv");
    ffmpeg(
        &["-f", "lavfi", "-i", "testsrc2=size=322x242:rate=25,format=yuv444p,crop=321:241:0:0"],
        &["-t", "1", "-c:v", "ffv1"],
        &odd,
    );
    // Kept where the pixel format allows it (FFV1 in BGR, or 4:4:4)…
    for (codec, pix) in [("ffv1", None), ("h264", Some("yuv444p"))] {
        let out = dir.path().join(format!("odd-{codec}.mkv"));
        let mut args =
            vec!["run", odd.to_str().unwrap(), "-f", "blur", "-o", out.to_str().unwrap(), "--codec", codec, "-q"];
        if let Some(p) = pix {
            args.extend(["--pix-fmt", p]);
        }
        run(&args);
        let p = ffprobe(&out);
        assert_eq!((p.width, p.height, p.frames), (321, 241, 25), "{codec}");
    }
    // …and where 4:2:0 cannot hold it, the last column and row go, with a word about it: one,
    // however many segments (here five) the output is encoded in.
    let out = dir.path().join("odd-420.mp4");
    let odd_arg = odd.to_str().unwrap();
    let r = run(&["run", odd_arg, "-f", "blur", "-o", out.to_str().unwrap(), "-q", "--segment-seconds", "0.2"]);
    assert_eq!(stderr(&r).matches("321x241 is odd").count(), 1, "{}", stderr(&r));
    let p = ffprobe(&out);
    assert_eq!((p.width, p.height), (320, 240));
}

#[test]
fn standard_input_to_standard_output_and_a_named_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip_with_tone(dir.path());
    // ffmpeg -i clip -f nut - | vpd run - -f edges -o - --format nut > out.nut
    let mut source = Command::new("ffmpeg")
        .args(["-v", "error", "-i", input.to_str().unwrap(), "-c", "copy", "-f", "nut", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let output = dir.path().join("piped.nut");
    let vpd_out = vpd()
        .args(["run", "-", "-f", "edges", "-o", "-", "--format", "nut", "-q"])
        .stdin(source.stdout.take().unwrap())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(source.wait().unwrap().success());
    assert!(vpd_out.status.success(), "{}", stderr(&vpd_out));
    assert_eq!(ffprobe(&output).frames, 50);
    assert_eq!(audio_md5(&output), audio_md5(&input));

    // A named pipe, written by FFmpeg while vpd reads it.
    let fifo = dir.path().join("in.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut writer = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i", input.to_str().unwrap(), "-c", "copy", "-f", "matroska"])
        .arg(&fifo)
        .spawn()
        .unwrap();
    let out = dir.path().join("from-fifo.mkv");
    run(&["run", fifo.to_str().unwrap(), "-f", "edges", "-o", out.to_str().unwrap(), "-q"]);
    assert!(writer.wait().unwrap().success());
    assert_eq!(ffprobe(&out).frames, 50);
}

#[test]
fn a_closed_output_pipe_is_an_error_that_says_the_stream_is_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip_with_tone(dir.path());
    let mut child = vpd()
        .args(["run", input.to_str().unwrap(), "-f", "edges", "-o", "-", "--format", "nut", "--codec", "ffv1", "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read a little, then hang up, as `| head -c` would.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 4096];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the output stream closed after") && stderr(&out).contains("incomplete"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unusable_inputs_and_encoders_are_clear_errors_that_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip_with_tone(dir.path());
    let audio_only = dir.path().join("audio.m4a");
    ffmpeg(&["-i", input.to_str().unwrap()], &["-vn", "-c:a", "copy"], &audio_only);
    let long = dir.path().join("long.mkv");
    ffmpeg(&["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"], &["-t", "8", "-c:v", "libx264"], &long);
    let bytes = std::fs::read(&long).unwrap();
    let truncated = dir.path().join("truncated.mkv");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("o.mp4");
    for (args, message) in [
        (vec![audio_only.to_str().unwrap(), "-o", out.to_str().unwrap()], "audio.m4a: has no video stream"),
        (vec![truncated.to_str().unwrap(), "-o", out.to_str().unwrap()], "truncated.mkv: truncated or corrupt"),
        (vec![input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--codec", "h266"], "unknown encoder 'h266'"),
        (
            vec![input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--codec", "mpeg4", "--crf", "20"],
            "--crf does not apply to mpeg4",
        ),
        (vec![input.to_str().unwrap(), "-o", "-"], "no file extension to pick the container by"),
        (
            vec![input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--encoder-preset", "nonsense"],
            "h264 does not take --encoder-preset nonsense (it takes ultrafast,",
        ),
        (
            vec![input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--codec", "mpeg4", "--encoder-preset", "slow"],
            "--encoder-preset does not apply to mpeg4",
        ),
    ] {
        let mut full = vec!["run", "-f", "edges", "-q"];
        full.extend(args);
        let r = run_vpd(&full);
        assert!(!r.status.success(), "{full:?}");
        let err = stderr(&r);
        // One line saying what is wrong (a usage error adds clap's pointer to --help).
        let first = err.lines().next().unwrap_or_default();
        assert!(first.contains(message), "{full:?}: {err}");
        assert!(err.lines().filter(|l| !l.is_empty() && !l.starts_with("For more information")).count() == 1, "{err}");
        assert_eq!(files_in(&out_dir), Vec::<String>::new(), "{full:?} left output behind");
    }
}

#[test]
fn the_server_encodes_with_the_clients_options_and_keeps_the_audio() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip_with_tone(dir.path());
    let server = Server::start(&["--listen", "127.0.0.1:0", "--threads", "2"]);
    let output = dir.path().join("out.mkv");
    let out = run_vpd(&[
        "client",
        input.to_str().unwrap(),
        "--server",
        &server.addr(),
        "-f",
        "edges",
        "-o",
        output.to_str().unwrap(),
        "--codec",
        "hevc",
        "--crf",
        "30",
        "--encoder-preset",
        "fast",
        "--json",
    ]);
    let s = summary(&out);
    assert_eq!((s.frames, s.codec.as_str()), (50, "hevc"));
    assert_eq!(ffprobe(&output).codec, "hevc");
    assert_eq!(audio_md5(&output), audio_md5(&input));
    // An encoder this machine lacks is refused before anything is uploaded.
    let r = run_vpd(&[
        "client",
        input.to_str().unwrap(),
        "--server",
        "127.0.0.1:1",
        "-f",
        "edges",
        "-o",
        output.to_str().unwrap(),
        "--codec",
        "h266",
    ]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("unknown encoder 'h266'"), "{}", stderr(&r));
}

#[test]
fn run_and_server_with_workers_give_the_same_h264_frames_and_bytes() {
    let ns = Namespace::new("media-h264");
    let dir = tempfile::tempdir().unwrap();
    let input = clip_with_tone(dir.path());
    let local = dir.path().join("run.mp4");
    run(&["run", input.to_str().unwrap(), "-f", "blur:ksize=5,edges", "-o", local.to_str().unwrap(), "-q"]);
    let server = Server::on_broker(&ns, &[]);
    let _workers = [Worker::start(&ns, 1), Worker::start(&ns, 1)];
    ns.wait_for_workers(2);
    let remote = dir.path().join("remote.mp4");
    let out = run_vpd(&[
        "client",
        input.to_str().unwrap(),
        "--server",
        &server.addr(),
        "-f",
        "blur:ksize=5,edges",
        "-o",
        remote.to_str().unwrap(),
        "-q",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (a, b) = (decode_all(&local), decode_all(&remote));
    assert_eq!(a.len(), 50);
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(max_diff(x, y), 0.0, "frame {i} differs between vpd run and the distributed path");
    }
    // The same bytes of video, too: x264 is repeatable off AVX-512 (media/codec.rs).
    let md5 = |p: &Path| {
        let o = Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(p)
            .args(["-map", "0:v", "-c", "copy", "-f", "md5", "-"])
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(md5(&local), md5(&remote));
}

#[test]
fn h264_output_does_not_depend_on_what_the_heap_held_before() {
    // x264's AVX-512 code reads heap memory it never wrote. Whatever earlier allocations left
    // there (here, glibc's debugging fill, set to three different bytes) must not change the
    // output: vpd keeps x264 off AVX-512 (media/codec.rs), so the same job gives the same bytes
    // under any load. With it on, each fill gives its own stream on a CPU with AVX-512.
    let dir = tempfile::tempdir().unwrap();
    let input = clip_with_tone(dir.path());
    let md5s: BTreeSet<String> = ["165", "90", "1"]
        .iter()
        .map(|fill| {
            let output = dir.path().join(format!("out{fill}.mp4"));
            let out = vpd()
                .env("MALLOC_PERTURB_", fill)
                .args(["run", input.to_str().unwrap(), "-f", "blur:ksize=3", "-o", output.to_str().unwrap(), "-q"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
            let o = Command::new("ffmpeg")
                .args(["-v", "error", "-i"])
                .arg(&output)
                .args(["-map", "0:v", "-c", "copy", "-f", "md5", "-"])
                .output()
                .unwrap();
            String::from_utf8(o.stdout).unwrap()
        })
        .collect();
    assert_eq!(md5s.len(), 1, "{md5s:?}");
}

/// A named pipe no one writes to: vpd says it is waiting for a writer, and the first Ctrl-C
/// ends it, leaving nothing.
#[test]
fn a_named_pipe_without_a_writer_is_announced_and_one_ctrl_c_ends_the_wait() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("in.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let out = dir.path().join("out.mp4");
    let child = vpd()
        .args(["run", fifo.to_str().unwrap(), "-f", "edges", "-o", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let mut lines = std::io::BufReader::new(child.0.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, format!("vpd: waiting for a writer on the named pipe {} (Ctrl-C stops)", fifo.display()));
    // SAFETY: signalling our own child, once.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let ended = wait_for(std::time::Duration::from_secs(10), || child.0.try_wait().unwrap().is_some());
    assert!(ended, "one Ctrl-C did not end the wait");
    assert!(!child.0.wait().unwrap().success());
    assert_eq!(files_in(dir.path()), ["in.fifo"], "nothing left beside the pipe");
}
