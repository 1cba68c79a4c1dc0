//! Reading the plugin configuration's JSON into its `Raw*` types, naming the JSON path
//! of whatever is wrong.
//!
//! serde's derived readers cost the filter's `.wasm` about 200 KB — one monomorphised
//! visitor per type, per field type and per deserializer — for code that runs once per
//! VM (the release `.wasm` went from 1,392,256 to 1,196,804 bytes without them). This is
//! the reader the configuration uses instead (and a JWK's members, `keys::jwks`): the
//! bytes are parsed once into
//! a [`serde_json::Value`] (which the token path links anyway), and each `Raw*` type
//! takes its members by name from an [`Object`], through one small generic function per
//! member type. A wrong shape is refused with the member's path
//! (`issuers[0].jwks.refresh_secs` is not a known field), where serde gave a line and
//! column.
//!
//! The `Raw*` types still derive `serde::Deserialize`, for two readers that are not the
//! filter: `make schema` publishes the JSON Schema from those attributes (`default`,
//! `rename`, `tag`), and the tests hold this reader to serde's on the same documents
//! (`config::tests`), so the schema users validate against and what the filter accepts
//! cannot drift apart. Outside tests nothing calls a configuration type's derived reader,
//! so none of it reaches the `.wasm`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::ConfigError;

/// A value the configuration reads from JSON; `at` is its JSON path, for errors.
pub trait FromJson: Sized {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError>;
}

/// Parses configuration bytes into a value: a syntax error is the only error without a
/// path (serde's message gives the line and column).
pub fn parse(bytes: &[u8]) -> Result<Value, ConfigError> {
    serde_json::from_slice(bytes).map_err(|e| ConfigError::Syntax(e.to_string()))
}

/// Reads `value` as the object a `Raw*` type is made from: `build` takes the members it
/// knows, and any member left over is refused as unknown (a typo must not silently
/// leave a check unconfigured).
pub fn object<T>(value: Value, at: &str, build: impl FnOnce(&mut Object) -> T) -> Result<T, ConfigError> {
    let mut object = Object::new(value, at)?;
    let built = build(&mut object);
    object.finish()?;
    Ok(built)
}

/// A JSON object being read: members are taken out by name.
///
/// A member that cannot be read reads as its type's default and the first such error is
/// kept; [`Object::finish`] returns it. So a `Raw*` type is built as one struct literal
/// without a `?` per member, each of which would make the compiler write out the drops
/// of every member read before it (27 KB of `.wasm` when measured); the configuration is
/// still refused with the first error.
pub struct Object {
    members: Map<String, Value>,
    at: String,
    /// The names asked for, to list in an unknown member's error.
    known: Vec<&'static str>,
    error: Option<ConfigError>,
}

impl Object {
    pub fn new(value: Value, at: &str) -> Result<Object, ConfigError> {
        match value {
            Value::Object(members) => {
                Ok(Object { members, at: at.to_owned(), known: Vec::new(), error: None })
            }
            other => Err(wrong_type(at, "an object", &other)),
        }
    }

