//! Arbitrary bytes as an AdmissionReview body: decoding never panics, and when a review
//! with a request decodes, both webhooks answer it within the wire contract.
#![no_main]

mod common;

use bootvolume::{
    admission::{Review, ReviewResponse, Webhook, admit},
    rules::Policy,
};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static POLICY: LazyLock<Policy> = LazyLock::new(Policy::default);

fuzz_target!(|data: &[u8]| {
    let Ok(review) = serde_json::from_slice::<Review>(data) else {
        return;
    };
    let Some(mut req) = review.request else {
        return;
    };
    let policy = &*POLICY;

    let validated = admit(policy, Webhook::Validate, &req);
    let r = &validated.response;
    assert_eq!(r.uid, req.uid, "uid echoed");
    assert!(
        r.patch.is_none() && r.patch_type.is_none(),
        "/validate never patches"
    );
    assert_eq!(
        r.allowed,
        r.status.is_none(),
        "a denial carries a status and only a denial"
    );
    if let Some(status) = &r.status {
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
        assert!(!status.details.causes.is_empty(), "a denial has causes");
    }
    common::check_warnings(&r.warnings);
    let encoded = serde_json::to_string(&ReviewResponse::from(r.clone())).expect("response serializes");

    // No secret value in what goes back (the request object holding it exactly once).
    let object_secret = req.object.as_ref().and_then(common::secret_of);
    if let Some(secret) = &object_secret {
        let request_text = format!(
            "{} {}",
            serde_json::to_string(&req.object).unwrap(),
            serde_json::to_string(&req.old_object).unwrap()
        );
        let unique = request_text.matches(secret.as_str()).count() == 1
            && !req.uid.contains(secret.as_str())
            && !req.name.contains(secret.as_str())
            && !req.namespace.contains(secret.as_str());
        if unique {
            assert!(
                !encoded.contains(secret.as_str()),
                "secret value in /validate response: {encoded}"
            );
        }
    }

    let mutated = admit(policy, Webhook::Mutate, &req);
    let r = &mutated.response;
    assert_eq!(r.uid, req.uid, "uid echoed");
    assert_eq!(
        r.patch.is_some(),
        r.patch_type.is_some(),
        "patch and patchType together"
    );
    common::check_warnings(&r.warnings);
    let Some(b64) = &r.patch else {
        return;
    };
    assert_eq!(r.patch_type.as_deref(), Some("JSONPatch"));
    assert!(r.allowed, "a patch comes with allowed: true");
    let patch = common::decode_patch(b64);
    assert!(!patch.0.is_empty(), "no empty patch: leave it out");
    common::check_patch_scope(&patch.0);
    let object = req.object.take().expect("a patch implies an object");
    let patched = common::apply(&object, &patch.0);

    // A patched object mutates to no patch (mutate.rs module docs).
    req.object = Some(patched);
    let again = admit(policy, Webhook::Mutate, &req);
    assert!(
        again.response.patch.is_none(),
        "mutating the mutated object patches again: {:?}",
        again.response.patch.as_deref().map(common::decode_patch)
    );
});
