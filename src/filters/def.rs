//! What a filter is: its definition (name, help, parameters with ranges and defaults, kind),
//! the traits its parameters implement, and the macro that registers it.
//!
//! A filter lives in one file: its parameter struct, a [`FilterParams`] impl holding its
//! [`FilterDef`] and reading its parameters, a [`Filter`] impl, and the [`Stage`] that runs it.
//! One line in `filters/mod.rs` registers it; the chain parser, `--help`, `vpd presets`, the
//! docs and the wire format all follow from that.

use std::path::PathBuf;
use std::str::FromStr;

use opencv::core::Mat;
use opencv::prelude::*;
use serde::Serialize;

use super::{FilterError, ParamError};

/// Where Debian's `opencv-data` package installs the frontal-face Haar cascade.
pub const DEFAULT_FACE_CASCADE: &str = "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml";

/// Files the filters need at run time, which differ from host to host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterEnv {
    /// The Haar cascade XML used by `faces`.
    pub face_cascade: PathBuf,
}

impl Default for FilterEnv {
    fn default() -> Self {
        FilterEnv { face_cascade: PathBuf::from(DEFAULT_FACE_CASCADE) }
    }
}

/// What values a filter's parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Range {
    /// A whole number within `min..=max`; only odd ones where `odd`; 0 too where `or_zero`.
    Int {
        /// The smallest.
        min: i64,
        /// The largest.
        max: i64,
        /// Only odd numbers.
        odd: bool,
        /// 0 is also allowed (it means something of its own).
        or_zero: bool,
    },
    /// A finite number within `min..=max`.
    Number {
        /// The smallest.
        min: f64,
        /// The largest.
        max: f64,
    },
    /// One of these words.
    Choice {
        /// The words.
        words: &'static [&'static str],
    },
}

impl Range {
    /// Whether `raw`, as written in a chain, is within the range.
    pub fn admits(&self, raw: &str) -> bool {
        match *self {
            Range::Int { min, max, odd, or_zero } => raw
                .parse::<i64>()
                .is_ok_and(|n| (or_zero && n == 0) || ((min..=max).contains(&n) && (!odd || n % 2 == 1))),
            Range::Number { min, max } => raw.parse::<f64>().is_ok_and(|n| n.is_finite() && (min..=max).contains(&n)),
            Range::Choice { words } => words.contains(&raw),
        }
    }
}

/// One parameter of a filter: the one definition the chain parser, its checks, `--help`, `vpd
/// presets` and a form read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ParamDef {
    /// Its name in a chain (`ksize`).
    pub key: &'static str,
    /// Its value when left out, as written in a chain.
    pub default: &'static str,
    /// The values it takes.
    pub range: Range,
    /// The values it takes, in the words of an error (`an odd integer from 1 to 255`).
    pub expected: &'static str,
    /// The values it takes, and what they mean, in a few words for `--help` (`odd, 1-255`).
    pub note: &'static str,
}

/// A filter: its name, one line of help and its parameters, in the order they are written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FilterDef {
    /// Its name in a chain.
    pub name: &'static str,
    /// What it does, in one line.
    pub help: &'static str,
    /// Its parameters.
    pub params: &'static [ParamDef],
    /// How it treats the frame, which decides where it may stand in a chain.
    pub kind: Kind,
}

/// How a filter treats the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Kind {
    /// Each output pixel from the input pixels around it, at the same size.
    Pixel,
    /// Finds things in the source frame (and, where `previous`, in the frame before it) and
    /// draws where it found them on the chain's current image.
    Detector {
        /// It compares the frame with the source frame before it.
        previous: bool,
    },
    /// Makes a frame of another size.
    Resize,
}

impl FilterDef {
    /// The parameter `key`.
    pub(super) fn param(&self, key: &str) -> Option<&'static ParamDef> {
        self.params.iter().find(|p| p.key == key)
    }
}

pub(super) const fn param(
    key: &'static str,
    default: &'static str,
    range: Range,
    expected: &'static str,
    note: &'static str,
) -> ParamDef {
    ParamDef { key, default, range, expected, note }
}

/// Whole numbers from `min` to `max`.
pub(super) const fn ints(min: i64, max: i64) -> Range {
    Range::Int { min, max, odd: false, or_zero: false }
}

/// Odd whole numbers from `min` to `max`.
pub(super) const fn odds(min: i64, max: i64) -> Range {
    Range::Int { min, max, odd: true, or_zero: false }
}

/// Numbers from `min` to `max`.
pub(super) const fn numbers(min: f64, max: f64) -> Range {
    Range::Number { min, max }
}

/// What a filter's parameter struct knows of its own definition.
pub trait FilterParams: Filter + Sized {
    /// The filter's definition.
    const DEF: FilterDef;

    /// Reads the parameters from a chain's `key=value` pairs; each [`Params::get`] applies the
    /// definition's default and range.
    fn read(p: &mut Params<'_>) -> Result<Self, ParamError>;

    /// Every parameter at its default.
    fn defaults() -> Self
    where
        Self: Sized,
    {
        let mut none = Params { def: &Self::DEF, pairs: Vec::new() };
        Self::read(&mut none).expect("a filter's defaults are within its ranges")
    }
}

/// A filter with its parameters: what [`super::FilterSpec`] dispatches to.
pub trait Filter {
    /// Its parameters' values as a chain writes them, in the order of its definition.
    fn values(&self) -> Vec<String>;

    /// What is wrong between parameters that are each within their range (edges' `low` above
    /// `high`), in words.
    fn conflict(&self) -> Option<String> {
        None
    }

