//! A real docker-registry serving TLS with a self-signed certificate and htpasswd (Basic) auth:
//! certificates are verified unless `--insecure-options=tls`; credentials come from a docker
//! `config.json` (`DOCKER_CONFIG`) or rkt's `auth.d/`, and wrong ones give a clear error.

#[path = "registry_support/mod.rs"]
mod registry_support;

#[path = "images_support/mod.rs"]
mod images_support;

#[path = "images_support/signing.rs"]
mod signing;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use images_support::*;
use registry_support::{base64, Registry};

const USER: &str = "basicuser";
const PASSWORD: &str = "basic-secret";

/// Whether `htpasswd` (apache2-utils) is there; installs it as root when missing.
fn have_htpasswd() -> bool {
    let found = || Command::new("htpasswd").arg("-h").output().is_ok();
    if !found() {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "apache2-utils"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    found()
}

/// A second docker-registry process over another registry's storage, with TLS and htpasswd.
struct TlsBasicRegistry {
    child: Child,
    port: u16,
}

impl TlsBasicRegistry {
    fn start(storage: &Path, dir: &Path) -> TlsBasicRegistry {
        let (cert, key) = signing::self_signed(dir);
        let htpasswd = dir.join("htpasswd");
        let out = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .expect("htpasswd runs");
        assert!(out.status.success(), "htpasswd failed");
        std::fs::write(&htpasswd, out.stdout).expect("write htpasswd");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:0\n  secret: podvm-tls-test\n  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: podvm-basic\n    path: {}\n",
                storage.display(),
                cert.display(),
                key.display(),
                htpasswd.display()
            ),
        )
        .expect("write config");
        let log = dir.join("registry.log");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.join("registry.err")).expect("log"))
            .spawn()
            .expect("docker-registry runs");
        for _ in 0..200 {
            let text = std::fs::read_to_string(&log).unwrap_or_default()
                + &std::fs::read_to_string(dir.join("registry.err")).unwrap_or_default();
            if let Some(port) = listening_port(&text) {
                return TlsBasicRegistry { child, port };
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("docker-registry exited ({st}):\n{text}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!(
            "docker-registry with TLS did not start; see {}",
            log.display()
        );
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn listening_port(log: &str) -> Option<u16> {
    let at = log.find("listening on 127.0.0.1:")? + "listening on 127.0.0.1:".len();
    let digits: String = log[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Drop for TlsBasicRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn docker_config(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let auth = base64(format!("{user}:{password}").as_bytes());
    std::fs::write(
        dir.join("config.json"),
        format!("{{\"auths\":{{\"{host}\":{{\"auth\":\"{auth}\"}}}}}}"),
    )
    .expect("write config.json");
    dir.to_path_buf()
}

fn fetch(
    store: &Path,
    docker_config: Option<&Path>,
    opts: &str,
    image: &str,
) -> std::process::Output {
    let mut cmd = podvm_cmd(store);
    if let Some(d) = docker_config {
        cmd.env("DOCKER_CONFIG", d);
    } else {
        // No credentials from the real home either.
        cmd.env("HOME", store);
    }
    cmd.args(["fetch", opts, image])
        .output()
        .expect("podvm runs")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn tls_registry_with_basic_auth() {
    if registry_support::skip() || signing::skip() {
        return;
    }
    if !have_htpasswd() {
        eprintln!("skipped: htpasswd (Debian package apache2-utils) is not installed");
        return;
    }
    let plain = Registry::start(false);
    plain.push_exact("busybox", "busybox");
    let t = tempfile::tempdir().expect("tempdir");
    let reg = TlsBasicRegistry::start(&plain.dir().join("storage"), t.path());
    let image = format!("docker://{}/busybox:latest", reg.host());
    let store = t.path().join("store");
    let good = docker_config(&t.path().join("good"), &reg.host(), USER, PASSWORD);
    let bad = docker_config(&t.path().join("bad"), &reg.host(), USER, "bad-pw-xyzzy");

    // Self-signed certificate: refused, with the way out named.
    let o = fetch(&store, Some(&good), "--insecure-options=image", &image);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&reg.host()) && e.contains("--insecure-options=tls"),
        "{e}"
    );

    // TLS accepted, but no credentials.
    let o = fetch(&store, None, "--insecure-options=image,tls", &image);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&reg.host()) && e.contains("no credentials"),
        "{e}"
    );

    // Wrong password.
    let o = fetch(&store, Some(&bad), "--insecure-options=image,tls", &image);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&reg.host()) && e.contains("refused the credentials") && e.contains(USER),
        "{e}"
    );
    assert!(
        !e.contains("bad-pw-xyzzy"),
        "the password must not be printed: {e}"
    );

    // Right credentials from config.json.
    let o = fetch(&store, Some(&good), "--insecure-options=image,tls", &image);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = image_id(&String::from_utf8_lossy(&o.stdout));

    // rkt's auth.d format works too (and takes precedence over config.json).
    let store2 = t.path().join("store2");
    std::fs::create_dir_all(store2.join("auth.d")).expect("auth.d");
    std::fs::write(
        store2.join("auth.d/reg.json"),
        format!(
            r#"{{"rktKind":"dockerAuth","rktVersion":"v1","registries":["{}"],"credentials":{{"user":"{USER}","password":"{PASSWORD}"}}}}"#,
            reg.host()
        ),
    )
    .expect("write auth.d");
    let o = fetch(&store2, Some(&bad), "--insecure-options=image,tls", &image);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image_id(&String::from_utf8_lossy(&o.stdout)), id);
}

