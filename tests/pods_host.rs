//! Pods on disk through the real `podvm` binary, without booting: prepare (with rkt's per-app
//! flags), list, status, cat-manifest, rm and gc, from local OCI fixtures.

#[path = "registry_support/mod.rs"]
mod registry_support;

use std::path::Path;
use std::process::{Command, Output};

use registry_support::Fixtures;
use serde_json::Value;

fn podvm(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podvm"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run podvm")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = podvm(dir, args);
    assert!(
        out.status.success(),
        "podvm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(dir, args)).expect("json output")
}

/// A fresh data dir and the fixtures, or `None` (with the reason printed) when they can't exist.
fn setup() -> Option<(tempfile::TempDir, &'static Fixtures)> {
    if registry_support::skip() {
        return None;
    }
    Some((tempfile::tempdir().expect("tempdir"), Fixtures::get()))
}

fn prepare_busybox(dir: &Path, fixtures: &Fixtures) -> String {
    ok(dir, &["prepare", &fixtures.oci_reference("busybox")])
        .trim()
        .to_string()
}

/// Records in a pod's status what `podvm run` records when its VM starts.
fn record_start(pod_dir: &Path, pid: u32) {
    record_start_with(pod_dir, pid, false);
}

/// [`record_start`], for a pod run `--allow-unlimited` (no pod cgroup) when `unlimited`.
fn record_start_with(pod_dir: &Path, pid: u32, unlimited: bool) {
    let status_file = pod_dir.join("status.json");
    let mut status: Value =
        serde_json::from_slice(&std::fs::read(&status_file).expect("status.json")).expect("json");
    status["started"] = Value::from(1);
    status["pid"] = Value::from(pid);
    status["unlimited"] = Value::from(unlimited);
    std::fs::write(&status_file, status.to_string()).expect("write status");
}

/// A stand-in for the pod's `podvm run`: a process that holds the lock file of the pod in
/// `pod_dir` itself (flock --no-fork, so `/proc/locks` names its pid) and says so; returned once
/// it holds it.
fn hold_pod(pod_dir: &Path) -> std::process::Child {
    let mut holder = Command::new("flock")
        .args(["--nonblock", "--exclusive", "--no-fork"])
        .arg(pod_dir.join("lock"))
        .args(["sh", "-c", "echo locked && exec sleep 60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flock(1) from util-linux");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("holder output");
    assert_eq!(line.trim(), "locked", "the holder took the pod's lock");
    holder
}

fn env_of(manifest: &Value, app: usize) -> Vec<(String, String)> {
    manifest["apps"][app]["app"]["environment"]
        .as_array()
        .expect("environment")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").into(),
                e["value"].as_str().expect("value").into(),
            )
        })
        .collect()
}

