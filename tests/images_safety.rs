//! Malicious layers and interrupted fetches, against a real local registry.

#[path = "registry_support/mod.rs"]
mod registry_support;

#[path = "images_support/mod.rs"]
mod images_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use images_support::*;
use registry_support::{escaped_markers, Fixtures, Registry};

/// Every path under `root` whose name contains `podvm-evil` (not following symlinks).
fn evil_files(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(root) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().contains("podvm-evil") {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            evil_files(&p, out);
        }
    }
}

#[test]
fn malicious_layers_fail_cleanly() {
    if registry_support::skip() {
        return;
    }
    let fx = Fixtures::get();
    let evil = fx.malicious();
    assert!(
        evil.len() >= 10,
        "expected the evil-* fixtures, got {evil:?}"
    );
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("store");
    let trees = dir.join("images/trees");
    let before = escaped_markers(&dir, &[&trees]);
    assert!(
        before.is_empty(),
        "leftovers from an earlier run: {before:?}"
    );
    let reg = Registry::start(false);
    for name in &evil {
        reg.push_exact(name, name);
        let reference = reg.reference(name);
        let out = podvm(&dir, &["fetch", INSECURE, &reference]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expect = fx.expectation(name);
        let note = fx.note(name);
        // As root, device nodes are created (as rkt does); unprivileged they are skipped.
        let device_ok = name == "evil-device" && out.status.success() && {
            let mut inside = Vec::new();
            evil_files(&dir.join("images/trees"), &mut inside);
            inside.iter().any(|p| p.ends_with("dev/podvm-evil-null"))
        };
        if expect == "reject" && !device_ok {
            assert!(!out.status.success(), "{name} ({note}) was accepted");
        }
        if !out.status.success() {
            assert!(
                stderr.contains(&reference),
                "{name}: error does not name the image: {stderr}"
            );
            assert!(
                stderr.contains("entry"),
                "{name}: error does not name the entry: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{name}: {stderr}");
            eprintln!("{name}: {}", stderr.trim());
        }
        if name == "evil-bomb" {
            assert!(stderr.contains("decompression bomb"), "{stderr}");
        }
        let escaped = escaped_markers(&dir, &[&trees]);
        assert!(
            escaped.is_empty(),
            "{name} wrote outside its rootfs: {escaped:?}"
        );
        let tmp: Vec<_> = fs::read_dir(dir.join("images/tmp"))
            .expect("tmp")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(tmp.is_empty(), "{name} left temporary files: {tmp:?}");
        assert!(
            podvm_ok(&dir, &["image", "verify"]).starts_with("ok"),
            "{name}: store does not verify"
        );
    }
    // Rejected images are not in the store.
    let list: serde_json::Value =
        serde_json::from_str(&podvm_ok(&dir, &["image", "list", "--format", "json"]))
            .expect("json");
    for img in list.as_array().expect("array") {
        let n = img["name"].as_str().unwrap_or("");
        let fixture = n
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(":latest");
        if fixture == "evil-device" {
            continue; // created as root (checked above)
        }
        assert_ne!(
            fx.expectation(fixture),
            "reject",
            "{n} is in the store: {list}"
        );
    }
}

fn partials(dir: &Path) -> Vec<(PathBuf, u64)> {
    fs::read_dir(dir.join("images/tmp"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kill_9_during_fetch_then_fetch_again() {
    if registry_support::skip() {
        return;
    }
    // Behind the redirecting front, whose blob server logs Range requests.
    let reg = Registry::start_redirecting();
    reg.push("big");
    let reference = reg.reference("big");
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("store");
    let mut killed_mid_blob = false;
    for _attempt in 0..5 {
        let _ = fs::remove_dir_all(&dir);
        let mut child = podvm_cmd(&dir)
            .args(["fetch", INSECURE, &reference])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("podvm starts");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if partials(&dir).iter().any(|(_, len)| *len > 1 << 20) {
                child.kill().expect("SIGKILL");
                killed_mid_blob = true;
                break;
            }
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.wait();
        if killed_mid_blob {
            break;
        }
    }
    assert!(killed_mid_blob, "never caught the fetch mid-blob");
    let left = partials(&dir);
    assert!(
        !left.is_empty(),
        "the partial download should be kept for resuming"
    );
    // No partial blob is visible in the store, and the store verifies.
    assert!(podvm_ok(&dir, &["image", "verify"]).starts_with("ok"));
    let list = podvm_ok(&dir, &["image", "list", "--format", "json"]);
    assert_eq!(list.trim(), "[]");

    let id = image_id(&podvm_ok(&dir, &["fetch", INSECURE, &reference]));
    assert!(podvm_ok(&dir, &["image", "verify"]).starts_with("ok"));
    assert!(
        partials(&dir).is_empty(),
        "partial files left after a complete fetch"
    );
    let out = t.path().join("rootfs");
    podvm_ok(&dir, &["image", "render", &id, out.to_str().expect("utf8")]);
    // The second fetch resumed the partial download with a Range request (206).
    let log = reg.redirect_log();
    assert!(
        log.iter()
            .any(|l| l.contains("\"blob\"") && l.contains("206")),
        "no resumed (206) blob download in {log:?}"
    );
    let big = fs::read(out.join("big.bin")).expect("big.bin");
    assert_eq!(big.len(), 64 << 20);
    use sha2::Digest as _;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&big)),
        Fixtures::get().big_sha256()
    );
}

#[test]
fn concurrent_fetches_share_the_store() {
    if registry_support::skip() {
        return;
    }
    let reg = Registry::start(false);
    reg.push_exact("big", "big");
    reg.push_exact("busybox", "busybox");
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("store");
    let refs = [
        reg.reference("big"),
        reg.reference("big"),
        reg.reference("busybox"),
        reg.reference("big"),
    ];
    let children: Vec<_> = refs
        .iter()
        .map(|r| {
            podvm_cmd(&dir)
                .args(["fetch", INSECURE, r])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("podvm starts")
        })
        .collect();
    let ids: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            assert!(
                out.status.success(),
                "concurrent fetch failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            image_id(&String::from_utf8_lossy(&out.stdout))
        })
        .collect();
    assert!(
        ids[0] == ids[1] && ids[1] == ids[3] && ids[0] != ids[2],
        "{ids:?}"
    );
    assert!(podvm_ok(&dir, &["image", "verify"]).starts_with("ok"));
    assert!(
        partials(&dir).is_empty(),
        "partial files left: {:?}",
        partials(&dir)
    );
    let list: serde_json::Value =
        serde_json::from_str(&podvm_ok(&dir, &["image", "list", "--format", "json"]))
            .expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
}

