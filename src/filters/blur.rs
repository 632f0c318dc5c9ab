//! `blur`: Gaussian blur.

use opencv::core::{BORDER_DEFAULT, Mat, Size};
use opencv::imgproc;
use serde::{Deserialize, Serialize};

use super::def::{
    Filter, FilterDef, FilterEnv, FilterParams, Kind, Params, Reach, Stage, Stateless, numbers, odds, param,
};
use super::{FilterError, ParamError};

/// Gaussian blur.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlurParams {
    /// Kernel size in pixels, odd, 1..=255.
    pub ksize: u32,
    /// Standard deviation; 0 derives it from `ksize` as OpenCV does.
    pub sigma: f64,
}

impl FilterParams for BlurParams {
    const DEF: FilterDef = FilterDef {
        name: "blur",
        help: "Gaussian blur",
        params: &[
            param("ksize", "15", odds(1, 255), "an odd integer from 1 to 255", "odd, 1-255"),
            param(
                "sigma",
                "0",
                numbers(0.0, 100.0),
                "a number from 0 to 100 (0: derived from ksize)",
                "0-100; 0: from ksize",
            ),
        ],
        kind: Kind::Pixel,
    };

    fn read(p: &mut Params<'_>) -> Result<Self, ParamError> {
        Ok(BlurParams { ksize: p.get("ksize")?, sigma: p.get("sigma")? })
    }
}

impl Filter for BlurParams {
    fn values(&self) -> Vec<String> {
        vec![self.ksize.to_string(), self.sigma.to_string()]
    }

    fn reach(&self) -> Reach {
        // A ksize×ksize kernel: half of it each way.
        Reach::Pixels(self.ksize / 2)
    }

    fn stage(&self, _: &FilterEnv) -> Result<Box<dyn Stage>, FilterError> {
        Ok(Box::new(*self))
    }
}

impl Stateless for BlurParams {
    fn apply(&self, input: &Mat) -> opencv::Result<Mat> {
        apply(input, self)
    }
}

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
