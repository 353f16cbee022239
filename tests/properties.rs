//! Property tests: rules and mutation on arbitrary input.
//!
//! - neither panics on any JSON;
//! - validating the patched object reports exactly what validating the original did
//!   (a default is never reported missing, and mutation never creates an error);
//! - mutation is idempotent;
//! - the patch only touches `/spec/bootVolume` (or adds `/spec` when there is none);
//! - the webhook's reading of request text decides exactly what the reading of a parsed
//!   `Value` (the reconciler's, `check`'s, these tests') decides.

use bootvolume::{
    api::{HostView, parse_host},
    fixtures::Host,
    mutate,
    rules::{self, Policy},
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Plausible and implausible values for bootVolume string fields.
fn field_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(json!(""))),
        1 => Just(Some(json!("iqn.2004-10.com.example:host-0"))),
        1 => Just(Some(json!("IQN.2004-10.COM.EXAMPLE:T"))),
        1 => Just(Some(json!("eui.02004567A425678D"))),
        1 => Just(Some(json!("0b3f0c53-5c36-4b43-9d0d-6c3b8d1f1e2a"))),
        1 => Just(Some(json!("192.0.2.10"))),
        1 => Just(Some(json!("san.example.com:3260"))),
        1 => Just(Some(json!("[fd00::1]:3260"))),
        1 => Just(Some(json!("external"))),
        1 => Just(Some(json!("cinder"))),
        1 => Just(Some(json!("CHAP"))),
        1 => Just(Some(json!("None"))),
        1 => Just(Some(json!("iqn"))),
        1 => Just(Some(json!("iscsi"))),
        1 => Just(Some(json!("host-0-chap"))),
        1 => Just(Some(json!("metal3"))),
        1 => Just(Some(json!("Bad_Name"))),
        1 => Just(Some(json!(0))),
        1 => Just(Some(json!(70000))),
        1 => Just(Some(json!(-1))),
        1 => Just(Some(json!({}))),
        1 => any_json().prop_map(Some),
    ]
}

fn object_of(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect(),
    )
}

/// A bootVolume block built from plausible parts, so deep rules are exercised.
fn boot_volume() -> impl Strategy<Value = Value> {
    let target = (
        field_value(),
        field_value(),
        field_value(),
        field_value(),
        field_value(),
        field_value(),
        field_value(),
        field_value(),
    )
        .prop_map(|(iqn, portal, lun, method, user, pass, itype, r)| {
            object_of(vec![
                ("iqn", iqn),
                ("portal", portal),
                ("lun", lun),
                ("authMethod", method),
                ("authUser", user),
                ("authPasswd", pass),
                ("iType", itype),
                (
                    "authSecretRef",
                    r.map(|n| json!({"name": n, "namespace": "metal3"})),
                ),
            ])
        });
    (
        field_value(),
        field_value(),
        field_value(),
        field_value(),
        prop::option::weighted(0.8, target),
        field_value(),
    )
        .prop_map(|(id, driver, connector, tt, target, creds)| {
            object_of(vec![
                ("volumeId", id),
                ("volumeDriver", driver),
                ("connectorId", connector),
                ("targetType", tt),
                ("iscsiTarget", target),
                ("iscsiCredentialsName", creds),
            ])
        })
}

fn errors(policy: &Policy, old: Option<&Value>, doc: &Value) -> Vec<(String, rules::ErrorKind)> {
    let Ok(view) = HostView::new(doc) else {
        return Vec::new();
    };
    let old = old.and_then(|o| HostView::new(o).ok());
    let mut e: Vec<_> = rules::validate(policy, old.as_ref(), &view)
        .errors
        .into_iter()
        .map(|e| (e.field, e.kind))
        .collect();
    e.sort();
    e
}

