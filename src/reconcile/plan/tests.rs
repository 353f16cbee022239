//! Unit tests of the pure plan: one scenario per row, plus the idempotence proof.

use super::*;
use crate::api::{IscsiTarget, SecretRef};

const PW: &str = "pl4n-s3cret-pw";
const NODE: &str = "11111111-2222-3333-4444-555555555555";

fn bv_external() -> BootVolume {
    BootVolume {
        volume_id: Some("vol-1".into()),
        volume_driver: Some("external".into()),
        connector_id: Some("iqn.2004-10.com.example:host-0".into()),
        target_type: None,
        iscsi_target: Some(IscsiTarget {
            iqn: Some("iqn.2010-10.com.example:vol-1".into()),
            portal: Some("192.0.2.10".into()),
            lun: Some(3),
            auth_secret_ref: Some(SecretRef {
                name: Some("chap".into()),
                namespace: Some("ns".into()),
            }),
            ..Default::default()
        }),
        iscsi_credentials_name: Some("chap".into()),
    }
}

fn creds(pw: &str) -> Option<Credentials> {
    Some(Credentials {
        username: "chapuser".into(),
        password: Sensitive::new(pw),
    })
}

fn desired_external() -> Desired {
    Desired::from_boot_volume(&bv_external(), creds(PW)).unwrap()
}

fn desired_no_auth() -> Desired {
    let mut bv = bv_external();
    bv.iscsi_credentials_name = None;
    bv.iscsi_target.as_mut().unwrap().auth_secret_ref = None;
    bv.iscsi_target.as_mut().unwrap().auth_method = Some("None".into());
    Desired::from_boot_volume(&bv, None).unwrap()
}

fn desired_cinder() -> Desired {
    let bv = BootVolume {
        volume_id: Some("0b4c1c0e-7c3e-4a53-9d0a-6c1c2e0f5a11".into()),
        volume_driver: Some("cinder".into()),
        connector_id: Some("iqn.2004-10.com.example:host-0".into()),
        ..Default::default()
    };
    Desired::from_boot_volume(&bv, None).unwrap()
}

