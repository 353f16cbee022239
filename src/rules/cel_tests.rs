//! The CEL rules the API server enforces without the webhook (the CRD's
//! `x-kubernetes-validations` and the ValidatingAdmissionPolicy in `manifests/policy/`)
//! agree with the Rust rules.
//!
//! Every CEL expression is evaluated with the `cel` crate (cel-rust) against every row of
//! the rule tables, every admission fixture, every host fixture and a generated corpus
//! (field values that sit on the edges of each format, and every combination of driver,
//! auth method and credential source). Two directions, under the webhook's default policy:
//! - where CEL denies, the webhook denies at the same field (a CEL evaluation error must
//!   be a webhook denial somewhere);
//! - where the webhook denies for a rule an enforcement point covers, that point denies at
//!   the same field (for the CRD: its CEL or its OpenAPI schema).
//!
//! The rules use only standard CEL (`has`, `matches`, `size`, `in`, `contains`, ternaries),
//! no Kubernetes library function (`isURL`, `ip()`, `format.*`), so the interpreter
//! evaluates every one of them; there is no rule that needs testing another way.

use super::tests::{create_cases, update_cases};
use super::{Policy, validate};
use crate::api::HostView;
use crate::fixtures::Host;
use cel::{Context, Program};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

const BV: &str = "spec.bootVolume";

/// One CEL rule as shipped, compiled.
struct Rule {
    /// Where it is shipped (for failure messages).
    origin: String,
    /// The field its denial is reported at.
    field: String,
    /// CRD rules: evaluated on `spec.bootVolume` (true) or on `spec` (false).
    on_boot_volume: bool,
    program: Program,
    /// The provisioning lock reports at `spec.bootVolume`, the webhook per changed field.
    lock: bool,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compile(origin: &str, expr: &str) -> Program {
    Program::compile(expr).unwrap_or_else(|e| panic!("{origin}: does not compile: {e}\n{expr}"))
}

fn crd_patch() -> Value {
    serde_json::from_str(&read("manifests/crd/bootvolume-schema-patch.json")).expect("patch is JSON")
}

/// `(scope, rule)`: scope `spec.bootVolume` or `spec`.
fn crd_rule_values() -> Vec<(&'static str, Value)> {
    let patch = crd_patch();
    let mut out = Vec::new();
    for op in patch.as_array().expect("array") {
        let path = op["path"].as_str().unwrap_or_default();
        let rules = if path.ends_with("/properties/spec/properties/bootVolume") {
            op["value"]["x-kubernetes-validations"]
                .as_array()
                .map(|r| (BV, r))
        } else if path.ends_with("/properties/spec/x-kubernetes-validations") {
            op["value"].as_array().map(|r| ("spec", r))
        } else {
            None
        };
        if let Some((scope, rules)) = rules {
            out.extend(rules.iter().map(|r| (scope, r.clone())));
        }
    }
    out
}

fn crd_rules() -> Vec<Rule> {
    crd_rule_values()
        .into_iter()
        .enumerate()
        .map(|(i, (scope, r))| {
            let origin = format!("CRD rule {i} ({scope}{})", r["fieldPath"].as_str().unwrap_or(""));
            Rule {
                field: format!(
                    "{scope}{}",
                    r["fieldPath"].as_str().expect("every rule has a fieldPath")
                ),
                program: compile(&origin, r["rule"].as_str().expect("rule")),
                origin,
                on_boot_volume: scope == BV,
                lock: false,
            }
        })
        .collect()
}

fn policy_doc() -> Value {
    serde_saphyr::from_str(&read("manifests/policy/policy.yaml")).expect("policy.yaml is YAML")
}

struct PolicyProgram {
    match_conditions: Vec<Program>,
    variables: Vec<(String, Program)>,
    validations: Vec<Rule>,
}

fn policy_programs() -> PolicyProgram {
    let doc = policy_doc();
    let spec = &doc["spec"];
    let list = |k: &str| spec[k].as_array().cloned().unwrap_or_default();
    PolicyProgram {
        match_conditions: list("matchConditions")
            .iter()
            .map(|m| {
                compile(
                    "policy matchCondition",
                    m["expression"].as_str().expect("expression"),
                )
            })
            .collect(),
        variables: list("variables")
            .iter()
            .map(|v| {
                let name = v["name"].as_str().expect("name").to_owned();
                let p = compile(
                    &format!("policy variable {name}"),
                    v["expression"].as_str().expect("expr"),
                );
                (name, p)
            })
            .collect(),
        validations: list("validations")
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let message = v["message"].as_str().expect("every validation has a message");
                let field = message
                    .split_once(": ")
                    .map(|(f, _)| f.to_owned())
                    .expect("policy messages start with the field path");
                let expr = v["expression"].as_str().expect("expression");
                let origin = format!("policy validation {i} ({field})");
                Rule {
                    field,
                    program: compile(&origin, expr),
                    origin,
                    on_boot_volume: false,
                    lock: expr.contains("variables.locked"),
                }
            })
            .collect(),
    }
}

