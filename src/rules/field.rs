//! Kubernetes-shaped field errors (apimachinery `field.Error`) and the rule verdict.
//!
//! Tests assert on `(field, kind)` and the stable `rule` id, never on wording; the wording
//! follows apimachinery so `kubectl apply` output reads like any other validation error.

use std::fmt::{self, Write as _};

/// apimachinery's `field.ErrorType`, as far as our rules use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// `FieldValueRequired`: a required field is missing or empty.
    Required,
    /// `FieldValueInvalid`: a malformed value.
    Invalid,
    /// `FieldValueNotSupported`: a value outside a closed set.
    NotSupported,
    /// `FieldValueForbidden`: the field may not be set (here, or now).
    Forbidden,
    /// `FieldValueTooLong`: a value over its length limit (value omitted).
    TooLong,
    /// `FieldValueDuplicate`: a value given twice.
    Duplicate,
}

impl ErrorKind {
    /// The `StatusCause.reason` string the API server and kubectl understand.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::Duplicate => "FieldValueDuplicate",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Invalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::Duplicate => "Duplicate value",
        }
    }
}

/// The offending value as it may be shown to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shown {
    /// A string, printed Go-`%q` style.
    Str(String),
    /// An integer, printed bare.
    Int(i64),
    /// Anything else, printed as compact JSON.
    Json(String),
    /// A secret: printed as `<redacted>`.
    Redacted,
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Json(j) => f.write_str(j),
            Self::Redacted => f.write_str("\"<redacted>\""),
        }
    }
}

/// One violated rule at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Full path, e.g. `spec.bootVolume.iscsiTarget.portal`.
    pub field: String,
    /// The error type.
    pub kind: ErrorKind,
    /// The value, for kinds that show one.
    pub value: Option<Shown>,
    /// Why, in a few words (may be empty).
    pub detail: String,
    /// Stable rule id (tests and metrics key on it).
    pub rule: &'static str,
}

impl FieldError {
    fn new(rule: &'static str, field: impl Into<String>, kind: ErrorKind) -> Self {
        Self {
            field: field.into(),
            kind,
            value: None,
            detail: String::new(),
            rule,
        }
    }

    /// A required field is missing.
    pub fn required(rule: &'static str, field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            ..Self::new(rule, field, ErrorKind::Required)
        }
    }

    /// A malformed value.
    pub fn invalid(
        rule: &'static str,
        field: impl Into<String>,
        value: Shown,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            value: Some(value),
            detail: detail.into(),
            ..Self::new(rule, field, ErrorKind::Invalid)
        }
    }

    /// A value outside a closed set; the detail lists the supported values.
    pub fn not_supported(
        rule: &'static str,
        field: impl Into<String>,
        value: Shown,
        supported: &[&str],
    ) -> Self {
        let mut detail = String::from("supported values: ");
        for (i, s) in supported.iter().enumerate() {
            if i > 0 {
                detail.push_str(", ");
            }
            let _ = write!(detail, "{s:?}");
        }
        Self {
            value: Some(value),
            detail,
            ..Self::new(rule, field, ErrorKind::NotSupported)
        }
    }

    /// A field that may not be set (here, or now).
    pub fn forbidden(rule: &'static str, field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            ..Self::new(rule, field, ErrorKind::Forbidden)
        }
    }

    /// A value over its length limit; the value itself is never shown.
    pub fn too_long(rule: &'static str, field: impl Into<String>, max: usize) -> Self {
        Self {
            detail: format!("may not be more than {max} bytes"),
            ..Self::new(rule, field, ErrorKind::TooLong)
        }
    }

    /// A value given twice.
    pub fn duplicate(rule: &'static str, field: impl Into<String>, value: Shown) -> Self {
        Self {
            value: Some(value),
            ..Self::new(rule, field, ErrorKind::Duplicate)
        }
    }

    /// The message without the field path (the `StatusCause.message`).
    pub fn message(&self) -> String {
        let mut m = String::from(self.kind.body());
        if let Some(v) = &self.value {
            let _ = write!(m, ": {v}");
        }
        if !self.detail.is_empty() {
            let _ = write!(m, ": {}", self.detail);
        }
        m
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

/// The outcome of the rules: every violation and every warning, never just the first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Violations; empty means allowed.
    pub errors: Vec<FieldError>,
    /// Warnings for the user (plain text, no newlines, under 120 characters).
    pub warnings: Vec<String>,
}

impl Verdict {
    /// Whether the object is admitted.
    pub fn allowed(&self) -> bool {
        self.errors.is_empty()
    }

    /// The errors in apimachinery's aggregate form: one bare, several as `[e1, e2]`.
    pub fn message(&self) -> String {
        match self.errors.as_slice() {
            [] => String::new(),
            [one] => one.to_string(),
            many => {
                let joined: Vec<String> = many.iter().map(ToString::to_string).collect();
                format!("[{}]", joined.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_apimachinery() {
        let cases = [
            (FieldError::required("r", "spec.a", ""), "spec.a: Required value"),
            (
                FieldError::invalid("r", "spec.lun", Shown::Int(-1), "must be between 0 and 65535"),
                "spec.lun: Invalid value: -1: must be between 0 and 65535",
            ),
            (
                FieldError::not_supported("r", "spec.d", Shown::Str("noop".into()), &["cinder", "external"]),
                r#"spec.d: Unsupported value: "noop": supported values: "cinder", "external""#,
            ),
            (
                FieldError::forbidden("r", "spec.x", "not now"),
                "spec.x: Forbidden: not now",
            ),
            (
                FieldError::too_long("r", "spec.y", 36),
                "spec.y: Too long: may not be more than 36 bytes",
            ),
            (
                FieldError::invalid("r", "spec.p", Shown::Redacted, "bad"),
                r#"spec.p: Invalid value: "<redacted>": bad"#,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn aggregates_like_apimachinery() {
        let mut v = Verdict::default();
        assert!(v.allowed());
        v.errors.push(FieldError::required("r", "a", ""));
        assert_eq!(v.message(), "a: Required value");
        v.errors.push(FieldError::required("r", "b", ""));
        assert_eq!(v.message(), "[a: Required value, b: Required value]");
        assert!(!v.allowed());
    }
}