#[test]
fn prepare_two_apps_with_per_app_flags_then_inspect_and_remove() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let uuid_file = dir.join("uuid");
    let busybox = fixtures.oci_reference("busybox");
    let layers = fixtures.oci_reference("layers");
    let uuid = ok(
        dir,
        &[
            "prepare",
            "--set-env",
            "SHARED=pod",
            "--set-env",
            "PATH=/pod/bin",
            "--hostname",
            "web1",
            "--uuid-file-save",
            uuid_file.to_str().expect("utf8"),
            &busybox,
            "--exec",
            "/bin/echo",
            "--environment",
            "PATH=/app/bin",
            "--user",
            "app",
            "--",
            "hello",
            "there",
            "---",
            &layers,
            "--name",
            "second",
            "--working-dir",
            "/tmp",
            "--readonly-rootfs",
            "--",
            "echo from args",
        ],
    )
    .trim()
    .to_string();
    assert_eq!(
        std::fs::read_to_string(&uuid_file)
            .expect("uuid file")
            .trim(),
        uuid
    );

    let manifest = json(dir, &["cat-manifest", &uuid[..8]]);
    assert_eq!(manifest["acKind"], "PodManifest");
    let first = &manifest["apps"][0];
    assert_eq!(first["name"], "busybox");
    assert_eq!(
        first["app"]["exec"],
        serde_json::json!(["/bin/echo", "hello", "there"])
    );
    assert_eq!(first["app"]["user"], "app");
    // Precedence: image < --set-env < --environment.
    let env = env_of(&manifest, 0);
    assert!(env.contains(&("PATH".into(), "/app/bin".into())), "{env:?}");
    assert!(env.contains(&("SHARED".into(), "pod".into())), "{env:?}");
    let second = &manifest["apps"][1];
    assert_eq!(second["name"], "second");
    // `--` args replace the image's cmd and keep its entrypoint (/bin/sh -c).
    assert_eq!(
        second["app"]["exec"],
        serde_json::json!(["/bin/sh", "-c", "echo from args"])
    );
    assert_eq!(second["app"]["user"], "app", "image default user");
    assert_eq!(second["app"]["workingDirectory"], "/tmp");
    assert_eq!(second["readOnlyRootFS"], true);
    assert!(env_of(&manifest, 1).contains(&("PATH".into(), "/pod/bin".into())));
    assert!(manifest["annotations"].to_string().contains("web1"));

    let pods = json(dir, &["list", "--format", "json"]);
    assert_eq!(pods.as_array().expect("array").len(), 1);
    assert_eq!(pods[0]["uuid"], uuid.as_str());
    assert_eq!(pods[0]["state"], "prepared");
    assert_eq!(pods[0]["hostname"], "web1");
    let table = ok(dir, &["list", "--no-legend"]);
    assert_eq!(table.lines().count(), 2, "one row per app: {table}");
    assert!(!table.contains("UUID"));
    // rkt's --fields, in the order given, and --full.
    let table = ok(dir, &["list", "--fields=state,uuid", "--full"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["STATE", "UUID"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["prepared", uuid.as_str()],
        "{table}"
    );
    let images = ok(
        dir,
        &["image", "list", "--fields=id,name", "--full", "--no-legend"],
    );
    let image_id = pods[0]["apps"][0]["image_id"].as_str().expect("image id");
    assert!(
        images.lines().any(|line| line.starts_with(image_id)) && !images.contains("ago"),
        "{image_id} in {images}"
    );
    let bad = podvm(dir, &["image", "list", "--fields=id,colour"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown field \"colour\""),
        "{bad:?}"
    );

    let status = ok(dir, &["status", &uuid]);
    assert!(status.contains("state=prepared"), "{status}");
    assert_eq!(
        json(dir, &["status", "--format", "json", &uuid])["state"],
        "prepared"
    );

    ok(dir, &["rm", &uuid[..6]]);
    assert_eq!(
        json(dir, &["list", "--format", "json"]),
        serde_json::json!([])
    );
}

#[test]
fn failed_prepare_leaves_nothing_and_names_the_problem() {
    if registry_support::skip() {
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path();
    let missing = format!("oci:{}:nope", dir.join("no-layout").display());
    let out = podvm(dir, &["prepare", &missing]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-layout"),
        "{out:?}"
    );
    assert_eq!(
        json(dir, &["list", "--format", "json"]),
        serde_json::json!([])
    );
    for state in ["embryo", "prepare", "prepared", "garbage"] {
        let entries = std::fs::read_dir(dir.join("pods").join(state))
            .expect("state dir")
            .count();
        assert_eq!(entries, 0, "{state} must be empty");
    }

    let fixtures = Fixtures::get();
    let out = podvm(
        dir,
        &[
            "prepare",
            &fixtures.oci_reference("busybox"),
            "--bogus-flag",
        ],
    );
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("app 1") && err.contains("--bogus-flag"),
        "{err}"
    );
}

#[test]
fn gc_expires_prepared_pods_and_cleans_aborted_prepares() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let uuid = prepare_busybox(dir, fixtures);
    // A prepare whose podvm died: a pod directory in prepare/ that nobody locks.
    let aborted = dir.join("pods/prepare/00000000-dead-4000-8000-000000000000");
    std::fs::create_dir_all(&aborted).expect("aborted pod");
    let states: Vec<Value> = json(dir, &["list", "--format", "json"])
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["state"].clone())
        .collect();
    assert!(
        states.contains(&Value::from("aborted-prepare")),
        "{states:?}"
    );

    ok(dir, &["gc"]);
    let pods = json(dir, &["list", "--format", "json"]);
    assert_eq!(
        pods.as_array().expect("array").len(),
        1,
        "aborted prepare removed, fresh prepared kept: {pods}"
    );
    ok(dir, &["gc", "--expire-prepared", "0s"]);
    assert_eq!(
        json(dir, &["list", "--format", "json"]),
        serde_json::json!([]),
        "{uuid} expired"
    );
}