/// serde_json to CEL, with JSON integers as CEL `int` (as the API server types them).
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => cel::Value::String(s.clone().into()),
        Value::Array(a) => cel::Value::List(a.iter().map(to_cel).collect::<Vec<_>>().into()),
        Value::Object(m) => {
            let map: HashMap<String, cel::Value> = m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            map.into()
        }
    }
}

/// The API server drops `null` values of non-nullable fields before validation.
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

thread_local! {
    /// One interpreter context, reused: building the standard library for every
    /// evaluation would dominate the test's run time. Each evaluation sets every variable
    /// its expressions read (`self`, or `object`, `oldObject`, `request`, `variables`).
    static CONTEXT: std::cell::RefCell<Context<'static, 'static>> = std::cell::RefCell::new(Context::default());
}

fn execute(program: &Program, vars: &[(&str, &cel::Value)]) -> Result<cel::Value, String> {
    CONTEXT.with(|ctx| {
        let mut ctx = ctx.borrow_mut();
        for (name, value) in vars {
            ctx.add_variable_from_value(*name, (*value).clone());
        }
        program.execute(&ctx).map_err(|e| e.to_string())
    })
}

/// Outcome of one expression: `Ok(true)` admits.
fn eval(program: &Program, vars: &[(&str, &cel::Value)]) -> Result<bool, String> {
    match execute(program, vars)? {
        cel::Value::Bool(b) => Ok(b),
        other => Err(format!("not a bool: {other:?}")),
    }
}

/// Denials of one enforcement point: the fields denied, and whether an expression failed
/// to evaluate (the API server rejects the request then too).
#[derive(Default, Debug)]
struct Denials {
    fields: BTreeSet<String>,
    lock: bool,
    eval_errors: Vec<String>,
    origins: Vec<String>,
}

impl Denials {
    fn add(&mut self, rule: &Rule, result: Result<bool, String>) {
        match result {
            Ok(true) => {}
            Ok(false) => {
                self.fields.insert(rule.field.clone());
                self.lock |= rule.lock;
                self.origins.push(rule.origin.clone());
            }
            Err(e) => self.eval_errors.push(format!("{}: {e}", rule.origin)),
        }
    }
}

fn crd_denials(rules: &[Rule], object: &Value) -> Denials {
    let mut d = Denials::default();
    let spec = object.get("spec").cloned().unwrap_or(json!({}));
    let spec_cel = to_cel(&spec);
    let bv_cel = spec.get("bootVolume").map(to_cel);
    for r in rules {
        if r.on_boot_volume {
            if let Some(bv) = &bv_cel {
                d.add(r, eval(&r.program, &[("self", bv)]));
            }
        } else {
            d.add(r, eval(&r.program, &[("self", &spec_cel)]));
        }
    }
    d
}

