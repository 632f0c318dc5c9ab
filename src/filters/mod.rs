//! The filters and the [`Processor`] that applies a chain of them to one frame.
//!
//! A filter is a pure function of the frame, its parameters and (for `motion`) the previous
//! source frame, so the result does not depend on which thread or host runs it. Detectors
//! (`faces`, `motion`) look at the *source* frame and draw on the chain's current image, so
//! `edges,faces` finds faces in the picture, not in its edge map.
//!
//! A [`Processor`] holds per-thread state: the loaded face cascade (OpenCV's detector is not
//! safe to share between threads) and scratch buffers reused from frame to frame.

mod blur;
mod canny;
mod denoise;
mod edges;
mod error;
pub mod faces;
mod grade;
pub mod motion;
pub mod presets;
mod sharpen;
mod spec;

use std::path::{Path, PathBuf};

use opencv::core::{CV_8UC3, Mat};
use opencv::prelude::*;

pub use error::FilterError;
pub use spec::{
    BlurParams, Chain, DenoiseParams, EdgesParams, FILTERS, FaceMode, FacesParams, FilterDef, FilterSpec, GradeParams,
    MAX_CHAIN_LEN, MotionParams, ScaleParams, SharpenParams, SpecError,
};

/// Where Debian's `opencv-data` package installs the frontal-face Haar cascade.
pub const DEFAULT_FACE_CASCADE: &str = "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml";

/// Files the filters need at run time, which differ from host to host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterEnv {
    /// The Haar cascade XML used by `faces`.
    pub face_cascade: PathBuf,
}

impl Default for FilterEnv {
    fn default() -> Self {
        FilterEnv { face_cascade: PathBuf::from(DEFAULT_FACE_CASCADE) }
    }
}

/// A chain ready to run on one thread.
pub struct Processor {
    stages: Vec<Stage>,
}

enum Stage {
    Blur(BlurParams),
    Edges(edges::Edges),
    Faces(faces::Faces),
    Motion(motion::Motion),
    Denoise(DenoiseParams),
    Sharpen(SharpenParams),
    Grade(grade::Grade),
    Scale(ScaleParams),
}

impl Processor {
    /// Prepares `chain`, loading the face cascade if it is needed.
    pub fn new(chain: &Chain, env: &FilterEnv) -> Result<Self, FilterError> {
        let stages = chain
            .specs()
            .iter()
            .map(|spec| {
                Ok(match *spec {
                    FilterSpec::Blur(p) => Stage::Blur(p),
                    FilterSpec::Edges(p) => Stage::Edges(edges::Edges::new(p)),
                    FilterSpec::Faces(p) => Stage::Faces(faces::Faces::new(p, &env.face_cascade)?),
                    FilterSpec::Motion(p) => Stage::Motion(motion::Motion::new(p)),
                    FilterSpec::Denoise(p) => Stage::Denoise(p),
                    FilterSpec::Sharpen(p) => Stage::Sharpen(p),
                    // Its lookup tables, once per chain.
                    FilterSpec::Grade(p) => Stage::Grade(grade::Grade::new(&p)),
                    FilterSpec::Scale(p) => Stage::Scale(p),
                })
            })
            .collect::<Result<_, FilterError>>()?;
        Ok(Processor { stages })
    }

    /// Applies the chain to `frame`; `previous` is the source frame before it, if any.
    pub fn apply(&mut self, frame: &Mat, previous: Option<&Mat>) -> Result<Mat, FilterError> {
        if frame.typ() != CV_8UC3 {
            return Err(FilterError::BadInput(frame.typ()));
        }
        let mut current = Image::Source(frame);
        for stage in &mut self.stages {
            let size_in = current.as_mat().size()?;
            let (name, out) = match stage {
                Stage::Blur(p) => ("blur", blur::apply(current.as_mat(), p)?),
                Stage::Edges(e) => ("edges", e.apply(current.as_mat())?),
                Stage::Faces(f) => ("faces", f.apply(current.into_owned()?, frame)?),
                Stage::Motion(m) => ("motion", m.apply(current.into_owned()?, frame, previous)?),
                Stage::Denoise(p) => ("denoise", denoise::apply(current.as_mat(), p)?),
                Stage::Sharpen(p) => ("sharpen", sharpen::apply(current.as_mat(), p)?),
                Stage::Grade(g) => ("grade", g.apply(current.as_mat())?),
                Stage::Scale(p) => ("scale", scale(current.as_mat(), p)?),
            };
            // Every filter keeps its input's size, but scale, which makes the size it says.
            let size_out = match stage {
                Stage::Scale(p) => {
                    let (w, h) = p.size_of(size_in.width as u32, size_in.height as u32);
                    opencv::core::Size::new(w as i32, h as i32)
                }
                _ => size_in,
            };
            if out.size()? != size_out || out.typ() != CV_8UC3 {
                return Err(FilterError::BadOutput(name));
            }
            current = Image::Owned(out);
        }
        current.into_owned().map_err(FilterError::from)
    }
}

