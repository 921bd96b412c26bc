//! Proves the registry fixtures on their own (independent of podvm): images build, registries
//! start, pushes land, token auth demands and accepts the test credentials.

#[path = "registry_support/mod.rs"]
mod registry_support;

use std::process::{Command, Output};

use registry_support::{run_checked, Fixtures, Registry, PASSWORD, USER};

fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run skopeo {args:?}: {e}"))
}

fn inspect_json(args: &[&str]) -> serde_json::Value {
    let out = skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("skopeo {args:?} printed no JSON ({e})"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_lowercase()
}

#[test]
fn plain_registry_serves_the_pushed_busybox_image() {
    if registry_support::skip() {
        return;
    }
    let fixtures = Fixtures::get();
    let registry = Registry::start(false);
    registry.push("busybox");
    let reference = registry.reference("busybox");
    let info = inspect_json(&["inspect", "--tls-verify=false", "--no-creds", &reference]);
    assert_eq!(
        info["Digest"],
        fixtures.digest("busybox").as_str(),
        "{info}"
    );
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Labels"]["org.podvm.fixture"], "busybox");
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(1), "{info}");
    let config = inspect_json(&[
        "inspect",
        "--tls-verify=false",
        "--no-creds",
        "--config",
        &reference,
    ]);
    assert_eq!(config["config"]["Cmd"][0], "/bin/sh", "{config}");
    assert_eq!(
        config["config"]["ExposedPorts"]["80/tcp"],
        serde_json::json!({})
    );
    assert!(registry.token_log().is_empty());
    let missing = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--no-creds",
        &registry.reference("nothing-here"),
    ]);
    assert!(!missing.status.success(), "a never pushed image was found");
}

#[test]
fn auth_registry_demands_and_accepts_the_test_credentials() {
    if registry_support::skip() {
        return;
    }
    let fixtures = Fixtures::get();
    let registry = Registry::start(true);
    registry.push("busybox");
    let reference = registry.reference("busybox");
    let creds = format!("--creds={USER}:{PASSWORD}");

    let info = inspect_json(&["inspect", "--tls-verify=false", &creds, &reference]);
    assert_eq!(
        info["Digest"],
        fixtures.digest("busybox").as_str(),
        "{info}"
    );

    let anonymous = skopeo(&["inspect", "--tls-verify=false", "--no-creds", &reference]);
    assert!(
        !anonymous.status.success(),
        "anonymous pull of a private repo worked"
    );
    assert!(
        stderr(&anonymous).contains("unauthorized") || stderr(&anonymous).contains("denied"),
        "unexpected refusal: {}",
        stderr(&anonymous)
    );
    let wrong = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("--creds={USER}:wrong"),
        &reference,
    ]);
    assert!(!wrong.status.success(), "a wrong password was accepted");

    let log = registry.token_log().join("\n");
    assert!(log.contains(r#""result": "issued""#), "{log}");
    assert!(log.contains(r#""user": "podvm""#), "{log}");
    assert!(log.contains(r#""result": "denied""#), "{log}");
}

#[test]
fn auth_registry_serves_public_repositories_anonymously_via_a_token() {
    if registry_support::skip() {
        return;
    }
    let registry = Registry::start(true);
    registry.push_as("busybox", "public/busybox");
    let info = inspect_json(&[
        "inspect",
        "--tls-verify=false",
        "--no-creds",
        &registry.reference("public/busybox"),
    ]);
    assert_eq!(info["Architecture"], "amd64");
    let anonymous_tokens = registry
        .token_log()
        .into_iter()
        .filter(|l| l.contains(r#""credentials": "none""#) && l.contains("public/busybox"))
        .count();
    assert!(anonymous_tokens > 0, "no anonymous token was issued");
}

#[test]
fn local_archives_hold_the_busybox_image() {
    if registry_support::skip() {
        return;
    }
    let fixtures = Fixtures::get();
    let docker = format!("docker-archive:{}", fixtures.docker_archive().display());
    let info = inspect_json(&["inspect", &docker]);
    assert_eq!(info["Architecture"], "amd64", "{info}");
    let oci = format!("oci-archive:{}:latest", fixtures.oci_archive().display());
    let info = inspect_json(&["inspect", &oci]);
    assert_eq!(
        info["Digest"],
        fixtures.digest("busybox").as_str(),
        "{info}"
    );
}

#[test]
fn every_fixture_layout_is_readable() {
    if registry_support::skip() {
        return;
    }
    let fixtures = Fixtures::get();
    assert!(fixtures.names().contains(&"busybox".to_string()));
    for name in fixtures.names() {
        let out = run_checked(Command::new("skopeo").args([
            "inspect",
            "--raw",
            &fixtures.oci_reference(&name),
        ]));
        let manifest: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: manifest is not JSON: {e}"));
        assert_eq!(manifest["schemaVersion"], 2, "{name}: {manifest}");
        let expect = fixtures.expectation(&name);
        assert!(
            ["ok", "reject", "contained"].contains(&expect.as_str()),
            "{name}: unknown expectation {expect}"
        );
    }
}
