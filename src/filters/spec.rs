//! The filter-chain language: `blur:ksize=21,edges:low=50:high=150`.
//!
//! A chain is a comma-separated list of filters applied in order; each filter takes
//! `:key=value` parameters. Parsing validates every name, parameter and value, so a bad chain
//! is rejected before any frame is read, and the same validated [`Chain`] travels inside frame
//! tasks: workers never see the string.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    Choice(&'static [&'static str]),
}

impl Range {
    /// Whether `raw`, as written in a chain, is within the range.
    pub fn admits(&self, raw: &str) -> bool {
        match *self {
            Range::Int { min, max, odd, or_zero } => raw
                .parse::<i64>()
                .is_ok_and(|n| (or_zero && n == 0) || ((min..=max).contains(&n) && (!odd || n % 2 == 1))),
            Range::Number { min, max } => raw.parse::<f64>().is_ok_and(|n| n.is_finite() && (min..=max).contains(&n)),
            Range::Choice(words) => words.contains(&raw),
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
}

impl FilterDef {
    /// The parameter `key`.
    fn param(&self, key: &str) -> Option<&'static ParamDef> {
        self.params.iter().find(|p| p.key == key)
    }
}

const fn param(
    key: &'static str,
    default: &'static str,
    range: Range,
    expected: &'static str,
    note: &'static str,
) -> ParamDef {
    ParamDef { key, default, range, expected, note }
}

/// Whole numbers from `min` to `max`.
const fn ints(min: i64, max: i64) -> Range {
    Range::Int { min, max, odd: false, or_zero: false }
}

/// Odd whole numbers from `min` to `max`.
const fn odds(min: i64, max: i64) -> Range {
    Range::Int { min, max, odd: true, or_zero: false }
}

/// Numbers from `min` to `max`.
const fn numbers(min: f64, max: f64) -> Range {
    Range::Number { min, max }
}

const THRESHOLD: Range = numbers(0.0, 10_000.0);
const FACTOR: Range = numbers(0.0, 4.0);
const SIGNED_UNIT: Range = numbers(-1.0, 1.0);
const SCALE_SIDE: Range = Range::Int { min: 16, max: 8192, odd: false, or_zero: true };

/// Every filter vpd knows, in the order `--help` lists them: the one place a filter's name,
/// help, parameters, defaults and ranges are written.
pub const FILTERS: &[FilterDef] = &[
    FilterDef {
        name: "blur",
        help: "Gaussian blur",
        params: &[
            param("ksize", "15", odds(1, 255), "an odd integer from 1 to 255", "odd, 1-255"),
            param(
                "sigma",
                "0",
                numbers(0.0, 100.0),
                "a number from 0 to 100 (0: derived from ksize)",
                "0-100; 0: from ksize",
            ),
        ],
    },
    FilterDef {
        name: "edges",
        help: "Canny edges of the grey image",
        params: &[
            param("low", "50", THRESHOLD, "a number from 0 to 10000", "0-10000"),
            param("high", "150", THRESHOLD, "a number from 0 to 10000", "0-10000, at least low"),
        ],
    },
    FilterDef {
        name: "faces",
        help: "frontal faces boxed or blurred (a detector)",
        params: &[
            ParamDef {
                key: "mode",
                default: "box",
                range: Range::Choice(&["box", "blur"]),
                expected: "box or blur",
                note: "box|blur",
            },
            param("width", "640", ints(64, 4096), "an integer from 64 to 4096", "detection width, 64-4096"),
            param("neighbors", "5", ints(1, 50), "an integer from 1 to 50", "1-50"),
        ],
    },
    FilterDef {
        name: "motion",
        help: "boxes around what moved since the previous frame (a detector)",
        params: &[
            param("threshold", "25", ints(1, 255), "an integer from 1 to 255", "1-255"),
            param("min_area", "400", ints(0, u32::MAX as i64), "a non-negative integer", "pixels"),
            param("dilate", "2", ints(0, 20), "an integer from 0 to 20", "0-20"),
        ],
    },
    FilterDef {
        name: "denoise",
        help: "median: removes grain, keeps edges",
        params: &[param("size", "5", odds(3, 9), "3, 5, 7 or 9", "odd, 3-9")],
    },
    FilterDef {
        name: "sharpen",
        help: "unsharp mask",
        params: &[
            param("amount", "1", numbers(0.0, 5.0), "a number from 0 to 5", "0-5"),
            param("radius", "1.5", numbers(0.3, 20.0), "a number from 0.3 to 20", "0.3-20 pixels"),
        ],
    },
    FilterDef {
        name: "grade",
        help: "colour grading",
        params: &[
            param("contrast", "1", FACTOR, "a number from 0 to 4", "0-4"),
            param("brightness", "0", SIGNED_UNIT, "a number from -1 to 1", "-1-1"),
            param("saturation", "1", FACTOR, "a number from 0 to 4", "0-4"),
            param("gamma", "1", numbers(0.1, 10.0), "a number from 0.1 to 10", "0.1-10"),
            param("warmth", "0", SIGNED_UNIT, "a number from -1 to 1", "-1-1"),
        ],
    },
    FilterDef {
        name: "scale",
        help: "resize; a side left 0 follows from the other, keeping the aspect ratio",
        params: &[
            ParamDef {
                key: "width",
                default: "0",
                range: SCALE_SIDE,
                expected: "0 (from the other side) or 16 to 8192 pixels",
                note: "16-8192, or 0",
            },
            ParamDef {
                key: "height",
                default: "0",
                range: SCALE_SIDE,
                expected: "0 (from the other side) or 16 to 8192 pixels",
                note: "16-8192, or 0",
            },
        ],
    },
];

/// The filter called `name`.
pub fn filter_def(name: &str) -> Option<&'static FilterDef> {
    FILTERS.iter().find(|d| d.name == name)
}

