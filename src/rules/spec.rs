//! Rules on one object's `spec.bootVolume` and its interplay with the rest of the host
//! (docs/api.md). Each function adds to a [`Verdict`]; none can fail.

use super::{
    Policy,
    field::{ErrorKind, FieldError, Shown, Verdict},
    format,
};
use crate::api::{AUTH_CHAP, AUTH_NONE, BootVolume, HostView, ITYPE_IQN, TARGET_TYPE_ISCSI};

/// Field path of the block.
pub const BV: &str = "spec.bootVolume";
const TARGET: &str = "spec.bootVolume.iscsiTarget";
const CRED_NAME: &str = "spec.bootVolume.iscsiCredentialsName";
const AUTH_USER: &str = "spec.bootVolume.iscsiTarget.authUser";
const AUTH_PASSWD: &str = "spec.bootVolume.iscsiTarget.authPasswd";
const SECRET_REF: &str = "spec.bootVolume.iscsiTarget.authSecretRef";

/// Volume drivers that can boot from a volume (`noop` cannot).
pub const KNOWN_DRIVERS: [&str; 2] = ["cinder", "external"];
/// BMC schemes whose Ironic boot interface is not iPXE (suffix match: `redfish-virtualmedia`,
/// `ilo5-virtualmedia`, `idrac-virtualmedia`, `redfish-uefihttp`, ...).
const NON_IPXE_SCHEME_SUFFIXES: [&str; 2] = ["-virtualmedia", "-uefihttp"];

fn str_value(s: &str) -> Shown {
    Shown::Str(s.to_owned())
}

/// Adds a Forbidden error unless that field already has one (two rules may forbid the
/// same credential field for different reasons; the user needs to hear it once).
fn forbid(out: &mut Verdict, rule: &'static str, field: &str, detail: &str) {
    if !out
        .errors
        .iter()
        .any(|e| e.field == field && e.kind == ErrorKind::Forbidden)
    {
        out.errors.push(FieldError::forbidden(rule, field, detail));
    }
}

/// The driver, when it is one we know and the policy allows.
fn driver<'a>(policy: &Policy, bv: &'a BootVolume, out: &mut Verdict) -> Option<&'a str> {
    const F: &str = "spec.bootVolume.volumeDriver";
    let d = bv.volume_driver.as_deref().filter(|d| !d.is_empty());
    let Some(d) = d else {
        out.errors.push(FieldError::required("volume-driver", F, ""));
        return None;
    };
    let allowed = |k: &str| policy.allowed_volume_drivers.iter().any(|a| a == k);
    if KNOWN_DRIVERS.contains(&d) && allowed(d) {
        Some(d)
    } else {
        // The list for the message only on this (rare) path.
        let allowed: Vec<&str> = KNOWN_DRIVERS.into_iter().filter(|k| allowed(k)).collect();
        out.errors.push(FieldError::not_supported(
            "volume-driver",
            F,
            str_value(d),
            &allowed,
        ));
        None
    }
}

/// `volumeId`: required; a UUID for cinder; 1-36 characters without whitespace otherwise.
fn volume_id(bv: &BootVolume, driver: Option<&str>, out: &mut Verdict) {
    const F: &str = "spec.bootVolume.volumeId";
    let Some(id) = bv.volume_id.as_deref().filter(|s| !s.is_empty()) else {
        out.errors.push(FieldError::required("volume-id", F, ""));
        return;
    };
    if driver == Some("cinder") {
        if !format::uuid(id) {
            out.errors.push(FieldError::invalid(
                "volume-id",
                F,
                str_value(id),
                "must be a UUID (the Cinder volume id)",
            ));
        }
    } else if id.chars().count() > format::VOLUME_ID_MAX {
        out.errors
            .push(FieldError::too_long("volume-id", F, format::VOLUME_ID_MAX));
    } else if id.chars().any(char::is_whitespace) {
        out.errors.push(FieldError::invalid(
            "volume-id",
            F,
            str_value(id),
            "must not contain whitespace",
        ));
    }
}

