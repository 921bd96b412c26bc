//! appc ACI files (gzip, bzip2, xz) through the `podvm` binary, compared with `umoci unpack` of
//! the same rootfs.

#[path = "registry_support/mod.rs"]
mod registry_support;

#[path = "images_support/mod.rs"]
mod images_support;

use std::path::Path;
use std::process::Command;

use images_support::*;
use registry_support::Fixtures;

const MANIFEST: &str = r#"{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/busybox",
"labels":[{"name":"version","value":"1.0"},{"name":"os","value":"linux"},{"name":"arch","value":"amd64"}],
"app":{"exec":["/bin/sh"],"user":"1000","group":"1000","workingDirectory":"/home/app",
"environment":[{"name":"PATH","value":"/bin"}],"ports":[{"name":"http","protocol":"tcp","port":8080}]}}"#;

fn make_aci(bundle: &Path, out: &Path, compressor: &str) {
    let script = format!(
        "tar --numeric-owner -C '{}' -cf - manifest rootfs | {compressor} > '{}'",
        bundle.display(),
        out.display()
    );
    let st = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .status()
        .expect("bash runs");
    assert!(st.success(), "{script} failed");
}

#[test]
fn aci_files_fetch_and_render() {
    if registry_support::skip() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let bundle = t.path().join("bundle");
    let rootfs = umoci_unpack(&Fixtures::get().layout("busybox"), &bundle);
    std::fs::write(bundle.join("manifest"), MANIFEST).expect("write manifest");
    let dir = t.path().join("store");
    let mut ids = Vec::new();
    for (comp, ext) in [("gzip -1", "gz"), ("bzip2 -1", "bz2"), ("xz -0", "xz")] {
        let aci = t.path().join(format!("busybox-{ext}.aci"));
        make_aci(&bundle, &aci, comp);
        let aci_s = aci.to_str().expect("utf8");
        let err = podvm_err(&dir, &["fetch", aci_s]);
        assert!(err.contains("--insecure-options=image"), "{err}");
        let id = image_id(&podvm_ok(
            &dir,
            &["fetch", "--insecure-options=image", aci_s],
        ));
        let out = t.path().join(format!("render-{ext}"));
        podvm_ok(&dir, &["image", "render", &id, out.to_str().expect("utf8")]);
        assert_same_tree(&out, &rootfs);
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "each ACI file is its own image");
    // The appc name (with version) finds the last one fetched.
    let cfg = podvm_ok(&dir, &["image", "cat-config", "example.com/busybox:1.0"]);
    let cfg: serde_json::Value = serde_json::from_str(&cfg).expect("json");
    assert_eq!(cfg["id"], ids[2].as_str());
    assert_eq!(cfg["app"]["exec"], serde_json::json!(["/bin/sh"]));
    assert_eq!(cfg["app"]["working_dir"], "/home/app");
    assert_eq!(cfg["app"]["ports"][0]["port"], 8080);
    assert!(podvm_ok(&dir, &["image", "verify"]).starts_with("ok"));
}
