//! Mutation (docs/api.md, defaults): defaults, the Secret reference, and the preserve rule,
//! as a minimal RFC 6902 patch.
//!
//! The patch only touches `/spec/bootVolume` and only adds what is missing (or replaces
//! the portal to add its port): we never re-serialize the object, so fields we do not
//! know about are never dropped. A patched object mutates to an empty patch.

use crate::{
    api::{
        AUTH_CHAP, AUTH_NONE, BootVolume, DEFAULT_ISCSI_PORT, HostView, ITYPE_IQN, Shape, TARGET_TYPE_ISCSI,
        field,
    },
    rules::Policy,
};
use json_patch::{AddOperation, PatchOperation, ReplaceOperation, jsonptr::PointerBuf};
use serde_json::{Map, Value, json};

/// A pointer from our own field names (none holds `/` or `~`, so nothing is escaped).
fn pointer(tokens: &[&str]) -> PointerBuf {
    let mut path = String::with_capacity(64);
    for t in tokens {
        path.push('/');
        path.push_str(t);
    }
    PointerBuf::parse(path).unwrap_or_else(|_| PointerBuf::from_tokens(tokens.iter().copied()))
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

/// The patch for one admission request; empty when nothing changes.
///
/// `user` is the requesting user's name (for `--preserve-for`); `old` is the stored object
/// on UPDATE.
pub fn patch(policy: &Policy, user: &str, old: Option<&HostView>, new: &HostView) -> Vec<PatchOperation> {
    if new.deleting() {
        return Vec::new();
    }
    if let Some(ops) = preserve(policy, user, old, new) {
        return ops;
    }
    // Ratchet, as in `rules::validate`: an UPDATE that leaves `bootVolume` as stored is not
    // defaulted, or `/validate` (which runs after us) would see a changed block and run the
    // rules on the operator's bookkeeping writes.
    if old.is_some_and(|old| old.boot_volume_raw == new.boot_volume_raw) {
        return Vec::new();
    }
    match new.boot_volume.as_ref() {
        Some(bv) if new.boot_volume_shape.object => defaults(bv, &new.boot_volume_shape, new.namespace),
        _ => Vec::new(),
    }
}

/// Preserve: an UPDATE by a `--preserve-for` user that drops `spec.bootVolume` gets the old
/// block back (an operator built without this field would erase it on every write), with
/// defaults applied as if it had been sent.
fn preserve(
    policy: &Policy,
    user: &str,
    old: Option<&HostView>,
    new: &HostView,
) -> Option<Vec<PatchOperation>> {
    let old = old?;
    let old_block = old.boot_volume_raw?;
    if new.boot_volume_raw.is_some() || !policy.preserve_for.iter().any(|u| u == user) {
        return None;
    }
    let mut restored = json!({ "spec": { "bootVolume": old_block.to_value() } });
    if let Some(bv) = old.boot_volume.as_ref()
        && old.boot_volume_shape.object
    {
        let ops = defaults(bv, &old.boot_volume_shape, new.namespace);
        // Our own ops on a copy of our own block: they always apply.
        let _ = json_patch::patch(&mut restored, &ops);
    }
    let block = restored["spec"]["bootVolume"].take();
    Some(if new.has_spec {
        vec![add(&["spec", "bootVolume"], block)]
    } else {
        vec![add(&["spec"], json!({ "bootVolume": block }))]
    })
}

/// Defaults and the Secret reference for a present `bootVolume` object (`shape` says which
/// fields were sent, with any JSON type).
fn defaults(bv: &BootVolume, shape: &Shape, namespace: &str) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    if !shape.has(field::TARGET_TYPE) {
        ops.push(add(
            &["spec", "bootVolume", "targetType"],
            json!(TARGET_TYPE_ISCSI),
        ));
    }
    let cinder = bv.volume_driver.as_deref() == Some("cinder");
    let target_sent = shape.has(field::ISCSI_TARGET);
    // `iscsi_target` is read only from an object.
    let target = bv.iscsi_target.as_ref();
    // Fields to add under iscsiTarget, in a stable order.
    let mut fields: Vec<(&str, Value)> = Vec::new();
    let has = |bit: u32| target.is_some() && shape.has(bit);
    let credentials_name = bv.iscsi_credentials_name.as_deref().filter(|n| !n.is_empty());
    // Only cinder hosts may lack iscsiTarget; for the others a missing target is an error
    // that creating one would only disguise.
    if target_sent || (cinder && credentials_name.is_some()) {
        if !has(field::I_TYPE) {
            fields.push(("iType", json!(ITYPE_IQN)));
        }
        if !has(field::LUN) && !cinder {
            fields.push(("lun", json!(0)));
        }
        if !has(field::AUTH_METHOD) {
            let credentials = credentials_name.is_some()
                || target.is_some_and(|t| {
                    t.auth_user.is_some() || t.auth_passwd.is_some() || t.auth_secret_ref.is_some()
                });
            // Without credentials, external hosts must say `None` themselves (CHAP is the
            // safe default and the rules require a credential source for it).
            if credentials {
                fields.push(("authMethod", json!(AUTH_CHAP)));
            } else if cinder {
                fields.push(("authMethod", json!(AUTH_NONE)));
            }
        }
        // The reference as sent: absent, an object (read), or another JSON value.
        let secret_ref = has(field::SECRET_REF).then(|| target.and_then(|t| t.auth_secret_ref.as_ref()));
        match (credentials_name, secret_ref) {
            (Some(name), None) if namespace.is_empty() => {
                fields.push(("authSecretRef", json!({ "name": name })))
            }
            (Some(name), None) => {
                fields.push(("authSecretRef", json!({ "name": name, "namespace": namespace })))
            }
            (_, Some(Some(_))) if !shape.has(field::REF_NAMESPACE) && !namespace.is_empty() => {
                ops.push(add(
                    &["spec", "bootVolume", "iscsiTarget", "authSecretRef", "namespace"],
                    json!(namespace),
                ));
            }
            _ => {}
        }
    }
    if let Some(portal) = target.and_then(|t| t.portal.as_deref())
        && !portal.is_empty()
        && !portal.contains(':')
    {
        ops.push(PatchOperation::Replace(ReplaceOperation {
            path: pointer(&["spec", "bootVolume", "iscsiTarget", "portal"]),
            value: json!(format!("{portal}:{DEFAULT_ISCSI_PORT}")),
        }));
    }
    if target.is_some() {
        ops.extend(
            fields
                .into_iter()
                .map(|(k, v)| add(&["spec", "bootVolume", "iscsiTarget", k], v)),
        );
    } else if !target_sent && !fields.is_empty() {
        let obj: Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        ops.push(add(&["spec", "bootVolume", "iscsiTarget"], Value::Object(obj)));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fixtures::Host, rules::DEFAULT_PRESERVE_FOR};

    fn run(user: &str, old: Option<&Host>, new: &Host) -> Vec<PatchOperation> {
        let new_view = HostView::new(&new.0).expect("view");
        let old_view = old.map(|o| HostView::new(&o.0).expect("view"));
        patch(&Policy::default(), user, old_view.as_ref(), &new_view)
    }

    fn apply(host: &Host, ops: &[PatchOperation]) -> Host {
        let mut doc = host.0.clone();
        json_patch::patch(&mut doc, ops).expect("patch applies");
        Host(doc)
    }

    /// (case, user, old, new, expected object after the patch).
    #[test]
    fn patches() {
        let t = "/spec/bootVolume/iscsiTarget";
        let ext = Host::external;
        let cases: Vec<(&str, &str, Option<Host>, Host, Host)> = vec![
            (
                "external_defaults",
                "alice",
                None,
                ext().set(&format!("{t}/portal"), json!("192.0.2.10")).remove(&format!("{t}/lun")),
                ext()
                    .set("/spec/bootVolume/targetType", json!("iscsi"))
                    .set(&format!("{t}/portal"), json!("192.0.2.10:3260"))
                    .set(&format!("{t}/lun"), json!(0))
                    .set(&format!("{t}/iType"), json!("iqn"))
                    .set(&format!("{t}/authMethod"), json!("CHAP"))
                    .set(&format!("{t}/authSecretRef"), json!({"name": "host-0-chap", "namespace": "metal3"})),
            ),
            (
                "external_auth_none_kept",
                "alice",
                None,
                ext().remove("/spec/bootVolume/iscsiCredentialsName").set(&format!("{t}/authMethod"), json!("None")),
                ext()
                    .remove("/spec/bootVolume/iscsiCredentialsName")
                    .set(&format!("{t}/authMethod"), json!("None"))
                    .set("/spec/bootVolume/targetType", json!("iscsi"))
                    .set(&format!("{t}/iType"), json!("iqn")),
            ),
            (
                "secret_ref_namespace_filled",
                "alice",
                None,
                ext()
                    .remove("/spec/bootVolume/iscsiCredentialsName")
                    .set("/spec/bootVolume/targetType", json!("iscsi"))
                    .set(&format!("{t}/authSecretRef"), json!({"name": "s"})),
                ext()
                    .remove("/spec/bootVolume/iscsiCredentialsName")
                    .set("/spec/bootVolume/targetType", json!("iscsi"))
                    .set(&format!("{t}/authSecretRef"), json!({"name": "s", "namespace": "metal3"}))
                    .set(&format!("{t}/iType"), json!("iqn"))
                    .set(&format!("{t}/authMethod"), json!("CHAP")),
            ),
            (
                "cinder_minimal",
                "alice",
                None,
                Host::cinder(),
                Host::cinder().set("/spec/bootVolume/targetType", json!("iscsi")),
            ),
            (
                "cinder_with_secret_creates_target",
                "alice",
                None,
                Host::cinder().set("/spec/bootVolume/iscsiCredentialsName", json!("c")),
                Host::cinder()
                    .set("/spec/bootVolume/iscsiCredentialsName", json!("c"))
                    .set("/spec/bootVolume/targetType", json!("iscsi"))
                    .set(
                        t,
                        json!({"iType": "iqn", "authMethod": "CHAP", "authSecretRef": {"name": "c", "namespace": "metal3"}}),
                    ),
            ),
            (
                "preserve_for_operator",
                DEFAULT_PRESERVE_FOR,
                Some(ext().set("/spec/bootVolume/targetType", json!("iscsi"))),
                Host::plain().set("/metadata/finalizers", json!(["baremetalhost.metal3.io"])),
                ext()
                    .set("/spec/bootVolume/targetType", json!("iscsi"))
                    .set(&format!("{t}/iType"), json!("iqn"))
                    .set(&format!("{t}/authMethod"), json!("CHAP"))
                    .set(&format!("{t}/authSecretRef"), json!({"name": "host-0-chap", "namespace": "metal3"}))
                    .set("/metadata/finalizers", json!(["baremetalhost.metal3.io"])),
            ),
            ("no_preserve_for_users", "alice", Some(ext()), Host::plain(), Host::plain()),
            ("no_boot_volume", "alice", None, Host::plain(), Host::plain()),
            (
                "deleting_untouched",
                "alice",
                None,
                Host::cinder().set("/metadata/deletionTimestamp", json!("2026-11-30T00:00:00Z")),
                Host::cinder().set("/metadata/deletionTimestamp", json!("2026-11-30T00:00:00Z")),
            ),
            (
                "unknown_fields_kept",
                "alice",
                None,
                Host::cinder().set("/spec/futureField", json!({"a": 1})).set("/spec/bootVolume/targetType", json!("iscsi")),
                Host::cinder().set("/spec/futureField", json!({"a": 1})).set("/spec/bootVolume/targetType", json!("iscsi")),
            ),
        ];
        for (name, user, old, new, expected) in &cases {
            let ops = run(user, old.as_ref(), new);
            for op in &ops {
                assert!(
                    op.path().to_string().starts_with("/spec/bootVolume"),
                    "{name}: {op:?}"
                );
            }
            let patched = apply(new, &ops);
            assert_eq!(patched.0, expected.0, "{name}");
            assert_eq!(
                run(user, old.as_ref(), &patched),
                vec![],
                "{name}: mutation must be idempotent"
            );
        }
    }

    #[test]
    fn patched_objects_validate_like_unpatched_ones() {
        let policy = Policy::default();
        for host in [
            Host::external(),
            Host::cinder(),
            Host::external().set("/spec/bootVolume/iscsiTarget/portal", json!("h")),
        ] {
            let view = HostView::new(&host.0).expect("view");
            let patched = apply(&host, &patch(&policy, "u", None, &view));
            let patched_view = HostView::new(&patched.0).expect("view");
            assert_eq!(
                crate::rules::validate(&policy, None, &view).errors,
                crate::rules::validate(&policy, None, &patched_view).errors
            );
        }
    }
}
