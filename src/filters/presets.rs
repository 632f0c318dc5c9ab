//! Named filter chains: `--preset cinematic` instead of spelling the chain out. Four are
//! built in; the configuration file's `[presets]` table adds more or overrides them. A preset
//! resolves to its chain before anything runs, so job records and summaries show the chain.

use std::collections::BTreeMap;

use super::{Chain, SpecError};

/// The built-in presets and their chains.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("cinematic", "denoise,grade:contrast=1.1:saturation=1.15,sharpen"),
    ("anonymise", "faces:mode=blur"),
    ("security", "motion"),
    ("sketch", "edges"),
];

/// Where a preset comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Built into vpd.
    BuiltIn,
    /// The configuration file's `[presets]`.
    Config,
}

/// The presets one invocation knows: the built-ins, then the file's.
#[derive(Debug, Clone)]
pub struct Presets(BTreeMap<String, (Chain, Origin)>);

/// Why a preset could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    /// No preset by that name.
    #[error("unknown preset '{name}' (known presets: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// A preset in the configuration file whose chain does not parse.
    #[error("[presets] {name}: {error}")]
    BadChain {
        /// The preset.
        name: String,
        /// What is wrong with its chain.
        error: SpecError,
    },
    /// A name that could not be typed after `--preset`.
    #[error("[presets] '{0}': a preset name is 1-40 letters, digits, '-' or '_'")]
    BadName(String),
}

impl Presets {
    /// The built-ins, overridden and extended by `user` (name → chain text).
    pub fn new(user: &BTreeMap<String, String>) -> Result<Presets, PresetError> {
        let mut all = BTreeMap::new();
        for (name, chain) in BUILT_IN {
            let chain = chain.parse().expect("the built-in presets parse (a unit test checks)");
            all.insert((*name).to_string(), (chain, Origin::BuiltIn));
        }
        for (name, text) in user {
            let ok = !name.is_empty()
                && name.len() <= 40
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(PresetError::BadName(name.clone()));
            }
            let chain = text.parse().map_err(|error| PresetError::BadChain { name: name.clone(), error })?;
            all.insert(name.clone(), (chain, Origin::Config));
        }
        Ok(Presets(all))
    }

    /// The chain of preset `name`.
    pub fn resolve(&self, name: &str) -> Result<Chain, PresetError> {
        self.0.get(name).map(|(chain, _)| chain.clone()).ok_or_else(|| PresetError::Unknown {
            name: name.to_string(),
            known: self.0.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Every preset, by name: its chain and where it comes from.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Chain, Origin)> {
        self.0.iter().map(|(name, (chain, origin))| (name.as_str(), chain, *origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_parse_and_the_file_overrides_and_adds() {
        let presets = Presets::new(&BTreeMap::new()).unwrap();
        assert_eq!(presets.iter().count(), BUILT_IN.len());
        assert_eq!(presets.resolve("sketch").unwrap().to_string(), "edges:low=50:high=150");
        let user = BTreeMap::from([
            ("sketch".to_string(), "edges:low=10:high=20".to_string()),
            ("soft".to_string(), "blur:ksize=5".to_string()),
        ]);
        let presets = Presets::new(&user).unwrap();
        assert_eq!(presets.resolve("sketch").unwrap().to_string(), "edges:low=10:high=20");
        assert_eq!(presets.resolve("soft").unwrap().to_string(), "blur:ksize=5:sigma=0");
        let origins: Vec<(&str, Origin)> = presets.iter().map(|(n, _, o)| (n, o)).collect();
        assert!(origins.contains(&("sketch", Origin::Config)) && origins.contains(&("cinematic", Origin::BuiltIn)));
        assert_eq!(
            presets.resolve("noir").unwrap_err().to_string(),
            "unknown preset 'noir' (known presets: anonymise, cinematic, security, sketch, soft)"
        );
        let bad = BTreeMap::from([("x".to_string(), "blur:ksize=4".to_string())]);
        assert_eq!(
            Presets::new(&bad).unwrap_err().to_string(),
            "[presets] x: blur: ksize=4 is invalid: expected an odd integer from 1 to 255"
        );
        let bad = BTreeMap::from([("a b".to_string(), "blur".to_string())]);
        assert!(Presets::new(&bad).is_err());
    }
}