#[test]
fn status_wait_returns_when_the_pod_ends_and_explains_a_dead_podvm() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let uuid = prepare_busybox(dir, fixtures);
    // A limited wait on a pod that stays prepared gives up and reports it as it is.
    let limited = json(dir, &["status", "--wait=300ms", "--format", "json", &uuid]);
    assert_eq!(limited["state"], "prepared", "{limited}");

    // What a podvm killed with -9 while running leaves: the pod in run/, started with a pid,
    // nobody holding its lock. Move it there while `status --wait` (no limit) waits.
    let prepared = dir.join("pods/prepared").join(&uuid);
    let running = dir.join("pods/run").join(&uuid);
    record_start(&prepared, 4_000_000);
    let mover = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        std::fs::create_dir_all(running.parent().expect("parent")).expect("run dir");
        std::fs::rename(prepared, running).expect("move pod");
    });
    let waited = json(dir, &["status", "--wait", "--format", "json", &uuid]);
    mover.join().expect("mover");
    assert_eq!(waited["state"], "exited", "{waited}");
    let reason = waited["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("4000000") && reason.contains("died"),
        "{waited}"
    );
}

/// A running pod whose supervisor serves no control socket (an older podvm; here a stand-in
/// holding the pod's lock): `status` reads the pod's files (no live figures) and a graceful
/// `stop` falls back to SIGTERM through a pidfd, after the same checks as `--force`.
#[test]
fn a_pod_without_a_control_socket_is_shown_from_its_files_and_stopped_by_signal() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let uuid = prepare_busybox(dir, fixtures);
    let running = dir.join("pods/run").join(&uuid);
    std::fs::rename(dir.join("pods/prepared").join(&uuid), &running).expect("move pod");
    let mut holder = hold_pod(&running);
    record_start_with(&running, holder.id(), true);
    let status = ok(dir, &["status", &uuid]);
    assert!(
        status.contains("state=running") && status.contains(&format!("pid={}", holder.id())),
        "{status}"
    );
    assert!(
        !status.contains("uptime=") && !status.contains("vmm-pid="),
        "no supervisor answered: {status}"
    );
    let json = json(dir, &["status", "--format", "json", &uuid]);
    assert!(json.get("uptime_secs").is_none(), "{json}");
    ok(dir, &["stop", &uuid]);
    let ended = holder.wait().expect("holder ended");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&ended),
        Some(libc::SIGTERM),
        "the stand-in got SIGTERM: {ended:?}"
    );
}

