//! Canny edge detection, bit-for-bit the same as OpenCV's `cv::Canny` (aperture 3, L1
//! gradient), with a vectorisable non-maximum suppression.
//!
//! Why not call OpenCV: Debian builds `canny.cpp` for the SSE2 baseline, and its per-pixel,
//! branchy suppression loop took 4.0 ms of the 5.3 ms Canny costs on a 720p frame of the
//! sample video (compressed footage has many pixels above `low`). Here the gradients still
//! come from OpenCV's Sobel; suppression is branch-free arithmetic over whole rows, which LLVM
//! vectorises (AVX2 when the CPU has it, chosen at run time); hysteresis is a flood fill from
//! the strong pixels. Tests compare the result with `cv::Canny` on real and random images.
//!
//! For tiles, Canny also runs in two parts. A pixel's class (candidate, not an edge, edge)
//! depends on the grey pixels within [`MAP_REACH`] of it, so a tile with that margin classes
//! its pixels as the frame does; hysteresis can follow an edge across the frame, so a tile
//! ([`Canny::tile`]) settles the candidates it can and leaves those joined to its sides to the
//! joined frame ([`Canny::seams`]), which only looks along the tiles' sides.

use opencv::core::{BORDER_REPLICATE, CV_8UC1, CV_16S, Mat, Rect, Scalar, ToInputArray};
use opencv::imgproc;
use opencv::prelude::*;

/// tan(22.5°) in Q15, as OpenCV rounds it.
const TG22: i32 = 13573;
/// The fixed-point shift of [`TG22`].
const SHIFT: i32 = 15;

/// Map values, as in OpenCV: a weak candidate, not an edge, an edge; and for a tile, a weak
/// candidate that only the whole frame decides.
const WEAK: u8 = 0;
const NONE: u8 = 1;
const EDGE: u8 = 2;
const UNDECIDED: u8 = 3;

/// Canny with buffers reused from frame to frame.
#[derive(Default)]
pub struct Canny {
    dx: Mat,
    dy: Mat,
    /// Gradient magnitudes of three rows (row r in slot (r + 1) % 3), each padded by one zero
    /// on both sides.
    mag: Vec<i32>,
    /// The edge map with a one-pixel border of `NONE` around the image.
    map: Vec<u8>,
    stack: Vec<usize>,
    /// A tile's inner part of `map`, with a border of `NONE`.
    inner: Vec<u8>,
    /// A tile's result, one channel.
    levels: Mat,
    /// The pixels of a joined frame its tiles left open.
    open: Vec<(i32, i32)>,
}

impl Canny {
    /// Writes the edges of the 8-bit grey image `grey` into `edges` (0 or 255, same size).
    /// Thresholds are floored and swapped if `low > high`, as OpenCV does.
    pub fn detect(
        &mut self,
        grey: &(impl MatTraitConst + ToInputArray),
        low: f64,
        high: f64,
        edges: &mut Mat,
    ) -> opencv::Result<()> {
        let (w, h) = self.suppress(grey, low, high, true)?;
        follow(&mut self.map, w + 2, &mut self.stack, WEAK, EDGE);
        sized(edges, w, h, CV_8UC1)?;
        let out = edges.data_bytes_mut()?;
        for (i, row) in out.chunks_exact_mut(w.max(1)).enumerate() {
            for (o, m) in row.iter_mut().zip(self.map_row(i, w)) {
                *o = if *m == EDGE { 255 } else { 0 };
            }
        }
        Ok(())
    }

