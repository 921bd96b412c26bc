//! ACI trust through the `podvm` binary: `podvm trust`, detached signature verification
//! (files, URLs, appc discovery) with keys made by gpg, http and TLS policies.

#[path = "images_support/mod.rs"]
mod images_support;

#[path = "images_support/signing.rs"]
mod signing;

use std::path::Path;

use images_support::*;
use signing::{make_aci, self_signed, Server, Signer};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Trusts `key` for `prefix` (or root with `None`) without review.
fn trust(dir: &Path, prefix: Option<&str>, key: &Path) -> String {
    match prefix {
        Some(p) => podvm_ok(
            dir,
            &["trust", "--prefix", p, "--skip-fingerprint-review", s(key)],
        ),
        None => podvm_ok(
            dir,
            &["trust", "--root", "--skip-fingerprint-review", s(key)],
        ),
    }
}

#[test]
fn signed_aci_verifies_tampered_and_unsigned_fail() {
    if signing::skip() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("store");
    let signer = Signer::new("Signer A <a@example.com>", "ed25519");
    let key = t.path().join("a.asc");
    signer.export(&key);
    let aci = t.path().join("hello.aci");
    make_aci(&aci, "example.com/hello", "1.0", "hello signed\n");
    signer.sign(&aci);

    // Signed, but nothing trusted yet: the advice names both ways out.
    let err = podvm_err(&dir, &["fetch", s(&aci)]);
    assert!(
        err.contains("example.com/hello")
            && err.contains("podvm trust --prefix example.com/hello")
            && err.contains("--insecure-options=image"),
        "{err}"
    );
    // Non-interactive trust without --skip-fingerprint-review is refused, nothing stored.
    let err = podvm_err(&dir, &["trust", "--prefix", "example.com/hello", s(&key)]);
    assert!(err.contains("--skip-fingerprint-review"), "{err}");
    assert!(!dir.join("trustedkeys/prefix.d/example.com/hello").exists());

    let out = trust(&dir, Some("example.com/hello"), &key);
    let fp = signer.fingerprint.to_ascii_lowercase();
    let stored = dir.join("trustedkeys/prefix.d/example.com/hello").join(&fp);
    assert!(stored.is_file(), "{out}: no {}", stored.display());
    let list = podvm_ok(&dir, &["trust", "--list"]);
    assert!(
        list.contains(&fp) && list.contains("example.com/hello"),
        "{list}"
    );

    let out = podvm_cmd(&dir)
        .args(["fetch", s(&aci)])
        .output()
        .expect("podvm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("signature verified") && stderr.contains(&fp),
        "{stderr}"
    );
    let id = image_id(&String::from_utf8_lossy(&out.stdout));
    let render = t.path().join("render");
    podvm_ok(&dir, &["image", "render", &id, s(&render)]);
    assert_eq!(
        std::fs::read_to_string(render.join("hello")).expect("rendered /hello"),
        "hello signed\n"
    );

    // Tampered image (signature of the original): refused.
    let bad = t.path().join("bad.aci");
    let mut bytes = std::fs::read(&aci).expect("read aci");
    bytes.extend_from_slice(b"tampered");
    std::fs::write(&bad, bytes).expect("write bad");
    std::fs::copy(
        format!("{}.asc", aci.display()),
        format!("{}.asc", bad.display()),
    )
    .expect("copy sig");
    let err = podvm_err(&dir, &["fetch", s(&bad)]);
    assert!(
        err.contains("does not verify") && err.contains(&fp),
        "{err}"
    );
    // A garbage signature file is reported as such.
    std::fs::write(format!("{}.asc", bad.display()), "not a signature").expect("write");
    let err = podvm_err(&dir, &["fetch", s(&bad)]);
    assert!(err.contains("not a valid OpenPGP signature"), "{err}");

    // No signature at all.
    let unsigned = t.path().join("unsigned.aci");
    make_aci(&unsigned, "example.com/hello", "2.0", "unsigned\n");
    let err = podvm_err(&dir, &["fetch", s(&unsigned)]);
    assert!(
        err.contains("no signature") && err.contains("--insecure-options=image"),
        "{err}"
    );
    // --insecure-options=image skips verification, as in rkt.
    image_id(&podvm_ok(
        &dir,
        &["fetch", "--insecure-options=image", s(&unsigned)],
    ));
}