#[test]
fn unprivileged_fetch_skips_device_nodes() {
    if registry_support::skip() {
        return;
    }
    if !nix_is_root() {
        eprintln!("skipped: needs root to switch to an unprivileged user with setpriv");
        return;
    }
    let fx = Fixtures::get();
    let t = tempfile::tempdir().expect("tempdir");
    let base = t.path();
    for name in ["evil-device", "layers"] {
        run(Command::new("cp").arg("-a").arg(fx.layout(name)).arg(base));
    }
    fs::copy(env!("CARGO_BIN_EXE_podvm"), base.join("podvm")).expect("copy podvm");
    run(Command::new("chown").args(["-R", "65534:65534"]).arg(base));
    run(Command::new("chmod").arg("755").arg(base));
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(base.join("podvm"))
            .arg("--dir")
            .arg(base.join("store"))
            .args(args)
            .output()
            .expect("setpriv runs")
    };
    let dev_ref = format!("oci:{}:latest", base.join("evil-device").display());
    let out = as_nobody(&["fetch", &dev_ref]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipping device node") && stderr.contains("podvm-evil-null"),
        "{stderr}"
    );
    let mut found = Vec::new();
    evil_files(&base.join("store"), &mut found);
    assert!(
        found.is_empty(),
        "device node created unprivileged: {found:?}"
    );
    // Owners cannot be kept unprivileged, but everything else renders.
    let layers_ref = format!("oci:{}:latest", base.join("layers").display());
    let out = as_nobody(&["fetch", &layers_ref]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_nobody(&["image", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nix_is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        })
        .unwrap_or(false)
}

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("runs");
    assert!(st.success(), "{cmd:?} failed");
}

#[test]
fn layer_not_matching_config_diff_id_is_refused() {
    if registry_support::skip() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let layout = t.path().join("bad");
    run(Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images_support/bad_diff_id.py"))
        .arg(Fixtures::get().layout("busybox"))
        .arg(&layout));
    let dir = t.path().join("store");
    let input = format!("oci:{}:latest", layout.display());
    let err = podvm_err(&dir, &["fetch", &input]);
    assert!(
        err.contains("image config says sha256:000000") && err.contains(&input),
        "{err}"
    );
    assert_eq!(
        podvm_ok(&dir, &["image", "list", "--format", "json"]).trim(),
        "[]"
    );
    assert!(podvm_ok(&dir, &["image", "verify"]).starts_with("ok"));
}

/// One entry of a crafted layer: name, kind, mode, uid (and gid), link target or content.
type Entry<'a> = (&'a str, tar::EntryType, u32, u64, &'a [u8]);

/// A layer tarball of `entries`, in order.
fn layer_tar(path: &Path, entries: &[Entry]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, mode, uid, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_uid(*uid);
        h.set_gid(*uid);
        h.set_mtime(1_700_000_000);
        if *kind == tar::EntryType::Symlink {
            h.set_size(0);
            b.append_link(&mut h, name, std::ffi::OsStr::from_bytes(data))
                .expect("append link");
        } else {
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, *data).expect("append");
        }
    }
    fs::write(path, b.into_inner().expect("tar")).expect("write layer");
}