    /// Canny on one tile of a frame, all but what only the whole frame decides: each pixel as
    /// a grey level, 255 an edge, 0 not, and 128 undecided, for [`Canny::seams`] to settle
    /// once the tiles are joined. Only the pixels at least `margin` from the tile's sides (its
    /// inner part) are decided here, since only there is the whole neighbourhood the tile's
    /// own: a weak candidate there is an edge if it joins an edge within the inner part, not
    /// if its candidates never reach the inner part's rim, and undecided if they do. Nearer
    /// the sides each pixel keeps its class: 255 strong, 128 weak, 0 neither.
    pub fn tile(
        &mut self,
        grey: &(impl MatTraitConst + ToInputArray),
        (low, high): (f64, f64),
        margin: usize,
        out: &mut Mat,
    ) -> opencv::Result<()> {
        let (w, h) = self.suppress(grey, low, high, false)?;
        let stride = w + 2;
        // The inner part, with a border of NONE that keeps the hysteresis inside it.
        let (iw, ih) = (w.saturating_sub(2 * margin), h.saturating_sub(2 * margin));
        let (iw, ih) = if iw == 0 || ih == 0 { (0, 0) } else { (iw, ih) };
        let istride = iw + 2;
        self.inner.clear();
        self.inner.resize((ih + 2) * istride, NONE);
        self.stack.clear();
        for y in 0..ih {
            let (from, to) = ((y + margin + 1) * stride + margin + 1, (y + 1) * istride + 1);
            self.inner[to..to + iw].copy_from_slice(&self.map[from..from + iw]);
            push_edges(&self.inner[to..to + iw], to, &mut self.stack);
        }
        follow(&mut self.inner, istride, &mut self.stack, WEAK, EDGE);
        // Candidates joined to the rim may yet join an edge beyond it.
        if ih > 0 {
            let rim = (1..=iw).flat_map(|x| [istride + x, ih * istride + x]);
            let sides = (1..=ih).flat_map(|y| [y * istride + 1, y * istride + iw]);
            for p in rim.chain(sides) {
                if self.inner[p] == WEAK {
                    self.inner[p] = UNDECIDED;
                    self.stack.push(p);
                }
            }
            follow(&mut self.inner, istride, &mut self.stack, WEAK, UNDECIDED);
        }
        sized(&mut self.levels, w, h, CV_8UC1)?;
        let levels = self.levels.data_bytes_mut()?;
        for (y, row) in levels.chunks_exact_mut(w.max(1)).enumerate() {
            let classes = &self.map[(y + 1) * stride + 1..][..w];
            if (margin..margin + ih).contains(&y) {
                let inner = &self.inner[(y - margin + 1) * istride + 1..][..iw];
                let (near, rest) = row.split_at_mut(margin);
                let (decided, far) = rest.split_at_mut(iw);
                class_levels(&classes[..margin], near);
                decided_levels(inner, decided);
                class_levels(&classes[margin + iw..], far);
            } else {
                class_levels(classes, row);
            }
        }
        imgproc::cvt_color(&self.levels, out, imgproc::COLOR_GRAY2BGR, 0)
    }

