//! Registry credentials and `WWW-Authenticate` challenges.
//!
//! Credentials are looked up, first match wins, in:
//! 1. `<PODVM_DIR>/auth.d/*.json`, rkt's format:
//!    `{"rktKind":"dockerAuth","rktVersion":"v1","registries":["host:port"],
//!    "credentials":{"user":"...","password":"..."}}`;
//! 2. `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, `auths.<host>.auth`
//!    (base64 `user:password`) or `username`/`password`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// A user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.user)
    }
}

impl Credentials {
    /// The `Authorization: Basic` header value.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(Deserialize)]
struct RktAuth {
    #[serde(rename = "rktKind")]
    kind: String,
    #[serde(default)]
    registries: Vec<String>,
    credentials: Option<RktCreds>,
}

#[derive(Deserialize)]
struct RktCreds {
    user: String,
    password: String,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Finds credentials for registry `host` (as written in the reference, e.g. `docker.io`).
pub fn lookup(data_dir: &Path, host: &str) -> Option<Credentials> {
    from_rkt_dir(&data_dir.join("auth.d"), host).or_else(|| from_docker_config(host))
}

fn from_rkt_dir(dir: &Path, host: &str) -> Option<Credentials> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "json"))
    {
        let Some(a) = std::fs::read(f)
            .ok()
            .and_then(|d| serde_json::from_slice::<RktAuth>(&d).ok())
        else {
            eprintln!("warning: ignoring unreadable auth config {}", f.display());
            continue;
        };
        if a.kind == "dockerAuth" && a.registries.iter().any(|r| r == host) {
            if let Some(c) = a.credentials {
                return Some(Credentials {
                    user: c.user,
                    password: c.password,
                });
            }
        }
    }
    None
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

fn from_docker_config(host: &str) -> Option<Credentials> {
    let data = std::fs::read(docker_config_path()?).ok()?;
    let cfg: DockerConfig = serde_json::from_slice(&data).ok()?;
    let hub = host == super::reference::DOCKER_HUB;
    let entry = cfg.auths.iter().find_map(|(k, v)| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let k = k.split('/').next().unwrap_or(k);
        let matches = k == host || (hub && (k == "index.docker.io" || k == "registry-1.docker.io"));
        matches.then_some(v)
    })?;
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Some(Credentials {
            user: u.clone(),
            password: p.clone(),
        });
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.as_deref()?.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some(Credentials {
        user: u.to_string(),
        password: p.to_string(),
    })
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer` or `basic` (lowercase).
    pub scheme: String,
    /// Parameters (`realm`, `service`, `scope`, ...).
    pub params: BTreeMap<String, String>,
}

/// Parses `Bearer realm="...",service="...",scope="..."` (quoted values may contain commas).
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            val = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), val);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://a/token",service="reg",scope="repository:x:pull,push""#,
        )
        .expect("parses");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://a/token");
        assert_eq!(c.params["scope"], "repository:x:pull,push");
        let b = parse_challenge(r#"Basic realm="Registry Realm""#).expect("parses");
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.params["realm"], "Registry Realm");
    }

    #[test]
    fn rkt_auth_dir() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("auth.d");
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::write(
            d.join("a.json"),
            r#"{"rktKind":"dockerAuth","rktVersion":"v1","registries":["127.0.0.1:5000"],"credentials":{"user":"u","password":"p"}}"#,
        )
        .expect("write");
        let c = lookup(t.path(), "127.0.0.1:5000").expect("found");
        assert_eq!((c.user.as_str(), c.password.as_str()), ("u", "p"));
        assert_eq!(c.basic_header(), "Basic dTpw");
    }
}
