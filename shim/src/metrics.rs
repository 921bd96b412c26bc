//! Stats as containerd's cgroups v2 `Metrics` (type `io.containerd.cgroups.v2.Metrics`, what
//! `ctr task metrics` and CRI decode): the VM seen from the host, since the container's own
//! cgroup is inside the guest. CPU is the vCPUs' time; memory usage is the guest RAM resident
//! on the host, its limit the guest's size.

use containerd_shim::protos::cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics};
use containerd_shim::protos::protobuf::MessageField;
use podvm::runtime::SandboxStats;

/// The sandbox's figures as cgroups v2 metrics.
pub fn of(stats: &SandboxStats) -> Metrics {
    let usage_usec = stats.vcpu_time_ms.saturating_mul(1000);
    Metrics {
        cpu: MessageField::some(CPUStat {
            usage_usec,
            ..CPUStat::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: stats.guest_resident_kib.saturating_mul(1024),
            usage_limit: stats.memory_mib.saturating_mul(1 << 20),
            ..MemoryStat::default()
        }),
        ..Metrics::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_time_and_resident_memory_become_usage() {
        let metrics = of(&SandboxStats {
            vcpu_time_ms: 7,
            guest_resident_kib: 2,
            memory_mib: 256,
            ..SandboxStats::default()
        });
        assert_eq!(metrics.cpu.usage_usec, 7000);
        assert_eq!(metrics.memory.usage, 2048);
        assert_eq!(metrics.memory.usage_limit, 256 << 20);
    }
}
