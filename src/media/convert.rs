//! Pixel conversion between FFmpeg's frames and OpenCV's 8-bit BGR `Mat`s, once each way.
//!
//! Decoding, libswscale writes straight into the `Mat`'s buffer. Encoding to yuv420p in
//! BT.601's limited range (what an untagged stream is read as), OpenCV's `cvtColor` into one
//! I420 buffer plus a copy of its planes into the frame is faster than libswscale (355 µs
//! against 614 µs a 720p frame; `cargo bench --bench convert`, BENCHMARKS.md); every other
//! case goes through libswscale with the stream's matrix (BT.601, BT.709, BT.2020) and range, so
//! colours survive the round trip.

use std::ptr;

use ffmpeg_next::ffi;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::util::color;
use opencv::core::{CV_8UC3, Mat};
use opencv::prelude::*;

/// A stream's colour description, as far as conversion needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Colour {
    /// The YUV matrix.
    pub space: color::Space,
    /// Limited (MPEG) or full (JPEG) range.
    pub range: color::Range,
}

/// Bytes libswscale may write past the end of a packed destination: its x86 YUV→RGB code
/// writes up to 15 pixels too many (45 bytes of BGR; `Scaler::decode`), with room to spare.
pub const WRITE_SLACK: usize = 64;

/// A converter for one conversion of one frame size.
pub struct Scaler {
    ctx: *mut ffi::SwsContext,
    src: (Pixel, u32, u32),
    dst: (Pixel, u32, u32),
    /// BGR → I420 by OpenCV into this buffer, then into the frame's planes (see the module).
    opencv_i420: Option<Mat>,
    /// Rows padded to 8 pixels, for widths libswscale would leave a tail of unwritten
    /// (`Scaler::decode`).
    padded: Vec<u8>,
}

// SAFETY: the context is used by one thread at a time (its owner's), never shared.
unsafe impl Send for Scaler {}

impl Drop for Scaler {
    fn drop(&mut self) {
        // SAFETY: ctx came from sws_getContext and is freed once, here.
        unsafe { ffi::sws_freeContext(self.ctx) };
    }
}

/// libswscale's constant for a YUV matrix (BT.601 when unspecified, as FFmpeg assumes).
fn sws_space(space: color::Space) -> i32 {
    match space {
        color::Space::BT709 => ffi::SWS_CS_ITU709,
        color::Space::FCC => ffi::SWS_CS_FCC,
        color::Space::SMPTE240M => ffi::SWS_CS_SMPTE240M,
        color::Space::BT2020NCL | color::Space::BT2020CL => ffi::SWS_CS_BT2020,
        _ => ffi::SWS_CS_DEFAULT,
    }
}

impl Scaler {
    /// A converter from `src` to `dst` frames (format, width, height); the YUV side (whichever
    /// it is) has `colour`.
    pub fn new(src: (Pixel, u32, u32), dst: (Pixel, u32, u32), colour: Colour) -> Result<Self, ffmpeg_next::Error> {
        // SAFETY: plain constructor calls; a null result is checked before use.
        unsafe {
            let ctx = ffi::sws_getContext(
                src.1 as i32,
                src.2 as i32,
                src.0.into(),
                dst.1 as i32,
                dst.2 as i32,
                dst.0.into(),
                ffi::SWS_BILINEAR,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null(),
            );
            if ctx.is_null() {
                return Err(ffmpeg_next::Error::InvalidData);
            }
            let coefficients = ffi::sws_getCoefficients(sws_space(colour.space));
            let full = i32::from(colour.range == color::Range::JPEG);
            // The same matrix and range on both sides: only the YUV side reads them.
            ffi::sws_setColorspaceDetails(ctx, coefficients, full, coefficients, full, 0, 1 << 16, 1 << 16);
            let bt601 =
                matches!(colour.space, color::Space::Unspecified | color::Space::BT470BG | color::Space::SMPTE170M)
                    && colour.range != color::Range::JPEG;
            let same_size = (src.1, src.2) == (dst.1, dst.2) && dst.1 % 2 == 0 && dst.2 % 2 == 0;
            let opencv_i420 = (src.0 == Pixel::BGR24 && dst.0 == Pixel::YUV420P && bt601 && same_size)
                .then(|| {
                    Mat::new_rows_cols_with_default(
                        dst.2 as i32 * 3 / 2,
                        dst.1 as i32,
                        opencv::core::CV_8UC1,
                        opencv::core::Scalar::all(0.0),
                    )
                })
                .transpose()
                .map_err(|_| ffmpeg_next::Error::InvalidData)?;
            Ok(Scaler { ctx, src, dst, opencv_i420, padded: Vec::new() })
        }
    }

    /// Whether this converts `src` frames to `dst` frames.
    pub fn fits(&self, src: (Pixel, u32, u32), dst: (Pixel, u32, u32)) -> bool {
        self.src == src && self.dst == dst
    }

