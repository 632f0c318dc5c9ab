//! Why a filter's parameters were refused, and why a filter could not be set up or could not
//! process a frame.

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

/// Why one filter's parameters were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// A parameter the filter does not take.
    #[error("{filter}: unknown parameter '{param}' (allowed: {allowed})")]
    UnknownParam {
        /// The filter being parsed.
        filter: &'static str,
        /// The offending parameter name.
        param: String,
        /// The parameters this filter accepts.
        allowed: String,
    },
    /// A parameter given twice.
    #[error("{filter}: parameter '{param}' given twice")]
    DuplicateParam {
        /// The filter being parsed.
        filter: &'static str,
        /// The repeated parameter name.
        param: String,
    },
    /// A parameter without `=value`.
    #[error("{filter}: parameter '{param}' needs a value ({param}=...)")]
    MissingValue {
        /// The filter being parsed.
        filter: &'static str,
        /// The parameter lacking a value.
        param: String,
    },
    /// A value outside what the parameter accepts.
    #[error("{filter}: {param}={value} is invalid: expected {expected}")]
    BadValue {
        /// The filter being parsed.
        filter: &'static str,
        /// The parameter name.
        param: &'static str,
        /// The value as given.
        value: String,
        /// What the parameter accepts, in words.
        expected: &'static str,
    },
    /// Two parameters that are valid alone but not together.
    #[error("{filter}: {message}")]
    Conflict {
        /// The filter being parsed.
        filter: &'static str,
        /// What is wrong, in words.
        message: String,
    },
}
