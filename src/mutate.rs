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

const BV: &str = "/spec/bootVolume";
const TARGET: &str = "/spec/bootVolume/iscsiTarget";

/// A value the patch sets, borrowed from the request where it can be: the webhook writes
/// the patch text straight from these (no `serde_json::Value` on the hot path).
#[derive(Debug)]
enum Val<'a> {
    /// One of our constants (written without escaping: none needs any).
    Const(&'static str),
    /// A string from the request (escaped when written).
    Str(&'a str),
    /// A string we built (`host:port`).
    Owned(String),
    /// An integer (the default LUN).
    Int(i64),
    /// An object; keys sorted, as `serde_json::Map` (a `BTreeMap`) orders them, so the text
    /// is byte for byte what serializing the equivalent `Value` gives.
    Object(Vec<(&'static str, Val<'a>)>),
    /// A whole parsed block (preserve, off the hot path).
    Tree(Value),
}

impl Val<'_> {
    fn into_value(self) -> Value {
        match self {
            Self::Const(s) => Value::String(s.to_owned()),
            Self::Str(s) => Value::String(s.to_owned()),
            Self::Owned(s) => Value::String(s),
            Self::Int(n) => Value::from(n),
            Self::Object(fields) => Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.into_value()))
                    .collect::<Map<String, Value>>(),
            ),
            Self::Tree(v) => v,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Const(s) => {
                out.push(b'"');
                out.extend_from_slice(s.as_bytes());
                out.push(b'"');
            }
            // Writing into a Vec cannot fail.
            Self::Str(s) => {
                let _ = serde_json::to_writer(&mut *out, s);
            }
            Self::Owned(s) => {
                let _ = serde_json::to_writer(&mut *out, s);
            }
            Self::Int(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
            Self::Object(fields) => {
                out.push(b'{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'"');
                    out.extend_from_slice(k.as_bytes());
                    out.extend_from_slice(b"\":");
                    v.write(out);
                }
                out.push(b'}');
            }
            Self::Tree(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
        }
    }
}

/// One RFC 6902 operation; `path` is one of our own pointers (no `~` or `/` to escape in
/// any token, so it is written as is).
#[derive(Debug)]
struct Op<'a> {
    replace: bool,
    path: &'static str,
    value: Val<'a>,
}

fn add<'a>(path: &'static str, value: Val<'a>) -> Op<'a> {
    Op {
        replace: false,
        path,
        value,
    }
}

impl Op<'_> {
    fn into_operation(self) -> PatchOperation {
        let path = PointerBuf::parse(self.path)
            .unwrap_or_else(|_| PointerBuf::from_tokens(self.path.split('/').skip(1)));
        let value = self.value.into_value();
        if self.replace {
            PatchOperation::Replace(ReplaceOperation { path, value })
        } else {
            PatchOperation::Add(AddOperation { path, value })
        }
    }
}

/// The patch for one admission request; empty when nothing changes.
///
/// `user` is the requesting user's name (for `--preserve-for`); `old` is the stored object
/// on UPDATE.
pub fn patch(policy: &Policy, user: &str, old: Option<&HostView>, new: &HostView) -> Vec<PatchOperation> {
    ops(policy, user, old, new)
        .into_iter()
        .map(Op::into_operation)
        .collect()
}

/// [`patch`] as RFC 6902 JSON text, written directly from the operations (what the webhook
/// sends): the same operations in the same order, the same bytes `serde_json` gives for
/// [`patch`]. `None` when nothing changes.
pub fn patch_json(policy: &Policy, user: &str, old: Option<&HostView>, new: &HostView) -> Option<Vec<u8>> {
    let ops = ops(policy, user, old, new);
    if ops.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(512);
    out.push(b'[');
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(if op.replace {
            b"{\"op\":\"replace\",\"path\":\""
        } else {
            b"{\"op\":\"add\",\"path\":\""
        });
        out.extend_from_slice(op.path.as_bytes());
        out.extend_from_slice(b"\",\"value\":");
        op.value.write(&mut out);
        out.push(b'}');
    }
    out.push(b']');
    Some(out)
}