fn node(provision: &str, power: Option<&str>) -> Current {
    Current {
        node: Node {
            uuid: NODE.into(),
            name: Some("ns~host".into()),
            power_state: power.map(str::to_owned),
            provision_state: Some(provision.into()),
            storage_interface: Some("noop".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Applies actions the way Ironic would (including masking `auth_password` on read), so that
/// "plan, apply, plan again" can be checked without a server.
fn simulate(current: &Current, actions: &[Action]) -> Current {
    fn patched<T: serde::Serialize + serde::de::DeserializeOwned>(obj: &T, ops: &[PatchOp]) -> T {
        let mut doc = serde_json::to_value(obj).unwrap();
        let patch: json_patch::Patch = serde_json::from_value(serde_json::to_value(ops).unwrap()).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }
    fn mask(mut t: Target) -> Target {
        if let Some(p) = t.properties.get_mut(PASSWORD_KEY) {
            *p = json!("******");
        }
        t
    }
    let mut c = current.clone();
    for (i, a) in actions.iter().enumerate() {
        match a {
            Action::PatchNode { ops, .. } => c.node = patched(&c.node, ops),
            Action::CreateConnector(n) => c.connectors.push(Connector {
                uuid: format!("c-{i}"),
                node_uuid: n.node_uuid.clone(),
                kind: n.kind.clone(),
                connector_id: n.connector_id.clone(),
                extra: n.extra.clone(),
                updated_at: None,
            }),
            Action::PatchConnector { uuid, ops, .. } => {
                let x = c.connectors.iter_mut().find(|x| &x.uuid == uuid).unwrap();
                *x = patched(x, ops);
            }
            Action::DeleteConnector { uuid, .. } => c.connectors.retain(|x| &x.uuid != uuid),
            Action::CreateTarget(n) => {
                assert!(
                    c.targets.iter().all(|t| t.boot_index != n.boot_index),
                    "Ironic would answer 409"
                );
                c.targets.push(mask(Target {
                    uuid: format!("t-{i}"),
                    node_uuid: n.node_uuid.clone(),
                    volume_type: n.volume_type.clone(),
                    boot_index: n.boot_index,
                    volume_id: n.volume_id.clone(),
                    properties: n.properties.clone(),
                    extra: n.extra.clone(),
                    updated_at: None,
                }))
            }
            Action::PatchTarget { uuid, ops, .. } => {
                let x = c.targets.iter_mut().find(|x| &x.uuid == uuid).unwrap();
                *x = mask(patched(x, ops));
            }
            Action::DeleteTarget { uuid, .. } => c.targets.retain(|x| &x.uuid != uuid),
            // Not a field of the node a listing shows.
            Action::SetBootDevice { .. } => {}
        }
    }
    c
}

/// Plans, applies (simulated), and asserts the next plan is empty; returns the applied state.
fn converge(desired: Option<&Desired>, current: &Current) -> Current {
    let p = plan(desired, current);
    assert!(p.blocked.is_empty(), "unexpectedly blocked: {:?}", p.blocked);
    let next = simulate(current, &p.actions);
    let again = plan(desired, &next);
    assert!(again.is_empty(), "second pass not empty: {again:?}");
    next
}

fn kinds(p: &Plan) -> Vec<&'static str> {
    p.actions
        .iter()
        .map(|a| match a {
            Action::PatchNode { .. } => "patch_node",
            Action::CreateConnector(_) => "create_connector",
            Action::PatchConnector { .. } => "patch_connector",
            Action::DeleteConnector { .. } => "delete_connector",
            Action::CreateTarget(_) => "create_target",
            Action::PatchTarget { .. } => "patch_target",
            Action::DeleteTarget { .. } => "delete_target",
            Action::SetBootDevice { .. } => "set_boot_device",
        })
        .collect()
}

#[test]
fn first_pass_configures_everything_with_integer_lun_and_credentials() {
    let p = plan(Some(&desired_external()), &node("enroll", None));
    // Target first (adoption needs it), the node last.
    assert_eq!(kinds(&p), ["create_target", "create_connector", "patch_node"]);
    let Action::PatchNode { ops, .. } = &p.actions[2] else {
        unreachable!()
    };
    assert_eq!(
        serde_json::to_value(ops).unwrap(),
        json!([
            {"op": "add", "path": "/properties/capabilities", "value": "iscsi_boot:True"},
            {"op": "add", "path": "/extra/bootvolume_managed", "value": true},
            {"op": "replace", "path": "/storage_interface", "value": "external"},
        ])
    );
    let Action::CreateConnector(c) = &p.actions[1] else {
        unreachable!()
    };
    assert_eq!(
        (c.kind.as_str(), c.connector_id.as_str()),
        ("iqn", "iqn.2004-10.com.example:host-0")
    );
    let Action::CreateTarget(t) = &p.actions[0] else {
        unreachable!()
    };
    assert_eq!(
        (t.boot_index, t.volume_type.as_str(), t.volume_id.as_str()),
        (0, "iscsi", "vol-1")
    );
    assert_eq!(
        Value::Object(t.properties.clone()),
        json!({
            "target_iqn": "iqn.2010-10.com.example:vol-1", "target_portal": "192.0.2.10:3260",
            "target_lun": 3, "auth_method": "CHAP", "auth_username": "chapuser", "auth_password": PW,
        })
    );
    assert!(t.extra[CREDENTIALS_KEY].as_str().unwrap().starts_with("sha256:"));
    assert!(!t.extra[CREDENTIALS_KEY].as_str().unwrap().contains(PW));
}

/// The storage interface shares the node PATCH only where adoption is two transitions
/// away; one step from adoption (or in maintenance) it is a PATCH of its own, last.
#[test]
fn storage_interface_patch_is_separate_only_near_adoption() {
    let node_patches = |p: &Plan| -> Vec<Vec<String>> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                Action::PatchNode { ops, .. } => Some(ops.iter().map(|o| o.path().to_owned()).collect()),
                _ => None,
            })
            .collect()
    };
    let all = [
        "/properties/capabilities",
        "/extra/bootvolume_managed",
        "/storage_interface",
    ];
    let split = vec![all[..2].to_vec(), vec![all[2]]];
    let cases: [(&str, bool, Vec<Vec<&str>>); 6] = [
        ("enroll", false, vec![all.to_vec()]),
        ("available", false, vec![all.to_vec()]),
        ("manageable", false, split.clone()),
        ("inspecting", false, split.clone()),
        ("enroll", true, split.clone()),
        ("available", true, split),
    ];
    for (state, maintenance, want) in cases {
        let mut current = node(state, Some("power off"));
        current.node.maintenance = maintenance;
        let got = node_patches(&plan(Some(&desired_external()), &current));
        assert_eq!(got, want, "{state} maintenance={maintenance}");
    }
    // Only the interface left to change: one PATCH with it alone, in every state.
    let start = node("manageable", None);
    let first = plan(Some(&desired_external()), &start);
    let mut current = simulate(&start, &first.actions[..3]);
    current.node.provision_state = Some("enroll".into());
    let p = plan(Some(&desired_external()), &current);
    assert_eq!(node_patches(&p), [vec!["/storage_interface"]]);
}