    /// Converts a decoded frame into a new BGR `Mat` of the destination size.
    ///
    /// libswscale's x86 YUV→RGB code (FFmpeg 5.1) has two edges, both measured
    /// (`tests::every_pixel_is_written_and_nothing_past_the_frame`):
    /// - it writes pixels in groups of 16, up to 15 past the end of a row: into the next row,
    ///   which is written after, and past the last one, out of a buffer of exactly `height` rows
    ///   (a 2×2 frame corrupted the heap). Every buffer it writes has [`WRITE_SLACK`] bytes more;
    /// - it leaves the last `width % 8` pixels of every row unwritten when a row rounded up to
    ///   8 pixels is longer than the stride: an 854-wide video had 6 columns of whatever the
    ///   heap held. Such widths are converted into rows padded to 8 pixels, then copied.
    pub fn decode(&mut self, frame: &ffmpeg_next::frame::Video) -> opencv::Result<Mat> {
        let (w, h) = (self.dst.1 as usize, self.dst.2 as usize);
        let row = w * 3;
        let padded_row = w.next_multiple_of(8) * 3;
        if padded_row == row {
            let spare = WRITE_SLACK.div_ceil(row.max(1));
            // SAFETY: every byte of the first `h` rows is written by the conversion below; the
            // spare rows are never read.
            let mut out = unsafe { Mat::new_rows_cols((h + spare) as i32, w as i32, CV_8UC3)? };
            // SAFETY: `out` holds `h` rows of `row` bytes and WRITE_SLACK bytes more.
            unsafe { self.scale_into(frame, out.data_mut(), row) };
            out.pop_back(spare)?;
            debug_assert!(out.rows() as usize == h && out.is_continuous());
            return Ok(out);
        }
        self.padded.resize(padded_row * h + WRITE_SLACK, 0);
        let dst = self.padded.as_mut_ptr();
        // SAFETY: `padded` holds `h` rows of `padded_row` bytes and WRITE_SLACK bytes more.
        unsafe { self.scale_into(frame, dst, padded_row) };
        // SAFETY: every byte is written by the copy below.
        let mut out = unsafe { Mat::new_rows_cols(h as i32, w as i32, CV_8UC3)? };
        let bytes = out.data_bytes_mut()?;
        for (to, from) in bytes.chunks_exact_mut(row).zip(self.padded.chunks(padded_row)) {
            to.copy_from_slice(&from[..row]);
        }
        Ok(out)
    }

    /// Converts `frame` into BGR rows of `stride` bytes at `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `stride` × the destination height + [`WRITE_SLACK`]
    /// bytes, and `stride` at least 3 × the destination width.
    unsafe fn scale_into(&mut self, frame: &ffmpeg_next::frame::Video, dst: *mut u8, stride: usize) {
        let strides = [stride as i32, 0, 0, 0];
        let planes = [dst, ptr::null_mut(), ptr::null_mut(), ptr::null_mut()];
        // SAFETY: the frame's planes and strides come from FFmpeg for a frame of the source
        // size; the destination is as the caller promised, which covers what sws_scale writes.
        unsafe {
            let f = frame.as_ptr();
            ffi::sws_scale(
                self.ctx,
                (*f).data.as_ptr() as *const *const u8,
                (*f).linesize.as_ptr(),
                0,
                self.src.2 as i32,
                planes.as_ptr(),
                strides.as_ptr(),
            );
        }
    }

    /// Converts a BGR `Mat` into `frame`, a writable frame of the destination format and size.
    pub fn encode_from(&mut self, mat: &Mat, frame: &mut ffmpeg_next::frame::Video) {
        if let Some(i420) = self.opencv_i420.as_mut()
            && opencv::imgproc::cvt_color_def(mat, i420, opencv::imgproc::COLOR_BGR2YUV_I420).is_ok()
        {
            i420_into_planes(i420, frame);
            return;
        }
        let stride = [mat.mat_step().first().copied().unwrap_or_default() as i32, 0, 0, 0];
        let src = [mat.data(), ptr::null(), ptr::null(), ptr::null()];
        // SAFETY: `mat` holds the source size in BGR (checked by the caller); the frame's buffers
        // were allocated by FFmpeg for the destination format and size, and made writable.
        unsafe {
            let f = frame.as_mut_ptr();
            ffi::sws_scale(
                self.ctx,
                src.as_ptr(),
                stride.as_ptr(),
                0,
                self.src.2 as i32,
                (*f).data.as_ptr(),
                (*f).linesize.as_ptr(),
            );
        }
    }
}

