//! `edges`: Canny on the grey image, returned as a 3-channel frame. On tiles it runs in two
//! parts ([`EdgesPart`]): each tile's edges within the tile, then the edges across the tiles'
//! seams on the joined frame.

use opencv::core::Mat;
use opencv::imgproc;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use super::canny::{Canny, MAP_REACH};
use super::def::{
    Filter, FilterDef, FilterEnv, FilterParams, Image, Kind, Params, Range, Reach, Stage, numbers, param,
};
use super::layout::{Grid, Layout, MAX_SIDE};
use super::{FilterError, ParamError};

/// Canny edge detection on the grey image, returned as a 3-channel frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EdgesParams {
    /// Lower hysteresis threshold.
    pub low: f64,
    /// Upper hysteresis threshold, at least `low`.
    pub high: f64,
    /// Which of Canny's parts the step runs: [`EdgesPart::All`] for every chain a user
    /// writes; the plan for tiles makes the other two.
    pub part: EdgesPart,
}

/// Which part of Canny an `edges` step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EdgesPart {
    /// The whole detector.
    #[default]
    All,
    /// On a tile cut with `margin` around it: all the tile can decide (see
    /// `Canny::tile` in canny.rs).
    Tile {
        /// The tiles' margin.
        margin: u32,
    },
    /// On the frame joined from such tiles, of a `cols`×`rows` grid: the edges across their
    /// seams.
    Seams {
        /// Tiles across.
        cols: u32,
        /// Tiles down.
        rows: u32,
        /// The tiles' margin.
        margin: u32,
    },
}

/// The widest tile margin a part of edges takes: more than any chain reaches (16 blurs of 255).
const MAX_MARGIN: u32 = 1 << 16;

/// Why Canny's last part needs the whole frame.
const HYSTERESIS: &str =
    "Canny's hysteresis follows an edge across the whole frame: no margin makes a tile's edges the frame's";

const THRESHOLD: Range = numbers(0.0, 10_000.0);

impl FilterParams for EdgesParams {
    const DEF: FilterDef = FilterDef {
        name: "edges",
        help: "Canny edges of the grey image",
        params: &[
            param("low", "50", THRESHOLD, "a number from 0 to 10000", "0-10000"),
            param("high", "150", THRESHOLD, "a number from 0 to 10000", "0-10000, at least low"),
        ],
        kind: Kind::Pixel,
    };

    fn read(p: &mut Params<'_>) -> Result<Self, ParamError> {
        Ok(EdgesParams { low: p.get("low")?, high: p.get("high")?, part: EdgesPart::All })
    }
}

impl Filter for EdgesParams {
    fn values(&self) -> Vec<String> {
        vec![self.low.to_string(), self.high.to_string()]
    }

    fn conflict(&self) -> Option<String> {
        if self.low > self.high {
            return Some(format!("low={} must not exceed high={}", self.low, self.high));
        }
        let side = 1..=MAX_SIDE;
        match self.part {
            EdgesPart::All => None,
            EdgesPart::Tile { margin } | EdgesPart::Seams { margin, .. } if margin > MAX_MARGIN => {
                Some(format!("a margin of {margin} is over {MAX_MARGIN}"))
            }
            EdgesPart::Seams { cols, rows, .. } if !side.contains(&cols) || !side.contains(&rows) => {
                Some(format!("a {cols}x{rows} grid of tiles"))
            }
            EdgesPart::Tile { .. } | EdgesPart::Seams { .. } => None,
        }
    }

    fn reach(&self) -> Reach {
        match self.part {
            // A pixel's class is local; what the tile cannot decide, the seams do.
            EdgesPart::Tile { .. } => Reach::Pixels(MAP_REACH),
            EdgesPart::All | EdgesPart::Seams { .. } => Reach::Whole(HYSTERESIS),
        }
    }

    fn stage(&self, _: &FilterEnv) -> Result<Box<dyn Stage>, FilterError> {
        Ok(Box::new(Edges::new(*self)))
    }
}

impl Stage for Edges {
    fn run(&mut self, image: Image<'_>, _: &Mat, _: Option<&Mat>) -> Result<Mat, FilterError> {
        Ok(self.apply(image)?)
    }
}

impl EdgesParams {
    /// Canny needs the whole frame only for its hysteresis: the reach of the part that runs in
    /// tiles, and what it leaves to the joined frame, in words.
    pub(super) fn split(&self) -> Option<(u32, &'static str)> {
        (self.part == EdgesPart::All).then_some((MAP_REACH, "its hysteresis across the seams"))
    }

    /// Where [`EdgesParams::split`] says it splits: the part run on the tiles of `grid`, cut
    /// with `margin`, and the part run on the frame joined from them.
    pub(super) fn halves(&self, grid: Grid, margin: u32) -> Option<(Self, Self)> {
        let part = |part| EdgesParams { part, ..*self };
        let seams = EdgesPart::Seams { cols: grid.cols, rows: grid.rows, margin };
        (self.part == EdgesPart::All).then(|| (part(EdgesPart::Tile { margin }), part(seams)))
    }
}

/// Canny with per-thread grey and edge-map buffers, reused for every frame.
pub(super) struct Edges {
    params: EdgesParams,
    canny: Canny,
    grey: Mat,
    edges: Mat,
}

impl Edges {
    pub(super) fn new(params: EdgesParams) -> Self {
        Edges { params, canny: Canny::default(), grey: Mat::default(), edges: Mat::default() }
    }