#[test]
fn stop_refuses_pods_that_do_not_run_and_force_kills_the_pods_podvm() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let uuid = prepare_busybox(dir, fixtures);
    let refused = podvm(dir, &["stop", &uuid]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("prepared") && stderr.contains("only running"),
        "{stderr}"
    );

    // Stand-in for the pod's `podvm run`: a process holding the pod's lock whose pid the pod
    // records (the VM itself is tested in the nested E2E tests). This host has no pod cgroups,
    // so the pod records that it runs unlimited (`--allow-unlimited`).
    let prepared = dir.join("pods/prepared").join(&uuid);
    let running = dir.join("pods/run").join(&uuid);
    std::fs::rename(&prepared, &running).expect("move pod");
    let mut holder = hold_pod(&running);
    record_start_with(&running, holder.id(), true);
    assert_eq!(
        json(dir, &["status", "--format", "json", &uuid])["state"],
        "running"
    );

    // Attack: the pod's podvm died and its pid went to another process; stop must not signal
    // it. Here: a pid that does not hold the pod's lock.
    let mut bystander = Command::new("sleep").arg("60").spawn().expect("sleep");
    record_start_with(&running, bystander.id(), true);
    let refused = podvm(dir, &["stop", "--force", &uuid]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "process {} is not the pod's podvm",
            bystander.id()
        )) && stderr.contains("does not hold the pod's lock")
            && stderr.contains("nothing was signalled"),
        "{stderr}"
    );
    // ... and a pid holding the lock but outside the pod's cgroup, for a pod with limits.
    record_start_with(&running, holder.id(), false);
    let refused = podvm(dir, &["stop", "--force", &uuid]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not in the pod's"), "{stderr}");
    assert!(
        bystander.try_wait().expect("bystander").is_none()
            && holder.try_wait().expect("holder").is_none(),
        "neither process was signalled"
    );
    bystander.kill().expect("kill the bystander");
    bystander.wait().expect("reap the bystander");

    record_start_with(&running, holder.id(), true);
    ok(dir, &["stop", "--force", &uuid]);
    let killed = holder.wait().expect("holder ended");
    assert!(!killed.success(), "the holder was killed: {killed:?}");
    let after = json(dir, &["status", "--format", "json", &uuid]);
    assert_eq!(after["state"], "exited", "{after}");
    assert!(
        after["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("--force"),
        "{after}"
    );
}

#[test]
fn app_limits_become_isolators_and_bad_ones_are_named() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let busybox = fixtures.oci_reference("busybox");
    let uuid = ok(
        dir,
        &["prepare", &busybox, "--memory", "300Mi", "--cpu", "500m"],
    )
    .trim()
    .to_string();
    let manifest = json(dir, &["cat-manifest", &uuid]);
    assert_eq!(
        manifest["apps"][0]["app"]["isolators"],
        serde_json::json!([
            {"name": "resource/memory", "value": {"limit": "300Mi"}},
            {"name": "resource/cpu", "value": {"limit": "500m"}},
        ]),
        "{manifest}"
    );
    let bad = podvm(dir, &["prepare", &busybox, "--memory", "lots"]);
    assert_eq!(bad.status.code(), Some(125));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("--memory \"lots\"") && err.contains("512M"),
        "{err}"
    );
}

#[test]
fn env_file_and_inherited_env_take_their_place_in_the_precedence() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let env_file = dir.join("env");
    std::fs::write(
        &env_file,
        "# comment\n\n; an rkt-style comment=not a variable\nFROM_FILE=file\nBOTH=file\n",
    )
    .expect("env file");
    let out = Command::new(env!("CARGO_BIN_EXE_podvm"))
        .arg("--dir")
        .arg(dir)
        .args(["prepare", "--inherit-env", "--set-env-file"])
        .arg(&env_file)
        .args(["--set-env", "BOTH=flag", &fixtures.oci_reference("busybox")])
        .env("PODVM_TEST_INHERITED", "host")
        .env("PATH", "/host/path:/usr/bin:/bin")
        .output()
        .expect("run podvm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let env = env_of(&json(dir, &["cat-manifest", &uuid]), 0);
    let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(get("PODVM_TEST_INHERITED"), Some("host"), "{env:?}");
    assert_eq!(get("FROM_FILE"), Some("file"), "{env:?}");
    assert!(
        env.iter().all(|(name, _)| !name.starts_with(';')),
        "a `;` line is a comment: {env:?}"
    );
    assert_eq!(
        get("BOTH"),
        Some("flag"),
        "--set-env wins over the file: {env:?}"
    );
    assert_ne!(
        get("PATH"),
        Some("/host/path:/usr/bin:/bin"),
        "the image's PATH wins: {env:?}"
    );
}

