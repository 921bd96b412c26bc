//! Test support for the image tests: fixture images and throwaway local registries.
//!
//! Include it from an integration test with
//! `#[path = "registry_support/mod.rs"] mod registry_support;` and start each test with
//! `if registry_support::skip() { return; }`.
//!
//! * [`Fixtures::get`] builds (or reuses from `${PODVM_CACHE_DIR:-~/.cache/podvm}/fixtures`) the
//!   OCI layouts made by `tests/fixtures/build-images.sh`, once per test process. The cached
//!   layouts are shared: treat them as read-only.
//! * [`Registry::start`] runs Debian's `docker-registry` on 127.0.0.1 with a free port (and, with
//!   `auth`, a token server: user [`USER`] / password [`PASSWORD`]); it is stopped and its
//!   directory removed on drop.
//!
//! Everything comes from Debian packages (installed on demand when running as root); see
//! `tests/fixtures/README.md`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tempfile::TempDir;

/// User name accepted by the token server of an auth registry (pull and push on everything).
pub const USER: &str = "podvm";
/// Password of [`USER`].
pub const PASSWORD: &str = "secret";
/// `service` the auth registry announces in its `WWW-Authenticate: Bearer` challenge.
pub const TOKEN_SERVICE: &str = "podvm-test-registry";
/// `iss` of the tokens the token server issues.
pub const TOKEN_ISSUER: &str = "podvm-test-issuer";
/// Repositories under this prefix may be pulled anonymously from an auth registry (via a token).
pub const PUBLIC_PREFIX: &str = "public/";

/// How often [`Registry::push_with`] tries `skopeo copy` before failing the test.
const PUSH_ATTEMPTS: u32 = 3;

/// Commands the fixtures need, with the Debian package that provides each.
pub const REQUIRED_TOOLS: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
    ("busybox", "busybox-static"),
    ("python3", "python3"),
    ("openssl", "openssl"),
    ("zstd", "zstd"),
    ("gzip", "gzip"),
    ("flock", "util-linux"),
];

/// `tests/fixtures` of this checkout.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(cmd).is_file()))
        .unwrap_or(false)
}

fn missing_tools() -> Vec<String> {
    REQUIRED_TOOLS
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(cmd, pkg)| format!("{cmd} (Debian package {pkg})"))
        .collect()
}

fn try_install() {
    // Installs the missing packages with apt-get when possible; failures show in the recheck.
    let _ = Command::new("bash")
        .arg(fixtures_dir().join("ensure-deps.sh"))
        .status();
}

/// Why the registry tests cannot run here, or `None` when they can.
///
/// Missing packages are installed first (as root). When tools are still missing and the
/// environment variable `CI` is `true`, this panics instead: CI must not skip these tests.
pub fn skip_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    let reason = REASON.get_or_init(|| {
        if missing_tools().is_empty() {
            return None;
        }
        try_install();
        let missing = missing_tools();
        (!missing.is_empty()).then(|| {
            format!(
                "registry fixtures need {}: install them with apt-get (tests/fixtures/README.md)",
                missing.join(", ")
            )
        })
    });
    if let Some(reason) = reason {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and the registry tests cannot run: {reason}");
        }
    }
    reason.clone()
}

/// Prints the skip reason and returns true when the registry tests cannot run here.
pub fn skip() -> bool {
    match skip_reason() {
        Some(reason) => {
            eprintln!("skipped: {reason}");
            true
        }
        None => false,
    }
}