/// An iSCSI name field (`connectorId`, `iscsiTarget.iqn`): RFC 3720 format, at most 223
/// bytes; upper case is allowed with a warning.
fn iscsi_name(rule: &'static str, field: &str, value: Option<&str>, out: &mut Verdict) {
    let Some(name) = value.filter(|s| !s.is_empty()) else {
        out.errors.push(FieldError::required(rule, field, ""));
        return;
    };
    if name.len() > format::ISCSI_NAME_MAX_BYTES {
        out.errors
            .push(FieldError::too_long(rule, field, format::ISCSI_NAME_MAX_BYTES));
    } else if let Err(why) = format::iscsi_name(name) {
        out.errors
            .push(FieldError::invalid(rule, field, str_value(name), why));
    } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
        out.warnings.push(format!(
            "{field}: iSCSI names are case-insensitive; write it in lower case"
        ));
    }
}

/// A closed-set field: any value other than `supported` is NotSupported.
fn closed_set(rule: &'static str, field: &str, value: Option<&str>, supported: &[&str], out: &mut Verdict) {
    if let Some(v) = value
        && !supported.contains(&v)
    {
        out.errors
            .push(FieldError::not_supported(rule, field, str_value(v), supported));
    }
}

/// `iscsiTarget`: required with its iqn and portal for external; Cinder supplies the
/// connection, so those fields are forbidden with cinder.
fn iscsi_target(bv: &BootVolume, driver: Option<&str>, policy: &Policy, out: &mut Verdict) {
    let target = bv.iscsi_target.as_ref();
    match (driver, target) {
        (Some("external"), None) => {
            out.errors.push(FieldError::required(
                "iscsi-target",
                TARGET,
                "required for volumeDriver external",
            ));
        }
        (Some("external"), Some(t)) => {
            iscsi_name(
                "target-iqn",
                "spec.bootVolume.iscsiTarget.iqn",
                t.iqn.as_deref(),
                out,
            );
            const PORTAL: &str = "spec.bootVolume.iscsiTarget.portal";
            match t.portal.as_deref().filter(|p| !p.is_empty()) {
                None => out.errors.push(FieldError::required("target-portal", PORTAL, "")),
                Some(p) => {
                    if let Err(why) = format::portal(p) {
                        out.errors
                            .push(FieldError::invalid("target-portal", PORTAL, str_value(p), why));
                    }
                }
            }
        }
        (Some("cinder"), Some(t)) => {
            const WHY: &str = "must not be set with volumeDriver cinder: Cinder supplies the connection";
            let set = [
                ("spec.bootVolume.iscsiTarget.iqn", t.iqn.is_some()),
                ("spec.bootVolume.iscsiTarget.portal", t.portal.is_some()),
                ("spec.bootVolume.iscsiTarget.lun", t.lun.is_some()),
                (AUTH_USER, t.auth_user.is_some() && policy.allow_inline_chap),
                (AUTH_PASSWD, t.auth_passwd.is_some() && policy.allow_inline_chap),
            ];
            for (field, _) in set.iter().filter(|(_, is_set)| *is_set) {
                forbid(out, "cinder-target-fields", field, WHY);
            }
        }
        _ => {}
    }
    if let Some(t) = target {
        if let Some(lun) = t.lun
            && !(0..=65535).contains(&lun)
        {
            out.errors.push(FieldError::invalid(
                "target-lun",
                "spec.bootVolume.iscsiTarget.lun",
                Shown::Int(lun),
                "must be between 0 and 65535",
            ));
        }
        closed_set(
            "itype",
            "spec.bootVolume.iscsiTarget.iType",
            t.i_type.as_deref(),
            &[ITYPE_IQN],
            out,
        );
        closed_set(
            "auth-method",
            "spec.bootVolume.iscsiTarget.authMethod",
            t.auth_method.as_deref(),
            &[AUTH_CHAP, AUTH_NONE],
            out,
        );
    }
}

