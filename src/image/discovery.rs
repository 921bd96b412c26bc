//! appc image discovery: from a name such as `example.com/app:v1` (or
//! `example.com/app,version=v1,os=linux,arch=amd64`) to the URLs of the ACI, its signature and
//! the signers' public keys, read from `<meta name="ac-discovery" content="PREFIX TEMPLATE">`
//! and `<meta name="ac-discovery-pubkeys" content="PREFIX URL">` tags of
//! `https://<name>?ac-discovery=1`, walking up the name's path until a page has matching tags.
//!
//! podvm extension: the host may carry a port (`127.0.0.1:8443/app:v1`).

use std::collections::BTreeMap;
use std::io::Read;

use super::http;

/// Largest discovery page read.
const MAX_PAGE: u64 = 1 << 20;

/// Errors of discovery.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The input is not an appc image name.
    #[error("{0:?}: not an appc image name (expected example.com/app[:version] or example.com/app,version=V,os=linux,arch=amd64)")]
    BadName(String),
    /// No page had matching tags.
    #[error("{name}: appc discovery found no {meta} meta tag matching the name; tried: {tried}")]
    NotFound {
        /// The name.
        name: String,
        /// The tag name looked for.
        meta: &'static str,
        /// Every attempt and why it failed.
        tried: String,
    },
}

/// An appc image name with its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppName {
    /// The name, e.g. `example.com/app`.
    pub name: String,
    /// Labels (`version`, `os`, `arch`, ...); `os` and `arch` default to linux/amd64.
    pub labels: BTreeMap<String, String>,
}

impl AppName {
    /// Parses `NAME[:VERSION][,LABEL=VALUE...]`.
    pub fn parse(input: &str) -> Result<AppName, DiscoveryError> {
        let bad = || DiscoveryError::BadName(input.to_string());
        let mut parts = input.split(',');
        let base = parts.next().ok_or_else(bad)?;
        let mut labels = BTreeMap::new();
        for kv in parts {
            let (k, v) = kv.split_once('=').ok_or_else(bad)?;
            if k.is_empty() || v.is_empty() {
                return Err(bad());
            }
            labels.insert(k.to_string(), v.to_string());
        }
        // Only the last path component may carry `:version` (the host may carry `:port`).
        let last = base.rfind('/').map_or(0, |i| i + 1);
        let name = match base[last..].split_once(':') {
            Some((_, "")) => return Err(bad()),
            Some((n, v)) => {
                labels.insert("version".into(), v.to_string());
                format!("{}{n}", &base[..last])
            }
            None => base.to_string(),
        };
        super::trust::check_prefix(&name).map_err(|_| bad())?;
        let host = name.split('/').next().unwrap_or_default();
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad());
        }
        labels.entry("os".into()).or_insert_with(|| "linux".into());
        labels
            .entry("arch".into())
            .or_insert_with(|| "amd64".into());
        Ok(AppName { name, labels })
    }

    /// The name as the user would write it: `name[:version]`, then labels other than the
    /// version and the default os/arch.
    pub fn canonical(&self) -> String {
        let mut s = self.name.clone();
        if let Some(v) = self.labels.get("version") {
            s.push_str(&format!(":{v}"));
        }
        for (k, v) in &self.labels {
            let default = (k == "os" && v == "linux") || (k == "arch" && v == "amd64");
            if k != "version" && !default {
                s.push_str(&format!(",{k}={v}"));
            }
        }
        s
    }
}

/// Whether `input` should be resolved by appc discovery (an appc name, not a local file).
pub fn is_discoverable(input: &str) -> bool {
    !std::path::Path::new(input).exists() && AppName::parse(input).is_ok()
}

/// One discovered image location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AciEndpoint {
    /// The ACI.
    pub aci: String,
    /// Its detached signature.
    pub asc: String,
}

/// Settings of discovery requests.
pub struct Discoverer<'a> {
    /// The HTTP agent (TLS verification as configured).
    pub agent: &'a ureq::Agent,
    /// Fall back to plain http.
    pub insecure_http: bool,
    /// The flag that allows plain http, for messages (`--insecure-options=http`).
    pub http_flag: &'static str,
}