/// Runs a command, panicking with its output when it cannot run or fails.
pub fn run_checked(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The fixture image set (OCI layouts, archives and `fixtures.json`).
#[derive(Debug)]
pub struct Fixtures {
    dir: PathBuf,
    info: serde_json::Value,
}

impl Fixtures {
    /// Builds or reuses the fixture set, once per process; panics with the build log on failure.
    pub fn get() -> &'static Fixtures {
        static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
        FIXTURES.get_or_init(|| {
            let out = run_checked(
                Command::new("bash")
                    .arg(fixtures_dir().join("build-images.sh"))
                    .arg("--print-dir"),
            );
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let json = std::fs::read_to_string(dir.join("fixtures.json"))
                .unwrap_or_else(|e| panic!("cannot read {}/fixtures.json: {e}", dir.display()));
            let info = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("bad {}/fixtures.json: {e}", dir.display()));
            Fixtures { dir, info }
        })
    }

    /// Directory holding every fixture (read-only; shared between test runs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names of all fixture images, sorted.
    pub fn names(&self) -> Vec<String> {
        self.info
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Names of the malicious fixtures (`evil-*`), sorted.
    pub fn malicious(&self) -> Vec<String> {
        self.names()
            .into_iter()
            .filter(|n| n.starts_with("evil-"))
            .collect()
    }

    fn entry(&self, name: &str) -> &serde_json::Value {
        self.info.get(name).unwrap_or_else(|| {
            panic!(
                "no fixture image {name:?}; have: {}",
                self.names().join(", ")
            )
        })
    }

    /// OCI image layout of fixture `name` (its tag is `latest`).
    pub fn layout(&self, name: &str) -> PathBuf {
        self.entry(name);
        self.dir.join(name)
    }

    /// `oci:LAYOUT:latest` reference of fixture `name`.
    pub fn oci_reference(&self, name: &str) -> String {
        format!("oci:{}:latest", self.layout(name).display())
    }

    /// Digest of the manifest (or index) tagged `latest` in fixture `name`'s layout.
    pub fn digest(&self, name: &str) -> String {
        self.entry(name)["digest"]
            .as_str()
            .unwrap_or_else(|| panic!("fixtures.json: {name} has no digest"))
            .to_string()
    }

    /// What fetching `name` should do: `"ok"`, `"reject"` or `"contained"` (see the README).
    pub fn expectation(&self, name: &str) -> String {
        self.entry(name)["expect"]
            .as_str()
            .unwrap_or("ok")
            .to_string()
    }

    /// One-line description of fixture `name`.
    pub fn note(&self, name: &str) -> String {
        self.entry(name)["note"].as_str().unwrap_or("").to_string()
    }

    /// SHA-256 (hex) of `/big.bin`, the 64 MiB file of the `big` image.
    pub fn big_sha256(&self) -> String {
        std::fs::read_to_string(self.dir.join("big.sha256"))
            .unwrap_or_else(|e| panic!("cannot read {}/big.sha256: {e}", self.dir.display()))
            .trim()
            .to_string()
    }

    /// `docker save`-style archive of the busybox image (`busybox:latest`).
    pub fn docker_archive(&self) -> PathBuf {
        self.dir.join("busybox-docker-archive.tar")
    }

    /// OCI archive of the busybox image (tag `latest`).
    pub fn oci_archive(&self) -> PathBuf {
        self.dir.join("busybox-oci-archive.tar")
    }
}

/// A running `docker-registry` on 127.0.0.1, stopped and deleted on drop.
#[derive(Debug)]
pub struct Registry {
    dir: Option<TempDir>,
    port: u16,
    auth: bool,
    redirect_port: Option<u16>,
}

impl Registry {
    /// Starts a registry; with `auth`, token auth (see [`USER`], [`PASSWORD`], [`PUBLIC_PREFIX`]).
    pub fn start(auth: bool) -> Registry {
        Self::launch(if auth { "--auth" } else { "" })
    }

    /// Starts a registry without auth behind a read-only front that answers every blob GET/HEAD
    /// with `307` to a "blob storage" port (which honours `Range` and refuses requests carrying
    /// `Authorization`, like presigned S3 URLs). [`Registry::reference`] points at the front;
    /// pushes go to the registry itself. See [`Registry::redirect_log`].
    pub fn start_redirecting() -> Registry {
        Self::launch("--redirect")
    }