fn policy_denials(p: &PolicyProgram, old: Option<&Value>, new: &Value, namespace: &str) -> Denials {
    let mut d = Denials::default();
    let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
    let object = to_cel(new);
    let old_object = old.map_or(cel::Value::Null, to_cel);
    let request = to_cel(&json!({"operation": operation, "namespace": namespace}));
    let base = [
        ("object", &object),
        ("oldObject", &old_object),
        ("request", &request),
    ];
    for m in &p.match_conditions {
        match eval(m, &base) {
            Ok(true) => {}
            Ok(false) => return d,
            Err(e) => {
                d.eval_errors.push(format!("matchCondition: {e}"));
                return d;
            }
        }
    }
    let mut vars: HashMap<String, cel::Value> = HashMap::new();
    for (name, program) in &p.variables {
        let variables: cel::Value = vars.clone().into();
        let mut all = base.to_vec();
        all.push(("variables", &variables));
        match execute(program, &all) {
            Ok(v) => {
                vars.insert(name.clone(), v);
            }
            Err(e) => d.eval_errors.push(format!("variable {name}: {e}")),
        }
    }
    let variables: cel::Value = vars.into();
    let mut all = base.to_vec();
    all.push(("variables", &variables));
    for r in &p.validations {
        d.add(r, eval(&r.program, &all));
    }
    d
}

/// One object (and its old version on UPDATE) to evaluate.
struct Case {
    name: String,
    old: Option<Value>,
    new: Value,
}

impl Case {
    fn new(name: impl Into<String>, old: Option<Value>, mut new: Value) -> Self {
        // What the API server hands to validation: nulls dropped, a namespace set.
        drop_nulls(&mut new);
        if new.is_object() && new.pointer("/metadata/namespace").is_none() {
            new = Host(new).set("/metadata/namespace", json!("default")).0;
        }
        let old = old.map(|mut o| {
            drop_nulls(&mut o);
            o
        });
        Self {
            name: name.into(),
            old,
            new,
        }
    }
}

fn table_cases() -> Vec<Case> {
    let mut out: Vec<Case> = create_cases()
        .into_iter()
        .map(|(name, host, _, _)| Case::new(format!("create table: {name}"), None, host.0))
        .collect();
    out.extend(
        update_cases()
            .into_iter()
            .map(|(name, old, new, _)| Case::new(format!("update table: {name}"), Some(old.0), new.0)),
    );
    out
}