fn ops<'a>(policy: &Policy, user: &str, old: Option<&HostView>, new: &'a HostView<'_>) -> Vec<Op<'a>> {
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
fn preserve<'a>(
    policy: &Policy,
    user: &str,
    old: Option<&HostView>,
    new: &'a HostView<'_>,
) -> Option<Vec<Op<'a>>> {
    let old = old?;
    let old_block = old.boot_volume_raw?;
    if new.boot_volume_raw.is_some() || !policy.preserve_for.iter().any(|u| u == user) {
        return None;
    }
    let mut restored = json!({ "spec": { "bootVolume": old_block.to_value() } });
    if let Some(bv) = old.boot_volume.as_ref()
        && old.boot_volume_shape.object
    {
        let ops: Vec<PatchOperation> = defaults(bv, &old.boot_volume_shape, new.namespace)
            .into_iter()
            .map(Op::into_operation)
            .collect();
        // Our own ops on a copy of our own block: they always apply.
        let _ = json_patch::patch(&mut restored, &ops);
    }
    let block = restored["spec"]["bootVolume"].take();
    Some(if new.has_spec {
        vec![add(BV, Val::Tree(block))]
    } else {
        vec![add("/spec", Val::Tree(json!({ "bootVolume": block })))]
    })
}

/// The `authSecretRef` object mutation resolves from `iscsiCredentialsName`.
fn secret_ref<'a>(name: &'a str, namespace: &'a str) -> Val<'a> {
    let mut fields = Vec::with_capacity(2);
    fields.push(("name", Val::Str(name)));
    if !namespace.is_empty() {
        fields.push(("namespace", Val::Str(namespace)));
    }
    Val::Object(fields)
}

/// `portal:3260`, without the formatting machinery (this runs on most requests).
fn with_default_port(portal: &str) -> String {
    let mut digits = itoa::Buffer::new();
    let port = digits.format(DEFAULT_ISCSI_PORT);
    let mut s = String::with_capacity(portal.len() + 1 + port.len());
    s.push_str(portal);
    s.push(':');
    s.push_str(port);
    s
}

