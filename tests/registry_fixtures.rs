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

fn layout_blob(fixtures: &Fixtures, name: &str, digest: &str) -> Vec<u8> {
    let hex = digest.trim_start_matches("sha256:");
    let path = fixtures.layout(name).join("blobs/sha256").join(hex);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn every_fixture_is_pushed_byte_for_byte() {
    if registry_support::skip() {
        return;
    }
    let fixtures = Fixtures::get();
    let registry = Registry::start(false);
    for name in fixtures.names() {
        registry.push(&name);
        let out = run_checked(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--no-creds",
            &registry.reference(&name),
        ]));
        let want = layout_blob(fixtures, &name, &fixtures.digest(&name));
        assert!(
            out.stdout == want,
            "{name}: the registry serves a different manifest than the layout holds"
        );
    }
}

#[test]
fn docker_format_push_converts_image_and_index() {
    if registry_support::skip() {
        return;
    }
    let registry = Registry::start(false);
    for (name, media_type) in [
        (
            "busybox",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
        (
            "multiarch",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ),
    ] {
        let repo = format!("{name}-docker");
        registry.push_docker(name, &repo);
        let raw = inspect_json(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--no-creds",
            &registry.reference(&repo),
        ]);
        assert_eq!(raw["mediaType"], media_type, "{name}: {raw}");
    }
    let amd64 = inspect_json(&[
        "inspect",
        "--tls-verify=false",
        "--no-creds",
        &registry.reference("multiarch-docker"),
    ]);
    assert_eq!(amd64["Architecture"], "amd64", "{amd64}");
    assert_eq!(amd64["Layers"].as_array().map(Vec::len), Some(2), "{amd64}");
}

#[test]
fn escaped_markers_finds_marker_files_and_passwd_links() {
    let store = tempfile::tempdir().expect("temp dir");
    let rootfs = store.path().join("trees/abc/rootfs");
    std::fs::create_dir_all(rootfs.join("tmp")).expect("mkdir");
    std::fs::write(rootfs.join("tmp/podvm-evil-contained"), b"x").expect("write");
    assert_eq!(
        registry_support::escaped_markers(store.path(), &[&rootfs]),
        Vec::<std::path::PathBuf>::new()
    );
    let outside = store.path().join("trees/podvm-evil-dotdot");
    std::fs::write(&outside, b"x").expect("write");
    assert_eq!(
        registry_support::escaped_markers(store.path(), &[&rootfs]),
        vec![outside.clone()]
    );
    std::fs::remove_file(&outside).expect("rm");
    let link = rootfs.join("passwd");
    match std::fs::hard_link("/etc/passwd", &link) {
        Ok(()) => assert_eq!(
            registry_support::escaped_markers(store.path(), &[&rootfs]),
            vec![link]
        ),
        Err(e) => eprintln!("hard link check not exercised: cannot link /etc/passwd: {e}"),
    }
}