    /// The last part, on the frame joined from tiles made by [`Canny::tile`]: follows the edges
    /// across the tiles' seams, so that the frame holds the edges [`Canny::detect`] finds on it
    /// (255) and nothing else (0). `tiles` gives each tile's core (its part of the frame) and
    /// its inner part, which the tile decided; only the pixels outside an inner part or on its
    /// rim are looked at, and the candidates joined to them.
    pub fn seams(&mut self, frame: &mut Mat, tiles: impl Iterator<Item = (Rect, Rect)>) -> opencv::Result<()> {
        if !frame.is_continuous() {
            *frame = frame.try_clone()?;
        }
        let (w, h) = (frame.cols(), frame.rows());
        self.open.clear();
        for (core, inner) in tiles {
            // The inner part less its rim: all its neighbours are the tile's, decided.
            let (ix0, iy0) = (inner.x + 1, inner.y + 1);
            let (ix1, iy1) = (inner.x + inner.width - 1, inner.y + inner.height - 1);
            for y in core.y..core.y + core.height {
                if y >= iy0 && y < iy1 && ix0 < ix1 {
                    self.open.extend((core.x..ix0).chain(ix1..core.x + core.width).map(|x| (x, y)));
                } else {
                    self.open.extend((core.x..core.x + core.width).map(|x| (x, y)));
                }
            }
        }
        let px = frame.data_bytes_mut()?;
        let at = |x: i32, y: i32| 3 * (y as usize * w as usize + x as usize);
        let mut stack = Vec::new();
        // Undecided candidates joined to an edge are edges; the rest are not.
        for (seed, to) in [(255, 255), (128, 0)] {
            for &(x, y) in &self.open {
                let i = at(x, y);
                if px[i] == seed {
                    px[i..i + 3].fill(to);
                    stack.push((x, y));
                }
            }
            while let Some((x, y)) = stack.pop() {
                for (dx, dy) in [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)] {
                    let (qx, qy) = (x + dx, y + dy);
                    if qx >= 0 && qy >= 0 && qx < w && qy < h && px[at(qx, qy)] == 128 {
                        let i = at(qx, qy);
                        px[i..i + 3].fill(to);
                        stack.push((qx, qy));
                    }
                }
            }
        }
        Ok(())
    }

    /// Gradients and non-maximum suppression of `grey` into `self.map`; where `edges`, the
    /// stack gets every edge for hysteresis. Returns the image's width and height.
    fn suppress(
        &mut self,
        grey: &(impl MatTraitConst + ToInputArray),
        low: f64,
        high: f64,
        edges: bool,
    ) -> opencv::Result<(usize, usize)> {
        let (w, h) = (grey.cols() as usize, grey.rows() as usize);
        imgproc::sobel(grey, &mut self.dx, CV_16S, 1, 0, 3, 1.0, 0.0, BORDER_REPLICATE)?;
        imgproc::sobel(grey, &mut self.dy, CV_16S, 0, 1, 3, 1.0, 0.0, BORDER_REPLICATE)?;
        let (low, high) = (low.min(high).floor() as i32, low.max(high).floor() as i32);
        let (dx, dy) = (self.dx.data_typed::<i16>()?, self.dy.data_typed::<i16>()?);
        let avx2 = std::arch::is_x86_feature_detected!("avx2");

        let stride = w + 2;
        self.mag.clear();
        self.mag.resize(3 * stride, 0); // slot 0 holds row -1: no gradient above the image
        self.map.clear();
        self.map.resize((h + 2) * stride, NONE);
        self.stack.clear();
        if h > 0 {
            magnitude(avx2, &dx[..w], &dy[..w], &mut self.mag[stride + 1..2 * stride - 1]);
        }
        for i in 0..h {
            let next = (i + 2) % 3 * stride;
            if i + 1 < h {
                let r = (i + 1) * w..(i + 2) * w;
                magnitude(avx2, &dx[r.clone()], &dy[r], &mut self.mag[next + 1..next + stride - 1]);
            } else {
                self.mag[next..next + stride].fill(0); // no gradient below the image
            }
            let slot = |k: usize| &self.mag[k * stride..(k + 1) * stride];
            let (above, here, below) = (slot(i % 3), slot((i + 1) % 3), slot((i + 2) % 3));
            let base = (i + 1) * stride + 1;
            let row = &mut self.map[base..base + w];
            let r = i * w..(i + 1) * w;
            suppress(avx2, &dx[r.clone()], &dy[r], [above, here, below], low, high, row);
            if edges {
                push_edges(row, base, &mut self.stack);
            }
        }
        Ok((w, h))
    }

    /// Row `i` of the map, without its border.
    fn map_row(&self, i: usize, w: usize) -> &[u8] {
        let base = (i + 1) * (w + 2) + 1;
        &self.map[base..base + w]
    }
}

/// How far from a pixel the grey pixels its class (candidate, not an edge, edge) depends on
/// lie: Sobel's 3x3 aperture for the gradients, and the neighbours' magnitudes for the
/// suppression. Only the hysteresis after it looks further.
pub const MAP_REACH: u32 = 2;

/// A tile's grey levels for classes near its sides: a candidate 128, not an edge 0, an edge
/// 255. (Selects, not a table: the loop vectorises.)
fn class_levels(classes: &[u8], levels: &mut [u8]) {
    for (o, c) in levels.iter_mut().zip(classes) {
        *o = if *c == NONE {
            0
        } else if *c == EDGE {
            255
        } else {
            128
        };
    }
}

/// A tile's grey levels for classes in its inner part, after its hysteresis: an edge 255,
/// undecided 128, and a candidate left alone is not an edge, 0.
fn decided_levels(classes: &[u8], levels: &mut [u8]) {
    for (o, c) in levels.iter_mut().zip(classes) {
        *o = if *c == EDGE {
            255
        } else if *c == UNDECIDED {
            128
        } else {
            0
        };
    }
}

