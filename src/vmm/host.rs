//! What kind of KVM this host offers, and the errors that explain an unusable /dev/kvm.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

/// Path of the KVM device node.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// The flavour of KVM behind /dev/kvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware virtualization through kvm_intel (VMX).
    Intel,
    /// Hardware virtualization through kvm_amd (SVM).
    Amd,
    /// The PVM backend (kvm_pvm): only PVM-aware guest kernels run at speed.
    Pvm,
    /// /dev/kvm works but the backend module is not recognised.
    Unknown,
}

impl KvmKind {
    /// Short human-readable name.
    pub fn describe(self) -> &'static str {
        match self {
            KvmKind::Intel => "kvm_intel (VMX)",
            KvmKind::Amd => "kvm_amd (SVM)",
            KvmKind::Pvm => "kvm_pvm (PVM)",
            KvmKind::Unknown => "unknown backend",
        }
    }
}

/// Why /dev/kvm cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No device node.
    #[error(
        "{KVM_DEVICE} does not exist: load kvm_intel or kvm_amd (`modprobe kvm_amd`), enable \
         virtualization in the firmware, or, inside a VM, enable nested virtualization"
    )]
    NoKvm,
    /// The node exists but this user may not open it.
    #[error("no permission to open {KVM_DEVICE}: run as root or add your user to the `kvm` group")]
    NoPermission,
    /// Any other failure to open the node.
    #[error("cannot open {KVM_DEVICE}: {0}")]
    Open(io::Error),
}

/// Detects the KVM backend from the loaded modules under /sys/module.
pub fn kvm_kind() -> KvmKind {
    kvm_kind_in(Path::new("/sys/module"))
}

fn kvm_kind_in(modules: &Path) -> KvmKind {
    if modules.join("kvm_pvm").exists() {
        KvmKind::Pvm
    } else if modules.join("kvm_amd").exists() {
        KvmKind::Amd
    } else if modules.join("kvm_intel").exists() {
        KvmKind::Intel
    } else {
        KvmKind::Unknown
    }
}

/// Checks that /dev/kvm can be opened read-write.
pub fn check_kvm_access() -> Result<(), HostError> {
    open_kvm().map(drop)
}

/// Opens /dev/kvm read-write (close-on-exec), with the errors that explain a failure.
pub fn open_kvm() -> Result<std::fs::File, HostError> {
    match OpenOptions::new().read(true).write(true).open(KVM_DEVICE) {
        Ok(file) => Ok(file),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(HostError::NoKvm),
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => Err(HostError::NoPermission),
        Err(err) => Err(HostError::Open(err)),
    }
}

/// The message shown when a stock kernel would be booted on a PVM host.
pub fn pvm_explanation() -> String {
    format!(
        "this host's {KVM_DEVICE} is served by PVM (kvm_pvm), which runs only PVM-aware guest \
         kernels; podvm's stock guest kernel would be instruction-emulated and fail. Pass \
         --kernel with a PVM-aware guest kernel, or run podvm on a host with kvm_intel/kvm_amd \
         (on this machine: inside the nested harness, see `make demo`)"
    )
}

/// Total memory of the host in bytes, from /proc/meminfo.
pub fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_from_modules() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(kvm_kind_in(dir.path()), KvmKind::Unknown);
        std::fs::create_dir(dir.path().join("kvm_amd")).expect("mkdir");
        assert_eq!(kvm_kind_in(dir.path()), KvmKind::Amd);
        std::fs::create_dir(dir.path().join("kvm_pvm")).expect("mkdir");
        assert_eq!(kvm_kind_in(dir.path()), KvmKind::Pvm);
    }

    #[test]
    fn host_memory_is_known() {
        assert!(host_memory_bytes().expect("meminfo") > 0);
    }
}
