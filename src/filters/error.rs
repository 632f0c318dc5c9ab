//! Why a filter could not be set up or could not process a frame.

use std::path::PathBuf;

/// Why a filter could not be set up or could not process a frame.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The face cascade is missing or unreadable.
    #[error("cannot load the face cascade {path}: {reason} (install Debian's opencv-data or pass --face-cascade)")]
    Cascade {
        /// The path that was tried.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A frame that is not 8-bit BGR.
    #[error("expected an 8-bit 3-channel frame, got type {0}")]
    BadInput(i32),
    /// `motion` got a previous frame of another size.
    #[error("previous frame is {prev_w}x{prev_h}, current is {w}x{h}")]
    SizeMismatch {
        /// Previous frame width.
        prev_w: i32,
        /// Previous frame height.
        prev_h: i32,
        /// Current frame width.
        w: i32,
        /// Current frame height.
        h: i32,
    },
    /// A filter produced a frame of the wrong size or type (a bug, reported as a failed frame).
    #[error("{0} produced a frame of the wrong size or type")]
    BadOutput(&'static str),
    /// OpenCV reported an error.
    #[error("opencv: {0}")]
    OpenCv(#[from] opencv::Error),
}
