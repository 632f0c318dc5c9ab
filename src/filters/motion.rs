//! `motion`: boxes around the regions that changed since the previous source frame.
//!
//! The previous frame is an input like the current one (it travels in the frame's task), so
//! the result is the same whichever thread or host processes the frame.

use opencv::core::{self, BORDER_CONSTANT, Mat, Point, Rect, Scalar, Size, Vector};
use opencv::imgproc;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use super::def::{Filter, FilterDef, FilterEnv, FilterParams, Image, Kind, Params, Reach, Stage, ints, param};
use super::{FilterError, ParamError};

/// Motion detection against the previous source frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MotionParams {
    /// Per-pixel grey difference that counts as change, 0..=255.
    pub threshold: u32,
    /// Smallest moving region, in pixels of the full frame, that gets a box.
    pub min_area: u32,
    /// Dilation passes that merge nearby changed pixels into one region.
    pub dilate: u32,
}

impl FilterParams for MotionParams {
    const DEF: FilterDef = FilterDef {
        name: "motion",
        help: "boxes around what moved since the previous frame (a detector)",
        params: &[
            param("threshold", "25", ints(1, 255), "an integer from 1 to 255", "1-255"),
            param("min_area", "400", ints(0, u32::MAX as i64), "a non-negative integer", "pixels"),
            param("dilate", "2", ints(0, 20), "an integer from 0 to 20", "0-20"),
        ],
        kind: Kind::Detector { previous: true },
    };

    fn read(p: &mut Params<'_>) -> Result<Self, ParamError> {
        Ok(MotionParams { threshold: p.get("threshold")?, min_area: p.get("min_area")?, dilate: p.get("dilate")? })
    }
}

impl Filter for MotionParams {
    fn values(&self) -> Vec<String> {
        vec![self.threshold.to_string(), self.min_area.to_string(), self.dilate.to_string()]
    }

    fn reach(&self) -> Reach {
        Reach::Whole("a detector looks at the whole frame (its boxes and its threshold are the frame's)")
    }

    fn stage(&self, _: &FilterEnv) -> Result<Box<dyn Stage>, FilterError> {
        Ok(Box::new(Motion::new(*self)))
    }
}

impl Stage for Motion {
    fn run(&mut self, image: Image<'_>, source: &Mat, previous: Option<&Mat>) -> Result<Mat, FilterError> {
        self.apply(image.into_owned()?, source, previous)
    }
}

/// Per-thread buffers for [`detect`].
#[derive(Default)]
pub struct MotionScratch {
    diff: Mat,
    grey: Mat,
    smooth: Mat,
    mask: Mat,
    dilated: Mat,
}

/// The bounding boxes of the regions that differ between `previous` and `current`.
pub fn detect(
    previous: &Mat,
    current: &Mat,
    p: &MotionParams,
    s: &mut MotionScratch,
) -> Result<Vec<Rect>, FilterError> {
    let (prev_size, size) = (previous.size()?, current.size()?);
    if prev_size != size {
        return Err(FilterError::SizeMismatch {
            prev_w: prev_size.width,
            prev_h: prev_size.height,
            w: size.width,
            h: size.height,
        });
    }
    core::absdiff(previous, current, &mut s.diff)?;
    imgproc::cvt_color(&s.diff, &mut s.grey, imgproc::COLOR_BGR2GRAY, 0)?;
    // A small blur keeps compression noise from showing up as speckles of motion.
    imgproc::gaussian_blur(&s.grey, &mut s.smooth, Size::new(5, 5), 0.0, 0.0, core::BORDER_DEFAULT)?;
    imgproc::threshold(&s.smooth, &mut s.mask, f64::from(p.threshold), 255.0, imgproc::THRESH_BINARY)?;
    let mask = if p.dilate > 0 {
        let kernel = imgproc::get_structuring_element(imgproc::MORPH_RECT, Size::new(3, 3), Point::new(-1, -1))?;
        imgproc::dilate(
            &s.mask,
            &mut s.dilated,
            &kernel,
            Point::new(-1, -1),
            p.dilate as i32,
            BORDER_CONSTANT,
            Scalar::all(0.0),
        )?;
        &s.dilated
    } else {
        &s.mask
    };
    let mut contours = Vector::<Vector<Point>>::new();
    imgproc::find_contours(
        mask,
        &mut contours,
        imgproc::RETR_EXTERNAL,
        imgproc::CHAIN_APPROX_SIMPLE,
        Point::new(0, 0),
    )?;
    let mut boxes = Vec::new();
    for contour in &contours {
        let r = imgproc::bounding_rect(&contour)?;
        if i64::from(r.width) * i64::from(r.height) >= i64::from(p.min_area) {
            boxes.push(r);
        }
    }
    // Contour order depends on OpenCV internals; callers and tests get a stable order.
    boxes.sort_by_key(|r| (r.y, r.x, r.width, r.height));
    Ok(boxes)
}

