//! Network bytes of a pod, for its accounting (`status --format json`: `net_rx_bytes`,
//! `net_tx_bytes`): the counters of its taps, the VM's NICs' host ends, in its network
//! namespace.
//!
//! They are read on a thread that joined the pod's namespace ([`super::netns::run_in`]), from
//! `/proc/thread-self/net/dev`, which shows the calling thread's namespace. A tap counts as
//! received what the VMM wrote into it (the guest sent it) and as transmitted what it handed
//! to the VMM (the guest received it), so the pod's rx is the taps' tx and the other way round.
//! The taps live as long as the namespace (until the pod's network is released), so the same
//! read serves a running pod's `status` and the record made when its VM ended.

use std::path::Path;

use super::{netns, state};

/// What went through a pod's interfaces, seen from the pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetBytes {
    /// Bytes the pod received.
    pub rx: u64,
    /// Bytes the pod sent.
    pub tx: u64,
}

/// The bytes through the taps of the pod in `pod_dir`; `None` when it has no network (or its
/// namespace is gone).
pub fn pod_bytes(pod_dir: &Path) -> Option<NetBytes> {
    let record = state::read(pod_dir).ok()??;
    let netns_path = record.netns?;
    let taps: Vec<String> = record.attachments.into_iter().map(|a| a.tap).collect();
    if taps.is_empty() {
        return None;
    }
    let text = netns::run_in(
        &netns_path,
        |err| err.to_string(),
        || std::fs::read_to_string("/proc/thread-self/net/dev").map_err(|err| err.to_string()),
    )
    .ok()?;
    taps_bytes(&text, &taps)
}

/// The sums over `taps` in a `/proc/net/dev` text, as the pod sees them; `None` when none of
/// them is listed.
fn taps_bytes(text: &str, taps: &[String]) -> Option<NetBytes> {
    let mut total: Option<NetBytes> = None;
    for line in text.lines() {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if !taps.iter().any(|tap| tap == name.trim()) {
            continue;
        }
        let fields: Vec<u64> = counters
            .split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        // receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
        let (Some(&tap_rx), Some(&tap_tx)) = (fields.first(), fields.get(8)) else {
            continue;
        };
        let sum = total.get_or_insert_with(NetBytes::default);
        sum.rx = sum.rx.saturating_add(tap_tx);
        sum.tx = sum.tx.saturating_add(tap_rx);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    5000      10    0    0    0     0          0         0     7000      12    0    0    0     0       0          0
  tap0:    1200       8    0    0    0     0          0         0     3400       9    0    0    0     0       0          0
  tap1:      10       1    0    0    0     0          0         0       20       1    0    0    0     0       0          0
";

    #[test]
    fn the_pods_rx_is_its_taps_tx_summed_over_its_taps() {
        let taps = ["tap0".to_string(), "tap1".to_string()];
        assert_eq!(
            taps_bytes(NET_DEV, &taps),
            Some(NetBytes { rx: 3420, tx: 1210 })
        );
        assert_eq!(
            taps_bytes(NET_DEV, &taps[..1]),
            Some(NetBytes { rx: 3400, tx: 1200 })
        );
        assert_eq!(taps_bytes(NET_DEV, &["tap7".to_string()]), None);
    }
}