/// Runs `podvm trust` on a terminal (via `script`), answering `answer`; returns (ok, output).
fn trust_interactive(dir: &Path, prefix: &str, key: &Path, answer: &str) -> (bool, String) {
    let cmd = format!(
        "{} --dir '{}' trust --prefix {prefix} '{}'",
        env!("CARGO_BIN_EXE_podvm"),
        dir.display(),
        key.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script runs");
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        // Give podvm time to ask before answering (the pty would echo an early answer anyway).
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _ = stdin.write_all(answer.as_bytes());
    }
    let out = child.wait_with_output().expect("script finishes");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn trust_asks_on_a_terminal() {
    if signing::skip() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("store");
    let signer = Signer::new("Asked <ask@example.com>", "ed25519");
    let key = t.path().join("k.asc");
    signer.export(&key);
    let fp = signer.fingerprint.to_ascii_lowercase();
    let stored = dir.join("trustedkeys/prefix.d/example.com/ask").join(&fp);
    // gpg groups the fingerprint by 4; the prompt shows it the same way.
    let grouped: Vec<String> = signer
        .fingerprint
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let (ok, text) = trust_interactive(&dir, "example.com/ask", &key, "n\n");
    assert!(!ok, "{text}");
    assert!(
        text.contains(&grouped.join(" ")) && text.contains("ask@example.com"),
        "{text}"
    );
    assert!(!stored.exists(), "refused key was stored: {text}");
    let (ok, text) = trust_interactive(&dir, "example.com/ask", &key, "y\n");
    assert!(ok && stored.is_file(), "{text}");
}

#[test]
fn untrusted_key_prefix_and_root_trust() {
    if signing::skip() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let a = Signer::new("Signer A <a@example.com>", "ed25519");
    let b = Signer::new("Signer B <b@example.org>", "rsa2048");
    let (ka, kb) = (t.path().join("a.asc"), t.path().join("b.asc"));
    a.export(&ka);
    b.export(&kb);
    let by_a = t.path().join("by-a/app.aci");
    make_aci(&by_a, "example.com/team/app", "1.0", "a\n");
    a.sign(&by_a);
    let by_b = t.path().join("by-b/app.aci");
    make_aci(&by_b, "example.com/team/app", "1.0", "b\n");
    b.sign(&by_b);

    let dir = t.path().join("store");
    // A trusted for the parent prefix: A's image verifies, B's is untrusted with advice.
    trust(&dir, Some("example.com/team"), &ka);
    image_id(&podvm_ok(&dir, &["fetch", s(&by_a)]));
    let err = podvm_err(&dir, &["fetch", s(&by_b)]);
    let fpb = b.fingerprint.to_ascii_lowercase();
    assert!(
        err.contains("not trusted")
            && err.contains(&fpb)
            && err.contains("podvm trust --prefix example.com/team/app")
            && err.contains("--insecure-options=image"),
        "{err}"
    );

    // A signature made with a signing subkey: unknown until the key is re-exported with it.
    a.add_signing_subkey("ed25519");
    let by_sub = t.path().join("by-sub/app.aci");
    make_aci(&by_sub, "example.com/team/app", "1.1", "sub\n");
    a.sign(&by_sub);
    let err = podvm_err(&dir, &["fetch", s(&by_sub)]);
    assert!(err.contains("not trusted"), "{err}");
    a.export(&ka);
    trust(&dir, Some("example.com/team"), &ka);
    let out = podvm_cmd(&dir)
        .args(["fetch", s(&by_sub)])
        .output()
        .expect("podvm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&a.fingerprint.to_ascii_lowercase()),
        "{stderr}"
    );

    // A prefix is matched by path components, not as a string prefix; a sibling is not trusted.
    let dir2 = t.path().join("store2");
    trust(&dir2, Some("example.com/tea"), &ka);
    trust(&dir2, Some("example.com/team/other"), &ka);
    let err = podvm_err(&dir2, &["fetch", s(&by_a)]);
    assert!(err.contains("no key is trusted"), "{err}");
    // Root trust covers every name.
    trust(&dir2, None, &kb);
    assert!(dir2.join("trustedkeys/root.d").join(&fpb).is_file());
    image_id(&podvm_ok(&dir2, &["fetch", s(&by_b)]));
    let err = podvm_err(&dir2, &["fetch", s(&by_a)]);
    assert!(err.contains("not trusted"), "{err}");

    // Bad input to trust.
    let err = podvm_err(
        &dir2,
        &[
            "trust",
            "--prefix",
            "Bad/../x",
            "--skip-fingerprint-review",
            s(&ka),
        ],
    );
    assert!(err.contains("invalid prefix"), "{err}");
    let err = podvm_err(
        &dir2,
        &["trust", "--root", "--skip-fingerprint-review", s(&by_a)],
    );
    assert!(err.contains("not a valid OpenPGP public key"), "{err}");
}

/// Lays out a discovery site for `NAME = HOST/project/app` under `root`: the page of
/// `HOST/project` (the name's own page is missing, so discovery walks up), the ACI of version
/// 1.0 signed by `signer`, and the key.
fn discovery_site(root: &Path, host: &str, scheme: &str, signer: &Signer) -> String {
    let name = format!("{host}/project/app");
    let page = format!(
        r#"<!DOCTYPE html><html><head>
<meta name="ac-discovery" content="{host}/project {scheme}://{host}/acis/{{name}}-{{version}}-{{os}}-{{arch}}.{{ext}}">
<meta name="ac-discovery-pubkeys" content="{host}/project {scheme}://{host}/keys/signer.asc">
<meta name="ac-discovery" content="other.example {scheme}://{host}/wrong/{{name}}.{{ext}}">
</head></html>"#
    );
    std::fs::write(root.join("project"), page).expect("page");
    std::fs::create_dir_all(root.join("keys")).expect("keys");
    signer.export(&root.join("keys/signer.asc"));
    let aci = root.join(format!("acis/{name}-1.0-linux-amd64.aci"));
    make_aci(&aci, &name, "1.0", "discovered\n");
    signer.sign(&aci);
    name
}

#[test]
fn discovery_over_http_trust_and_fetch() {
    if signing::skip() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join("www");
    std::fs::create_dir(&root).expect("www");
    let srv = Server::start(&root, None);
    let signer = Signer::new("Discovered <d@example.com>", "ed25519");
    let name = discovery_site(&root, &srv.host(), "http", &signer);
    let dir = t.path().join("store");
    let image = format!("{name}:1.0");

    // Plain http is refused without the option (for trust and for fetch).
    let err = podvm_err(
        &dir,
        &[
            "trust",
            "--prefix",
            &format!("{}/project", srv.host()),
            "--skip-fingerprint-review",
        ],
    );
    assert!(
        err.contains("ac-discovery-pubkeys") && err.contains("--insecure-allow-http"),
        "{err}"
    );
    let err = podvm_err(&dir, &["fetch", &image]);
    assert!(err.contains("--insecure-options=http"), "{err}");

    // trust --prefix without a key file: the key comes from ac-discovery-pubkeys.
    let out = podvm_ok(
        &dir,
        &[
            "trust",
            "--prefix",
            &format!("{}/project", srv.host()),
            "--skip-fingerprint-review",
            "--insecure-allow-http",
        ],
    );
    assert!(
        out.contains(&signer.fingerprint.to_ascii_lowercase()),
        "{out}"
    );

    // Discovery walks up to HOST/project, fills the template, fetches and verifies.
    let out = podvm_cmd(&dir)
        .args(["fetch", "--insecure-options=http", &image])
        .output()
        .expect("podvm runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("signature verified"), "{stderr}");
    let id = image_id(&String::from_utf8_lossy(&out.stdout));
    let render = t.path().join("render");
    podvm_ok(&dir, &["image", "render", &image, s(&render)]);
    assert_eq!(
        std::fs::read_to_string(render.join("hello")).expect("/hello"),
        "discovered\n"
    );
    // The labelled form names the same image; it is found in the store.
    let labelled = format!("{name},version=1.0,os=linux,arch=amd64");
    let again = podvm_ok(&dir, &["fetch", "--insecure-options=http", &labelled]);
    assert_eq!(image_id(&again), id);

    // A version the server does not have: the download of the rendered URL fails.
    let err = podvm_err(
        &dir,
        &["fetch", "--insecure-options=http", &format!("{name}:9.9")],
    );
    assert!(
        err.contains(&format!("{name}-9.9-linux-amd64.aci")) && err.contains("404"),
        "{err}"
    );
    // A name nobody serves a page for.
    let err = podvm_err(
        &dir,
        &[
            "fetch",
            "--insecure-options=http",
            &format!("{}/elsewhere/app:1.0", srv.host()),
        ],
    );
    assert!(err.contains("no ac-discovery meta tag"), "{err}");
}

#[test]
fn https_needs_insecure_tls_for_self_signed() {
    if signing::skip() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join("www");
    std::fs::create_dir(&root).expect("www");
    let (cert, key) = self_signed(t.path());
    let srv = Server::start(&root, Some((&cert, &key)));
    let signer = Signer::new("TLS <tls@example.com>", "ed25519");
    let name = discovery_site(&root, &srv.host(), "https", &signer);
    let dir = t.path().join("store");
    trust(&dir, Some(&name), &root.join("keys/signer.asc"));
    let image = format!("{name}:1.0");
    let url = format!("https://{}/acis/{name}-1.0-linux-amd64.aci", srv.host());

    for input in [&image, &url] {
        let err = podvm_err(&dir, &["fetch", input]);
        assert!(err.contains("--insecure-options=tls"), "{input}: {err}");
    }
    let id = image_id(&podvm_ok(
        &dir,
        &["fetch", "--insecure-options=tls", &image],
    ));
    let id2 = image_id(&podvm_ok(
        &dir,
        &[
            "fetch",
            "--insecure-options=tls",
            "--pull-policy=update",
            &url,
        ],
    ));
    assert_eq!(id, id2, "the same ACI by discovery and by URL");
}