pub(super) struct Motion {
    params: MotionParams,
    scratch: MotionScratch,
}

impl Motion {
    pub(super) fn new(params: MotionParams) -> Self {
        Motion { params, scratch: MotionScratch::default() }
    }

    /// Boxes the motion between `previous` and `source` on `image`; the first frame has none.
    pub(super) fn apply(&mut self, mut image: Mat, source: &Mat, previous: Option<&Mat>) -> Result<Mat, FilterError> {
        let Some(previous) = previous else {
            return Ok(image);
        };
        let thickness = (image.cols() / 400).max(2);
        for r in detect(previous, source, &self.params, &mut self.scratch)? {
            imgproc::rectangle(&mut image, r, Scalar::new(0.0, 0.0, 255.0, 0.0), thickness, imgproc::LINE_8, 0)?;
        }
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::checkerboard;
    use opencv::core::CV_8UC3;

    fn params() -> MotionParams {
        MotionParams { threshold: 25, min_area: 400, dilate: 2 }
    }

    fn scene_with_square(x: i32, y: i32) -> Mat {
        // A textured, static background with one grey square on it.
        let mut frame = checkerboard(240, 320, 16);
        imgproc::rectangle(&mut frame, Rect::new(x, y, 40, 40), Scalar::all(90.0), imgproc::FILLED, imgproc::LINE_8, 0)
            .unwrap();
        frame
    }

    #[test]
    fn finds_the_one_moving_square_and_nothing_else() {
        let before = scene_with_square(100, 80);
        let after = scene_with_square(112, 86);
        let boxes = detect(&before, &after, &params(), &mut MotionScratch::default()).unwrap();
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let b = boxes[0];
        // The box covers where the square was and where it went, and little else.
        let union = Rect::new(100, 80, 52, 46);
        assert_eq!(b & union, union, "box {b:?} must contain {union:?}");
        assert!(b.width <= union.width + 12 && b.height <= union.height + 12, "box {b:?} too large");
    }

    #[test]
    fn no_motion_between_equal_frames() {
        let frame = scene_with_square(50, 50);
        assert!(detect(&frame, &frame, &params(), &mut MotionScratch::default()).unwrap().is_empty());
    }

    #[test]
    fn small_changes_stay_below_min_area() {
        let before = Mat::new_rows_cols_with_default(120, 160, CV_8UC3, Scalar::all(0.0)).unwrap();
        let mut after = before.try_clone().unwrap();
        imgproc::rectangle(
            &mut after,
            Rect::new(10, 10, 3, 3),
            Scalar::all(255.0),
            imgproc::FILLED,
            imgproc::LINE_8,
            0,
        )
        .unwrap();
        let p = MotionParams { threshold: 25, min_area: 400, dilate: 0 };
        assert!(detect(&before, &after, &p, &mut MotionScratch::default()).unwrap().is_empty());
    }

    #[test]
    fn first_frame_passes_through_and_size_mismatch_fails() {
        let frame = scene_with_square(10, 10);
        let mut m = Motion::new(params());
        let out = m.apply(frame.try_clone().unwrap(), &frame, None).unwrap();
        assert_eq!(core::norm2(&out, &frame, core::NORM_INF, &core::no_array()).unwrap(), 0.0);

        let other = checkerboard(100, 100, 10);
        let err = m.apply(frame.try_clone().unwrap(), &frame, Some(&other)).unwrap_err();
        assert!(matches!(err, FilterError::SizeMismatch { .. }), "{err}");
    }
}