/// CHAP credentials: exactly one source with CHAP, none with `None`; inline credentials
/// only with `--allow-inline-chap`; Secrets only from the host's own namespace.
fn credentials(host: &HostView, bv: &BootVolume, policy: &Policy, out: &mut Verdict) {
    let t = bv.iscsi_target.as_ref();
    let user = t.is_some_and(|t| t.auth_user.is_some());
    let passwd = t.is_some_and(|t| t.auth_passwd.is_some());
    let secret_ref = t.and_then(|t| t.auth_secret_ref.as_ref());
    let cred_name = bv.iscsi_credentials_name.as_deref();
    let method = t.and_then(|t| t.auth_method.as_deref());

    if !policy.allow_inline_chap {
        const WHY: &str =
            "inline CHAP credentials are not allowed: put them in a Secret and set iscsiCredentialsName";
        for (field, _) in [(AUTH_USER, user), (AUTH_PASSWD, passwd)]
            .iter()
            .filter(|(_, set)| *set)
        {
            forbid(out, "inline-chap", field, WHY);
        }
    } else if user || passwd {
        out.warnings.push(
            "spec.bootVolume.iscsiTarget: inline CHAP credentials are readable in the host; \
             prefer iscsiCredentialsName"
                .to_owned(),
        );
    }

    if let Some(name) = cred_name {
        secret_name("credentials-name", CRED_NAME, name, out);
    }
    if let Some(r) = secret_ref {
        const NAME: &str = "spec.bootVolume.iscsiTarget.authSecretRef.name";
        match r.name.as_deref().filter(|n| !n.is_empty()) {
            None => out.errors.push(FieldError::required("secret-ref", NAME, "")),
            Some(n) => {
                // A reference resolved from iscsiCredentialsName was already checked there.
                if cred_name != Some(n) {
                    secret_name("secret-ref", NAME, n, out);
                }
                if let Some(c) = cred_name.filter(|c| *c != n) {
                    out.errors.push(FieldError::invalid(
                        "secret-ref",
                        NAME,
                        str_value(n),
                        format!("must match iscsiCredentialsName {c:?}"),
                    ));
                }
            }
        }
        if let Some(ns) = r.namespace.as_deref()
            && ns != host.namespace
            && !host.namespace.is_empty()
        {
            forbid(
                out,
                "secret-ref-namespace",
                "spec.bootVolume.iscsiTarget.authSecretRef.namespace",
                "must be the host's namespace: a host may only use Secrets from its own namespace",
            );
        }
    }

    let from_secret = cred_name.is_some() || secret_ref.is_some();
    // The reference mutation resolves from iscsiCredentialsName: one source, reported once.
    let derived_ref = cred_name.is_some() && secret_ref.and_then(|r| r.name.as_deref()) == cred_name;
    match method {
        Some(AUTH_NONE) => {
            const WHY: &str = "must not be set with authMethod None";
            let set = [
                (CRED_NAME, cred_name.is_some()),
                (SECRET_REF, secret_ref.is_some() && !derived_ref),
                (AUTH_USER, user),
                (AUTH_PASSWD, passwd),
            ];
            for (field, _) in set.iter().filter(|(_, is_set)| *is_set) {
                forbid(out, "auth-none-credentials", field, WHY);
            }
        }
        Some(AUTH_CHAP) | None => {
            // Cinder supplies CHAP itself unless the user asks for CHAP explicitly.
            let needs_source = method == Some(AUTH_CHAP) || bv.volume_driver.as_deref() != Some("cinder");
            if needs_source && !from_secret && !user && !passwd {
                out.errors.push(FieldError::required(
                    "chap-credentials",
                    CRED_NAME,
                    "CHAP needs credentials: name a Secret with username and password keys, or set \
                     iscsiTarget.authMethod: None",
                ));
            }
            if policy.allow_inline_chap {
                if from_secret {
                    for (field, _) in [(AUTH_USER, user), (AUTH_PASSWD, passwd)]
                        .iter()
                        .filter(|(_, set)| *set)
                    {
                        forbid(
                            out,
                            "chap-credentials",
                            field,
                            "set either iscsiCredentialsName or inline credentials, not both",
                        );
                    }
                } else if user != passwd {
                    let missing = if user { AUTH_PASSWD } else { AUTH_USER };
                    out.errors.push(FieldError::required(
                        "chap-credentials",
                        missing,
                        "inline CHAP needs both user and password",
                    ));
                }
            }
        }
        Some(_) => {} // reported as NotSupported by iscsi_target
    }
}