fn check_mutation(
    policy: &Policy,
    user: &str,
    old: Option<&Value>,
    doc: &Value,
) -> Result<(), TestCaseError> {
    let Ok(view) = HostView::new(doc) else {
        return Ok(());
    };
    let old_view = old.and_then(|o| HostView::new(o).ok());
    let ops = mutate::patch(policy, user, old_view.as_ref(), &view);
    let spec_absent = doc.get("spec").is_none_or(|s| !s.is_object());
    for op in &ops {
        let path = op.path().to_string();
        prop_assert!(
            path.starts_with("/spec/bootVolume") || (spec_absent && path == "/spec"),
            "patch touches {path}"
        );
    }
    // The text the webhook sends is what serializing the operations gives, byte for byte.
    let text = mutate::patch_json(policy, user, old_view.as_ref(), &view);
    let want = (!ops.is_empty()).then(|| serde_json::to_vec(&ops).expect("ops serialize"));
    prop_assert_eq!(text, want, "patch text");
    let mut patched = doc.clone();
    prop_assert!(
        json_patch::patch(&mut patched, &ops).is_ok(),
        "patch must apply: {ops:?}"
    );
    let patched_view = HostView::new(&patched).expect("patched object is still an object");
    prop_assert_eq!(
        mutate::patch(policy, user, old_view.as_ref(), &patched_view),
        vec![],
        "idempotent"
    );
    if old.is_none() {
        prop_assert_eq!(
            errors(policy, None, doc),
            errors(policy, None, &patched),
            "same verdict after the patch"
        );
    }
    Ok(())
}

/// Validation and mutation of `(old, new)` read from text equal those read from `Value`s.
fn text_reading_agrees(policy: &Policy, old: Option<&Value>, doc: &Value) -> Result<(), TestCaseError> {
    let (text, old_text) = (doc.to_string(), old.map(Value::to_string));
    let Ok(tree) = HostView::new(doc) else {
        prop_assert!(parse_host(&text).is_err());
        return Ok(());
    };
    let parsed = parse_host(&text).expect("the text reading accepts what the tree reading does");
    let view = parsed.view();
    let old_tree = old.and_then(|o| HostView::new(o).ok());
    let old_parsed = old_text.as_deref().and_then(|t| parse_host(t).ok());
    let old_view = old_parsed.as_ref().map(|d| d.view());
    prop_assert_eq!(
        rules::validate(policy, old_view.as_ref(), &view),
        rules::validate(policy, old_tree.as_ref(), &tree)
    );
    for user in ["u", rules::DEFAULT_PRESERVE_FOR] {
        prop_assert_eq!(
            mutate::patch(policy, user, old_view.as_ref(), &view),
            mutate::patch(policy, user, old_tree.as_ref(), &tree)
        );
    }
    Ok(())
}

fn policies() -> impl Strategy<Value = Policy> {
    any::<bool>().prop_map(|inline| Policy {
        allow_inline_chap: inline,
        ..Policy::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_any_json(object in any_json(), old in prop::option::of(any_json()), policy in policies()) {
        errors(&policy, old.as_ref(), &object);
        if let Ok(view) = HostView::new(&object) {
            let old_view = old.as_ref().and_then(|o| HostView::new(o).ok());
            mutate::patch(&policy, rules::DEFAULT_PRESERVE_FOR, old_view.as_ref(), &view);
        }
    }

    #[test]
    fn never_panics_on_any_boot_volume(block in any_json(), policy in policies()) {
        let host = Host::plain().set("/spec/bootVolume", block);
        errors(&policy, None, &host.0);
        check_mutation(&policy, "u", None, &host.0)?;
    }

    #[test]
    fn mutation_is_consistent_with_validation(block in boot_volume(), policy in policies()) {
        let host = Host::plain().set("/spec/bootVolume", block);
        check_mutation(&policy, "u", None, &host.0)?;
    }

    #[test]
    fn text_and_value_readings_decide_alike(
        block in prop_oneof![boot_volume(), any_json()],
        old_block in prop::option::of(boot_volume()),
        state in prop::sample::select(vec!["ready", "provisioned"]),
        object in any_json(),
        policy in policies(),
    ) {
        let host = Host::plain().set("/spec/bootVolume", block);
        let old = old_block.map(|b| Host::plain().in_state(state).set("/spec/bootVolume", b).0);
        text_reading_agrees(&policy, old.as_ref(), &host.0)?;
        text_reading_agrees(&policy, None, &object)?;
        text_reading_agrees(&policy, old.as_ref(), &Host::plain().0)?;
    }

    #[test]
    fn preserve_restores_and_is_idempotent(block in boot_volume()) {
        let policy = Policy::default();
        let old = Host::plain().set("/spec/bootVolume", block);
        let new = Host::plain().set("/metadata/finalizers", json!(["f"]));
        check_mutation(&policy, rules::DEFAULT_PRESERVE_FOR, Some(&old.0), &new.0)?;
    }
}