    fn launch(mode: &str) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("podvm-registry-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory for a registry: {e}"));
        let mut cmd = Command::new("bash");
        cmd.arg(fixtures_dir().join("registry.sh"))
            .arg("start")
            .arg(dir.path())
            .arg("--watch")
            .arg(std::process::id().to_string());
        if !mode.is_empty() {
            cmd.arg(mode);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        if !out.status.success() {
            stop_registry(dir.path());
            panic!(
                "{cmd:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let port = read_port(&dir.path().join("port"))
            .unwrap_or_else(|| panic!("registry.sh wrote no port in {}", dir.path().display()));
        let redirect_port = read_port(&dir.path().join("redirect-port"));
        assert_eq!(
            redirect_port.is_some(),
            mode == "--redirect",
            "registry.sh start {mode}: redirect-port file mismatch in {}",
            dir.path().display()
        );
        Registry {
            dir: Some(dir),
            port,
            auth: mode == "--auth",
            redirect_port,
        }
    }

    /// The registry's state directory (config.yml, storage/, registry.log, token.log, ...).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(TempDir::path)
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether this registry requires token auth.
    pub fn auth(&self) -> bool {
        self.auth
    }

    /// `127.0.0.1:PORT` clients should pull from: the redirecting front if there is one.
    pub fn pull_host(&self) -> String {
        format!("127.0.0.1:{}", self.redirect_port.unwrap_or(self.port))
    }

    /// `docker://HOST/NAME:latest` on [`Registry::pull_host`] (NAME may already carry `:tag`
    /// or `@digest`).
    pub fn reference(&self, name: &str) -> String {
        reference_on(&self.pull_host(), name)
    }

    fn push_reference(&self, name: &str) -> String {
        reference_on(&self.host(), name)
    }

    /// Requests the redirecting front handled (JSON lines, `kind`: `api`, `redirect` or `blob`,
    /// with `path`, `status`, `range`). Empty unless started with [`Registry::start_redirecting`].
    pub fn redirect_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir().join("redirect.log"))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Pushes fixture `name` as repository `name:latest`, byte for byte (the registry's
    /// manifest digest equals [`Fixtures::digest`]).
    pub fn push(&self, name: &str) {
        self.push_as(name, name);
    }

    /// Pushes fixture `name` as `repo` (`repo` may carry `:tag`; default tag `latest`), byte
    /// for byte.
    pub fn push_as(&self, name: &str, repo: &str) {
        self.push_with(name, repo, &["--preserve-digests"]);
    }

    /// Pushes fixture `name` as `repo` converted to Docker schema 2 manifests (a Docker
    /// manifest list for `multiarch`; not possible for `zstd`).
    pub fn push_docker(&self, name: &str, repo: &str) {
        self.push_with(name, repo, &["--format", "v2s2"]);
    }

    /// Pushes fixture `name` as `repo` with `skopeo copy --all`, extra skopeo arguments (e.g.
    /// `["--format", "v2s2"]` for Docker schema 2 manifests) and, on an auth registry, the
    /// test credentials.
    pub fn push_with(&self, name: &str, repo: &str, extra: &[&str]) {
        let src = Fixtures::get().oci_reference(name);
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        if self.auth {
            cmd.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        cmd.args(extra).arg(src).arg(self.push_reference(repo));
        // skopeo shares one blob-info cache (a lock file) between processes; a rare transient
        // failure there must not fail a test whose subject is not the push: retry, loudly.
        for attempt in 1..PUSH_ATTEMPTS {
            match cmd.output() {
                Ok(out) if out.status.success() => return,
                Ok(out) => eprintln!(
                    "warning: push attempt {attempt} failed ({cmd:?}): {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("warning: push attempt {attempt}: cannot run {cmd:?}: {e}"),
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        run_checked(&mut cmd);
    }

    /// Pushes fixture `name` as `repo` byte for byte (no recompression: keeps uncompressed
    /// layers uncompressed). Only for registries without auth.
    pub fn push_exact(&self, name: &str, repo: &str) {
        assert!(!self.auth, "push_exact does not speak token auth");
        let fixtures = Fixtures::get();
        let dest = self
            .push_reference(repo)
            .replacen("docker://", "http://", 1);
        run_checked(
            Command::new("python3")
                .arg(fixtures_dir().join("make_oci.py"))
                .arg("push")
                .arg(format!("{}:latest", fixtures.layout(name).display()))
                .arg(dest),
        );
    }

    /// Requests the token server answered so far (JSON lines: method, user, credentials,
    /// scopes, result, access). Empty for a registry without auth.
    pub fn token_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir().join("token.log"))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The registry's own log (startup, requests, errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("registry.log")).unwrap_or_default()
    }

    /// `~/.docker/config.json` contents holding the test credentials for this registry.
    pub fn docker_config_json(&self) -> String {
        let auth = base64(format!("{USER}:{PASSWORD}").as_bytes());
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{auth}\"}}}}}}",
            self.host()
        )
    }

    /// Stops the registry (and token server) and removes its directory.
    pub fn stop(&mut self) {
        if let Some(dir) = self.dir.take() {
            stop_registry(dir.path());
        }
    }
}

fn read_port(path: &Path) -> Option<u16> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn reference_on(host: &str, name: &str) -> String {
    if name.contains(':') || name.contains('@') {
        format!("docker://{host}/{name}")
    } else {
        format!("docker://{host}/{name}:latest")
    }
}

fn stop_registry(dir: &Path) {
    let status = Command::new("bash")
        .arg(fixtures_dir().join("registry.sh"))
        .arg("stop")
        .arg(dir)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!(
            "warning: registry.sh stop {} failed: {status:?}",
            dir.display()
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Standard base64 (with padding) of `data`.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every malicious fixture names what it tries to write `podvm-evil-<something>`.
pub const EVIL_MARKER_PREFIX: &str = "podvm-evil-";

/// Evidence that a malicious layer escaped: paths named `podvm-evil-*` found in `store` (outside
/// the `allowed` trees, e.g. the rendered rootfs of a "contained" fixture), directly in `/`,
/// `/tmp`, the temp dir or any ancestor of `store`, and files in `store` that are hard links
/// to the host's `/etc/passwd`. Empty when nothing escaped.
pub fn escaped_markers(store: &Path, allowed: &[&Path]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut tops: Vec<PathBuf> = vec!["/".into(), "/tmp".into(), std::env::temp_dir()];
    tops.extend(store.ancestors().skip(1).map(Path::to_path_buf));
    for top in tops {
        if let Ok(entries) = std::fs::read_dir(&top) {
            found.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| is_marker(p) && !allowed.iter().any(|a| p.starts_with(a))),
            );
        }
    }
    let passwd = std::fs::metadata("/etc/passwd").ok();
    walk(store, &mut |path, meta| {
        use std::os::unix::fs::MetadataExt;
        let hard_link = passwd
            .as_ref()
            .is_some_and(|p| p.dev() == meta.dev() && p.ino() == meta.ino());
        let marker = is_marker(path) && !allowed.iter().any(|a| path.starts_with(a));
        if hard_link || marker {
            found.push(path.to_path_buf());
        }
    });
    found.sort();
    found.dedup();
    found
}

fn is_marker(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(EVIL_MARKER_PREFIX))
}

/// Calls `f` for every entry under `dir` (not following symlinks).
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        f(&path, &meta);
        if meta.is_dir() {
            walk(&path, f);
        }
    }
}
