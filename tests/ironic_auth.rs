//! HTTP basic auth to Ironic from metal3-style credential files, against a real Ironic
//! started here with `auth_strategy = http_basic` (its own instance: the shared test Ironic
//! runs noauth). Needs the venv `scripts/ironic-standalone.sh install` builds.

mod ironic_support;

use bootvolume::ironic::{ClientConfig, IronicClient};
use ironic_support::*;
use serde_json::json;
use std::{path::PathBuf, process::Command, time::Duration};

const IRONIC_USER: &str = "bootvolume";
const IRONIC_PASSWORD: &str = "Ir0nic-basic-pw";

/// A private Ironic with http_basic auth; stopped on drop, pass or fail.
struct AuthIronic {
    state: tempfile::TempDir,
    url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ironic-standalone.sh")
}

impl AuthIronic {
    fn start() -> Self {
        let state = tempfile::tempdir().expect("tempdir");
        let venv = Command::new(script())
            .arg("install")
            .output()
            .expect("install ironic");
        assert!(venv.status.success(), "{}", String::from_utf8_lossy(&venv.stderr));
        let python = PathBuf::from(String::from_utf8_lossy(&venv.stdout).trim()).join("bin/python");
        let hash = Command::new(python)
            .args([
                "-c",
                "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())",
            ])
            .arg(IRONIC_PASSWORD)
            .output()
            .expect("bcrypt");
        let htpasswd = state.path().join("htpasswd");
        std::fs::write(
            &htpasswd,
            format!("{IRONIC_USER}:{}", String::from_utf8_lossy(&hash.stdout)),
        )
        .unwrap();
        let out = Command::new(script())
            .arg("start")
            .arg(state.path().join("ironic"))
            .env("IRONIC_HTPASSWD", &htpasswd)
            .env("IRONIC_READY_USER", format!("{IRONIC_USER}:{IRONIC_PASSWORD}"))
            .output()
            .expect("start ironic");
        let me = Self {
            url: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            state,
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        me
    }

    fn credential_files(&self, password: &str) -> (PathBuf, PathBuf) {
        let (u, p) = (
            self.state.path().join("username"),
            self.state.path().join(format!("password-{password}")),
        );
        std::fs::write(&u, format!("{IRONIC_USER}\n")).unwrap();
        std::fs::write(&p, format!("{password}\n")).unwrap();
        (u, p)
    }
}

impl Drop for AuthIronic {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.state.path().join("ironic"))
            .output();
    }
}

#[tokio::test]
async fn basic_auth_from_files_works_and_bad_credentials_are_clear() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ironic = AuthIronic::start();
    let (user_file, pass_file) = ironic.credential_files(IRONIC_PASSWORD);
    let c = IronicClient::new(
        ClientConfig::new(&ironic.url, Duration::from_secs(30))
            .with_files(Some(&user_file), Some(&pass_file), None)
            .unwrap(),
    )
    .unwrap();
    let p = HostParams::new(&unique_namespace());
    enroll(&c, &p.ns, json!({})).await;
    let (_d, file) = manifest(&[p.host(), secret(&p.ns, "chap", "chapuser", "chap-pw-auth")]);
    let files = |u: &PathBuf, pw: &PathBuf| {
        vec![
            "--ironic-username-file".to_owned(),
            u.display().to_string(),
            "--ironic-password-file".into(),
            pw.display().to_string(),
        ]
    };
    let run = |extra: Vec<String>| {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let run = ironic_apply(&file, &ironic.url, &extra);
        assert!(
            !run.all().contains(IRONIC_PASSWORD) && !run.all().contains("chap-pw-auth"),
            "leak:\n{}",
            run.all()
        );
        run
    };

    let ok = run(files(&user_file, &pass_file));
    assert_eq!(ok.code, 0, "{}", ok.all());
    assert!(ok.stdout.contains("did create volume target"), "{}", ok.all());

    let anonymous = run(vec![]);
    assert_eq!(anonymous.code, 1, "{}", anonymous.all());
    assert!(
        anonymous
            .stderr
            .contains("not authorized by Ironic (HTTP 401): Authorization required"),
        "{}",
        anonymous.all()
    );

    let (_, wrong) = ironic.credential_files("not-the-password");
    let denied = run(files(&user_file, &wrong));
    assert_eq!(denied.code, 1, "{}", denied.all());
    assert!(
        denied.stderr.contains("Incorrect username or password"),
        "{}",
        denied.all()
    );
}
