//! `denoise`: a median filter. Edge-preserving (a step stays a step) and the fastest of the
//! candidates measured; on a noisy 720p photo it also removed the most noise (BENCHMARKS.md,
//! "New filters").

use opencv::core::Mat;
use opencv::imgproc;
use serde::{Deserialize, Serialize};

use super::def::{Filter, FilterDef, FilterEnv, FilterParams, Kind, Params, Reach, Stage, Stateless, odds, param};
use super::{FilterError, ParamError};

/// Edge-preserving noise removal: a median filter (measured against bilateral and non-local
/// means, see BENCHMARKS.md "New filters").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DenoiseParams {
    /// The median's window, odd, 3..=9 pixels.
    pub size: u32,
}

impl FilterParams for DenoiseParams {
    const DEF: FilterDef = FilterDef {
        name: "denoise",
        help: "median: removes grain, keeps edges",
        params: &[param("size", "5", odds(3, 9), "3, 5, 7 or 9", "odd, 3-9")],
        kind: Kind::Pixel,
    };

    fn read(p: &mut Params<'_>) -> Result<Self, ParamError> {
        Ok(DenoiseParams { size: p.get("size")? })
    }
}

impl Filter for DenoiseParams {
    fn values(&self) -> Vec<String> {
        vec![self.size.to_string()]
    }

    fn reach(&self) -> Reach {
        // The median of a size×size window.
        Reach::Pixels(self.size / 2)
    }

    fn stage(&self, _: &FilterEnv) -> Result<Box<dyn Stage>, FilterError> {
        Ok(Box::new(*self))
    }
}

impl Stateless for DenoiseParams {
    fn apply(&self, input: &Mat) -> opencv::Result<Mat> {
        apply(input, self)
    }
}

/// The median of each `size`×`size` window, per channel.
pub(super) fn apply(input: &Mat, p: &DenoiseParams) -> opencv::Result<Mat> {
    let mut out = Mat::default();
    imgproc::median_blur(input, &mut out, p.size as i32)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::astronaut;
    use opencv::core::{self, CV_8UC3, CV_16SC3, Scalar};
    use opencv::prelude::*;

    /// `clean` with seeded Gaussian noise of `sigma`.
    fn noisy(clean: &Mat, sigma: f64) -> Mat {
        let mut noise =
            Mat::new_rows_cols_with_default(clean.rows(), clean.cols(), CV_16SC3, Scalar::all(0.0)).unwrap();
        core::set_rng_seed(7).unwrap();
        core::randn(&mut noise, &Scalar::all(0.0), &Scalar::all(sigma)).unwrap();
        let mut wide = Mat::default();
        clean.convert_to(&mut wide, CV_16SC3, 1.0, 0.0).unwrap();
        let mut sum = Mat::default();
        core::add(&wide, &noise, &mut sum, &core::no_array(), -1).unwrap();
        let mut out = Mat::default();
        sum.convert_to(&mut out, CV_8UC3, 1.0, 0.0).unwrap();
        out
    }

    #[test]
    fn it_lowers_the_noise_of_a_noisy_photo_against_its_clean_original() {
        let clean = astronaut();
        let noisy = noisy(&clean, 20.0);
        let before = core::psnr(&noisy, &clean, 255.0).unwrap();
        let after = core::psnr(&apply(&noisy, &DenoiseParams { size: 5 }).unwrap(), &clean, 255.0).unwrap();
        assert!(after > before + 4.0, "PSNR {before:.2} dB -> {after:.2} dB");
    }

    #[test]
    fn it_keeps_an_edge_where_it_is() {
        // A vertical step at x = 100, with noise; the strongest horizontal gradient of each row
        // stays at the step.
        let mut step = Mat::new_rows_cols_with_default(120, 200, CV_8UC3, Scalar::all(40.0)).unwrap();
        let mut right = Mat::roi_mut(&mut step, core::Rect::new(100, 0, 100, 120)).unwrap();
        right.set_to(&Scalar::all(200.0), &core::no_array()).unwrap();
        let out = apply(&noisy(&step, 12.0), &DenoiseParams { size: 5 }).unwrap();
        for y in 10..110 {
            let row: Vec<i32> = (0..200).map(|x| i32::from(out.at_2d::<core::Vec3b>(y, x).unwrap()[1])).collect();
            let strongest = (1..200).max_by_key(|&x| (row[x] - row[x - 1]).abs()).unwrap();
            assert!((99..=101).contains(&strongest), "row {y}: the edge moved to x={strongest}");
        }
    }
}