/// `input` resized as `p` says: area averaging to shrink, bicubic to enlarge.
fn scale(input: &Mat, p: &ScaleParams) -> opencv::Result<Mat> {
    let (w, h) = p.size_of(input.cols() as u32, input.rows() as u32);
    let shrinking = i64::from(w) * i64::from(h) < i64::from(input.cols()) * i64::from(input.rows());
    let interpolation = if shrinking { opencv::imgproc::INTER_AREA } else { opencv::imgproc::INTER_CUBIC };
    let mut out = Mat::default();
    opencv::imgproc::resize(input, &mut out, opencv::core::Size::new(w as i32, h as i32), 0.0, 0.0, interpolation)?;
    Ok(out)
}

/// The chain's current image: the source frame itself until a filter produces a new one, so a
/// drawing filter copies the shared source only when it is first in the chain.
enum Image<'a> {
    Source(&'a Mat),
    Owned(Mat),
}

impl Image<'_> {
    fn as_mat(&self) -> &Mat {
        match self {
            Image::Source(m) => m,
            Image::Owned(m) => m,
        }
    }

    fn into_owned(self) -> opencv::Result<Mat> {
        match self {
            Image::Source(m) => m.try_clone(),
            Image::Owned(m) => Ok(m),
        }
    }
}

/// Checks that the face cascade at `path` loads, for callers that want the error up front.
pub fn check_face_cascade(path: &Path) -> Result<(), FilterError> {
    faces::load_cascade(path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{CV_8UC1, Scalar};

    #[test]
    fn rejects_non_bgr_frames() {
        let chain: Chain = "blur".parse().unwrap();
        let mut p = Processor::new(&chain, &FilterEnv::default()).unwrap();
        let grey = Mat::new_rows_cols_with_default(8, 8, CV_8UC1, Scalar::all(0.0)).unwrap();
        assert!(matches!(p.apply(&grey, None), Err(FilterError::BadInput(_))));
    }

    #[test]
    fn scale_gives_the_size_it_says_keeping_the_aspect_ratio_in_even_pixels() {
        let frame = Mat::new_rows_cols_with_default(720, 1280, CV_8UC3, Scalar::all(90.0)).unwrap();
        for (chain, size) in [
            ("scale:width=640", (640, 360)),
            ("scale:height=240", (426, 240)),
            ("scale:width=320:height=200", (320, 200)),
            ("blur,scale:width=1920,edges", (1920, 1080)),
        ] {
            let chain: Chain = chain.parse().unwrap();
            assert_eq!(chain.output_size(1280, 720), size, "{chain}");
            let out = Processor::new(&chain, &FilterEnv::default()).unwrap().apply(&frame, None).unwrap();
            assert_eq!((out.cols() as u32, out.rows() as u32), size, "{chain}");
        }
        // Odd results round to even: 1280x720 → height 101 → width 179.5 → 180.
        assert_eq!("scale:height=101".parse::<Chain>().unwrap().output_size(1280, 720), (180, 101));
        for bad in ["scale", "scale:width=8", "faces,scale:width=64,motion", "scale:width=64,faces"] {
            assert!(bad.parse::<Chain>().is_err(), "{bad}");
        }
        assert!("motion,faces,scale:width=64".parse::<Chain>().is_ok(), "detectors before scale");
    }

    #[test]
    fn missing_cascade_is_a_clear_error() {
        let chain: Chain = "faces".parse().unwrap();
        let env = FilterEnv { face_cascade: "/nonexistent/cascade.xml".into() };
        let err = Processor::new(&chain, &env).err().expect("must fail");
        assert!(err.to_string().contains("/nonexistent/cascade.xml"), "{err}");
    }
}

#[cfg(test)]
pub(crate) mod test_support;