/// Defaults and the Secret reference for a present `bootVolume` object (`shape` says which
/// fields were sent, with any JSON type).
fn defaults<'a>(bv: &'a BootVolume, shape: &Shape, namespace: &'a str) -> Vec<Op<'a>> {
    // At most six operations: allocated once (growing the Vec cost more than building
    // the operations).
    let mut ops = Vec::with_capacity(6);
    if !shape.has(field::TARGET_TYPE) {
        ops.push(add("/spec/bootVolume/targetType", Val::Const(TARGET_TYPE_ISCSI)));
    }
    let cinder = bv.volume_driver.as_deref() == Some("cinder");
    let target_sent = shape.has(field::ISCSI_TARGET);
    // `iscsi_target` is read only from an object.
    let target = bv.iscsi_target.as_ref();
    // Fields to add under iscsiTarget, in a stable order: (key, its path, value).
    let mut fields: Vec<(&'static str, &'static str, Val<'a>)> = Vec::with_capacity(4);
    let has = |bit: u32| target.is_some() && shape.has(bit);
    let credentials_name = bv.iscsi_credentials_name.as_deref().filter(|n| !n.is_empty());
    // Only cinder hosts may lack iscsiTarget; for the others a missing target is an error
    // that creating one would only disguise.
    if target_sent || (cinder && credentials_name.is_some()) {
        if !has(field::I_TYPE) {
            fields.push((
                "iType",
                "/spec/bootVolume/iscsiTarget/iType",
                Val::Const(ITYPE_IQN),
            ));
        }
        if !has(field::LUN) && !cinder {
            fields.push(("lun", "/spec/bootVolume/iscsiTarget/lun", Val::Int(0)));
        }
        if !has(field::AUTH_METHOD) {
            let credentials = credentials_name.is_some()
                || target.is_some_and(|t| {
                    t.auth_user.is_some() || t.auth_passwd.is_some() || t.auth_secret_ref.is_some()
                });
            // Without credentials, external hosts must say `None` themselves (CHAP is the
            // safe default and the rules require a credential source for it).
            const PATH: &str = "/spec/bootVolume/iscsiTarget/authMethod";
            if credentials {
                fields.push(("authMethod", PATH, Val::Const(AUTH_CHAP)));
            } else if cinder {
                fields.push(("authMethod", PATH, Val::Const(AUTH_NONE)));
            }
        }
        // The reference as sent: absent, an object (read), or another JSON value.
        let sent_ref = has(field::SECRET_REF).then(|| target.and_then(|t| t.auth_secret_ref.as_ref()));
        match (credentials_name, sent_ref) {
            (Some(name), None) => fields.push((
                "authSecretRef",
                "/spec/bootVolume/iscsiTarget/authSecretRef",
                secret_ref(name, namespace),
            )),
            (_, Some(Some(_))) if !shape.has(field::REF_NAMESPACE) && !namespace.is_empty() => {
                ops.push(add(
                    "/spec/bootVolume/iscsiTarget/authSecretRef/namespace",
                    Val::Str(namespace),
                ));
            }
            _ => {}
        }
    }
    if let Some(portal) = target.and_then(|t| t.portal.as_deref())
        && !portal.is_empty()
        && !portal.contains(':')
    {
        ops.push(Op {
            replace: true,
            path: "/spec/bootVolume/iscsiTarget/portal",
            value: Val::Owned(with_default_port(portal)),
        });
    }
    if target.is_some() {
        ops.extend(fields.into_iter().map(|(_, path, v)| add(path, v)));
    } else if !target_sent && !fields.is_empty() {
        let mut obj: Vec<(&'static str, Val<'a>)> = fields.into_iter().map(|(k, _, v)| (k, v)).collect();
        obj.sort_by_key(|(k, _)| *k);
        ops.push(add(TARGET, Val::Object(obj)));
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

    fn run_json(user: &str, old: Option<&Host>, new: &Host) -> Option<Vec<u8>> {
        let new_view = HostView::new(&new.0).expect("view");
        let old_view = old.map(|o| HostView::new(&o.0).expect("view"));
        patch_json(&Policy::default(), user, old_view.as_ref(), &new_view)
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
            // The text the webhook sends: the bytes serde_json gives for the operations,
            // and, parsed back as RFC 6902, a patch that gives the same object.
            let text = run_json(user, old.as_ref(), new);
            let want = (!ops.is_empty()).then(|| serde_json::to_vec(&ops).expect("ops serialize"));
            assert_eq!(text, want, "{name}: patch text");
            if let Some(text) = &text {
                let parsed: json_patch::Patch = serde_json::from_slice(text).expect("RFC 6902 JSON");
                assert_eq!(parsed.0, ops, "{name}");
                assert_eq!(apply(new, &parsed.0).0, expected.0, "{name}");
            }
            assert_eq!(
                run(user, old.as_ref(), &patched),
                vec![],
                "{name}: mutation must be idempotent"
            );
        }
    }

    /// Strings from the request are escaped in the patch text exactly as serde_json does.
    #[test]
    fn patch_text_escapes_request_strings() {
        let host = Host::external()
            .set("/metadata/namespace", json!("n\"s\\\u{1}\u{e9}\u{2028}"))
            .set("/spec/bootVolume/iscsiCredentialsName", json!("c\"\n"))
            .set("/spec/bootVolume/iscsiTarget/portal", json!("p\t\u{7f}"));
        let ops = run("alice", None, &host);
        let text = run_json("alice", None, &host).expect("a patch");
        assert_eq!(text, serde_json::to_vec(&ops).expect("ops serialize"));
        let parsed: json_patch::Patch = serde_json::from_slice(&text).expect("RFC 6902 JSON");
        assert_eq!(apply(&host, &parsed.0).0, apply(&host, &ops).0);
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
