//! The filter-chain language: `blur:ksize=21,edges:low=50:high=150`.
//!
//! A chain is a comma-separated list of filters applied in order; each filter takes
//! `:key=value` parameters. Parsing validates every name, parameter and value, so a bad chain
//! is rejected before any frame is read, and the same validated [`Chain`] travels inside frame
//! tasks: workers never see the string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Names of the filters, in the order the help text lists them.
pub const FILTER_NAMES: &[&str] = &["blur", "edges", "faces", "motion"];

/// Why a filter chain was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The chain string held no filter at all.
    #[error("empty filter chain (known filters: {})", FILTER_NAMES.join(", "))]
    Empty,
    /// A filter name that vpd does not know.
    #[error("unknown filter '{0}' (known filters: {known})", known = FILTER_NAMES.join(", "))]
    UnknownFilter(String),
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

/// Gaussian blur.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlurParams {
    /// Kernel size in pixels, odd, 1..=255.
    pub ksize: u32,
    /// Standard deviation; 0 derives it from `ksize` as OpenCV does.
    pub sigma: f64,
}

/// Canny edge detection on the grey image, returned as a 3-channel frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EdgesParams {
    /// Lower hysteresis threshold.
    pub low: f64,
    /// Upper hysteresis threshold, at least `low`.
    pub high: f64,
}

/// What `faces` does with each detected face.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaceMode {
    /// Draw a box around each face.
    Box,
    /// Blur each face beyond recognition.
    Blur,
}

/// Haar-cascade frontal face detection.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FacesParams {
    /// Box or anonymise.
    pub mode: FaceMode,
    /// Width of the downscaled copy the detector runs on (frames narrower are used as they are).
    pub width: u32,
    /// Neighbouring detections a face needs to count (higher: fewer false positives).
    pub neighbors: u32,
}

/// Motion detection against the previous source frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MotionParams {
    /// Per-pixel grey difference that counts as change, 0..=255.
    pub threshold: u32,
    /// Smallest moving region, in pixels of the full frame, that gets a box.
    pub min_area: u32,
    /// Dilation passes that merge nearby changed pixels into one region.
    pub dilate: u32,
}

/// One validated filter with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum FilterSpec {
    /// See [`BlurParams`].
    Blur(BlurParams),
    /// See [`EdgesParams`].
    Edges(EdgesParams),
    /// See [`FacesParams`].
    Faces(FacesParams),
    /// See [`MotionParams`].
    Motion(MotionParams),
}

/// An ordered, non-empty list of filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chain(Vec<FilterSpec>);

impl Chain {
    /// Builds a chain from already validated specs; `None` when empty.
    pub fn new(specs: Vec<FilterSpec>) -> Option<Self> {
        (!specs.is_empty()).then_some(Chain(specs))
    }

    /// The filters in application order.
    pub fn specs(&self) -> &[FilterSpec] {
        &self.0
    }

    /// Whether a frame's task must carry the previous source frame.
    pub fn needs_previous(&self) -> bool {
        self.0.iter().any(|s| matches!(s, FilterSpec::Motion(_)))
    }

    /// Whether any filter needs the face cascade.
    pub fn needs_faces(&self) -> bool {
        self.0.iter().any(|s| matches!(s, FilterSpec::Faces(_)))
    }
}

impl FromStr for Chain {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let specs = s
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(FilterSpec::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Chain::new(specs).ok_or(SpecError::Empty)
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, spec) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{spec}")?;
        }
        Ok(())
    }
}

impl FilterSpec {
    /// The filter's name as written in a chain.
    pub fn name(&self) -> &'static str {
        match self {
            FilterSpec::Blur(_) => "blur",
            FilterSpec::Edges(_) => "edges",
            FilterSpec::Faces(_) => "faces",
            FilterSpec::Motion(_) => "motion",
        }
    }
}