#[test]
fn volumes_and_mounts_land_in_the_manifest_and_bad_ones_are_named() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let image = fixtures.oci_reference("busybox");
    let source = dir.join("shared");
    std::fs::create_dir(&source).expect("mkdir");
    let host_volume = format!("data,kind=host,source={},readOnly=true", source.display());
    let uuid = ok(
        dir,
        &[
            "prepare",
            "--volume",
            &host_volume,
            "--volume",
            "scratch,kind=empty",
            &image,
            "--mount",
            "volume=data,target=/data",
            "--mount",
            "volume=scratch,target=/tmp/s",
        ],
    );
    let manifest = json(dir, &["cat-manifest", uuid.trim()]);
    assert_eq!(
        manifest["volumes"],
        serde_json::json!([
            {"name": "data", "kind": "host", "source": source, "readOnly": true},
            {"name": "scratch", "kind": "empty", "readOnly": false}
        ]),
        "{manifest}"
    );
    assert_eq!(
        manifest["apps"][0]["mounts"],
        serde_json::json!([
            {"volume": "data", "path": "/data"},
            {"volume": "scratch", "path": "/tmp/s"}
        ]),
        "{manifest}"
    );

    for (args, expected) in [
        (
            vec!["prepare", &image, "--mount", "volume=nope,target=/x"],
            "no --volume declares",
        ),
        (
            vec![
                "prepare",
                "--volume",
                "h,kind=host,source=/nonexistent/podvm-volume",
                &image,
            ],
            "not a directory",
        ),
        (
            vec!["prepare", "--volume", "v,kind=nfs", &image],
            "kind=nfs",
        ),
    ] {
        let out = podvm(dir, &args);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn commands_on_a_pod_another_process_holds_report_busy_and_change_nothing() {
    let Some((dir, fixtures)) = setup() else {
        return;
    };
    let uuid = prepare_busybox(dir.path(), fixtures);
    let pod_dir = dir.path().join("pods/prepared").join(&uuid);
    // A second podvm holding the pod is a process with the flock of the pod's lock file; it is
    // held before the first probe (a probe racing the holder could remove the pod).
    let mut holder = hold_pod(&pod_dir);
    let probe = podvm(dir.path(), &["rm", &uuid]);
    let stderr = String::from_utf8_lossy(&probe.stderr);
    assert!(!probe.status.success(), "{stderr}");
    assert!(stderr.contains("is busy"), "{stderr}");
    let run = podvm(dir.path(), &["run-prepared", &uuid]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("pod {uuid} is busy")),
        "names the pod and the problem: {stderr}"
    );
    // Reads still work, and nothing moved.
    assert!(ok(dir.path(), &["status", &uuid]).contains("state=prepared"));
    assert!(pod_dir.is_dir(), "the held pod stays where it was");

    holder.kill().expect("kill the holder");
    holder.wait().expect("reap the holder");
    ok(dir.path(), &["rm", &uuid]);
    assert!(!pod_dir.exists(), "rm works once the holder is gone");
}

/// Runs `script` (sh, with `args` as $1...) as the unprivileged user nobody (65534).
fn as_nobody(script: &str, args: &[std::ffi::OsString]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(script)
        .arg("sh")
        .args(args)
        .output()
        .expect("setpriv from util-linux")
}

/// Every path under `root` (itself included), found as root.
fn every_path(root: &Path) -> Vec<std::path::PathBuf> {
    let mut paths = vec![root.to_path_buf()];
    let mut next = 0;
    while next < paths.len() {
        let path = paths[next].clone();
        next += 1;
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir());
        if is_dir {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                paths.push(entry.expect("entry").path());
            }
        }
    }
    paths
}