/// Hysteresis over a map with a border of `NONE` (rows of `stride`): every `from` pixel
/// connected to one on the stack becomes `to`, and so on from it.
fn follow(map: &mut [u8], stride: usize, stack: &mut Vec<usize>, from: u8, to: u8) {
    while let Some(p) = stack.pop() {
        for q in [p - stride - 1, p - stride, p - stride + 1, p - 1, p + 1, p + stride - 1, p + stride, p + stride + 1]
        {
            if map[q] == from {
                map[q] = to;
                stack.push(q);
            }
        }
    }
}

/// Makes `m` an `h`×`w` matrix of `typ`, keeping its buffer where it is one already.
fn sized(m: &mut Mat, w: usize, h: usize, typ: i32) -> opencv::Result<()> {
    if m.rows() != h as i32 || m.cols() != w as i32 || m.typ() != typ {
        *m = Mat::new_rows_cols_with_default(h as i32, w as i32, typ, Scalar::all(0.0))?;
    }
    Ok(())
}

/// Pushes the map index of every `EDGE` in `row` (which starts at map index `base`).
///
/// Strong pixels are sparse and scattered, so a byte-by-byte test mispredicts constantly: build
/// a bit mask per 32 pixels without branches (compiled to vector compares) and walk its bits.
fn push_edges(row: &[u8], base: usize, stack: &mut Vec<usize>) {
    for (c, chunk) in row.chunks(32).enumerate() {
        let mut mask = chunk.iter().enumerate().fold(0u32, |m, (k, v)| m | (u32::from(*v == EDGE) << k));
        while mask != 0 {
            stack.push(base + 32 * c + mask.trailing_zeros() as usize);
            mask &= mask - 1;
        }
    }
}

fn magnitude(avx2: bool, dx: &[i16], dy: &[i16], out: &mut [i32]) {
    if avx2 {
        // SAFETY: the caller checked that the CPU supports AVX2.
        unsafe { magnitude_avx2(dx, dy, out) }
    } else {
        magnitude_row(dx, dy, out)
    }
}

#[target_feature(enable = "avx2")]
fn magnitude_avx2(dx: &[i16], dy: &[i16], out: &mut [i32]) {
    magnitude_row(dx, dy, out)
}

/// The L1 gradient magnitude of one row.
#[inline(always)]
fn magnitude_row(dx: &[i16], dy: &[i16], out: &mut [i32]) {
    for ((o, x), y) in out.iter_mut().zip(dx).zip(dy) {
        *o = i32::from(*x).abs() + i32::from(*y).abs();
    }
}

fn suppress(avx2: bool, dx: &[i16], dy: &[i16], mag: [&[i32]; 3], low: i32, high: i32, map: &mut [u8]) {
    if avx2 {
        // SAFETY: the caller checked that the CPU supports AVX2.
        unsafe { suppress_avx2(dx, dy, mag, low, high, map) }
    } else {
        suppress_row(dx, dy, mag, low, high, map)
    }
}

#[target_feature(enable = "avx2")]
fn suppress_avx2(dx: &[i16], dy: &[i16], mag: [&[i32]; 3], low: i32, high: i32, map: &mut [u8]) {
    suppress_row(dx, dy, mag, low, high, map)
}