/// The filters' names, comma-separated, in order.
fn known_filters() -> String {
    FILTERS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
}

/// Most filters in one chain. A real chain has a handful; the bound keeps a hostile one (3000
/// blurs fit in a 64 KiB message) from pinning a filter thread for minutes on one frame.
pub const MAX_CHAIN_LEN: usize = 16;

/// Why a filter chain was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The chain string held no filter at all.
    #[error("empty filter chain (known filters: {})", known_filters())]
    Empty,
    /// An empty element between commas (`blur,,edges`) or at either end.
    #[error("empty element at position {0} of the filter chain (write filters as NAME[:KEY=VALUE...],NAME...)")]
    EmptyElement(usize),
    /// More filters than [`MAX_CHAIN_LEN`].
    #[error("a chain of {0} filters is over the limit of {MAX_CHAIN_LEN}")]
    TooLong(usize),
    /// A filter name that vpd does not know.
    #[error("unknown filter '{0}' (known filters: {known})", known = known_filters())]
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

/// Edge-preserving noise removal: a median filter (measured against bilateral and non-local
/// means, see BENCHMARKS.md "New filters").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DenoiseParams {
    /// The median's window, odd, 3..=9 pixels.
    pub size: u32,
}

/// Unsharp mask: the frame plus `amount` times its difference from a Gaussian blur of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SharpenParams {
    /// How much of the detail to add back, 0..=5.
    pub amount: f64,
    /// The blur's standard deviation in pixels, 0.3..=20: the size of the detail sharpened.
    pub radius: f64,
}

/// Colour grading through per-channel lookup tables (built once per chain), then saturation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradeParams {
    /// Contrast around mid-grey, 0..=4 (1: unchanged).
    pub contrast: f64,
    /// Added brightness, -1..=1 of the full range (0: unchanged).
    pub brightness: f64,
    /// Colour saturation, 0..=4 (0: grey, 1: unchanged).
    pub saturation: f64,
    /// Gamma, 0.1..=10 (above 1 brightens the mid-tones, 1: unchanged).
    pub gamma: f64,
    /// Warmth, -1..=1: red up and blue down (negative: cooler; 0: unchanged).
    pub warmth: f64,
}

/// Resizing to a width and/or a height; a dimension left 0 follows from the other, keeping the
/// aspect ratio, rounded to an even number of pixels (what 4:2:0 encoders need).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleParams {
    /// Width in pixels, 16..=8192, or 0.
    pub width: u32,
    /// Height in pixels, 16..=8192, or 0.
    pub height: u32,
}

