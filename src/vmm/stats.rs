//! Memory accounting of the VMM process: how much of its resident memory is guest RAM and how
//! much is the VMM's own overhead (read from /proc/self/smaps and /proc/self/status).

use serde::Serialize;
use vm_memory::{GuestMemory, GuestMemoryMmap};

/// Memory figures taken just before the VM is torn down.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VmStats {
    /// Peak resident set of the whole podvm process (VmHWM), KiB.
    pub process_peak_rss_kib: u64,
    /// Current resident set of the whole podvm process (VmRSS), KiB.
    pub process_rss_kib: u64,
    /// Guest RAM pages the guest touched (resident in the guest mappings), KiB.
    pub guest_resident_kib: u64,
    /// `process_rss_kib - guest_resident_kib`: what the VMM itself costs, KiB.
    pub vmm_overhead_kib: u64,
    /// How the guest ended: the state of the vCPU whose exit ended it (see `vcpu.rs`); not
    /// part of the figures.
    #[serde(skip)]
    pub guest_end: Option<String>,
}

/// Measures the process and the guest mappings of `memory`.
pub fn measure(memory: &GuestMemoryMmap) -> VmStats {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let guest_starts: Vec<u64> = memory.iter().map(|region| region.as_ptr() as u64).collect();
    let process_rss_kib = status_field(&status, "VmRSS:");
    let guest_resident_kib = guest_rss_kib(&smaps, &guest_starts);
    VmStats {
        process_peak_rss_kib: status_field(&status, "VmHWM:"),
        process_rss_kib,
        guest_resident_kib,
        vmm_overhead_kib: process_rss_kib.saturating_sub(guest_resident_kib),
        guest_end: None,
    }
}

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// Sums the `Rss:` of the smaps entries whose mapping starts at one of `starts`.
fn guest_rss_kib(smaps: &str, starts: &[u64]) -> u64 {
    let mut total = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some(range) = line
            .split_whitespace()
            .next()
            .filter(|field| field.contains('-'))
        {
            if let Some(start) = range
                .split('-')
                .next()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
            {
                in_guest = starts.contains(&start);
                continue;
            }
        }
        if in_guest {
            if let Some(rest) = line.strip_prefix("Rss:") {
                total += rest
                    .split_whitespace()
                    .next()
                    .and_then(|kib| kib.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_and_status() {
        let smaps = "7f00-7f10 rw-p 0 00:00 0\nSize: 64 kB\nRss: 12 kB\n\
                     8f00-8f10 rw-p 0 00:00 0\nRss: 5 kB\n";
        assert_eq!(guest_rss_kib(smaps, &[0x7f00]), 12);
        assert_eq!(
            status_field("VmHWM:\t  2048 kB\nVmRSS: 1024 kB\n", "VmHWM:"),
            2048
        );
    }

    #[test]
    fn touched_guest_memory_is_counted() {
        use vm_memory::{Bytes, GuestAddress};
        let memory = crate::vmm::memory::create(64).expect("alloc");
        memory
            .write_slice(&vec![1u8; 8 << 20], GuestAddress(0))
            .expect("touch");
        let stats = measure(&memory);
        assert!(stats.guest_resident_kib >= 8 * 1024, "{stats:?}");
        assert!(stats.process_rss_kib >= stats.guest_resident_kib);
    }
}
