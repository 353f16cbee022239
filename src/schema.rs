//! The `spec.bootVolume` OpenAPI v3 schema: one file, shipped in the CRD patch and embedded here.
//!
//! The API server enforces this schema on CRD-backed objects, but `check` runs without one
//! and a webhook must not assume the CRD was patched, so the binary validates against the
//! very same document. Two strictness additions happen only in the binary: unknown fields
//! are reported (`additionalProperties: false`; a CRD would silently prune them) and the
//! validator runs on the raw block before the semantic rules.

use crate::rules::field::{ErrorKind, FieldError, Shown};
use serde_json::Value;
use std::sync::LazyLock;

/// The kustomize JSON6902 patch that adds `bootVolume` to the BareMetalHost CRD.
pub const BOOT_VOLUME_SCHEMA_PATCH: &str = include_str!("../manifests/crd/bootvolume-schema-patch.json");

/// Rule id for every schema violation.
pub const RULE: &str = "schema";

/// The `bootVolume` schema as the CRD ships it (the patch's `value`).
pub fn boot_volume_schema() -> Value {
    let patch: Value = serde_json::from_str(BOOT_VOLUME_SCHEMA_PATCH).expect("embedded schema patch is JSON");
    patch[0]["value"].clone()
}

/// Adds `additionalProperties: false` to every object schema with `properties`.
fn strict(schema: &mut Value) {
    if let Some(obj) = schema.as_object_mut() {
        if obj.contains_key("properties") && !obj.contains_key("additionalProperties") {
            obj.insert("additionalProperties".into(), Value::Bool(false));
        }
        if let Some(Value::Object(props)) = obj.get_mut("properties") {
            props.values_mut().for_each(strict);
        }
    }
}

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let mut schema = boot_volume_schema();
    strict(&mut schema);
    jsonschema::validator_for(&schema).expect("embedded bootVolume schema compiles")
});

/// Compiles the validator now rather than on the first request (readiness should mean
/// the first request is as fast as the rest).
pub fn warm_up() {
    LazyLock::force(&VALIDATOR);
}

/// Whether a schema violation is about the JSON type (the semantic rules cannot read the
/// field then, so this error is the one to report at that path).
pub fn is_type_error(e: &FieldError) -> bool {
    e.rule == RULE && e.kind == ErrorKind::Invalid && e.detail.starts_with("must be of type")
}

/// Validates a raw `spec.bootVolume` block; `base` is its field path (`spec.bootVolume`).
pub fn validate(block: &Value, base: &str) -> Vec<FieldError> {
    VALIDATOR
        .iter_errors(block)
        .map(|e| to_field_error(&e, base))
        .collect()
}

fn field_path(base: &str, pointer: &str) -> String {
    let mut path = String::from(base);
    for token in pointer.split('/').skip(1) {
        path.push('.');
        path.push_str(&token.replace("~1", "/").replace("~0", "~"));
    }
    path
}

/// Shows a value unless it sits under a credential field.
fn shown(field: &str, v: &Value) -> Shown {
    match v {
        _ if field.contains("authPasswd") => Shown::Redacted,
        Value::String(s) => Shown::Str(s.clone()),
        Value::Number(n) if n.is_i64() => Shown::Int(n.as_i64().unwrap_or_default()),
        other => Shown::Json(other.to_string()),
    }
}

fn to_field_error(e: &jsonschema::ValidationError<'_>, base: &str) -> FieldError {
    use jsonschema::error::ValidationErrorKind as K;
    let field = field_path(base, e.instance_path().as_str());
    let value = shown(&field, e.instance());
    match e.kind() {
        K::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            FieldError::required(RULE, format!("{field}.{name}"), "")
        }
        K::AdditionalProperties { unexpected } => FieldError::forbidden(
            RULE,
            format!(
                "{field}.{}",
                unexpected.first().map(String::as_str).unwrap_or_default()
            ),
            "unknown field",
        ),
        K::Enum { options } => {
            let supported: Vec<&str> = options
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            FieldError::not_supported(RULE, field, value, &supported)
        }
        K::MaxLength { limit } => FieldError::too_long(RULE, field, *limit as usize),
        K::MinLength { .. } => FieldError::required(RULE, field, ""),
        K::Type { kind } => {
            let want = match kind {
                jsonschema::error::TypeKind::Single(t) => t.to_string(),
                jsonschema::error::TypeKind::Multiple(_) => "the declared types".to_owned(),
            };
            FieldError::invalid(RULE, field, value, format!("must be of type {want}"))
        }
        K::Minimum { limit } => FieldError::invalid(RULE, field, value, format!("must be at least {limit}")),
        K::Maximum { limit } => FieldError::invalid(RULE, field, value, format!("must be at most {limit}")),
        K::Pattern { .. } => FieldError::invalid(RULE, field, value, "has an invalid format"),
        _ => FieldError::invalid(RULE, field, value, "does not match the bootVolume schema"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_compiles_and_accepts_a_typical_block() {
        let block = json!({
            "volumeId": "vol-1", "volumeDriver": "external", "connectorId": "iqn.2004-10.com.example:h0",
            "iscsiTarget": {"iqn": "iqn.2004-10.com.example:t", "portal": "192.0.2.1", "lun": 0}
        });
        assert_eq!(validate(&block, "spec.bootVolume"), vec![]);
    }

    #[test]
    fn maps_schema_errors_to_field_errors() {
        let block = json!({
            "volumeDriver": "noop", "connectorId": "iqn.2004-10.com.example:h0", "bogus": 1,
            "iscsiTarget": {"lun": "0", "authPasswd": 7}
        });
        let mut got: Vec<(String, ErrorKind)> = validate(&block, "spec.bootVolume")
            .into_iter()
            .map(|e| (e.field, e.kind))
            .collect();
        got.sort();
        let mut want = vec![
            ("spec.bootVolume.volumeId".to_owned(), ErrorKind::Required),
            ("spec.bootVolume.volumeDriver".to_owned(), ErrorKind::NotSupported),
            ("spec.bootVolume.bogus".to_owned(), ErrorKind::Forbidden),
            ("spec.bootVolume.iscsiTarget.lun".to_owned(), ErrorKind::Invalid),
            (
                "spec.bootVolume.iscsiTarget.authPasswd".to_owned(),
                ErrorKind::Invalid,
            ),
        ];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn never_shows_a_password() {
        let block = json!({"iscsiTarget": {"authPasswd": ["s3cr3t-value"]}});
        for e in validate(&block, "spec.bootVolume") {
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }
}