impl ScaleParams {
    /// The size a `width`×`height` frame is scaled to.
    pub fn size_of(&self, width: u32, height: u32) -> (u32, u32) {
        let follow = |wanted: u32, this: u32, other: u32| {
            let exact = f64::from(wanted) * f64::from(this) / f64::from(other.max(1));
            ((exact / 2.0).round() as u32 * 2).max(2)
        };
        match (self.width, self.height) {
            (0, h) => (follow(h, width, height), h),
            (w, 0) => (w, follow(w, height, width)),
            (w, h) => (w, h),
        }
    }
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
    /// See [`DenoiseParams`].
    Denoise(DenoiseParams),
    /// See [`SharpenParams`].
    Sharpen(SharpenParams),
    /// See [`GradeParams`].
    Grade(GradeParams),
    /// See [`ScaleParams`].
    Scale(ScaleParams),
}

/// An ordered, non-empty list of at most [`MAX_CHAIN_LEN`] filters, each within its bounds.
///
/// Every way to make one checks this, deserialising included: a chain read from a client's
/// message or from a broker's is held to the same bounds as one typed on the command line.
/// Human-readable formats (the client's JSON) carry it as the text a user types; binary ones
/// (a task's postcard header) as the list of filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain(Vec<FilterSpec>);

impl Serialize for Chain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.collect_str(self) } else { self.0.serialize(s) }
    }
}

impl<'de> Deserialize<'de> for Chain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            String::deserialize(d)?.parse().map_err(D::Error::custom)
        } else {
            Chain::new(Vec::deserialize(d)?).map_err(D::Error::custom)
        }
    }
}

impl Chain {
    /// Builds a chain from specs, checking the length and every parameter's bounds.
    pub fn new(specs: Vec<FilterSpec>) -> Result<Self, SpecError> {
        if specs.is_empty() {
            return Err(SpecError::Empty);
        }
        if specs.len() > MAX_CHAIN_LEN {
            return Err(SpecError::TooLong(specs.len()));
        }
        for spec in &specs {
            spec.validate()?;
        }
        // Detectors find things in the source frame and draw where they found them: on a
        // scaled image they would draw in the wrong place.
        if let Some(at) = specs.iter().position(|s| matches!(s, FilterSpec::Scale(_)))
            && let Some(detector) =
                specs[at..].iter().find(|s| matches!(s, FilterSpec::Faces(_) | FilterSpec::Motion(_)))
        {
            return Err(SpecError::Conflict {
                filter: detector.name(),
                message: "it must come before scale (it draws where it finds things in the source frame)".into(),
            });
        }
        Ok(Chain(specs))
    }

    /// The filters in application order.
    pub fn specs(&self) -> &[FilterSpec] {
        &self.0
    }

    /// Whether a frame's task must carry the previous source frame.
    pub fn needs_previous(&self) -> bool {
        self.0.iter().any(|s| matches!(s, FilterSpec::Motion(_)))
    }

    /// The size of the chain's output for a `width`×`height` input.
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        self.0.iter().fold((width, height), |(w, h), spec| match spec {
            FilterSpec::Scale(p) => p.size_of(w, h),
            _ => (w, h),
        })
    }

    /// Whether any filter needs the face cascade.
    pub fn needs_faces(&self) -> bool {
        self.0.iter().any(|s| matches!(s, FilterSpec::Faces(_)))
    }
}

impl FromStr for Chain {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        if s.trim().is_empty() {
            return Err(SpecError::Empty);
        }
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        // Counted before parsing: a 4000-element chain is refused without parsing 4000 filters.
        if parts.len() > MAX_CHAIN_LEN {
            return Err(SpecError::TooLong(parts.len()));
        }
        let specs = parts
            .iter()
            .enumerate()
            .map(|(i, part)| if part.is_empty() { Err(SpecError::EmptyElement(i + 1)) } else { part.parse() })
            .collect::<Result<Vec<FilterSpec>, _>>()?;
        Chain::new(specs)
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
            FilterSpec::Denoise(_) => "denoise",
            FilterSpec::Sharpen(_) => "sharpen",
            FilterSpec::Grade(_) => "grade",
            FilterSpec::Scale(_) => "scale",
        }
    }
}

/// `value` (as a chain writes it) checked against the parameter `param` of `filter`.
fn check(filter: &'static str, param: &'static str, value: &dyn fmt::Display) -> Result<(), SpecError> {
    let value = value.to_string();
    let Some(def) = filter_def(filter).and_then(|f| f.param(param)) else {
        return Err(SpecError::UnknownParam { filter, param: param.to_string(), allowed: String::new() });
    };
    if def.range.admits(&value) {
        Ok(())
    } else {
        Err(SpecError::BadValue { filter, param: def.key, value, expected: def.expected })
    }
}