impl Discoverer<'_> {
    /// The ACI endpoints for `app`, best first.
    pub fn aci_endpoints(&self, app: &AppName) -> Result<Vec<AciEndpoint>, DiscoveryError> {
        let templates = self.walk(app, "ac-discovery")?;
        let out: Vec<AciEndpoint> = templates
            .iter()
            .filter_map(|t| {
                Some(AciEndpoint {
                    aci: render(t, app, "aci")?,
                    asc: render(t, app, "aci.asc")?,
                })
            })
            .collect();
        if out.is_empty() {
            return Err(DiscoveryError::NotFound {
                name: app.canonical(),
                meta: "ac-discovery",
                tried: format!(
                    "templates {templates:?} need labels the name does not have (labels: {:?})",
                    app.labels
                ),
            });
        }
        Ok(out)
    }

    /// The public key URLs for `app`.
    pub fn pubkeys(&self, app: &AppName) -> Result<Vec<String>, DiscoveryError> {
        self.walk(app, "ac-discovery-pubkeys")
    }

    /// Walks up `app.name` until a page has `meta` tags whose prefix matches the name; returns
    /// their values, longest prefix first.
    fn walk(&self, app: &AppName, meta: &'static str) -> Result<Vec<String>, DiscoveryError> {
        let mut tried = Vec::new();
        let mut path = app.name.as_str();
        loop {
            match self.page(path) {
                Ok((url, body)) => {
                    let found = matching(&body, meta, &app.name);
                    if !found.is_empty() {
                        return Ok(found);
                    }
                    tried.push(format!("{url}: no matching {meta} tag"));
                }
                Err(e) => tried.push(e),
            }
            match path.rfind('/') {
                Some(i) => path = &path[..i],
                None => break,
            }
        }
        Err(DiscoveryError::NotFound {
            name: app.canonical(),
            meta,
            tried: tried.join("; "),
        })
    }

    /// Fetches the discovery page of `path` (https, then http if allowed).
    fn page(&self, path: &str) -> Result<(String, String), String> {
        let mut errs = Vec::new();
        let schemes: &[&str] = if self.insecure_http {
            &["https", "http"]
        } else {
            &["https"]
        };
        let policy = http::Policy {
            allow_http: self.insecure_http,
            http_flag: self.http_flag,
        };
        for scheme in schemes {
            let url = format!("{scheme}://{path}?ac-discovery=1");
            // Redirects are followed, but never from https to plain http without the flag.
            match http::parse_url(&url).and_then(|u| http::get(self.agent, policy, u, &[], None)) {
                Ok(resp) => {
                    // Only the first MAX_PAGE bytes are looked at: a longer page is cut.
                    let mut body = Vec::new();
                    match resp.into_reader().take(MAX_PAGE).read_to_end(&mut body) {
                        Ok(_) => return Ok((url, String::from_utf8_lossy(&body).into_owned())),
                        Err(e) => errs.push(format!("{url}: {e}")),
                    }
                }
                Err(e) => errs.push(e.to_string()),
            }
        }
        if !self.insecure_http {
            errs.push(format!(
                "(plain http is tried only with {})",
                self.http_flag
            ));
        }
        Err(errs.join("; "))
    }
}

