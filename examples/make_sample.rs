//! Builds `assets/sample.mp4` from the two public-domain photos in `assets/`:
//! the astronaut portrait glides across the rocket-launch photo while a ball bounces around,
//! so `edges` has structure, `faces` a real face and `motion` two moving things.
//!
//! The video is encoded by vpd's own writer (H.264); then FFmpeg's command line adds an audio
//! track it generates: a 440 Hz tone with an 880 Hz beep each second, AAC, so that `make run`
//! shows the audio being kept.
//!
//! `cargo run --release --example make_sample [OUT]` (see assets/README.md).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};
use opencv::core::{Mat, Point, Rect, Scalar, Size};
use opencv::imgcodecs;
use opencv::imgproc;
use opencv::prelude::*;
use vpd::media::{MediaSink, OutputOptions};
use vpd::pipeline::FrameSink;

const WIDTH: i32 = 960;
const HEIGHT: i32 = 540;
const FPS: f64 = 25.0;
const SECONDS: f64 = 8.0;
const PORTRAIT: i32 = 280;
const BALL_RADIUS: i32 = 28;

fn main() -> anyhow::Result<()> {
    let assets = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");
    let out = std::env::args().nth(1).unwrap_or_else(|| format!("{assets}/sample.mp4"));

    let background = cover(&read(&format!("{assets}/rocket.jpg"))?, Size::new(WIDTH, HEIGHT))?;
    let mut portrait = Mat::default();
    imgproc::resize(
        &read(&format!("{assets}/astronaut.jpg"))?,
        &mut portrait,
        Size::new(PORTRAIT, PORTRAIT),
        0.0,
        0.0,
        imgproc::INTER_AREA,
    )?;

    let video_only = format!("{out}.video.mp4");
    let options = OutputOptions { preset: Some("slow".into()), crf: Some(26), ..OutputOptions::default() };
    let mut writer = MediaSink::for_frames(Path::new(&video_only), &options, WIDTH as u32, HEIGHT as u32, FPS)?;

    let frames = (FPS * SECONDS) as i32;
    let (mut bx, mut by, mut vx, mut vy) = (120, 100, 7, 5);
    for i in 0..frames {
        let mut frame = background.try_clone()?;
        // The portrait eases from left to right and back, over the whole clip.
        let t = f64::from(i) / f64::from(frames - 1);
        let travel = f64::from(WIDTH - PORTRAIT - 80);
        let x = 40 + (travel * (1.0 - (t * std::f64::consts::TAU).cos()) / 2.0) as i32;
        let y = HEIGHT - PORTRAIT - 40;
        portrait.copy_to(&mut frame.roi_mut(Rect::new(x, y, PORTRAIT, PORTRAIT))?)?;
        imgproc::rectangle(
            &mut frame,
            Rect::new(x - 3, y - 3, PORTRAIT + 6, PORTRAIT + 6),
            Scalar::all(245.0),
            3,
            imgproc::LINE_AA,
            0,
        )?;

        bx += vx;
        by += vy;
        if !(BALL_RADIUS..=WIDTH - BALL_RADIUS).contains(&bx) {
            vx = -vx;
            bx += 2 * vx;
        }
        if !(BALL_RADIUS..=HEIGHT / 2).contains(&by) {
            vy = -vy;
            by += 2 * vy;
        }
        imgproc::circle(
            &mut frame,
            Point::new(bx, by),
            BALL_RADIUS,
            Scalar::new(0.0, 140.0, 255.0, 0.0),
            -1,
            imgproc::LINE_AA,
            0,
        )?;
        imgproc::put_text(
            &mut frame,
            "vpd sample",
            Point::new(WIDTH - 230, 50),
            imgproc::FONT_HERSHEY_SIMPLEX,
            1.1,
            Scalar::all(255.0),
            2,
            imgproc::LINE_AA,
            false,
        )?;
        writer.write(&frame)?;
    }
    writer.finish()?;
    let tone = format!("sine=frequency=440:beep_factor=2:sample_rate=48000:duration={SECONDS}");
    let muxed = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i", &video_only, "-f", "lavfi", "-i", &tone])
        .args(["-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-b:a", "64k", "-ac", "1"])
        .args(["-metadata:s:a:0", "language=eng", "-movflags", "+faststart", "-shortest", &out])
        .status()
        .context("running ffmpeg (Debian package ffmpeg) to add the audio track")?;
    std::fs::remove_file(&video_only)?;
    ensure!(muxed.success(), "ffmpeg could not add the audio track");
    println!("wrote {out}: {frames} frames, {WIDTH}x{HEIGHT} at {FPS} fps, with a {SECONDS} s tone");
    Ok(())
}

fn read(path: &str) -> anyhow::Result<Mat> {
    let m = imgcodecs::imread(path, imgcodecs::IMREAD_COLOR).with_context(|| format!("reading {path}"))?;
    ensure!(!m.empty(), "cannot read {path}");
    Ok(m)
}

/// Scales `image` to cover `size` and crops the middle, like CSS `object-fit: cover`.
fn cover(image: &Mat, size: Size) -> anyhow::Result<Mat> {
    let scale = (f64::from(size.width) / f64::from(image.cols())).max(f64::from(size.height) / f64::from(image.rows()));
    let scaled_size =
        Size::new((f64::from(image.cols()) * scale).ceil() as i32, (f64::from(image.rows()) * scale).ceil() as i32);
    let mut scaled = Mat::default();
    imgproc::resize(image, &mut scaled, scaled_size, 0.0, 0.0, imgproc::INTER_CUBIC)?;
    let x = (scaled_size.width - size.width) / 2;
    let y = (scaled_size.height - size.height) / 2;
    Ok(scaled.roi(Rect::new(x, y, size.width, size.height))?.try_clone()?)
}
