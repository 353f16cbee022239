//! Ironic over TLS, live: `ironic-apply` and the reconciler's Ironic client against the
//! real Ironic behind a TLS-terminating proxy (tests/ironic_support/tls_proxy.rs), with
//! `--ironic-ca-file`. The CA that issued the proxy's certificate works; another CA fails
//! with an error that names the certificate problem; nothing ever falls back to plain HTTP
//! (no plaintext connection reaches the proxy, and a redirect to `http://` is refused).
//!
//! Run with `scripts/with-ironic.sh cargo test --test ironic_tls`.

mod ironic_support;

use bootvolume::reconcile::{
    apply::{HostSpec, apply},
    cli::IronicArgs,
};
use ironic_support::{
    tls_proxy::{Mode, TlsProxy},
    *,
};
use serde_json::json;
use std::path::Path;

const PASSWORD: &str = "Tls-live-chap-secret";

/// The reconciler builds its Ironic client from these flags (`reconcile` and
/// `ironic-apply` share them).
fn reconciler_client(url: &str, ca: &Path) -> bootvolume::ironic::IronicClient {
    IronicArgs {
        ironic_url: url.to_owned(),
        ironic_username_file: None,
        ironic_password_file: None,
        ironic_ca_file: Some(ca.to_owned()),
        ironic_timeout: 10,
        ironic_max_in_flight: bootvolume::ironic::DEFAULT_MAX_IN_FLIGHT,
    }
    .client()
    .expect("client")
}

/// A CA that did not issue the proxy's certificate.
fn other_ca() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = bootvolume::tls::generate(dir.path(), &["localhost".into()]).expect("certs");
    (dir, certs.ca)
}

/// What a certificate failure must say: where, and that it is about the certificate.
fn assert_clear_tls_error(text: &str, url: &str) {
    assert!(text.contains(&format!("cannot reach Ironic at {url}")), "{text}");
    // rustls' verdict: UnknownIssuer, or BadSignature when the other CA has the same name.
    assert!(
        text.contains("invalid peer certificate"),
        "the error should name the untrusted certificate: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ironic_apply_over_tls_trusts_the_given_ca_and_only_it() {
    let plain = client();
    let proxy = TlsProxy::start(&ironic().url, Mode::Forward).await;
    let ca = proxy.ca_file.to_string_lossy().into_owned();

    // Trusted CA: configures the node through TLS, then an in-sync pass.
    let p = HostParams::new(&unique_namespace());
    let uuid = enroll(&plain, &p.ns, json!({})).await;
    let (_dir, file) = manifest(&[p.host(), secret(&p.ns, "chap", "chapuser", PASSWORD)]);
    let first = ironic_apply(&file, &proxy.url, &["--ironic-ca-file", &ca]);
    assert_eq!(first.code, 0, "{}", first.all());
    assert_eq!(first.stdout.matches(": did ").count(), 3, "{}", first.all());
    let (cs, ts) = volumes(&plain, &uuid).await;
    assert_eq!((cs.len(), ts.len()), (1, 1), "configured through the proxy");
    let second = ironic_apply(&file, &proxy.url, &["--ironic-ca-file", &ca]);
    assert_eq!(second.code, 0, "{}", second.all());
    assert!(second.stdout.contains("in sync"), "{}", second.all());
    let (tls, failures, plaintext, served) = proxy.counts();
    assert!(
        tls >= 2 && served >= 2,
        "requests went through TLS: {:?}",
        proxy.counts()
    );
    assert_eq!((failures, plaintext), (0, 0));

    // Another CA: a clear error, nothing written, no plain-HTTP retry.
    let (_other_dir, other) = other_ca();
    let q = HostParams::new(&unique_namespace());
    let quuid = enroll(&plain, &q.ns, json!({})).await;
    let (_dir2, file2) = manifest(&[q.host(), secret(&q.ns, "chap", "chapuser", PASSWORD)]);
    let before = write_stamps(&plain, &quuid).await;
    let denied = ironic_apply(
        &file2,
        &proxy.url,
        &["--ironic-ca-file", &other.to_string_lossy()],
    );
    assert_ne!(denied.code, 0, "{}", denied.all());
    assert_clear_tls_error(&denied.stderr, &proxy.url);
    assert!(
        !denied.all().contains(PASSWORD),
        "password leaked:\n{}",
        denied.all()
    );
    assert_eq!(
        write_stamps(&plain, &quuid).await,
        before,
        "nothing reached Ironic"
    );
    let (_, failures, plaintext, _) = proxy.counts();
    assert!(failures >= 1, "the handshake was refused: {:?}", proxy.counts());
    assert_eq!(plaintext, 0, "no fallback to plain HTTP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_client_over_tls_applies_and_refuses_an_untrusted_certificate() {
    let plain = client();
    let proxy = TlsProxy::start(&ironic().url, Mode::Forward).await;
    let p = HostParams {
        secret: None,
        ..HostParams::new(&unique_namespace())
    };
    let uuid = enroll(&plain, &p.ns, json!({})).await;
    let host = HostSpec::from_value(&p.host()).expect("host");
    let desired = host.desired(None).expect("desired");

    let c = reconciler_client(&proxy.url, &proxy.ca_file);
    let first = apply(&c, &host, desired.as_ref(), false)
        .await
        .expect("apply over TLS");
    assert_eq!(first.changes.len(), 3, "{first:?}");
    assert!(
        apply(&c, &host, desired.as_ref(), false)
            .await
            .expect("in sync")
            .in_sync()
    );
    assert_eq!(node(&plain, &uuid).await["storage_interface"], "external");

    let (_dir, other) = other_ca();
    let q = HostParams {
        secret: None,
        ..HostParams::new(&unique_namespace())
    };
    let quuid = enroll(&plain, &q.ns, json!({})).await;
    let qhost = HostSpec::from_value(&q.host()).expect("host");
    let before = write_stamps(&plain, &quuid).await;
    let untrusted = reconciler_client(&proxy.url, &other);
    let err = apply(
        &untrusted,
        &qhost,
        qhost.desired(None).expect("desired").as_ref(),
        false,
    )
    .await
    .expect_err("an untrusted certificate must fail");
    assert_clear_tls_error(&err.to_string(), &proxy.url);
    assert_eq!(write_stamps(&plain, &quuid).await, before);
    assert_eq!(proxy.counts().2, 0, "no fallback to plain HTTP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_plain_http_is_not_followed() {
    let plain = client();
    let proxy = TlsProxy::start(&ironic().url, Mode::RedirectToPlainHttp).await;
    let p = HostParams {
        secret: None,
        ..HostParams::new(&unique_namespace())
    };
    let uuid = enroll(&plain, &p.ns, json!({})).await;
    let host = HostSpec::from_value(&p.host()).expect("host");
    let before = write_stamps(&plain, &uuid).await;
    let c = reconciler_client(&proxy.url, &proxy.ca_file);
    let err = apply(&c, &host, host.desired(None).expect("desired").as_ref(), false)
        .await
        .expect_err("a downgrade redirect must fail");
    let text = err.to_string();
    assert!(
        text.contains(&format!("cannot reach Ironic at {}", proxy.url)),
        "{text}"
    );
    assert!(proxy.counts().3 >= 1, "the proxy answered with the redirect");
    assert_eq!(
        write_stamps(&plain, &uuid).await,
        before,
        "nothing reached Ironic over HTTP"
    );
    assert_eq!(node(&plain, &uuid).await["storage_interface"], "noop");
}
