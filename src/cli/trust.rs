//! `podvm trust`: trust OpenPGP keys for verifying ACI signatures, as `rkt trust` does:
//! `podvm trust --prefix example.com/app [KEYFILE|URL...]` (no key: found by appc discovery's
//! `ac-discovery-pubkeys`), `podvm trust --root KEYFILE...` (all images), `podvm trust --list`.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use crate::image::discovery::{AppName, Discoverer, DiscoveryError};
use crate::image::http;
use crate::image::trust::{self, Key, Scope, TrustError};

/// Largest key file accepted.
const MAX_KEY: u64 = 4 << 20;

/// Arguments of `podvm trust`.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Keys to trust: files or https URLs. Without any, the keys of --prefix are found by appc
    /// discovery (`ac-discovery-pubkeys`).
    pub keys: Vec<String>,
    /// Trust the keys for images named PREFIX or below it (e.g. example.com/app).
    #[arg(long, conflicts_with = "root")]
    pub prefix: Option<String>,
    /// Trust the keys for all images.
    #[arg(long)]
    pub root: bool,
    /// Do not show the fingerprints and ask for confirmation.
    #[arg(long = "skip-fingerprint-review")]
    pub skip_fingerprint_review: bool,
    /// Allow fetching keys (and discovery) over plain http.
    #[arg(long = "insecure-allow-http")]
    pub insecure_allow_http: bool,
    /// List the trusted keys and exit.
    #[arg(long, conflicts_with_all = ["prefix", "root", "keys"])]
    pub list: bool,
}

/// Errors of `podvm trust`.
#[derive(Debug, thiserror::Error)]
pub enum TrustCliError {
    /// Bad flag combination.
    #[error("{0}")]
    Usage(&'static str),
    /// The key store failed.
    #[error(transparent)]
    Store(#[from] TrustError),
    /// Discovery of the prefix's keys failed.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// A key could not be read.
    #[error("reading key {source_name}: {why}")]
    Read {
        /// File or URL.
        source_name: String,
        /// The cause.
        why: String,
    },
    /// The fingerprint cannot be reviewed.
    #[error("cannot ask to confirm the fingerprint of key {fingerprint} ({source_name}): stdin is not a terminal; review it and pass --skip-fingerprint-review")]
    NotInteractive {
        /// File or URL.
        source_name: String,
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// The user said no.
    #[error("key {0} not trusted")]
    Refused(String),
}

/// Runs `podvm trust`.
pub fn run(data_dir: &Path, args: TrustArgs) -> Result<ExitCode, TrustCliError> {
    if args.list {
        list(data_dir);
        return Ok(ExitCode::SUCCESS);
    }
    let scope = match (&args.prefix, args.root) {
        (Some(p), false) => {
            trust::check_prefix(p)?;
            Scope::Prefix(p.clone())
        }
        (None, true) => Scope::Root,
        _ => {
            return Err(TrustCliError::Usage(
                "podvm trust: pass --prefix PREFIX or --root (or --list)",
            ))
        }
    };
    let agent = http::agent(false);
    let sources =
        match (&scope, args.keys.is_empty()) {
            (_, false) => args.keys.clone(),
            (Scope::Root, true) => return Err(TrustCliError::Usage(
                "podvm trust --root needs key files or URLs (discovery works only with --prefix)",
            )),
            (Scope::Prefix(p), true) => {
                let app = AppName::parse(p)?;
                let d = Discoverer {
                    agent: &agent,
                    insecure_http: args.insecure_allow_http,
                    http_flag: "--insecure-allow-http",
                };
                d.pubkeys(&app)?
            }
        };
    for src in &sources {
        let data = read_key(&agent, src, args.insecure_allow_http)?;
        for key in trust::parse_keys(src, &data)? {
            if !args.skip_fingerprint_review {
                review(&scope, src, &key)?;
            }
            let path = trust::add(data_dir, &scope, &key)?;
            match &scope {
                Scope::Prefix(p) => println!(
                    "Added key {} for prefix {p:?} at {:?}",
                    key.fingerprint,
                    path.display()
                ),
                Scope::Root => {
                    println!("Added root key {} at {:?}", key.fingerprint, path.display())
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_key(agent: &ureq::Agent, src: &str, allow_http: bool) -> Result<Vec<u8>, TrustCliError> {
    let err = |why: String| TrustCliError::Read {
        source_name: src.to_string(),
        why,
    };
    let mut data = Vec::new();
    if src.starts_with("https://") || src.starts_with("http://") {
        if src.starts_with("http://") && !allow_http {
            return Err(err("plain http needs --insecure-allow-http".into()));
        }
        let policy = http::Policy {
            allow_http,
            http_flag: "--insecure-allow-http",
        };
        let resp = http::parse_url(src)
            .and_then(|u| http::get(agent, policy, u, &[], None))
            .map_err(|e| err(e.to_string()))?;
        resp.into_reader()
            .take(MAX_KEY)
            .read_to_end(&mut data)
            .map_err(|e| err(e.to_string()))?;
    } else {
        std::fs::File::open(src)
            .and_then(|f| f.take(MAX_KEY).read_to_end(&mut data))
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(data)
}

/// Shows the key and asks y/N on the terminal.
fn review(scope: &Scope, src: &str, key: &Key) -> Result<(), TrustCliError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(TrustCliError::NotInteractive {
            source_name: src.to_string(),
            fingerprint: key.fingerprint.clone(),
        });
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "Trusting for: {scope}\nKey: {src:?}");
    let _ = writeln!(err, "GPG key fingerprint is: {}", key.fingerprint_display());
    for u in &key.users {
        let _ = writeln!(err, "\t{u}");
    }
    let _ = write!(err, "Are you sure you want to trust this key (y/N)? ");
    let _ = err.flush();
    let mut answer = String::new();
    let _ = stdin.lock().read_line(&mut answer);
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(TrustCliError::Refused(key.fingerprint.clone())),
    }
}

fn list(data_dir: &Path) {
    println!("FINGERPRINT\tTRUSTED FOR\tUSER");
    for k in trust::list(data_dir) {
        let scope = match &k.scope {
            Scope::Prefix(p) => p.clone(),
            Scope::Root => "(root: all images)".to_string(),
        };
        let user = k.key.users.first().cloned().unwrap_or_default();
        println!("{}\t{scope}\t{user}", k.key.fingerprint);
    }
}
