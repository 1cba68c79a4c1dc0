//! The `dpop` block of an issuer, and a route's `dpop` override: raw JSON shape,
//! then validation into [`DpopSettings`].

use crate::json::{self, FromJson};
use serde::Deserialize;

use crate::crypto::alg::Alg;
use crate::error::ConfigError;

pub const DEFAULT_MAX_AGE_SECONDS: u64 = 60;
/// An hour: proofs are meant to live seconds or minutes (RFC 9449 §11.1).
pub const MAX_MAX_AGE_SECONDS: u64 = 3_600;
pub const DEFAULT_MAX_TRACKED_PROOFS: u32 = 100_000;
pub const MIN_TRACKED_PROOFS: u32 = 64;
/// At 24 bytes a proof, about 24 MB of shared data.
pub const MAX_TRACKED_PROOFS: u32 = 1_000_000;
pub const MAX_NONCE_ROTATION_SECONDS: u64 = 86_400;
/// The algorithms a proof may use unless the issuer's `dpop.algorithms` says otherwise.
pub const DEFAULT_ALGORITHMS: [Alg; 4] = [Alg::Es256, Alg::EdDsa, Alg::Rs256, Alg::Ps256];

/// How an issuer's tokens (or a route's requests) meet DPoP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Proofs are not accepted: the `DPoP` scheme is refused, and so is every
    /// DPoP-bound token (which cannot be presented any other way).
    #[default]
    Off,
    /// A DPoP-bound token needs its proof; an unbound bearer token still passes.
    Optional,
    /// Only DPoP-bound tokens presented with a valid proof.
    Required,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Optional => "optional",
            Mode::Required => "required",
        }
    }

    fn parse(field: &str, value: &str) -> Result<Mode, ConfigError> {
        match value {
            "off" => Ok(Mode::Off),
            "optional" => Ok(Mode::Optional),
            "required" => Ok(Mode::Required),
            other => Err(ConfigError::invalid(
                field,
                format!("{other:?} is not one of \"off\", \"optional\", \"required\""),
            )),
        }
    }
}

/// An issuer's validated `dpop` block (all defaults when it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopSettings {
    pub mode: Mode,
    /// How long after its `iat` a proof is accepted (plus the issuer's clock skew).
    pub max_age_seconds: u64,
    /// The `alg`s a proof may use: asymmetric only.
    pub algorithms: Vec<Alg>,
    /// Whether proofs must carry a server nonce (RFC 9449 §9).
    pub nonce: bool,
    /// How often the nonce changes; the current and the previous one are accepted.
    pub nonce_rotation_seconds: u64,
    /// The size of the replay table (rounded up to whole buckets).
    pub max_tracked_proofs: u32,
}

impl Default for DpopSettings {
    fn default() -> Self {
        DpopSettings {
            mode: Mode::Off,
            max_age_seconds: DEFAULT_MAX_AGE_SECONDS,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            nonce: false,
            nonce_rotation_seconds: DEFAULT_MAX_AGE_SECONDS,
            max_tracked_proofs: DEFAULT_MAX_TRACKED_PROOFS,
        }
    }
}

impl DpopSettings {
    /// The `algs` parameter of a `DPoP` challenge: the accepted algorithms, space-separated.
    pub fn algs(&self) -> String {
        self.algorithms.iter().map(|a| a.name()).collect::<Vec<_>>().join(" ")
    }
}

/// An issuer's `dpop` block, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawDpop {
    /// `off` (default), `optional` or `required`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Seconds a proof is accepted after its `iat` (default 60).
    #[serde(default)]
    pub max_age_seconds: Option<u64>,
    /// The proof algorithms accepted (default ES256, EdDSA, RS256, PS256).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Require a server-provided nonce in every proof (needs shared data).
    #[serde(default)]
    pub nonce: Option<bool>,
    /// How often the nonce rotates (default: `max_age_seconds`).
    #[serde(default)]
    pub nonce_rotation_seconds: Option<u64>,
    /// Size of the replay table (default 100000).
    #[serde(default)]
    pub max_tracked_proofs: Option<u64>,
}

impl FromJson for RawDpop {
    fn from_json(value: serde_json::Value, at: &str) -> Result<Self, ConfigError> {
        json::object(value, at, |o| RawDpop {
            mode: o.optional("mode"),
            max_age_seconds: o.optional("max_age_seconds"),
            algorithms: o.optional("algorithms"),
            nonce: o.optional("nonce"),
            nonce_rotation_seconds: o.optional("nonce_rotation_seconds"),
            max_tracked_proofs: o.optional("max_tracked_proofs"),
        })
    }
}

