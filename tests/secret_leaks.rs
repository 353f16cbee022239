//! A CHAP password sent to the webhook or given to `check` appears nowhere: not in a
//! response body, a log line (every level, JSON like `--log-format json`), the metrics, or
//! `check`'s stdout/stderr.

mod common;

use bootvolume::{fixtures::Host, rules::Policy};
use common::{Options, TestServer};
use serde_json::{Value, json};
use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

const SECRET: &str = "Sup3r-S3cret-CHAP-pw";

/// Every log line of this test binary.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_writer(move || Sink(sink.clone()))
            .try_init()
            .expect("the only subscriber in this test binary");
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn review(uid: &str, operation: &str, object: Value, old: Option<Value>, user: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "metal3.io", "version": "v1alpha1", "kind": "BareMetalHost"},
            "resource": {"group": "metal3.io", "version": "v1alpha1", "resource": "baremetalhosts"},
            "name": "host-0", "namespace": "metal3", "operation": operation,
            "userInfo": {"username": user},
            "object": object, "oldObject": old, "dryRun": false
        }
    })
}

/// Requests carrying the password in every place it could be echoed from.
fn requests() -> Vec<(&'static str, Vec<u8>)> {
    let t = "/spec/bootVolume/iscsiTarget";
    let inline = Host::external()
        .remove("/spec/bootVolume/iscsiCredentialsName")
        .set(&format!("{t}/authUser"), json!("chap-user"))
        .set(&format!("{t}/authPasswd"), json!(SECRET));
    let provisioned = inline.clone().in_state("provisioned");
    let mut bodies = vec![
        (
            "inline",
            review("leak-inline", "CREATE", inline.0.clone(), None, "alice"),
        ),
        (
            "wrong_type_object",
            review(
                "leak-object",
                "CREATE",
                inline
                    .clone()
                    .set(&format!("{t}/authPasswd"), json!({"value": SECRET}))
                    .0,
                None,
                "alice",
            ),
        ),
        (
            "wrong_type_array",
            review(
                "leak-array",
                "CREATE",
                inline
                    .clone()
                    .set(&format!("{t}/authPasswd"), json!([SECRET, 1]))
                    .0,
                None,
                "alice",
            ),
        ),
        (
            "password_with_other_errors",
            review(
                "leak-errors",
                "CREATE",
                inline
                    .clone()
                    .set("/spec/bootVolume/volumeDriver", json!("noop"))
                    .set(&format!("{t}/authMethod"), json!("None"))
                    .set(&format!("{t}/lun"), json!(-1))
                    .0,
                None,
                "alice",
            ),
        ),
        (
            "locked_password_change",
            review(
                "leak-lock",
                "UPDATE",
                provisioned
                    .clone()
                    .set(&format!("{t}/authPasswd"), json!("other-password"))
                    .0,
                Some(provisioned.0.clone()),
                "alice",
            ),
        ),
        (
            "user_drops_block",
            review(
                "leak-drop",
                "UPDATE",
                Host::plain().in_state("provisioned").0,
                Some(provisioned.0.clone()),
                "alice",
            ),
        ),
    ];
    // Malformed reviews carrying the password in their object. (A client that puts it in
    // a review field such as apiVersion gets its own value back in the 400: not covered.)
    let mut wrong_version = bodies[0].1.clone();
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    bodies.push(("wrong_api_version", wrong_version));
    let mut bad_dry_run = bodies[0].1.clone();
    bad_dry_run["request"]["dryRun"] = json!("yes");
    bodies.push(("dry_run_not_bool", bad_dry_run));
    let mut out: Vec<(&str, Vec<u8>)> = bodies
        .into_iter()
        .map(|(n, v)| (n, serde_json::to_vec(&v).unwrap()))
        .collect();
    let full = out[0].1.clone();
    let cut = String::from_utf8(full).unwrap();
    let cut = &cut[..cut.find(SECRET).unwrap() + SECRET.len()];
    out.push(("truncated_after_password", cut.as_bytes().to_vec()));
    out
}

fn assert_clean(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "password leaked in {what}:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_never_echoes_the_password() {
    let logs = logs();
    for allow_inline_chap in [false, true] {
        let server = TestServer::start_with(Options {
            policy: Policy {
                allow_inline_chap,
                ..Policy::default()
            },
            ..Options::default()
        })
        .await;
        let client = server.client();
        for (case, body) in requests() {
            for path in ["/validate", "/mutate"] {
                let resp = common::bounded(
                    case,
                    client
                        .post(server.url(path))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send(),
                )
                .await
                .unwrap();
                let status = resp.status();
                let text = resp.text().await.unwrap();
                let what = format!("{case} {path} inline={allow_inline_chap} ({status})");
                assert_clean(&what, &text);
                // The patch is base64: look inside too. Only the preserve rule may carry the
                // password (it restores the stored block), and no case here triggers it.
                if let Ok(review) = serde_json::from_str::<Value>(&text)
                    && let Some(patch) = common::decode_patch(&review["response"])
                {
                    assert_clean(&format!("{what} patch"), &serde_json::to_string(&patch).unwrap());
                }
            }
        }
        assert_clean("metrics", &server.scrape().await);
        server.stop().await;
    }
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    // The capture works: the audit lines of these requests are there.
    assert!(
        text.contains("leak-inline") && text.contains("leak-lock"),
        "{text}"
    );
    assert!(text.contains("rejected malformed admission request"), "{text}");
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert_clean("log line", line);
    }
}

#[test]
fn check_never_prints_the_password() {
    let files = [
        common::fixture_path("hosts", "inline_chap_secret.yaml"),
        common::fixture_path("hosts", "multi_doc_with_secret.yaml"),
        common::fixture_path("hosts", "yaml_syntax_error_near_secret.yaml"),
    ];
    for file in &files {
        assert!(
            std::fs::read_to_string(file).unwrap().contains(SECRET),
            "{} must contain the password",
            file.display()
        );
    }
    for inline in [false, true] {
        for mode in [&[][..], &["--output", "json"][..], &["--mutate"][..]] {
            for file in &files {
                let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bootvolume"));
                cmd.arg("--log-level")
                    .arg("trace")
                    .arg("check")
                    .args(mode)
                    .arg(file);
                if inline {
                    cmd.arg("--allow-inline-chap");
                }
                let out = cmd.output().expect("run check");
                let what = format!("check {mode:?} inline={inline} {}", file.display());
                assert!(out.status.code().is_some_and(|c| c > 0), "{what}");
                assert_clean(&format!("{what} stdout"), &String::from_utf8_lossy(&out.stdout));
                assert_clean(&format!("{what} stderr"), &String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}
