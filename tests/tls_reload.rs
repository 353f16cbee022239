//! Serving certificate hot reload: rotated files are served to new connections, broken
//! files are counted and the old pair keeps serving, and a Kubernetes Secret volume's
//! `..data` symlink swap is picked up.

mod common;

use common::{Options, TestServer, bounded, client_builder, poll_until};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

const RELOAD: Duration = Duration::from_millis(200);
/// Several poll intervals, bounded well under the 10 s the webhook promises.
const DEADLINE: Duration = Duration::from_secs(5);

/// The serial and DNS SANs of a leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Served {
    serial: Vec<u8>,
    sans: Vec<String>,
}

fn describe(der: &[u8]) -> Served {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("leaf parses");
    let sans = cert
        .subject_alternative_name()
        .expect("SAN extension")
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Served {
        serial: cert.raw_serial().to_vec(),
        sans,
    }
}

/// The certificate a new connection gets, trusting every CA in `cas`.
async fn served(server: &TestServer, cas: &[&[u8]]) -> Served {
    let mut builder = client_builder(cas[0], server.addr)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .http1_only();
    for ca in &cas[1..] {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap());
    }
    let client = builder.build().expect("client");
    let resp = bounded("GET /healthz", client.get(server.url("/healthz")).send())
        .await
        .expect("TLS connection with a trusted certificate");
    assert_eq!(resp.status(), 200);
    let info = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    describe(info.peer_certificate().expect("peer certificate"))
}

/// A fresh CA + serving pair in `dir`, for the Service name and `extra_san`.
fn new_pair(dir: &Path, extra_san: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let mut names = common::serving_names();
    names.push(extra_san.to_owned());
    let g = bootvolume::tls::generate(dir, &names).expect("generate");
    let ca = std::fs::read(&g.ca).unwrap();
    (g.cert, g.key, ca)
}

/// Replaces `to` with `from`'s contents through a rename (as cert-manager/kubelet do).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

