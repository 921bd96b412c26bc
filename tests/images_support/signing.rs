//! Test support for ACI trust tests: gpg signers in throwaway keyrings, small ACIs, a static
//! http(s) server (`serve.py`) and self-signed certificates. Include with
//! `#[path = "images_support/signing.rs"] mod signing;` and start each test with
//! `if signing::skip() { return; }`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

/// Tools these tests run, with their Debian packages.
const TOOLS: &[(&str, &str)] = &[
    ("gpg", "gnupg"),
    ("python3", "python3"),
    ("openssl", "openssl"),
    ("tar", "tar"),
    ("gzip", "gzip"),
];

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Prints why the tests cannot run here and returns true (panics instead under `CI=true`).
pub fn skip() -> bool {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(c, _)| !on_path(c))
        .map(|(c, p)| format!("{c} (Debian package {p})"))
        .collect();
    if missing.is_empty() {
        return false;
    }
    let reason = format!("trust tests need {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and {reason}");
    }
    eprintln!("skipped: {reason}");
    true
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A gpg key pair in its own keyring.
pub struct Signer {
    home: TempDir,
    /// Uppercase hex fingerprint as gpg prints it.
    pub fingerprint: String,
}

impl Signer {
    /// Generates a signing key (`algo`: `ed25519`, `rsa2048`, ...) for `uid`.
    pub fn new(uid: &str, algo: &str) -> Signer {
        let home = tempfile::Builder::new()
            .prefix("podvm-gpg-")
            .tempdir()
            .expect("tempdir");
        let mut s = Signer {
            home,
            fingerprint: String::new(),
        };
        run(s
            .gpg()
            .args(["--quick-gen-key", uid, algo, "sign", "never"]));
        let colons = run(s.gpg().args(["--with-colons", "--list-keys"]));
        s.fingerprint = colons
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() >= 40))
            .expect("gpg lists a fingerprint")
            .to_string();
        s
    }

    fn gpg(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--quiet",
            "--passphrase",
            "",
            "--pinentry-mode",
            "loopback",
        ]);
        c
    }

    /// Writes the armored public key to `path`.
    pub fn export(&self, path: &Path) {
        let key = run(self.gpg().args(["--armor", "--export"]));
        std::fs::write(path, key).expect("write key");
    }

    /// Adds a signing subkey (`algo`); gpg signs with it from then on.
    pub fn add_signing_subkey(&self, algo: &str) {
        run(self
            .gpg()
            .args(["--quick-add-key", &self.fingerprint, algo, "sign", "never"]));
    }

    /// Writes the armored detached signature of `file` to `<file>.asc`.
    pub fn sign(&self, file: &Path) -> PathBuf {
        let asc = PathBuf::from(format!("{}.asc", file.display()));
        let _ = std::fs::remove_file(&asc);
        run(self
            .gpg()
            .args(["--armor", "--detach-sign", "--output"])
            .arg(&asc)
            .arg(file));
        asc
    }
}

impl Drop for Signer {
    /// Stops the gpg-agent gpg started for this keyring.
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Writes a gzip ACI named `name` (labels version/os/arch) whose rootfs has `/hello` holding
/// `content`, to `out`.
pub fn make_aci(out: &Path, name: &str, version: &str, content: &str) {
    let t = tempfile::tempdir().expect("tempdir");
    let manifest = format!(
        r#"{{"acKind":"ImageManifest","acVersion":"0.8.11","name":"{name}","labels":[{{"name":"version","value":"{version}"}},{{"name":"os","value":"linux"}},{{"name":"arch","value":"amd64"}}],"app":{{"exec":["/hello"],"user":"0","group":"0"}}}}"#
    );
    std::fs::write(t.path().join("manifest"), manifest).expect("manifest");
    std::fs::create_dir(t.path().join("rootfs")).expect("rootfs");
    std::fs::write(t.path().join("rootfs/hello"), content).expect("hello");
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    run(Command::new("tar")
        .arg("-C")
        .arg(t.path())
        .args(["--numeric-owner", "-czf"])
        .arg(out)
        .args(["manifest", "rootfs"]));
}

/// `serve.py` serving a directory on 127.0.0.1 (killed on drop).
pub struct Server {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Server {
    /// Serves `root` over http, or over https with `tls = Some((cert, key))`.
    pub fn start(root: &Path, tls: Option<(&Path, &Path)>) -> Server {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images_support/serve.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(root);
        if let Some((c, k)) = tls {
            cmd.arg(c).arg(k);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("serve.py printed {line:?}, not a port")
        });
        Server { child, port }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 in `dir`: `(cert.pem, key.pem)`.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null()));
    (cert, key)
}
