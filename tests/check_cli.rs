//! `bootvolume check` as users run it: the real binary on manifests under
//! `tests/fixtures/hosts/`, asserting exit codes and the output contract (docs/api.md).

mod common;

use serde_json::{Value, json};
use std::{
    io::Write,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

const SECRET: &str = "Sup3r-S3cret-CHAP-pw";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn host(name: &str) -> String {
    common::fixture_path("hosts", name).display().to_string()
}

/// Runs `bootvolume check ARGS` (stdin from `stdin`), bounded to 30 s.
fn check(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bootvolume"))
        .arg("check")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bootvolume");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("check {args:?} did not finish in 30 s"))
        .expect("output");
    Run {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// One JSON object per line, from `--output json`.
fn json_reports(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// (case, files, exit code, expected error lines as (prefix, field)).
type TextCase = (&'static str, Vec<String>, i32, Vec<(String, &'static str)>);

#[test]
fn text_output_and_exit_codes() {
    let cases: Vec<TextCase> = vec![
        ("valid_external", vec![host("valid_external.yaml")], 0, vec![]),
        ("valid_cinder", vec![host("valid_cinder.yaml")], 0, vec![]),
        ("valid_json", vec![host("valid_external.json")], 0, vec![]),
        (
            "invalid_external",
            vec![host("invalid_external.yaml")],
            1,
            vec![
                (
                    format!("{}: BareMetalHost metal3/worker-2", host("invalid_external.yaml")),
                    "spec.bootVolume.volumeDriver",
                ),
                (
                    format!("{}: BareMetalHost metal3/worker-2", host("invalid_external.yaml")),
                    "spec.bmc.address",
                ),
            ],
        ),
        (
            "no_namespace_shown_as_default",
            vec![host("invalid_cinder_no_namespace.yaml")],
            1,
            vec![(
                format!(
                    "{}: BareMetalHost default/worker-3",
                    host("invalid_cinder_no_namespace.yaml")
                ),
                "spec.bootVolume.volumeId",
            )],
        ),
        (
            "multi_doc_skips_secret_and_configmap",
            vec![host("multi_doc_with_secret.yaml")],
            1,
            vec![(
                format!(
                    "{}: BareMetalHost metal3/worker-5",
                    host("multi_doc_with_secret.yaml")
                ),
                "spec.bootVolume.iscsiTarget.lun",
            )],
        ),
        (
            "list_items",
            vec![host("list_of_hosts.yaml")],
            1,
            vec![(
                format!("{}: BareMetalHost lab/worker-8", host("list_of_hosts.yaml")),
                "spec.bootVolume",
            )],
        ),
        (
            "several_files_valid_first",
            vec![host("valid_cinder.yaml"), host("invalid_external.yaml")],
            1,
            vec![
                (
                    format!("{}: BareMetalHost metal3/worker-2", host("invalid_external.yaml")),
                    "spec.bootVolume.volumeDriver",
                ),
                (
                    format!("{}: BareMetalHost metal3/worker-2", host("invalid_external.yaml")),
                    "spec.bmc.address",
                ),
            ],
        ),
    ];
    for (case, files, code, errors) in cases {
        let args: Vec<&str> = files.iter().map(String::as_str).collect();
        let run = check(&args, None);
        assert_eq!(
            run.code, code,
            "{case}: stdout={} stderr={}",
            run.stdout, run.stderr
        );
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines.len(), errors.len(), "{case}: {}", run.stdout);
        for (prefix, field) in &errors {
            let want = format!("{prefix}: {field}: ");
            assert!(
                lines.iter().any(|l| l.starts_with(&want)),
                "{case}: no line starting with {want:?} in\n{}",
                run.stdout
            );
        }
        for needle in [
            SECRET,
            "configmap-marker-value",
            "list-secret-marker",
            "worker-4-chap",
        ] {
            assert!(!run.stdout.contains(needle), "{case}: {needle} printed");
        }
    }
}

#[test]
fn stdin_is_read_for_dash_and_named_dash() {
    let text = std::fs::read_to_string(host("invalid_cinder_no_namespace.yaml")).unwrap();
    let run = check(&["-"], Some(&text));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("-: BareMetalHost default/worker-3: spec.bootVolume.volumeId: "),
        "{}",
        run.stdout
    );
    let valid = std::fs::read_to_string(host("valid_external.json")).unwrap();
    let run = check(&["-"], Some(&valid));
    assert_eq!((run.code, run.stdout.as_str()), (0, ""), "{}", run.stderr);
}

#[test]
fn unreadable_input_exits_2_and_other_files_are_still_checked() {
    let missing = host("does_not_exist.yaml");
    for (case, files, stderr_has) in [
        ("missing_file", vec![missing.clone()], missing.clone()),
        (
            "yaml_syntax_error",
            vec![host("yaml_syntax_error.yaml")],
            format!("{}: ", host("yaml_syntax_error.yaml")),
        ),
        // Exit 2 wins over 1, and the readable file is still reported.
        (
            "missing_and_invalid",
            vec![missing.clone(), host("invalid_external.yaml")],
            missing.clone(),
        ),
    ] {
        let args: Vec<&str> = files.iter().map(String::as_str).collect();
        let run = check(&args, None);
        assert_eq!(run.code, 2, "{case}: {}", run.stderr);
        assert!(run.stderr.contains(&stderr_has), "{case}: {}", run.stderr);
        if case == "missing_and_invalid" {
            assert!(
                run.stdout.contains("BareMetalHost metal3/worker-2"),
                "{}",
                run.stdout
            );
        }
    }
}

#[test]
fn json_output() {
    let run = check(
        &[
            "--output",
            "json",
            &host("multi_doc_with_secret.yaml"),
            &host("valid_cinder.yaml"),
        ],
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reports = json_reports(&run.stdout);
    let summary: Vec<(String, String, String, bool)> = reports
        .iter()
        .map(|r| {
            let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
            let mut keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                ["allowed", "errors", "file", "name", "namespace", "warnings"]
            );
            (
                r["file"].as_str().unwrap().to_owned(),
                r["namespace"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
                r["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    let multi = host("multi_doc_with_secret.yaml");
    let cinder = host("valid_cinder.yaml");
    assert_eq!(
        summary,
        vec![
            (multi.clone(), "metal3".into(), "worker-4".into(), true),
            (multi, "metal3".into(), "worker-5".into(), false),
            (cinder, "default".into(), "worker-1".into(), true),
        ]
    );
    let errors = &reports[1]["errors"];
    assert_eq!(errors.as_array().unwrap().len(), 1, "{errors}");
    assert_eq!(errors[0]["field"], "spec.bootVolume.iscsiTarget.lun");
    assert_eq!(errors[0]["reason"], "FieldValueInvalid");
    assert!(errors[0]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(reports[0]["errors"], json!([]));
    assert!(reports[0]["warnings"].is_array());
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));
}

/// `--mutate` prints the defaulted hosts as YAML on stdout, errors on stderr; other kinds
/// are never printed.
#[test]
fn mutate_prints_defaulted_hosts() {
    let run = check(
        &[
            "--mutate",
            &host("valid_external.yaml"),
            &host("multi_doc_with_secret.yaml"),
        ],
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&run.stdout).expect("stdout is YAML");
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    let names: Vec<&str> = docs
        .iter()
        .map(|d| {
            assert_eq!(d["kind"], "BareMetalHost", "{d}");
            d["metadata"]["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, ["worker-0", "worker-4", "worker-5"]);
    // The input with the defaults applied, nothing else changed.
    let input: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(host("valid_external.yaml")).unwrap()).unwrap();
    let mut want = input.clone();
    let bv = &mut want["spec"]["bootVolume"];
    bv["targetType"] = json!("iscsi");
    let t = &mut bv["iscsiTarget"];
    t["portal"] = json!("192.0.2.10:3260");
    t["lun"] = json!(0);
    t["iType"] = json!("iqn");
    t["authMethod"] = json!("CHAP");
    t["authSecretRef"] = json!({"name": "worker-0-chap", "namespace": "metal3"});
    assert_eq!(docs[0], want);
    // Errors go to stderr in the usual line format; stdout is only YAML.
    let multi = host("multi_doc_with_secret.yaml");
    assert!(
        run.stderr.lines().any(|l| l.starts_with(&format!(
            "{multi}: BareMetalHost metal3/worker-5: spec.bootVolume.iscsiTarget.lun: "
        ))),
        "{}",
        run.stderr
    );
    for needle in [
        SECRET,
        "configmap-marker-value",
        "kind: Secret",
        "kind: ConfigMap",
    ] {
        assert!(!run.stdout.contains(needle), "{needle} printed:\n{}", run.stdout);
    }
    // The mutated output checks clean for the valid host (mutation then validation agree).
    let run = check(&["-"], Some(&serde_saphyr::to_string(&docs[0]).unwrap()));
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
}
