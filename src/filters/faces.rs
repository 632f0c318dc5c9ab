//! `faces`: Haar-cascade frontal face detection, boxed or blurred.
//!
//! Detection is the costliest filter, so it runs on a grey copy downscaled to `width` pixels
//! across; the boxes are scaled back to the full frame.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use opencv::core::{BORDER_REPLICATE, Mat, Rect, Scalar, Size, Vector};
use opencv::imgproc;
use opencv::objdetect::CascadeClassifier;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use super::def::{
    Filter, FilterDef, FilterEnv, FilterParams, Image, Kind, ParamDef, Params, Range, Reach, Stage, ints, param,
};
use super::{FilterError, ParamError};

/// What `faces` does with each detected face.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaceMode {
    /// Draw a box around each face.
    Box,
    /// Blur each face beyond recognition.
    Blur,
}

impl FromStr for FaceMode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "box" => Ok(FaceMode::Box),
            "blur" => Ok(FaceMode::Blur),
            _ => Err(()),
        }
    }
}

impl fmt::Display for FaceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaceMode::Box => "box",
            FaceMode::Blur => "blur",
        })
    }
}

/// Haar-cascade frontal face detection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FacesParams {
    /// Box or anonymise.
    pub mode: FaceMode,
    /// Width of the downscaled copy the detector runs on (frames narrower are used as they are).
    pub width: u32,
    /// Neighbouring detections a face needs to count (higher: fewer false positives).
    pub neighbors: u32,
}

impl FilterParams for FacesParams {
    const DEF: FilterDef = FilterDef {
        name: "faces",
        help: "frontal faces boxed or blurred (a detector)",
        params: &[
            ParamDef {
                key: "mode",
                default: "box",
                range: Range::Choice { words: &["box", "blur"] },
                expected: "box or blur",
                note: "box|blur",
            },
            param("width", "640", ints(64, 4096), "an integer from 64 to 4096", "detection width, 64-4096"),
            param("neighbors", "5", ints(1, 50), "an integer from 1 to 50", "1-50"),
        ],
        kind: Kind::Detector { previous: false },
    };

    fn read(p: &mut Params<'_>) -> Result<Self, ParamError> {
        Ok(FacesParams { mode: p.get("mode")?, width: p.get("width")?, neighbors: p.get("neighbors")? })
    }
}

impl Filter for FacesParams {
    fn values(&self) -> Vec<String> {
        vec![self.mode.to_string(), self.width.to_string(), self.neighbors.to_string()]
    }

    fn check_env(&self, env: &FilterEnv) -> Result<(), FilterError> {
        load_cascade(&env.face_cascade).map(|_| ())
    }

    fn reach(&self) -> Reach {
        Reach::Whole("a detector looks at the whole frame (a face across two tiles would be missed)")
    }

    fn stage(&self, env: &FilterEnv) -> Result<Box<dyn Stage>, FilterError> {
        Ok(Box::new(Faces::new(*self, &env.face_cascade)?))
    }
}

impl Stage for Faces {
    fn run(&mut self, image: Image<'_>, source: &Mat, _: Option<&Mat>) -> Result<Mat, FilterError> {
        self.apply(image.into_owned()?, source)
    }
}

/// The smallest face the cascade can see, in pixels of the downscaled copy: the training
/// window of OpenCV's frontal-face cascades.
const MIN_FACE: i32 = 24;

/// Loads a Haar cascade, turning OpenCV's silent empty classifier into an error.
pub(super) fn load_cascade(path: &Path) -> Result<CascadeClassifier, FilterError> {
    let fail = |reason: String| FilterError::Cascade { path: path.to_path_buf(), reason };
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    let utf8 = path.to_str().ok_or_else(|| fail("path is not valid UTF-8".into()))?;
    let cascade = CascadeClassifier::new(utf8).map_err(|e| fail(e.message))?;
    if cascade.empty().map_err(|e| fail(e.message))? {
        return Err(fail("not a cascade classifier file".into()));
    }
    Ok(cascade)
}

/// A face detector with its own cascade and buffers; one per thread.
pub struct FaceDetector {
    cascade: CascadeClassifier,
    width: u32,
    neighbors: u32,
    small: Mat,
    grey: Mat,
}

impl FaceDetector {
    /// Loads the cascade at `cascade`.
    pub fn new(params: &FacesParams, cascade: &Path) -> Result<Self, FilterError> {
        Ok(FaceDetector {
            cascade: load_cascade(cascade)?,
            width: params.width,
            neighbors: params.neighbors,
            small: Mat::default(),
            grey: Mat::default(),
        })
    }

    /// The faces in `frame`, in full-frame pixel coordinates.
    pub fn detect(&mut self, frame: &Mat) -> opencv::Result<Vec<Rect>> {
        let (cols, rows) = (frame.cols(), frame.rows());
        let scale = if cols > self.width as i32 { f64::from(self.width) / f64::from(cols) } else { 1.0 };
        let source = if scale < 1.0 {
            let size = Size::new(self.width as i32, ((f64::from(rows) * scale).round() as i32).max(1));
            imgproc::resize(frame, &mut self.small, size, 0.0, 0.0, imgproc::INTER_LINEAR)?;
            &self.small
        } else {
            frame
        };
        // No histogram equalisation, the textbook step: on the sample video it made the cascade
        // miss the face in every frame (a bright sky stretches the face's contrast away) and cost
        // a fifth more time.
        imgproc::cvt_color(source, &mut self.grey, imgproc::COLOR_BGR2GRAY, 0)?;
        let mut found = Vector::<Rect>::new();
        self.cascade.detect_multi_scale(
            &self.grey,
            &mut found,
            1.1,
            self.neighbors as i32,
            0,
            Size::new(MIN_FACE, MIN_FACE),
            Size::default(),
        )?;
        let bounds = Rect::new(0, 0, cols, rows);
        Ok(found
            .iter()
            .map(|r| {
                let s = |v: i32| (f64::from(v) / scale).round() as i32;
                Rect::new(s(r.x), s(r.y), s(r.width), s(r.height)) & bounds
            })
            .filter(|r| r.width > 0 && r.height > 0)
            .collect())
    }
}