/// Non-maximum suppression of one row: each pixel whose magnitude is above `low` and a local
/// maximum across the edge becomes a weak candidate, or an edge when above `high`.
///
/// `mag` holds the padded magnitudes of the rows above, at and below this one. The
/// comparisons (strict on one side, not on the other; strict on both for diagonals) are
/// OpenCV's, so ties resolve the same way. Every branch is computed and one selected, so the
/// loop has no data-dependent control flow and vectorises.
#[inline(always)]
fn suppress_row(dx: &[i16], dy: &[i16], mag: [&[i32]; 3], low: i32, high: i32, map: &mut [u8]) {
    let w = map.len();
    let [above, here, below] = mag;
    // Views of the padded rows shifted to columns j-1, j and j+1: equal lengths, no bounds checks.
    let (a_l, a_c, a_r) = (&above[..w], &above[1..=w], &above[2..w + 2]);
    let (h_l, h_c, h_r) = (&here[..w], &here[1..=w], &here[2..w + 2]);
    let (b_l, b_c, b_r) = (&below[..w], &below[1..=w], &below[2..w + 2]);
    let (dx, dy) = (&dx[..w], &dy[..w]);
    for j in 0..w {
        let (xs, ys) = (i32::from(dx[j]), i32::from(dy[j]));
        let m = h_c[j];
        let x = xs.abs();
        let y = ys.abs() << SHIFT;
        let tg22x = x * TG22;
        let tg67x = tg22x + (x << (SHIFT + 1));
        let horizontal = (m > h_l[j]) & (m >= h_r[j]);
        let vertical = (m > a_c[j]) & (m >= b_c[j]);
        // Diagonals: the sign of dx·dy picks which one crosses the edge.
        let rising = (m > a_r[j]) & (m > b_l[j]);
        let falling = (m > a_l[j]) & (m > b_r[j]);
        let diagonal = if (xs ^ ys) < 0 { rising } else { falling };
        let maximum = if y < tg22x {
            horizontal
        } else if y > tg67x {
            vertical
        } else {
            diagonal
        };
        map[j] = if !(maximum & (m > low)) {
            NONE
        } else if m > high {
            EDGE
        } else {
            WEAK
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::test_support::{astronaut, checkerboard};
    use crate::filters::tiles::{Grid, Layout};
    use opencv::core::{self, Rect, Size};

    fn grey(m: &Mat) -> Mat {
        let mut g = Mat::default();
        imgproc::cvt_color(m, &mut g, imgproc::COLOR_BGR2GRAY, 0).unwrap();
        g
    }

    /// Asserts both implementations agree on every pixel; returns the number of edge pixels.
    fn assert_same_as_opencv(g: &(impl MatTraitConst + ToInputArray), low: f64, high: f64, what: &str) -> i32 {
        let mut want = Mat::default();
        imgproc::canny(g, &mut want, low, high, 3, false).unwrap();
        let mut got = Mat::default();
        Canny::default().detect(g, low, high, &mut got).unwrap();
        let differing = {
            let mut diff = Mat::default();
            core::compare(&want, &got, &mut diff, core::CMP_NE).unwrap();
            core::count_non_zero(&diff).unwrap()
        };
        assert_eq!(differing, 0, "{what} at {low}/{high}: {differing} pixels differ from cv::Canny");
        core::count_non_zero(&want).unwrap()
    }

    #[test]
    fn matches_opencv_on_a_real_photo_at_many_thresholds() {
        let g = grey(&astronaut());
        for (low, high) in
            [(50.0, 150.0), (0.0, 0.0), (10.0, 30.0), (100.0, 200.0), (49.7, 150.2), (300.0, 600.0), (150.0, 50.0)]
        {
            assert!(assert_same_as_opencv(&g, low, high, "astronaut") > 1000, "a photo has edges");
        }
    }

    #[test]
    fn matches_opencv_on_noise_and_odd_sizes() {
        // Random noise: every tie-breaking rule and direction is exercised.
        for (rows, cols) in [(97, 131), (3, 3), (1, 40), (40, 1), (2, 2), (256, 255)] {
            let mut m = Mat::new_rows_cols_with_default(rows, cols, CV_8UC1, Scalar::all(0.0)).unwrap();
            core::randu(&mut m, &Scalar::all(0.0), &Scalar::all(256.0)).unwrap();
            for (low, high) in [(50.0, 150.0), (200.0, 400.0), (0.0, 1000.0)] {
                let edges = assert_same_as_opencv(&m, low, high, &format!("noise {rows}x{cols}"));
                assert!(rows * cols < 100 || edges > 0, "noise {rows}x{cols} has edges");
            }
        }
    }

    /// `g` cut as `layout` says, each tile through [`Canny::tile`], joined, and through
    /// [`Canny::seams`]: the edges, one channel.
    fn in_tiles(g: &Mat, (low, high): (f64, f64), layout: &Layout) -> Mat {
        let mut canny = Canny::default();
        let parts: Vec<Mat> = (0..layout.tiles().len())
            .map(|i| {
                let mut out = Mat::default();
                canny.tile(&layout.cut(g, i).unwrap(), (low, high), layout.halo() as usize, &mut out).unwrap();
                out
            })
            .collect();
        let mut joined = layout.join(&parts).unwrap();
        let tiles = (0..parts.len()).map(|i| (layout.tiles()[i].core, layout.inner(i)));
        canny.seams(&mut joined, tiles).unwrap();
        let mut first = Mat::default();
        core::extract_channel(&joined, &mut first, 0).unwrap();
        first
    }

    fn differing(a: &Mat, b: &Mat) -> i32 {
        let mut diff = Mat::default();
        core::compare(a, b, &mut diff, core::CMP_NE).unwrap();
        core::count_non_zero(&diff).unwrap()
    }

    #[test]
    fn tiles_then_their_seams_give_opencvs_edges() {
        let mut noise = Mat::new_rows_cols_with_default(97, 131, CV_8UC1, Scalar::all(0.0)).unwrap();
        core::randu(&mut noise, &Scalar::all(0.0), &Scalar::all(256.0)).unwrap();
        let mut big = Mat::default();
        imgproc::resize(&grey(&astronaut()), &mut big, Size::new(1281, 723), 0.0, 0.0, imgproc::INTER_CUBIC).unwrap();
        // Edges that cross many seams: a fine grid over long contours, with low thresholds.
        for (g, what) in [(grey(&astronaut()), "astronaut"), (big, "astronaut 1281x723"), (noise, "noise")] {
            let (w, h) = (g.cols() as u32, g.rows() as u32);
            for (low, high) in [(50.0, 150.0), (10.0, 30.0), (200.0, 400.0)] {
                let mut want = Mat::default();
                imgproc::canny(&g, &mut want, low, high, 3, false).unwrap();
                for (cols, rows, margin) in [(1, 2, 2), (2, 2, 2), (3, 3, 2), (4, 3, 9), (16, 16, 2), (2, 2, 60)] {
                    let layout = Layout::new(w, h, Grid { cols, rows }, margin);
                    let got = in_tiles(&g, (low, high), &layout);
                    let n = differing(&want, &got);
                    assert_eq!(
                        n, 0,
                        "{what} at {low}/{high} in {cols}x{rows} tiles, margin {margin}: {n} pixels differ"
                    );
                }
            }
        }
    }

    #[test]
    fn a_tile_margin_of_one_is_caught() {
        // The classes need 2 pixels around: with 1, the tiles' edges differ along the seams.
        let mut g = Mat::new_rows_cols_with_default(200, 300, CV_8UC1, Scalar::all(0.0)).unwrap();
        core::randu(&mut g, &Scalar::all(0.0), &Scalar::all(256.0)).unwrap();
        let mut want = Mat::default();
        imgproc::canny(&g, &mut want, 50.0, 150.0, 3, false).unwrap();
        let layout = |m| Layout::new(300, 200, Grid { cols: 2, rows: 2 }, m);
        assert!(differing(&want, &in_tiles(&g, (50.0, 150.0), &layout(1))) > 0);
        assert_eq!(differing(&want, &in_tiles(&g, (50.0, 150.0), &layout(2))), 0);
    }

    #[test]
    fn matches_opencv_on_flat_and_synthetic_images() {
        let flat = Mat::new_rows_cols_with_default(64, 80, CV_8UC1, Scalar::all(77.0)).unwrap();
        assert_eq!(assert_same_as_opencv(&flat, 50.0, 150.0, "flat"), 0);
        assert!(assert_same_as_opencv(&grey(&checkerboard(120, 160, 7)), 50.0, 150.0, "checkerboard") > 0);
        // A region of interest is not contiguous in memory.
        let board = grey(&checkerboard(120, 160, 9));
        let roi = board.roi(Rect::new(5, 5, 100, 90)).unwrap();
        assert!(!roi.is_continuous());
        assert!(assert_same_as_opencv(&roi, 20.0, 60.0, "region of interest") > 0);
        let mut big = Mat::default();
        imgproc::resize(&grey(&astronaut()), &mut big, Size::new(1280, 720), 0.0, 0.0, imgproc::INTER_CUBIC).unwrap();
        assert!(assert_same_as_opencv(&big, 50.0, 150.0, "astronaut 720p") > 0);
    }
}