    pub(super) fn apply(&mut self, input: Image<'_>) -> opencv::Result<Mat> {
        let (low, high) = (self.params.low, self.params.high);
        if let EdgesPart::Seams { cols, rows, margin } = self.params.part {
            let mut frame = input.into_owned()?;
            let layout = Layout::new(frame.cols() as u32, frame.rows() as u32, Grid { cols, rows }, margin);
            let tiles = (0..layout.tiles().len()).map(|i| (layout.tiles()[i].core, layout.inner(i)));
            self.canny.seams(&mut frame, tiles)?;
            return Ok(frame);
        }
        imgproc::cvt_color(input.as_mat(), &mut self.grey, imgproc::COLOR_BGR2GRAY, 0)?;
        let mut out = Mat::default();
        // Aperture 3 and the L1 gradient, as cv::Canny by default: see canny.rs for why it is ours.
        if let EdgesPart::Tile { margin } = self.params.part {
            self.canny.tile(&self.grey, (low, high), margin as usize, &mut out)?;
        } else {
            self.canny.detect(&self.grey, low, high, &mut self.edges)?;
            imgproc::cvt_color(&self.edges, &mut out, imgproc::COLOR_GRAY2BGR, 0)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{self, CV_8UC3, Rect, Scalar, Vec3b};

    #[test]
    fn edges_of_a_rectangle_are_on_its_sides() {
        let mut frame = Mat::new_rows_cols_with_default(200, 300, CV_8UC3, Scalar::all(0.0)).unwrap();
        let rect = Rect::new(60, 50, 150, 90);
        imgproc::rectangle(&mut frame, rect, Scalar::all(255.0), imgproc::FILLED, imgproc::LINE_8, 0).unwrap();

        let out = Edges::new(EdgesParams { low: 50.0, high: 150.0, part: EdgesPart::All })
            .apply(Image::Source(&frame))
            .unwrap();
        assert_eq!(out.typ(), CV_8UC3);
        assert_eq!(out.size().unwrap(), frame.size().unwrap());

        let (x0, y0, x1, y1) = (rect.x, rect.y, rect.x + rect.width - 1, rect.y + rect.height - 1);
        let mut on_side = [0; 4];
        for y in 0..out.rows() {
            for x in 0..out.cols() {
                let px = out.at_2d::<Vec3b>(y, x).unwrap();
                if px[0] == 0 {
                    continue;
                }
                assert!(px[0] == 255 && px[1] == 255 && px[2] == 255, "edge pixels are white");
                // Canny marks one side of the step: within a pixel of the rectangle's border.
                let near = |a: i32, b: i32| (a - b).abs() <= 1;
                let within = |v: i32, lo: i32, hi: i32| v >= lo - 1 && v <= hi + 1;
                let sides = [
                    near(x, x0) && within(y, y0, y1),
                    near(x, x1) && within(y, y0, y1),
                    near(y, y0) && within(x, x0, x1),
                    near(y, y1) && within(x, x0, x1),
                ];
                assert!(sides.iter().any(|s| *s), "edge pixel at ({x},{y}) is not on a side of {rect:?}");
                for (count, hit) in on_side.iter_mut().zip(sides) {
                    *count += hit as i32;
                }
            }
        }
        // Every side is traced along (nearly) its whole length.
        assert!(on_side[0] >= rect.height - 4 && on_side[1] >= rect.height - 4, "{on_side:?}");
        assert!(on_side[2] >= rect.width - 4 && on_side[3] >= rect.width - 4, "{on_side:?}");
    }

    #[test]
    fn a_part_from_a_broker_message_is_held_to_its_bounds() {
        // A forged task's chain is checked as it is read: no empty or oversized grid, no margin
        // past any chain's reach.
        let spec = |part| crate::filters::FilterSpec::Edges(EdgesParams { low: 50.0, high: 150.0, part });
        let read = |part| crate::filters::Chain::new(vec![spec(part)]);
        assert!(read(EdgesPart::Tile { margin: 14 }).is_ok());
        assert!(read(EdgesPart::Seams { cols: 4, rows: 4, margin: 14 }).is_ok());
        for bad in [
            EdgesPart::Tile { margin: MAX_MARGIN + 1 },
            EdgesPart::Seams { cols: 0, rows: 2, margin: 2 },
            EdgesPart::Seams { cols: 2, rows: 17, margin: 2 },
            EdgesPart::Seams { cols: 2, rows: 2, margin: u32::MAX },
        ] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.starts_with("edges: "), "{bad:?}: {err}");
        }
        // Seams over a grid finer than the frame, or a tile narrower than its margins, end
        // without a panic.
        let frame = Mat::new_rows_cols_with_default(5, 7, CV_8UC3, Scalar::all(128.0)).unwrap();
        for part in [EdgesPart::Seams { cols: 16, rows: 16, margin: 3 }, EdgesPart::Tile { margin: 9 }] {
            let out = Edges::new(EdgesParams { low: 50.0, high: 150.0, part }).apply(Image::Source(&frame)).unwrap();
            assert_eq!((out.cols(), out.rows()), (7, 5), "{part:?}");
        }
    }

    #[test]
    fn flat_frame_has_no_edges() {
        let frame = Mat::new_rows_cols_with_default(64, 64, CV_8UC3, Scalar::all(128.0)).unwrap();
        let out = Edges::new(EdgesParams { low: 50.0, high: 150.0, part: EdgesPart::All })
            .apply(Image::Source(&frame))
            .unwrap();
        let mut grey = Mat::default();
        imgproc::cvt_color(&out, &mut grey, imgproc::COLOR_BGR2GRAY, 0).unwrap();
        assert_eq!(core::count_non_zero(&grey).unwrap(), 0);
    }
}
