//! The repository stands on its own: its documents name no file outside it, every rule id
//! and metric name the code defines is documented in `docs/api.md`, relative links resolve,
//! and the README stays a landing page.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Text files of the repository (what a clone holds), skipping build output and the fuzz
/// corpora.
fn repo_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !matches!(
                    name.as_str(),
                    ".git" | ".state" | "target" | "corpus" | "artifacts"
                ) {
                    walk(&p, out);
                }
            } else if name != ".git" && !name.ends_with(".lock") && std::fs::read_to_string(&p).is_ok() {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out.sort();
    out
}

fn relative(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).to_string_lossy().into_owned()
}

/// References that live in another repository's files. Written split so this file does not
/// match itself.
fn outside_references() -> Vec<String> {
    [
        ["../", "shared"].concat(),
        ["shared", "/"].concat(),
        ["design", ".md"].concat(),
        ["ironic-", "notes.md"].concat(),
        ["bmo-", "notes.md"].concat(),
        ["rust-", "notes.md"].concat(),
        ["style", ".md"].concat(),
        ["/work", "/"].concat(),
    ]
    .into()
}

/// Files another change owns that still carry a reference, with the reference: listed here
/// so this test stays green until that change lands, and failing once the entry is stale.
fn pending() -> Vec<(String, String)> {
    vec![(
        "tests/ironic_support/proxy.rs".to_owned(),
        ["ironic-", "notes.md"].concat(),
    )]
}

#[test]
fn nothing_refers_to_a_path_outside_the_repository() {
    let patterns = outside_references();
    let pending = pending();
    let mut found = Vec::new();
    let mut pending_seen = BTreeSet::new();
    for file in repo_files() {
        let rel = relative(&file);
        for (n, line) in read(&file).lines().enumerate() {
            for p in &patterns {
                if line.contains(p.as_str()) {
                    if pending.iter().any(|(f, pat)| *f == rel && pat == p) {
                        pending_seen.insert((rel.clone(), p.clone()));
                    } else {
                        found.push(format!("{rel}:{}: {p}: {}", n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the repository must stand on its own; these refer to files outside it:\n{}",
        found.join("\n")
    );
    for entry in &pending {
        assert!(
            pending_seen.contains(entry),
            "{} no longer mentions {}: remove it from pending()",
            entry.0,
            entry.1
        );
    }
}

/// `"literal"` arguments that follow `prefix` in `text`.
fn literals_after(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        let trimmed = rest.trim_start();
        if let Some(s) = trimmed.strip_prefix('"')
            && let Some(end) = s.find('"')
        {
            out.push(s[..end].to_owned());
        }
    }
    out
}

fn rust_files(dir: &str) -> Vec<PathBuf> {
    repo_files()
        .into_iter()
        .filter(|p| p.starts_with(root().join(dir)) && p.extension().is_some_and(|e| e == "rs"))
        .collect()
}

#[test]
fn every_metric_name_in_the_code_is_documented() {
    let api = read(&root().join("docs/api.md"));
    let mut names = BTreeSet::new();
    for file in rust_files("src") {
        let text = read(&file);
        for prefix in ["register(", "register_with_unit(", "sub_registry_with_prefix("] {
            names.extend(literals_after(&text, prefix));
        }
    }
    assert!(
        names.len() >= 7,
        "the scan found the metrics it should: {names:?}"
    );
    let missing: Vec<_> = names.iter().filter(|n| !api.contains(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "metrics missing from docs/api.md: {missing:?}"
    );
}

/// Rule ids are the first argument of the field error constructors and of the helpers that
/// take a `rule: &'static str`; the runtime check in `rules::tests` covers the rest.
#[test]
fn every_rule_id_in_the_code_is_documented() {
    let api = read(&root().join("docs/api.md"));
    let mut ids = BTreeSet::new();
    let mut files = rust_files("src/rules");
    files.push(root().join("src/schema.rs"));
    for file in files {
        let text = read(&file);
        for prefix in [
            "FieldError::required(",
            "FieldError::invalid(",
            "FieldError::not_supported(",
            "FieldError::forbidden(",
            "FieldError::too_long(",
            "FieldError::duplicate(",
            "forbid(out,",
            "forbid(\n",
            "iscsi_name(",
            "closed_set(",
            "secret_name(",
            "const RULE: &str =",
        ] {
            ids.extend(
                literals_after(&text, prefix)
                    .into_iter()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')),
            );
        }
    }
    ids.remove("r"); // the renderer's own unit test
    assert!(ids.len() >= 20, "the scan found the rule ids it should: {ids:?}");
    let missing: Vec<_> = ids
        .iter()
        .filter(|id| !api.contains(&format!("`{id}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "rule ids missing from docs/api.md: {missing:?}"
    );
}

/// Documents other changes add; linked before they land.
const PENDING_DOCS: &[&str] = &[
    "docs/adoption.md",
    "docs/performance.md",
    "docs/fleet-scale.md",
    "docs/boot-proof.md",
    "docs/controller.md",
];

#[test]
fn relative_links_resolve() {
    let mut docs: Vec<PathBuf> = vec![root().join("README.md")];
    docs.extend(
        repo_files()
            .into_iter()
            .filter(|p| p.starts_with(root().join("docs")) && p.extension().is_some_and(|e| e == "md")),
    );
    let mut broken = Vec::new();
    for doc in &docs {
        let text = read(doc);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            let resolved = doc.parent().unwrap_or(&root()).join(path);
            let rel = relative(&resolved.canonicalize().unwrap_or(resolved.clone()));
            if !resolved.exists() && !PENDING_DOCS.contains(&rel.as_str()) {
                let norm = relative(&resolved).replace("docs/../", "");
                if !PENDING_DOCS.contains(&norm.as_str()) {
                    broken.push(format!("{}: {target}", relative(doc)));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn readme_is_a_landing_page() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines < 250,
        "README.md has {lines} lines; details belong in docs/"
    );
    for (what, needle) in [
        ("the webhook command", "cargo run --release -- serve --dev"),
        ("the test command", "scripts/test.sh"),
        ("the API reference", "docs/api.md"),
        ("the architecture", "docs/architecture.md"),
        ("operations", "docs/operations.md"),
        ("development", "docs/development.md"),
    ] {
        assert!(readme.contains(needle), "README should show {what} ({needle})");
    }
}