impl FilterSpec {
    /// Checks every parameter against the bounds the command line enforces. [`Chain`] calls
    /// this for specs from anywhere, so a spec deserialised from a broker message is held to
    /// the same limits as one parsed from text.
    pub fn validate(&self) -> Result<(), SpecError> {
        match *self {
            FilterSpec::Blur(p) => {
                check("blur", "ksize", &p.ksize)?;
                check("blur", "sigma", &p.sigma)
            }
            FilterSpec::Edges(p) => {
                check("edges", "low", &p.low)?;
                check("edges", "high", &p.high)?;
                if p.low > p.high {
                    return Err(SpecError::Conflict {
                        filter: "edges",
                        message: format!("low={} must not exceed high={}", p.low, p.high),
                    });
                }
                Ok(())
            }
            FilterSpec::Faces(p) => {
                check("faces", "mode", &p.mode)?;
                check("faces", "width", &p.width)?;
                check("faces", "neighbors", &p.neighbors)
            }
            FilterSpec::Motion(p) => {
                check("motion", "threshold", &p.threshold)?;
                check("motion", "min_area", &p.min_area)?;
                check("motion", "dilate", &p.dilate)
            }
            FilterSpec::Denoise(p) => check("denoise", "size", &p.size),
            FilterSpec::Sharpen(p) => {
                check("sharpen", "amount", &p.amount)?;
                check("sharpen", "radius", &p.radius)
            }
            FilterSpec::Scale(p) => {
                check("scale", "width", &p.width)?;
                check("scale", "height", &p.height)?;
                if p.width == 0 && p.height == 0 {
                    return Err(SpecError::Conflict {
                        filter: "scale",
                        message: "give a width, a height or both".into(),
                    });
                }
                Ok(())
            }
            FilterSpec::Grade(p) => {
                check("grade", "contrast", &p.contrast)?;
                check("grade", "brightness", &p.brightness)?;
                check("grade", "saturation", &p.saturation)?;
                check("grade", "gamma", &p.gamma)?;
                check("grade", "warmth", &p.warmth)
            }
        }
    }
}

impl FromStr for FilterSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut parts = s.split(':').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let params = parts.filter(|p| !p.is_empty());
        let spec = match name {
            "blur" => {
                let mut p = Params::read("blur", params)?;
                let ksize = p.get("ksize")?;
                let sigma = p.get("sigma")?;
                FilterSpec::Blur(BlurParams { ksize, sigma })
            }
            "edges" => {
                let mut p = Params::read("edges", params)?;
                let low = p.get("low")?;
                let high = p.get("high")?;
                FilterSpec::Edges(EdgesParams { low, high })
            }
            "faces" => {
                let mut p = Params::read("faces", params)?;
                let mode = p.get("mode")?;
                let width = p.get("width")?;
                let neighbors = p.get("neighbors")?;
                FilterSpec::Faces(FacesParams { mode, width, neighbors })
            }
            "motion" => {
                let mut p = Params::read("motion", params)?;
                let threshold = p.get("threshold")?;
                let min_area = p.get("min_area")?;
                let dilate = p.get("dilate")?;
                FilterSpec::Motion(MotionParams { threshold, min_area, dilate })
            }
            "denoise" => {
                let mut p = Params::read("denoise", params)?;
                FilterSpec::Denoise(DenoiseParams { size: p.get("size")? })
            }
            "sharpen" => {
                let mut p = Params::read("sharpen", params)?;
                let amount = p.get("amount")?;
                let radius = p.get("radius")?;
                FilterSpec::Sharpen(SharpenParams { amount, radius })
            }
            "grade" => {
                let mut p = Params::read("grade", params)?;
                let contrast = p.get("contrast")?;
                let brightness = p.get("brightness")?;
                let saturation = p.get("saturation")?;
                let gamma = p.get("gamma")?;
                let warmth = p.get("warmth")?;
                FilterSpec::Grade(GradeParams { contrast, brightness, saturation, gamma, warmth })
            }
            "scale" => {
                let mut p = Params::read("scale", params)?;
                let width = p.get("width")?;
                let height = p.get("height")?;
                FilterSpec::Scale(ScaleParams { width, height })
            }
            other => return Err(SpecError::UnknownFilter(other.to_string())),
        };
        // The cross-parameter checks (edges' low <= high) live in one place.
        spec.validate()?;
        Ok(spec)
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
            FilterSpec::Denoise(p) => write!(f, "denoise:size={}", p.size),
            FilterSpec::Sharpen(p) => write!(f, "sharpen:amount={}:radius={}", p.amount, p.radius),
            FilterSpec::Scale(p) => write!(f, "scale:width={}:height={}", p.width, p.height),
            FilterSpec::Grade(p) => write!(
                f,
                "grade:contrast={}:brightness={}:saturation={}:gamma={}:warmth={}",
                p.contrast, p.brightness, p.saturation, p.gamma, p.warmth
            ),
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

