//! The `spec.bootVolume` OpenAPI v3 schema, checked in code.
//!
//! The schema ships in the CRD patch (`manifests/crd/bootvolume-schema-patch.json`) and the
//! API server enforces it on CRD-backed objects, but `check` runs without an API server and
//! a webhook must not assume the CRD was patched, so the binary reports the same violations
//! itself, as the same field errors. It does so on the typed reading of the block rather
//! than with a JSON Schema validator on a `serde_json::Value`: type errors and unknown
//! fields are found while reading ([`crate::api::Shape`]), and [`check`] adds the value
//! constraints (`required`, `enum`, `minLength`/`maxLength`, `pattern`, `minimum`/`maximum`)
//! from the typed fields. Two strictness additions happen only here: unknown fields are
//! reported (a CRD would silently prune them) and the check runs before the semantic rules.
//!
//! The tests run a JSON Schema validator over the shipped file as the reference: any
//! input, the same errors, so the file and this code cannot drift apart.

use crate::{
    api::{BootVolume, Problem, Shape, field},
    rules::field::{ErrorKind, FieldError, Shown},
};
use serde_json::{Number, Value};

/// The kustomize JSON6902 patch that adds `bootVolume` to the BareMetalHost CRD.
pub const BOOT_VOLUME_SCHEMA_PATCH: &str = include_str!("../manifests/crd/bootvolume-schema-patch.json");

/// Rule id for every schema violation.
pub const RULE: &str = "schema";

const BV: &str = "spec.bootVolume";

/// Whether a schema violation is about the JSON type (the semantic rules cannot read the
/// field then, so this error is the one to report at that path).
pub fn is_type_error(e: &FieldError) -> bool {
    e.rule == RULE && e.kind == ErrorKind::Invalid && e.detail.starts_with("must be of type")
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

fn problem(p: &Problem) -> FieldError {
    match p {
        Problem::WrongType { field, want, value } => FieldError::invalid(
            RULE,
            field.as_str(),
            value.as_ref().map_or(Shown::Redacted, |v| shown(field, v)),
            format!("must be of type {want}"),
        ),
        Problem::Unknown { field } => FieldError::forbidden(RULE, field.as_str(), "unknown field"),
    }
}

/// A string constraint of the schema.
enum Rule {
    /// `minLength: 1` (reported as Required, like an absent field).
    NonEmpty,
    /// `maxLength`, in characters.
    MaxLen(usize),
    /// `enum`.
    OneOf(&'static [&'static str]),
    /// `pattern`, as a function with the regex's exact (ECMA-262) semantics.
    Pattern(fn(&str) -> bool),
}

fn string(field: &str, value: Option<&str>, rules: &[Rule], out: &mut Vec<FieldError>) {
    let Some(v) = value else { return };
    for rule in rules {
        match rule {
            Rule::NonEmpty if v.is_empty() => out.push(FieldError::required(RULE, field, "")),
            Rule::MaxLen(max) if v.chars().count() > *max => {
                out.push(FieldError::too_long(RULE, field, *max))
            }
            Rule::OneOf(options) if !options.contains(&v) => out.push(FieldError::not_supported(
                RULE,
                field,
                Shown::Str(v.to_owned()),
                options,
            )),
            Rule::Pattern(matches) if !matches(v) => out.push(FieldError::invalid(
                RULE,
                field,
                Shown::Str(v.to_owned()),
                "has an invalid format",
            )),
            _ => {}
        }
    }
}

/// ECMA-262 `.`: anything but a line terminator.
fn ecma_dot(c: char) -> bool {
    !matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}')
}

/// ECMA-262 `\s`.
fn ecma_space(c: char) -> bool {
    matches!(c, '\t'..='\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}' | '\u{feff}')
}

/// `^([iI][qQ][nN]|[eE][uU][iI]|[nN][aA][aA])\..+$`
fn iscsi_name_pattern(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 5
        && b[3] == b'.'
        && [b"iqn", b"eui", b"naa"]
            .iter()
            .any(|p| b[..3].eq_ignore_ascii_case(*p))
        && if s.is_ascii() {
            !b[4..].iter().any(|c| matches!(c, b'\n' | b'\r'))
        } else {
            s[4..].chars().all(ecma_dot)
        }
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
fn dns_pattern(s: &str) -> bool {
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.split('.').all(|label| {
        let b = label.as_bytes();
        b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter().all(|c| alnum(c) || *c == b'-')
    })
}

/// `^[^:\s\[\]]+(:[0-9]{1,5})?$`
fn portal_pattern(s: &str) -> bool {
    let (host, port) = match s.bytes().position(|c| c == b':') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let bad_host_char = |c: char| ecma_space(c) || c == '[' || c == ']';
    !host.is_empty()
        && if host.is_ascii() {
            !host.bytes().any(|b| bad_host_char(b.into()))
        } else {
            !host.chars().any(bad_host_char)
        }
        && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit()))
}

