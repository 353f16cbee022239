//! The webhook over real TLS on loopback, as kube-apiserver calls it: AdmissionReview
//! fixtures in, the wire contract of docs/api.md out.

mod common;

use bootvolume::fixtures::Host;
use common::{TestServer, admission_fixture, apply_patch, bounded, decode_patch, metric_value, poll_until};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};

const BMO: &str = "system:serviceaccount:baremetal-operator-system:baremetal-operator-controller-manager";

/// What one webhook must answer for a fixture.
enum Want {
    /// Allowed, no patch.
    Allow,
    /// Denied with exactly these `(field, reason)` causes (sorted).
    Deny(&'static [(&'static str, &'static str)]),
    /// Allowed with a patch turning the request object into `f(object)`.
    Patched(fn(Host) -> Host),
}

const T: &str = "/spec/bootVolume/iscsiTarget";
const FORBIDDEN: &str = "FieldValueForbidden";
const REQUIRED: &str = "FieldValueRequired";
const INVALID: &str = "FieldValueInvalid";
const NOT_SUPPORTED: &str = "FieldValueNotSupported";

fn target_type(h: Host) -> Host {
    h.set("/spec/bootVolume/targetType", json!("iscsi"))
}

fn i_type(h: Host) -> Host {
    h.set(&format!("{T}/iType"), json!("iqn"))
}

fn chap_secret_ref(h: Host) -> Host {
    h.set(&format!("{T}/authMethod"), json!("CHAP")).set(
        &format!("{T}/authSecretRef"),
        json!({"name": "host-0-chap", "namespace": "metal3"}),
    )
}

/// The defaults a typical external host with `iscsiCredentialsName` gets.
fn external_defaults(h: Host) -> Host {
    chap_secret_ref(i_type(target_type(h)))
}

/// (fixture, /validate, /mutate).
fn cases() -> Vec<(&'static str, Want, Want)> {
    use Want::*;
    vec![
        ("create_external_valid_allowed", Allow, Patched(external_defaults)),
        ("create_external_fully_defaulted_allowed", Allow, Allow),
        (
            "create_external_portal_without_port_allowed",
            Allow,
            Patched(|h| {
                external_defaults(h)
                    .set(&format!("{T}/portal"), json!("storage.example.com:3260"))
                    .set(&format!("{T}/lun"), json!(0))
            }),
        ),
        // The object has no namespace: the request's is authoritative for the Secret ref.
        (
            "create_external_namespace_from_request_allowed",
            Allow,
            Patched(external_defaults),
        ),
        (
            "create_external_auth_none_allowed",
            Allow,
            Patched(|h| i_type(target_type(h))),
        ),
        (
            "create_external_with_warnings_allowed",
            Allow,
            Patched(external_defaults),
        ),
        // Adoption: how a host that boots from its volume reaches `active` under BMO.
        (
            "create_external_externally_provisioned_allowed",
            Allow,
            Patched(external_defaults),
        ),
        ("create_cinder_valid_allowed", Allow, Patched(target_type)),
        (
            "create_cinder_with_portal_denied",
            Deny(&[
                ("spec.bootVolume.iscsiTarget.iqn", FORBIDDEN),
                ("spec.bootVolume.iscsiTarget.lun", FORBIDDEN),
                ("spec.bootVolume.iscsiTarget.portal", FORBIDDEN),
            ]),
            Patched(|h| i_type(target_type(h)).set(&format!("{T}/authMethod"), json!("None"))),
        ),
        (
            "create_external_inline_chap_denied",
            Deny(&[
                ("spec.bootVolume.iscsiTarget.authPasswd", FORBIDDEN),
                ("spec.bootVolume.iscsiTarget.authUser", FORBIDDEN),
            ]),
            Patched(|h| i_type(target_type(h)).set(&format!("{T}/authMethod"), json!("CHAP"))),
        ),
        (
            "create_external_missing_credentials_and_portal_denied",
            Deny(&[
                ("spec.bootVolume.iscsiCredentialsName", REQUIRED),
                ("spec.bootVolume.iscsiTarget.portal", REQUIRED),
            ]),
            Patched(|h| i_type(target_type(h))),
        ),
        (
            "create_external_missing_credentials_denied",
            Deny(&[
                ("spec.bmc.address", FORBIDDEN),
                ("spec.bootVolume.iscsiCredentialsName", REQUIRED),
                ("spec.bootVolume.volumeDriver", NOT_SUPPORTED),
            ]),
            Patched(|h| {
                i_type(target_type(h))
                    .set(&format!("{T}/portal"), json!("192.0.2.10:3260"))
                    .set(&format!("{T}/lun"), json!(0))
            }),
        ),
        (
            "create_external_ipv6_portal_denied",
            Deny(&[("spec.bootVolume.iscsiTarget.portal", INVALID)]),
            Patched(external_defaults),
        ),
        (
            "create_external_with_image_denied",
            Deny(&[("spec.bootVolume", FORBIDDEN)]),
            Patched(external_defaults),
        ),
        (
            "create_external_virtualmedia_bmc_denied",
            Deny(&[("spec.bmc.address", FORBIDDEN)]),
            Patched(external_defaults),
        ),
        (
            "create_external_many_errors_denied",
            Deny(&[
                ("spec.bootVolume.connectorId", INVALID),
                ("spec.bootVolume.iscsiTarget.iType", NOT_SUPPORTED),
                ("spec.bootVolume.iscsiTarget.lun", INVALID),
                ("spec.bootVolume.targetType", NOT_SUPPORTED),
                ("spec.bootVolume.volumeDriver", NOT_SUPPORTED),
            ]),
            Patched(chap_secret_ref),
        ),
        (
            "create_dry_run_denied",
            Deny(&[("spec.bootVolume.volumeDriver", NOT_SUPPORTED)]),
            Patched(external_defaults),
        ),
        (
            "create_object_not_readable_denied",
            Deny(&[("object", INVALID)]),
            Deny(&[("object", INVALID)]),
        ),
        (
            "create_object_missing_denied",
            Deny(&[("object", INVALID)]),
            Deny(&[("object", INVALID)]),
        ),
        ("create_other_kind_allowed", Allow, Allow),
        ("create_other_group_allowed", Allow, Allow),
        (
            "update_provisioned_lun_change_denied",
            Deny(&[("spec.bootVolume.iscsiTarget.lun", FORBIDDEN)]),
            Patched(external_defaults),
        ),
        (
            "update_provisioned_add_bootvolume_denied",
            Deny(&[("spec.bootVolume", FORBIDDEN)]),
            Patched(external_defaults),
        ),
        ("update_provisioned_remove_bootvolume_allowed", Allow, Allow),
        (
            "update_detached_lun_change_allowed",
            Allow,
            Patched(external_defaults),
        ),
        // The reconciler's hand-over patch: bootVolume unchanged, so /mutate leaves it alone.
        ("update_available_externally_provisioned_allowed", Allow, Allow),
        (
            "update_ready_lun_change_allowed",
            Allow,
            Patched(external_defaults),
        ),
        // The stored host is invalid (a rule added later), the operator only adds a
        // finalizer: neither webhook may block or touch it.
        ("update_unrelated_change_ratchet_allowed", Allow, Allow),
        ("update_deleting_allowed", Allow, Allow),
        (
            "update_operator_drops_bootvolume_preserved",
            Allow,
            Patched(|h| {
                let old = h.0["metadata"].clone();
                external_defaults(Host::external())
                    .set("/metadata", old)
                    .set("/status", json!({"provisioning": {"state": "provisioned", "ID": "3c0b5b0e-0a3e-4b1e-9d2f-1a2b3c4d5e6f"}, "operationalStatus": "OK"}))
            }),
        ),
        ("update_user_drops_bootvolume_allowed", Allow, Allow),
        ("delete_allowed", Allow, Allow),
    ]
}

fn sorted_causes(response: &Value) -> Vec<(String, String)> {
    let mut causes: Vec<(String, String)> = response["status"]["details"]["causes"]
        .as_array()
        .expect("details.causes is an array")
        .iter()
        .map(|c| {
            assert!(
                c["message"].as_str().is_some_and(|m| !m.is_empty()),
                "cause without message: {c}"
            );
            (
                c["field"].as_str().expect("cause.field").to_owned(),
                c["reason"].as_str().expect("cause.reason").to_owned(),
            )
        })
        .collect();
    causes.sort();
    causes
}

/// The parts of the contract every response must honour.
fn check_envelope(case: &str, webhook: &str, review: &Value, request: &Value) -> Value {
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{case} {webhook}");
    assert_eq!(review["kind"], "AdmissionReview", "{case} {webhook}");
    let response = review["response"].clone();
    assert_eq!(
        response["uid"], request["request"]["uid"],
        "{case} {webhook}: uid echoed"
    );
    assert_eq!(
        response.get("patch").is_some(),
        response.get("patchType").is_some(),
        "{case} {webhook}: patch and patchType go together"
    );
    if let Some(warnings) = response.get("warnings") {
        for w in warnings.as_array().expect("warnings array") {
            let w = w.as_str().expect("warning string");
            assert!(
                w.chars().count() < 120 && !w.contains('\n') && !w.is_empty(),
                "{case} {webhook}: bad warning {w:?}"
            );
        }
    }
    response
}

fn check_want(case: &str, webhook: &str, want: &Want, request: &Value, response: &Value) {
    let annotations = &response["auditAnnotations"];
    match want {
        Want::Allow => {
            assert_eq!(response["allowed"], true, "{case} {webhook}: {response}");
            assert!(
                response.get("patch").is_none(),
                "{case} {webhook}: unexpected patch"
            );
            assert!(response.get("status").is_none(), "{case} {webhook}");
            assert_eq!(annotations["decision"], "allowed", "{case} {webhook}");
        }
        Want::Deny(causes) => {
            assert_eq!(response["allowed"], false, "{case} {webhook}: {response}");
            assert!(
                response.get("patch").is_none(),
                "{case} {webhook}: denial with a patch"
            );
            let status = &response["status"];
            assert_eq!(status["code"], 422, "{case} {webhook}");
            assert_eq!(status["reason"], "Invalid", "{case} {webhook}");
            assert_eq!(status["status"], "Failure", "{case} {webhook}");
            let want: Vec<(String, String)> = causes
                .iter()
                .map(|(f, r)| ((*f).to_owned(), (*r).to_owned()))
                .collect();
            assert_eq!(sorted_causes(response), want, "{case} {webhook}");
            // One error bare, several as [e1, e2, ...], each naming its field.
            let message = status["message"].as_str().expect("status.message");
            assert_eq!(message.starts_with('['), causes.len() > 1, "{case}: {message}");
            for (field, _) in *causes {
                assert!(message.contains(&format!("{field}: ")), "{case}: {message}");
            }
            assert_eq!(annotations["decision"], "denied", "{case} {webhook}");
            let mut violations: Vec<&str> = annotations["violations"]
                .as_str()
                .expect("violations annotation")
                .split(',')
                .collect();
            violations.sort_unstable();
            let mut fields: Vec<&str> = causes.iter().map(|(f, _)| *f).collect();
            fields.dedup();
            assert_eq!(violations, fields, "{case} {webhook}");
        }
        Want::Patched(expect) => {
            assert_eq!(response["allowed"], true, "{case} {webhook}: {response}");
            assert_eq!(response["patchType"], "JSONPatch", "{case} {webhook}");
            assert_eq!(annotations["decision"], "mutated", "{case} {webhook}");
            let patch = decode_patch(response).expect("a patch");
            assert!(!patch.0.is_empty(), "{case}: empty patch sent");
            for op in patch.iter() {
                let path = op.path().to_string();
                assert!(
                    path == "/spec/bootVolume" || path.starts_with("/spec/bootVolume/"),
                    "{case}: patch touches {path}"
                );
            }
            let object = &request["request"]["object"];
            let patched = apply_patch(object, response);
            assert_eq!(patched, expect(Host(object.clone())).0, "{case}: patched object");
        }
    }
}

/// Every fixture through both webhooks, plus the same request as dry-run, plus the
/// invariants that tie the webhooks together (the patch is idempotent and `/validate`
/// decides the same on the mutated object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_through_both_webhooks() {
    let server = TestServer::start().await;
    let client = server.client();
    for (case, want_validate, want_mutate) in cases() {
        let request = admission_fixture(case);
        for (path, want) in [("/validate", &want_validate), ("/mutate", &want_mutate)] {
            let review = server.review(&client, path, &request).await;
            let response = check_envelope(case, path, &review, &request);
            if path == "/validate" {
                assert!(
                    response.get("patch").is_none(),
                    "{case}: /validate returned a patch"
                );
                assert!(response.get("patchType").is_none(), "{case}: /validate patchType");
            }
            check_want(case, path, want, &request, &response);

            // Dry-run requests are decided the same way.
            let mut dry = request.clone();
            let flipped = !dry["request"]["dryRun"].as_bool().unwrap_or(false);
            dry["request"]["dryRun"] = json!(flipped);
            dry["request"]["uid"] = json!(format!("{}-dry", request["request"]["uid"].as_str().unwrap()));
            let dry_review = server.review(&client, path, &dry).await;
            let mut dry_response = dry_review["response"].clone();
            assert_eq!(dry_response["uid"], dry["request"]["uid"], "{case}: dry-run uid");
            dry_response["uid"] = response["uid"].clone();
            assert_eq!(
                dry_response, response,
                "{case} {path}: dryRun={flipped} decides differently"
            );

            // Mutating webhooks run before validating ones: the mutated object must be
            // decided the same, and mutating it again must be a no-op.
            if let Want::Patched(_) = want {
                let mut mutated = request.clone();
                mutated["request"]["object"] = apply_patch(&request["request"]["object"], &response);
                let again = server.review(&client, "/mutate", &mutated).await;
                assert!(
                    again["response"].get("patch").is_none(),
                    "{case}: mutation is not idempotent: {}",
                    again["response"]
                );
                let v1 = server.review(&client, "/validate", &request).await["response"].clone();
                let v2 = server.review(&client, "/validate", &mutated).await["response"].clone();
                assert_eq!(
                    v1["allowed"], v2["allowed"],
                    "{case}: /validate after /mutate: {v2}"
                );
                if v1["allowed"] == false {
                    assert_eq!(sorted_causes(&v1), sorted_causes(&v2), "{case}");
                }
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn warnings_are_returned_with_the_allowance() {
    let server = TestServer::start().await;
    let request = admission_fixture("create_external_with_warnings_allowed");
    let review = server.review(&server.client(), "/validate", &request).await;
    let warnings = review["response"]["warnings"]
        .as_array()
        .expect("warnings")
        .clone();
    // Upper-case connectorId and iqn, rootDeviceHints, raid, userData, networkData,
    // metaData, empty bootMACAddress.
    assert_eq!(warnings.len(), 8, "{warnings:?}");
    for field in [
        "spec.bootVolume.connectorId",
        "spec.bootVolume.iscsiTarget.iqn",
        "spec.rootDeviceHints",
        "spec.raid",
        "spec.userData",
        "spec.networkData",
        "spec.metaData",
        "spec.bootMACAddress",
    ] {
        assert!(
            warnings.iter().any(|w| w.as_str().unwrap().starts_with(field)),
            "no warning for {field}: {warnings:?}"
        );
    }
    server.stop().await;
}

/// The preserve rule only applies to `--preserve-for` users, and the patch re-adds the
/// block even when the operator's object has no `spec` at all.
#[tokio::test]
async fn preserve_restores_bootvolume_for_the_operator_only() {
    let server = TestServer::start().await;
    let client = server.client();
    let base = admission_fixture("update_operator_drops_bootvolume_preserved");
    let old = base["request"]["oldObject"].clone();
    for (user, spec_present, restored) in [
        (BMO, true, true),
        (BMO, false, true),
        ("alice", true, false),
        ("system:serviceaccount:other:other", true, false),
    ] {
        let mut request = base.clone();
        request["request"]["userInfo"]["username"] = json!(user);
        if !spec_present {
            request["request"]["object"]
                .as_object_mut()
                .unwrap()
                .remove("spec");
        }
        let response = server.review(&client, "/mutate", &request).await["response"].clone();
        assert_eq!(response["allowed"], true);
        let patched = apply_patch(&request["request"]["object"], &response);
        if restored {
            let mut want = old["spec"]["bootVolume"].clone();
            let defaults = external_defaults(Host(json!({"spec": {"bootVolume": want.clone()}})));
            want = defaults.0["spec"]["bootVolume"].clone();
            assert_eq!(patched["spec"]["bootVolume"], want, "{user} spec={spec_present}");
        } else {
            assert!(response.get("patch").is_none(), "{user}: {response}");
        }
    }
    server.stop().await;
}

/// Malformed requests: a 400 (413 for size) with a JSON `Status` body, never a hang.
#[tokio::test]
async fn malformed_requests_get_a_json_error() {
    let server = TestServer::start().await;
    let client = server.client();
    let valid = admission_fixture("create_external_valid_allowed");
    let mut wrong_version = valid.clone();
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut wrong_kind = valid.clone();
    wrong_kind["kind"] = json!("TokenReview");
    let mut no_request = valid.clone();
    no_request.as_object_mut().unwrap().remove("request");
    let mut null_request = valid.clone();
    null_request["request"] = Value::Null;
    let mut no_uid = valid.clone();
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let json_body = |v: &Value| serde_json::to_vec(v).unwrap();
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("not_json", "application/json", b"{not json".to_vec(), 400),
        ("empty_body", "application/json", Vec::new(), 400),
        ("json_array", "application/json", b"[1,2,3]".to_vec(), 400),
        (
            "json_not_review",
            "application/json",
            br#"{"hello":"world"}"#.to_vec(),
            400,
        ),
        (
            "wrong_api_version",
            "application/json",
            json_body(&wrong_version),
            400,
        ),
        ("wrong_kind", "application/json", json_body(&wrong_kind), 400),
        ("missing_request", "application/json", json_body(&no_request), 400),
        ("null_request", "application/json", json_body(&null_request), 400),
        ("request_without_uid", "application/json", json_body(&no_uid), 400),
        ("wrong_content_type", "text/plain", json_body(&valid), 400),
        ("yaml_content_type", "application/yaml", json_body(&valid), 400),
        (
            "json_with_charset",
            "application/json; charset=utf-8",
            json_body(&valid),
            200,
        ),
    ];
    for path in ["/validate", "/mutate"] {
        for (case, content_type, body, want) in &cases {
            let (status, body) = server.post_bytes(&client, path, content_type, body.clone()).await;
            assert_eq!(status, *want, "{case} {path}: {body}");
            if *want == 400 {
                assert_eq!(body["kind"], "Status", "{case} {path}: JSON error body: {body}");
                assert_eq!(body["code"], 400, "{case} {path}");
                assert!(
                    body["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{case} {path}: {body}"
                );
            }
        }
    }
    // Wrong method and unknown path.
    let resp = bounded("GET /validate", client.get(server.url("/validate")).send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let resp = bounded("POST /nope", client.post(server.url("/nope")).send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // The server still answers afterwards.
    let review = server.review(&client, "/validate", &valid).await;
    assert_eq!(review["response"]["allowed"], true);
    server.stop().await;
}

/// A review with a big `status.hardware`, padded to `size` bytes of JSON.
fn padded_review(size: usize) -> Vec<u8> {
    let mut review = admission_fixture("create_external_valid_allowed");
    let base = serde_json::to_vec(&review).unwrap().len();
    let nics = (size - base) / 100;
    let nic = |i: usize| json!({"name": format!("eth{i:06}"), "mac": "00:11:22:33:44:55", "ip": "192.0.2.1", "speedGbps": 25, "pxe": false});
    review["request"]["object"]["status"] =
        json!({"hardware": {"nics": (0..nics).map(nic).collect::<Vec<_>>()}});
    let mut bytes = serde_json::to_vec(&review).unwrap();
    // Pad with whitespace to exactly `size` (JSON ignores it).
    assert!(bytes.len() <= size, "{} > {size}", bytes.len());
    bytes.resize(size, b' ');
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_size_limit() {
    const MIB: usize = 1024 * 1024;
    let server = TestServer::start().await;
    let client = server.client();
    // Just under the API server's own 3 MiB limit: accepted and decided.
    let body = padded_review(3 * MIB - 1024);
    let (status, review) = server
        .post_bytes(&client, "/validate", "application/json", body)
        .await;
    assert_eq!(status, 200, "{review}");
    assert_eq!(review["response"]["allowed"], true);

    // 4 MiB announced with `Expect: 100-continue`: a 413 with a JSON body, before any of
    // the body is sent.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = raw_tls(&server).await;
        let head = format!(
            "POST /validate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            common::SERVICE_NAME,
            4 * MIB
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        let mut response = Vec::new();
        let _ = bounded("413 response", tls.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(body["code"], 413, "{body}");
        assert_eq!(body["kind"], "Status", "{body}");
    }

    // 4 MiB sent right away (no Expect): never a 200 and never a hang. The 413 may be lost
    // when the server closes the connection while the client is still sending.
    let sent = bounded(
        "4 MiB POST",
        client
            .post(server.url("/validate"))
            .header("content-type", "application/json")
            .body(vec![b' '; 4 * MIB])
            .send(),
    )
    .await;
    if let Ok(resp) = sent {
        assert_eq!(resp.status(), 413);
        let body: Value = bounded("413 body", resp.json()).await.expect("JSON error body");
        assert_eq!(body["code"], 413, "{body}");
    }
    let client = server.client();
    // The server still answers.
    let review = server
        .review(
            &client,
            "/validate",
            &admission_fixture("create_external_valid_allowed"),
        )
        .await;
    assert_eq!(review["response"]["allowed"], true);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_all_answered_correctly() {
    let server = Arc::new(TestServer::start().await);
    let client = server.client();
    let fixtures = [
        ("create_external_valid_allowed", true),
        ("create_dry_run_denied", false),
        ("create_cinder_with_portal_denied", false),
        ("update_provisioned_remove_bootvolume_allowed", true),
    ];
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (server, client) = (server.clone(), client.clone());
        let (case, allowed) = fixtures[i % fixtures.len()];
        tasks.push(tokio::spawn(async move {
            let mut request = admission_fixture(case);
            let uid = format!("concurrent-{i}");
            request["request"]["uid"] = json!(uid);
            let path = if i % 2 == 0 { "/validate" } else { "/mutate" };
            let review = server.review(&client, path, &request).await;
            assert_eq!(review["response"]["uid"], uid.as_str());
            if path == "/validate" {
                assert_eq!(review["response"]["allowed"], allowed, "{case}");
            }
        }));
    }
    for t in tasks {
        bounded("concurrent request", t).await.expect("request task");
    }
    let text = server.scrape().await;
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("bootvolume_admission_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 64.0, "{text}");
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn() {
    let server = TestServer::start().await;
    let request = admission_fixture("create_dry_run_denied");
    for (client, version) in [
        (server.h2_client(), reqwest::Version::HTTP_2),
        (server.client(), reqwest::Version::HTTP_11),
    ] {
        let resp = bounded("POST", client.post(server.url("/validate")).json(&request).send())
            .await
            .unwrap();
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        let review: Value = resp.json().await.unwrap();
        assert_eq!(review["response"]["allowed"], false);
        assert_eq!(review["response"]["status"]["code"], 422);
    }
    server.stop().await;
}

#[tokio::test]
async fn probes_on_both_listeners_and_metrics_only_on_the_plain_one() {
    let server = TestServer::start().await;
    let tls = server.client();
    let plain = common::plain_client();
    for path in ["/healthz", "/readyz"] {
        let r = bounded(path, tls.get(server.url(path)).send()).await.unwrap();
        assert_eq!(r.status(), 200, "https {path}");
        let r = bounded(path, plain.get(server.metrics_url(path)).send())
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "http {path}");
    }
    let r = bounded("metrics", tls.get(server.url("/metrics")).send())
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "/metrics is not served on the webhook port");
    let r = bounded("metrics", plain.get(server.metrics_url("/metrics")).send())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("bootvolume_tls_certificate_expiry_timestamp_seconds "),
        "certificate expiry gauge missing:\n{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_webhook_operation_and_decision() {
    let server = TestServer::start().await;
    let client = server.client();
    let series = |w: &str, op: &str, d: &str| {
        format!(r#"bootvolume_admission_requests_total{{webhook="{w}",operation="{op}",decision="{d}"}}"#)
    };
    let before = server.scrape().await;
    let denied = admission_fixture("create_dry_run_denied");
    for _ in 0..3 {
        server.review(&client, "/validate", &denied).await;
    }
    server
        .review(
            &client,
            "/mutate",
            &admission_fixture("create_external_valid_allowed"),
        )
        .await;
    server
        .review(&client, "/validate", &admission_fixture("delete_allowed"))
        .await;
    server
        .post_bytes(&client, "/validate", "application/json", b"nope".to_vec())
        .await;
    let after = server.scrape().await;
    for (s, n) in [
        (series("validate", "CREATE", "denied"), 3.0),
        (series("mutate", "CREATE", "mutated"), 1.0),
        (series("validate", "DELETE", "allowed"), 1.0),
        (series("validate", "unknown", "error"), 1.0),
    ] {
        assert_eq!(
            metric_value(&after, &s) - metric_value(&before, &s),
            n,
            "{s}\n{after}"
        );
    }
    assert!(
        metric_value(
            &after,
            r#"bootvolume_admission_duration_seconds_count{webhook="validate"}"#
        ) >= 4.0,
        "{after}"
    );
    let expiry = metric_value(&after, "bootvolume_tls_certificate_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "certificate expiry {expiry} not in the future");
    server.stop().await;
}

/// A raw HTTP/1.1-over-TLS connection to the server, verifying the CA.
async fn raw_tls(server: &TestServer) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&server.ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(common::SERVICE_NAME).unwrap();
    bounded("TLS handshake", connector.connect(name, tcp))
        .await
        .unwrap()
}

/// Sends a request's headers with `Expect: 100-continue` over a raw TLS connection and
/// returns the stream once the server asked for the body (so the request is in flight).
async fn start_slow_request(
    server: &TestServer,
    body_len: usize,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = raw_tls(server).await;
    let head = format!(
        "POST /validate?timeout=10s HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {body_len}\r\nExpect: 100-continue\r\n\r\n",
        common::SERVICE_NAME
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let n = bounded("100 Continue", tls.read(&mut buf)).await.unwrap();
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(got.starts_with("HTTP/1.1 100 Continue"), "{got}");
    tls
}

use rustls::pki_types::pem::PemObject as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_and_refuses_new_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start().await;
    let body = serde_json::to_vec(&admission_fixture("create_dry_run_denied")).unwrap();
    let mut tls = start_slow_request(&server, body.len()).await;
    // Half the body, then shutdown.
    let (first, rest) = body.split_at(body.len() / 2);
    tls.write_all(first).await.unwrap();
    tls.flush().await.unwrap();
    server.trigger_shutdown();

    // New connections are refused once shutdown started (the listener is closed).
    let addr = server.addr;
    poll_until("listener closed", Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    // While draining, the metrics listener reports not ready.
    let plain = common::plain_client();
    let ready = bounded("readyz", plain.get(server.metrics_url("/readyz")).send())
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    // The in-flight request completes normally.
    tls.write_all(rest).await.unwrap();
    tls.flush().await.unwrap();
    let mut response = Vec::new();
    bounded("in-flight response", tls.read_to_end(&mut response))
        .await
        .ok();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    let json_start = text.find("\r\n\r\n").expect("headers end") + 4;
    let review: Value = serde_json::from_str(&text[json_start..]).expect("review JSON");
    assert_eq!(review["response"]["allowed"], false);
    assert_eq!(review["response"]["uid"], "uid-create-dry-run-denied");

    server.join().await;
    assert!(tokio::net::TcpStream::connect(server.metrics_addr).await.is_err());
}
