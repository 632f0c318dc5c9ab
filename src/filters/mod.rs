//! The filters and the [`Processor`] that applies a chain of them to one frame.
//!
//! A filter is a pure function of the frame, its parameters and (for `motion`) the previous
//! source frame, so the result does not depend on which thread or host runs it. Detectors
//! (`faces`, `motion`) look at the *source* frame and draw on the chain's current image, so
//! `edges,faces` finds faces in the picture, not in its edge map.
//!
//! A [`Processor`] holds per-thread state: the loaded face cascade (OpenCV's detector is not
//! safe to share between threads) and scratch buffers reused from frame to frame.

#[macro_use]
mod def;
mod canny;
mod error;
mod layout;
pub mod presets;
mod spec;
pub mod tiles;

use opencv::core::{CV_8UC3, Mat, Size};
use opencv::prelude::*;

pub use def::{
    DEFAULT_FACE_CASCADE, Filter, FilterDef, FilterEnv, FilterParams, Image, Kind, ParamDef, Params, Range, Reach,
    Stage,
};
pub use edges::EdgesPart;
pub use error::{FilterError, ParamError};
pub use faces::{FaceDetector, FaceMode};
pub use motion::{MotionScratch, detect as detect_motion};
pub use spec::{Chain, MAX_CHAIN_LEN, SpecError, filter_def};

// Every filter vpd knows, in the order `--help` lists them and the wire format numbers them:
// a new filter is one file here and one line below, at the end.
filters! {
    Blur(blur::BlurParams),
    Edges(edges::EdgesParams),
    Faces(faces::FacesParams),
    Motion(motion::MotionParams),
    Denoise(denoise::DenoiseParams),
    Sharpen(sharpen::SharpenParams),
    Grade(grade::GradeParams),
    Scale(scale::ScaleParams),
}

/// A chain ready to run on one thread.
pub struct Processor {
    stages: Vec<(FilterSpec, Box<dyn Stage>)>,
}

impl Processor {
    /// Prepares `chain`, loading the face cascade if it is needed.
    pub fn new(chain: &Chain, env: &FilterEnv) -> Result<Self, FilterError> {
        let stages = chain
            .specs()
            .iter()
            .map(|spec| Ok((*spec, spec.filter().stage(env)?)))
            .collect::<Result<_, FilterError>>()?;
        Ok(Processor { stages })
    }

    /// Applies the chain to `frame`; `previous` is the source frame before it, if any.
    pub fn apply(&mut self, frame: &Mat, previous: Option<&Mat>) -> Result<Mat, FilterError> {
        self.run(Image::Source(frame), frame, previous)
    }

    /// Applies the chain to `current`, what earlier steps made of `source` (the frame as
    /// decoded, which detectors look at); `previous` is the source frame before it, if any.
    pub fn apply_after(&mut self, current: Mat, source: &Mat, previous: Option<&Mat>) -> Result<Mat, FilterError> {
        self.run(Image::Owned(current), source, previous)
    }

    fn run(&mut self, image: Image<'_>, frame: &Mat, previous: Option<&Mat>) -> Result<Mat, FilterError> {
        if frame.typ() != CV_8UC3 || image.as_mat().typ() != CV_8UC3 {
            return Err(FilterError::BadInput(frame.typ()));
        }
        let mut current = image;
        for (spec, stage) in &mut self.stages {
            let size_in = current.as_mat().size()?;
            let out = stage.run(current, frame, previous)?;
            // Every filter makes the size its definition says: its input's, but for scale.
            let (w, h) = spec.filter().output_size(size_in.width as u32, size_in.height as u32);
            if out.size()? != Size::new(w as i32, h as i32) || out.typ() != CV_8UC3 {
                return Err(FilterError::BadOutput(spec.name()));
            }
            current = Image::Owned(out);
        }
        current.into_owned().map_err(FilterError::from)
    }
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

    #[test]
    fn the_catalogue_a_form_reads_is_every_filter_and_parameter_as_json() {
        let json = serde_json::to_value(FILTERS).expect("every definition serialises");
        let filters = json.as_array().unwrap();
        assert_eq!(filters.len(), FILTERS.len());
        for (def, value) in FILTERS.iter().zip(filters) {
            assert_eq!(value["name"], def.name);
            assert_eq!(value["params"].as_array().unwrap().len(), def.params.len());
        }
        let faces = filters.iter().find(|f| f["name"] == "faces").unwrap();
        let mode = faces["params"].as_array().unwrap().iter().find(|p| p["key"] == "mode").unwrap();
        assert_eq!(mode["range"], serde_json::json!({ "kind": "choice", "words": ["box", "blur"] }));
        let blur = filters.iter().find(|f| f["name"] == "blur").unwrap();
        assert_eq!(blur["params"][0]["range"]["kind"], "int");
        assert_eq!(blur["params"][0]["range"]["odd"], true);
    }
}

#[cfg(test)]
pub(crate) mod test_support;
