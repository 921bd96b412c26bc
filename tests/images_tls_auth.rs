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