impl FromStr for FilterSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut parts = s.split(':').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let params = parts.filter(|p| !p.is_empty());
        match name {
            "blur" => {
                let mut p = Params::read("blur", &["ksize", "sigma"], params)?;
                let ksize =
                    p.get("ksize", 15u32, |k| k % 2 == 1 && (1..=255).contains(k), "an odd integer from 1 to 255")?;
                let sigma = p.get(
                    "sigma",
                    0.0f64,
                    |s| s.is_finite() && (0.0..=100.0).contains(s),
                    "a number from 0 to 100 (0: derived from ksize)",
                )?;
                Ok(FilterSpec::Blur(BlurParams { ksize, sigma }))
            }
            "edges" => {
                let mut p = Params::read("edges", &["low", "high"], params)?;
                let low = p.get(
                    "low",
                    50.0f64,
                    |v| v.is_finite() && (0.0..=10_000.0).contains(v),
                    "a number from 0 to 10000",
                )?;
                let high = p.get(
                    "high",
                    150.0f64,
                    |v| v.is_finite() && (0.0..=10_000.0).contains(v),
                    "a number from 0 to 10000",
                )?;
                if low > high {
                    return Err(SpecError::Conflict {
                        filter: "edges",
                        message: format!("low={low} must not exceed high={high}"),
                    });
                }
                Ok(FilterSpec::Edges(EdgesParams { low, high }))
            }
            "faces" => {
                let mut p = Params::read("faces", &["mode", "width", "neighbors"], params)?;
                let mode = p.get("mode", FaceMode::Box, |_| true, "box or blur")?;
                let width = p.get("width", 640u32, |w| (64..=4096).contains(w), "an integer from 64 to 4096")?;
                let neighbors = p.get("neighbors", 5u32, |n| (1..=50).contains(n), "an integer from 1 to 50")?;
                Ok(FilterSpec::Faces(FacesParams { mode, width, neighbors }))
            }
            "motion" => {
                let mut p = Params::read("motion", &["threshold", "min_area", "dilate"], params)?;
                let threshold = p.get("threshold", 25u32, |t| (1..=255).contains(t), "an integer from 1 to 255")?;
                let min_area = p.get("min_area", 400u32, |_| true, "a non-negative integer")?;
                let dilate = p.get("dilate", 2u32, |d| *d <= 20, "an integer from 0 to 20")?;
                Ok(FilterSpec::Motion(MotionParams { threshold, min_area, dilate }))
            }
            other => Err(SpecError::UnknownFilter(other.to_string())),
        }
    }
}

impl fmt::Display for FilterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterSpec::Blur(p) => write!(f, "blur:ksize={}:sigma={}", p.ksize, p.sigma),
            FilterSpec::Edges(p) => write!(f, "edges:low={}:high={}", p.low, p.high),
            FilterSpec::Faces(p) => write!(f, "faces:mode={}:width={}:neighbors={}", p.mode, p.width, p.neighbors),
            FilterSpec::Motion(p) => {
                write!(f, "motion:threshold={}:min_area={}:dilate={}", p.threshold, p.min_area, p.dilate)
            }
        }
    }
}

impl FromStr for FaceMode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "box" => Ok(FaceMode::Box),
            "blur" => Ok(FaceMode::Blur),
            _ => Err(()),
        }
    }
}

impl fmt::Display for FaceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaceMode::Box => "box",
            FaceMode::Blur => "blur",
        })
    }
}

