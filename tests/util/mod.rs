//! Helpers for the integration tests: generated clips, decoding, ffprobe, the vpd binary.

#![allow(dead_code)] // each test module uses a different part of this

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use opencv::core::{self, CV_8UC3, Mat, Point, Rect, Scalar, Size};
use opencv::imgcodecs;
use opencv::imgproc;
use opencv::prelude::*;
use vpd::media::{MediaSink, MediaSource, OutputOptions};
use vpd::pipeline::{FrameSink, FrameSource};

pub mod cluster;
pub mod raw;
pub mod web;

/// The `vpd` binary cargo built for these tests, or `VPD_TEST_BIN` (to run the suite against
/// another build: an installed vpd, or an older one that a regression test must fail on).
pub fn vpd() -> Command {
    let bin = std::env::var_os("VPD_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_vpd").into());
    let mut cmd = Command::new(bin);
    cmd.env_remove("VPD_CONFIG").env_remove("VPD_FACE_CASCADE").env_remove("RUST_LOG");
    // A server's job store goes where its test says (`--state-dir`), else into cargo's scratch
    // space for tests, never into the home directory of whoever runs them.
    cmd.env_remove("STATE_DIRECTORY").env_remove("VPD_STATE_DIR").env("XDG_STATE_HOME", env!("CARGO_TARGET_TMPDIR"));
    cmd
}

/// Runs `vpd` with `args` to completion.
pub fn run_vpd(args: &[&str]) -> Output {
    vpd().args(args).stdin(Stdio::null()).output().expect("running vpd")
}

/// Text of a finished process's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A file under `assets/`.
pub fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets").join(name)
}

/// What a generated clip looks like.
#[derive(Debug, Clone, Copy)]
pub struct ClipSpec {
    /// Frames.
    pub frames: u32,
    /// Width in pixels.
    pub width: i32,
    /// Height in pixels.
    pub height: i32,
    /// Frame rate.
    pub fps: f64,
    /// Paste the astronaut portrait (a real face) into each frame.
    pub face: bool,
}

impl Default for ClipSpec {
    fn default() -> Self {
        ClipSpec { frames: 30, width: 320, height: 240, fps: 24.0, face: false }
    }
}

/// Frame `i` of a clip: a textured static background, a square moving a few pixels a frame,
/// the frame index as a 16-bit barcode along the top, and optionally a drifting real face.
pub fn synth_frame(spec: &ClipSpec, i: u32) -> Mat {
    let (w, h) = (spec.width, spec.height);
    let mut m = Mat::new_rows_cols_with_default(h, w, CV_8UC3, Scalar::all(0.0)).unwrap();
    for y in (0..h).step_by(20) {
        for x in (0..w).step_by(20) {
            let shade = f64::from((x * 7 + y * 13) % 160 + 40);
            let cell = Rect::new(x, y, 20.min(w - x), 20.min(h - y));
            imgproc::rectangle(
                &mut m,
                cell,
                Scalar::new(shade, 255.0 - shade, (shade * 2.0) % 255.0, 0.0),
                -1,
                imgproc::LINE_8,
                0,
            )
            .unwrap();
        }
    }
    imgproc::put_text(
        &mut m,
        "vpd",
        Point::new(w / 3, h / 2),
        imgproc::FONT_HERSHEY_SIMPLEX,
        1.5,
        Scalar::all(255.0),
        3,
        imgproc::LINE_8,
        false,
    )
    .unwrap();
    if spec.face {
        let side = (h * 3 / 5).min(w / 2);
        let mut face = Mat::default();
        imgproc::resize(&astronaut(), &mut face, Size::new(side, side), 0.0, 0.0, imgproc::INTER_AREA).unwrap();
        let x = (i as i32 * 2) % (w - side);
        face.copy_to(&mut m.roi_mut(Rect::new(x, h - side, side, side)).unwrap()).unwrap();
    }
    let sq = 36;
    let x = (10 + i as i32 * 6) % (w - sq);
    let y = (30 + i as i32 * 4) % (h - sq - 20) + 20;
    imgproc::rectangle(&mut m, Rect::new(x, y, sq, sq), Scalar::new(30.0, 30.0, 220.0, 0.0), -1, imgproc::LINE_8, 0)
        .unwrap();
    for bit in 0..16 {
        let on = (i >> bit) & 1 == 1;
        let cell = Rect::new(bit * 8, 0, 8, 8);
        imgproc::rectangle(&mut m, cell, Scalar::all(if on { 255.0 } else { 0.0 }), -1, imgproc::LINE_8, 0).unwrap();
    }
    m
}