    /// The size of its output for a `width`×`height` input.
    fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        (width, height)
    }

    /// Checks what it needs from the host (the face cascade), for callers that want the error
    /// before any frame is read.
    fn check_env(&self, _env: &FilterEnv) -> Result<(), FilterError> {
        Ok(())
    }

    /// How far around an output pixel the input pixels it depends on lie: what a tile of the
    /// frame needs around it for the filter to give the same pixels on the tile as on the whole
    /// frame (see [`super::tiles`]).
    fn reach(&self) -> Reach;

    /// The filter ready to run on one thread, with its own state and scratch buffers.
    fn stage(&self, env: &FilterEnv) -> Result<Box<dyn Stage>, FilterError>;
}

/// How far an output pixel's inputs lie from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Within this many pixels, in every direction.
    Pixels(u32),
    /// Anywhere in the frame: the filter runs on the whole frame, for this reason.
    Whole(&'static str),
}

/// One filter running on one thread.
pub trait Stage: Send {
    /// Filters `image`. `source` is the chain's input frame and `previous` the source frame
    /// before it, if any; detectors look at those and draw on `image`.
    fn run(&mut self, image: Image<'_>, source: &Mat, previous: Option<&Mat>) -> Result<Mat, FilterError>;
}

/// A filter without state: a function of the image and its parameters.
pub trait Stateless: Copy + Send {
    /// Filters `input` into a new image.
    fn apply(&self, input: &Mat) -> opencv::Result<Mat>;
}

impl<T: Stateless> Stage for T {
    fn run(&mut self, image: Image<'_>, _: &Mat, _: Option<&Mat>) -> Result<Mat, FilterError> {
        Ok(self.apply(image.as_mat())?)
    }
}

/// The chain's current image: the source frame itself until a filter produces a new one, so a
/// drawing filter copies the shared source only when it is first in the chain.
pub enum Image<'a> {
    /// The chain's input, shared.
    Source(&'a Mat),
    /// What the filter before made.
    Owned(Mat),
}

impl Image<'_> {
    /// The image, to read.
    pub fn as_mat(&self) -> &Mat {
        match self {
            Image::Source(m) => m,
            Image::Owned(m) => m,
        }
    }

    /// The image, to draw on: the source is copied.
    pub fn into_owned(self) -> opencv::Result<Mat> {
        match self {
            Image::Source(m) => m.try_clone(),
            Image::Owned(m) => Ok(m),
        }
    }
}

/// The `key=value` pairs of one filter, checked against the parameters its definition names.
pub struct Params<'a> {
    def: &'static FilterDef,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    pub(super) fn read(def: &'static FilterDef, raw: impl Iterator<Item = &'a str>) -> Result<Self, ParamError> {
        let filter = def.name;
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in raw {
            let (key, value) = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| ParamError::MissingValue { filter, param: item.to_string() })?;
            if def.param(key).is_none() {
                let allowed = def.params.iter().map(|p| p.key).collect::<Vec<_>>().join(", ");
                return Err(ParamError::UnknownParam { filter, param: key.to_string(), allowed });
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(ParamError::DuplicateParam { filter, param: key.to_string() });
            }
            pairs.push((key, value));
        }
        Ok(Params { def, pairs })
    }

    /// The value of `key` as given, or its default, checked against its range and read as `T`.
    pub fn get<T: FromStr>(&mut self, key: &'static str) -> Result<T, ParamError> {
        let filter = self.def.name;
        let Some(param) = self.def.param(key) else {
            return Err(ParamError::UnknownParam { filter, param: key.to_string(), allowed: String::new() });
        };
        let raw = self.pairs.iter().find(|(k, _)| *k == key).map_or(param.default, |(_, v)| *v);
        let bad =
            || ParamError::BadValue { filter, param: param.key, value: raw.to_string(), expected: param.expected };
        if !param.range.admits(raw) {
            return Err(bad());
        }
        raw.parse::<T>().map_err(|_| bad())
    }
}

/// Registers the filters: for each `Variant(module::Params)`, declares the module, re-exports
/// its parameter struct, and adds a variant to [`super::FilterSpec`] (whose order is the wire
/// format's, so new filters go last) and a definition to [`super::FILTERS`].
macro_rules! filters {
    ($($variant:ident($module:ident::$params:ident)),+ $(,)?) => {
        $(mod $module; pub use $module::$params;)+

        /// One validated filter with its parameters.
        #[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
        pub enum FilterSpec {
            $(#[doc = concat!("See [`", stringify!($params), "`].")] $variant($params),)+
        }

        /// Every filter vpd knows, in the order `--help` lists them.
        pub const FILTERS: &[FilterDef] = &[$(<$params as FilterParams>::DEF),+];

        impl FilterSpec {
            /// Its definition.
            pub fn def(&self) -> &'static FilterDef {
                match self {
                    $(FilterSpec::$variant(_) => &<$params as FilterParams>::DEF,)+
                }
            }

            /// The filter with its parameters.
            pub fn filter(&self) -> &dyn Filter {
                match self {
                    $(FilterSpec::$variant(p) => p,)+
                }
            }

            /// Reads the filter `def` names from a chain's `key=value` pairs; none where no
            /// registered filter has that definition.
            fn read_as(def: &'static FilterDef, p: &mut Params<'_>) -> Option<Result<Self, ParamError>> {
                $(if def.name == <$params as FilterParams>::DEF.name {
                    return Some(<$params as FilterParams>::read(p).map(FilterSpec::$variant));
                })+
                None
            }
        }
    };
}