/// Validates an issuer's `dpop` block; `at` names its fields (`issuers[0].dpop.mode`).
pub fn compile(raw: Option<RawDpop>, at: &dyn Fn(&str) -> String) -> Result<DpopSettings, ConfigError> {
    let Some(raw) = raw else { return Ok(DpopSettings::default()) };
    let mode = match raw.mode.as_deref() {
        None => Mode::Off,
        Some(value) => Mode::parse(&at("dpop.mode"), value)?,
    };
    let max_age_seconds = raw.max_age_seconds.unwrap_or(DEFAULT_MAX_AGE_SECONDS);
    if !(1..=MAX_MAX_AGE_SECONDS).contains(&max_age_seconds) {
        return Err(ConfigError::invalid(
            at("dpop.max_age_seconds"),
            format!("must be between 1 and {MAX_MAX_AGE_SECONDS}"),
        ));
    }
    let algorithms = match raw.algorithms {
        None => DEFAULT_ALGORITHMS.to_vec(),
        Some(names) if names.is_empty() => {
            return Err(ConfigError::invalid(at("dpop.algorithms"), "must list at least one algorithm"))
        }
        Some(names) => {
            let mut algs = Vec::with_capacity(names.len());
            for (j, name) in names.iter().enumerate() {
                let alg = name.parse::<Alg>().map_err(|_| {
                    ConfigError::invalid(
                        format!("{}[{j}]", at("dpop.algorithms")),
                        format!(
                            "{name:?} is not an asymmetric algorithm nhi-guard verifies ({})",
                            Alg::ALL.map(Alg::name).join(", ")
                        ),
                    )
                })?;
                if !algs.contains(&alg) {
                    algs.push(alg);
                }
            }
            algs
        }
    };
    let nonce_rotation_seconds = raw.nonce_rotation_seconds.unwrap_or(max_age_seconds);
    if !(1..=MAX_NONCE_ROTATION_SECONDS).contains(&nonce_rotation_seconds) {
        return Err(ConfigError::invalid(
            at("dpop.nonce_rotation_seconds"),
            format!("must be between 1 and {MAX_NONCE_ROTATION_SECONDS}"),
        ));
    }
    let max = raw.max_tracked_proofs.unwrap_or(u64::from(DEFAULT_MAX_TRACKED_PROOFS));
    let max_tracked_proofs = u32::try_from(max)
        .ok()
        .filter(|m| (MIN_TRACKED_PROOFS..=MAX_TRACKED_PROOFS).contains(m))
        .ok_or_else(|| {
            ConfigError::invalid(
                at("dpop.max_tracked_proofs"),
                format!("must be between {MIN_TRACKED_PROOFS} and {MAX_TRACKED_PROOFS}"),
            )
        })?;
    Ok(DpopSettings {
        mode,
        max_age_seconds,
        algorithms,
        nonce: raw.nonce.unwrap_or(false),
        nonce_rotation_seconds,
        max_tracked_proofs,
    })
}

/// A route's `dpop` value: the mode that replaces its issuer's on this route.
pub fn route_mode(field: &str, value: &str) -> Result<Mode, ConfigError> {
    Mode::parse(field, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile_json(v: serde_json::Value) -> Result<DpopSettings, ConfigError> {
        compile(Some(RawDpop::from_json(v, "issuers[0].dpop").unwrap()), &|f| format!("issuers[0].{f}"))
    }

    #[test]
    fn defaults_and_the_documented_example() {
        assert_eq!(compile(None, &|f| f.to_owned()).unwrap(), DpopSettings::default());
        let s = compile_json(json!({"mode": "required", "max_age_seconds": 60,
            "algorithms": ["ES256", "EdDSA", "RS256", "PS256"], "nonce": false, "max_tracked_proofs": 100000}))
        .unwrap();
        assert_eq!(s.mode, Mode::Required);
        assert_eq!(s.algs(), "ES256 EdDSA RS256 PS256");
        assert_eq!(s.nonce_rotation_seconds, 60);
    }

    #[test]
    fn each_invalid_field_is_named() {
        for (v, field) in [
            (json!({"mode": "strict"}), "issuers[0].dpop.mode"),
            (json!({"max_age_seconds": 0}), "issuers[0].dpop.max_age_seconds"),
            (json!({"max_age_seconds": 3601}), "issuers[0].dpop.max_age_seconds"),
            (json!({"algorithms": []}), "issuers[0].dpop.algorithms"),
            (json!({"algorithms": ["ES256", "HS256"]}), "issuers[0].dpop.algorithms[1]"),
            (json!({"algorithms": ["none"]}), "issuers[0].dpop.algorithms[0]"),
            (json!({"nonce_rotation_seconds": 0}), "issuers[0].dpop.nonce_rotation_seconds"),
            (json!({"max_tracked_proofs": 10}), "issuers[0].dpop.max_tracked_proofs"),
            (json!({"max_tracked_proofs": 2_000_000}), "issuers[0].dpop.max_tracked_proofs"),
        ] {
            assert_eq!(compile_json(v.clone()).unwrap_err().field(), field, "{v}");
        }
        let err = RawDpop::from_json(json!({"mod": "required"}), "issuers[0].dpop").unwrap_err();
        assert_eq!(err.field(), "issuers[0].dpop.mod");
    }
}