/// Whether `path` is inside a tree the guest sees (an image's rendered rootfs, a pod's app
/// rootfs or volume), where the image's own modes are kept.
fn in_guest_tree(data: &Path, path: &Path) -> bool {
    let relative = path.strip_prefix(data).expect("under the data dir");
    let parts: Vec<_> = relative.iter().map(|p| p.to_string_lossy()).collect();
    match parts.as_slice() {
        [images, trees, _, _, ..] if images == "images" && trees == "trees" => true,
        [pods, _, _, sub, ..] if pods == "pods" => {
            ["appsinfo", "stage1", "volumes"].contains(&sub.as_ref()) && parts.len() > 5
        }
        _ => false,
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn other_users_can_neither_read_list_nor_lock_anything_under_the_data_dir() {
    let Some((base, fixtures)) = setup() else {
        return;
    };
    if !running_as_root() {
        eprintln!("skipping: needs root (the data dir is root's, probed as user nobody)");
        return;
    }
    // A traversable parent, so that only podvm's own modes protect the data dir.
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let data = base.path().join("data");
    let uuid = prepare_busybox(&data, fixtures);
    let pod_dir = data.join("pods/prepared").join(&uuid);
    // What `run` leaves in the pod (0700 logs dir, 0600 log), to be read.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(pod_dir.join("logs"))
        .expect("logs dir");
    std::os::unix::fs::OpenOptionsExt::mode(&mut std::fs::OpenOptions::new(), 0o600)
        .write(true)
        .create_new(true)
        .open(pod_dir.join("logs/busybox.log"))
        .and_then(|mut log| std::io::Write::write_all(&mut log, b"secret output\n"))
        .expect("log");
    let manifest = json(&data, &["cat-manifest", &uuid]);
    let image = manifest["apps"][0]["image"]["id"]
        .as_str()
        .expect("image id")
        .to_string();

    // Host side: everything podvm made is root's alone (outside the trees the guest sees).
    let paths = every_path(&data);
    for path in &paths {
        let meta = std::fs::symlink_metadata(path).expect("stat");
        if in_guest_tree(&data, path) || meta.file_type().is_symlink() {
            continue;
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        assert_eq!(meta_uid(&meta), 0, "{} is root's", path.display());
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }

    // Attack: a local user reads the pods' manifests (their env holds secrets) and logs, or
    // takes a flock on a pod's directory or files to make it look busy. Every path under the
    // data dir, and the data dir's parent as the probe's control (that one it may lock).
    let mut probed: Vec<std::ffi::OsString> = paths.iter().map(|p| p.clone().into()).collect();
    probed.push(base.path().into());
    let probe = as_nobody(
        "for p in \"$@\"; do \
           if [ -d \"$p\" ]; then ls -A \"$p\" >/dev/null 2>&1 && echo \"listed $p\"; \
           else cat \"$p\" >/dev/null 2>&1 && echo \"read $p\"; fi; \
           flock -n -x \"$p\" true 2>/dev/null && echo \"locked $p\"; \
         done; true",
        &probed,
    );
    assert!(probe.status.success(), "{probe:?}");
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout).trim(),
        format!(
            "listed {}\nlocked {}",
            base.path().display(),
            base.path().display()
        ),
        "nobody could only list and lock the data dir's parent"
    );

    // podvm itself, run by that user on root's data dir, says what is wrong.
    for args in [
        vec!["status", uuid.as_str()],
        vec!["logs", uuid.as_str()],
        vec!["cat-manifest", uuid.as_str()],
        vec!["list"],
        vec!["image", "cat-manifest", image.as_str()],
    ] {
        let mut command = vec![
            std::ffi::OsString::from(env!("CARGO_BIN_EXE_podvm")),
            "--dir".into(),
            data.clone().into(),
        ];
        command.extend(args.iter().map(std::ffi::OsString::from));
        let out = as_nobody("exec \"$@\"", &command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(
            stderr.contains("permission denied") && stderr.contains("run podvm as that user"),
            "{args:?}: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("secret"),
            "{args:?}"
        );
    }

    // Root's pod is unaffected: not busy, removable.
    ok(&data, &["rm", &uuid]);
    assert!(!pod_dir.exists());
}

fn meta_uid(meta: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::MetadataExt::uid(meta)
}

#[test]
fn a_data_dir_left_readable_by_an_older_podvm_is_made_private_when_opened() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let uuid = prepare_busybox(dir, fixtures);
    // What an older podvm left: 0755 directories.
    let loose = [
        dir.to_path_buf(),
        dir.join("pods"),
        dir.join("pods/prepared"),
        dir.join("images"),
        dir.join("images/blobs/sha256"),
    ];
    for path in &loose {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("loosen");
    }
    ok(dir, &["list"]);
    ok(dir, &["image", "list"]);
    for path in &loose {
        let meta = std::fs::metadata(path).expect("stat");
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        assert_eq!(mode & 0o7777, 0o700, "{} tightened", path.display());
    }
    ok(dir, &["rm", &uuid]);
}

#[test]
fn a_pod_that_cannot_get_its_cgroup_limits_does_not_start() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!(
            "skipping: this host has cgroup v2 at /sys/fs/cgroup, so the pod would get its \
             limits (the nested E2E tests run pods there)"
        );
        return;
    }
    let dir = data.path();
    // Attack: a pod that would run without memory, CPU or task limits can take the host.
    let out = podvm(
        dir,
        &[
            "run",
            "--uuid-file-save",
            &dir.join("uuid").display().to_string(),
            &fixtures.oci_reference("busybox"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    let uuid = std::fs::read_to_string(dir.join("uuid")).expect("uuid file");
    assert!(
        stderr.contains(&format!("pod {} did not start", uuid.trim()))
            && stderr.contains("cgroup limits")
            && stderr.contains("--allow-unlimited"),
        "names the pod, the problem and the way out: {stderr}"
    );
    assert_eq!(
        json(dir, &["list", "--format", "json"]),
        serde_json::json!([]),
        "the pod that did not start is not left behind"
    );
}

#[test]
fn a_pod_manifest_describes_the_pod_and_app_flags_beside_it_are_refused() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let image = fixtures.oci_reference("busybox");
    let manifest = serde_json::json!({
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {"name": "first", "image": {"name": image},
             "app": {"exec": ["/bin/echo", "from-first"], "user": "0", "group": "0",
                     "environment": [{"name": "FROM", "value": "manifest"}],
                     "isolators": [{"name": "os/linux/capabilities-retain-set",
                                    "value": {"set": ["CAP_NET_ADMIN"]}}],
                     "supplementaryGIDs": [10]},
             "mounts": [{"volume": "work", "path": "/work"}]},
            {"name": "second", "image": {"name": image}, "readOnlyRootFS": true,
             "app": {"exec": ["/bin/echo", "from-second"]}}
        ],
        "volumes": [{"name": "work", "kind": "empty"}],
        "annotations": [{"name": "team", "value": "ci"}]
    });
    let path = dir.join("pod.json");
    std::fs::write(&path, manifest.to_string()).expect("manifest");
    let path = path.to_str().expect("utf-8");
    let uuid = ok(dir, &["prepare", "--pod-manifest", path])
        .trim()
        .to_string();
    let written = json(dir, &["cat-manifest", &uuid]);
    let apps = written["apps"].as_array().expect("apps");
    assert_eq!(apps.len(), 2, "{written}");
    assert_eq!(apps[0]["name"], "first");
    assert_eq!(
        apps[0]["app"]["exec"],
        serde_json::json!(["/bin/echo", "from-first"])
    );
    assert!(env_of(&written, 0).contains(&("FROM".into(), "manifest".into())));
    assert_eq!(apps[0]["mounts"][0]["path"], "/work");
    assert!(
        apps[0]["app"]["isolators"]
            .to_string()
            .contains("CAP_NET_ADMIN"),
        "the manifest's isolators reach the pod: {written}"
    );
    assert_eq!(apps[1]["name"], "second");
    assert_eq!(apps[1]["readOnlyRootFS"], true);
    assert_eq!(written["volumes"][0]["name"], "work");
    assert!(
        written["annotations"].to_string().contains("\"team\""),
        "{written}"
    );

    // As rkt: app flags and images come from the manifest alone.
    let both = podvm(
        dir,
        &[
            "prepare",
            "--pod-manifest",
            path,
            &image,
            "--exec",
            "/bin/true",
        ],
    );
    let err = String::from_utf8_lossy(&both.stderr);
    assert!(
        !both.status.success() && err.contains("conflicting flags") && err.contains("IMAGE"),
        "{err}"
    );
    std::fs::write(dir.join("bad.json"), "{\"acKind\": \"PodManifest\"").expect("bad");
    let bad = podvm(
        dir,
        &[
            "prepare",
            "--pod-manifest",
            &format!("{}/bad.json", dir.display()),
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("is not an appc pod manifest"), "{err}");
}

#[test]
fn cp_puts_files_into_a_prepared_pods_app_and_takes_them_out_again() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let uuid = prepare_busybox(dir, fixtures);
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).expect("src");
    std::fs::write(src.join("sub/file"), "from-the-host").expect("file");
    let into = format!("{}:/work", &uuid[..8]);
    ok(dir, &["cp", src.to_str().expect("utf-8"), &into]);
    let out = dir.join("out");
    ok(dir, &["cp", &into, out.to_str().expect("utf-8")]);
    assert_eq!(
        std::fs::read_to_string(out.join("sub/file")).expect("copied back"),
        "from-the-host"
    );
    // The app's tree was mounted for the copy only.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&uuid), "{mounts}");
    let both = podvm(dir, &["cp", "a", "b"]);
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("exactly one of SOURCE and DEST"),
        "{both:?}"
    );
}

