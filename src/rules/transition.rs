//! UPDATE-only rules on `(old, new)`: the ratchet and the provisioning lock.

use super::{
    field::{FieldError, Verdict},
    spec::BV,
};
use crate::api::{BootVolume, HostView};

/// Provisioning states in which the volume is (being) attached and must not change.
pub const LOCKED_STATES: [&str; 4] = [
    "provisioning",
    "provisioned",
    "deprovisioning",
    "externally provisioned",
];

/// Ratchet: the bootVolume rules run on UPDATE only when the block or a field it depends on
/// changed, so the operator's own bookkeeping writes (finalizers, annotations, status) are
/// never blocked by a rule that was added after the host was created.
pub fn dependencies_changed(old: &HostView, new: &HostView) -> bool {
    old.boot_volume_raw != new.boot_volume_raw
        || ["image", "customDeploy", "externallyProvisioned"]
            .iter()
            .any(|k| old.spec(k) != new.spec(k))
        || old.bmc_address() != new.bmc_address()
}

/// Each bootVolume field with its effective value (defaults applied), so `/validate`
/// decides the same whether or not `/mutate` ran first. Passwords compare by value but are
/// never shown: Forbidden errors carry no value.
fn effective(bv: &BootVolume, namespace: &str) -> [(&'static str, Option<String>); 14] {
    let t = bv.iscsi_target.as_ref();
    let s = |v: Option<&String>| v.cloned();
    let r = t.and_then(|t| t.auth_secret_ref.as_ref());
    let secret_name = r
        .and_then(|r| r.name.clone())
        .or_else(|| bv.iscsi_credentials_name.clone());
    let secret_ns = secret_name.as_ref().map(|_| {
        r.and_then(|r| r.namespace.clone())
            .unwrap_or_else(|| namespace.to_owned())
    });
    [
        ("volumeId", s(bv.volume_id.as_ref())),
        ("volumeDriver", s(bv.volume_driver.as_ref())),
        ("connectorId", s(bv.connector_id.as_ref())),
        (
            "targetType",
            Some(
                bv.target_type
                    .clone()
                    .unwrap_or_else(|| crate::api::TARGET_TYPE_ISCSI.into()),
            ),
        ),
        ("iscsiCredentialsName", s(bv.iscsi_credentials_name.as_ref())),
        ("iscsiTarget.iqn", t.and_then(|t| t.iqn.clone())),
        ("iscsiTarget.portal", bv.portal_with_port()),
        ("iscsiTarget.lun", t.map(|_| bv.effective_lun().to_string())),
        (
            "iscsiTarget.authMethod",
            Some(bv.effective_auth_method().to_owned()),
        ),
        ("iscsiTarget.authUser", t.and_then(|t| t.auth_user.clone())),
        (
            "iscsiTarget.authPasswd",
            t.and_then(|t| t.auth_passwd.as_ref().map(|p| p.expose().to_owned())),
        ),
        (
            "iscsiTarget.iType",
            t.map(|t| t.i_type.clone().unwrap_or_else(|| crate::api::ITYPE_IQN.into())),
        ),
        ("iscsiTarget.authSecretRef.name", secret_name),
        ("iscsiTarget.authSecretRef.namespace", secret_ns),
    ]
}

/// While the host is provisioned (or on its way in or out), `bootVolume` cannot be added
/// and its fields cannot change; removing the whole block is allowed (it means deprovision).
/// Escape hatch: the old or new `status.operationalStatus` is `detached`.
pub fn provisioning_lock(old: &HostView, new: &HostView, out: &mut Verdict) {
    let Some(state) = old.provisioning_state().filter(|s| LOCKED_STATES.contains(s)) else {
        return;
    };
    if old.operational_status() == Some("detached") || new.operational_status() == Some("detached") {
        return;
    }
    match (&old.boot_volume, &new.boot_volume) {
        (None, Some(_)) => out.errors.push(FieldError::forbidden(
            "provisioning-lock",
            BV,
            format!("cannot be added while the host is {state}; deprovision first"),
        )),
        (Some(o), Some(n)) => {
            let (ns_old, ns_new) = (old.namespace, new.namespace);
            for ((field, a), (_, b)) in effective(o, ns_old).into_iter().zip(effective(n, ns_new)) {
                if a != b {
                    out.errors.push(FieldError::forbidden(
                        "provisioning-lock",
                        format!("{BV}.{field}"),
                        format!("cannot be changed while the host is {state}; deprovision first"),
                    ));
                }
            }
        }
        _ => {}
    }
}