/// The `key=value` pairs of one filter, checked against the parameters its definition names.
struct Params<'a> {
    def: &'static FilterDef,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    fn read(filter: &'static str, raw: impl Iterator<Item = &'a str>) -> Result<Self, SpecError> {
        let def = filter_def(filter).ok_or_else(|| SpecError::UnknownFilter(filter.to_string()))?;
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in raw {
            let (key, value) = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| SpecError::MissingValue { filter, param: item.to_string() })?;
            if def.param(key).is_none() {
                let allowed = def.params.iter().map(|p| p.key).collect::<Vec<_>>().join(", ");
                return Err(SpecError::UnknownParam { filter, param: key.to_string(), allowed });
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(SpecError::DuplicateParam { filter, param: key.to_string() });
            }
            pairs.push((key, value));
        }
        Ok(Params { def, pairs })
    }

    /// The value of `key` as given, or its default, checked against its range and read as `T`.
    fn get<T: FromStr>(&mut self, key: &'static str) -> Result<T, SpecError> {
        let filter = self.def.name;
        let Some(param) = self.def.param(key) else {
            return Err(SpecError::UnknownParam { filter, param: key.to_string(), allowed: String::new() });
        };
        let raw = self.pairs.iter().find(|(k, _)| *k == key).map_or(param.default, |(_, v)| *v);
        let bad = || SpecError::BadValue { filter, param: param.key, value: raw.to_string(), expected: param.expected };
        if !param.range.admits(raw) {
            return Err(bad());
        }
        raw.parse::<T>().map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Chain, SpecError> {
        s.parse()
    }

    #[test]
    fn the_new_filters_parse_print_and_check_their_bounds() {
        let chain = parse("denoise,sharpen:amount=0.8,grade:contrast=1.1:saturation=1.2").unwrap();
        assert_eq!(
            chain.to_string(),
            "denoise:size=5,sharpen:amount=0.8:radius=1.5,grade:contrast=1.1:brightness=0:saturation=1.2:gamma=1:warmth=0"
        );
        assert_eq!(parse(&chain.to_string()).unwrap(), chain, "the printed chain parses back");
        for (bad, message) in [
            ("denoise:size=4", "denoise: size=4 is invalid: expected 3, 5, 7 or 9"),
            ("sharpen:amount=9", "sharpen: amount=9 is invalid: expected a number from 0 to 5"),
            ("sharpen:radius=0", "sharpen: radius=0 is invalid: expected a number from 0.3 to 20"),
            ("grade:gamma=0", "grade: gamma=0 is invalid: expected a number from 0.1 to 10"),
            ("grade:warmth=2", "grade: warmth=2 is invalid: expected a number from -1 to 1"),
            (
                "grade:tint=1",
                "grade: unknown parameter 'tint' (allowed: contrast, brightness, saturation, gamma, warmth)",
            ),
        ] {
            assert_eq!(parse(bad).unwrap_err().to_string(), message, "{bad}");
        }
        // A chain from a broker message is held to the same bounds.
        let bad = Chain::new(vec![FilterSpec::Grade(GradeParams {
            contrast: 9.0,
            brightness: 0.0,
            saturation: 1.0,
            gamma: 1.0,
            warmth: 0.0,
        })]);
        assert!(bad.is_err());
    }

    #[test]
    fn each_filters_definition_gives_the_parser_its_parameters_defaults_and_ranges() {
        for def in FILTERS {
            for p in def.params {
                assert!(p.range.admits(p.default), "{}: {}={} is outside its own range", def.name, p.key, p.default);
            }
            // Scale needs a side; every other filter reads as its definition's defaults.
            if def.name != "scale" {
                let spec: FilterSpec = def.name.parse().unwrap();
                let defaults: String = def.params.iter().map(|p| format!(":{}={}", p.key, p.default)).collect();
                assert_eq!(spec.to_string(), format!("{}{defaults}", def.name));
            }
        }
        assert_eq!(FILTERS.iter().map(|d| d.name).collect::<Vec<_>>().len(), 8);
        assert!(!Range::Int { min: 16, max: 8192, odd: false, or_zero: true }.admits("8"));
        assert!(Range::Int { min: 16, max: 8192, odd: false, or_zero: true }.admits("0"));
        assert!(!Range::Int { min: 1, max: 255, odd: true, or_zero: false }.admits("4"));
        assert!(!Range::Number { min: 0.0, max: 1.0 }.admits("inf"));
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
    fn chains_longer_than_the_limit_are_refused() {
        let at_limit = vec!["blur:ksize=3"; MAX_CHAIN_LEN].join(",");
        assert_eq!(parse(&at_limit).unwrap().specs().len(), MAX_CHAIN_LEN);
        let over = vec!["blur:ksize=3"; 4000].join(",");
        assert_eq!(parse(&over), Err(SpecError::TooLong(4000)));
        assert_eq!(parse(&over).unwrap_err().to_string(), "a chain of 4000 filters is over the limit of 16");
    }

    #[test]
    fn deserialised_chains_are_held_to_the_same_bounds() {
        // What a forged broker message would carry: bounds the parser never lets through.
        let huge_blur = vec![FilterSpec::Blur(BlurParams { ksize: 100_001, sigma: 0.0 })];
        let bytes = postcard::to_stdvec(&huge_blur).unwrap();
        assert!(postcard::from_bytes::<Chain>(&bytes).is_err(), "ksize=100001 must not deserialise");
        // What a hand-written client could send: JSON carries a chain as its text.
        let err = serde_json::from_str::<Chain>(r#""blur:ksize=100001""#).unwrap_err().to_string();
        assert!(err.contains("ksize=100001 is invalid"), "{err}");
        let long = serde_json::to_string(&vec!["blur"; 3000].join(",")).unwrap();
        assert!(serde_json::from_str::<Chain>(&long).unwrap_err().to_string().contains("over the limit of 16"));

        let long = vec![FilterSpec::Blur(BlurParams { ksize: 3, sigma: 0.0 }); 3000];
        assert!(postcard::from_bytes::<Chain>(&postcard::to_stdvec(&long).unwrap()).is_err());
        assert!(postcard::from_bytes::<Chain>(&postcard::to_stdvec(&Vec::<FilterSpec>::new()).unwrap()).is_err());
        let inverted = vec![FilterSpec::Edges(EdgesParams { low: 200.0, high: 100.0 })];
        assert!(postcard::from_bytes::<Chain>(&postcard::to_stdvec(&inverted).unwrap()).is_err());
        let nan = vec![FilterSpec::Blur(BlurParams { ksize: 3, sigma: f64::NAN })];
        assert!(postcard::from_bytes::<Chain>(&postcard::to_stdvec(&nan).unwrap()).is_err());

        // A valid chain still round-trips, in either form.
        let ok = parse("blur:ksize=7,edges,faces:mode=blur,motion").unwrap();
        assert_eq!(postcard::from_bytes::<Chain>(&postcard::to_stdvec(&ok).unwrap()).unwrap(), ok);
        assert_eq!(serde_json::to_string(&ok).unwrap(), format!("\"{ok}\""));
        assert_eq!(serde_json::from_str::<Chain>(&serde_json::to_string(&ok).unwrap()).unwrap(), ok);
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
            ("", "empty filter chain (known filters: blur, edges, faces, motion, denoise, sharpen, grade, scale)"),
            (
                "vignette",
                "unknown filter 'vignette' (known filters: blur, edges, faces, motion, denoise, sharpen, grade, scale)",
            ),
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
            (
                "blur:ksize=3,,edges",
                "empty element at position 2 of the filter chain (write filters as NAME[:KEY=VALUE...],NAME...)",
            ),
            (
                "edges,",
                "empty element at position 2 of the filter chain (write filters as NAME[:KEY=VALUE...],NAME...)",
            ),
            (
                ",edges",
                "empty element at position 1 of the filter chain (write filters as NAME[:KEY=VALUE...],NAME...)",
            ),
        ];
        for (input, message) in cases {
            let err = parse(input).expect_err(input);
            assert_eq!(err.to_string(), message, "for {input:?}");
        }
    }
}
