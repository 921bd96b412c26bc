//! Detect what kind of KVM the host offers.

use std::fs::OpenOptions;
use std::path::Path;

/// The kind of KVM available on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Hardware KVM (kvm_intel or kvm_amd) and /dev/kvm opens read-write: microVMs run here.
    RealKvm,
    /// The PVM backend (kvm_pvm): stock guest kernels do not boot; use a nested L1 VM.
    Pvm,
    /// No usable KVM at all.
    None,
}

/// Classifies this host's KVM: PVM wins if `/sys/module/kvm_pvm` exists, real KVM needs
/// `kvm_intel` or `kvm_amd` loaded and `/dev/kvm` openable read-write.
pub fn host_kind() -> HostKind {
    let modules = Path::new("/sys/module");
    if modules.join("kvm_pvm").exists() {
        return HostKind::Pvm;
    }
    let hw = modules.join("kvm_intel").exists() || modules.join("kvm_amd").exists();
    let opens = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if hw && opens {
        HostKind::RealKvm
    } else {
        HostKind::None
    }
}
