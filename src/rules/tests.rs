//! Table-driven rule tests: every rule has accept and reject rows asserting field path and
//! error type (never wording).

use super::*;
use crate::fixtures::Host;
use ErrorKind::*;
use serde_json::json;

const BV: &str = "spec.bootVolume";

fn run(policy: &Policy, old: Option<&Host>, new: &Host) -> Verdict {
    let new_view = HostView::new(&new.0).expect("view");
    let old_view = old.map(|o| HostView::new(&o.0).expect("view"));
    validate(policy, old_view.as_ref(), &new_view)
}

fn errors_of(v: &Verdict) -> Vec<(String, ErrorKind)> {
    let mut e: Vec<_> = v.errors.iter().map(|e| (e.field.clone(), e.kind)).collect();
    e.sort();
    e
}

fn want(expected: &[(&str, ErrorKind)]) -> Vec<(String, ErrorKind)> {
    let mut w: Vec<_> = expected.iter().map(|(f, k)| ((*f).to_owned(), *k)).collect();
    w.sort();
    w
}

/// Expected errors of a row: (field, type).
pub(super) type Expected = Vec<(&'static str, ErrorKind)>;

fn inline_policy() -> Policy {
    Policy {
        allow_inline_chap: true,
        ..Policy::default()
    }
}

/// A CREATE row: (case, host, policy, expected errors).
pub(super) type CreateCase = (&'static str, Host, Policy, Expected);
/// An UPDATE row: (case, old, new, expected errors).
pub(super) type UpdateCase = (&'static str, Host, Host, Expected);

/// CREATE rows: (case, host, policy, expected errors). Also the corpus the CEL agreement
/// test evaluates.
pub(super) fn create_cases() -> Vec<CreateCase> {
    let p = Policy::default();
    let ext = Host::external;
    let cin = Host::cinder;
    let long = |n: usize| "a".repeat(n);
    let t = "/spec/bootVolume/iscsiTarget";
    vec![
        // volumeDriver
        ("accept_external", ext(), p.clone(), vec![]),
        ("accept_cinder", cin(), p.clone(), vec![]),
        (
            "reject_driver_missing",
            ext().remove("/spec/bootVolume/volumeDriver"),
            p.clone(),
            vec![("spec.bootVolume.volumeDriver", Required)],
        ),
        (
            "reject_driver_noop",
            ext().set("/spec/bootVolume/volumeDriver", json!("noop")),
            p.clone(),
            vec![("spec.bootVolume.volumeDriver", NotSupported)],
        ),
        (
            "reject_driver_case",
            ext().set("/spec/bootVolume/volumeDriver", json!("External")),
            p.clone(),
            vec![("spec.bootVolume.volumeDriver", NotSupported)],
        ),
        (
            "reject_driver_not_allowed",
            cin(),
            Policy {
                allowed_volume_drivers: vec!["external".into()],
                ..p.clone()
            },
            vec![("spec.bootVolume.volumeDriver", NotSupported)],
        ),
        (
            "accept_driver_allowed",
            ext(),
            Policy {
                allowed_volume_drivers: vec!["external".into()],
                ..p.clone()
            },
            vec![],
        ),
        // volumeId
        (
            "accept_volume_id_36",
            ext().set("/spec/bootVolume/volumeId", json!(long(36))),
            p.clone(),
            vec![],
        ),
        (
            "reject_volume_id_missing",
            ext().remove("/spec/bootVolume/volumeId"),
            p.clone(),
            vec![("spec.bootVolume.volumeId", Required)],
        ),
        (
            "reject_volume_id_empty",
            ext().set("/spec/bootVolume/volumeId", json!("")),
            p.clone(),
            vec![("spec.bootVolume.volumeId", Required)],
        ),
        (
            "reject_volume_id_37",
            ext().set("/spec/bootVolume/volumeId", json!(long(37))),
            p.clone(),
            vec![("spec.bootVolume.volumeId", TooLong)],
        ),
        (
            "reject_volume_id_space",
            ext().set("/spec/bootVolume/volumeId", json!("vol 1")),
            p.clone(),
            vec![("spec.bootVolume.volumeId", Invalid)],
        ),
        (
            "reject_cinder_volume_id_not_uuid",
            cin().set("/spec/bootVolume/volumeId", json!("vol-1")),
            p.clone(),
            vec![("spec.bootVolume.volumeId", Invalid)],
        ),
        (
            "reject_volume_id_number",
            ext().set("/spec/bootVolume/volumeId", json!(5)),
            p.clone(),
            vec![("spec.bootVolume.volumeId", Invalid)],
        ),
        // connectorId
        (
            "accept_connector_eui",
            ext().set("/spec/bootVolume/connectorId", json!("eui.02004567A425678D")),
            p.clone(),
            vec![],
        ),
        (
            "accept_connector_naa",
            ext().set("/spec/bootVolume/connectorId", json!("naa.52004567BA64678D")),
            p.clone(),
            vec![],
        ),
        (
            "reject_connector_missing",
            ext().remove("/spec/bootVolume/connectorId"),
            p.clone(),
            vec![("spec.bootVolume.connectorId", Required)],
        ),
        (
            "reject_connector_not_iscsi",
            ext().set("/spec/bootVolume/connectorId", json!("host-0")),
            p.clone(),
            vec![("spec.bootVolume.connectorId", Invalid)],
        ),
        (
            "reject_connector_bad_date",
            ext().set("/spec/bootVolume/connectorId", json!("iqn.2004-13.com.example:h")),
            p.clone(),
            vec![("spec.bootVolume.connectorId", Invalid)],
        ),
        (
            "reject_connector_eui_short",
            ext().set("/spec/bootVolume/connectorId", json!("eui.0200")),
            p.clone(),
            vec![("spec.bootVolume.connectorId", Invalid)],
        ),
        (
            "reject_connector_too_long",
            ext().set(
                "/spec/bootVolume/connectorId",
                json!(format!("iqn.2004-10.com.example:{}", long(200))),
            ),
            p.clone(),
            vec![("spec.bootVolume.connectorId", TooLong)],
        ),
        // targetType
        (
            "accept_target_type_iscsi",
            ext().set("/spec/bootVolume/targetType", json!("iscsi")),
            p.clone(),
            vec![],
        ),
        (
            "reject_target_type_fc",
            ext().set("/spec/bootVolume/targetType", json!("fibre_channel")),
            p.clone(),
            vec![("spec.bootVolume.targetType", NotSupported)],
        ),
        (
            "reject_target_type_fc_dash",
            ext().set("/spec/bootVolume/targetType", json!("fibre-channel")),
            p.clone(),
            vec![("spec.bootVolume.targetType", NotSupported)],
        ),
        // iscsiTarget for external
        (
            "reject_external_without_target",
            ext().remove(t),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget", Required)],
        ),
        (
            "reject_target_iqn_missing",
            ext().remove(&format!("{t}/iqn")),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.iqn", Required)],
        ),
        (
            "reject_target_iqn_invalid",
            ext().set(&format!("{t}/iqn"), json!("iqn.x")),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.iqn", Invalid)],
        ),
        (
            "reject_portal_missing",
            ext().remove(&format!("{t}/portal")),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.portal", Required)],
        ),
        (
            "accept_portal_without_port",
            ext().set(&format!("{t}/portal"), json!("192.0.2.10")),
            p.clone(),
            vec![],
        ),
        (
            "accept_portal_dns",
            ext().set(&format!("{t}/portal"), json!("san.example.com:3261")),
            p.clone(),
            vec![],
        ),
        (
            "reject_portal_ipv6",
            ext().set(&format!("{t}/portal"), json!("[fd00::1]:3260")),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.portal", Invalid)],
        ),
        (
            "reject_portal_port_zero",
            ext().set(&format!("{t}/portal"), json!("192.0.2.10:0")),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.portal", Invalid)],
        ),
        (
            "reject_portal_port_big",
            ext().set(&format!("{t}/portal"), json!("192.0.2.10:65536")),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.portal", Invalid)],
        ),
        // lun
        (
            "accept_lun_absent",
            ext().remove(&format!("{t}/lun")),
            p.clone(),
            vec![],
        ),
        (
            "accept_lun_max",
            ext().set(&format!("{t}/lun"), json!(65535)),
            p.clone(),
            vec![],
        ),
        (
            "reject_lun_negative",
            ext().set(&format!("{t}/lun"), json!(-1)),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.lun", Invalid)],
        ),
        (
            "reject_lun_too_big",
            ext().set(&format!("{t}/lun"), json!(65536)),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.lun", Invalid)],
        ),
        (
            "reject_lun_string",
            ext().set(&format!("{t}/lun"), json!("0")),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.lun", Invalid)],
        ),
        // iType
        (
            "accept_itype_iqn",
            ext().set(&format!("{t}/iType"), json!("iqn")),
            p.clone(),
            vec![],
        ),
        (
            "reject_itype_wwpn",
            ext().set(&format!("{t}/iType"), json!("wwpn")),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.iType", NotSupported)],
        ),
        // authMethod and credentials
        (
            "accept_auth_chap_secret",
            ext().set(&format!("{t}/authMethod"), json!("CHAP")),
            p.clone(),
            vec![],
        ),
        (
            "accept_auth_none",
            ext()
                .remove("/spec/bootVolume/iscsiCredentialsName")
                .set(&format!("{t}/authMethod"), json!("None")),
            p.clone(),
            vec![],
        ),
        (
            "reject_auth_method_lower",
            ext().set(&format!("{t}/authMethod"), json!("chap")),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.authMethod", NotSupported)],
        ),
        (
            "reject_chap_unset_without_credentials",
            ext().remove("/spec/bootVolume/iscsiCredentialsName"),
            p.clone(),
            vec![("spec.bootVolume.iscsiCredentialsName", Required)],
        ),
        (
            "reject_chap_explicit_without_credentials",
            ext()
                .remove("/spec/bootVolume/iscsiCredentialsName")
                .set(&format!("{t}/authMethod"), json!("CHAP")),
            p.clone(),
            vec![("spec.bootVolume.iscsiCredentialsName", Required)],
        ),
        (
            "reject_none_with_secret",
            ext().set(&format!("{t}/authMethod"), json!("None")),
            p.clone(),
            vec![("spec.bootVolume.iscsiCredentialsName", Forbidden)],
        ),
        (
            "reject_none_with_secret_ref",
            ext()
                .remove("/spec/bootVolume/iscsiCredentialsName")
                .set(&format!("{t}/authMethod"), json!("None"))
                .set(
                    &format!("{t}/authSecretRef"),
                    json!({"name": "host-0-chap", "namespace": "metal3"}),
                ),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.authSecretRef", Forbidden)],
        ),
        (
            "reject_none_with_inline",
            ext()
                .remove("/spec/bootVolume/iscsiCredentialsName")
                .set(&format!("{t}/authMethod"), json!("None"))
                .set(&format!("{t}/authUser"), json!("u"))
                .set(&format!("{t}/authPasswd"), json!("p")),
            inline_policy(),
            vec![
                ("spec.bootVolume.iscsiTarget.authUser", Forbidden),
                ("spec.bootVolume.iscsiTarget.authPasswd", Forbidden),
            ],
        ),
        (
            "reject_inline_chap_without_flag",
            ext()
                .remove("/spec/bootVolume/iscsiCredentialsName")
                .set(&format!("{t}/authUser"), json!("u"))
                .set(&format!("{t}/authPasswd"), json!("p")),
            p.clone(),
            vec![
                ("spec.bootVolume.iscsiTarget.authUser", Forbidden),
                ("spec.bootVolume.iscsiTarget.authPasswd", Forbidden),
            ],
        ),
        (
            "accept_inline_chap_with_flag",
            ext()
                .remove("/spec/bootVolume/iscsiCredentialsName")
                .set(&format!("{t}/authUser"), json!("u"))
                .set(&format!("{t}/authPasswd"), json!("p")),
            inline_policy(),
            vec![],
        ),
        (
            "reject_inline_user_without_password",
            ext()
                .remove("/spec/bootVolume/iscsiCredentialsName")
                .set(&format!("{t}/authUser"), json!("u")),
            inline_policy(),
            vec![("spec.bootVolume.iscsiTarget.authPasswd", Required)],
        ),
        (
            "reject_inline_and_secret",
            ext()
                .set(&format!("{t}/authUser"), json!("u"))
                .set(&format!("{t}/authPasswd"), json!("p")),
            inline_policy(),
            vec![
                ("spec.bootVolume.iscsiTarget.authUser", Forbidden),
                ("spec.bootVolume.iscsiTarget.authPasswd", Forbidden),
            ],
        ),
        (
            "reject_credentials_name_invalid",
            ext().set("/spec/bootVolume/iscsiCredentialsName", json!("Host_0")),
            p.clone(),
            vec![("spec.bootVolume.iscsiCredentialsName", Invalid)],
        ),
        (
            "reject_credentials_name_long",
            ext().set("/spec/bootVolume/iscsiCredentialsName", json!(long(254))),
            p.clone(),
            vec![("spec.bootVolume.iscsiCredentialsName", TooLong)],
        ),
        (
            "accept_secret_ref_same_namespace",
            ext().set(
                &format!("{t}/authSecretRef"),
                json!({"name": "host-0-chap", "namespace": "metal3"}),
            ),
            p.clone(),
            vec![],
        ),
        (
            "reject_secret_ref_other_namespace",
            ext().set(
                &format!("{t}/authSecretRef"),
                json!({"name": "host-0-chap", "namespace": "kube-system"}),
            ),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.authSecretRef.namespace", Forbidden)],
        ),
        (
            "reject_secret_ref_name_mismatch",
            ext().set(
                &format!("{t}/authSecretRef"),
                json!({"name": "other", "namespace": "metal3"}),
            ),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.authSecretRef.name", Invalid)],
        ),
        (
            "reject_secret_ref_without_name",
            ext().set(&format!("{t}/authSecretRef"), json!({"namespace": "metal3"})),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget.authSecretRef.name", Required)],
        ),
        // cinder: Cinder supplies the connection
        (
            "accept_cinder_itype_only",
            cin().set(&format!("{t}/iType"), json!("iqn")),
            p.clone(),
            vec![],
        ),
        (
            "accept_cinder_with_secret",
            cin().set("/spec/bootVolume/iscsiCredentialsName", json!("c")),
            p.clone(),
            vec![],
        ),
        (
            "reject_cinder_with_target_fields",
            cin().set(
                t,
                json!({"iqn": "iqn.2004-10.com.example:t", "portal": "192.0.2.1", "lun": 1}),
            ),
            p.clone(),
            vec![
                ("spec.bootVolume.iscsiTarget.iqn", Forbidden),
                ("spec.bootVolume.iscsiTarget.portal", Forbidden),
                ("spec.bootVolume.iscsiTarget.lun", Forbidden),
            ],
        ),
        (
            "reject_cinder_inline_chap",
            cin().set(t, json!({"authUser": "u", "authPasswd": "p"})),
            inline_policy(),
            vec![
                ("spec.bootVolume.iscsiTarget.authUser", Forbidden),
                ("spec.bootVolume.iscsiTarget.authPasswd", Forbidden),
            ],
        ),
        // interplay with the rest of the host
        (
            "reject_with_image",
            ext().set("/spec/image", json!({"url": "http://x/i.qcow2"})),
            p.clone(),
            vec![(BV, Forbidden)],
        ),
        (
            "reject_with_custom_deploy",
            ext().set("/spec/customDeploy", json!({"method": "x"})),
            p.clone(),
            vec![(BV, Forbidden)],
        ),
        (
            "accept_externally_provisioned",
            ext().set("/spec/externallyProvisioned", json!(true)),
            p.clone(),
            vec![],
        ),
        (
            "reject_externally_provisioned_with_image",
            ext()
                .set("/spec/externallyProvisioned", json!(true))
                .set("/spec/image", json!({"url": "u"})),
            p.clone(),
            vec![(BV, Forbidden)],
        ),
        (
            "accept_externally_provisioned_false",
            ext().set("/spec/externallyProvisioned", json!(false)),
            p.clone(),
            vec![],
        ),
        (
            "reject_image_and_custom_deploy",
            ext()
                .set("/spec/image", json!({"url": "u"}))
                .set("/spec/customDeploy", json!({"method": "x"})),
            p.clone(),
            vec![(BV, Forbidden), (BV, Forbidden)],
        ),
        (
            "accept_bmc_ipmi",
            ext().set("/spec/bmc/address", json!("ipmi://192.0.2.1")),
            p.clone(),
            vec![],
        ),
        (
            "accept_bmc_bare_ip",
            ext().set("/spec/bmc/address", json!("192.0.2.1")),
            p.clone(),
            vec![],
        ),
        (
            "accept_bmc_libvirt",
            ext().set("/spec/bmc/address", json!("libvirt://192.0.2.1/x")),
            p.clone(),
            vec![],
        ),
        (
            "accept_bmc_redfish_https",
            ext().set("/spec/bmc/address", json!("redfish+https://192.0.2.1/x")),
            p.clone(),
            vec![],
        ),
        (
            "accept_bmc_idrac_redfish",
            ext().set("/spec/bmc/address", json!("idrac-redfish://192.0.2.1/x")),
            p.clone(),
            vec![],
        ),
        (
            "accept_bmc_ilo5_redfish",
            ext().set("/spec/bmc/address", json!("ilo5-redfish://192.0.2.1/x")),
            p.clone(),
            vec![],
        ),
        (
            "reject_bmc_redfish_virtualmedia",
            ext().set("/spec/bmc/address", json!("redfish-virtualmedia://192.0.2.1/x")),
            p.clone(),
            vec![("spec.bmc.address", Forbidden)],
        ),
        (
            "reject_bmc_ilo5_virtualmedia",
            ext().set("/spec/bmc/address", json!("ilo5-virtualmedia://192.0.2.1/x")),
            p.clone(),
            vec![("spec.bmc.address", Forbidden)],
        ),
        (
            "reject_bmc_idrac_virtualmedia_https",
            ext().set(
                "/spec/bmc/address",
                json!("idrac-virtualmedia+https://192.0.2.1/x"),
            ),
            p.clone(),
            vec![("spec.bmc.address", Forbidden)],
        ),
        (
            "reject_bmc_redfish_uefihttp",
            ext().set("/spec/bmc/address", json!("redfish-uefihttp://192.0.2.1/x")),
            p.clone(),
            vec![("spec.bmc.address", Forbidden)],
        ),
        // schema: unknown fields and types
        (
            "reject_unknown_field",
            ext().set("/spec/bootVolume/volumeID", json!("x")),
            p.clone(),
            vec![("spec.bootVolume.volumeID", Forbidden)],
        ),
        (
            "reject_target_not_object",
            ext().set(t, json!("192.0.2.1")),
            p.clone(),
            vec![("spec.bootVolume.iscsiTarget", Invalid)],
        ),
        (
            "reject_block_not_object",
            ext().set("/spec/bootVolume", json!("yes")),
            p.clone(),
            vec![(BV, Invalid)],
        ),
        // hosts without bootVolume are not ours
        (
            "accept_no_boot_volume",
            Host::plain().set("/spec/image", json!({"url": "u"})),
            p.clone(),
            vec![],
        ),
        (
            "accept_null_boot_volume",
            ext().set("/spec/bootVolume", json!(null)),
            p.clone(),
            vec![],
        ),
    ]
}

#[test]
fn create_rules() {
    let cases = create_cases();
    let mut failures = Vec::new();
    for (name, host, policy, expected) in &cases {
        let got = errors_of(&run(policy, None, host));
        if got != want(expected) {
            failures.push(format!("{name}: got {got:?}, want {expected:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_rule_reports_all_errors_at_once() {
    let host = Host::external()
        .set("/spec/bootVolume/volumeDriver", json!("noop"))
        .set("/spec/bootVolume/connectorId", json!("nope"))
        .set("/spec/bootVolume/iscsiTarget/lun", json!(-4))
        .set("/spec/image", json!({"url": "u"}));
    let v = run(&Policy::default(), None, &host);
    assert_eq!(
        errors_of(&v),
        want(&[
            ("spec.bootVolume.volumeDriver", NotSupported),
            ("spec.bootVolume.connectorId", Invalid),
            ("spec.bootVolume.iscsiTarget.lun", Invalid),
            (BV, Forbidden),
        ])
    );
    assert!(v.message().starts_with('['), "{}", v.message());
}

#[test]
fn warnings_are_short_single_lines() {
    let host = Host::external()
        .remove("/spec/bootMACAddress")
        .set("/spec/rootDeviceHints", json!({"deviceName": "/dev/sda"}))
        .set("/spec/raid", json!({}))
        .set("/spec/userData", json!({"name": "u"}))
        .set("/spec/networkData", json!({"name": "n"}))
        .set("/spec/metaData", json!({"name": "m"}))
        .set(
            "/spec/bootVolume/connectorId",
            json!("IQN.2004-10.COM.EXAMPLE:HOST-0"),
        )
        .set("/spec/bootVolume/iscsiTarget/authUser", json!("u"))
        .set("/spec/bootVolume/iscsiTarget/authPasswd", json!("p"))
        .remove("/spec/bootVolume/iscsiCredentialsName");
    let v = run(&inline_policy(), None, &host);
    assert!(v.allowed(), "{}", v.message());
    assert_eq!(v.warnings.len(), 8, "{:#?}", v.warnings);
    for w in &v.warnings {
        assert!(w.len() < 120 && !w.contains('\n'), "{w}");
    }
    assert!(
        run(&Policy::default(), None, &Host::external())
            .warnings
            .is_empty()
    );
}

/// UPDATE rows: (case, old, new, expected errors).
/// UPDATE rows, all under the default policy. Also the CEL agreement test's corpus.
pub(super) fn update_cases() -> Vec<UpdateCase> {
    let ext = Host::external;
    let lun = "/spec/bootVolume/iscsiTarget/lun";
    let invalid = || ext().remove("/spec/bootVolume/iscsiCredentialsName");
    let mutated = || {
        ext()
            .set("/spec/bootVolume/targetType", json!("iscsi"))
            .set("/spec/bootVolume/iscsiTarget/iType", json!("iqn"))
            .set("/spec/bootVolume/iscsiTarget/authMethod", json!("CHAP"))
            .set(
                "/spec/bootVolume/iscsiTarget/authSecretRef",
                json!({"name": "host-0-chap", "namespace": "metal3"}),
            )
    };
    vec![
        (
            "accept_ratchet_unchanged_invalid_block",
            invalid(),
            invalid().set("/metadata/finalizers", json!(["f"])),
            vec![],
        ),
        (
            "accept_ratchet_status_write",
            invalid(),
            invalid().in_state("provisioned"),
            vec![],
        ),
        (
            "reject_changed_invalid_block",
            ext(),
            invalid(),
            vec![("spec.bootVolume.iscsiCredentialsName", Required)],
        ),
        (
            "reject_dependency_changed",
            invalid(),
            invalid().set("/spec/bmc/address", json!("ipmi://192.0.2.9")),
            vec![("spec.bootVolume.iscsiCredentialsName", Required)],
        ),
        (
            "reject_image_added",
            ext(),
            ext().set("/spec/image", json!({"url": "u"})),
            vec![(BV, Forbidden)],
        ),
        (
            "accept_hand_over_from_available",
            ext().in_state("available"),
            ext()
                .in_state("available")
                .set("/spec/externallyProvisioned", json!(true)),
            vec![],
        ),
        (
            "reject_hand_over_with_custom_deploy",
            ext().in_state("available"),
            ext()
                .in_state("available")
                .set("/spec/externallyProvisioned", json!(true))
                .set("/spec/customDeploy", json!({"method": "x"})),
            vec![(BV, Forbidden)],
        ),
        (
            "accept_deleting",
            ext(),
            invalid().set("/metadata/deletionTimestamp", json!("2026-11-30T00:00:00Z")),
            vec![],
        ),
        (
            "accept_change_when_ready",
            ext().in_state("ready"),
            ext().in_state("ready").set(lun, json!(3)),
            vec![],
        ),
        (
            "reject_change_when_provisioned",
            ext().in_state("provisioned"),
            ext().in_state("provisioned").set(lun, json!(3)),
            vec![("spec.bootVolume.iscsiTarget.lun", Forbidden)],
        ),
        (
            "reject_change_when_provisioning",
            ext().in_state("provisioning"),
            ext()
                .in_state("provisioning")
                .set("/spec/bootVolume/volumeId", json!("vol-2")),
            vec![("spec.bootVolume.volumeId", Forbidden)],
        ),
        (
            "reject_change_when_deprovisioning",
            ext().in_state("deprovisioning"),
            ext().set(
                "/spec/bootVolume/connectorId",
                json!("iqn.2004-10.com.example:h9"),
            ),
            vec![("spec.bootVolume.connectorId", Forbidden)],
        ),
        (
            "reject_change_when_externally_provisioned",
            ext().in_state("externally provisioned"),
            ext().set("/spec/bootVolume/iscsiCredentialsName", json!("rotated")),
            vec![
                ("spec.bootVolume.iscsiCredentialsName", Forbidden),
                ("spec.bootVolume.iscsiTarget.authSecretRef.name", Forbidden),
            ],
        ),
        (
            "reject_add_when_provisioned",
            Host::plain().in_state("provisioned"),
            ext(),
            vec![(BV, Forbidden)],
        ),
        (
            "accept_remove_when_provisioned",
            ext().in_state("provisioned"),
            Host::plain(),
            vec![],
        ),
        (
            "accept_change_when_detached_old",
            ext()
                .in_state("provisioned")
                .set("/status/operationalStatus", json!("detached")),
            ext().set(lun, json!(3)),
            vec![],
        ),
        (
            "accept_change_when_detached_new",
            ext().in_state("provisioned"),
            ext()
                .set(lun, json!(3))
                .set("/status/operationalStatus", json!("detached")),
            vec![],
        ),
        (
            "accept_defaults_equal_mutated",
            mutated().in_state("provisioned"),
            ext()
                .in_state("provisioned")
                .set("/spec/bootVolume/iscsiTarget/portal", json!("192.0.2.10")),
            vec![],
        ),
        (
            "accept_unmutated_equal_mutated",
            ext().in_state("provisioned").remove(lun),
            mutated(),
            vec![],
        ),
    ]
}

#[test]
fn update_rules() {
    let p = Policy::default();
    let cases = update_cases();
    let mut failures = Vec::new();
    for (name, old, new, expected) in &cases {
        let got = errors_of(&run(&p, Some(old), new));
        if got != want(expected) {
            failures.push(format!("{name}: got {got:?}, want {expected:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn passwords_never_appear_in_messages() {
    let secret = "Sup3r-S3cret-CHAP";
    let hosts = [
        Host::external().set("/spec/bootVolume/iscsiTarget/authPasswd", json!(secret)),
        Host::external().set("/spec/bootVolume/iscsiTarget/authPasswd", json!([secret])),
        Host::cinder().set(
            "/spec/bootVolume/iscsiTarget",
            json!({"authPasswd": secret, "authMethod": "None"}),
        ),
    ];
    for policy in [Policy::default(), inline_policy()] {
        for host in &hosts {
            let v = run(&policy, None, host);
            assert!(!v.allowed());
            let all = format!("{} {:?} {:?}", v.message(), v.errors, v.warnings);
            assert!(!all.contains(secret), "{all}");
        }
        let old = Host::external()
            .in_state("provisioned")
            .set("/spec/bootVolume/iscsiTarget/authPasswd", json!("old-pass"));
        let v = run(
            &policy,
            Some(&old),
            &Host::external()
                .in_state("provisioned")
                .set("/spec/bootVolume/iscsiTarget/authPasswd", json!(secret)),
        );
        assert!(!format!("{} {:?}", v.message(), v.errors).contains(secret));
    }
}

/// Every rule id the tables produce is documented (the source scan in `tests/docs.rs`
/// finds the ids of the known constructors; this finds any id a rule actually emits).
#[test]
fn every_rule_id_is_documented() {
    let api =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).expect("docs/api.md");
    let mut ids = std::collections::BTreeSet::new();
    for (_, host, policy, _) in create_cases() {
        ids.extend(run(&policy, None, &host).errors.iter().map(|e| e.rule));
    }
    for (_, old, new, _) in update_cases() {
        ids.extend(
            run(&Policy::default(), Some(&old), &new)
                .errors
                .iter()
                .map(|e| e.rule),
        );
    }
    assert!(ids.len() >= 20, "{ids:?}");
    let missing: Vec<_> = ids
        .iter()
        .filter(|id| !api.contains(&format!("`{id}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "rule ids missing from docs/api.md: {missing:?}"
    );
}
