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

/// An ACI whose one mount point has `name` (at `/data`, where the image has a setuid file).
fn aci_with_mount_point(dir: &Path, index: usize, name: &str) -> std::path::PathBuf {
    let bundle = dir.join(format!("bundle-{index}"));
    let data = bundle.join("rootfs/data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let planted = data.join("planted");
    std::fs::write(&planted, b"#!/bin/sh\nid\n").expect("write");
    let setuid = std::os::unix::fs::PermissionsExt::from_mode(0o4755);
    std::fs::set_permissions(&planted, setuid).expect("chmod");
    let manifest = serde_json::json!({
        "acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/mounts",
        "labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}],
        "app": {"exec": ["/bin/sh"], "user": "0", "group": "0",
                "mountPoints": [{"name": name, "path": "/data"}]}
    });
    std::fs::write(bundle.join("manifest"), manifest.to_string()).expect("manifest");
    let aci = dir.join(format!("mounts-{index}.aci"));
    make_aci(&bundle, &aci, "gzip -1");
    aci
}

/// Attack (issue 19, 1): an ACI's mount point name is a host path (absolute, or climbing out of
/// the pod with `..`). podvm once created that host directory and copied the image's files
/// into it as root, setuid bits included, before the guest refused the name. Now the name is
/// refused when the image is prepared, the host sentinel is untouched and the store verifies.
#[test]
fn aci_mount_point_names_that_are_host_paths_are_refused() {
    let t = tempfile::tempdir().expect("tempdir");
    let sentinel = t.path().join("sentinel");
    std::fs::create_dir(&sentinel).expect("mkdir");
    std::fs::write(sentinel.join("keep"), b"host data").expect("write");
    let before = tree(&sentinel);
    let fresh = t.path().join("would-be-created");
    let store = t.path().join("store");
    let climbing = format!("../../../../../../../..{}", fresh.display());
    let names = [
        sentinel.display().to_string(),
        fresh.display().to_string(),
        climbing,
    ];
    for (index, name) in names.iter().enumerate() {
        let aci = aci_with_mount_point(t.path(), index, name);
        let aci = aci.to_str().expect("utf8");
        for verb in ["prepare", "run"] {
            let err = podvm_err(&store, &[verb, "--insecure-options=image", aci]);
            assert!(
                err.contains("app.mountPoints") && err.contains(name.as_str()) && err.contains(aci),
                "podvm {verb} must name the image, the field and the value: {err}"
            );
        }
        assert_eq!(
            tree(&sentinel),
            before,
            "mount point {name:?} changed the host"
        );
        assert!(
            !fresh.exists(),
            "mount point {name:?} created a host directory"
        );
    }
    assert!(podvm_ok(&store, &["image", "verify"]).starts_with("ok"));
    let pods = podvm_ok(&store, &["list", "--format", "json"]);
    let pods: serde_json::Value = serde_json::from_str(&pods).expect("json");
    assert_eq!(
        pods.as_array().map(Vec::len),
        Some(0),
        "a pod was left: {pods}"
    );
}