/// The boot device rides on a configuring pass only where the handshake would set it next:
/// a state that takes a boot device, unlocked, nothing blocked, not recorded, and a node
/// PATCH in the plan to carry the record.
#[test]
fn boot_device_folds_into_the_last_node_patch_only_when_the_handshake_would_set_it() {
    const KEY: &str = "bootvolume_boot_device";
    let fold = |current: &Current| {
        let mut p = plan(Some(&desired_external()), current);
        let folded = fold_boot_device(&mut p, current, KEY);
        (folded, kinds(&p), p)
    };
    let with = |state: &str, power: Option<&str>, edit: fn(&mut Current)| {
        let mut c = node(state, power);
        edit(&mut c);
        c
    };
    let cases: [(&str, Current, bool); 7] = [
        ("enroll", with("enroll", None, |_| {}), true),
        ("available", with("available", Some("power off"), |_| {}), true),
        ("manageable", with("manageable", Some("power on"), |_| {}), true),
        (
            "active",
            with("active", Some("power on"), |c| {
                c.node.storage_interface = Some("external".into())
            }),
            false,
        ),
        (
            "locked",
            with("enroll", None, |c| c.node.reservation = Some("conductor".into())),
            false,
        ),
        (
            "recorded",
            with("enroll", None, |c| {
                c.node.extra.insert(KEY.into(), json!("pxe"));
            }),
            false,
        ),
        // A LUN change while powered on waits: nothing folds into a blocked pass, even one
        // with a node PATCH (the capability) to carry the record.
        (
            "blocked",
            {
                let start = node("available", Some("power off"));
                let mut c = converge(Some(&desired_external()), &start);
                c.node.power_state = Some("power on".into());
                c.targets[0].properties.insert("target_lun".into(), json!(9));
                c.node.properties.remove("capabilities");
                c
            },
            false,
        ),
    ];
    for (case, current, want) in cases {
        let (folded, kinds, p) = fold(&current);
        assert!(
            kinds.contains(&"patch_node"),
            "{case}: no node PATCH to fold into: {kinds:?}"
        );
        assert_eq!(folded, want, "{case}: {kinds:?}");
        let puts = kinds.iter().filter(|k| **k == "set_boot_device").count();
        assert_eq!(puts, usize::from(want), "{case}: {kinds:?}");
        if !want {
            continue;
        }
        // The PUT right before the last node PATCH, which records it.
        let at = kinds.iter().rposition(|k| *k == "patch_node").unwrap();
        assert_eq!(kinds[at - 1], "set_boot_device", "{case}: {kinds:?}");
        let Action::PatchNode { ops, .. } = &p.actions[at] else {
            unreachable!()
        };
        let last = serde_json::to_value(ops.last().unwrap()).unwrap();
        assert_eq!(
            last,
            json!({"op": "add", "path": "/extra/bootvolume_boot_device", "value": "pxe"}),
            "{case}"
        );
    }
    // In sync (no node PATCH to carry the record): the handshake sets it on its own.
    let synced = converge(Some(&desired_external()), &node("enroll", None));
    let (folded, kinds, _) = fold(&synced);
    assert!(!folded && kinds.is_empty(), "{kinds:?}");
}

