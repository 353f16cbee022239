//! `bootvolume ironic-apply` and `reconcile::apply` against a real Ironic 39.0.0.
//!
//! Run with `scripts/with-ironic.sh cargo test --test ironic_live` (see tests/ironic_support).

mod ironic_support;

use bootvolume::{
    ironic::Calls,
    reconcile::apply::{HostSpec, apply},
};
use ironic_support::*;
use serde_json::{Value, json};
use std::time::Duration;

const PASSWORD: &str = "Zq9-live-chap-secret";

/// Runs the real binary over a host and its Secret.
fn apply_cli(p: &HostParams, password: &str, extra: &[&str]) -> Run {
    let (_dir, file) = manifest(&[p.host(), secret(&p.ns, "chap", "chapuser", password)]);
    let run = ironic_apply(&file, &ironic().url, extra);
    assert!(!run.all().contains(password), "password leaked:\n{}", run.all());
    run
}

fn calls_line(run: &Run) -> &str {
    run.stderr
        .lines()
        .find(|l| l.contains("Ironic calls:"))
        .unwrap_or("")
}

#[tokio::test]
async fn first_apply_configures_the_node_and_second_pass_writes_nothing() {
    let c = client();
    let p = HostParams::new(&unique_namespace());
    let uuid = enroll(
        &c,
        &p.ns,
        json!({"properties": {"capabilities": "boot_mode:uefi"}}),
    )
    .await;

    let dry = apply_cli(&p, PASSWORD, &["--dry-run"]);
    assert_eq!(dry.code, 4, "{}", dry.all());
    assert!(dry.stdout.contains("would create volume target"), "{}", dry.all());
    assert!(
        write_stamps(&c, &uuid).await.iter().all(|s| s == "null"),
        "dry-run wrote"
    );

    let first = apply_cli(&p, PASSWORD, &[]);
    assert_eq!(first.code, 0, "{}", first.all());
    // Target, connector, and one node PATCH (the node is in `enroll`).
    assert_eq!(first.stdout.matches(": did ").count(), 3, "{}", first.all());
    assert!(
        first.stdout.contains("auth_password=<redacted>"),
        "{}",
        first.all()
    );
    assert!(
        calls_line(&first).contains("6 (3 GET, 2 POST, 1 PATCH, 0 PUT, 0 DELETE)"),
        "{}",
        first.all()
    );

    let n = node(&c, &uuid).await;
    assert_eq!(n["storage_interface"], "external");
    assert_eq!(n["properties"]["capabilities"], "boot_mode:uefi,iscsi_boot:True");
    let (cs, ts) = volumes(&c, &uuid).await;
    assert_eq!(cs.len(), 1);
    assert_eq!(
        (cs[0].kind.as_str(), cs[0].connector_id.as_str()),
        ("iqn", p.connector_id.as_str())
    );
    assert_eq!(ts.len(), 1);
    let t = &ts[0];
    assert_eq!((t.boot_index, t.volume_type.as_str()), (0, "iscsi"));
    assert_eq!(t.properties["target_lun"], json!(0), "LUN must be a JSON integer");
    assert_eq!(t.properties["target_portal"], "192.0.2.10:3260");
    assert_eq!(t.properties["auth_username"], "chapuser");
    assert_eq!(t.properties["auth_password"], "******", "Ironic masks it");

    let before = write_stamps(&c, &uuid).await;
    let second = apply_cli(&p, PASSWORD, &[]);
    assert_eq!(second.code, 0, "{}", second.all());
    assert!(second.stdout.contains("in sync"), "{}", second.all());
    assert!(
        calls_line(&second).contains("3 (3 GET, 0 POST, 0 PATCH, 0 PUT, 0 DELETE)"),
        "{}",
        second.all()
    );
    assert_eq!(
        write_stamps(&c, &uuid).await,
        before,
        "second pass changed Ironic"
    );
}