/// `minimum: 0`, `maximum: 65535` on an integer.
fn lun(n: &Number, out: &mut Vec<FieldError>) {
    const F: &str = "spec.bootVolume.iscsiTarget.lun";
    let (below, above) = match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => (i < 0, i > 65535),
        (None, Some(_), _) => (false, true),
        (None, None, Some(f)) => (f < 0.0, f > 65535.0),
        _ => (false, false),
    };
    // The shown value only when there is an error to show it in.
    let value = || shown(F, &Value::Number(n.clone()));
    if below {
        out.push(FieldError::invalid(RULE, F, value(), "must be at least 0"));
    }
    if above {
        out.push(FieldError::invalid(RULE, F, value(), "must be at most 65535"));
    }
}

/// Every violation of the `bootVolume` schema, as the schema's field errors: what reading
/// the block found (`shape`), and the value constraints on its typed fields.
pub fn check(bv: &BootVolume, shape: &Shape) -> Vec<FieldError> {
    use Rule::*;
    let mut out: Vec<FieldError> = shape.problems.iter().map(problem).collect();
    if !shape.object {
        return out;
    }
    for (bit, name) in [
        (field::VOLUME_ID, "volumeId"),
        (field::VOLUME_DRIVER, "volumeDriver"),
        (field::CONNECTOR_ID, "connectorId"),
    ] {
        if !shape.has(bit) {
            out.push(FieldError::required(RULE, format!("{BV}.{name}"), ""));
        }
    }
    const ISCSI_NAME: [Rule; 2] = [MaxLen(223), Pattern(iscsi_name_pattern)];
    let o = &mut out;
    string(
        "spec.bootVolume.volumeId",
        bv.volume_id.as_deref(),
        &[NonEmpty, MaxLen(36)],
        o,
    );
    string(
        "spec.bootVolume.volumeDriver",
        bv.volume_driver.as_deref(),
        &[OneOf(&["cinder", "external"])],
        o,
    );
    string(
        "spec.bootVolume.connectorId",
        bv.connector_id.as_deref(),
        &ISCSI_NAME,
        o,
    );
    string(
        "spec.bootVolume.targetType",
        bv.target_type.as_deref(),
        &[OneOf(&["iscsi"])],
        o,
    );
    string(
        "spec.bootVolume.iscsiCredentialsName",
        bv.iscsi_credentials_name.as_deref(),
        &[MaxLen(253), Pattern(dns_pattern)],
        o,
    );
    if let Some(t) = &bv.iscsi_target {
        string(
            "spec.bootVolume.iscsiTarget.iqn",
            t.iqn.as_deref(),
            &ISCSI_NAME,
            o,
        );
        string(
            "spec.bootVolume.iscsiTarget.portal",
            t.portal.as_deref(),
            &[MaxLen(259), Pattern(portal_pattern)],
            o,
        );
        if let Some(n) = &shape.lun {
            lun(n, o);
        }
        string(
            "spec.bootVolume.iscsiTarget.authMethod",
            t.auth_method.as_deref(),
            &[OneOf(&["CHAP", "None"])],
            o,
        );
        string(
            "spec.bootVolume.iscsiTarget.iType",
            t.i_type.as_deref(),
            &[OneOf(&["iqn"])],
            o,
        );
        if let Some(r) = &t.auth_secret_ref {
            if !shape.has(field::REF_NAME) {
                o.push(FieldError::required(
                    RULE,
                    "spec.bootVolume.iscsiTarget.authSecretRef.name",
                    "",
                ));
            }
            string(
                "spec.bootVolume.iscsiTarget.authSecretRef.name",
                r.name.as_deref(),
                &[MaxLen(253)],
                o,
            );
            string(
                "spec.bootVolume.iscsiTarget.authSecretRef.namespace",
                r.namespace.as_deref(),
                &[MaxLen(63)],
                o,
            );
        }
    }
    out
}