#[test]
fn every_desired_state_converges_in_one_pass_from_every_node_state() {
    let states = [
        ("enroll", None),
        ("manageable", Some("power on")),
        ("available", Some("power off")),
        ("available", Some("power on")),
        ("active", Some("power on")),
    ];
    for desired in [desired_external(), desired_no_auth(), desired_cinder()] {
        for (prov, power) in states {
            let mut start = node(prov, power);
            // Interface changes are refused while active: start from an already-set interface.
            if prov == "active" {
                start.node.storage_interface = Some(desired.storage_interface.clone());
            }
            converge(Some(&desired), &start);
        }
    }
}

#[test]
fn other_capabilities_are_kept() {
    let mut start = node("manageable", None);
    start
        .node
        .properties
        .insert("capabilities".into(), json!("boot_mode:uefi,cpu_vt:true"));
    let done = converge(Some(&desired_external()), &start);
    assert_eq!(
        done.node.capabilities(),
        "boot_mode:uefi,cpu_vt:true,iscsi_boot:True"
    );
    let removed = converge(None, &done);
    assert_eq!(removed.node.capabilities(), "boot_mode:uefi,cpu_vt:true");
}

#[test]
fn capability_string_table() {
    let cases = [
        ("", Some("True"), "iscsi_boot:True"),
        ("boot_mode:uefi", Some("True"), "boot_mode:uefi,iscsi_boot:True"),
        (
            "iscsi_boot:True,boot_mode:uefi",
            Some("True"),
            "iscsi_boot:True,boot_mode:uefi",
        ),
        ("iscsi_boot:true", Some("True"), "iscsi_boot:true"),
        (
            "boot_mode:uefi, iscsi_boot:False",
            Some("True"),
            "boot_mode:uefi,iscsi_boot:True",
        ),
        ("iscsi_boot:True,iscsi_boot:True", Some("True"), "iscsi_boot:True"),
        ("boot_mode:uefi,iscsi_boot:True", None, "boot_mode:uefi"),
        ("iscsi_boot:True", None, ""),
        ("boot_mode:uefi", None, "boot_mode:uefi"),
        ("", None, ""),
    ];
    for (caps, value, want) in cases {
        assert_eq!(
            with_capability(caps, ISCSI_BOOT_CAPABILITY, value),
            want,
            "{caps:?} {value:?}"
        );
    }
}

/// LUN change: PATCH when powered off; delete + create where Ironic allows deletes;
/// wait otherwise.
#[test]
fn lun_change_depends_on_node_state() {
    let configured = converge(Some(&desired_external()), &node("available", Some("power off")));
    let mut bv = bv_external();
    bv.iscsi_target.as_mut().unwrap().lun = Some(7);
    let want = Desired::from_boot_volume(&bv, creds(PW)).unwrap();
    let with_state = |prov: &str, power: &str| {
        let mut c = configured.clone();
        c.node.provision_state = Some(prov.into());
        c.node.power_state = Some(power.into());
        c
    };
    let cases: [(&str, &str, &[&str], usize); 4] = [
        ("available", "power off", &["patch_target"], 0),
        ("active", "power off", &["patch_target"], 0),
        ("manageable", "power on", &["delete_target", "create_target"], 0),
        ("active", "power on", &[], 1),
    ];
    for (prov, power, want_kinds, blocked) in cases {
        let current = with_state(prov, power);
        let p = plan(Some(&want), &current);
        assert_eq!(kinds(&p), want_kinds, "{prov}/{power}");
        assert_eq!(p.blocked.len(), blocked, "{prov}/{power}");
        if blocked == 0 {
            let after = converge(Some(&want), &current);
            assert_eq!(after.targets[0].properties["target_lun"], json!(7));
        } else {
            assert!(
                matches!(&p.blocked[0], Blocked::WaitingForPowerOff { power_state, .. } if power_state == "power on")
            );
        }
    }
}