/// The same through the library, counting calls on the client.
#[tokio::test]
async fn call_counts_first_pass_in_sync_pass_and_unmanaged_host() {
    let c = client();
    let p = HostParams {
        secret: None,
        ..HostParams::new(&unique_namespace())
    };
    enroll(&c, &p.ns, json!({})).await;
    let host = HostSpec::from_value(&p.host()).unwrap();
    let desired = host.desired(None).unwrap();

    let counted = |f: Calls, before: Calls| f.since(before);
    let start = c.calls();
    let first = apply(&c, &host, desired.as_ref(), false).await.unwrap();
    assert_eq!(first.changes.len(), 3);
    let first_calls = counted(c.calls(), start);
    assert_eq!(
        first_calls,
        Calls {
            get: 3,
            post: 2,
            patch: 1,
            put: 0,
            delete: 0
        }
    );

    let start = c.calls();
    assert!(apply(&c, &host, desired.as_ref(), false).await.unwrap().in_sync());
    assert_eq!(
        counted(c.calls(), start),
        Calls {
            get: 3,
            post: 0,
            patch: 0,
            put: 0,
            delete: 0
        }
    );

    // A host without bootVolume whose node we never touched: one read.
    let other = HostParams {
        no_boot_volume: true,
        ..HostParams::new(&unique_namespace())
    };
    enroll(&c, &other.ns, json!({})).await;
    let start = c.calls();
    let spec = HostSpec::from_value(&other.host()).unwrap();
    assert!(apply(&c, &spec, None, false).await.unwrap().in_sync());
    assert_eq!(
        counted(c.calls(), start),
        Calls {
            get: 1,
            ..Default::default()
        }
    );
    eprintln!("ironic calls: first pass {first_calls:?}; in-sync pass 3 GET; unmanaged host 1 GET");
}

#[tokio::test]
async fn lun_change_is_patched_while_powered_off() {
    let c = client();
    let mut p = HostParams::new(&unique_namespace());
    let uuid = enroll(&c, &p.ns, json!({})).await;
    assert_eq!(apply_cli(&p, PASSWORD, &[]).code, 0);
    power(&c, &uuid, "power off").await;

    p.lun = 5;
    let run = apply_cli(&p, PASSWORD, &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        calls_line(&run).contains("(3 GET, 0 POST, 1 PATCH, 0 PUT, 0 DELETE)"),
        "{}",
        run.all()
    );
    let (_, ts) = volumes(&c, &uuid).await;
    assert_eq!(ts[0].properties["target_lun"], json!(5));
    assert_eq!(
        ts[0].properties["auth_password"], "******",
        "password kept on replace"
    );
    assert_eq!(apply_cli(&p, PASSWORD, &[]).code, 0);
}

#[tokio::test]
async fn chap_rotation_resends_credentials_once() {
    let c = client();
    let p = HostParams::new(&unique_namespace());
    let uuid = enroll(&c, &p.ns, json!({})).await;
    assert_eq!(apply_cli(&p, PASSWORD, &[]).code, 0);
    power(&c, &uuid, "power off").await;
    let digest = |t: &bootvolume::ironic::Target| t.extra["bootvolume_credentials"].clone();
    let old = digest(&volumes(&c, &uuid).await.1[0]);

    let rotated = "Zq9-rotated-secret";
    let run = apply_cli(&p, rotated, &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("CHAP credentials"), "{}", run.all());
    assert!(calls_line(&run).contains("1 PATCH"), "{}", run.all());
    let new = digest(&volumes(&c, &uuid).await.1[0]);
    assert_ne!(old, new);
    let again = apply_cli(&p, rotated, &[]);
    assert!(
        calls_line(&again).contains("0 POST, 0 PATCH, 0 PUT, 0 DELETE"),
        "{}",
        again.all()
    );
}

#[tokio::test]
async fn removing_boot_volume_cleans_up_only_our_work() {
    let c = client();
    let p = HostParams::new(&unique_namespace());
    let uuid = enroll(
        &c,
        &p.ns,
        json!({"properties": {"capabilities": "boot_mode:uefi"}}),
    )
    .await;
    assert_eq!(apply_cli(&p, PASSWORD, &[]).code, 0);
    power(&c, &uuid, "power off").await;

    let removed = HostParams {
        no_boot_volume: true,
        ..p.clone()
    };
    let run = apply_cli(&removed, PASSWORD, &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        calls_line(&run).contains("(3 GET, 0 POST, 2 PATCH, 0 PUT, 2 DELETE)"),
        "{}",
        run.all()
    );
    let n = node(&c, &uuid).await;
    assert_eq!(n["storage_interface"], "noop");
    assert_eq!(n["properties"]["capabilities"], "boot_mode:uefi");
    assert_eq!(n["extra"], json!({}));
    let (cs, ts) = volumes(&c, &uuid).await;
    assert!(cs.is_empty() && ts.is_empty());

    let again = apply_cli(&removed, PASSWORD, &[]);
    assert!(calls_line(&again).contains("1 (1 GET"), "{}", again.all());
}

#[tokio::test]
async fn unknown_node_fails_with_its_name() {
    let p = HostParams::new(&unique_namespace());
    let run = apply_cli(&p, PASSWORD, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr
            .contains(&format!("Ironic node {}~host not found", p.ns)),
        "{}",
        run.all()
    );
}

