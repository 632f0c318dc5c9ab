//! `grade`: contrast, brightness, gamma and warmth through one lookup table per channel (built
//! once per chain), then saturation, which mixes the channels.

use opencv::core::{CV_8UC3, Mat};
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use super::def::{
    Filter, FilterDef, FilterEnv, FilterParams, Image, Kind, Params, Range, Reach, Stage, numbers, param,
};
use super::{FilterError, ParamError};

/// Colour grading through per-channel lookup tables (built once per chain), then saturation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradeParams {
    /// Contrast around mid-grey, 0..=4 (1: unchanged).
    pub contrast: f64,
    /// Added brightness, -1..=1 of the full range (0: unchanged).
    pub brightness: f64,
    /// Colour saturation, 0..=4 (0: grey, 1: unchanged).
    pub saturation: f64,
    /// Gamma, 0.1..=10 (above 1 brightens the mid-tones, 1: unchanged).
    pub gamma: f64,
    /// Warmth, -1..=1: red up and blue down (negative: cooler; 0: unchanged).
    pub warmth: f64,
}

const FACTOR: Range = numbers(0.0, 4.0);
const SIGNED_UNIT: Range = numbers(-1.0, 1.0);

impl FilterParams for GradeParams {
    const DEF: FilterDef = FilterDef {
        name: "grade",
        help: "colour grading",
        params: &[
            param("contrast", "1", FACTOR, "a number from 0 to 4", "0-4"),
            param("brightness", "0", SIGNED_UNIT, "a number from -1 to 1", "-1-1"),
            param("saturation", "1", FACTOR, "a number from 0 to 4", "0-4"),
            param("gamma", "1", numbers(0.1, 10.0), "a number from 0.1 to 10", "0.1-10"),
            param("warmth", "0", SIGNED_UNIT, "a number from -1 to 1", "-1-1"),
        ],
        kind: Kind::Pixel,
    };

    fn read(p: &mut Params<'_>) -> Result<Self, ParamError> {
        Ok(GradeParams {
            contrast: p.get("contrast")?,
            brightness: p.get("brightness")?,
            saturation: p.get("saturation")?,
            gamma: p.get("gamma")?,
            warmth: p.get("warmth")?,
        })
    }
}

impl Filter for GradeParams {
    fn values(&self) -> Vec<String> {
        [self.contrast, self.brightness, self.saturation, self.gamma, self.warmth].map(|v| v.to_string()).into()
    }

    fn reach(&self) -> Reach {
        // Each pixel from itself.
        Reach::Pixels(0)
    }

    fn stage(&self, _: &FilterEnv) -> Result<Box<dyn Stage>, FilterError> {
        // Its lookup tables, once per chain.
        Ok(Box::new(Grade::new(self)))
    }
}

impl Stage for Grade {
    fn run(&mut self, image: Image<'_>, _: &Mat, _: Option<&Mat>) -> Result<Mat, FilterError> {
        Ok(self.apply(image.as_mat())?)
    }
}

/// A grade ready to apply: its tables and saturation, applied in one pass over the frame.
pub(super) struct Grade {
    /// One table per channel (B, G, R), or none when they are the identity.
    lut: Option<Box<[[u8; 256]; 3]>>,
    /// Saturation in 1/256ths, or none when it is 1.
    saturation: Option<i32>,
}

impl Grade {
    /// Builds the tables of `p`.
    pub(super) fn new(p: &GradeParams) -> Self {
        let identity = p.contrast == 1.0 && p.brightness == 0.0 && p.gamma == 1.0 && p.warmth == 0.0;
        let lut = (!identity).then(|| {
            // Warmth moves red up and blue down by up to a tenth of the range.
            let shift = [-0.1 * p.warmth, 0.0, 0.1 * p.warmth];
            let mut lut = [[0u8; 256]; 3];
            for (table, shift) in lut.iter_mut().zip(shift) {
                for (v, out) in table.iter_mut().enumerate() {
                    let x = (v as f64 / 255.0 - 0.5) * p.contrast + 0.5 + p.brightness + shift;
                    *out = (x.clamp(0.0, 1.0).powf(1.0 / p.gamma) * 255.0).round() as u8;
                }
            }
            Box::new(lut)
        });
        let saturation = (p.saturation != 1.0).then(|| (p.saturation * 256.0).round() as i32);
        Grade { lut, saturation }
    }

