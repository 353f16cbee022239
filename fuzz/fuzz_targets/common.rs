//! Invariants shared by the fuzz targets (docs/api.md, wire contract). A violated invariant
//! panics, which libFuzzer reports as a crash with the input saved under `artifacts/`.

use json_patch::{Patch, PatchOperation};
use serde_json::Value;

/// `warnings`: plain text, no newlines, each under 120 characters.
pub fn check_warnings(warnings: &[String]) {
    for w in warnings {
        assert!(!w.contains(['\n', '\r']), "warning with a newline: {w:?}");
        assert!(
            w.chars().count() < 120,
            "warning of {} characters: {w:?}",
            w.chars().count()
        );
    }
}

/// The patch only touches `spec.bootVolume` (adding `/spec` itself only as a parent of it).
pub fn check_patch_scope(ops: &[PatchOperation]) {
    for op in ops {
        let path = op.path().to_string();
        let ok = path == "/spec/bootVolume"
            || path.starts_with("/spec/bootVolume/")
            || (path == "/spec"
                && matches!(op, PatchOperation::Add(a) if a.value.as_object().is_some_and(|o| o.len() == 1 && o.contains_key("bootVolume"))));
        assert!(ok, "patch touches {path} outside spec.bootVolume: {op:?}");
    }
}

/// Applies `ops` to `object`; the patch must apply to the object it was made for.
pub fn apply(object: &Value, ops: &[PatchOperation]) -> Value {
    let mut doc = object.clone();
    if let Err(e) = json_patch::patch(&mut doc, ops) {
        panic!("patch does not apply to its own object: {e}\npatch: {ops:?}");
    }
    doc
}

/// Decodes a base64 RFC 6902 patch from a response.
pub fn decode_patch(b64: &str) -> Patch {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("patch is base64");
    serde_json::from_slice(&bytes).expect("patch is an RFC 6902 array")
}

/// `spec.bootVolume.iscsiTarget.authPasswd` as it appears in serialized JSON, when it is
/// long enough (12+ characters) that finding it elsewhere is not a coincidence.
pub fn secret_of(object: &Value) -> Option<String> {
    let pw = object
        .pointer("/spec/bootVolume/iscsiTarget/authPasswd")?
        .as_str()?;
    if pw.chars().count() < 12 {
        return None;
    }
    let quoted = serde_json::to_string(pw).ok()?;
    Some(quoted[1..quoted.len() - 1].to_owned())
}
