//! The pod's /etc/resolv.conf: the `--dns*` flags over what the CNI results said; `--dns=host`
//! copies the host's file, `--dns=none` writes none.

use super::cni::CniDns;
use super::spec::DnsRequest;

/// The host's resolver configuration.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Renders resolv.conf for the pod, or `None` when there is nothing to say (or `--dns=none`).
/// Each of servers, search, options and domain comes from the flags when they give it, else
/// from the CNI results (merged in network order).
pub fn resolv_conf(request: &DnsRequest, from_cni: &[CniDns]) -> Option<String> {
    match request.servers.first().map(String::as_str) {
        Some("none") => return None,
        Some("host") => return std::fs::read_to_string(HOST_RESOLV_CONF).ok(),
        _ => {}
    }
    let merged = |flag: &Vec<String>, pick: fn(&CniDns) -> &Vec<String>| -> Vec<String> {
        if !flag.is_empty() {
            return flag.clone();
        }
        let mut all: Vec<String> = Vec::new();
        for value in from_cni.iter().flat_map(pick) {
            if !all.contains(value) {
                all.push(value.clone());
            }
        }
        all
    };
    let servers = merged(&request.servers, |dns| &dns.nameservers);
    let search = merged(&request.search, |dns| &dns.search);
    let options = merged(&request.options, |dns| &dns.options);
    let domain = request
        .domain
        .clone()
        .or_else(|| from_cni.iter().find_map(|dns| dns.domain.clone()));
    let mut text = String::new();
    if let Some(domain) = domain {
        text.push_str(&format!("domain {domain}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cni(servers: &[&str], search: &[&str]) -> CniDns {
        CniDns {
            nameservers: servers.iter().map(|s| s.to_string()).collect(),
            search: search.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn flags_win_over_cni_and_cni_results_merge() {
        let request = DnsRequest {
            servers: vec!["1.2.3.4".into()],
            options: vec!["ndots:2".into()],
            domain: Some("pod.local".into()),
            ..Default::default()
        };
        let from_cni = [
            cni(&["9.9.9.9"], &["a.example"]),
            cni(&["8.8.8.8"], &["a.example", "b.example"]),
        ];
        assert_eq!(
            resolv_conf(&request, &from_cni).expect("text"),
            "domain pod.local\nsearch a.example b.example\nnameserver 1.2.3.4\noptions ndots:2\n"
        );
        assert_eq!(
            resolv_conf(&DnsRequest::default(), &from_cni).expect("text"),
            "search a.example b.example\nnameserver 9.9.9.9\nnameserver 8.8.8.8\n"
        );
    }

    #[test]
    fn nothing_none_and_host() {
        assert_eq!(resolv_conf(&DnsRequest::default(), &[]), None);
        let none = DnsRequest {
            servers: vec!["none".into()],
            ..Default::default()
        };
        assert_eq!(resolv_conf(&none, &[cni(&["9.9.9.9"], &[])]), None);
        let host = DnsRequest {
            servers: vec!["host".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(&host, &[]),
            std::fs::read_to_string(HOST_RESOLV_CONF).ok()
        );
    }
}
