//! The two pixel conversions every frame goes through, swscale (what `media` uses) against
//! OpenCV's `cvtColor`, at 720p and 1080p (and 856×480 against 854×480), one thread:
//! - decode side: a decoder's yuv420p planes → an 8-bit BGR `Mat`;
//! - encode side: a BGR `Mat` → the encoder's yuv420p planes.
//!
//! `cvtColor` needs the three planes in one buffer (I420), so its figures include copying them
//! into (or out of) one: the copy the pipeline would have to make to use it.
//!
//! `cargo bench --bench convert` (part of `make bench`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ffmpeg_next::format::Pixel;
use ffmpeg_next::frame::Video;
use ffmpeg_next::util::color;
use opencv::core::{CV_8UC1, CV_8UC3, Mat, Scalar};
use opencv::imgproc;
use opencv::prelude::*;
use vpd::media::convert::{Colour, Scaler, i420_into_planes};

const COLOUR: Colour = Colour { space: color::Space::BT709, range: color::Range::MPEG };

fn noise_bgr(w: i32, h: i32) -> Mat {
    let mut m = Mat::new_rows_cols_with_default(h, w, CV_8UC3, Scalar::all(0.0)).unwrap();
    opencv::core::randu(&mut m, &Scalar::all(0.0), &Scalar::all(256.0)).unwrap();
    m
}

/// Copies a frame's three planes into one I420 `Mat` (h * 3/2 rows).
fn planes_to_i420(frame: &Video, i420: &mut Mat) {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let dst = i420.data_bytes_mut().unwrap();
    let mut at = 0;
    for (plane, (pw, ph)) in [(0, (w, h)), (1, (w / 2, h / 2)), (2, (w / 2, h / 2))] {
        let (src, stride) = (frame.data(plane), frame.stride(plane));
        for row in 0..ph {
            dst[at..at + pw].copy_from_slice(&src[row * stride..row * stride + pw]);
            at += pw;
        }
    }
}

fn convert(c: &mut Criterion) {
    opencv::core::set_num_threads(1).unwrap();
    vpd::media::init();
    let mut group = c.benchmark_group("convert");
    group.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    // 854 is not a multiple of 8: libswscale would leave a tail unwritten, and the decode side
    // converts into padded rows and copies them (`Scaler::decode`); 856 beside it is direct.
    for (w, h) in [(856u32, 480u32), (854, 480), (1280, 720), (1920, 1080)] {
        let bgr = noise_bgr(w as i32, h as i32);
        let mut yuv = Video::new(Pixel::YUV420P, w, h);
        let mut to_yuv = Scaler::new((Pixel::BGR24, w, h), (Pixel::YUV420P, w, h), COLOUR).unwrap();
        let mut to_bgr = Scaler::new((Pixel::YUV420P, w, h), (Pixel::BGR24, w, h), COLOUR).unwrap();
        to_yuv.encode_from(&bgr, &mut yuv);
        let mut out = bgr.try_clone().unwrap();
        let mut i420 = Mat::new_rows_cols_with_default(h as i32 * 3 / 2, w as i32, CV_8UC1, Scalar::all(0.0)).unwrap();
        let size = if w * 9 == h * 16 { format!("{h}p") } else { format!("{w}x{h}") };
        group.bench_function(BenchmarkId::new("yuv420p-to-bgr/swscale", &size), |b| {
            b.iter(|| to_bgr.decode(black_box(&yuv)).unwrap())
        });
        group.bench_function(BenchmarkId::new("yuv420p-to-bgr/cvtColor+copy", &size), |b| {
            b.iter(|| {
                planes_to_i420(black_box(&yuv), &mut i420);
                imgproc::cvt_color_def(&i420, &mut out, imgproc::COLOR_YUV2BGR_I420).unwrap();
            })
        });
        group.bench_function(BenchmarkId::new("bgr-to-yuv420p/swscale", &size), |b| {
            b.iter(|| to_yuv.encode_from(black_box(&bgr), &mut yuv))
        });
        group.bench_function(BenchmarkId::new("bgr-to-yuv420p/cvtColor+copy", &size), |b| {
            b.iter(|| {
                imgproc::cvt_color_def(black_box(&bgr), &mut i420, imgproc::COLOR_BGR2YUV_I420).unwrap();
                i420_into_planes(&i420, &mut yuv);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, convert);
criterion_main!(benches);