/// Lists the entries of every layer of fixture `name` ("NAME", "NAME -> SYMLINK",
/// "NAME => HARDLINK", "NAME chr MAJ:MIN", "NAME size=N"), stopping at the first huge entry.
fn list_layer_entries(fixtures: &Fixtures, name: &str) -> String {
    const LISTER: &str = r#"
import json, os, sys, tarfile
lay = sys.argv[1]
blob = lambda d: os.path.join(lay, "blobs", *d.split(":", 1))
desc = json.load(open(os.path.join(lay, "index.json")))["manifests"][0]
manifest = json.load(open(blob(desc["digest"])))
for layer in manifest["layers"]:
    try:
        with tarfile.open(blob(layer["digest"]), mode="r|*") as tf:
            for m in tf:
                line = m.name
                if m.issym(): line += " -> " + m.linkname
                if m.islnk(): line += " => " + m.linkname
                if m.ischr(): line += " chr %d:%d" % (m.devmajor, m.devminor)
                if m.isreg(): line += " size=%d" % m.size
                print(line)
                if m.size > (1 << 27):
                    break
    except tarfile.ReadError as e:
        print("read error:", e)
"#;
    let out = run_checked(
        Command::new("python3")
            .arg("-c")
            .arg(LISTER)
            .arg(fixtures.layout(name)),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn malicious_fixtures_hold_their_malicious_entries() {
    if registry_support::skip() {
        return;
    }
    let fixtures = Fixtures::get();
    let expected: &[(&str, &[&str])] = &[
        ("evil-dotdot", &["../../podvm-evil-dotdot size="]),
        ("evil-abs", &["/podvm-evil-abs/etc/evil size="]),
        (
            "evil-symlink",
            &[
                "x -> ../../../../../../../..",
                "x/tmp/podvm-evil-symlink size=",
            ],
        ),
        (
            "evil-symlink-abs",
            &["x -> /\n", "x/tmp/podvm-evil-symlink-abs size="],
        ),
        (
            "evil-symlink-layers",
            &["x -> /\n", "x/tmp/podvm-evil-symlink-layers size="],
        ),
        (
            "evil-hardlink",
            &["passwd => ../../../../../../../../etc/passwd"],
        ),
        ("evil-hardlink-abs", &["passwd => /etc/passwd"]),
        ("evil-device", &["dev/podvm-evil-null chr 1:3"]),
        ("evil-whiteout", &["keep/file size=", "\n.wh... size=0"]),
        ("evil-whiteout-dir", &["keep/.wh... size=0"]),
        ("evil-bomb", &["zeros.bin size=5368709120"]),
        ("evil-hugesize", &["huge.bin size=1099511627776"]),
    ];
    let mut names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    assert_eq!(fixtures.malicious(), names, "malicious fixture set changed");
    for (name, needles) in expected {
        let listing = list_layer_entries(fixtures, name);
        for needle in *needles {
            assert!(
                listing.contains(needle),
                "{name}: no {needle:?} in:\n{listing}"
            );
        }
        assert_ne!(fixtures.expectation(name), "ok", "{name}");
    }
}

/// Sends one raw HTTP/1.1 GET to 127.0.0.1:`port` and returns the status line.
fn http_get_status(port: u16, path: &str, extra_header: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the blob port");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra_header}Connection: close\r\n\r\n"
    )
    .expect("send request");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("read status line");
    line.trim().to_string()
}

#[test]
fn redirecting_registry_serves_blobs_from_another_port() {
    if registry_support::skip() {
        return;
    }
    let fixtures = Fixtures::get();
    let registry = Registry::start_redirecting();
    registry.push("busybox");
    assert_ne!(registry.pull_host(), registry.host());
    let out_dir = tempfile::tempdir().expect("temp dir");
    let dest = format!("oci:{}:x", out_dir.path().join("copy").display());
    run_checked(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--src-no-creds",
        &registry.reference("busybox"),
        &dest,
    ]));
    let manifest: serde_json::Value = serde_json::from_slice(&layout_blob(
        fixtures,
        "busybox",
        &fixtures.digest("busybox"),
    ))
    .expect("busybox manifest is JSON");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .expect("busybox has a layer");
    let log = registry.redirect_log().join("\n");
    assert!(
        log.contains(r#""kind": "redirect""#) && log.contains(layer),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(r#""kind": "blob""#) && l.contains(layer) && l.contains("200")),
        "the layer was not served by the blob port: {log}"
    );
    let blob_port: u16 = std::fs::read_to_string(registry.dir().join("blob-port"))
        .expect("blob-port file")
        .trim()
        .parse()
        .expect("blob port number");
    let path = format!("/blobs/busybox/{layer}?expires=4102444800");
    assert!(http_get_status(blob_port, &path, "").contains(" 200 "));
    assert!(http_get_status(blob_port, &path, "Authorization: Bearer x\r\n").contains(" 400 "));
}