#[test]
fn image_build_is_reproducible_and_lands_in_the_store_by_its_name() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path();
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("bin")).expect("tree");
    std::fs::write(tree.join("bin/job"), "#!/bin/sh\necho built\n").expect("job");
    let spec = dir.join("spec.json");
    std::fs::write(
        &spec,
        r#"{"entrypoint":["/bin/job"],"env":["MODE=ci"],"labels":{"team":"ci"},"ports":["8080/tcp"]}"#,
    )
    .expect("spec");
    let build = |tag: &str| {
        let out = ok(
            dir,
            &[
                "image",
                "build",
                "--tag",
                tag,
                "--spec",
                spec.to_str().expect("utf-8"),
                tree.to_str().expect("utf-8"),
            ],
        );
        out.split_whitespace().nth(1).expect("digest").to_string()
    };
    let first = build("localhost/job:1");
    // Newer times on the same files: the same image.
    std::fs::write(tree.join("bin/job"), "#!/bin/sh\necho built\n").expect("job");
    let second = build("localhost/job:2");
    assert_eq!(first, second, "the same tree and spec give the same digest");
    let config = json(dir, &["image", "cat-config", "docker://localhost/job:1"]);
    assert!(config.to_string().contains("/bin/job"), "{config}");
    let images = json(dir, &["image", "list", "--format", "json"]);
    assert!(images.to_string().contains("localhost/job:1"), "{images}");
}