    /// The JSON path of member `name`.
    pub fn path(&self, name: &str) -> String {
        if self.at.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.at)
        }
    }

    /// Takes member `name` out, with its path. Not generic, and kept out of line: the
    /// per-type readers below are then a call and a match each.
    #[inline(never)]
    fn take(&mut self, name: &'static str) -> Option<(Value, String)> {
        self.known.push(name);
        let value = self.members.remove(name)?;
        Some((value, self.path(name)))
    }

    /// Keeps the first error.
    #[inline(never)]
    fn fail(&mut self, error: ConfigError) {
        self.error.get_or_insert(error);
    }

    fn keep<T: Default>(&mut self, read: Result<T, ConfigError>) -> T {
        read.unwrap_or_else(|error| {
            self.fail(error);
            T::default()
        })
    }

    /// A member that must be present (`null` is present: it is read as a `T`).
    pub fn required<T: FromJson + Default>(&mut self, name: &'static str) -> T {
        match self.take(name) {
            Some((value, at)) => {
                let read = T::from_json(value, &at);
                self.keep(read)
            }
            None => {
                self.fail(ConfigError::invalid(self.path(name), "is required"));
                T::default()
            }
        }
    }

    /// A member that may be absent or `null`.
    pub fn optional<T: FromJson>(&mut self, name: &'static str) -> Option<T> {
        match self.take(name) {
            None | Some((Value::Null, _)) => None,
            Some((value, at)) => {
                let read = T::from_json(value, &at).map(Some);
                self.keep(read)
            }
        }
    }

    /// A member that takes `T`'s default when absent (`null` is read as a `T`, as
    /// serde's `default` does: `"forward": null` is not `false`).
    pub fn or_default<T: FromJson + Default>(&mut self, name: &'static str) -> T {
        self.or_else(name, T::default)
    }

    /// A member that takes `default()` when absent.
    pub fn or_else<T: FromJson + Default>(&mut self, name: &'static str, default: impl FnOnce() -> T) -> T {
        match self.take(name) {
            Some((value, at)) => {
                let read = T::from_json(value, &at);
                self.keep(read)
            }
            None => default(),
        }
    }

    /// The members not taken yet (an internally tagged enum hands them to its variant).
    pub fn into_rest(self) -> Result<Map<String, Value>, ConfigError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.members),
        }
    }

    /// The first member that could not be read, or else a member nobody asked for,
    /// naming the ones that exist.
    pub fn finish(self) -> Result<(), ConfigError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        match self.members.keys().next() {
            None => Ok(()),
            Some(name) => Err(ConfigError::invalid(
                self.path(name),
                format!("is not a known field (known: {})", self.known.join(", ")),
            )),
        }
    }
}

/// Reads a string that must be one of `choices` (a unit enum's snake_case names).
pub fn one_of<T: Copy>(value: Value, at: &str, choices: &[(&str, T)]) -> Result<T, ConfigError> {
    let found = match &value {
        Value::String(s) => choices.iter().find(|(name, _)| name == s).map(|&(_, v)| v),
        _ => None,
    };
    found.ok_or_else(|| {
        let names: Vec<String> = choices.iter().map(|(name, _)| format!("{name:?}")).collect();
        ConfigError::invalid(at, format!("must be one of {}, not {}", names.join(", "), shown(&value)))
    })
}

/// Refuses `found` where `expected` was wanted.
pub fn wrong_type(at: &str, expected: &str, found: &Value) -> ConfigError {
    ConfigError::invalid(at, format!("must be {expected}, not {}", shown(found)))
}

/// A value as an error shows it: scalars as written, containers by kind.
fn shown(value: &Value) -> String {
    match value {
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
        Value::String(s) if s.len() > 64 => "a long string".to_owned(),
        other => other.to_string(),
    }
}

impl FromJson for Value {
    fn from_json(value: Value, _at: &str) -> Result<Self, ConfigError> {
        Ok(value)
    }
}

impl FromJson for String {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        match value {
            Value::String(s) => Ok(s),
            other => Err(wrong_type(at, "a string", &other)),
        }
    }
}

impl FromJson for bool {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        match value {
            Value::Bool(b) => Ok(b),
            other => Err(wrong_type(at, "true or false", &other)),
        }
    }
}

impl FromJson for u64 {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        value.as_u64().ok_or_else(|| wrong_type(at, "a whole number, 0 or more", &value))
    }
}

/// The narrower unsigned integers: a whole number in their range.
macro_rules! narrow_unsigned {
    ($($t:ty),*) => {$(
        impl FromJson for $t {
            fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
                value.as_u64().and_then(|wide| <$t>::try_from(wide).ok()).ok_or_else(|| {
                    wrong_type(at, &format!("a whole number from 0 to {}", <$t>::MAX), &value)
                })
            }
        }
    )*};
}
narrow_unsigned!(usize, u32, u16, u8);

impl FromJson for i64 {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        value.as_i64().ok_or_else(|| wrong_type(at, "a whole number", &value))
    }
}

impl FromJson for f64 {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        value.as_f64().ok_or_else(|| wrong_type(at, "a number", &value))
    }
}

impl<T: FromJson> FromJson for Option<T> {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        match value {
            Value::Null => Ok(None),
            other => T::from_json(other, at).map(Some),
        }
    }
}

