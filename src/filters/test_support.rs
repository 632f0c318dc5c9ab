//! Images for the filters' unit tests.

use opencv::core::{self, CV_8UC3, Mat, Rect, Scalar};
use opencv::imgcodecs;
use opencv::imgproc;
use opencv::prelude::*;

/// A black and white checkerboard with `cell`-pixel squares.
pub fn checkerboard(rows: i32, cols: i32, cell: i32) -> Mat {
    let mut m = Mat::new_rows_cols_with_default(rows, cols, CV_8UC3, Scalar::all(0.0)).unwrap();
    for y in (0..rows).step_by(cell as usize) {
        for x in (0..cols).step_by(cell as usize) {
            if (x / cell + y / cell) % 2 == 0 {
                let r = Rect::new(x, y, cell, cell);
                imgproc::rectangle(&mut m, r, Scalar::all(255.0), imgproc::FILLED, imgproc::LINE_8, 0).unwrap();
            }
        }
    }
    m
}

/// Variance of the Laplacian of the grey image: a standard sharpness measure.
pub fn laplacian_variance(frame: &Mat) -> f64 {
    let mut grey = Mat::default();
    imgproc::cvt_color(frame, &mut grey, imgproc::COLOR_BGR2GRAY, 0).unwrap();
    let mut lap = Mat::default();
    imgproc::laplacian(&grey, &mut lap, core::CV_64F, 1, 1.0, 0.0, core::BORDER_DEFAULT).unwrap();
    let (mut mean, mut dev) = (Mat::default(), Mat::default());
    core::mean_std_dev(&lap, &mut mean, &mut dev, &core::no_array()).unwrap();
    let sd = *dev.at::<f64>(0).unwrap();
    sd * sd
}

/// NASA's public-domain portrait of Eileen Collins (assets/astronaut.jpg), 512x512.
pub fn astronaut() -> Mat {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/astronaut.jpg");
    let m = imgcodecs::imread(path, imgcodecs::IMREAD_COLOR).unwrap();
    assert!(!m.empty(), "cannot read {path}");
    m
}

/// The astronaut resized to `w`×`h`: a photograph of any size.
pub fn astronaut_sized(w: i32, h: i32) -> Mat {
    let mut out = Mat::default();
    imgproc::resize(&astronaut(), &mut out, core::Size::new(w, h), 0.0, 0.0, imgproc::INTER_LINEAR).unwrap();
    out
}