/// A Secret name: a DNS-1123 subdomain.
fn secret_name(rule: &'static str, field: &str, name: &str, out: &mut Verdict) {
    if name.len() > format::DNS1123_SUBDOMAIN_MAX {
        out.errors
            .push(FieldError::too_long(rule, field, format::DNS1123_SUBDOMAIN_MAX));
    } else if !format::dns_name(name) {
        out.errors.push(FieldError::invalid(
            rule,
            field,
            str_value(name),
            "must be a DNS-1123 subdomain (lower case alphanumerics, '-' and '.')",
        ));
    }
}

/// `bootVolume` is an alternative deploy source (image and customDeploy would write a local
/// disk), and it needs an iPXE-capable BMC.
fn interplay(host: &HostView, out: &mut Verdict) {
    for conflict in ["image", "customDeploy"] {
        if host.spec(conflict).is_some() {
            out.errors.push(FieldError::forbidden(
                "deploy-source",
                BV,
                format!("may not be set together with spec.{conflict}: bootVolume is the deploy source"),
            ));
        }
    }
    // `externallyProvisioned: true` is allowed: adoption is how a host without an image
    // reaches `active` under baremetal-operator, and Ironic's adoption boots from the volume.
    if let Some(address) = host.bmc_address() {
        // Compared without lower-casing a copy: this runs on every request with a BMC.
        let scheme = address
            .as_bytes()
            .windows(3)
            .position(|w| w == b"://")
            .map_or("ipmi", |i| &address[..i]);
        let base = strip_suffix_ignore_case(scheme, "+https")
            .or_else(|| strip_suffix_ignore_case(scheme, "+http"))
            .unwrap_or(scheme);
        if NON_IPXE_SCHEME_SUFFIXES
            .iter()
            .any(|s| strip_suffix_ignore_case(base, s).is_some())
        {
            let base = base.to_ascii_lowercase();
            out.errors.push(FieldError::forbidden(
                "bmc-ipxe",
                "spec.bmc.address",
                format!("boot from volume needs an iPXE boot interface; {base:?} does not boot with iPXE"),
            ));
        }
    }
}

/// `s` without the ASCII `suffix`, compared case-insensitively.
fn strip_suffix_ignore_case<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    let tail = s.as_bytes().get(cut..)?;
    // An ASCII suffix matched: `cut` is on a character boundary.
    (tail.eq_ignore_ascii_case(suffix.as_bytes()))
        .then(|| s.get(..cut))
        .flatten()
}

/// Allowed, but worth telling the user.
fn warnings(host: &HostView, out: &mut Verdict) {
    for (field, why) in [
        ("rootDeviceHints", "no local disk is written"),
        ("raid", "no local disk is written"),
        ("userData", "there is no config drive"),
        ("networkData", "there is no config drive"),
        ("metaData", "there is no config drive"),
    ] {
        if host.spec(field).is_some() {
            out.warnings.push(format!(
                "spec.{field} is ignored when booting from a volume: {why}"
            ));
        }
    }
    if host.boot_mac_address().is_none_or(str::is_empty) {
        out.warnings
            .push("spec.bootMACAddress is empty: iPXE boot from volume needs a PXE-enabled port".to_owned());
    }
}

/// Every rule on a host that has `spec.bootVolume`.
pub fn check(policy: &Policy, host: &HostView, bv: &BootVolume, out: &mut Verdict) {
    let d = driver(policy, bv, out);
    volume_id(bv, d, out);
    iscsi_name(
        "connector-id",
        "spec.bootVolume.connectorId",
        bv.connector_id.as_deref(),
        out,
    );
    closed_set(
        "target-type",
        "spec.bootVolume.targetType",
        bv.target_type.as_deref(),
        &[TARGET_TYPE_ISCSI],
        out,
    );
    iscsi_target(bv, d, policy, out);
    credentials(host, bv, policy, out);
    interplay(host, out);
    warnings(host, out);
}
