//! `sharpen`: an unsharp mask, `frame + amount × (frame − gaussian(frame, radius))`.

use opencv::core::{self, BORDER_DEFAULT, Mat, Size};
use opencv::imgproc;

use super::SharpenParams;

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