    /// Grades `frame` (8-bit BGR) into a new frame.
    pub(super) fn apply(&self, frame: &Mat) -> opencv::Result<Mat> {
        // A region of a larger frame is copied whole first: the pass reads one run of bytes.
        let copied;
        let source = if frame.is_continuous() {
            frame
        } else {
            copied = frame.try_clone()?;
            &copied
        };
        // SAFETY: every byte of the new frame is written by the pass below (the two buffers are
        // the same size: rows × cols × 3); nothing reads it before.
        let mut out = unsafe { Mat::new_rows_cols(frame.rows(), frame.cols(), CV_8UC3)? };
        let (src, dst) = (source.data_bytes()?, out.data_bytes_mut()?);
        debug_assert_eq!(src.len(), dst.len());
        for (s, d) in src.chunks_exact(3).zip(dst.chunks_exact_mut(3)) {
            let (mut b, mut g, mut r) = (s[0], s[1], s[2]);
            if let Some(lut) = &self.lut {
                (b, g, r) = (lut[0][usize::from(b)], lut[1][usize::from(g)], lut[2][usize::from(r)]);
            }
            match self.saturation {
                None => (d[0], d[1], d[2]) = (b, g, r),
                Some(k) => {
                    // Away from (or towards) the pixel's grey, BT.601 luma in fixed point.
                    let (b, g, r) = (i32::from(b), i32::from(g), i32::from(r));
                    let y = (29 * b + 150 * g + 77 * r + 128) >> 8;
                    let mix = |c: i32| (y + ((k * (c - y)) >> 8)).clamp(0, 255) as u8;
                    (d[0], d[1], d[2]) = (mix(b), mix(g), mix(r));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::astronaut;
    use opencv::core;

    fn grade(p: GradeParams) -> Mat {
        Grade::new(&p).apply(&astronaut()).unwrap()
    }

    const NEUTRAL: GradeParams =
        GradeParams { contrast: 1.0, brightness: 0.0, saturation: 1.0, gamma: 1.0, warmth: 0.0 };

    #[test]
    fn neutral_parameters_are_the_identity() {
        let out = grade(NEUTRAL);
        assert_eq!(core::norm2(&astronaut(), &out, core::NORM_INF, &core::no_array()).unwrap(), 0.0);
    }

    #[test]
    fn saturation_zero_gives_grey_frames() {
        let out = grade(GradeParams { saturation: 0.0, ..NEUTRAL });
        let bytes = out.data_bytes().unwrap();
        assert!(bytes.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]), "every pixel grey");
        assert!(bytes.chunks_exact(3).any(|p| p[0] > 100), "and not black");
    }

    #[test]
    fn each_parameter_moves_the_picture_its_way() {
        let mean = |m: &Mat| core::mean(m, &core::no_array()).unwrap();
        let base = mean(&astronaut());
        let brighter = mean(&grade(GradeParams { brightness: 0.2, ..NEUTRAL }));
        assert!((0..3).all(|c| brighter[c] > base[c] + 30.0), "{brighter:?} vs {base:?}");
        let gamma = mean(&grade(GradeParams { gamma: 2.0, ..NEUTRAL }));
        assert!((0..3).all(|c| gamma[c] > base[c]), "gamma above 1 brightens the mid-tones");
        let warm = mean(&grade(GradeParams { warmth: 0.5, ..NEUTRAL }));
        assert!(warm[2] > base[2] + 5.0 && warm[0] < base[0] - 5.0, "warmer: more red, less blue");
        let std = |m: &Mat| {
            let (mut mean, mut dev) = (Mat::default(), Mat::default());
            core::mean_std_dev(m, &mut mean, &mut dev, &core::no_array()).unwrap();
            *dev.at::<f64>(1).unwrap()
        };
        let flat = std(&grade(GradeParams { contrast: 0.5, ..NEUTRAL }));
        let punchy = std(&grade(GradeParams { contrast: 1.5, ..NEUTRAL }));
        assert!(flat < std(&astronaut()) && punchy > std(&astronaut()), "contrast spreads the values");
    }
}