/// Reads the barcode `synth_frame` draws; survives lossy codecs.
pub fn frame_number(m: &Mat) -> u32 {
    (0..16)
        .map(|bit| {
            let px = m.at_2d::<core::Vec3b>(4, bit * 8 + 4).unwrap();
            u32::from(px[0] > 127) << bit
        })
        .sum()
}

/// Writes a clip to `path` with `codec` (a vpd codec name: `ffv1`, `mpeg4`, `h264`, …; the
/// container follows the extension), through vpd's own writer.
pub fn write_clip(path: &Path, spec: &ClipSpec, codec: &str) {
    let options = OutputOptions { codec: codec.parse().unwrap(), ..OutputOptions::default() };
    let mut sink = MediaSink::for_frames(path, &options, spec.width as u32, spec.height as u32, spec.fps)
        .unwrap_or_else(|e| panic!("cannot write test clip {}: {e}", path.display()));
    for i in 0..spec.frames {
        sink.write(&synth_frame(spec, i)).unwrap();
    }
    sink.finish().unwrap();
}

/// Every frame of a video, decoded as vpd decodes.
pub fn decode_all(path: &Path) -> Vec<Mat> {
    let mut source = MediaSource::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut frames = Vec::new();
    while let Some(frame) = source.next_frame().unwrap() {
        frames.push(frame);
    }
    frames
}

/// The largest per-pixel difference between two frames (0: identical).
pub fn max_diff(a: &Mat, b: &Mat) -> f64 {
    assert_eq!(a.size().unwrap(), b.size().unwrap());
    core::norm2(a, b, core::NORM_INF, &core::no_array()).unwrap()
}

/// NASA's public-domain astronaut portrait.
pub fn astronaut() -> Mat {
    let m = imgcodecs::imread(asset("astronaut.jpg").to_str().unwrap(), imgcodecs::IMREAD_COLOR).unwrap();
    assert!(!m.empty());
    m
}

/// What ffprobe, independent of OpenCV, says about a video's first stream.
#[derive(Debug, PartialEq)]
pub struct Probe {
    /// Codec name as FFmpeg calls it.
    pub codec: String,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Frame rate as a fraction, e.g. "24/1".
    pub rate: String,
    /// Frames actually decoded.
    pub frames: u64,
}

/// Decodes every frame of `path` with ffprobe and reports the stream.
pub fn ffprobe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args(["-show_entries", "stream=codec_name,width,height,r_frame_rate,nb_read_frames", "-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe (Debian package ffmpeg) is installed");
    assert!(out.status.success(), "ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    Probe {
        codec: s["codec_name"].as_str().unwrap().to_string(),
        width: s["width"].as_u64().unwrap() as u32,
        height: s["height"].as_u64().unwrap() as u32,
        rate: s["r_frame_rate"].as_str().unwrap().to_string(),
        frames: s["nb_read_frames"].as_str().unwrap().parse().unwrap(),
    }
}

/// Files vpd may leave behind in `dir` (its hidden partial outputs).
pub fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("vpd-partial"))
        .collect()
}

/// Polls `cond` until it holds or `timeout` passes; the last resort where no event exists
/// to wait on (another process's files).
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A small file system (tmpfs of `size`, e.g. `1m`), mounted for one test and unmounted after
/// it; `None` where mounting is not allowed (not root).
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    pub fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        out.status.success().then(|| SmallDisk(at.to_path_buf()))
    }

    /// Makes it `size` large, keeping what it holds.
    pub fn resize(&self, size: &str) {
        let out = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The MD5 of `path`'s audio packets, copied out as they are.
pub fn audio_md5(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:a", "-c", "copy", "-f", "md5", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
