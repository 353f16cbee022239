//! `check FILE...`: the webhook's rules on manifests, offline (CI, laptops).
//!
//! Same rules, same mutation as `serve`; each BareMetalHost is checked as a CREATE.
//! Output contract (docs/api.md, `check`): one line per error on stdout, exit 0 when every
//! host passes, 1 when any is denied, 2 on unreadable input. Secrets are never printed:
//! Secret documents are skipped and inline CHAP passwords are redacted in `--mutate`
//! output.

use crate::{
    admission::StatusCause,
    api::{self, HostView},
    cli::{CheckArgs, CheckOutput},
    mutate,
    rules::{self, Policy},
};
use serde::Serialize;
use serde_json::Value;
use std::{
    io::{Read, Write},
    path::Path,
};

/// Exit code: every BareMetalHost passes.
pub const EXIT_OK: i32 = 0;
/// Exit code: at least one BareMetalHost is denied.
pub const EXIT_DENIED: i32 = 1;
/// Exit code: some input could not be read or parsed.
pub const EXIT_UNREADABLE: i32 = 2;

/// The namespace shown (and assumed) for documents without one, like kubectl.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The verdict on one host (`--output json` prints one per line).
#[derive(Debug, Serialize)]
pub struct HostReport {
    /// The file (`-` for stdin).
    pub file: String,
    /// Namespace (`default` when absent).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Whether the webhook would admit it.
    pub allowed: bool,
    /// Field errors.
    pub errors: Vec<StatusCause>,
    /// Warnings.
    pub warnings: Vec<String>,
}

/// Why a file could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not YAML/JSON.
    #[error("{file}: not valid YAML or JSON: {message}")]
    Parse {
        /// The file.
        file: String,
        /// Parser message (location included).
        message: String,
    },
}

fn is_bare_metal_host(doc: &Value) -> bool {
    doc.get("kind").and_then(Value::as_str) == Some(api::KIND)
        && doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| v.starts_with("metal3.io/"))
}

/// Every document in a YAML/JSON stream, with `kind: List` items flattened.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Value>, InputError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| InputError::Parse {
        file: file.to_owned(),
        // Only the first line (message and location): the parser appends a snippet of the
        // input, which may hold an inline CHAP password or a Secret's data.
        message: e.to_string().lines().next().unwrap_or_default().to_owned(),
    })?;
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        match doc {
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                out.extend(
                    m.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            Value::Null => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Checks one BareMetalHost document; with `mutate`, the document is patched in place first.
pub fn check_host(policy: &Policy, file: &str, doc: &mut Value, mutate: bool) -> HostReport {
    if mutate && let Ok(mut view) = HostView::new(doc) {
        view.namespace = view.namespace_or(DEFAULT_NAMESPACE);
        let ops = mutate::patch(policy, "", None, &view);
        // Our patch was computed from this very document, so it applies.
        let _ = json_patch::patch(doc, &ops);
    }
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_owned();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let verdict = match HostView::new(doc) {
        Ok(mut view) => {
            view.namespace = &namespace;
            rules::validate(policy, None, &view)
        }
        Err(e) => crate::admission::unreadable("object", &e.to_string()),
    };
    HostReport {
        file: file.to_owned(),
        allowed: verdict.allowed(),
        errors: verdict.errors.iter().map(StatusCause::from).collect(),
        warnings: verdict.warnings,
        namespace,
        name,
    }
}

/// Replaces inline CHAP passwords before a document is printed.
fn redact(doc: &mut Value) -> bool {
    match doc.pointer_mut("/spec/bootVolume/iscsiTarget/authPasswd") {
        Some(v) => {
            *v = Value::String("<redacted>".into());
            true
        }
        None => false,
    }
}

fn read_input(path: &Path) -> Result<(String, String), InputError> {
    let file = path.display().to_string();
    let mut text = String::new();
    let result = if file == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    result
        .map(|()| (file.clone(), text))
        .map_err(|source| InputError::Read { file, source })
}

/// Runs `check` and returns the exit code. Output goes to the given writers.
pub fn run(args: &CheckArgs, out: &mut impl Write, err: &mut impl Write) -> std::io::Result<i32> {
    let policy = args.policy.policy();
    let mut code = EXIT_OK;
    for path in &args.files {
        let (file, docs) = match read_input(path)
            .and_then(|(file, text)| Ok((file.clone(), parse_documents(&file, &text)?)))
        {
            Ok(ok) => ok,
            Err(e) => {
                writeln!(err, "{e}")?;
                code = EXIT_UNREADABLE;
                continue;
            }
        };
        for mut doc in docs.into_iter().filter(is_bare_metal_host) {
            let report = check_host(&policy, &file, &mut doc, args.mutate);
            if !report.allowed && code == EXIT_OK {
                code = EXIT_DENIED;
            }
            let prefix = format!(
                "{}: BareMetalHost {}/{}",
                report.file, report.namespace, report.name
            );
            match args.output {
                CheckOutput::Json => writeln!(out, "{}", serde_json::to_string(&report).unwrap_or_default())?,
                CheckOutput::Text => {
                    // With --mutate, stdout carries YAML: errors move to stderr.
                    let sink: &mut dyn Write = if args.mutate { err } else { out };
                    for e in &report.errors {
                        writeln!(sink, "{prefix}: {}: {}", e.field, e.message)?;
                    }
                    for w in &report.warnings {
                        writeln!(err, "{prefix}: warning: {w}")?;
                    }
                }
            }
            if args.mutate {
                if redact(&mut doc) {
                    writeln!(err, "{prefix}: warning: inline authPasswd redacted in the output")?;
                }
                let yaml = serde_saphyr::to_string(&doc).unwrap_or_default();
                write!(out, "---\n{yaml}")?;
                if !yaml.ends_with('\n') {
                    writeln!(out)?;
                }
            }
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_json_and_lists() {
        let yaml = "apiVersion: v1\nkind: Secret\n---\napiVersion: v1\nkind: List\nitems:\n- kind: A\n- kind: B\n---\n";
        let docs = parse_documents("f", yaml).expect("parse");
        assert_eq!(docs.len(), 3);
        let json = r#"{"apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost", "spec": {"x": [1, 2]}}"#;
        let docs = parse_documents("f", json).expect("parse");
        assert!(is_bare_metal_host(&docs[0]));
        assert!(matches!(
            parse_documents("f", "a: [unclosed"),
            Err(InputError::Parse { .. })
        ));
    }
}
