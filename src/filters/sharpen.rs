//! `sharpen`: an unsharp mask, `frame + amount × (frame − gaussian(frame, radius))`.

use opencv::core::{self, BORDER_DEFAULT, Mat, Size};
use opencv::imgproc;
use serde::{Deserialize, Serialize};

use super::def::{Filter, FilterDef, FilterEnv, FilterParams, Kind, Params, Reach, Stage, Stateless, numbers, param};
use super::{FilterError, ParamError};

/// Unsharp mask: the frame plus `amount` times its difference from a Gaussian blur of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SharpenParams {
    /// How much of the detail to add back, 0..=5.
    pub amount: f64,
    /// The blur's standard deviation in pixels, 0.3..=20: the size of the detail sharpened.
    pub radius: f64,
}

impl FilterParams for SharpenParams {
    const DEF: FilterDef = FilterDef {
        name: "sharpen",
        help: "unsharp mask",
        params: &[
            param("amount", "1", numbers(0.0, 5.0), "a number from 0 to 5", "0-5"),
            param("radius", "1.5", numbers(0.3, 20.0), "a number from 0.3 to 20", "0.3-20 pixels"),
        ],
        kind: Kind::Pixel,
    };

    fn read(p: &mut Params<'_>) -> Result<Self, ParamError> {
        Ok(SharpenParams { amount: p.get("amount")?, radius: p.get("radius")? })
    }
}

impl Filter for SharpenParams {
    fn values(&self) -> Vec<String> {
        vec![self.amount.to_string(), self.radius.to_string()]
    }

    fn reach(&self) -> Reach {
        // OpenCV's kernel for a sigma and 8-bit pixels: round(6 sigma + 1), made odd.
        Reach::Pixels(gaussian_ksize(self.radius) / 2)
    }

    fn stage(&self, _: &FilterEnv) -> Result<Box<dyn Stage>, FilterError> {
        Ok(Box::new(*self))
    }
}

impl Stateless for SharpenParams {
    fn apply(&self, input: &Mat) -> opencv::Result<Mat> {
        apply(input, self)
    }
}

/// The size of the Gaussian kernel OpenCV derives from `sigma` for 8-bit images
/// (`createGaussianKernels`: `cvRound(sigma * 3 * 2 + 1) | 1`).
fn gaussian_ksize(sigma: f64) -> u32 {
    ((sigma * 6.0 + 1.0).round() as u32) | 1
}

/// Adds `amount` times the detail finer than `radius` back to `input`.
pub(super) fn apply(input: &Mat, p: &SharpenParams) -> opencv::Result<Mat> {
    let mut blurred = Mat::default();
    imgproc::gaussian_blur(input, &mut blurred, Size::new(0, 0), p.radius, p.radius, BORDER_DEFAULT)?;
    let mut out = Mat::default();
    // Saturating 8-bit arithmetic, rounded: out = (1 + a)·in − a·blurred.
    core::add_weighted(input, 1.0 + p.amount, &blurred, -p.amount, 0.0, &mut out, -1)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::{astronaut, laplacian_variance};

    #[test]
    fn it_raises_the_laplacian_variance_of_a_blurred_photo() {
        let mut blurred = Mat::default();
        imgproc::gaussian_blur(&astronaut(), &mut blurred, Size::new(0, 0), 2.0, 2.0, BORDER_DEFAULT).unwrap();
        let before = laplacian_variance(&blurred);
        let after = laplacian_variance(&apply(&blurred, &SharpenParams { amount: 1.0, radius: 1.5 }).unwrap());
        assert!(after > before * 1.5, "Laplacian variance {before:.1} -> {after:.1}");
        let more = laplacian_variance(&apply(&blurred, &SharpenParams { amount: 2.0, radius: 1.5 }).unwrap());
        assert!(more > after, "a larger amount sharpens more: {after:.1} -> {more:.1}");
    }

    #[test]
    fn amount_zero_is_the_identity() {
        let frame = astronaut();
        let out = apply(&frame, &SharpenParams { amount: 0.0, radius: 1.5 }).unwrap();
        assert_eq!(core::norm2(&frame, &out, core::NORM_INF, &core::no_array()).unwrap(), 0.0);
    }
}