#[test]
fn chap_rotation_resends_and_same_secret_does_not() {
    let configured = converge(Some(&desired_external()), &node("available", Some("power off")));
    let same = Desired::from_boot_volume(&bv_external(), creds(PW)).unwrap();
    assert!(plan(Some(&same), &configured).is_empty());
    let rotated = Desired::from_boot_volume(&bv_external(), creds("n3w-pw")).unwrap();
    let p = plan(Some(&rotated), &configured);
    assert_eq!(kinds(&p), ["patch_target"]);
    let Action::PatchTarget { ops, changes, .. } = &p.actions[0] else {
        unreachable!()
    };
    let body = serde_json::to_string(ops).unwrap();
    assert!(body.contains("n3w-pw") && body.contains(CREDENTIALS_KEY));
    assert_eq!(changes, &["properties (CHAP credentials)"]);
    converge(Some(&rotated), &configured);
    // A changed user name is a rotation too.
    let mut renamed = rotated.clone();
    renamed.credentials.as_mut().unwrap().username = "other".into();
    renamed
        .properties
        .as_mut()
        .unwrap()
        .insert("auth_username".into(), json!("other"));
    assert_eq!(kinds(&plan(Some(&renamed), &configured)), ["patch_target"]);
}

#[test]
fn switching_chap_off_removes_credentials_and_digest() {
    let configured = converge(Some(&desired_external()), &node("available", Some("power off")));
    let p = plan(Some(&desired_no_auth()), &configured);
    let Action::PatchTarget { ops, .. } = &p.actions[0] else {
        panic!("{p:?}")
    };
    assert!(
        ops.iter()
            .any(|o| matches!(o, PatchOp::Remove { path } if path.ends_with(CREDENTIALS_KEY)))
    );
    let done = converge(Some(&desired_no_auth()), &configured);
    assert!(!done.targets[0].properties.contains_key(PASSWORD_KEY));
}

#[test]
fn connector_change_and_extra_connectors() {
    let configured = converge(Some(&desired_external()), &node("available", Some("power off")));
    let mut want = desired_external();
    want.connector_id = "iqn.2004-10.com.example:host-new".into();
    assert_eq!(kinds(&plan(Some(&want), &configured)), ["patch_connector"]);
    converge(Some(&want), &configured);

    let mut on = configured.clone();
    on.node.power_state = Some("power on".into());
    let p = plan(Some(&want), &on);
    assert!(p.actions.is_empty() && p.blocked.len() == 1, "{p:?}");

    // A second iqn connector is deleted; connectors of other types are left alone.
    let mut extra = configured.clone();
    for (uuid, kind) in [("x-iqn", "iqn"), ("x-ip", "ip")] {
        extra.connectors.push(Connector {
            uuid: uuid.into(),
            kind: kind.into(),
            connector_id: "10.0.0.1".into(),
            ..Default::default()
        });
    }
    let p = plan(Some(&desired_external()), &extra);
    assert!(
        matches!(&p.actions[..], [Action::DeleteConnector { uuid, .. }] if uuid == "x-iqn"),
        "{p:?}"
    );
    converge(Some(&desired_external()), &extra);
}

#[test]
fn extra_targets_and_foreign_boot_target_are_replaced() {
    let mut start = node("manageable", Some("power on"));
    for (uuid, index) in [("foreign0", 0), ("foreign1", 1)] {
        start.targets.push(Target {
            uuid: uuid.into(),
            volume_type: "iscsi".into(),
            boot_index: index,
            volume_id: "old".into(),
            ..Default::default()
        });
    }
    let p = plan(Some(&desired_external()), &start);
    assert_eq!(
        kinds(&p),
        [
            "delete_target",
            "delete_target",
            "create_target",
            "create_connector",
            "patch_node",
            "patch_node"
        ]
    );
    converge(Some(&desired_external()), &start);
}