/// Fills `{name}`, `{ext}` and `{LABEL}` in `template`; `None` if a placeholder stays unfilled.
pub fn render(template: &str, app: &AppName, ext: &str) -> Option<String> {
    let mut out = template.replace("{name}", &app.name).replace("{ext}", ext);
    let version = app
        .labels
        .get("version")
        .cloned()
        .unwrap_or_else(|| "latest".into());
    out = out.replace("{version}", &version);
    for (k, v) in &app.labels {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    (!out.contains('{') && !out.contains('}')).then_some(out)
}

/// The values of the `meta` tags named `meta` whose prefix matches `name`, longest prefix first.
fn matching(html: &str, meta: &str, name: &str) -> Vec<String> {
    let mut found: Vec<(usize, String)> = meta_tags(html)
        .into_iter()
        .filter(|(n, _)| n == meta)
        .filter_map(|(_, content)| {
            let mut it = content.split_whitespace();
            let prefix = it.next()?;
            let value = it.next()?;
            name.starts_with(prefix)
                .then(|| (prefix.len(), value.to_string()))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, v)| v).collect()
}

/// `(name, content)` of every `<meta ...>` tag of an HTML page.
pub fn meta_tags(html: &str) -> Vec<(String, String)> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = lower[at..].find("<meta") {
        let start = at + i + 5;
        let end = lower[start..].find('>').map_or(lower.len(), |j| start + j);
        let attrs = attributes(&html[start..end]);
        if let (Some(n), Some(c)) = (attrs.get("name"), attrs.get("content")) {
            out.push((n.clone(), c.clone()));
        }
        at = end;
    }
    out
}

/// Attributes `key="value"`, `key='value'` or `key=value` (keys lowercased).
fn attributes(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq]
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let after = rest[eq + 1..].trim_start();
        let (value, next) = match after.chars().next() {
            Some(q @ ('"' | '\'')) => match after[1..].find(q) {
                Some(j) => (&after[1..1 + j], &after[2 + j..]),
                None => (&after[1..], ""),
            },
            _ => {
                let j = after.find(char::is_whitespace).unwrap_or(after.len());
                (&after[..j], &after[j..])
            }
        };
        out.insert(key, value.to_string());
        rest = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        let a = AppName::parse("example.com/app:v1").expect("valid");
        assert_eq!(a.name, "example.com/app");
        assert_eq!(a.labels["version"], "v1");
        assert_eq!(a.labels["os"], "linux");
        let b = AppName::parse("example.com/app,version=v1,os=linux,arch=amd64").expect("valid");
        assert_eq!(b, a);
        let c = AppName::parse("127.0.0.1:8443/a/b:2.0").expect("valid");
        assert_eq!(
            (c.name.as_str(), c.labels["version"].as_str()),
            ("127.0.0.1:8443/a/b", "2.0")
        );
        assert!(!c.labels.contains_key("x"));
        for bad in [
            "example.com/app:",
            "busybox",
            "Example.com/app",
            "example.com/app,version",
            "/abs/path.aci",
            "a b",
        ] {
            assert!(AppName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renders_templates() {
        let a = AppName::parse("example.com/app:v1").expect("valid");
        assert_eq!(
            render("https://h/{name}-{version}-{os}-{arch}.{ext}", &a, "aci").as_deref(),
            Some("https://h/example.com/app-v1-linux-amd64.aci")
        );
        assert_eq!(render("https://h/{name}-{flavor}.{ext}", &a, "aci"), None);
        let latest = AppName::parse("example.com/app").expect("valid");
        assert_eq!(
            render("{version}", &latest, "aci").as_deref(),
            Some("latest")
        );
    }

    #[test]
    fn finds_meta_tags() {
        let html = r#"<html><head>
            <META name="ac-discovery" content="example.com https://example.com/{name}.{ext}">
            <meta content='example.com/app https://cdn/{name}-{version}.{ext}' name='ac-discovery' />
            <meta name="ac-discovery" content="other.org https://other/{name}.{ext}">
            <meta name=ac-discovery-pubkeys content="example.com https://example.com/key.gpg">
            </head></html>"#;
        assert_eq!(
            matching(html, "ac-discovery", "example.com/app"),
            vec![
                "https://cdn/{name}-{version}.{ext}".to_string(),
                "https://example.com/{name}.{ext}".to_string()
            ]
        );
        assert_eq!(
            matching(html, "ac-discovery-pubkeys", "example.com/app"),
            vec!["https://example.com/key.gpg".to_string()]
        );
        assert!(matching(html, "ac-discovery", "nope.net/x").is_empty());
    }
}
