//! `blur`: Gaussian blur.

use opencv::core::{BORDER_DEFAULT, Mat, Size};
use opencv::imgproc;

use super::BlurParams;

/// Blurs `input` with a `ksize`×`ksize` Gaussian kernel.
pub(super) fn apply(input: &Mat, p: &BlurParams) -> opencv::Result<Mat> {
    let mut out = Mat::default();
    let k = p.ksize as i32;
    imgproc::gaussian_blur(input, &mut out, Size::new(k, k), p.sigma, p.sigma, BORDER_DEFAULT)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::{checkerboard, laplacian_variance};

    #[test]
    fn blur_lowers_laplacian_variance() {
        let frame = checkerboard(240, 320, 8);
        let before = laplacian_variance(&frame);
        let after = laplacian_variance(&apply(&frame, &BlurParams { ksize: 15, sigma: 0.0 }).unwrap());
        assert!(before > 1000.0, "the test pattern must be sharp, got {before}");
        assert!(after < before / 10.0, "blur must smooth: {before} -> {after}");
    }

    #[test]
    fn larger_kernel_blurs_more() {
        let frame = checkerboard(240, 320, 8);
        let small = laplacian_variance(&apply(&frame, &BlurParams { ksize: 3, sigma: 0.0 }).unwrap());
        let large = laplacian_variance(&apply(&frame, &BlurParams { ksize: 31, sigma: 0.0 }).unwrap());
        assert!(large < small, "ksize=31 ({large}) must blur more than ksize=3 ({small})");
    }
}
