//! The geometry of tiles: a grid over a frame, each tile's core (its part of the frame) and the
//! part cut for it, its core with a margin around it; cutting a frame and joining the tiles'
//! cores. What the margin must be, and which chains tile, is [`super::tiles`]'.

use std::fmt;

use opencv::core::{CV_8UC3, Mat, Rect, Scalar};
use opencv::prelude::*;

/// The most tiles along either side.
pub const MAX_SIDE: u32 = 16;

/// A grid of `cols` × `rows` tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Tiles across.
    pub cols: u32,
    /// Tiles down.
    pub rows: u32,
}

impl Grid {
    /// Tiles in all.
    pub fn count(&self) -> usize {
        (self.cols * self.rows) as usize
    }
}

impl fmt::Display for Grid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.cols, self.rows)
    }
}

/// One tile: its part of the frame, and that part with its margin (both in frame pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    /// The pixels this tile gives the frame.
    pub core: Rect,
    /// What is cut from the frame for it: the core and its margin, within the frame.
    pub padded: Rect,
}

/// A frame's tiles, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    width: i32,
    height: i32,
    grid: Grid,
    halo: u32,
    tiles: Vec<Tile>,
}

impl Layout {
    /// `grid` over a `width`×`height` frame, each tile's margin `halo` pixels (less at the
    /// frame's edges). The cores split each side as evenly as whole pixels allow.
    pub fn new(width: u32, height: u32, grid: Grid, halo: u32) -> Self {
        let (w, h, m) = (width as i32, height as i32, halo.min(width.max(height)) as i32);
        let cut = |len: i32, parts: u32, i: u32| (i64::from(len) * i64::from(i) / i64::from(parts)) as i32;
        let mut tiles = Vec::with_capacity(grid.count());
        for r in 0..grid.rows {
            let (y0, y1) = (cut(h, grid.rows, r), cut(h, grid.rows, r + 1));
            for c in 0..grid.cols {
                let (x0, x1) = (cut(w, grid.cols, c), cut(w, grid.cols, c + 1));
                let (px0, py0) = ((x0 - m).max(0), (y0 - m).max(0));
                let (px1, py1) = ((x1 + m).min(w), (y1 + m).min(h));
                tiles.push(Tile {
                    core: Rect::new(x0, y0, x1 - x0, y1 - y0),
                    padded: Rect::new(px0, py0, px1 - px0, py1 - py0),
                });
            }
        }
        Layout { width: w, height: h, grid, halo, tiles }
    }

    /// The grid.
    pub fn grid(&self) -> Grid {
        self.grid
    }

    /// The margin around each tile.
    pub fn halo(&self) -> u32 {
        self.halo
    }

    /// The tiles, row by row.
    pub fn tiles(&self) -> &[Tile] {
        &self.tiles
    }

    /// The frame size it is for.
    pub fn size(&self) -> (u32, u32) {
        (self.width as u32, self.height as u32)
    }

    /// The part of tile `i` at least the margin from the sides it is cut with: within its core,
    /// and empty where the tile is no wider or taller than two margins.
    pub fn inner(&self, i: usize) -> Rect {
        let (p, m) = (self.tiles[i].padded, self.halo.min(i32::MAX as u32 / 4) as i32);
        let (w, h) = (p.width - 2 * m, p.height - 2 * m);
        if w <= 0 || h <= 0 { Rect::new(p.x, p.y, 0, 0) } else { Rect::new(p.x + m, p.y + m, w, h) }
    }

    /// Tile `i` of `frame`, with its margin, as a frame of its own.
    pub fn cut(&self, frame: &Mat, i: usize) -> opencv::Result<Mat> {
        Mat::roi(frame, self.tiles[i].padded)?.try_clone()
    }

    /// The frame made of `parts` (each tile as filtered, margin included), row by row.
    pub fn join(&self, parts: &[Mat]) -> opencv::Result<Mat> {
        let mut frame = Mat::new_rows_cols_with_default(self.height, self.width, CV_8UC3, Scalar::all(0.0))?;
        for (tile, part) in self.tiles.iter().zip(parts) {
            if part.size()? != tile.padded.size() || part.typ() != CV_8UC3 {
                return Err(opencv::Error::new(
                    opencv::core::StsBadSize,
                    format!("a tile of {:?} came back as {:?}", tile.padded.size(), part.size()?),
                ));
            }
            let inner =
                Rect::new(tile.core.x - tile.padded.x, tile.core.y - tile.padded.y, tile.core.width, tile.core.height);
            let from = Mat::roi(part, inner)?;
            let mut to = Mat::roi_mut(&mut frame, tile.core)?;
            from.copy_to(&mut to)?;
        }
        Ok(frame)
    }
}