fn reloads(server: &TestServer, result: &str) -> f64 {
    common::metric_value(
        &server.metrics.encode(),
        &format!(r#"bootvolume_tls_reloads_total{{result="{result}"}}"#),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca1) = new_pair(&dir.path().join("v1"), "v1.example");
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let (live_cert, live_key) = (live.join("tls.crt"), live.join("tls.key"));
    replace(&cert, &live_cert);
    replace(&key, &live_key);
    let server = TestServer::start_with(Options {
        reload_interval: RELOAD,
        cert_files: Some((live_cert.clone(), live_key.clone(), ca1.clone())),
        ..Options::default()
    })
    .await;
    let first = served(&server, &[&ca1]).await;
    assert!(first.sans.iter().any(|s| s == "v1.example"), "{first:?}");

    // Rotation: a new pair from another CA, with another SAN and serial.
    let (cert2, key2, ca2) = new_pair(&dir.path().join("v2"), "v2.example");
    replace(&cert2, &live_cert);
    replace(&key2, &live_key);
    let second = poll_until("rotated certificate served", DEADLINE, || async {
        let now = served(&server, &[&ca1, &ca2]).await;
        (now != first).then_some(now)
    })
    .await;
    assert!(second.sans.iter().any(|s| s == "v2.example"), "{second:?}");
    assert_ne!(second.serial, first.serial);
    assert!(reloads(&server, "success") >= 1.0);
    // A client that trusts only the new CA now connects.
    assert_eq!(served(&server, &[&ca2]).await, second);

    // Broken files: each is counted as a failure and the current pair keeps serving.
    let (cert3, _key3, _) = new_pair(&dir.path().join("v3"), "v3.example");
    let garbage_key = dir.path().join("garbage.key");
    std::fs::write(
        &garbage_key,
        b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let not_pem = dir.path().join("not-pem");
    std::fs::write(&not_pem, b"hello").unwrap();
    let (good_cert, good_key) = (dir.path().join("good.crt"), dir.path().join("good.key"));
    std::fs::copy(&cert2, &good_cert).unwrap();
    std::fs::copy(&key2, &good_key).unwrap();
    for (case, broken, target) in [
        ("garbage key", &garbage_key, &live_key),
        ("key that is not PEM", &not_pem, &live_key),
        ("certificate that does not match the key", &cert3, &live_cert),
        ("empty certificate file", &dir.path().join("empty"), &live_cert),
    ] {
        if !broken.exists() {
            std::fs::write(broken, b"").unwrap();
        }
        let before = reloads(&server, "failure");
        replace(broken, target);
        poll_until(case, DEADLINE, || async {
            (reloads(&server, "failure") > before).then_some(())
        })
        .await;
        assert_eq!(
            served(&server, &[&ca1, &ca2]).await,
            second,
            "{case}: old pair kept"
        );
        // Restore the good pair (identical to the served one) for the next case.
        replace(&good_cert, &live_cert);
        replace(&good_key, &live_key);
    }

    // After failures, a good new pair is still picked up.
    let (cert4, key4, ca4) = new_pair(&dir.path().join("v4"), "v4.example");
    replace(&cert4, &live_cert);
    replace(&key4, &live_key);
    let fourth = poll_until("recovered", DEADLINE, || async {
        let now = served(&server, &[&ca2, &ca4]).await;
        now.sans.iter().any(|s| s == "v4.example").then_some(now)
    })
    .await;
    assert_ne!(fourth.serial, second.serial);
    let text = server.scrape().await;
    assert!(
        text.contains(r#"bootvolume_tls_reloads_total{result="failure"}"#),
        "{text}"
    );
    server.stop().await;
}

/// The kubelet's Secret volume layout: `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>`,
/// updated by creating a new timestamped dir and renaming a new `..data` symlink over the old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_secret_volume_symlink_swap() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("volume");
    let (cert1, key1, ca1) = new_pair(
        &dir.path().join("..2026_11_30_03_00_00.000000001"),
        "first.example",
    );
    std::fs::create_dir(&vol).unwrap();
    let data1 = vol.join("..2026_11_30_03_00_00.000000001");
    std::fs::create_dir(&data1).unwrap();
    std::fs::copy(&cert1, data1.join("tls.crt")).unwrap();
    std::fs::copy(&key1, data1.join("tls.key")).unwrap();
    symlink("..2026_11_30_03_00_00.000000001", vol.join("..data")).unwrap();
    symlink("..data/tls.crt", vol.join("tls.crt")).unwrap();
    symlink("..data/tls.key", vol.join("tls.key")).unwrap();

    let server = TestServer::start_with(Options {
        reload_interval: RELOAD,
        cert_files: Some((vol.join("tls.crt"), vol.join("tls.key"), ca1.clone())),
        ..Options::default()
    })
    .await;
    let first = served(&server, &[&ca1]).await;
    assert!(first.sans.iter().any(|s| s == "first.example"));

    let (cert2, key2, ca2) = new_pair(&dir.path().join("second"), "second.example");
    let data2 = vol.join("..2026_11_30_04_00_00.000000002");
    std::fs::create_dir(&data2).unwrap();
    std::fs::copy(&cert2, data2.join("tls.crt")).unwrap();
    std::fs::copy(&key2, data2.join("tls.key")).unwrap();
    symlink("..2026_11_30_04_00_00.000000002", vol.join("..data_tmp")).unwrap();
    std::fs::rename(vol.join("..data_tmp"), vol.join("..data")).unwrap();
    std::fs::remove_dir_all(&data1).unwrap();

    let second = poll_until("certificate after ..data swap", DEADLINE, || async {
        let now = served(&server, &[&ca1, &ca2]).await;
        (now != first).then_some(now)
    })
    .await;
    assert!(second.sans.iter().any(|s| s == "second.example"), "{second:?}");
    assert_eq!(
        reloads(&server, "failure"),
        0.0,
        "an atomic swap never shows a torn pair"
    );
    server.stop().await;
}
