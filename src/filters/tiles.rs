//! Tiles: a large frame cut into a grid, each tile with a margin as wide as the chain's reach
//! around it, so that the chain gives the tile's own part exactly the pixels it gives on the
//! whole frame. The tiles are filtered apart (on several threads or workers) and their parts
//! put back together.
//!
//! Why it is exact: a filter's output pixel depends on the input pixels within its reach
//! ([`Reach::Pixels`]); a chain's reach is the sum of its filters'. A tile's margin of the
//! chain's reach holds every pixel its part depends on. Where a tile meets the frame's edge it
//! has no margin, and the filters extend its edge just as they extend the frame's (the same
//! border rule on the same pixels). Filters whose output depends on the whole frame
//! ([`Reach::Whole`]: detectors, Canny's hysteresis, resizing) are not tiled, but where such a
//! filter does most of its work locally ([`FilterSpec::split`]: Canny classes each pixel from
//! its neighbours, and only its hysteresis looks further), that part runs in the tiles and the
//! rest on the joined frame.

use std::fmt;
use std::str::FromStr;

pub use super::layout::{Grid, Layout, MAX_SIDE, Tile};
use super::{Chain, FilterSpec, Reach};

/// The smallest frame `--tiles auto` tiles: 4K UHD.
pub const AUTO_FROM: (u32, u32) = (3840, 2160);

/// How frames are tiled (`--tiles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tiles {
    /// Frames of [`AUTO_FROM`] and larger, into the fewest square grid whose tiles fit.
    #[default]
    Auto,
    /// Never.
    Off,
    /// Always into this grid.
    Grid(Grid),
}

impl fmt::Display for Tiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tiles::Auto => f.write_str("auto"),
            Tiles::Off => f.write_str("off"),
            Tiles::Grid(g) => g.fmt(f),
        }
    }
}

impl FromStr for Tiles {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let grid = || {
            let (c, r) = s.split_once(['x', 'X'])?;
            let (cols, rows) = (c.trim().parse::<u32>().ok()?, r.trim().parse::<u32>().ok()?);
            ((1..=MAX_SIDE).contains(&cols) && (1..=MAX_SIDE).contains(&rows)).then_some(Grid { cols, rows })
        };
        match s {
            "auto" => Ok(Tiles::Auto),
            "off" => Ok(Tiles::Off),
            _ => grid()
                .map(Tiles::Grid)
                .ok_or_else(|| format!("'{s}': use auto, off or COLSxROWS (each 1 to {MAX_SIDE}, e.g. 2x2)")),
        }
    }
}

impl serde::Serialize for Tiles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Tiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Chain {
    /// How far around an output pixel the chain's inputs lie: the sum of its filters' reaches;
    /// or the first filter that needs the whole frame, and why.
    pub fn reach(&self) -> Result<u32, (&'static str, &'static str)> {
        let t = self.tileable(false);
        match t.whole {
            Some(w) if t.steps < self.specs().len() => Err((w.name, w.why)),
            _ => Ok(t.reach),
        }
    }

    /// The chain's leading steps that tile, and the first that needs the whole frame; where
    /// `split`, that step's local part (edges within each tile) tiles too.
    fn tileable(&self, split: bool) -> Tileable {
        let mut reach = 0u32;
        for (steps, spec) in self.specs().iter().enumerate() {
            match spec.filter().reach() {
                Reach::Pixels(n) => reach += n,
                Reach::Whole(why) => {
                    let splits = spec.split().filter(|_| split);
                    reach += splits.map_or(0, |(n, _)| n);
                    let (name, spec) = (spec.name(), *spec);
                    return Tileable { steps, reach, whole: Some(WholeStep { name, why, spec, splits }) };
                }
            }
        }
        Tileable { steps: self.specs().len(), reach, whole: None }
    }
}

/// What of a chain tiles.
struct Tileable {
    /// How many leading steps tile.
    steps: usize,
    /// How far their inputs lie, with those of the next step's local half, where it has one.
    reach: u32,
    /// The first step that needs the whole frame, if any.
    whole: Option<WholeStep>,
}