pub(super) struct Faces {
    detector: FaceDetector,
    mode: FaceMode,
}

impl Faces {
    pub(super) fn new(params: FacesParams, cascade: &Path) -> Result<Self, FilterError> {
        Ok(Faces { detector: FaceDetector::new(&params, cascade)?, mode: params.mode })
    }

    /// Finds faces in `source` and boxes or blurs them on `image`.
    pub(super) fn apply(&mut self, mut image: Mat, source: &Mat) -> Result<Mat, FilterError> {
        for face in self.detector.detect(source)? {
            match self.mode {
                FaceMode::Box => {
                    let thickness = (image.cols() / 400).max(2);
                    imgproc::rectangle(
                        &mut image,
                        face,
                        Scalar::new(0.0, 255.0, 0.0, 0.0),
                        thickness,
                        imgproc::LINE_8,
                        0,
                    )?;
                }
                FaceMode::Blur => anonymise(&mut image, face)?,
            }
        }
        Ok(image)
    }
}

/// Blurs `region` of `image` so strongly that the face cannot be recognised (or re-detected).
fn anonymise(image: &mut Mat, region: Rect) -> opencv::Result<()> {
    // Sigma a sixth of the face: measured on the astronaut portrait, an eighth already hides
    // the face from the cascade, while shrinking it to 8x8 blocks (pixelation) does not.
    let side = region.width.min(region.height);
    let sigma = f64::from(side) / 6.0;
    let k = (side | 1).max(3);
    let mut blurred = Mat::default();
    {
        let roi = image.roi(region)?;
        imgproc::gaussian_blur(&roi, &mut blurred, Size::new(k, k), sigma, sigma, BORDER_REPLICATE)?;
    }
    let mut roi = image.roi_mut(region)?;
    blurred.copy_to(&mut roi)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::astronaut;
    use crate::filters::{Chain, DEFAULT_FACE_CASCADE, FilterEnv, Processor};
    use opencv::core::{self, CV_8UC3};

    fn detector() -> FaceDetector {
        let params = FacesParams { mode: FaceMode::Box, width: 640, neighbors: 5 };
        FaceDetector::new(&params, Path::new(DEFAULT_FACE_CASCADE)).expect("opencv-data installed")
    }

    #[test]
    fn finds_the_face_in_a_real_photo() {
        let photo = astronaut();
        let faces = detector().detect(&photo).unwrap();
        assert_eq!(faces.len(), 1, "one face in the astronaut portrait: {faces:?}");
        // Eileen Collins' face sits in the upper middle of the 512x512 portrait.
        let f = faces[0];
        let centre = (f.x + f.width / 2, f.y + f.height / 2);
        assert!((150..300).contains(&centre.0) && (50..200).contains(&centre.1), "face at {f:?}");
        assert!((60..200).contains(&f.width), "face size {f:?}");
    }

    #[test]
    fn finds_it_through_the_downscaled_copy() {
        // The same photo on a 1920x1080 canvas is detected on a 640-wide copy.
        let photo = astronaut();
        let mut canvas = Mat::new_rows_cols_with_default(1080, 1920, CV_8UC3, Scalar::all(40.0)).unwrap();
        let mut big = Mat::default();
        imgproc::resize(&photo, &mut big, Size::new(900, 900), 0.0, 0.0, imgproc::INTER_LINEAR).unwrap();
        big.copy_to(&mut canvas.roi_mut(Rect::new(500, 100, 900, 900)).unwrap()).unwrap();
        let faces = detector().detect(&canvas).unwrap();
        assert_eq!(faces.len(), 1, "{faces:?}");
        assert!(faces[0].x > 500 && faces[0].y > 100, "box in full-frame coordinates: {:?}", faces[0]);
    }

    #[test]
    fn no_face_in_a_blank_frame() {
        let blank = Mat::new_rows_cols_with_default(480, 640, CV_8UC3, Scalar::all(128.0)).unwrap();
        assert!(detector().detect(&blank).unwrap().is_empty());
    }

    #[test]
    fn blur_mode_anonymises_only_the_face() {
        let photo = astronaut();
        let face = detector().detect(&photo).unwrap()[0];
        let chain: Chain = "faces:mode=blur".parse().unwrap();
        let out = Processor::new(&chain, &FilterEnv::default()).unwrap().apply(&photo, None).unwrap();

        assert!(detector().detect(&out).unwrap().is_empty(), "the blurred face must not be found again");
        // Outside the face box nothing changed.
        let mut mask =
            Mat::new_rows_cols_with_default(photo.rows(), photo.cols(), core::CV_8UC1, Scalar::all(255.0)).unwrap();
        imgproc::rectangle(&mut mask, face, Scalar::all(0.0), imgproc::FILLED, imgproc::LINE_8, 0).unwrap();
        assert_eq!(core::norm2(&photo, &out, core::NORM_INF, &mask).unwrap(), 0.0);
        // Inside it did, a lot.
        let before = photo.roi(face).unwrap().try_clone().unwrap();
        let after = out.roi(face).unwrap().try_clone().unwrap();
        assert!(core::norm2(&before, &after, core::NORM_L1, &core::no_array()).unwrap() > 1e5);
    }
}
