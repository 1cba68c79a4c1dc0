//! The JSON Schema of the plugin configuration, generated from the raw serde types
//! the filter parses (`config::RawConfig` and the blocks it embeds), so it cannot
//! drift from them: unknown members are refused (`additionalProperties: false`), as
//! the filter refuses them.
//!
//! The schema checks shape only (members, types, required fields). Meaning — ranges,
//! references between fields, algorithm names — is checked by `nhi-guard check`, which
//! runs the filter's own validation. The shipped copy is
//! `envoy/schema/nhi-guard.schema.json`; `make schema` regenerates it, and a unit test
//! fails when it is stale.

use serde_json::{json, Value};

/// Where the shipped schema lives, relative to the repository root.
pub const SHIPPED_PATH: &str = "envoy/schema/nhi-guard.schema.json";

/// The JSON Schema (draft-07, which every editor and validator reads) of the plugin
/// configuration.
pub fn plugin_config_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<nhi_guard_core::config::RawConfig>();
    let mut value = schema.to_value();
    if let Some(object) = value.as_object_mut() {
        object.insert("title".into(), json!("nhi-guard plugin configuration"));
        object.insert(
            "description".into(),
            json!(
                "The JSON nhi-guard reads as Envoy's `configuration`, Istio's `pluginConfig`, \
                 Envoy Gateway's `config` or APISIX's `conf`. Generated from the filter's config \
                 types (`make schema`); shape only — `nhi-guard check` also validates meaning."
            ),
        );
    }
    value
}

/// The schema as shipped: pretty JSON with a final newline.
pub fn plugin_config_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&plugin_config_schema()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_schema_is_current() {
        let shipped = include_str!("../../envoy/schema/nhi-guard.schema.json");
        assert!(
            shipped == plugin_config_schema_text(),
            "{SHIPPED_PATH} is stale: run `make schema` and commit the result"
        );
    }

    #[test]
    fn the_schema_refuses_unknown_members_and_requires_issuers() {
        let schema = plugin_config_schema();
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(schema["required"], json!(["issuers"]));
        assert!(schema["properties"]["issuers"].is_object());
        assert_eq!(schema["$schema"], json!("http://json-schema.org/draft-07/schema#"));
    }
}