#[test]
fn interface_change_is_refused_while_active_but_not_in_maintenance() {
    let active = node("active", Some("power on"));
    let p = plan(Some(&desired_external()), &active);
    assert!(
        matches!(&p.blocked[..], [Blocked::InterfaceChangeNotAllowed { provision_state, .. }] if provision_state == "active")
    );
    // Capabilities and creates still happen (allowed in active).
    assert_eq!(kinds(&p), ["create_target", "create_connector", "patch_node"]);
    let Action::PatchNode { ops, .. } = &p.actions[2] else {
        unreachable!()
    };
    assert!(ops.iter().all(|o| o.path() != "/storage_interface"));
    let mut maint = active.clone();
    maint.node.maintenance = true;
    converge(Some(&desired_external()), &maint);
}

#[test]
fn removal_undoes_only_our_own_work() {
    let mut start = node("available", Some("power off"));
    start.connectors.push(Connector {
        uuid: "foreign".into(),
        kind: "ip".into(),
        connector_id: "10.0.0.1".into(),
        ..Default::default()
    });
    let configured = converge(Some(&desired_external()), &start);
    let p = plan(None, &configured);
    assert_eq!(
        kinds(&p),
        ["delete_target", "delete_connector", "patch_node", "patch_node"]
    );
    let Action::PatchNode { ops, .. } = &p.actions[3] else {
        unreachable!()
    };
    assert!(
        ops.iter().any(|o| o.path() == "/extra/bootvolume_managed"),
        "the marker goes in the last write"
    );
    let done = converge(None, &configured);
    assert_eq!(done.node.storage_interface.as_deref(), Some("noop"));
    assert_eq!(done.node.capabilities(), "");
    assert!(done.node.extra.is_empty() && done.targets.is_empty());
    assert_eq!(done.connectors.len(), 1, "the foreign connector stays");

    // A node we never touched: nothing to do, even with a non-noop interface.
    let mut foreign = node("active", Some("power on"));
    foreign.node.storage_interface = Some("cinder".into());
    assert!(plan(None, &foreign).is_empty());
}

#[test]
fn removal_waits_for_power_off_and_keeps_the_marker() {
    let mut configured = converge(Some(&desired_external()), &node("available", Some("power off")));
    configured.node.power_state = Some("power on".into());
    configured.node.provision_state = Some("active".into());
    let p = plan(None, &configured);
    assert_eq!(p.blocked.len(), 3, "{p:?}"); // target, connector, interface
    let Action::PatchNode { ops, .. } = &p.actions[0] else {
        panic!("{p:?}")
    };
    assert!(
        ops.iter().all(|o| !o.path().contains(MANAGED_KEY)),
        "marker must stay until done"
    );
}

#[test]
fn credential_source_table() {
    let mut inline = bv_external();
    inline.iscsi_credentials_name = None;
    let t = inline.iscsi_target.as_mut().unwrap();
    t.auth_secret_ref = None;
    t.auth_user = Some("u".into());
    t.auth_passwd = Some(Sensitive::new("p"));
    let mut none_given = inline.clone();
    let t = none_given.iscsi_target.as_mut().unwrap();
    t.auth_user = None;
    t.auth_method = Some("CHAP".into());
    let cases = [
        (bv_external(), Ok(CredentialSource::Secret("chap"))),
        (
            inline,
            Ok(CredentialSource::Inline(Credentials {
                username: "u".into(),
                password: Sensitive::new("p"),
            })),
        ),
        (none_given, Err(SpecError::MissingCredentials)),
        (
            BootVolume {
                volume_driver: Some("cinder".into()),
                ..bv_external()
            },
            Ok(CredentialSource::None),
        ),
    ];
    for (bv, want) in cases {
        assert_eq!(credential_source(&bv), want, "{bv:?}");
    }
}