impl<T: FromJson> FromJson for Vec<T> {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        match value {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    out.push(T::from_json(item, &format!("{at}[{i}]"))?);
                }
                Ok(out)
            }
            other => Err(wrong_type(at, "an array", &other)),
        }
    }
}

impl<T: FromJson> FromJson for BTreeMap<String, T> {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        let object = Object::new(value, at)?;
        let mut out = BTreeMap::new();
        for (key, item) in object.members {
            let item = T::from_json(item, &format!("{at}[{}]", Value::String(key.clone())))?;
            out.insert(key, item);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, PartialEq)]
    struct Raw {
        name: String,
        port: Option<u64>,
        tags: Vec<String>,
        on: bool,
    }

    impl FromJson for Raw {
        fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
            object(value, at, |o| Raw {
                name: o.required("name"),
                port: o.optional("port"),
                tags: o.or_default("tags"),
                on: o.or_else("on", || true),
            })
        }
    }

    fn read(v: Value) -> Result<Vec<Raw>, ConfigError> {
        Vec::from_json(v, "items")
    }

    #[test]
    fn members_are_taken_by_name_with_their_defaults() {
        let raw = read(json!([{"name": "a"}, {"name": "b", "port": 8, "tags": ["x"], "on": false}])).unwrap();
        assert_eq!(raw[0], Raw { name: "a".into(), port: None, tags: vec![], on: true });
        assert_eq!(raw[1], Raw { name: "b".into(), port: Some(8), tags: vec!["x".into()], on: false });
        assert_eq!(read(json!([{"name": "a", "port": null}])).unwrap()[0].port, None);
    }

    #[test]
    fn every_wrong_shape_names_its_path() {
        let cases = [
            (json!({"name": "a"}), "items", "must be an array, not an object"),
            (json!([7]), "items[0]", "must be an object, not 7"),
            (json!([{}]), "items[0].name", "is required"),
            (json!([{"name": 1}]), "items[0].name", "must be a string, not 1"),
            (
                json!([{"name": "a", "port": -1}]),
                "items[0].port",
                "must be a whole number, 0 or more, not -1",
            ),
            (
                json!([{"name": "a", "port": 1.5}]),
                "items[0].port",
                "must be a whole number, 0 or more, not 1.5",
            ),
            (json!([{"name": "a", "tags": ["x", 2]}]), "items[0].tags[1]", "must be a string, not 2"),
            (json!([{"name": "a", "on": null}]), "items[0].on", "must be true or false, not null"),
            (json!([{"name": "a", "on": "yes"}]), "items[0].on", "must be true or false, not \"yes\""),
            (
                json!([{"name": "a", "prot": 8}]),
                "items[0].prot",
                "is not a known field (known: name, port, tags, on)",
            ),
        ];
        for (v, field, reason) in cases {
            let err = read(v.clone()).unwrap_err();
            assert_eq!((err.field(), err.reason()), (field, reason), "{v}");
        }
    }

    #[test]
    fn choices_and_numbers() {
        let choices = [("deny", 1), ("allow", 2)];
        assert_eq!(one_of(json!("allow"), "m", &choices).unwrap(), 2);
        let err = one_of(json!("Allow"), "m", &choices).unwrap_err();
        assert_eq!(err.reason(), r#"must be one of "deny", "allow", not "Allow""#);
        assert_eq!(
            one_of(json!(["deny"]), "m", &choices).unwrap_err().reason(),
            r#"must be one of "deny", "allow", not an array"#
        );
        assert_eq!(usize::from_json(json!(5), "n").unwrap(), 5);
        assert_eq!(i64::from_json(json!(-5), "n").unwrap(), -5);
        assert_eq!(f64::from_json(json!(2), "n").unwrap(), 2.0);
        assert!(f64::from_json(json!("2"), "n").is_err());
        assert_eq!(Value::from_json(json!({"a": [1]}), "v").unwrap(), json!({"a": [1]}));
        assert_eq!(Object::new(json!({}), "").unwrap().path("issuers"), "issuers");
        assert!(matches!(parse(b"{").unwrap_err(), ConfigError::Syntax(_)));
    }
}