/// Copies one I420 buffer (a `Mat` of h × 3/2 rows: Y, then U, then V) into a yuv420p frame's
/// planes, row by row (the frame's rows may be padded).
pub fn i420_into_planes(i420: &Mat, frame: &mut ffmpeg_next::frame::Video) {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let Ok(src) = i420.data_bytes() else { return };
    let mut at = 0;
    for (plane, (pw, ph)) in [(0, (w, h)), (1, (w / 2, h / 2)), (2, (w / 2, h / 2))] {
        let stride = frame.stride(plane);
        let dst = frame.data_mut(plane);
        for row in 0..ph {
            dst[row * stride..row * stride + pw].copy_from_slice(&src[at..at + pw]);
            at += pw;
        }
    }
}

/// Thumbnails are at most this wide.
pub const THUMBNAIL_WIDTH: i32 = 320;

/// JPEG quality of thumbnails.
pub const THUMBNAIL_QUALITY: i32 = 75;

/// `frame` scaled down to at most [`THUMBNAIL_WIDTH`] pixels wide, as a JPEG.
pub fn thumbnail(frame: &Mat) -> opencv::Result<Vec<u8>> {
    use opencv::core::{Size, Vector};
    use opencv::imgcodecs::{IMWRITE_JPEG_QUALITY, imencode};
    use opencv::imgproc::{INTER_AREA, resize};
    use opencv::prelude::*;

    let (w, h) = (frame.cols().max(1), frame.rows().max(1));
    let mut small = Mat::default();
    let scaled = if w > THUMBNAIL_WIDTH {
        let height = (i64::from(h) * i64::from(THUMBNAIL_WIDTH) / i64::from(w)).max(1) as i32;
        resize(frame, &mut small, Size::new(THUMBNAIL_WIDTH, height), 0.0, 0.0, INTER_AREA)?;
        &small
    } else {
        frame
    };
    let mut jpeg = Vector::<u8>::new();
    imencode(".jpg", scaled, &mut jpeg, &Vector::from_slice(&[IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY]))?;
    Ok(jpeg.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_are_small_jpegs_of_the_same_aspect() {
        use opencv::core::{CV_8UC3, Scalar};
        use opencv::prelude::*;
        let frame = Mat::new_rows_cols_with_default(720, 1280, CV_8UC3, Scalar::new(10.0, 200.0, 30.0, 0.0)).unwrap();
        let jpeg = thumbnail(&frame).unwrap();
        assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff]);
        let back =
            opencv::imgcodecs::imdecode(&opencv::core::Vector::from_slice(&jpeg), opencv::imgcodecs::IMREAD_COLOR)
                .unwrap();
        assert_eq!((back.cols(), back.rows()), (320, 180));
    }

    use opencv::core::{Scalar, Vec3b};

    fn colour() -> Colour {
        Colour { space: color::Space::BT709, range: color::Range::MPEG }
    }

    #[test]
    fn bgr_survives_a_trip_through_yuv444_and_stays_close_through_yuv420() {
        for (format, tolerance) in [(Pixel::YUV444P, 3), (Pixel::YUV420P, 3)] {
            // Flat colour patches: chroma subsampling loses nothing inside them.
            let mut bgr =
                Mat::new_rows_cols_with_default(16, 32, CV_8UC3, Scalar::new(30.0, 140.0, 220.0, 0.0)).unwrap();
            let mut right = bgr.roi_mut(opencv::core::Rect::new(16, 0, 16, 16)).unwrap();
            right.set_to(&Scalar::new(200.0, 60.0, 10.0, 0.0), &opencv::core::no_array()).unwrap();
            drop(right);
            let mut yuv = ffmpeg_next::frame::Video::new(format, 32, 16);
            Scaler::new((Pixel::BGR24, 32, 16), (format, 32, 16), colour()).unwrap().encode_from(&bgr, &mut yuv);
            let back = Scaler::new((format, 32, 16), (Pixel::BGR24, 32, 16), colour()).unwrap().decode(&yuv).unwrap();
            for (x, want) in [(4, [30, 140, 220]), (28, [200, 60, 10])] {
                let got = back.at_2d::<Vec3b>(8, x).unwrap();
                for c in 0..3 {
                    assert!((i32::from(got[c]) - want[c]).abs() <= tolerance, "{format:?} x={x}: {got:?} for {want:?}");
                }
            }
        }
    }

    #[test]
    fn opencv_and_swscale_agree_on_bt601() {
        // The fast path (OpenCV) and libswscale write the same YUV, to within rounding.
        let bgr = Mat::new_rows_cols_with_default(16, 32, CV_8UC3, Scalar::new(30.0, 140.0, 220.0, 0.0)).unwrap();
        let bt601 = Colour { space: color::Space::Unspecified, range: color::Range::MPEG };
        let mut fast = Scaler::new((Pixel::BGR24, 32, 16), (Pixel::YUV420P, 32, 16), bt601).unwrap();
        assert!(fast.opencv_i420.is_some());
        let mut slow = Scaler::new((Pixel::BGR24, 32, 16), (Pixel::YUV420P, 32, 16), bt601).unwrap();
        slow.opencv_i420 = None;
        let (mut a, mut b) = (
            ffmpeg_next::frame::Video::new(Pixel::YUV420P, 32, 16),
            ffmpeg_next::frame::Video::new(Pixel::YUV420P, 32, 16),
        );
        fast.encode_from(&bgr, &mut a);
        slow.encode_from(&bgr, &mut b);
        for plane in 0..3 {
            let (x, y) = (a.data(plane)[0], b.data(plane)[0]);
            assert!((i32::from(x) - i32::from(y)).abs() <= 2, "plane {plane}: {x} against {y}");
        }
        // BT.709 never takes the BT.601-only fast path.
        let bt709 = Scaler::new((Pixel::BGR24, 32, 16), (Pixel::YUV420P, 32, 16), colour()).unwrap();
        assert!(bt709.opencv_i420.is_none());
    }

    #[test]
    fn the_matrix_matters() {
        // A saturated red through BT.709 comes back red; read with BT.601's matrix instead, it
        // comes back visibly darker: the stream's matrix is what makes colours right.
        let red = Mat::new_rows_cols_with_default(2, 2, CV_8UC3, Scalar::new(0.0, 0.0, 255.0, 0.0)).unwrap();
        let mut yuv = ffmpeg_next::frame::Video::new(Pixel::YUV444P, 2, 2);
        Scaler::new((Pixel::BGR24, 2, 2), (Pixel::YUV444P, 2, 2), colour()).unwrap().encode_from(&red, &mut yuv);
        let read = |c: Colour| {
            let back = Scaler::new((Pixel::YUV444P, 2, 2), (Pixel::BGR24, 2, 2), c).unwrap().decode(&yuv).unwrap();
            *back.at_2d::<Vec3b>(0, 0).unwrap()
        };
        let right = read(colour());
        let wrong = read(Colour { space: color::Space::BT470BG, range: color::Range::MPEG });
        assert!(right[2] >= 250 && right[1] <= 5, "{right:?}");
        assert!(i32::from(right[2]) - i32::from(wrong[2]) >= 15, "{right:?} against {wrong:?}");
    }

    /// A flat frame converts to a flat `Mat` (within dither): every pixel written, at every
    /// width (libswscale leaves `width % 8` unwritten into a tight stride) and every size (it
    /// writes up to 15 pixels past a row: a 2×2 frame overran its buffer). Each case has its own
    /// colour, so a pixel left over from the case before is caught too.
    #[test]
    fn every_pixel_is_written_and_nothing_past_the_frame() {
        crate::media::init();
        let formats = [
            Pixel::YUV420P,
            Pixel::YUV422P,
            Pixel::YUVJ420P,
            Pixel::YUV444P,
            Pixel::YUV420P10LE,
            Pixel::NV12,
            Pixel::NV21,
            Pixel::YUV411P,
            Pixel::YUV440P,
            Pixel::YUYV422,
            Pixel::GRAY8,
            Pixel::RGB24,
            Pixel::BGR24,
            Pixel::RGBA,
            Pixel::GBRP,
        ];
        let mut case = 0u16;
        for format in formats {
            for (w, h) in [(2, 2), (6, 6), (34, 18), (38, 22), (40, 22), (44, 22), (38, 21), (321, 240), (854, 480)] {
                case += 1;
                let mut yuv = ffmpeg_next::frame::Video::new(format, w, h);
                for plane in 0..yuv.planes() {
                    let value = if plane == 0 { 40 + (case * 37) % 160 } else { 60 + (case * 53) % 130 };
                    let data = yuv.data_mut(plane);
                    if format == Pixel::YUV420P10LE {
                        data.chunks_exact_mut(2).for_each(|px| px.copy_from_slice(&(value * 4).to_le_bytes()));
                    } else {
                        data.fill(value as u8);
                    }
                }
                let bgr = Scaler::new((format, w, h), (Pixel::BGR24, w, h), colour()).unwrap().decode(&yuv).unwrap();
                assert_eq!((bgr.cols(), bgr.rows()), (w as i32, h as i32));
                let first = *bgr.at_2d::<Vec3b>(0, 0).unwrap();
                for y in 0..h as i32 {
                    for x in 0..w as i32 {
                        // Within the dither of libswscale's general path (odd heights).
                        let got = *bgr.at_2d::<Vec3b>(y, x).unwrap();
                        let off = (0..3).map(|c| (i32::from(got[c]) - i32::from(first[c])).abs()).max().unwrap();
                        assert!(off <= 2, "{format:?} {w}x{h}: pixel ({x}, {y}) is {got:?}, pixel (0, 0) {first:?}");
                    }
                }
            }
        }
    }
}
