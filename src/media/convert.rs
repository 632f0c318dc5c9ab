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

/// A converter for one conversion of one frame size.
pub struct Scaler {
    ctx: *mut ffi::SwsContext,
    src: (Pixel, u32, u32),
    dst: (Pixel, u32, u32),
    /// BGR → I420 by OpenCV into this buffer, then into the frame's planes (see the module).
    opencv_i420: Option<Mat>,
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
            Ok(Scaler { ctx, src, dst, opencv_i420 })
        }
    }

    /// Whether this converts `src` frames to `dst` frames.
    pub fn fits(&self, src: (Pixel, u32, u32), dst: (Pixel, u32, u32)) -> bool {
        self.src == src && self.dst == dst
    }

    /// Converts a decoded frame into `out`, a BGR `Mat` of the destination size.
    pub fn decode_into(&mut self, frame: &ffmpeg_next::frame::Video, out: &mut Mat) -> opencv::Result<()> {
        debug_assert!(out.typ() == CV_8UC3 && out.is_continuous());
        let stride = [out.mat_step().first().copied().unwrap_or_default() as i32, 0, 0, 0];
        let dst = [out.data_mut(), ptr::null_mut(), ptr::null_mut(), ptr::null_mut()];
        // SAFETY: the frame's planes and strides come from FFmpeg for a frame of the source size;
        // `out` holds dst height rows of `stride` bytes, which is what sws_scale writes.
        unsafe {
            let f = frame.as_ptr();
            ffi::sws_scale(
                self.ctx,
                (*f).data.as_ptr() as *const *const u8,
                (*f).linesize.as_ptr(),
                0,
                self.src.2 as i32,
                dst.as_ptr(),
                stride.as_ptr(),
            );
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
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
            let mut back = Mat::new_rows_cols_with_default(16, 32, CV_8UC3, Scalar::all(0.0)).unwrap();
            Scaler::new((format, 32, 16), (Pixel::BGR24, 32, 16), colour())
                .unwrap()
                .decode_into(&yuv, &mut back)
                .unwrap();
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
            let mut back = Mat::new_rows_cols_with_default(2, 2, CV_8UC3, Scalar::all(0.0)).unwrap();
            Scaler::new((Pixel::YUV444P, 2, 2), (Pixel::BGR24, 2, 2), c).unwrap().decode_into(&yuv, &mut back).unwrap();
            *back.at_2d::<Vec3b>(0, 0).unwrap()
        };
        let right = read(colour());
        let wrong = read(Colour { space: color::Space::BT470BG, range: color::Range::MPEG });
        assert!(right[2] >= 250 && right[1] <= 5, "{right:?}");
        assert!(i32::from(right[2]) - i32::from(wrong[2]) >= 15, "{right:?} against {wrong:?}");
    }
}