#[test]
fn gc_with_a_zero_grace_period_removes_an_exited_pod_in_one_pass() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let uuid = prepare_busybox(dir, fixtures);
    // What a run leaves: the pod in run/, started, nobody holding its lock: exited.
    let prepared = dir.join("pods/prepared").join(&uuid);
    record_start(&prepared, 4_000_000);
    std::fs::create_dir_all(dir.join("pods/run")).expect("run dir");
    std::fs::rename(&prepared, dir.join("pods/run").join(&uuid)).expect("move pod");
    assert_eq!(
        json(dir, &["status", "--format", "json", &uuid])["state"],
        "exited"
    );
    // As rkt: marked as garbage and, its grace period over at once, deleted in the same pass.
    let out = podvm(dir, &["gc", "--grace-period", "0s"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !said.contains("podvm: gc:"),
        "{said}"
    );
    assert_eq!(
        json(dir, &["list", "--format", "json"]),
        serde_json::json!([]),
        "{said}"
    );
}

#[test]
fn pod_level_user_annotations_and_labels_show_in_cat_manifest_and_status() {
    let Some((data, fixtures)) = setup() else {
        return;
    };
    let dir = data.path();
    let image = fixtures.oci_reference("busybox");
    let uuid = ok(
        dir,
        &[
            "prepare",
            "--user-annotation",
            "team=ci",
            "--user-label",
            "tier=web",
            &image,
            "--user-label",
            "app=only-the-app",
        ],
    )
    .trim()
    .to_string();
    let manifest = json(dir, &["cat-manifest", &uuid]);
    assert_eq!(manifest["userAnnotations"]["team"], "ci", "{manifest}");
    assert_eq!(manifest["userLabels"]["tier"], "web", "{manifest}");
    assert_eq!(
        manifest["apps"][0]["app"]["userLabels"]["app"], "only-the-app",
        "{manifest}"
    );
    assert!(
        manifest["userLabels"].get("app").is_none(),
        "the app's label stays the app's"
    );
    let status = ok(dir, &["status", &uuid]);
    assert!(
        status.contains("user-annotations=team=ci\n") && status.contains("user-labels=tier=web\n"),
        "{status}"
    );
    let status = json(dir, &["status", "--format", "json", &uuid]);
    assert_eq!(status["user_labels"]["tier"], "web", "{status}");
}
