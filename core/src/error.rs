//! The one error a configuration is refused with, and the one rule for the header
//! names it may contain. Every part of the configuration (issuers, routes, quotas,
//! mTLS, metrics…) reports through [`ConfigError`], naming the field by its JSON path.

use std::fmt;

/// A configuration the filter refuses to run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Not JSON (serde_json's message gives the line and column).
    Syntax(String),
    /// The wrong shape (an unknown or missing member, a wrong type), or well-formed but
    /// meaningless or unsafe.
    Invalid { field: String, reason: String },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { field: field.into(), reason: reason.into() }
    }

    /// The JSON path of the field at fault (empty for a syntax error).
    pub fn field(&self) -> &str {
        match self {
            ConfigError::Syntax(_) => "",
            ConfigError::Invalid { field, .. } => field,
        }
    }

    /// Why the configuration is refused.
    pub fn reason(&self) -> &str {
        match self {
            ConfigError::Syntax(msg) => msg,
            ConfigError::Invalid { reason, .. } => reason,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Syntax(msg) => write!(f, "invalid plugin configuration: {msg}"),
            ConfigError::Invalid { field, reason } => {
                write!(f, "invalid plugin configuration: `{field}` {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where the filter writes its shadow-mode verdict (and strips client copies of it).
pub const SHADOW_DECISION_HEADER: &str = "x-nhi-shadow-decision";

/// Whether `name` is a lower-case RFC 7230 token: what a header (or a signed
/// field's) name may be.
pub fn is_lowercase_token(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_!#$%&'*+.^`|~".contains(c))
}

/// The rule for the names the configuration gives things that become metric labels
/// and log fields (issuers, routes, partners): 1-64 characters of a-z, 0-9, '-', '_'.
pub fn label_name(field: impl Into<String>, name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::invalid(field, "must be 1-64 characters of a-z, 0-9, '-' or '_'"))
    }
}

/// A request header name the filter may read or write: lower-case RFC 7230 token,
/// not a pseudo-header, not a hop-by-hop or framing header. (Where a name must
/// also differ from the filter's own headers, the caller says which.)
pub fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    const RESERVED: [&str; 6] =
        ["host", "connection", "content-length", "transfer-encoding", "te", "upgrade"];
    if !is_lowercase_token(name) {
        return Err(ConfigError::invalid(field, format!("{name:?} is not a lower-case header name")));
    }
    if RESERVED.contains(&name) {
        return Err(ConfigError::invalid(field, format!("{name:?} is reserved")));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_lower_case_tokens_and_not_reserved() {
        assert_eq!(header_name("f", "x-nhi-identity").unwrap(), "x-nhi-identity");
        assert_eq!(header_name("f", "x_legacy").unwrap(), "x_legacy");
        for bad in ["", "X-Upper", "a b", ":path", "x\u{e9}"] {
            assert_eq!(header_name("f", bad).unwrap_err().field(), "f", "{bad:?}");
        }
        for reserved in ["host", "te"] {
            assert!(header_name("f", reserved).unwrap_err().reason().contains("reserved"), "{reserved}");
        }
    }
}