/// An OCI layout at `layout` (tag latest) of the given layer tarballs, by make_oci.py.
fn oci_layout(layout: &Path, layers: &[PathBuf]) {
    run(Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_oci.py"))
        .arg("image")
        .arg(layout)
        .args(layers)
        .stdout(std::process::Stdio::null()));
}

use std::os::unix::ffi::OsStrExt;

// Attack 2 of issue 19: a layer lists `x/` and `x/victim/` (0777, uid 4242) and then makes
// `x` a symlink to a host directory (`/tmp/<sentinel>`; absolute targets are allowed, they
// mean the container's root). podvm applied directory metadata by path after the layer, so
// `podvm fetch` left the host's `<sentinel>/victim` 4242:4242 0777. The same with a relative
// link climbing out, and with the swap across two layers. Every variant must leave the host
// sentinel (owner, mode, mtime, content) as it was and the store verifying; the relative
// one is refused with an error naming the image and the entry.
#[test]
fn swapped_ancestor_symlink_cannot_touch_the_host() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: python3 (for tests/fixtures/make_oci.py) is not installed");
        return;
    }
    use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
    let sentinel_dir = tempfile::Builder::new()
        .prefix("podvm-sentinel-")
        .tempdir_in("/tmp")
        .expect("sentinel tempdir");
    let s = sentinel_dir.path().to_path_buf();
    fs::create_dir(s.join("victim")).expect("mkdir");
    fs::write(s.join("victim/keep"), b"keep\n").expect("write");
    for (p, mode) in [("victim/keep", 0o640), ("victim", 0o750), ("", 0o755)] {
        use std::os::unix::fs::PermissionsExt;
        let p = s.join(p);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        let t = filetime::FileTime::from_unix_time(1_500_000_000, 0);
        filetime::set_file_times(&p, t, t).expect("utimes");
    }
    let before = tree(&s);
    let abs = s.as_os_str().as_bytes();
    let up = format!(
        "{}{}",
        "../".repeat(30),
        s.strip_prefix("/").expect("absolute").display()
    );
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("store");
    let owned = 4242;
    // (name, layers, whether the fetch succeeds)
    let cases: Vec<(&str, Vec<Vec<Entry>>, bool)> = vec![
        (
            "absolute",
            vec![vec![
                ("x/", D, 0o755, 0, b""),
                ("x/victim/", D, 0o777, owned, b""),
                ("x", L, 0o777, owned, abs),
                ("x/victim/f", F, 0o4777, owned, b"pwned\n"),
            ]],
            true,
        ),
        (
            "relative",
            vec![vec![
                ("x/", D, 0o755, 0, b""),
                ("x/victim/", D, 0o777, owned, b""),
                ("x", L, 0o777, owned, up.as_bytes()),
            ]],
            false,
        ),
        (
            "two-layers",
            vec![
                vec![("x/", D, 0o755, 0, b""), ("x/victim/", D, 0o755, 0, b"")],
                vec![
                    ("x/victim/", D, 0o777, owned, b""),
                    ("x", L, 0o777, owned, abs),
                    ("x/victim/", D, 0o777, owned, b""),
                    ("x/victim/keep", F, 0o4777, owned, b"pwned\n"),
                    ("x/victim/.wh.keep", F, 0o644, 0, b""),
                    ("x/.wh..wh..opq", F, 0o644, 0, b""),
                ],
            ],
            true,
        ),
    ];
    for (name, layers, accepted) in cases {
        let layout = t.path().join(format!("swap-{name}"));
        let tars: Vec<PathBuf> = layers
            .iter()
            .enumerate()
            .map(|(i, entries)| {
                let p = t.path().join(format!("swap-{name}-{i}.tar"));
                layer_tar(&p, entries);
                p
            })
            .collect();
        oci_layout(&layout, &tars);
        let reference = format!("oci:{}:latest", layout.display());
        let out = podvm(&dir, &["fetch", &reference]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), accepted, "{name}: {stderr}");
        if accepted {
            let id = image_id(&String::from_utf8_lossy(&out.stdout));
            let rendered = t.path().join(format!("render-{name}"));
            podvm_ok(
                &dir,
                &["image", "render", &id, rendered.to_str().expect("utf8")],
            );
            assert!(
                fs::symlink_metadata(rendered.join("x"))
                    .expect("x")
                    .file_type()
                    .is_symlink(),
                "{name}: x is not the image's symlink"
            );
        } else {
            assert!(
                stderr.contains(&reference) && stderr.contains("entry \"x\""),
                "{name}: the error does not name the image and the entry: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        }
        assert_eq!(tree(&s), before, "{name}: the host sentinel changed");
        assert!(
            podvm_ok(&dir, &["image", "verify"]).starts_with("ok"),
            "{name}: store does not verify"
        );
    }
}
