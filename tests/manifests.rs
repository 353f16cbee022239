//! The deployment manifests (`manifests/`), the samples and the Dockerfile, checked
//! against the binary they deploy.
//!
//! No Kubernetes API server runs here, so these tests prove what can be proven offline:
//! `kubectl kustomize` renders every entry point; the rendered webhook configurations
//! match docs/operations.md; ports, paths, flags and names agree with the binary's own
//! `--help` defaults; RBAC grants exactly the verbs the reconciler needs; the CRD's
//! `spec.bootVolume` schema is byte-for-byte the file the binary embeds; and that schema,
//! run through a JSON Schema validator, accepts every valid host and rejects type errors.
//!
//! Where `kubectl` is absent the rendering tests print why and return early; everything
//! that does not need it (samples, Dockerfile, the schema patch itself) still runs.

use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

const NAMESPACE: &str = "bootvolume-system";
const SERVICE: &str = "bootvolume-webhook";
const WEBHOOK_NAME: &str = "bootvolume.metal3.io";
const CRD_NAME: &str = "baremetalhosts.metal3.io";
/// The JSON pointer of `spec.bootVolume` inside a BareMetalHost.
const BOOT_VOLUME: &str = "/spec/bootVolume";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = root().join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a (multi-document) YAML string, as JSON values.
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{what}: not YAML: {e}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubectl kustomize manifests/<dir>`, parsed; `None` (with a message) without kubectl.
fn render(dir: &str) -> Option<Vec<Value>> {
    let out = match Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join("manifests").join(dir))
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: kubectl is not installed; cannot render manifests/{dir}");
            return None;
        }
        Err(e) => panic!("run kubectl: {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize manifests/{dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(yaml_docs(
        &String::from_utf8(out.stdout).expect("utf-8 output"),
        dir,
    ))
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], k: &str, n: &str) -> &'a Value {
    docs.iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("rendered output has no {k} {n}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_owned).collect()
}

/// Runs the bootvolume binary built for this test run.
fn bootvolume(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bootvolume"));
    cmd.args(args);
    // Defaults must come from the binary, not from a developer's environment.
    for (key, _) in std::env::vars() {
        if key.starts_with("BOOTVOLUME_") {
            cmd.env_remove(key);
        }
    }
    cmd.output().expect("run bootvolume")
}

/// `bootvolume <sub> --help`, split into one block of text per flag (`--name` -> block).
fn help_flags(sub: &str) -> BTreeMap<String, String> {
    let out = bootvolume(&[sub, "--help"]);
    assert!(out.status.success(), "bootvolume {sub} --help failed");
    let text = String::from_utf8(out.stdout).expect("utf-8 help");
    let mut flags = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') {
            if let Some((flag, block)) = current.take() {
                flags.insert(flag, block);
            }
            let long = trimmed
                .split([',', ' ', '='])
                .find(|w| w.starts_with("--"))
                .unwrap_or(trimmed)
                .to_owned();
            current = Some((long, String::new()));
        }
        if let Some((_, block)) = current.as_mut() {
            block.push_str(trimmed);
            block.push('\n');
        }
    }
    if let Some((flag, block)) = current {
        flags.insert(flag, block);
    }
    flags
}

/// The `[default: X]` clap prints for `flag` in `bootvolume <sub> --help`.
fn help_default(sub: &str, flag: &str) -> String {
    let flags = help_flags(sub);
    let block = flags
        .get(flag)
        .unwrap_or_else(|| panic!("`bootvolume {sub}` has no {flag} flag"));
    let start = block
        .find("[default: ")
        .unwrap_or_else(|| panic!("{flag} has no default"))
        + 10;
    block[start..].split(']').next().unwrap().to_owned()
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// `--flag=value` or `--flag value` from a container's args.
fn arg_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(flag)
            .and_then(|rest| match rest.strip_prefix('=') {
                Some(v) => Some(v),
                None if rest.is_empty() => args.get(i + 1).copied(),
                None => None,
            })
    })
}

fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The containerPort a probe or Service refers to, by number or by name.
fn resolve_port(c: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(s) => c["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == s.as_str()))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("container has no port named {s}")),
        other => panic!("bad port {other}"),
    }
}

/// The JSON6902 ops of the patch file.
fn patch_ops() -> Vec<Value> {
    let patch: Value = serde_json::from_str(&read("manifests/crd/bootvolume-schema-patch.json"))
        .expect("bootvolume-schema-patch.json is JSON");
    patch.as_array().expect("a JSON6902 patch is an array").clone()
}

/// The embedded schema: the `value` of the first op, the one the binary embeds.
fn schema_patch() -> (String, Value) {
    let ops = patch_ops();
    assert!(ops.iter().all(|op| op["op"] == "add"), "the patch only adds");
    let bv: Vec<_> = ops
        .iter()
        .filter(|op| op["path"].as_str().is_some_and(|p| p.ends_with("/bootVolume")))
        .collect();
    assert_eq!(bv.len(), 1, "the schema patch adds bootVolume exactly once");
    assert_eq!(&ops[0], bv[0], "src/schema.rs embeds the first op's value");
    (bv[0]["path"].as_str().unwrap().to_owned(), bv[0]["value"].clone())
}

/// The other ops: the spec-level CEL rules and the printer columns.
fn patch_op(path_suffix: &str) -> Vec<Value> {
    patch_ops()
        .into_iter()
        .filter(|op| op["path"].as_str().is_some_and(|p| p.ends_with(path_suffix)))
        .map(|op| op["value"].clone())
        .collect()
}

fn rendered_crd_schema(docs: &[Value]) -> Value {
    let crd = find(docs, "CustomResourceDefinition", CRD_NAME);
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    version["schema"]["openAPIV3Schema"].clone()
}

/// BareMetalHost documents of a YAML file under the crate root.
fn hosts_in(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    yaml_docs(&text, &path.display().to_string())
        .into_iter()
        .filter(|d| kind(d) == "BareMetalHost")
        .collect()
}

fn yaml_files(dir: &str, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && (n.ends_with(".yaml") || n.ends_with(".yml"))
        })
        .collect();
    files.sort();
    files
}

/// Every key under `value` must be declared in `schema`, or the API server would prune it
/// silently (structural schemas drop unknown fields instead of rejecting them).
fn undeclared_fields(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        for (k, v) in obj {
            match props.get(k) {
                Some(s) => undeclared_fields(s, v, &format!("{path}.{k}"), out),
                None => out.push(format!("{path}.{k}")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

#[test]
fn default_renders_exactly_the_expected_objects() {
    let Some(docs) = render("default") else { return };
    let got: BTreeSet<(String, String)> = docs
        .iter()
        .map(|o| (kind(o).to_owned(), name(o).to_owned()))
        .collect();
    assert_eq!(got.len(), docs.len(), "duplicate objects in manifests/default");
    let mut want: BTreeSet<(String, String)> = [
        ("Namespace", NAMESPACE),
        ("CustomResourceDefinition", CRD_NAME),
        ("ServiceAccount", "bootvolume-webhook"),
        ("Deployment", "bootvolume-webhook"),
        ("Service", SERVICE),
        ("PodDisruptionBudget", "bootvolume-webhook"),
        ("NetworkPolicy", "bootvolume-webhook"),
        ("ValidatingWebhookConfiguration", WEBHOOK_NAME),
        ("MutatingWebhookConfiguration", WEBHOOK_NAME),
        ("Issuer", "bootvolume-selfsigned"),
        ("Issuer", "bootvolume-ca"),
        ("Certificate", "bootvolume-ca"),
        ("Certificate", "bootvolume-webhook"),
        ("ServiceAccount", "bootvolume-reconciler"),
        ("ClusterRole", "bootvolume-reconciler"),
        ("ClusterRole", "bootvolume-reconciler-secrets"),
        ("ClusterRoleBinding", "bootvolume-reconciler"),
        ("ClusterRoleBinding", "bootvolume-reconciler-secrets"),
        ("Role", "bootvolume-reconciler-leader-election"),
        ("RoleBinding", "bootvolume-reconciler-leader-election"),
        ("Deployment", "bootvolume-reconciler"),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n.to_owned()))
    .collect();
    // The Ironic ConfigMap carries kustomize's content hash in its name.
    let configmaps: Vec<_> = docs.iter().filter(|o| kind(o) == "ConfigMap").collect();
    assert_eq!(configmaps.len(), 1);
    assert!(name(configmaps[0]).starts_with("bootvolume-ironic-"));
    want.insert(("ConfigMap".into(), name(configmaps[0]).into()));
    assert_eq!(got, want);

    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ];
    for o in &docs {
        let ns = o["metadata"]["namespace"].as_str();
        if cluster_scoped.contains(&kind(o)) {
            assert_eq!(ns, None, "{} {} is cluster-scoped", kind(o), name(o));
        } else {
            assert_eq!(ns, Some(NAMESPACE), "{} {} namespace", kind(o), name(o));
        }
    }
}

#[test]
fn no_certmanager_entry_point_leaves_out_cert_manager_only() {
    let Some(with) = render("default") else { return };
    let Some(without) = render("no-certmanager") else {
        return;
    };
    assert!(
        without
            .iter()
            .all(|o| !o["apiVersion"].as_str().unwrap().starts_with("cert-manager.io/"))
    );
    assert!(
        without.iter().all(|o| o["metadata"]["annotations"]
            .get("cert-manager.io/inject-ca-from")
            .is_none()),
        "without cert-manager nothing may wait for cainjector"
    );
    let strip = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .filter(|o| !o["apiVersion"].as_str().unwrap().starts_with("cert-manager.io/"))
            .map(|o| {
                let mut o = o.clone();
                // pointer_mut, not IndexMut: indexing would insert `annotations: null`.
                if let Some(a) = o
                    .pointer_mut("/metadata/annotations")
                    .and_then(Value::as_object_mut)
                {
                    a.remove("cert-manager.io/inject-ca-from");
                    if a.is_empty() {
                        o["metadata"].as_object_mut().unwrap().remove("annotations");
                    }
                }
                o.to_string()
            })
            .collect()
    };
    assert_eq!(
        strip(&with),
        strip(&without),
        "the two entry points differ only in cert-manager"
    );
}

#[test]
fn without_crd_entry_point_is_default_minus_the_crd() {
    let Some(with) = render("default") else { return };
    let Some(without) = render("without-crd") else {
        return;
    };
    let rest: Vec<_> = with
        .into_iter()
        .filter(|o| kind(o) != "CustomResourceDefinition")
        .collect();
    assert_eq!(
        rest, without,
        "`kubectl delete -k manifests/without-crd` must not touch the CRD, and nothing else may differ"
    );
}

// ---------------------------------------------------------------------------------------
// Webhook configurations (docs/operations.md)
// ---------------------------------------------------------------------------------------

#[test]
fn webhook_configurations_match_the_design() {
    let Some(docs) = render("default") else { return };
    for (k, path) in [
        ("ValidatingWebhookConfiguration", "/validate"),
        ("MutatingWebhookConfiguration", "/mutate"),
    ] {
        let cfg = find(&docs, k, WEBHOOK_NAME);
        let hooks = cfg["webhooks"].as_array().expect("webhooks");
        assert_eq!(hooks.len(), 1, "{k}: one webhook");
        let w = &hooks[0];
        assert_eq!(w["name"], WEBHOOK_NAME, "{k} name");
        assert_eq!(
            strings(&w["admissionReviewVersions"]),
            ["v1"],
            "{k} admissionReviewVersions"
        );
        let svc = &w["clientConfig"]["service"];
        assert_eq!(svc["name"], SERVICE, "{k} service");
        assert_eq!(svc["namespace"], NAMESPACE, "{k} service namespace");
        assert_eq!(svc["path"], path, "{k} path");
        assert_eq!(svc["port"], 443, "{k} port");
        assert!(
            w["clientConfig"].get("url").is_none(),
            "{k}: service reference, not url"
        );
        assert_eq!(w["failurePolicy"], "Fail", "{k} failurePolicy");
        assert_eq!(w["sideEffects"], "None", "{k} sideEffects");
        assert_eq!(w["timeoutSeconds"], 5, "{k} timeoutSeconds");

        let rules = w["rules"].as_array().expect("rules");
        assert_eq!(rules.len(), 1, "{k}: one rule");
        let r = &rules[0];
        assert_eq!(strings(&r["apiGroups"]), ["metal3.io"], "{k} apiGroups");
        assert_eq!(strings(&r["apiVersions"]), ["v1alpha1"], "{k} apiVersions");
        assert_eq!(
            set(strings(&r["operations"])),
            set(["CREATE", "UPDATE"]),
            "{k} operations"
        );
        // Not baremetalhosts/status: BMO's status writes must never go through us.
        assert_eq!(strings(&r["resources"]), ["baremetalhosts"], "{k} resources");

        let conds = w["matchConditions"].as_array().expect("matchConditions");
        assert_eq!(conds.len(), 1, "{k}: one matchCondition");
        let expr: String = conds[0]["expression"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .collect();
        for needle in [
            "object!=null&&has(object.spec)&&has(object.spec.bootVolume)",
            "oldObject!=null&&has(oldObject.spec)&&has(oldObject.spec.bootVolume)",
        ] {
            assert!(expr.contains(needle), "{k} matchCondition {expr} lacks {needle}");
        }
        assert!(expr.contains(")||("), "{k}: object OR oldObject: {expr}");

        let excluded = w["namespaceSelector"]["matchExpressions"]
            .as_array()
            .and_then(|es| es.iter().find(|e| e["key"] == "kubernetes.io/metadata.name"))
            .expect("namespaceSelector on kubernetes.io/metadata.name");
        assert_eq!(excluded["operator"], "NotIn");
        assert_eq!(set(strings(&excluded["values"])), set(["kube-system", NAMESPACE]));

        match k {
            "MutatingWebhookConfiguration" => assert_eq!(w["reinvocationPolicy"], "IfNeeded"),
            _ => assert!(
                w.get("reinvocationPolicy").is_none(),
                "validating webhooks are not reinvoked"
            ),
        }
    }
}

#[test]
fn cert_manager_injects_the_ca_of_the_certificate_the_webhook_serves() {
    let Some(docs) = render("default") else { return };
    let webhook = find(&docs, "Deployment", "bootvolume-webhook");
    let pod = &webhook["spec"]["template"]["spec"];
    let c = container(webhook, "webhook");
    let args = strings(&c["args"]);

    // The Secret volume mounted where --tls-cert-file / --tls-private-key-file point.
    let cert_file = arg_value(&args, "--tls-cert-file").expect("--tls-cert-file");
    let key_file = arg_value(&args, "--tls-private-key-file").expect("--tls-private-key-file");
    let dir = Path::new(cert_file).parent().unwrap();
    assert_eq!(
        Path::new(key_file).parent().unwrap(),
        dir,
        "cert and key from one Secret"
    );
    assert_eq!(Path::new(cert_file).file_name().unwrap(), "tls.crt");
    assert_eq!(Path::new(key_file).file_name().unwrap(), "tls.key");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == dir)
        .expect("a volume mounted at the TLS directory");
    assert!(
        mount.get("subPath").is_none(),
        "subPath mounts never see Secret rotation"
    );
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let secret = volume["secret"]["secretName"].as_str().expect("a Secret volume");

    let cert = find(&docs, "Certificate", "bootvolume-webhook");
    assert_eq!(
        cert["spec"]["secretName"], secret,
        "the Certificate writes the mounted Secret"
    );
    let dns = strings(&cert["spec"]["dnsNames"]);
    assert!(
        dns.contains(&format!("{SERVICE}.{NAMESPACE}.svc").as_str()),
        "SAN the API server checks: {dns:?}"
    );
    let issuer = find(
        &docs,
        "Issuer",
        cert["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    let ca_secret = issuer["spec"]["ca"]["secretName"].as_str().expect("a CA issuer");
    let ca = docs
        .iter()
        .find(|o| kind(o) == "Certificate" && o["spec"]["secretName"] == ca_secret)
        .expect("the CA Certificate");
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(
        find(&docs, "Issuer", ca["spec"]["issuerRef"]["name"].as_str().unwrap())["spec"]["selfSigned"],
        serde_json::json!({})
    );

    let inject = format!("{NAMESPACE}/{}", name(cert));
    for (k, n) in [
        ("ValidatingWebhookConfiguration", WEBHOOK_NAME),
        ("MutatingWebhookConfiguration", WEBHOOK_NAME),
        ("CustomResourceDefinition", CRD_NAME),
    ] {
        assert_eq!(
            find(&docs, k, n)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            inject,
            "{k}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Agreement with the binary
// ---------------------------------------------------------------------------------------

#[test]
fn webhook_ports_paths_and_flags_agree_with_the_binary() {
    let Some(docs) = render("default") else { return };
    let listen = help_default("serve", "--listen");
    let metrics = help_default("serve", "--metrics-listen");
    assert_eq!(port_of(&listen), 9443, "--listen defaults to 0.0.0.0:9443");
    assert_eq!(
        port_of(&metrics),
        8080,
        "--metrics-listen defaults to 0.0.0.0:8080"
    );

    let webhook = find(&docs, "Deployment", "bootvolume-webhook");
    let c = container(webhook, "webhook");
    let args = strings(&c["args"]);
    assert_eq!(args[0], "serve");
    assert_eq!(arg_value(&args, "--listen"), Some(listen.as_str()));
    assert_eq!(arg_value(&args, "--metrics-listen"), Some(metrics.as_str()));

    // Every flag and BOOTVOLUME_* variable the Deployment sets is one `serve` knows.
    let flags = help_flags("serve");
    for a in &args[1..] {
        let flag = a.split('=').next().unwrap();
        assert!(flags.contains_key(flag), "`bootvolume serve` has no {flag}");
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let var = e["name"].as_str().unwrap();
        if var.starts_with("BOOTVOLUME_") {
            assert!(
                flags.values().any(|b| b.contains(&format!("[env: {var}="))),
                "serve reads no {var}"
            );
        }
    }

    // Service 443 -> the container's HTTPS port, which is the --listen port.
    let svc = find(&docs, "Service", SERVICE);
    let https = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 443)
        .expect("port 443");
    assert_eq!(resolve_port(c, &https["targetPort"]), port_of(&listen));

    // Probes: /readyz through TLS on --listen, /healthz on the plain --metrics-listen port.
    let ready = &c["readinessProbe"]["httpGet"];
    assert_eq!(ready["path"], "/readyz");
    assert_eq!(ready["scheme"], "HTTPS");
    assert_eq!(resolve_port(c, &ready["port"]), port_of(&listen));
    let live = &c["livenessProbe"]["httpGet"];
    assert_eq!(live["path"], "/healthz");
    assert_ne!(live["scheme"], "HTTPS");
    assert_eq!(resolve_port(c, &live["port"]), port_of(&metrics));

    // `bootvolume certs` issues certificates for the Service these manifests create.
    assert_eq!(help_default("certs", "--service"), SERVICE);
    assert_eq!(help_default("certs", "--namespace"), NAMESPACE);
}

#[test]
fn reconciler_args_are_flags_of_the_binary() {
    let Some(docs) = render("default") else { return };
    let c = container(find(&docs, "Deployment", "bootvolume-reconciler"), "reconciler");
    let args = strings(&c["args"]);
    assert_eq!(args[0], "reconcile");
    let flags = help_flags("reconcile");
    for a in &args[1..] {
        let flag = a.split('=').next().unwrap();
        assert!(
            flags.contains_key(flag),
            "`bootvolume reconcile` has no {flag} (manifests/reconciler/deployment.yaml)"
        );
    }
    // The probes use the metrics port; it must be the reconciler's default.
    if let Some(block) = flags.get("--metrics-listen") {
        let default = block
            .split("[default: ")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .expect("a default");
        let probe = &c["livenessProbe"]["httpGet"];
        assert_eq!(resolve_port(c, &probe["port"]), port_of(default));
        assert_eq!(probe["path"], "/healthz");
    }
    // Ironic credentials come from files in mounted Secrets (metal3 style).
    let pod = &find(&docs, "Deployment", "bootvolume-reconciler")["spec"]["template"]["spec"];
    for flag in [
        "--ironic-username-file",
        "--ironic-password-file",
        "--ironic-ca-file",
    ] {
        let file = Path::new(arg_value(&args, flag).unwrap_or_else(|| panic!("{flag}")));
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| file.starts_with(m["mountPath"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("{flag}: {} is not on a mounted volume", file.display()));
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert!(
            volume["secret"]["secretName"].is_string(),
            "{flag} comes from a Secret"
        );
    }
}

/// The no-cert-manager path of docs/operations.md ("Without cert-manager"): `bootvolume certs` output goes into the
/// Secret the webhook mounts and into caBundle, and the API server will accept it.
#[test]
fn certs_output_is_usable_without_cert_manager() {
    let dir = tempfile::tempdir().unwrap();
    let out = bootvolume(&["certs", "--out-dir", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "bootvolume certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_usable_webhook_certs(dir.path());
}

/// ca.crt, tls.crt and tls.key in `dir` serve the webhook Service and load into its Secret.
fn assert_usable_webhook_certs(dir: &Path) {
    use x509_parser::{extensions::GeneralName, pem::parse_x509_pem};
    let pem = |f: &str| fs::read(dir.join(f)).unwrap_or_else(|e| panic!("certs wrote no {f}: {e}"));
    let (ca_pem, leaf_pem) = (pem("ca.crt"), pem("tls.crt"));
    assert!(String::from_utf8_lossy(&pem("tls.key")).contains("PRIVATE KEY"));
    let (_, ca) = parse_x509_pem(&ca_pem).expect("ca.crt is PEM");
    let (_, leaf) = parse_x509_pem(&leaf_pem).expect("tls.crt is PEM");
    let (ca, leaf) = (
        ca.parse_x509().expect("ca.crt is X.509"),
        leaf.parse_x509().expect("tls.crt is X.509"),
    );
    assert!(ca.is_ca(), "ca.crt goes into caBundle: it must be a CA");
    assert_eq!(leaf.issuer(), ca.subject(), "tls.crt is issued by ca.crt");
    // What a TLS client does: chain to ca.crt, check the name and the validity period.
    let der = |pem: &[u8]| {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::from_pem_slice(pem).expect("PEM certificate")
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&ca_pem)).expect("ca.crt is a usable trust anchor");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
        .build()
        .unwrap();
    let server_name = format!("{SERVICE}.{NAMESPACE}.svc");
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        &der(&leaf_pem),
        &[],
        &rustls::pki_types::ServerName::try_from(server_name.clone()).unwrap(),
        &[],
        rustls::pki_types::UnixTime::now(),
    )
    .unwrap_or_else(|e| panic!("a client trusting ca.crt rejects tls.crt for {server_name}: {e}"));
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .expect("SAN extension parses")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    // ServerName the API server uses for a Service webhook (`<service>.<namespace>.svc`, as kube-apiserver's webhook client sets it).
    assert!(
        sans.contains(&server_name),
        "tls.crt SANs {sans:?} lack {server_name}"
    );

    // The documented `kubectl create secret tls` accepts the pair (it loads it), and names
    // the Secret the webhook Deployment mounts.
    let Some(docs) = render("default") else { return };
    let webhook = find(&docs, "Deployment", "bootvolume-webhook");
    let secret = webhook["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .unwrap();
    let out = Command::new("kubectl")
        .args([
            "create",
            "secret",
            "tls",
            secret,
            "-n",
            NAMESPACE,
            "--dry-run=client",
            "-o",
            "json",
        ])
        .arg(format!("--cert={}", dir.join("tls.crt").display()))
        .arg(format!("--key={}", dir.join("tls.key").display()))
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl create secret tls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// RBAC
// ---------------------------------------------------------------------------------------

#[test]
fn rbac_is_least_privilege() {
    let Some(docs) = render("default") else { return };
    // (kind of role, apiGroup, resource) -> verbs, over every rule rendered.
    let mut grants: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for role in docs.iter().filter(|o| matches!(kind(o), "ClusterRole" | "Role")) {
        for rule in role["rules"].as_array().expect("rules") {
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{}: no non-resource URLs",
                name(role)
            );
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    let verbs = strings(&rule["verbs"]);
                    assert!(
                        !verbs.contains(&"*") && g != "*" && r != "*",
                        "{}: no wildcards",
                        name(role)
                    );
                    grants
                        .entry((kind(role).into(), g.into(), r.into()))
                        .or_default()
                        .extend(set(verbs));
                }
            }
        }
    }
    let want: BTreeMap<(String, String, String), BTreeSet<String>> = [
        (
            "ClusterRole",
            "metal3.io",
            "baremetalhosts",
            // patch: the hand-over to BMO (spec.externallyProvisioned), never status.
            &["get", "list", "watch", "patch"][..],
        ),
        ("ClusterRole", "", "secrets", &["get", "list", "watch"]),
        ("ClusterRole", "", "events", &["create", "patch"]),
        ("ClusterRole", "events.k8s.io", "events", &["create", "patch"]),
        // Leader election only in its own namespace (a Role, not a ClusterRole).
        (
            "Role",
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update", "patch"],
        ),
    ]
    .into_iter()
    .map(|(k, g, r, v)| ((k.into(), g.into(), r.into()), set(v.iter().copied())))
    .collect();
    assert_eq!(grants, want);

    // Only the reconciler is bound; the webhook has no RBAC and no token at all.
    for b in docs
        .iter()
        .filter(|o| matches!(kind(o), "ClusterRoleBinding" | "RoleBinding"))
    {
        let subjects = b["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0]["kind"], "ServiceAccount");
        assert_eq!(subjects[0]["name"], "bootvolume-reconciler", "{}", name(b));
        assert_eq!(subjects[0]["namespace"], NAMESPACE);
        let role_kind = if kind(b) == "RoleBinding" {
            "Role"
        } else {
            "ClusterRole"
        };
        assert_eq!(b["roleRef"]["kind"], role_kind);
        find(&docs, role_kind, b["roleRef"]["name"].as_str().unwrap());
        if kind(b) == "RoleBinding" {
            assert_eq!(b["metadata"]["namespace"], NAMESPACE);
        }
    }
    let webhook = &find(&docs, "Deployment", "bootvolume-webhook")["spec"]["template"]["spec"];
    assert_eq!(webhook["serviceAccountName"], "bootvolume-webhook");
    assert_eq!(webhook["automountServiceAccountToken"], false);
    assert_eq!(
        find(&docs, "Deployment", "bootvolume-reconciler")["spec"]["template"]["spec"]["serviceAccountName"],
        "bootvolume-reconciler"
    );
}

// ---------------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------------

#[test]
fn pods_are_restricted_and_highly_available() {
    let Some(docs) = render("default") else { return };
    let mut images = BTreeSet::new();
    for (deploy, cname) in [
        ("bootvolume-webhook", "webhook"),
        ("bootvolume-reconciler", "reconciler"),
    ] {
        let d = find(&docs, "Deployment", deploy);
        let pod = &d["spec"]["template"]["spec"];
        let c = container(d, cname);
        images.insert(c["image"].as_str().unwrap().to_owned());
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{deploy}");
        assert_eq!(psc["runAsUser"], 65532, "{deploy}: the distroless nonroot uid");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{deploy}");
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{deploy}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{deploy}");
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{deploy}");
        assert!(sc["capabilities"].get("add").is_none(), "{deploy}");
        assert!(sc.get("privileged").is_none_or(|p| p == false), "{deploy}");
        for r in ["requests", "limits"] {
            for what in ["cpu", "memory"] {
                assert!(
                    c["resources"][r][what].is_string(),
                    "{deploy}: resources.{r}.{what}"
                );
            }
        }
        assert!(
            c["readinessProbe"]["httpGet"].is_object(),
            "{deploy}: readiness probe"
        );
        assert!(
            c["livenessProbe"]["httpGet"].is_object(),
            "{deploy}: liveness probe"
        );
        let labels = d["spec"]["template"]["metadata"]["labels"].as_object().unwrap();
        for (k, v) in d["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(labels.get(k), Some(v), "{deploy}: selector matches its pods");
        }
    }
    assert_eq!(images.len(), 1, "one image serves both Deployments: {images:?}");
    assert_eq!(images.first().unwrap(), "quay.io/metal3-io/bootvolume:latest");

    let webhook = find(&docs, "Deployment", "bootvolume-webhook");
    assert_eq!(webhook["spec"]["replicas"], 2);
    assert_eq!(webhook["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod_labels = webhook["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let anti = &webhook["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    let reconciler_labels =
        find(&docs, "Deployment", "bootvolume-reconciler")["spec"]["template"]["metadata"]["labels"].clone();
    let selects = |sel: &Value, labels: &serde_json::Map<String, Value>| {
        sel.as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    let reconciler_labels = reconciler_labels.as_object().unwrap();
    for (what, sel) in [
        ("anti-affinity", &anti["labelSelector"]["matchLabels"]),
        (
            "PodDisruptionBudget",
            &find(&docs, "PodDisruptionBudget", "bootvolume-webhook")["spec"]["selector"]["matchLabels"],
        ),
        ("Service", &find(&docs, "Service", SERVICE)["spec"]["selector"]),
        (
            "NetworkPolicy",
            &find(&docs, "NetworkPolicy", "bootvolume-webhook")["spec"]["podSelector"]["matchLabels"],
        ),
    ] {
        assert!(selects(sel, pod_labels), "{what} selects the webhook pods");
        assert!(
            !selects(sel, reconciler_labels),
            "{what} must not select the reconciler pods"
        );
    }
    let pdb = find(&docs, "PodDisruptionBudget", "bootvolume-webhook");
    assert!(
        pdb["spec"]["minAvailable"].as_u64().unwrap() < 2,
        "the PDB must still allow a drain"
    );
}

#[test]
fn network_policy_admits_only_the_webhook_port_and_no_egress() {
    let Some(docs) = render("default") else { return };
    let np = &find(&docs, "NetworkPolicy", "bootvolume-webhook")["spec"];
    assert_eq!(set(strings(&np["policyTypes"])), set(["Ingress", "Egress"]));
    assert_eq!(np["egress"], serde_json::json!([]), "the webhook calls nothing");
    let c = container(find(&docs, "Deployment", "bootvolume-webhook"), "webhook");
    let listen = port_of(&help_default("serve", "--listen"));
    let metrics = port_of(&help_default("serve", "--metrics-listen"));
    for rule in np["ingress"].as_array().unwrap() {
        let ports: Vec<u64> = rule["ports"]
            .as_array()
            .expect("every rule names its ports")
            .iter()
            .map(|p| resolve_port(c, &p["port"]))
            .collect();
        if rule.get("from").is_none() {
            assert_eq!(ports, [listen], "only the webhook port is open to the API server");
        } else {
            assert_eq!(ports, [metrics], "the other rule is for metrics scraping");
            assert!(
                rule["from"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|f| f.get("namespaceSelector").is_some())
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// CRD schema
// ---------------------------------------------------------------------------------------

#[test]
fn schema_patch_targets_v1alpha1_of_the_vendored_crd() {
    let (path, _) = schema_patch();
    let vendored = yaml_docs(
        &read("manifests/crd/bases/metal3.io_baremetalhosts.yaml"),
        "vendored CRD",
    );
    assert_eq!(vendored.len(), 1);
    let crd = &vendored[0];
    assert_eq!(name(crd), CRD_NAME);
    let versions = crd["spec"]["versions"].as_array().unwrap();
    let index: usize = path
        .strip_prefix("/spec/versions/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|i| i.parse().ok())
        .expect("the patch path starts with /spec/versions/<index>");
    assert_eq!(
        versions[index]["name"], "v1alpha1",
        "the patch must target v1alpha1"
    );
    assert_eq!(
        path,
        format!("/spec/versions/{index}/schema/openAPIV3Schema/properties/spec/properties/bootVolume")
    );
    let spec = &versions[index]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert!(
        spec["properties"].get("bootVolume").is_none(),
        "the vendored CRD is unmodified upstream"
    );
    assert!(
        spec.get("x-kubernetes-preserve-unknown-fields").is_none(),
        "why the patch is needed at all"
    );
}

#[test]
fn schema_patch_is_a_structural_schema() {
    // What the API server requires of a CRD schema (structural, no pruning surprises).
    fn walk(s: &Value, path: &str) {
        let obj = s
            .as_object()
            .unwrap_or_else(|| panic!("{path}: a schema is an object"));
        for forbidden in [
            "$ref",
            "definitions",
            "id",
            "$schema",
            "uniqueItems",
            "additionalItems",
            "dependencies",
            "patternProperties",
        ] {
            assert!(
                !obj.contains_key(forbidden),
                "{path}: {forbidden} is not allowed in a CRD schema"
            );
        }
        assert!(
            obj.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty()),
            "{path}: needs a type"
        );
        assert!(
            obj.get("description").is_some_and(Value::is_string),
            "{path}: describe it (kubectl explain)"
        );
        if let Some(required) = obj.get("required") {
            for r in strings(required) {
                assert!(
                    obj["properties"].get(r).is_some(),
                    "{path}: required {r} is not a property"
                );
            }
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            assert_eq!(obj["type"], "object", "{path}: properties need type object");
            for (k, v) in props {
                walk(v, &format!("{path}.{k}"));
            }
        }
    }
    let (_, schema) = schema_patch();
    walk(&schema, "spec.bootVolume");
    assert!(
        jsonschema::validator_for(&schema).is_ok(),
        "every pattern compiles"
    );
}

#[test]
fn rendered_crd_carries_exactly_the_embedded_schema() {
    let Some(docs) = render("default") else { return };
    let (_, embedded) = schema_patch();
    let schema = rendered_crd_schema(&docs);
    assert_eq!(schema["properties"]["spec"]["properties"]["bootVolume"], embedded);

    // And nothing else changed: the rendered CRD minus bootVolume and the cainjector
    // annotation is the vendored upstream CRD.
    let mut crd = find(&docs, "CustomResourceDefinition", CRD_NAME).clone();
    let spec = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    spec["properties"].as_object_mut().unwrap().remove("bootVolume");
    let spec_rules = spec.as_object_mut().unwrap().remove("x-kubernetes-validations");
    assert_eq!(
        spec_rules.as_ref(),
        patch_op("/spec/x-kubernetes-validations").first()
    );
    let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array_mut()
        .unwrap();
    let ours = patch_op("/additionalPrinterColumns/-");
    assert_eq!(ours.len(), 2, "volume driver and volume id");
    let appended = columns.split_off(columns.len() - ours.len());
    assert_eq!(appended, ours, "appended at the end, after BMO's columns");
    crd["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("cert-manager.io/inject-ca-from");
    let vendored = yaml_docs(
        &read("manifests/crd/bases/metal3.io_baremetalhosts.yaml"),
        "vendored CRD",
    );
    assert_eq!(crd, vendored[0]);
}

#[test]
fn printer_columns_show_the_boot_volume_with_wide_output() {
    let Some(docs) = render("default") else { return };
    let crd = find(&docs, "CustomResourceDefinition", CRD_NAME);
    let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap();
    let by_path: BTreeMap<&str, &Value> = columns
        .iter()
        .map(|c| (c["jsonPath"].as_str().unwrap_or_default(), c))
        .collect();
    for path in [".spec.bootVolume.volumeDriver", ".spec.bootVolume.volumeId"] {
        let c = by_path
            .get(path)
            .unwrap_or_else(|| panic!("no column for {path}"));
        assert_eq!(c["type"], "string");
        assert_eq!(c["priority"], 1, "{path}: shown by -o wide only");
    }
    let names: BTreeSet<&str> = columns.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names.len(), columns.len(), "column names are unique");
}

#[test]
fn policy_entry_point_renders_a_policy_and_its_binding() {
    let Some(docs) = render("policy") else { return };
    let kinds: BTreeSet<&str> = docs.iter().map(kind).collect();
    assert_eq!(
        kinds,
        set(["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"])
            .iter()
            .map(String::as_str)
            .collect()
    );
    let policy = find(&docs, "ValidatingAdmissionPolicy", "bootvolume.metal3.io");
    let binding = find(&docs, "ValidatingAdmissionPolicyBinding", "bootvolume.metal3.io");
    assert_eq!(policy["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(binding["spec"]["policyName"], "bootvolume.metal3.io");
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    let rules = &policy["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(rules["apiGroups"], json!(["metal3.io"]));
    assert_eq!(rules["resources"], json!(["baremetalhosts"]));
    assert_eq!(rules["operations"], json!(["CREATE", "UPDATE"]));
    for v in policy["spec"]["validations"].as_array().unwrap() {
        assert_eq!(v["reason"], "Invalid", "{v}");
        assert!(
            v["message"].as_str().is_some_and(|m| m.starts_with("spec")),
            "{v}"
        );
    }
}

#[test]
fn rendered_crd_schema_accepts_valid_hosts_and_rejects_type_errors() {
    let Some(docs) = render("default") else { return };
    let schema = rendered_crd_schema(&docs);
    let validator = jsonschema::validator_for(&schema).expect("the CRD schema compiles");
    let boot_volume_schema = &schema["properties"]["spec"]["properties"]["bootVolume"];

    // Accepted: every sample host, and the crd_*_schema_ok fixtures.
    let mut accepted = yaml_files("manifests/samples", "");
    accepted.extend(
        yaml_files("tests/fixtures/hosts", "crd_")
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with("_schema_ok.yaml")),
    );
    assert!(accepted.len() >= 6, "{accepted:?}");
    for file in &accepted {
        let hosts = hosts_in(file);
        assert!(!hosts.is_empty(), "{}: no BareMetalHost", file.display());
        for host in hosts {
            let errors: Vec<String> = validator
                .iter_errors(&host)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{}: rejected by the CRD schema: {errors:?}",
                file.display()
            );
            let mut pruned = Vec::new();
            undeclared_fields(
                boot_volume_schema,
                &host["spec"]["bootVolume"],
                "spec.bootVolume",
                &mut pruned,
            );
            assert!(
                pruned.is_empty(),
                "{}: the API server would prune {pruned:?}",
                file.display()
            );
        }
    }

    // Rejected: every other crd_* fixture, and for a reason inside spec.bootVolume.
    let rejected: Vec<_> = yaml_files("tests/fixtures/hosts", "crd_")
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with("_schema_ok.yaml"))
        .collect();
    assert!(rejected.len() >= 10, "{rejected:?}");
    for file in &rejected {
        for host in hosts_in(file) {
            let errors: Vec<_> = validator.iter_errors(&host).collect();
            assert!(
                !errors.is_empty(),
                "{}: accepted by the CRD schema",
                file.display()
            );
            for e in &errors {
                let at = e.instance_path().to_string();
                assert!(
                    at.starts_with(BOOT_VOLUME),
                    "{}: unrelated error {e} at {at}",
                    file.display()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------

#[test]
fn samples_pass_bootvolume_check() {
    let samples = yaml_files("manifests/samples", "");
    assert!(samples.len() >= 2);
    for file in samples {
        let out = bootvolume(&["check", file.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "bootvolume check {}:\nstdout: {}\nstderr: {}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn samples_are_complete_and_self_consistent() {
    let ipxe_schemes = ["ipmi", "libvirt", "redfish", "ilo5-redfish", "idrac-redfish"];
    let mut drivers = BTreeSet::new();
    for file in yaml_files("manifests/samples", "") {
        let docs = yaml_docs(&fs::read_to_string(&file).unwrap(), &file.display().to_string());
        let secret = |ns: &str, n: &str| {
            docs.iter()
                .find(|d| kind(d) == "Secret" && name(d) == n && d["metadata"]["namespace"] == ns)
        };
        for host in docs.iter().filter(|d| kind(d) == "BareMetalHost") {
            let f = file.display();
            let ns = host["metadata"]["namespace"]
                .as_str()
                .expect("samples set a namespace");
            let spec = &host["spec"];
            assert_eq!(spec["online"], true, "{f}");
            assert!(
                spec["bootMACAddress"].is_string(),
                "{f}: iPXE needs the PXE NIC's MAC"
            );
            for conflict in ["image", "customDeploy"] {
                assert!(
                    spec.get(conflict).is_none(),
                    "{f}: bootVolume excludes {conflict}"
                );
            }
            let address = spec["bmc"]["address"].as_str().unwrap();
            let scheme = address.split("://").next().unwrap();
            let base = scheme.split('+').next().unwrap();
            assert!(
                ipxe_schemes.contains(&base),
                "{f}: {scheme} does not use the ipxe boot interface"
            );
            let bv = &spec["bootVolume"];
            drivers.insert(bv["volumeDriver"].as_str().unwrap().to_owned());
            let mut refs = vec![spec["bmc"]["credentialsName"].as_str().unwrap()];
            refs.extend(bv["iscsiCredentialsName"].as_str());
            for r in refs {
                let s = secret(ns, r).unwrap_or_else(|| panic!("{f}: Secret {ns}/{r} is not in the sample"));
                for key in ["username", "password"] {
                    assert!(
                        s["stringData"][key].is_string() || s["data"][key].is_string(),
                        "{f}: {r} lacks {key}"
                    );
                }
            }
        }
    }
    assert_eq!(
        drivers,
        set(["cinder", "external"]),
        "a sample for each volume driver"
    );
}

// ---------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------

#[test]
fn dockerfile_is_multi_stage_locked_and_nonroot() {
    let dockerfile = read("Dockerfile");
    // Instructions with their continuation lines joined, comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        pending.push_str(t.trim_end_matches('\\'));
        pending.push(' ');
        if !t.ends_with('\\') {
            instructions.push(pending.split_whitespace().collect::<Vec<_>>().join(" "));
            pending.clear();
        }
    }
    let starting = |word: &str| -> Vec<&String> {
        instructions
            .iter()
            .filter(|i| i.split(' ').next().unwrap().eq_ignore_ascii_case(word))
            .collect()
    };
    let froms = starting("FROM");
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let builder = froms[0];
    assert!(builder.to_lowercase().contains(" as builder"), "{builder}");
    let image = builder.split(' ').nth(1).unwrap();
    let tag = image.rsplit(':').next().unwrap();
    let manifest = read("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("Cargo.toml rust-version");
    let version = |v: &str| -> Vec<u32> { v.split(['.', '-']).map_while(|p| p.parse().ok()).collect() };
    assert!(
        image.contains("rust:") && version(tag) >= version(rust_version),
        "{image} vs rust-version {rust_version}"
    );

    let runtime = froms.last().unwrap();
    assert!(
        runtime.contains("gcr.io/distroless/") && runtime.ends_with(":nonroot"),
        "{runtime}"
    );
    let runs = starting("RUN");
    assert!(
        runs.iter().any(|r| r.contains("cargo build --release --locked")),
        "cargo build --release --locked: {runs:?}"
    );
    let users = starting("USER");
    let user = users.last().expect("USER").split(' ').nth(1).unwrap();
    assert_eq!(
        user.split(':').next().unwrap(),
        "65532",
        "the Deployments run as 65532"
    );

    // ENTRYPOINT is the binary copied from the builder.
    let entry = starting("ENTRYPOINT");
    let entry = entry.last().expect("ENTRYPOINT");
    let copied = starting("COPY")
        .into_iter()
        .filter(|c| c.contains("--from=builder"))
        .map(|c| c.rsplit(' ').next().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert!(
        copied.iter().any(|dest| entry.contains(&format!("\"{dest}\""))),
        "{entry} vs {copied:?}"
    );

    // Every file the crate embeds at compile time is in the build context.
    let sources: Vec<String> = starting("COPY")
        .into_iter()
        .filter(|c| !c.contains("--from"))
        .flat_map(|c| {
            let words: Vec<_> = c.split(' ').skip(1).collect();
            words[..words.len() - 1]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let covered = |p: &str| {
        sources
            .iter()
            .any(|s| p == s || p.starts_with(&format!("{}/", s.trim_end_matches('/'))))
    };
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "src/lib.rs",
        "benches/rules.rs",
    ] {
        assert!(covered(needed), "the Dockerfile does not COPY {needed}");
    }
    for embedded in embedded_files(&root().join("src")) {
        assert!(
            covered(&embedded),
            "src embeds {embedded} but the Dockerfile does not COPY it"
        );
    }

    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for must in ["target", ".git"] {
        assert!(ignored.contains(&must), ".dockerignore should exclude {must}");
    }
    for needed in sources.iter() {
        assert!(
            !ignored
                .iter()
                .any(|i| needed == i || needed.starts_with(&format!("{i}/"))),
            ".dockerignore excludes {needed}, which the Dockerfile copies"
        );
    }
}

/// Files under the crate root named by `include_str!`/`include_bytes!` in `src/`.
fn embedded_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(embedded_files(&path));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        for mac in ["include_str!(", "include_bytes!("] {
            for rest in text.split(mac).skip(1) {
                let Some(lit) = rest.split('"').nth(1) else {
                    continue;
                };
                if rest.trim_start().starts_with("concat!") {
                    // concat!(env!("CARGO_MANIFEST_DIR"), "/path")
                    if let Some(p) = rest.split('"').nth(3) {
                        found.push(p.trim_start_matches('/').to_owned());
                    }
                    continue;
                }
                let resolved = path.parent().unwrap().join(lit);
                let normalized = normalize(&resolved);
                if let Ok(rel) = normalized.strip_prefix(root()) {
                    found.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    found
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