/// The `key=value` pairs of one filter, checked against the names it accepts.
struct Params<'a> {
    filter: &'static str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    fn read(filter: &'static str, allowed: &[&str], raw: impl Iterator<Item = &'a str>) -> Result<Self, SpecError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in raw {
            let (key, value) = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| SpecError::MissingValue { filter, param: item.to_string() })?;
            if !allowed.contains(&key) {
                return Err(SpecError::UnknownParam { filter, param: key.to_string(), allowed: allowed.join(", ") });
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(SpecError::DuplicateParam { filter, param: key.to_string() });
            }
            pairs.push((key, value));
        }
        Ok(Params { filter, pairs })
    }

    /// The value of `key` parsed as `T`, or `default` when absent; `valid` checks the range.
    fn get<T: FromStr>(
        &mut self,
        key: &'static str,
        default: T,
        valid: impl Fn(&T) -> bool,
        expected: &'static str,
    ) -> Result<T, SpecError> {
        let Some((_, raw)) = self.pairs.iter().find(|(k, _)| *k == key) else {
            return Ok(default);
        };
        match raw.parse::<T>() {
            Ok(v) if valid(&v) => Ok(v),
            _ => Err(SpecError::BadValue { filter: self.filter, param: key, value: raw.to_string(), expected }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Chain, SpecError> {
        s.parse()
    }

    #[test]
    fn defaults_and_order() {
        let chain = parse("blur,edges").unwrap();
        assert_eq!(
            chain.specs(),
            &[
                FilterSpec::Blur(BlurParams { ksize: 15, sigma: 0.0 }),
                FilterSpec::Edges(EdgesParams { low: 50.0, high: 150.0 }),
            ]
        );
        assert!(!chain.needs_previous());
    }

    #[test]
    fn parameters_are_read() {
        let chain =
            parse(" blur:ksize=21:sigma=3.5 , edges:low=10:high=20,faces:mode=blur,motion:threshold=40").unwrap();
        let specs = chain.specs();
        assert_eq!(specs[0], FilterSpec::Blur(BlurParams { ksize: 21, sigma: 3.5 }));
        assert_eq!(specs[1], FilterSpec::Edges(EdgesParams { low: 10.0, high: 20.0 }));
        assert!(matches!(specs[2], FilterSpec::Faces(FacesParams { mode: FaceMode::Blur, .. })));
        assert!(matches!(specs[3], FilterSpec::Motion(MotionParams { threshold: 40, .. })));
        assert!(chain.needs_previous());
        assert!(chain.needs_faces());
    }

    #[test]
    fn display_round_trips() {
        let chain = parse("blur:ksize=7,edges,faces:mode=blur:width=320,motion:dilate=0").unwrap();
        let again: Chain = chain.to_string().parse().unwrap();
        assert_eq!(chain, again);
    }

    #[test]
    fn errors_name_the_filter_and_allowed_values() {
        let cases = [
            ("", "empty filter chain (known filters: blur, edges, faces, motion)"),
            ("sharpen", "unknown filter 'sharpen' (known filters: blur, edges, faces, motion)"),
            ("blur:size=3", "blur: unknown parameter 'size' (allowed: ksize, sigma)"),
            ("blur:ksize=4", "blur: ksize=4 is invalid: expected an odd integer from 1 to 255"),
            ("blur:ksize=abc", "blur: ksize=abc is invalid: expected an odd integer from 1 to 255"),
            ("blur:ksize", "blur: parameter 'ksize' needs a value (ksize=...)"),
            ("blur:ksize=3:ksize=5", "blur: parameter 'ksize' given twice"),
            ("edges:low=-1", "edges: low=-1 is invalid: expected a number from 0 to 10000"),
            ("edges:low=200:high=100", "edges: low=200 must not exceed high=100"),
            ("edges:high=NaN", "edges: high=NaN is invalid: expected a number from 0 to 10000"),
            ("faces:mode=pixelate", "faces: mode=pixelate is invalid: expected box or blur"),
            ("motion:threshold=-5", "motion: threshold=-5 is invalid: expected an integer from 1 to 255"),
            ("edges,motion:what=1", "motion: unknown parameter 'what' (allowed: threshold, min_area, dilate)"),
        ];
        for (input, message) in cases {
            let err = parse(input).expect_err(input);
            assert_eq!(err.to_string(), message, "for {input:?}");
        }
    }
}
