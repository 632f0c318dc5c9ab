//! `grade`: contrast, brightness, gamma and warmth through one lookup table per channel (built
//! once per chain), then saturation, which mixes the channels.

use opencv::core::{self, CV_8UC3, Mat, Vec3b};
use opencv::prelude::*;

use super::GradeParams;

/// A grade ready to apply: its tables and saturation.
pub(super) struct Grade {
    /// The per-channel table (BGR), or none when it is the identity.
    lut: Option<Mat>,
    saturation: f64,
}

impl Grade {
    /// Builds the tables of `p`.
    pub(super) fn new(p: &GradeParams) -> Self {
        let identity = p.contrast == 1.0 && p.brightness == 0.0 && p.gamma == 1.0 && p.warmth == 0.0;
        let lut = (!identity).then(|| {
            let mut lut =
                Mat::new_rows_cols_with_default(1, 256, CV_8UC3, core::Scalar::all(0.0)).expect("a 1x256 table");
            // Warmth moves red up and blue down by up to a tenth of the range.
            let shift = [-0.1 * p.warmth, 0.0, 0.1 * p.warmth];
            for v in 0..256 {
                let mut px = Vec3b::default();
                for (c, shift) in shift.iter().enumerate() {
                    let x = v as f64 / 255.0;
                    let x = (x - 0.5) * p.contrast + 0.5 + p.brightness + shift;
                    let x = x.clamp(0.0, 1.0).powf(1.0 / p.gamma);
                    px[c] = (x * 255.0).round() as u8;
                }
                *lut.at_2d_mut::<Vec3b>(0, v).expect("inside the table") = px;
            }
            lut
        });
        Grade { lut, saturation: p.saturation }
    }

    /// Grades `frame` (8-bit BGR).
    pub(super) fn apply(&self, frame: Mat) -> opencv::Result<Mat> {
        let mut out = match &self.lut {
            Some(lut) => {
                let mut out = Mat::default();
                core::lut(&frame, lut, &mut out)?;
                out
            }
            None => frame,
        };
        if self.saturation != 1.0 {
            saturate(&mut out, self.saturation)?;
        }
        Ok(out)
    }
}

/// Moves each pixel away from (or towards) its grey by `s`: 0 gives grey, 1 leaves it.
fn saturate(frame: &mut Mat, s: f64) -> opencv::Result<()> {
    // Fixed point: s in 1/256ths, grey as BT.601 luma.
    let s = (s * 256.0).round() as i32;
    let bytes = frame.data_bytes_mut()?;
    for px in bytes.chunks_exact_mut(3) {
        let (b, g, r) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
        let y = (29 * b + 150 * g + 77 * r + 128) >> 8;
        for c in px.iter_mut() {
            let v = y + ((s * (i32::from(*c) - y)) >> 8);
            *c = v.clamp(0, 255) as u8;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::astronaut;

    fn grade(p: GradeParams) -> Mat {
        Grade::new(&p).apply(astronaut()).unwrap()
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