#[test]
fn desired_state_errors_table() {
    let with = |f: fn(&mut BootVolume)| {
        let mut bv = bv_external();
        f(&mut bv);
        bv
    };
    let cases = [
        (
            with(|b| b.volume_id = None),
            creds(PW),
            SpecError::Missing("volumeId"),
        ),
        (
            with(|b| b.connector_id = None),
            creds(PW),
            SpecError::Missing("connectorId"),
        ),
        (
            with(|b| b.volume_driver = None),
            creds(PW),
            SpecError::Missing("volumeDriver"),
        ),
        (
            with(|b| b.iscsi_target = None),
            creds(PW),
            SpecError::Missing("iscsiTarget"),
        ),
        (
            with(|b| b.iscsi_target.as_mut().unwrap().portal = None),
            creds(PW),
            SpecError::Missing("iscsiTarget.portal"),
        ),
        (
            with(|b| b.volume_driver = Some("noop".into())),
            creds(PW),
            SpecError::Unsupported {
                field: "volumeDriver",
                value: "noop".into(),
            },
        ),
        (
            with(|b| b.target_type = Some("fibre_channel".into())),
            creds(PW),
            SpecError::Unsupported {
                field: "targetType",
                value: "fibre_channel".into(),
            },
        ),
        (bv_external(), None, SpecError::MissingCredentials),
    ];
    for (bv, c, want) in cases {
        assert_eq!(Desired::from_boot_volume(&bv, c), Err(want));
    }
}

#[test]
fn descriptions_never_show_the_password() {
    let configured = converge(Some(&desired_external()), &node("available", Some("power off")));
    let rotated = Desired::from_boot_volume(&bv_external(), creds("r0tated-pw")).unwrap();
    let plans = [
        plan(Some(&desired_external()), &node("enroll", None)),
        plan(Some(&rotated), &configured),
        plan(
            Some(&rotated),
            &Current {
                node: Node {
                    power_state: Some("power on".into()),
                    ..configured.node.clone()
                },
                ..configured.clone()
            },
        ),
        plan(None, &configured),
    ];
    for p in &plans {
        let text = format!(
            "{p:?} {}",
            p.actions
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(";")
        );
        assert!(!text.contains(PW) && !text.contains("r0tated-pw"), "{text}");
    }
    assert!(
        plans[0].actions[0]
            .to_string()
            .contains("auth_password=<redacted>")
    );
}

#[test]
fn classify_names_the_kind_of_change() {
    let fresh = node("available", Some("power off"));
    let configured = converge(Some(&desired_external()), &fresh);
    let rotated = Desired::from_boot_volume(&bv_external(), creds("n3w-pw")).unwrap();
    let mut renamed = rotated.clone();
    renamed.credentials.as_mut().unwrap().username = "other".into();
    renamed
        .properties
        .as_mut()
        .unwrap()
        .insert("auth_username".into(), json!("other"));
    let mut new_lun = bv_external();
    new_lun.iscsi_target.as_mut().unwrap().lun = Some(9);
    let new_lun = Desired::from_boot_volume(&new_lun, creds("n3w-pw")).unwrap();
    // Powered on in manageable: the target is replaced (delete + create), still a rotation.
    let mut manageable_on = configured.clone();
    manageable_on.node.provision_state = Some("manageable".into());
    manageable_on.node.power_state = Some("power on".into());
    let cases: [(&str, Option<&Desired>, &Current, Option<Change>); 8] = [
        (
            "first configuration",
            Some(&desired_external()),
            &fresh,
            Some(Change::Applied),
        ),
        ("in sync", Some(&desired_external()), &configured, None),
        (
            "new password",
            Some(&rotated),
            &configured,
            Some(Change::CredentialsRotated),
        ),
        (
            "new user name",
            Some(&renamed),
            &configured,
            Some(Change::CredentialsRotated),
        ),
        (
            "replaced target",
            Some(&rotated),
            &manageable_on,
            Some(Change::CredentialsRotated),
        ),
        (
            "new LUN and password",
            Some(&new_lun),
            &configured,
            Some(Change::Applied),
        ),
        (
            "CHAP switched off",
            Some(&desired_no_auth()),
            &configured,
            Some(Change::Applied),
        ),
        ("removed", None, &configured, Some(Change::Removed)),
    ];
    for (name, desired, current, want) in cases {
        let p = plan(desired, current);
        assert_eq!(classify(desired, current, &p.actions), want, "{name}: {p:?}");
    }
    assert_eq!(
        classify(None, &fresh, &plan(None, &fresh).actions),
        None,
        "nothing to remove"
    );
}