/// `redirect_proxy.py` in one of its hostile modes, in front of a registry (killed on drop;
/// it also exits once this test process is gone).
struct Front {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    blob_port: u16,
}

impl Front {
    fn start(registry_port: u16, args: &[&str]) -> Front {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("python3")
            .arg(registry_support::fixtures_dir().join("redirect_proxy.py"))
            .arg("--dir")
            .arg(dir.path())
            .arg("--registry-port")
            .arg(registry_port.to_string())
            .arg("--watch")
            .arg(std::process::id().to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("proxy.err")).expect("log"))
            .spawn()
            .expect("python3 runs");
        let (port, blob_port) = wait_for_ports(
            &mut child,
            &[
                dir.path().join("redirect-port"),
                dir.path().join("blob-port"),
            ],
            &dir.path().join("proxy.err"),
        );
        Front {
            child,
            dir,
            port,
            blob_port,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The logged requests of one `kind` (`api`, `redirect`, `blob`).
    fn log(&self, kind: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("redirect.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json log line"))
            .filter(|v| v["kind"] == kind)
            .collect()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `child` has written every port file (or exited: panic with its stderr).
fn wait_for_ports(child: &mut Child, files: &[PathBuf], err: &Path) -> (u16, u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ports: Vec<u16> = files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
            .collect();
        if ports.len() == files.len() {
            return (ports[0], ports.get(1).copied().unwrap_or(0));
        }
        let text = std::fs::read_to_string(err).unwrap_or_default();
        if let Ok(Some(st)) = child.try_wait() {
            panic!("fixture server exited ({st}): {text}");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("fixture server wrote no port files {files:?} in 20 s: {text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A second `token_server.py` for an auth registry's issuer, over https (another "host").
struct TlsTokenServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl TlsTokenServer {
    fn start(reg: &Registry, cert: &Path, key: &Path) -> TlsTokenServer {
        let dir = reg.dir();
        let mut child = Command::new("python3")
            .arg(registry_support::fixtures_dir().join("token_server.py"))
            .arg("--dir")
            .arg(dir)
            .arg("--tls")
            .arg(cert)
            .arg(key)
            .args(["--port-file", "token-tls-port", "--log", "token-tls.log"])
            .arg("--watch")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("token-tls.err")).expect("log"))
            .spawn()
            .expect("python3 runs");
        let (port, _) = wait_for_ports(
            &mut child,
            &[dir.join("token-tls-port")],
            &dir.join("token-tls.err"),
        );
        TlsTokenServer {
            child,
            port,
            log: dir.join("token-tls.log"),
        }
    }

    fn log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json log line"))
            .collect()
    }
}

impl Drop for TlsTokenServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that the store at `store` holds no image, no blob and no temporary download.
fn assert_store_empty(store: &Path) {
    for sub in ["images/blobs/sha256", "images/tmp", "images/records"] {
        let entries: Vec<_> = std::fs::read_dir(store.join(sub))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(entries.is_empty(), "left in the store: {entries:?}");
    }
    let list = podvm_ok(store, &["image", "list", "--format", "json"]);
    assert_eq!(list.trim(), "[]", "{list}");
}

#[test]
fn plain_http_token_realm_is_refused_and_an_https_one_on_another_host_gets_the_credentials() {
    if registry_support::skip() || signing::skip() {
        return;
    }
    let reg = Registry::start(true);
    reg.push_as("busybox", "private/busybox");
    let t = tempfile::tempdir().expect("tempdir");
    let (cert, key) = signing::self_signed(t.path());
    let (cert_s, key_s) = (cert.to_str().expect("utf8"), key.to_str().expect("utf8"));

    // Attack: an https registry (as far as the user can tell) whose Bearer challenge sends
    // clients to a plain-http token realm: the registry's credentials would cross the network
    // in clear text (and the token could be swapped). podvm must refuse before asking the
    // realm anything, naming the realm and the flag that would allow it.
    let front = Front::start(reg.port(), &["--tls", cert_s, key_s, "--no-blob-redirect"]);
    let creds = docker_config(
        &t.path().join("creds"),
        &front.host(),
        registry_support::USER,
        registry_support::PASSWORD,
    );
    let token_requests_before = reg.token_log().len();
    let image = format!("docker://{}/private/busybox:latest", front.host());
    let store = t.path().join("store");
    let o = fetch(&store, Some(&creds), "--insecure-options=image,tls", &image);
    assert!(!o.status.success(), "fetch through an http realm succeeded");
    let e = stderr(&o);
    let realm = format!(
        "http://127.0.0.1:{}/token",
        std::fs::read_to_string(reg.dir().join("token-port"))
            .expect("token-port")
            .trim()
    );
    assert!(
        e.contains(&realm) && e.contains("--insecure-options=http") && e.contains(&front.host()),
        "{e}"
    );
    let after = reg.token_log();
    assert_eq!(
        after.len(),
        token_requests_before,
        "the plain-http realm was asked for a token: {:?}",
        &after[token_requests_before..]
    );
    assert_store_empty(&store);

    // Docker's behaviour, kept: an https realm, here on another host (port), is sent the
    // registry's credentials to get a token.
    let tokens = TlsTokenServer::start(&reg, &cert, &key);
    let https_realm = format!("https://127.0.0.1:{}/token", tokens.port);
    let front2 = Front::start(
        reg.port(),
        &[
            "--tls",
            cert_s,
            key_s,
            "--no-blob-redirect",
            "--realm",
            &https_realm,
        ],
    );
    let creds2 = docker_config(
        &t.path().join("creds2"),
        &front2.host(),
        registry_support::USER,
        registry_support::PASSWORD,
    );
    let image2 = format!("docker://{}/private/busybox:latest", front2.host());
    let o = fetch(
        &store,
        Some(&creds2),
        "--insecure-options=image,tls",
        &image2,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let log = tokens.log();
    assert!(
        log.iter().any(|l| l["user"] == registry_support::USER
            && l["credentials"] == "basic"
            && l["result"] == "issued"),
        "the https realm never issued a token to the user: {log:?}"
    );
}

#[test]
fn blob_storage_host_never_gets_the_registry_credentials() {
    if registry_support::skip() {
        return;
    }
    let reg = Registry::start(false);
    reg.push_exact("busybox", "busybox");
    let t = tempfile::tempdir().expect("tempdir");
    let basic = format!("{USER}:{PASSWORD}");

    // Attack: a registry that wants Basic credentials redirects blob downloads to a storage
    // host (another port: another origin). That host must never see the credentials, neither
    // on the redirected request nor by asking for them with its own 401 challenge.
    let front = Front::start(reg.port(), &["--basic-auth", &basic]);
    let creds = docker_config(&t.path().join("creds"), &front.host(), USER, PASSWORD);
    let image = format!("docker://{}/busybox:latest", front.host());
    let store = t.path().join("store");
    let o = fetch(&store, Some(&creds), INSECURE, &image);
    assert!(o.status.success(), "{}", stderr(&o));
    let api = front.log("api");
    assert!(
        api.iter().any(|l| l["status"] == 200
            && l["authorization"]
                .as_str()
                .is_some_and(|a| a.starts_with("Basic "))),
        "the registry itself never got the credentials: {api:?}"
    );
    let blobs = front.log("blob");
    assert!(
        !blobs.is_empty(),
        "no blob was downloaded from the storage host"
    );
    for l in &blobs {
        assert!(
            l["authorization"].is_null(),
            "the storage host (port {}) received an Authorization header: {l}",
            front.blob_port
        );
    }

    // The storage host asks for credentials itself: refused, nothing sent.
    let phishing = Front::start(reg.port(), &["--basic-auth", &basic, "--blob-challenge"]);
    let creds = docker_config(&t.path().join("creds2"), &phishing.host(), USER, PASSWORD);
    let store2 = t.path().join("store2");
    let image = format!("docker://{}/busybox:latest", phishing.host());
    let o = fetch(&store2, Some(&creds), INSECURE, &image);
    assert!(
        !o.status.success(),
        "fetch succeeded through a 401 storage host"
    );
    let e = stderr(&o);
    assert!(
        e.contains(&format!("127.0.0.1:{}", phishing.blob_port))
            && e.contains("only to the registry itself"),
        "{e}"
    );
    let blobs = phishing.log("blob");
    assert!(!blobs.is_empty(), "the storage host was never asked");
    for l in &blobs {
        assert!(
            l["authorization"].is_null(),
            "the storage host received an Authorization header: {l}"
        );
    }
}

#[test]
fn https_registry_redirecting_to_plain_http_is_refused() {
    if registry_support::skip() || signing::skip() {
        return;
    }
    let reg = Registry::start(false);
    reg.push_exact("busybox", "busybox");
    let t = tempfile::tempdir().expect("tempdir");
    let (cert, key) = signing::self_signed(t.path());

    // Attack: an https registry redirects blob downloads to plain http, where anyone on the
    // path can read or swap them (and, for a careless client, its credentials). Without
    // --insecure-options=http, podvm must not follow it at all.
    let front = Front::start(
        reg.port(),
        &[
            "--tls",
            cert.to_str().expect("utf8"),
            key.to_str().expect("utf8"),
        ],
    );
    let image = format!("docker://{}/busybox:latest", front.host());
    let store = t.path().join("store");
    let o = fetch(&store, None, "--insecure-options=image,tls", &image);
    assert!(
        !o.status.success(),
        "fetch followed an https -> http redirect"
    );
    let e = stderr(&o);
    assert!(
        e.contains(&front.host())
            && e.contains(&format!("http://127.0.0.1:{}/", front.blob_port))
            && e.contains("never downgrades")
            && e.contains("--insecure-options=http"),
        "{e}"
    );
    assert!(
        !front.log("redirect").is_empty(),
        "the registry never redirected: the test proves nothing"
    );
    let blobs = front.log("blob");
    assert!(
        blobs.is_empty(),
        "the plain-http host was contacted: {blobs:?}"
    );
    let list = podvm_ok(&store, &["image", "list", "--format", "json"]);
    assert_eq!(list.trim(), "[]", "{list}");
}

#[test]
fn aci_download_over_the_cap_is_refused_while_downloading() {
    if signing::skip() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let www = t.path().join("www");
    std::fs::create_dir(&www).expect("mkdir");
    signing::make_aci(&www.join("small.aci"), "example.com/small", "1", "hello");
    // Attack: a server (or discovery page) hands out an "ACI" of 8 GiB: podvm must stop at
    // its cap instead of filling the disk. (Sparse on the server side: no real disk used.)
    let huge = std::fs::File::create(www.join("huge.aci")).expect("create");
    huge.set_len(8 << 30).expect("sparse");
    drop(huge);
    let server = signing::Server::start(&www, None);
    let store = t.path().join("store");
    let cap = "1048576";
    let url = format!("http://{}/huge.aci", server.host());
    let o = podvm_cmd(&store)
        .env("PODVM_IMAGE_MAX_ACI_BYTES", cap)
        .args(["fetch", INSECURE, &url])
        .output()
        .expect("podvm runs");
    assert!(!o.status.success(), "an 8 GiB ACI was accepted");
    let e = stderr(&o);
    assert!(
        e.contains(&url) && e.contains(cap) && e.contains("PODVM_IMAGE_MAX_ACI_BYTES"),
        "{e}"
    );
    assert_store_empty(&store);

    // Under the cap, ACIs still download.
    let small = format!("http://{}/small.aci", server.host());
    let o = podvm_cmd(&store)
        .env("PODVM_IMAGE_MAX_ACI_BYTES", cap)
        .args(["fetch", INSECURE, &small])
        .output()
        .expect("podvm runs");
    assert!(o.status.success(), "{}", stderr(&o));
}
