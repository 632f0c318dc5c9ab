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

use super::def::{FilterDef, Kind, Params};
use super::layout::Grid;
use super::{FILTERS, FilterEnv, FilterError, FilterSpec, ParamError};

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
    /// A parameter that is missing, unknown, out of range or in conflict with another.
    #[error(transparent)]
    Param(#[from] ParamError),
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
        if let Some(at) = specs.iter().position(|s| s.def().kind == Kind::Resize)
            && let Some(detector) = specs[at..].iter().find(|s| matches!(s.def().kind, Kind::Detector { .. }))
        {
            return Err(ParamError::Conflict {
                filter: detector.name(),
                message: "it must come before scale (it draws where it finds things in the source frame)".into(),
            }
            .into());
        }
        Ok(Chain(specs))
    }

    /// The filters in application order.
    pub fn specs(&self) -> &[FilterSpec] {
        &self.0
    }

    /// Whether a frame's task must carry the previous source frame.
    pub fn needs_previous(&self) -> bool {
        self.0.iter().any(|s| s.def().kind == Kind::Detector { previous: true })
    }

    /// The size of the chain's output for a `width`×`height` input.
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        self.0.iter().fold((width, height), |(w, h), spec| spec.filter().output_size(w, h))
    }

    /// Checks that the host has what the chain's filters need (the face cascade), for callers
    /// that want the error before any frame is read.
    pub fn check_env(&self, env: &FilterEnv) -> Result<(), FilterError> {
        self.0.iter().try_for_each(|s| s.filter().check_env(env))
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
    /// For a filter that needs the whole frame but does most of its work locally (edges: a
    /// pixel's class is local, Canny's hysteresis is not): the reach of its part run in tiles,
    /// and what it leaves to the joined frame, in words.
    pub fn split(&self) -> Option<(u32, &'static str)> {
        match self {
            FilterSpec::Edges(p) => p.split(),
            _ => None,
        }
    }

    /// Where [`FilterSpec::split`] says it splits: its part run on the tiles of `grid`, cut
    /// with `margin`, and its part run on the frame joined from them.
    pub fn halves(&self, grid: Grid, margin: u32) -> Option<(FilterSpec, FilterSpec)> {
        match self {
            FilterSpec::Edges(p) => p.halves(grid, margin).map(|(a, b)| (FilterSpec::Edges(a), FilterSpec::Edges(b))),
            _ => None,
        }
    }

    /// The filter's name as written in a chain.
    pub fn name(&self) -> &'static str {
        self.def().name
    }

    /// Checks every parameter against the bounds the command line enforces. [`Chain`] calls
    /// this for specs from anywhere, so a spec deserialised from a broker message is held to
    /// the same limits as one parsed from text.
    pub fn validate(&self) -> Result<(), ParamError> {
        let def = self.def();
        for (param, value) in def.params.iter().zip(self.filter().values()) {
            if !param.range.admits(&value) {
                return Err(ParamError::BadValue {
                    filter: def.name,
                    param: param.key,
                    value,
                    expected: param.expected,
                });
            }
        }
        match self.filter().conflict() {
            Some(message) => Err(ParamError::Conflict { filter: def.name, message }),
            None => Ok(()),
        }
    }
}

impl FromStr for FilterSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut parts = s.split(':').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let def = filter_def(name).ok_or_else(|| SpecError::UnknownFilter(name.to_string()))?;
        let mut params = Params::read(def, parts.filter(|p| !p.is_empty()))?;
        let spec =
            FilterSpec::read_as(def, &mut params).ok_or_else(|| SpecError::UnknownFilter(name.to_string()))??;
        // The cross-parameter checks (edges' low <= high) live in one place.
        spec.validate()?;
        Ok(spec)
    }
}

impl fmt::Display for FilterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        for (param, value) in self.def().params.iter().zip(self.filter().values()) {
            write!(f, ":{}={value}", param.key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::def::Range;
    use crate::filters::{BlurParams, EdgesParams, EdgesPart, FaceMode, FacesParams, GradeParams, MotionParams};

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
    fn the_registration_order_is_the_wire_format_and_each_spec_knows_its_definition() {
        // A task's header numbers the filters in registration order: a filter registered in
        // the middle would make every older worker misread the ones after it.
        let wire = ["blur", "edges", "faces", "motion", "denoise", "sharpen", "grade", "scale:width=64"];
        for (index, text) in wire.iter().enumerate() {
            let spec: FilterSpec = text.parse().unwrap();
            assert_eq!(postcard::to_stdvec(&spec).unwrap()[0] as usize, index, "{text}");
            assert_eq!(spec.def(), &FILTERS[index]);
            assert_eq!(filter_def(spec.name()), Some(&FILTERS[index]));
        }
        assert_eq!(FILTERS.len(), wire.len(), "a new filter goes at the end of the list above too");
        // What a chain needs follows from the definitions' kinds.
        assert!(parse("edges,motion").unwrap().needs_previous());
        assert!(!parse("edges,faces,scale:width=64").unwrap().needs_previous());
        assert_eq!(parse("blur,scale:width=640,edges").unwrap().output_size(1280, 720), (640, 360));
    }

    #[test]
    fn defaults_and_order() {
        let chain = parse("blur,edges").unwrap();
        assert_eq!(
            chain.specs(),
            &[
                FilterSpec::Blur(BlurParams { ksize: 15, sigma: 0.0 }),
                FilterSpec::Edges(EdgesParams { low: 50.0, high: 150.0, part: EdgesPart::All }),
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
        assert_eq!(specs[1], FilterSpec::Edges(EdgesParams { low: 10.0, high: 20.0, part: EdgesPart::All }));
        assert!(matches!(specs[2], FilterSpec::Faces(FacesParams { mode: FaceMode::Blur, .. })));
        assert!(matches!(specs[3], FilterSpec::Motion(MotionParams { threshold: 40, .. })));
        assert!(chain.needs_previous());
        // The faces filter, and only it, needs the cascade to be there.
        let nowhere = FilterEnv { face_cascade: "/nonexistent/cascade.xml".into() };
        assert!(chain.check_env(&nowhere).unwrap_err().to_string().contains("/nonexistent/cascade.xml"));
        assert!(parse("blur,edges,motion").unwrap().check_env(&nowhere).is_ok());
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
        let inverted = vec![FilterSpec::Edges(EdgesParams { low: 200.0, high: 100.0, part: EdgesPart::All })];
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