#[tokio::test]
async fn missing_secret_or_key_fails_without_touching_ironic() {
    let c = client();
    let p = HostParams::new(&unique_namespace());
    let uuid = enroll(&c, &p.ns, json!({})).await;
    let (_d, only_host) = manifest(&[p.host()]);
    let run = ironic_apply(&only_host, &ironic().url, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains(&format!("Secret {}/chap not found", p.ns)),
        "{}",
        run.all()
    );

    let mut no_password = secret(&p.ns, "chap", "chapuser", PASSWORD);
    no_password["data"].as_object_mut().unwrap().remove("password");
    let (_d, file) = manifest(&[p.host(), no_password]);
    let run = ironic_apply(&file, &ironic().url, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains(r#"has no usable key "password""#),
        "{}",
        run.all()
    );
    assert!(calls_line(&run).contains("Ironic calls: 0"), "{}", run.all());
    assert!(write_stamps(&c, &uuid).await.iter().all(|s| s == "null"));
}

#[tokio::test]
async fn changes_wait_for_power_off_and_are_reported() {
    let c = client();
    let mut p = HostParams::new(&unique_namespace());
    let uuid = enroll(&c, &p.ns, json!({})).await;
    assert_eq!(apply_cli(&p, PASSWORD, &[]).code, 0);
    provision(&c, &uuid, "manage", "manageable").await;
    provision(&c, &uuid, "provide", "available").await;
    power(&c, &uuid, "power on").await;
    let before = write_stamps(&c, &uuid).await;

    p.lun = 9;
    let run = apply_cli(&p, PASSWORD, &[]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(
        run.stderr.contains("waiting for the node to be powered off"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("power state: power on"), "{}", run.all());
    assert_eq!(
        write_stamps(&c, &uuid).await,
        before,
        "nothing may be written while powered on"
    );

    power(&c, &uuid, "power off").await;
    let run = apply_cli(&p, PASSWORD, &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(volumes(&c, &uuid).await.1[0].properties["target_lun"], json!(9));
}

#[tokio::test]
async fn duplicate_initiator_name_is_a_clear_409() {
    let c = client();
    let a = HostParams::new(&unique_namespace());
    let b = HostParams {
        connector_id: a.connector_id.clone(),
        ..HostParams::new(&unique_namespace())
    };
    enroll(&c, &a.ns, json!({})).await;
    enroll(&c, &b.ns, json!({})).await;
    assert_eq!(apply_cli(&a, PASSWORD, &[]).code, 0);
    let run = apply_cli(&b, PASSWORD, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains("conflict") && run.stderr.contains("already exists"),
        "{}",
        run.all()
    );
}

#[tokio::test]
async fn ironic_down_fails_fast_and_a_hung_ironic_times_out() {
    let p = HostParams::new(&unique_namespace());
    let (_d, file) = manifest(&[p.host(), secret(&p.ns, "chap", "chapuser", PASSWORD)]);
    // Nothing listens: a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let run = ironic_apply(&file, &url, &["--ironic-timeout", "2"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains(&format!("cannot reach Ironic at {url}")),
        "{}",
        run.all()
    );
    assert!(run.elapsed < Duration::from_secs(10), "took {:?}", run.elapsed);

    // Accepts connections, never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hung.local_addr().unwrap());
    let run = ironic_apply(&file, &url, &["--ironic-timeout", "2"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("timed out"), "{}", run.all());
    assert!(run.elapsed < Duration::from_secs(10), "took {:?}", run.elapsed);
    assert!(!run.all().contains(PASSWORD));
}

/// The proof that what we configure boots: deploy through Ironic (manage, provide, active)
/// and read the iPXE script Ironic renders for the node.
#[tokio::test]
async fn full_deploy_renders_an_ipxe_sanboot_script_with_our_target() {
    let c = client();
    let mut p = HostParams::new(&unique_namespace());
    p.lun = 10;
    let uuid = enroll(
        &c,
        &p.ns,
        json!({
            "boot_interface": "ipxe",
            "deploy_interface": "direct",
            "driver_info": {"deploy_kernel": "http://127.0.0.1:9/k", "deploy_ramdisk": "http://127.0.0.1:9/r"},
        }),
    )
    .await;
    let port = json!({"node_uuid": uuid, "address": format!("52:54:00:{}", mac_tail(&p.ns))});
    let _: Value = c
        .send(reqwest::Method::POST, "/v1/ports", Some(&port))
        .await
        .expect("create port");

    // Configure with one password, rotate to another: the deploy must use the rotated one.
    assert_eq!(apply_cli(&p, "Zq9-first-password", &[]).code, 0);
    power(&c, &uuid, "power off").await;
    assert_eq!(apply_cli(&p, PASSWORD, &[]).code, 0);

    provision(&c, &uuid, "manage", "manageable").await;
    provision(&c, &uuid, "provide", "available").await;
    let n = provision(&c, &uuid, "active", "active").await;
    let (_, ts) = volumes(&c, &uuid).await;
    assert_eq!(n["driver_internal_info"]["boot_from_volume"], json!(ts[0].uuid));

    let config = std::fs::read_to_string(ironic().http_root.join(&uuid).join("config")).expect("iPXE config");
    let sanhook = "sanhook --drive 0x80 iscsi:192.0.2.10::3260:a:iqn.2010-10.com.example:vol-bfv";
    for want in [
        sanhook.to_owned(),
        format!("set initiator-iqn {}", p.connector_id),
        "set username chapuser".to_owned(),
        format!("set password {PASSWORD}"),
    ] {
        assert!(config.contains(&want), "iPXE config lacks {want:?}");
    }

    // Active and in sync: no write. Undeploy deletes the targets; the next pass recreates it.
    let in_sync = apply_cli(&p, PASSWORD, &[]);
    assert!(
        calls_line(&in_sync).contains("0 POST, 0 PATCH, 0 PUT, 0 DELETE"),
        "{}",
        in_sync.all()
    );
    provision(&c, &uuid, "deleted", "available").await;
    assert!(volumes(&c, &uuid).await.1.is_empty());
    let recreate = apply_cli(&p, PASSWORD, &[]);
    assert!(
        calls_line(&recreate).contains("1 POST, 0 PATCH, 0 PUT, 0 DELETE"),
        "{}",
        recreate.all()
    );
}

fn mac_tail(ns: &str) -> String {
    let h = &ns[3..9];
    format!("{}:{}:{}", &h[0..2], &h[2..4], &h[4..6])
}

/// A known CHAP password never appears in stdout, stderr or trace-level logs, whatever the
/// outcome: dry-run, apply, in sync, waiting, rotation, a missing key, a 409, inline CHAP.
#[tokio::test]
async fn a_known_password_never_appears_in_any_output() {
    const KNOWN: &str = "Leak-canary-8c1f";
    const ROTATED: &str = "Leak-canary-rotated-3b7e";
    let c = client();
    let p = HostParams::new(&unique_namespace());
    let uuid = enroll(&c, &p.ns, json!({})).await;
    let url = ironic().url;
    let check = |docs: &[Value], extra: &[&str], want: i32| {
        let (_d, file) = manifest(docs);
        let run = ironic_apply(&file, &url, extra);
        assert_eq!(run.code, want, "{}", run.all());
        assert!(
            !run.all().contains(KNOWN) && !run.all().contains(ROTATED),
            "password leaked:\n{}",
            run.all()
        );
    };
    let with = |pw: &str| vec![p.host(), secret(&p.ns, "chap", "chapuser", pw)];
    check(&with(KNOWN), &["--dry-run"], 4);
    check(&with(KNOWN), &[], 0);
    check(&with(KNOWN), &[], 0);
    provision(&c, &uuid, "manage", "manageable").await;
    provision(&c, &uuid, "provide", "available").await;
    power(&c, &uuid, "power on").await;
    check(&with(ROTATED), &[], 3);
    power(&c, &uuid, "power off").await;
    check(&with(ROTATED), &[], 0);
    let mut no_user = secret(&p.ns, "chap", "chapuser", KNOWN);
    no_user["data"].as_object_mut().unwrap().remove("username");
    check(&[p.host(), no_user], &[], 1);
    // Same initiator on another node: Ironic's 409.
    let dup = HostParams {
        connector_id: p.connector_id.clone(),
        ..HostParams::new(&unique_namespace())
    };
    enroll(&c, &dup.ns, json!({})).await;
    check(&[dup.host(), secret(&dup.ns, "chap", "chapuser", KNOWN)], &[], 1);
    // Inline CHAP (admitted only with the webhook's --allow-inline-chap).
    let inline = HostParams {
        secret: None,
        ..HostParams::new(&unique_namespace())
    };
    enroll(&c, &inline.ns, json!({})).await;
    let mut host = inline.host();
    host["spec"]["bootVolume"]["iscsiTarget"] = json!({"iqn": "iqn.2010-10.com.example:v", "portal": "192.0.2.10", "authUser": "u", "authPasswd": KNOWN});
    check(&[host], &[], 0);
}