fn files(dir: &str, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

fn fixture_cases() -> Vec<Case> {
    let mut out = Vec::new();
    for path in files("tests/fixtures/admission", "json") {
        let review: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        let req = &review["request"];
        if req["kind"]["kind"] != "BareMetalHost" || !req["object"].is_object() {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let old = req["oldObject"].is_object().then(|| req["oldObject"].clone());
        let mut new = req["object"].clone();
        if new.pointer("/metadata/namespace").is_none()
            && let Some(ns) = req["namespace"].as_str()
        {
            new = Host(new).set("/metadata/namespace", json!(ns)).0;
        }
        out.push(Case::new(format!("admission fixture {name}"), old, new));
    }
    for path in files("tests/fixtures/hosts", "yaml") {
        let text = std::fs::read_to_string(&path).expect("read");
        let Ok(docs) = serde_saphyr::from_multiple::<Value>(&text) else {
            continue; // the deliberately broken YAML fixtures
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let docs = docs.into_iter().flat_map(|d| match d {
            Value::Object(ref m) if m.get("kind") == Some(&json!("List")) => m
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            other => vec![other],
        });
        for (i, doc) in docs.enumerate() {
            if doc["kind"] == "BareMetalHost" {
                out.push(Case::new(format!("host fixture {name}[{i}]"), None, doc));
            }
        }
    }
    out
}

/// Values on the edges of each format, set one at a time on a valid external and a
/// valid cinder host.
fn edge_values() -> Vec<(&'static str, Vec<Value>)> {
    let s = |v: &[&str]| v.iter().map(|s| json!(s)).collect::<Vec<_>>();
    let iscsi = s(&[
        "iqn.2004-10.com.example:host-0",
        "iqn.2010-10.openstack.org.nodeid",
        "IQN.2004-10.COM.EXAMPLE:HOST",
        "iqn.1992-01.com.example:storage:diskarrays-sn-a8675309",
        "iqn.0001-01.a",
        "iqn.0000-01.com.example",
        "iqn.2004-00.com.example",
        "iqn.2004-13.com.example",
        "iqn.2004-1.com.example",
        "iqn.20a4-10.com.example",
        "iqn.2004-10",
        "iqn.2004-10.",
        "iqn.2004-10.com..example",
        "iqn.2004-10.com.example:",
        "iqn.2004-10.com.example:a b",
        "iqn.2004-10.com_example:x",
        "iqn.2004-10.com.example::",
        "iqn.2004-10.-.x",
        "iqn.2004-10.\u{212a}.example",
        "iqn.2004-10.com.example:\u{e9}",
        "eui.02004567A425678D",
        "eui.02004567a425678",
        "eui.02004567A425678G",
        "naa.52004567BA64678D",
        "naa.62004567BA64678D0123456789ABCDEF",
        "naa.52004567BA64678D00",
        "naa.",
        "host-0",
        "",
        " iqn.2004-10.com.example",
    ]);
    let long_iqn = format!("iqn.2004-10.com.example:{}", "a".repeat(199));
    let too_long_iqn = format!("iqn.2004-10.com.example:{}", "a".repeat(200));
    let mut iscsi_all = iscsi.clone();
    iscsi_all.extend([json!(long_iqn), json!(too_long_iqn)]);
    let label63 = "a".repeat(63);
    let label64 = "a".repeat(64);
    let dns = vec![
        json!("host-0-chap"),
        json!("a.b-c.d"),
        json!("Host"),
        json!("-a"),
        json!("a-"),
        json!("a..b"),
        json!("a_b"),
        json!(""),
        json!(label63.clone()),
        json!(label64.clone()),
        json!(format!("{label63}.{label63}.{label63}.{}", "a".repeat(61))),
        json!(format!("{label63}.{label63}.{label63}.{}", "a".repeat(62))),
        json!(7),
    ];
    let host253 = format!("{label63}.{label63}.{label63}.{}", "a".repeat(61));
    let portals = vec![
        json!("192.0.2.10"),
        json!("192.0.2.10:3260"),
        json!("san.example.com"),
        json!("SAN.example.com:1"),
        json!("a:65535"),
        json!("a:65536"),
        json!("a:03260"),
        json!("a:00000"),
        json!("a:000001"),
        json!("0.0.0.0"),
        json!("255.255.255.255:1"),
        json!("256.0.0.1"),
        json!("1.2.3.04"),
        json!("01.2.3.4"),
        json!("1.2.3"),
        json!("1.2.3.4.5"),
        json!("123"),
        json!("1a.2.3.4"),
        json!(""),
        json!(":3260"),
        json!("[fd00::1]:3260"),
        json!("fd00::1"),
        json!("192.0.2.10:0"),
        json!("192.0.2.10:"),
        json!("192.0.2.10:x"),
        json!("a:1:2"),
        json!("host name"),
        json!("-bad.example.com"),
        json!("bad-.example.com"),
        json!("a..b"),
        json!("host_name"),
        json!(format!("{label63}.example")),
        json!(format!("{label64}.example")),
        json!(host253.clone()),
        json!(format!("{host253}:3260")),
        json!(format!("{host253}a")),
        json!("h\u{e9}st"),
    ];
    let volume_ids = vec![
        json!("vol-0001"),
        json!("0b3f0c53-5c36-4b43-9d0d-6c3b8d1f1e2a"),
        json!("0B3F0C53-5C36-4B43-9D0D-6C3B8D1F1E2A"),
        json!("0b3f0c53-5c36-4b43-9d0d-6c3b8d1f1e2"),
        json!("0b3f0c535c364b439d0d6c3b8d1f1e2a0000"),
        json!("0b3f0c53-5c36-4b43-9d0d-6c3b8d1f1e2g"),
        json!("vol 1"),
        json!("vol\t1"),
        json!("vol\u{b}1"),
        json!("vol\u{a0}1"),
        json!("vol\u{2003}1"),
        json!("vol\u{3000}1"),
        json!("vol\u{1c}1"),
        json!("vol\u{200b}1"),
        json!("a".repeat(36)),
        json!("a".repeat(37)),
        json!("\u{e9}".repeat(36)),
        json!(""),
    ];
    vec![
        ("/spec/bootVolume/connectorId", iscsi_all.clone()),
        ("/spec/bootVolume/iscsiTarget/iqn", iscsi_all),
        ("/spec/bootVolume/iscsiTarget/portal", portals),
        ("/spec/bootVolume/volumeId", volume_ids),
        ("/spec/bootVolume/iscsiCredentialsName", dns.clone()),
        ("/spec/bootVolume/iscsiTarget/authSecretRef/name", dns),
        (
            "/spec/bootVolume/iscsiTarget/lun",
            vec![json!(0), json!(65535), json!(65536), json!(-1), json!("0")],
        ),
        (
            "/spec/bootVolume/volumeDriver",
            s(&["cinder", "external", "noop", "External", ""]),
        ),
        ("/spec/bootVolume/targetType", s(&["iscsi", "fc", ""])),
        ("/spec/bootVolume/iscsiTarget/iType", s(&["iqn", "IQN"])),
        (
            "/spec/bootVolume/iscsiTarget/authSecretRef/namespace",
            s(&["metal3", "other", ""]),
        ),
        ("/spec/image", vec![json!({"url": "http://x/i.img"})]),
        ("/spec/customDeploy", vec![json!({"method": "m"})]),
        ("/spec/externallyProvisioned", vec![json!(false), json!(true)]),
    ]
}

/// Every combination of driver, target presence, auth method and credential sources.
fn credential_combinations() -> Vec<Case> {
    let mut out = Vec::new();
    let drivers = [None, Some("external"), Some("cinder"), Some("noop")];
    let methods = [None, Some("CHAP"), Some("None"), Some("chap")];
    let refs = [
        None,
        Some(json!({"name": "host-0-chap"})),
        Some(json!({"name": "other-chap"})),
        Some(json!({"name": "host-0-chap", "namespace": "metal3"})),
        Some(json!({"name": "host-0-chap", "namespace": "elsewhere"})),
        Some(json!({"namespace": "metal3"})),
    ];
    for driver in drivers {
        for with_target in [false, true] {
            for method in methods {
                for cred in [false, true] {
                    for r in &refs {
                        for inline in 0..4 {
                            let mut h = Host::external().remove("/spec/bootVolume/iscsiCredentialsName");
                            h = match driver {
                                Some(d) => h.set("/spec/bootVolume/volumeDriver", json!(d)),
                                None => h.remove("/spec/bootVolume/volumeDriver"),
                            };
                            if !with_target {
                                h = h.remove("/spec/bootVolume/iscsiTarget");
                            }
                            let t = "/spec/bootVolume/iscsiTarget";
                            if let Some(m) = method {
                                h = h.set(&format!("{t}/authMethod"), json!(m));
                            }
                            if cred {
                                h = h.set("/spec/bootVolume/iscsiCredentialsName", json!("host-0-chap"));
                            }
                            if let Some(r) = r {
                                h = h.set(&format!("{t}/authSecretRef"), r.clone());
                            }
                            if inline & 1 == 1 {
                                h = h.set(&format!("{t}/authUser"), json!("u"));
                            }
                            if inline & 2 == 2 {
                                h = h.set(&format!("{t}/authPasswd"), json!("p4ssw0rd-value"));
                            }
                            out.push(Case::new(
                                format!(
                                    "combination driver={driver:?} target={with_target} method={method:?} \
                                     credName={cred} ref={r:?} inline={inline}"
                                ),
                                None,
                                h.0,
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

/// UPDATE pairs around the provisioning lock and the ratchet.
fn lock_cases() -> Vec<Case> {
    let t = "/spec/bootVolume/iscsiTarget";
    type Change = fn(Host) -> Host;
    let changes: Vec<(&str, Change)> = vec![
        ("none", |h| h),
        ("finalizer", |h| h.set("/metadata/finalizers", json!(["f"]))),
        ("lun 1", |h| h.set("/spec/bootVolume/iscsiTarget/lun", json!(1))),
        ("explicit defaults", |h| {
            h.set("/spec/bootVolume/targetType", json!("iscsi"))
                .set("/spec/bootVolume/iscsiTarget/iType", json!("iqn"))
                .set("/spec/bootVolume/iscsiTarget/authMethod", json!("CHAP"))
                .set("/spec/bootVolume/iscsiTarget/lun", json!(0))
        }),
        ("derived secret ref", |h| {
            h.set(
                "/spec/bootVolume/iscsiTarget/authSecretRef",
                json!({"name": "host-0-chap", "namespace": "metal3"}),
            )
        }),
        ("secret ref elsewhere", |h| {
            h.set(
                "/spec/bootVolume/iscsiTarget/authSecretRef",
                json!({"name": "host-0-chap", "namespace": "other"}),
            )
        }),
        ("portal without port", |h| {
            h.set("/spec/bootVolume/iscsiTarget/portal", json!("192.0.2.10"))
        }),
        ("portal other port", |h| {
            h.set("/spec/bootVolume/iscsiTarget/portal", json!("192.0.2.10:3261"))
        }),
        ("auth None", |h| {
            h.remove("/spec/bootVolume/iscsiCredentialsName")
                .set("/spec/bootVolume/iscsiTarget/authMethod", json!("None"))
        }),
        ("volume id", |h| {
            h.set("/spec/bootVolume/volumeId", json!("vol-0002"))
        }),
        ("drop block", |h| h.remove("/spec/bootVolume")),
        ("bmc address", |h| {
            h.set(
                "/spec/bmc/address",
                json!("redfish://192.0.2.2/redfish/v1/Systems/1"),
            )
        }),
        ("detached", |h| {
            h.set("/status/operationalStatus", json!("detached"))
        }),
    ];
    let olds: Vec<(&str, Host)> = vec![
        ("ready", Host::external().in_state("ready")),
        ("provisioned", Host::external().in_state("provisioned")),
        (
            "externally provisioned",
            Host::external().in_state("externally provisioned"),
        ),
        (
            "provisioned, detached",
            Host::external()
                .in_state("provisioned")
                .set("/status/operationalStatus", json!("detached")),
        ),
        ("provisioned, no block", Host::plain().in_state("provisioned")),
        (
            "provisioned, invalid block",
            Host::external()
                .in_state("provisioned")
                .remove("/spec/bootVolume/iscsiCredentialsName"),
        ),
        (
            "provisioned, unmutated",
            Host::external()
                .in_state("provisioned")
                .remove(&format!("{t}/lun")),
        ),
    ];
    let mut out = Vec::new();
    for (state, old) in &olds {
        for (what, change) in &changes {
            let mut new = change(old.clone());
            if new.0.pointer("/spec/bootVolume").is_none() && *what == "none" && state.contains("no block") {
                new = Host(new.0).set(
                    "/spec/bootVolume",
                    Host::external().0["spec"]["bootVolume"].clone(),
                );
            }
            out.push(Case::new(
                format!("update {state}: {what}"),
                Some(old.0.clone()),
                new.0,
            ));
        }
        // Adding the block to a host that had none.
        if state.contains("no block") {
            out.push(Case::new(
                format!("update {state}: add block"),
                Some(old.0.clone()),
                {
                    let mut h = Host::external();
                    h.0["status"] = old.0["status"].clone();
                    h.0
                },
            ));
        }
    }
    out
}

fn generated_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let bases = [
        ("external", Host::external()),
        ("cinder", Host::cinder()),
        // An unknown driver: the driver-specific rules stay quiet, the schema's do not.
        (
            "noop",
            Host::external().set("/spec/bootVolume/volumeDriver", json!("noop")),
        ),
    ];
    for (base_name, base) in bases {
        for (pointer, values) in edge_values() {
            for v in values {
                out.push(Case::new(
                    format!("{base_name} {pointer} = {v}"),
                    None,
                    base.clone().set(pointer, v).0,
                ));
            }
        }
    }
    out.extend(credential_combinations());
    out.extend(lock_cases());
    out
}

/// A webhook error and whether an enforcement point is meant to catch it.
struct WebhookError {
    field: String,
    rule: &'static str,
    detail: String,
}

fn webhook_errors(case: &Case) -> Option<Vec<WebhookError>> {
    let new = HostView::new(&case.new).ok()?;
    let old_view = case
        .old
        .as_ref()
        .map(|o| HostView::new(o).expect("old object readable"));
    let verdict = validate(&Policy::default(), old_view.as_ref(), &new);
    Some(
        verdict
            .errors
            .into_iter()
            .map(|e| WebhookError {
                field: e.field,
                rule: e.rule,
                detail: e.detail,
            })
            .collect(),
    )
}

/// Rules only the webhook enforces, at every enforcement point.
fn webhook_only(e: &WebhookError) -> bool {
    e.rule == "bmc-ipxe"
        // The CRD prunes unknown fields (and the policy never sees them); JSON types are the
        // OpenAPI schema's.
        || (e.rule == crate::schema::RULE && (e.detail == "unknown field" || e.detail.starts_with("must be of type")))
}

/// Rules the CRD (OpenAPI schema + CEL) does not cover: they need the namespace, the old
/// object or a webhook flag.
fn not_in_crd(e: &WebhookError) -> bool {
    webhook_only(e)
        || matches!(
            e.rule,
            "secret-ref-namespace" | "provisioning-lock" | "inline-chap"
        )
}

#[derive(Default)]
struct Tally {
    cases: usize,
    evaluations: usize,
    cel_denials: usize,
    webhook_denials_checked: usize,
    failures: Vec<String>,
}

#[test]
fn cel_and_rust_rules_agree() {
    let crd = crd_rules();
    let policy = policy_programs();
    let mut cases = table_cases();
    let n_table = cases.len();
    let fixtures = fixture_cases();
    let n_fixtures = fixtures.len();
    cases.extend(fixtures);
    let generated = generated_cases();
    let n_generated = generated.len();
    cases.extend(generated);

    let (mut crd_t, mut pol_t) = (Tally::default(), Tally::default());
    for case in &cases {
        let Some(errors) = webhook_errors(case) else {
            continue;
        };
        let webhook_fields: BTreeSet<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        let denied = !errors.is_empty();
        let namespace = case
            .new
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let ran = {
            // The webhook ran its rules (CREATE, or an UPDATE past the ratchet, not deleting).
            let new = HostView::new(&case.new).expect("view");
            !new.deleting()
                && case.old.as_ref().is_none_or(|o| {
                    super::transition::dependencies_changed(&HostView::new(o).expect("view"), &new)
                })
        };

        // CRD: its CEL runs on what is stored; on UPDATE the API server ratchets unchanged
        // fields, so compare only where the webhook ran its rules.
        if ran {
            let d = crd_denials(&crd, &case.new);
            crd_t.cases += 1;
            crd_t.evaluations += crd.len();
            crd_t.cel_denials += d.fields.len();
            let schema_fields: BTreeSet<String> = case
                .new
                .pointer("/spec/bootVolume")
                .map(crate::schema::validate)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.detail != "unknown field")
                .map(|e| e.field)
                .collect();
            for f in &d.fields {
                if !webhook_fields.contains(f.as_str()) {
                    crd_t.failures.push(format!(
                        "{}: CRD CEL denies {f} ({:?}), the webhook does not",
                        case.name, d.origins
                    ));
                }
            }
            if !d.eval_errors.is_empty() && !denied {
                crd_t.failures.push(format!(
                    "{}: CRD CEL errors {:?}, the webhook admits",
                    case.name, d.eval_errors
                ));
            }
            for e in errors.iter().filter(|e| !not_in_crd(e)) {
                crd_t.webhook_denials_checked += 1;
                let caught = d.fields.contains(&e.field)
                    || schema_fields.contains(&e.field)
                    || !d.eval_errors.is_empty();
                if !caught {
                    crd_t.failures.push(format!(
                        "{}: the webhook denies {} ({}), the CRD (schema + CEL) does not",
                        case.name, e.field, e.rule
                    ));
                }
            }
        }

        // Policy: sees old and new, does its own ratchet.
        let d = policy_denials(&policy, case.old.as_ref(), &case.new, namespace);
        pol_t.cases += 1;
        pol_t.evaluations += policy.validations.len();
        pol_t.cel_denials += d.fields.len();
        for f in &d.fields {
            let locked_field = d.lock && f == BV;
            let ok = webhook_fields.contains(f.as_str())
                || (locked_field && errors.iter().any(|e| e.rule == "provisioning-lock"));
            if !ok {
                pol_t.failures.push(format!(
                    "{}: the policy denies {f} ({:?}), the webhook does not",
                    case.name, d.origins
                ));
            }
        }
        if !d.eval_errors.is_empty() && !denied {
            pol_t.failures.push(format!(
                "{}: policy errors {:?}, the webhook admits",
                case.name, d.eval_errors
            ));
        }
        for e in errors.iter().filter(|e| !webhook_only(e)) {
            pol_t.webhook_denials_checked += 1;
            let caught = d.fields.contains(&e.field)
                || (e.rule == "provisioning-lock" && d.lock)
                || !d.eval_errors.is_empty();
            if !caught {
                pol_t.failures.push(format!(
                    "{}: the webhook denies {} ({}), the policy does not",
                    case.name, e.field, e.rule
                ));
            }
        }
    }
    let report = format!(
        "corpus: {} cases ({n_table} table rows, {n_fixtures} fixtures, {n_generated} generated)\n\
         CRD: {} rules, {} cases, {} evaluations, {} CEL denials, {} webhook denials checked\n\
         policy: {} validations, {} cases, {} evaluations, {} CEL denials, {} webhook denials checked",
        cases.len(),
        crd.len(),
        crd_t.cases,
        crd_t.evaluations,
        crd_t.cel_denials,
        crd_t.webhook_denials_checked,
        policy.validations.len(),
        pol_t.cases,
        pol_t.evaluations,
        pol_t.cel_denials,
        pol_t.webhook_denials_checked,
    );
    eprintln!("{report}");
    let failures: Vec<&String> = crd_t.failures.iter().chain(&pol_t.failures).collect();
    assert!(
        failures.is_empty(),
        "{report}\n{} disagreements:\n{}",
        failures.len(),
        failures
            .iter()
            .take(60)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Both directions were exercised, not vacuously true.
    assert!(crd_t.cel_denials > 100 && pol_t.cel_denials > 100, "{report}");
    assert!(
        crd_t.webhook_denials_checked > 100 && pol_t.webhook_denials_checked > 100,
        "{report}"
    );
}

/// The policy carries the CRD's rules verbatim (`self` replaced by the object path).
#[test]
fn policy_carries_every_crd_rule() {
    let doc = policy_doc();
    let expressions: BTreeMap<String, String> = doc["spec"]["validations"]
        .as_array()
        .expect("validations")
        .iter()
        .map(|v| {
            (
                v["expression"].as_str().unwrap_or_default().to_owned(),
                v["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for (scope, rule) in crd_rule_values() {
        let root = if scope == BV {
            "variables.bv"
        } else {
            "object.spec"
        };
        let text = rule["rule"].as_str().expect("rule");
        let want = text.replace("self", root);
        let message = expressions
            .get(&want)
            .unwrap_or_else(|| panic!("policy lacks the CRD rule {text}"));
        let field = format!("{scope}{}", rule["fieldPath"].as_str().unwrap_or_default());
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{message} should start with {field}"
        );
        for key in ["message", "reason", "fieldPath"] {
            assert!(rule.get(key).is_some_and(Value::is_string), "{text}: needs {key}");
        }
        assert!(
            ["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired"]
                .contains(&rule["reason"].as_str().unwrap_or_default()),
            "{text}: reason"
        );
    }
}

/// The API server estimates each rule's cost from the `maxLength` of the strings it reads;
/// without one a regex over a string is priced at the request size and the CRD is refused.
#[test]
fn every_string_a_crd_rule_reads_is_bounded() {
    let schema = crd_patch()[0]["value"].clone();
    for (scope, rule) in crd_rule_values() {
        if scope != BV {
            continue;
        }
        let text = rule["rule"].as_str().expect("rule");
        for (i, _) in text.match_indices(".matches(") {
            let receiver = text[..i]
                .rsplit(|c: char| !(c.is_alphanumeric() || c == '.'))
                .next()
                .unwrap_or_default();
            let path = receiver
                .strip_prefix("self.")
                .unwrap_or_else(|| panic!("{receiver}"));
            let mut node = &schema;
            for part in path.split('.') {
                node = &node["properties"][part];
            }
            let max = node["maxLength"]
                .as_u64()
                .unwrap_or_else(|| panic!("{path} has no maxLength"));
            assert!(max <= 259, "{path}: maxLength {max}");
        }
    }
}