/// The schema violations of a parsed `spec.bootVolume` block (`check`, tests).
pub fn validate(block: &Value) -> Vec<FieldError> {
    let (bv, shape) = crate::api::read_boot_volume(crate::api::Json::Tree(block));
    check(&bv, &shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Json, read_boot_volume};
    use proptest::prelude::*;
    use serde_json::json;

    fn errors(block: &Value) -> Vec<FieldError> {
        validate(block)
    }

    /// Every constraint of the shipped schema, flattened: a change to the file fails here
    /// until the checks above (and this table) follow it.
    #[test]
    fn the_checks_cover_every_constraint_of_the_schema() {
        fn walk(schema: &Value, path: &str, out: &mut Vec<String>) {
            let Some(obj) = schema.as_object() else { return };
            for (k, v) in obj {
                match k.as_str() {
                    "description" | "x-kubernetes-validations" => {}
                    "properties" => {
                        for (name, sub) in v.as_object().into_iter().flatten() {
                            walk(sub, &format!("{path}.{name}"), out);
                        }
                    }
                    // Strings as written (a pattern's backslashes unescaped).
                    _ => out.push(match v.as_str() {
                        Some(text) => format!("{path} {k}=\"{text}\""),
                        None => format!("{path} {k}={v}"),
                    }),
                }
            }
        }
        let patch: Value = serde_json::from_str(BOOT_VOLUME_SCHEMA_PATCH).expect("JSON");
        let schema = patch
            .as_array()
            .and_then(|ops| {
                ops.iter()
                    .find(|op| op["path"].as_str().is_some_and(|p| p.ends_with("/bootVolume")))
            })
            .map(|op| op["value"].clone())
            .expect("the patch adds bootVolume");
        let mut got = Vec::new();
        walk(&schema, "bootVolume", &mut got);
        got.sort();
        let mut want: Vec<String> = [
            r#"bootVolume type="object""#,
            r#"bootVolume required=["volumeId","volumeDriver","connectorId"]"#,
            r#"bootVolume.volumeId type="string""#,
            "bootVolume.volumeId minLength=1",
            "bootVolume.volumeId maxLength=36",
            r#"bootVolume.volumeDriver type="string""#,
            r#"bootVolume.volumeDriver enum=["cinder","external"]"#,
            r#"bootVolume.connectorId type="string""#,
            "bootVolume.connectorId maxLength=223",
            r#"bootVolume.connectorId pattern="^([iI][qQ][nN]|[eE][uU][iI]|[nN][aA][aA])\..+$""#,
            r#"bootVolume.targetType type="string""#,
            r#"bootVolume.targetType enum=["iscsi"]"#,
            r#"bootVolume.iscsiCredentialsName type="string""#,
            "bootVolume.iscsiCredentialsName maxLength=253",
            r#"bootVolume.iscsiCredentialsName pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$""#,
            r#"bootVolume.iscsiTarget type="object""#,
            r#"bootVolume.iscsiTarget.iqn type="string""#,
            "bootVolume.iscsiTarget.iqn maxLength=223",
            r#"bootVolume.iscsiTarget.iqn pattern="^([iI][qQ][nN]|[eE][uU][iI]|[nN][aA][aA])\..+$""#,
            r#"bootVolume.iscsiTarget.portal type="string""#,
            r#"bootVolume.iscsiTarget.portal pattern="^[^:\s\[\]]+(:[0-9]{1,5})?$""#,
            "bootVolume.iscsiTarget.portal maxLength=259",
            r#"bootVolume.iscsiTarget.lun type="integer""#,
            "bootVolume.iscsiTarget.lun minimum=0",
            "bootVolume.iscsiTarget.lun maximum=65535",
            r#"bootVolume.iscsiTarget.authMethod type="string""#,
            r#"bootVolume.iscsiTarget.authMethod enum=["CHAP","None"]"#,
            r#"bootVolume.iscsiTarget.authUser type="string""#,
            r#"bootVolume.iscsiTarget.authPasswd type="string""#,
            r#"bootVolume.iscsiTarget.iType type="string""#,
            r#"bootVolume.iscsiTarget.iType enum=["iqn"]"#,
            r#"bootVolume.iscsiTarget.authSecretRef type="object""#,
            r#"bootVolume.iscsiTarget.authSecretRef required=["name"]"#,
            r#"bootVolume.iscsiTarget.authSecretRef.name type="string""#,
            "bootVolume.iscsiTarget.authSecretRef.name maxLength=253",
            r#"bootVolume.iscsiTarget.authSecretRef.namespace type="string""#,
            "bootVolume.iscsiTarget.authSecretRef.namespace maxLength=63",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        want.sort();
        assert_eq!(
            got, want,
            "the bootVolume schema changed: update `check` (and this table)"
        );
    }

    /// The reference: a JSON Schema validator over the shipped schema, made strict the way
    /// the binary is (`additionalProperties: false`), errors mapped to field errors the way
    /// the binary reports them (every unknown field, not only the first).
    mod reference {
        use super::*;
        use std::sync::LazyLock;

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
            let patch: Value = serde_json::from_str(BOOT_VOLUME_SCHEMA_PATCH).expect("schema patch is JSON");
            let op = patch
                .as_array()
                .and_then(|ops| {
                    ops.iter()
                        .find(|op| op["path"].as_str().is_some_and(|p| p.ends_with("/bootVolume")))
                })
                .expect("the patch adds bootVolume");
            let mut schema = op["value"].clone();
            strict(&mut schema);
            jsonschema::validator_for(&schema).expect("bootVolume schema compiles")
        });

        fn field_path(pointer: &str) -> String {
            let mut path = String::from(BV);
            for token in pointer.split('/').skip(1) {
                path.push('.');
                path.push_str(&token.replace("~1", "/").replace("~0", "~"));
            }
            path
        }

        pub fn errors(block: &Value) -> Vec<FieldError> {
            use jsonschema::error::ValidationErrorKind as K;
            let mut out = Vec::new();
            for e in VALIDATOR.iter_errors(block) {
                let field = field_path(e.instance_path().as_str());
                let value = shown(&field, e.instance());
                let error =
                    match e.kind() {
                        K::Required { property } => FieldError::required(
                            RULE,
                            format!("{field}.{}", property.as_str().unwrap_or_default()),
                            "",
                        ),
                        K::AdditionalProperties { unexpected } => {
                            out.extend(unexpected.iter().skip(1).map(|u| {
                                FieldError::forbidden(RULE, format!("{field}.{u}"), "unknown field")
                            }));
                            FieldError::forbidden(
                                RULE,
                                format!(
                                    "{field}.{}",
                                    unexpected.first().map(String::as_str).unwrap_or_default()
                                ),
                                "unknown field",
                            )
                        }
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
                        K::Minimum { limit } => {
                            FieldError::invalid(RULE, field, value, format!("must be at least {limit}"))
                        }
                        K::Maximum { limit } => {
                            FieldError::invalid(RULE, field, value, format!("must be at most {limit}"))
                        }
                        K::Pattern { .. } => FieldError::invalid(RULE, field, value, "has an invalid format"),
                        other => panic!("schema keyword without a typed check: {other:?}"),
                    };
                out.push(error);
            }
            out
        }
    }

    /// Compares as the rules use the errors: sorted, and without what a type error at the
    /// same field or above shadows anyway (`enum` also fails on a number, say).
    fn comparable(mut errors: Vec<FieldError>) -> Vec<String> {
        let types: Vec<String> = errors
            .iter()
            .filter(|e| is_type_error(e))
            .map(|e| e.field.clone())
            .collect();
        errors.retain(|e| {
            is_type_error(e)
                || !types.iter().any(|t| {
                    e.field == *t
                        || e.field
                            .strip_prefix(t.as_str())
                            .is_some_and(|r| r.starts_with('.'))
                })
        });
        let mut out: Vec<String> = errors.iter().map(|e| format!("{e} [{:?}]", e.kind)).collect();
        out.sort();
        out
    }

    fn assert_same(block: &Value) {
        assert_eq!(
            comparable(errors(block)),
            comparable(reference::errors(block)),
            "{block}"
        );
    }

    #[test]
    fn accepts_a_typical_block() {
        let block = json!({
            "volumeId": "vol-1", "volumeDriver": "external", "connectorId": "iqn.2004-10.com.example:h0",
            "iscsiTarget": {"iqn": "iqn.2004-10.com.example:t", "portal": "192.0.2.1", "lun": 0}
        });
        assert_eq!(errors(&block), vec![]);
        assert_same(&block);
    }

    #[test]
    fn maps_schema_errors_to_field_errors() {
        let block = json!({
            "volumeDriver": "noop", "connectorId": "iqn.2004-10.com.example:h0", "bogus": 1,
            "iscsiTarget": {"lun": "0", "authPasswd": 7}
        });
        let mut got: Vec<(String, ErrorKind)> =
            errors(&block).into_iter().map(|e| (e.field, e.kind)).collect();
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
        assert_same(&block);
    }

    #[test]
    fn never_shows_a_password() {
        let block = json!({"iscsiTarget": {"authPasswd": ["s3cr3t-value"]}});
        let (_, shape) = read_boot_volume(Json::Tree(&block));
        assert!(!format!("{shape:?}").contains("s3cr3t"), "{shape:?}");
        for e in errors(&block) {
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }

    /// Edge cases of every keyword, including the regexes' ECMA-262 semantics.
    #[test]
    fn agrees_with_the_schema_on_edge_cases() {
        let strings = [
            "",
            "a",
            "iqn.",
            "iqn.x",
            "IqN.x",
            "eui.0",
            "naa.x\n",
            "iqn.a\rb",
            "iqn.a\u{2028}",
            "iqn.\u{85}",
            "iqnx.a",
            "host-0-chap",
            "Host",
            "a..b",
            "-a",
            "a-",
            "a.b-c.d",
            "192.0.2.1",
            "192.0.2.1:3260",
            "h:123456",
            "h:",
            ":1",
            "h:1:2",
            "[fd00::1]:3260",
            "h\u{feff}",
            "h\u{85}",
            "h\u{a0}",
            "h\t",
            "ü",
            "cinder",
            "external",
            "iscsi",
            "iqn",
            "CHAP",
            "None",
        ];
        let long = |n: usize| "é".repeat(n);
        let mut values: Vec<Value> = strings.iter().map(|s| json!(s)).collect();
        values.extend([
            json!(long(36)),
            json!(long(37)),
            json!(format!("iqn.{}", long(219))),
            json!(format!("iqn.{}", long(220))),
            json!("a".repeat(253)),
            json!("a".repeat(254)),
            json!("a".repeat(63)),
            json!("a".repeat(64)),
            json!("a".repeat(259)),
            json!("a".repeat(260)),
            json!(format!("{}:3260", "a".repeat(254))),
            json!(null),
            json!(true),
            json!(0),
            json!(-1),
            json!(65535),
            json!(65536),
            json!(1.0),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(u64::MAX),
            json!(i64::MIN),
            json!([1, "a"]),
            json!({"a": 1}),
        ]);
        let fields = [
            "volumeId",
            "volumeDriver",
            "connectorId",
            "targetType",
            "iscsiCredentialsName",
            "iscsiTarget",
            "nope",
        ];
        let target_fields = [
            "iqn",
            "portal",
            "lun",
            "authMethod",
            "authUser",
            "authPasswd",
            "iType",
            "authSecretRef",
            "nope",
        ];
        for v in &values {
            assert_same(v);
            for f in fields {
                assert_same(&json!({ f: v }));
            }
            for f in target_fields {
                assert_same(&json!({"iscsiTarget": { f: v }}));
            }
            for f in ["name", "namespace", "nope"] {
                assert_same(&json!({"iscsiTarget": {"authSecretRef": { f: v }}}));
            }
        }
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "\\PC{0,8}".prop_map(Value::String),
            "[a-zA-Z0-9.:\\-\\[\\] \n]{0,12}".prop_map(Value::String),
            "(iqn|eui|naa|IQN)\\.[a-z0-9.:\\-\n\r]{0,10}".prop_map(Value::String),
            prop::sample::select(vec!["cinder", "external", "iscsi", "iqn", "CHAP", "None"])
                .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop::collection::vec(inner, 0..3).prop_map(Value::Array)
        })
    }

    fn block() -> impl Strategy<Value = Value> {
        let names = |names: &'static [&'static str]| {
            prop::collection::btree_map(
                prop::sample::select(names.to_vec()).prop_map(str::to_owned),
                any_json(),
                0..5,
            )
        };
        let reference =
            names(&["name", "namespace", "x"]).prop_map(|m| Value::Object(m.into_iter().collect()));
        let target = (
            names(&[
                "iqn",
                "portal",
                "lun",
                "authMethod",
                "authUser",
                "authPasswd",
                "iType",
                "y",
            ]),
            prop::option::of(prop_oneof![reference, any_json()]),
        )
            .prop_map(|(mut m, r)| {
                if let Some(r) = r {
                    m.insert("authSecretRef".into(), r);
                }
                Value::Object(m.into_iter().collect())
            });
        (
            names(&[
                "volumeId",
                "volumeDriver",
                "connectorId",
                "targetType",
                "iscsiCredentialsName",
                "z",
            ]),
            prop::option::of(prop_oneof![target, any_json()]),
        )
            .prop_map(|(mut m, t)| {
                if let Some(t) = t {
                    m.insert("iscsiTarget".into(), t);
                }
                Value::Object(m.into_iter().collect())
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn agrees_with_the_schema(block in prop_oneof![1 => any_json(), 6 => block()]) {
            prop_assert_eq!(comparable(errors(&block)), comparable(reference::errors(&block)), "{}", block);
            // The text reading (the webhook's) finds exactly what the tree reading finds.
            let text = serde_json::value::to_raw_value(&block).expect("raw");
            let (bv_text, shape_text) = read_boot_volume(Json::Text(&text));
            let (bv_tree, shape_tree) = read_boot_volume(Json::Tree(&block));
            prop_assert_eq!(bv_text, bv_tree);
            prop_assert_eq!(shape_text, shape_tree);
        }
    }
}