/// A step that needs the whole frame.
struct WholeStep {
    name: &'static str,
    why: &'static str,
    spec: FilterSpec,
    /// Where it runs in part in the tiles: that part's reach, and what it leaves to the joined
    /// frame.
    splits: Option<(u32, &'static str)>,
}

/// How a chain runs over tiles: its leading steps in tiles, the rest on the joined frame.
#[derive(Debug, Clone, PartialEq)]
pub struct TilePlan {
    /// The tiles, with the margin the tiled steps reach.
    pub layout: Layout,
    /// The steps run in tiles.
    pub tiled: Chain,
    /// The steps from the first that needs the whole frame on (or from its half that does),
    /// run on the joined frame.
    pub whole: Option<Chain>,
    /// What runs on the whole frame and why, in words.
    whole_how: Option<String>,
}

impl TilePlan {
    /// How the frames are cut, in words (a summary's `tiles`).
    pub fn describe(&self) -> String {
        let mut how = format!("{}, a margin of {} px", self.layout.grid(), self.layout.halo());
        if let Some(whole) = &self.whole_how {
            how.push_str("; ");
            how.push_str(whole);
        }
        how
    }
}

/// Whether and how `chain` tiles a `width`×`height` frame as `tiles` asks, its tiles at most
/// `max_tile_bytes` of BGR each (margins included): the plan, or why not (`None` where nothing
/// was asked: `off`, or `auto` on smaller frames). The chain's leading steps that tile run in
/// tiles, the rest on the joined frame. Where `lossless` (tiles come back exactly as filtered),
/// the first step that needs the whole frame may run its local half in the tiles too
/// (`edges` within each tile, whose grey levels for the seams a lossy encoding would blur). A chain whose first
/// step needs the whole frame and does not split is not tiled.
pub fn plan(
    tiles: Tiles,
    chain: &Chain,
    (width, height): (u32, u32),
    max_tile_bytes: u64,
    lossless: bool,
) -> Result<Option<TilePlan>, String> {
    let large = u64::from(width) * u64::from(height) >= u64::from(AUTO_FROM.0) * u64::from(AUTO_FROM.1);
    if tiles == Tiles::Off || (tiles == Tiles::Auto && !large) {
        return Ok(None);
    }
    let Tileable { steps, reach: halo, whole } = chain.tileable(lossless);
    if let Some(w) = &whole
        && steps == 0
        && w.splits.is_none()
    {
        return Err(format!("{} runs on the whole frame: {}", w.name, w.why));
    }
    let grid = match tiles {
        Tiles::Grid(g) => g,
        _ => {
            // The fewest square grid (2x2 at least) whose tiles, margins included, fit.
            let fits = |n: u32| {
                let side = |len: u32| u64::from(len.div_ceil(n) + 2 * halo.min(len));
                side(width) * side(height) * 3 <= max_tile_bytes
            };
            let n = (2..=MAX_SIDE).find(|n| fits(*n)).unwrap_or(MAX_SIDE);
            Grid { cols: n, rows: n }
        }
    };
    if grid.cols > width || grid.rows > height {
        return Err(format!("a {grid} grid does not fit a {width}x{height} frame"));
    }
    let (mut tiled, mut rest) = (chain.specs()[..steps].to_vec(), chain.specs()[steps..].to_vec());
    let whole_how = whole.map(|w| match (w.splits, w.spec.halves(grid, halo)) {
        (Some((_, what)), Some((local, after))) => {
            tiled.push(local);
            rest[0] = after;
            let then = (rest.len() > 1).then(|| format!(", then {}", text(&rest[1..])));
            format!("{} in tiles, but {what} on the joined frame{} ({})", w.name, then.unwrap_or_default(), w.why)
        }
        _ => format!("{} on the whole frame ({})", text(&rest), w.why),
    });
    let part = |s: Vec<FilterSpec>| Chain::new(s).map_err(|e| e.to_string());
    Ok(Some(TilePlan {
        layout: Layout::new(width, height, grid, halo),
        tiled: part(tiled)?,
        whole: (!rest.is_empty()).then(|| part(rest)).transpose()?,
        whole_how,
    }))
}

/// Steps as a chain writes them.
fn text(specs: &[FilterSpec]) -> String {
    specs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::*;
    use crate::filters::{FilterEnv, Processor};
    use opencv::core::{self, CV_8UC3, Mat, Scalar};
    use opencv::prelude::*;

    /// A frame of noise over gradients, `w`×`h`: every filter has something to do everywhere.
    fn busy_frame(w: i32, h: i32) -> Mat {
        let mut noise = Mat::new_rows_cols_with_default(h, w, CV_8UC3, Scalar::all(0.0)).unwrap();
        core::set_rng_seed(7).unwrap();
        core::randu(&mut noise, &Scalar::all(0.0), &Scalar::all(255.0)).unwrap();
        let photo = astronaut_sized(w, h);
        let mut out = Mat::default();
        core::add_weighted(&photo, 0.8, &noise, 0.2, 0.0, &mut out, -1).unwrap();
        out
    }

    fn apply(chain: &Chain, frame: &Mat) -> Mat {
        Processor::new(chain, &FilterEnv::default()).unwrap().apply(frame, None).unwrap()
    }

    /// `frame` through `chain` as its plan for `grid` says: the tiled steps on each tile, the
    /// rest on the joined frame.
    fn tiled(chain: &Chain, frame: &Mat, grid: Grid) -> Mat {
        let size = (frame.cols() as u32, frame.rows() as u32);
        let plan = plan(Tiles::Grid(grid), chain, size, u64::MAX, true).unwrap().unwrap();
        let layout = &plan.layout;
        let parts: Vec<Mat> =
            (0..layout.tiles().len()).map(|i| apply(&plan.tiled, &layout.cut(frame, i).unwrap())).collect();
        let joined = layout.join(&parts).unwrap();
        match &plan.whole {
            Some(whole) => {
                Processor::new(whole, &FilterEnv::default()).unwrap().apply_after(joined, frame, None).unwrap()
            }
            None => joined,
        }
    }

    fn identical(a: &Mat, b: &Mat) -> bool {
        let mut diff = Mat::default();
        core::absdiff(a, b, &mut diff).unwrap();
        diff.reshape(1, 0).and_then(|d| core::count_non_zero(&d)).unwrap() == 0
    }

    #[test]
    fn every_tileable_filter_and_chain_gives_the_untiled_frame_byte_for_byte() {
        // Odd sizes, so no side splits evenly; margins from 0 (grade) to 127 (blur:ksize=255).
        let frame = busy_frame(1281, 723);
        let chains = [
            "blur",
            "blur:ksize=3",
            "blur:ksize=255",
            "blur:ksize=9:sigma=7",
            "denoise",
            "denoise:size=9",
            "sharpen",
            "sharpen:radius=20",
            "grade:contrast=1.3:gamma=0.8:warmth=0.3",
            "blur,sharpen",
            "denoise,blur:ksize=7,grade:saturation=0",
            // Canny's edge map in tiles, its hysteresis on the joined frame.
            "edges",
            "edges:low=10:high=30",
            "edges:low=200:high=400",
            "blur,sharpen,edges",
            "edges,blur:ksize=5",
        ];
        for chain in chains {
            let chain: Chain = chain.parse().unwrap();
            let whole = apply(&chain, &frame);
            for grid in [Grid { cols: 1, rows: 2 }, Grid { cols: 2, rows: 2 }, Grid { cols: 3, rows: 3 }] {
                assert!(identical(&whole, &tiled(&chain, &frame, grid)), "{chain} in a {grid} grid");
            }
        }
    }

    #[test]
    fn a_margin_short_of_the_reach_is_caught() {
        // The test above would pass with any margin if tiles never differed: with a third of
        // the reach, they do. (One pixel short often does not show: the kernels' last taps
        // weigh too little to change an 8-bit value.)
        let frame = busy_frame(641, 361);
        let chain: Chain = "blur:ksize=9,sharpen".parse().unwrap();
        let reach = chain.reach().unwrap();
        let layout = Layout::new(641, 361, Grid { cols: 2, rows: 2 }, reach / 3);
        let parts: Vec<Mat> = (0..4).map(|i| apply(&chain, &layout.cut(&frame, i).unwrap())).collect();
        assert!(!identical(&apply(&chain, &frame), &layout.join(&parts).unwrap()));
        // (Canny's margin: canny::tests::a_tile_margin_of_one_is_caught.)
    }

    #[test]
    fn reaches_are_the_filters_kernels_and_whole_frame_steps_say_why() {
        let reach = |c: &str| c.parse::<Chain>().unwrap().reach();
        assert_eq!(reach("blur:ksize=15"), Ok(7));
        assert_eq!(reach("denoise:size=9"), Ok(4));
        // OpenCV's kernel for sigma 1.5 on 8-bit pixels: round(6 × 1.5 + 1) | 1 = 11.
        assert_eq!(reach("sharpen:radius=1.5"), Ok(5));
        assert_eq!(reach("grade"), Ok(0));
        assert_eq!(reach("blur:ksize=15,denoise:size=9,grade"), Ok(11));
        for (chain, step) in
            [("blur,edges", "edges"), ("faces", "faces"), ("motion", "motion"), ("scale:width=64", "scale")]
        {
            let (name, why) = reach(chain).unwrap_err();
            assert_eq!(name, step);
            assert!(!why.is_empty());
        }
    }

    #[test]
    fn auto_tiles_large_frames_into_the_fewest_grid_that_fits() {
        let chain: Chain = "blur".parse().unwrap();
        assert_eq!(plan(Tiles::Auto, &chain, (1920, 1080), 8 << 20, true), Ok(None), "1080p is not tiled");
        let k4 = plan(Tiles::Auto, &chain, (3840, 2160), 8 << 20, true).unwrap().unwrap();
        assert_eq!(k4.layout.grid(), Grid { cols: 2, rows: 2 });
        assert_eq!(k4.whole, None);
        let k8 = plan(Tiles::Auto, &chain, (7680, 4320), 8 << 20, true).unwrap().unwrap();
        for t in k8.layout.tiles() {
            assert!(t.padded.width as u64 * t.padded.height as u64 * 3 <= 8 << 20, "{t:?}");
        }
        assert_eq!(plan(Tiles::Off, &chain, (7680, 4320), 8 << 20, true), Ok(None));
        // Over a lossless transport, edges runs its map in the tiles and its hysteresis (and
        // what follows) on the joined frame, even first in the chain.
        let two = Tiles::Grid(Grid { cols: 2, rows: 2 });
        let chain: Chain = "blur,sharpen,edges,grade".parse().unwrap();
        let split = plan(two, &chain, (640, 360), 8 << 20, true).unwrap().unwrap();
        assert_eq!(split.tiled.to_string(), "blur:ksize=15:sigma=0,sharpen:amount=1:radius=1.5,edges:low=50:high=150");
        let edges = |c: &Chain, i: usize| match c.specs()[i] {
            FilterSpec::Edges(p) => p.part,
            other => panic!("{other} is not edges"),
        };
        assert_eq!(edges(&split.tiled, 2), crate::filters::EdgesPart::Tile { margin: 14 });
        let whole = split.whole.as_ref().unwrap();
        assert_eq!(whole.specs().len(), 2);
        assert_eq!(edges(whole, 0), crate::filters::EdgesPart::Seams { cols: 2, rows: 2, margin: 14 });
        assert_eq!(
            split.describe(),
            "2x2, a margin of 14 px; edges in tiles, but its hysteresis across the seams on the joined frame, \
             then grade:contrast=1:brightness=0:saturation=1:gamma=1:warmth=0 (Canny's hysteresis follows an edge \
             across the whole frame: no margin makes a tile's edges the frame's)"
        );
        let first = plan(two, &"edges,blur".parse().unwrap(), (640, 360), 8 << 20, true).unwrap().unwrap();
        assert_eq!((first.layout.halo(), first.whole.unwrap().specs().len()), (2, 2));
        // Over a lossy one (JPEG) the map's classes would not survive: edges runs whole, and
        // a chain that starts with a step that needs the whole frame is not tiled.
        let lossy = plan(two, &chain, (640, 360), 8 << 20, false).unwrap().unwrap();
        assert_eq!(lossy.tiled.to_string(), "blur:ksize=15:sigma=0,sharpen:amount=1:radius=1.5");
        assert!(
            lossy.describe().starts_with("2x2, a margin of 12 px; edges:low=50:high=150,grade"),
            "{}",
            lossy.describe()
        );
        let why = plan(two, &"edges,blur".parse().unwrap(), (640, 360), 8 << 20, false).unwrap_err();
        assert!(why.contains("edges runs on the whole frame"), "{why}");
        let why = plan(two, &"scale:width=320,blur".parse().unwrap(), (640, 360), 8 << 20, true).unwrap_err();
        assert!(why.contains("scale runs on the whole frame"), "{why}");
        assert_eq!("3x2".parse::<Tiles>(), Ok(Tiles::Grid(Grid { cols: 3, rows: 2 })));
        assert!("0x2".parse::<Tiles>().is_err() && "17x1".parse::<Tiles>().is_err() && "big".parse::<Tiles>().is_err());
    }

    #[test]
    fn the_cores_cover_the_frame_once() {
        let layout = Layout::new(3841, 2161, Grid { cols: 3, rows: 3 }, 5);
        let area: i64 = layout.tiles().iter().map(|t| i64::from(t.core.width) * i64::from(t.core.height)).sum();
        assert_eq!(area, 3841 * 2161);
        for t in layout.tiles() {
            assert!(t.padded.x >= 0 && t.padded.y >= 0 && t.padded.x + t.padded.width <= 3841);
            assert!(t.padded.contains(t.core.tl()) && t.padded.y + t.padded.height <= 2161);
        }
    }
}
