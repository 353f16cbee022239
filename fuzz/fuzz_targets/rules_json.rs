//! Arbitrary JSON as a BareMetalHost for the pure rules (`rules::validate`) and the
//! mutation (`mutate::patch`), on CREATE (no old object) and UPDATE.
//!
//! Input shapes: a JSON object is the new host (CREATE, and an UPDATE against itself); a
//! two-element array is `[old, new]`; an AdmissionReview (the seed fixtures) gives its
//! `request.oldObject` and `request.object`.
#![no_main]

#[allow(dead_code)] // Shared with the admission target.
mod common;

use bootvolume::{api::HostView, mutate, rules, rules::Policy};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::LazyLock;

static POLICIES: LazyLock<[Policy; 2]> = LazyLock::new(|| {
    let strict = Policy::default();
    let lax = Policy {
        allowed_volume_drivers: vec!["cinder".into(), "external".into(), "noop".into()],
        allow_inline_chap: true,
        ..Policy::default()
    };
    [strict, lax]
});

fn run(policy: &Policy, user: &str, old: Option<&Value>, new: &Value) {
    let Ok(new_view) = HostView::new(new) else {
        return;
    };
    let old_view = old.and_then(|o| HostView::new(o).ok());
    let verdict = rules::validate(policy, old_view.as_ref(), &new_view);
    let _ = verdict.message();
    common::check_warnings(&verdict.warnings);
    for e in &verdict.errors {
        let _ = e.message();
        assert!(!e.field.is_empty(), "field error without a field: {e:?}");
    }

    let ops = mutate::patch(policy, user, old_view.as_ref(), &new_view);
    if ops.is_empty() {
        return;
    }
    common::check_patch_scope(&ops);
    let patched = common::apply(new, &ops);
    let view = HostView::new(&patched).expect("a patched host is still a host");
    let again = mutate::patch(policy, user, old_view.as_ref(), &view);
    assert!(
        again.is_empty(),
        "mutating the mutated host patches again: {again:?}\nfirst: {ops:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let (old, new) = match &value {
        Value::Array(pair) if pair.len() == 2 => (Some(&pair[0]), &pair[1]),
        Value::Object(o) if o.contains_key("request") => {
            let req = &value["request"];
            match req.get("object") {
                Some(new) => (req.get("oldObject").filter(|o| !o.is_null()), new),
                None => return,
            }
        }
        _ => (None, &value),
    };
    let operator = rules::DEFAULT_PRESERVE_FOR;
    for policy in POLICIES.iter() {
        for user in [operator, "kubernetes-admin"] {
            run(policy, user, old, new);
            if old.is_none() {
                run(policy, user, Some(new), new);
            }
        }
    }
});
