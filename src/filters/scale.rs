//! `scale`: resizing, by area averaging to shrink and bicubic interpolation to enlarge.

use opencv::core::{Mat, Size};
use opencv::imgproc;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use super::def::{Filter, FilterDef, FilterEnv, FilterParams, Kind, ParamDef, Params, Range, Reach, Stage, Stateless};
use super::{FilterError, ParamError};

/// Resizing to a width and/or a height; a dimension left 0 follows from the other, keeping the
/// aspect ratio, rounded to an even number of pixels (what 4:2:0 encoders need).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleParams {
    /// Width in pixels, 16..=8192, or 0.
    pub width: u32,
    /// Height in pixels, 16..=8192, or 0.
    pub height: u32,
}

impl ScaleParams {
    /// The size a `width`×`height` frame is scaled to.
    pub fn size_of(&self, width: u32, height: u32) -> (u32, u32) {
        let follow = |wanted: u32, this: u32, other: u32| {
            let exact = f64::from(wanted) * f64::from(this) / f64::from(other.max(1));
            ((exact / 2.0).round() as u32 * 2).max(2)
        };
        match (self.width, self.height) {
            (0, h) => (follow(h, width, height), h),
            (w, 0) => (w, follow(w, height, width)),
            (w, h) => (w, h),
        }
    }
}

const SIDE: ParamDef = ParamDef {
    key: "",
    default: "0",
    range: Range::Int { min: 16, max: 8192, odd: false, or_zero: true },
    expected: "0 (from the other side) or 16 to 8192 pixels",
    note: "16-8192, or 0",
};

impl FilterParams for ScaleParams {
    const DEF: FilterDef = FilterDef {
        name: "scale",
        help: "resize; a side left 0 follows from the other, keeping the aspect ratio",
        params: &[ParamDef { key: "width", ..SIDE }, ParamDef { key: "height", ..SIDE }],
        kind: Kind::Resize,
    };

    fn read(p: &mut Params<'_>) -> Result<Self, ParamError> {
        Ok(ScaleParams { width: p.get("width")?, height: p.get("height")? })
    }
}

impl Filter for ScaleParams {
    fn values(&self) -> Vec<String> {
        vec![self.width.to_string(), self.height.to_string()]
    }

    fn conflict(&self) -> Option<String> {
        (self.width == 0 && self.height == 0).then(|| "give a width, a height or both".into())
    }

    fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        self.size_of(width, height)
    }

    fn reach(&self) -> Reach {
        Reach::Whole("resizing maps each output pixel through the whole frame's size")
    }

    fn stage(&self, _: &FilterEnv) -> Result<Box<dyn Stage>, FilterError> {
        Ok(Box::new(*self))
    }
}

impl Stateless for ScaleParams {
    fn apply(&self, input: &Mat) -> opencv::Result<Mat> {
        let (w, h) = self.size_of(input.cols() as u32, input.rows() as u32);
        let shrinking = i64::from(w) * i64::from(h) < i64::from(input.cols()) * i64::from(input.rows());
        let interpolation = if shrinking { imgproc::INTER_AREA } else { imgproc::INTER_CUBIC };
        let mut out = Mat::default();
        imgproc::resize(input, &mut out, Size::new(w as i32, h as i32), 0.0, 0.0, interpolation)?;
        Ok(out)
    }
}
