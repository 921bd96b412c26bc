//! The bundle's OCI runtime spec (`config.json`): read within a size bound, then translated into
//! what the podvm runtime takes (a [`ProcessSpec`], a read-only flag, the VM's size). What a VM
//! cannot honour (the host's namespaces, host devices, host bind mounts, hooks, user namespaces)
//! is refused with an error naming the spec's field, never silently dropped.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use podvm::runtime::ProcessSpec;
use podvm_protocol::Security;

/// The most `config.json` may hold; containerd writes a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Guest memory when the spec sets no limit, MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Added to the spec's memory limit for the guest kernel and agent, MiB.
pub const MEMORY_OVERHEAD_MIB: u64 = 128;
/// The most guest memory a spec may ask for, MiB.
const MAX_MEMORY_MIB: u64 = 64 << 10;
/// The most vCPUs a spec may ask for.
const MAX_CPUS: u64 = 32;
/// Mount types the agent provides in every container itself (proc, sys, dev, pts, shm, tmp):
/// the spec's entries of these types are not needed in a VM.
const GUEST_PROVIDED: [&str; 6] = ["proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup"];

/// Errors reading or translating the spec; each names the bundle or the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// config.json could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// config.json is larger than [`MAX_CONFIG_BYTES`].
    #[error("{path}: larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// config.json is not an OCI runtime spec.
    #[error("{path}: not an OCI runtime spec: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The spec asks for something a podvm VM does not do.
    #[error("OCI spec field {field}: {why}")]
    Unsupported {
        /// The field, as a JSON path.
        field: String,
        /// What is refused and why.
        why: String,
    },
}

/// What the runtime needs from the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// The container's process.
    pub process: ProcessSpec,
    /// `root.readonly`.
    pub read_only: bool,
    /// vCPUs of the VM.
    pub cpus: u8,
    /// Guest memory, MiB.
    pub memory_mib: u64,
}

/// Reads `<bundle>/config.json` (not through a symlink, at most [`MAX_CONFIG_BYTES`]).
pub fn read(bundle: &Path) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    let read_error = |source| SpecError::Read {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(SpecError::TooLarge { path });
    }
    serde_json::from_slice(&bytes).map_err(|source| SpecError::Parse { path, source })
}

fn unsupported(field: impl Into<String>, why: impl Into<String>) -> SpecError {
    SpecError::Unsupported {
        field: field.into(),
        why: why.into(),
    }
}

/// Translates the spec, refusing what a VM cannot honour.
pub fn translate(spec: &Spec) -> Result<TaskSpec, SpecError> {
    check_refused(spec)?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| unsupported("process", "missing: the task has no process"))?;
    if process.terminal().unwrap_or(false) {
        return Err(unsupported(
            "process.terminal",
            "a terminal is not supported yet (run without -t)",
        ));
    }
    let command = process.args().clone().unwrap_or_default();
    if command.is_empty() {
        return Err(unsupported("process.args", "empty: nothing to run"));
    }
    let user = process.user();
    let capabilities = process
        .capabilities()
        .as_ref()
        .map(|caps| capability_names(caps.bounding().as_ref()))
        .transpose()?;
    let cwd = process.cwd().to_string_lossy().into_owned();
    let process = ProcessSpec {
        command,
        env: process.env().clone().unwrap_or_default(),
        workdir: (!cwd.is_empty()).then_some(cwd),
        user: Some(user.uid().to_string()),
        group: Some(user.gid().to_string()),
        supplementary_gids: user.additional_gids().clone().unwrap_or_default(),
        security: podvm_security(capabilities),
        ..ProcessSpec::default()
    };
    let (cpus, memory_mib) = vm_size(spec)?;
    Ok(TaskSpec {
        process,
        read_only: spec
            .root()
            .as_ref()
            .and_then(|root| root.readonly())
            .unwrap_or(false),
        cpus,
        memory_mib,
    })
}

/// The agent's security settings: the spec's bounding set (seccomp is not applied yet).
fn podvm_security(capabilities: Option<Vec<String>>) -> Security {
    Security {
        capabilities,
        seccomp: None,
    }
}

/// The names (`CAP_CHOWN`, ...) of a capability set, sorted.
fn capability_names(
    set: Option<&oci_spec::runtime::Capabilities>,
) -> Result<Vec<String>, SpecError> {
    let mut names = Vec::new();
    for cap in set.into_iter().flatten() {
        match serde_json::to_value(cap) {
            Ok(serde_json::Value::String(name)) => names.push(name),
            _ => {
                return Err(unsupported(
                    "process.capabilities.bounding",
                    format!("cannot name capability {cap}"),
                ))
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Refuses the host's namespaces, host devices, host bind mounts, hooks and user namespaces.
fn check_refused(spec: &Spec) -> Result<(), SpecError> {
    if spec.hooks().is_some() {
        return Err(unsupported(
            "hooks",
            "OCI hooks would run on the host: not supported",
        ));
    }
    let Some(linux) = spec.linux() else {
        return Err(unsupported("linux", "missing"));
    };
    if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(unsupported(
            "linux.devices",
            "host devices cannot be passed into a VM (privileged or --device)",
        ));
    }
    if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
    {
        return Err(unsupported(
            "linux.uidMappings",
            "user namespaces are not supported",
        ));
    }
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    for (typ, what) in [
        (LinuxNamespaceType::Network, "network"),
        (LinuxNamespaceType::Pid, "pid"),
        (LinuxNamespaceType::Ipc, "ipc"),
        (LinuxNamespaceType::Mount, "mount"),
    ] {
        match namespaces.iter().find(|ns| ns.typ() == typ) {
            None => {
                return Err(unsupported(
                    "linux.namespaces",
                    format!("no {what} namespace: the host's cannot be shared with a VM"),
                ))
            }
            Some(ns) if ns.path().is_some() => {
                return Err(unsupported(
                    "linux.namespaces",
                    format!(
                        "joining the {what} namespace {} is not supported yet",
                        ns.path().as_deref().unwrap_or(Path::new("")).display()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    for (i, mount) in spec.mounts().iter().flatten().enumerate() {
        let typ = mount.typ().as_deref().unwrap_or("");
        let bind = typ == "bind"
            || mount
                .options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if bind || !GUEST_PROVIDED.contains(&typ) {
            return Err(unsupported(
                format!("mounts[{i}]"),
                format!(
                    "a {} mount at {} (host bind mounts and volumes are not supported yet)",
                    if bind { "bind" } else { typ },
                    mount.destination().display()
                ),
            ));
        }
    }
    Ok(())
}

/// The VM's vCPUs and memory: the spec's CPU quota (rounded up) and memory limit plus
/// [`MEMORY_OVERHEAD_MIB`], else one vCPU and [`DEFAULT_MEMORY_MIB`].
fn vm_size(spec: &Spec) -> Result<(u8, u64), SpecError> {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let limit = resources
        .as_ref()
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|limit| *limit > 0);
    let memory_mib = match limit {
        None => DEFAULT_MEMORY_MIB,
        Some(bytes) => {
            let mib = u64::try_from(bytes).unwrap_or(0).div_ceil(1 << 20) + MEMORY_OVERHEAD_MIB;
            if mib > MAX_MEMORY_MIB {
                return Err(unsupported(
                    "linux.resources.memory.limit",
                    format!("{bytes} bytes: more than {MAX_MEMORY_MIB} MiB"),
                ));
            }
            mib.max(DEFAULT_MEMORY_MIB)
        }
    };
    let cpu = resources.as_ref().and_then(|r| r.cpu().clone());
    let quota = cpu.as_ref().and_then(|c| c.quota()).filter(|q| *q > 0);
    let period = cpu.as_ref().and_then(|c| c.period()).filter(|p| *p > 0);
    let cpus = match (quota, period) {
        (Some(quota), Some(period)) => u64::try_from(quota).unwrap_or(0).div_ceil(period),
        _ => 1,
    };
    if cpus > MAX_CPUS {
        return Err(unsupported(
            "linux.resources.cpu.quota",
            format!("{cpus} CPUs: more than {MAX_CPUS}"),
        ));
    }
    Ok((u8::try_from(cpus).unwrap_or(1).max(1), memory_mib))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec as `ctr run` writes it (trimmed): default namespaces, mounts, caps.
    fn ctr_spec() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "user": {"uid": 1000, "gid": 100, "additionalGids": [10]},
                "args": ["sh", "-c", "echo hi; exit 3"],
                "env": ["PATH=/bin", "A=b"],
                "cwd": "/work",
                "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"]}
            },
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}
            ],
            "linux": {
                "resources": {"memory": {"limit": 104857600}, "cpu": {"quota": 150000, "period": 100000}},
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                               {"type": "mount"}, {"type": "network"}]
            }
        })
    }

    fn parse(value: serde_json::Value) -> Spec {
        serde_json::from_value(value).expect("a valid spec")
    }

    fn refusal(value: serde_json::Value) -> String {
        match translate(&parse(value)) {
            Err(SpecError::Unsupported { field, why }) => format!("{field}: {why}"),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_ctr_spec_becomes_the_containers_process_and_vm_size() {
        let task = translate(&parse(ctr_spec())).expect("supported");
        assert_eq!(task.process.command, ["sh", "-c", "echo hi; exit 3"]);
        assert_eq!(task.process.env, ["PATH=/bin", "A=b"]);
        assert_eq!(task.process.workdir.as_deref(), Some("/work"));
        assert_eq!(task.process.user.as_deref(), Some("1000"));
        assert_eq!(task.process.group.as_deref(), Some("100"));
        assert_eq!(task.process.supplementary_gids, [10]);
        assert_eq!(
            task.process.security.capabilities,
            Some(vec!["CAP_CHOWN".to_string(), "CAP_KILL".to_string()])
        );
        assert!(task.read_only);
        // 1.5 CPUs round up; 100 MiB + the overhead is below the minimum.
        assert_eq!((task.cpus, task.memory_mib), (2, DEFAULT_MEMORY_MIB));
    }

    #[test]
    fn host_namespaces_devices_bind_mounts_hooks_and_terminals_are_refused_by_field() {
        let mut host_net = ctr_spec();
        host_net["linux"]["namespaces"] =
            serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}]);
        assert!(refusal(host_net).starts_with("linux.namespaces: no network namespace"));
        let mut joined = ctr_spec();
        joined["linux"]["namespaces"][4]["path"] = "/proc/1/ns/net".into();
        assert!(refusal(joined).contains("/proc/1/ns/net"));
        let mut devices = ctr_spec();
        devices["linux"]["devices"] =
            serde_json::json!([{"path": "/dev/kvm", "type": "c", "major": 10, "minor": 232}]);
        assert!(refusal(devices).starts_with("linux.devices: "));
        let mut bind = ctr_spec();
        bind["mounts"][1] = serde_json::json!(
            {"destination": "/host", "type": "bind", "source": "/", "options": ["rbind"]});
        assert!(refusal(bind).starts_with("mounts[1]: a bind mount at /host"));
        let mut hooks = ctr_spec();
        hooks["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/true"}]});
        assert!(refusal(hooks).starts_with("hooks: "));
        let mut tty = ctr_spec();
        tty["process"]["terminal"] = true.into();
        assert!(refusal(tty).starts_with("process.terminal: "));
        let mut userns = ctr_spec();
        userns["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 1}]);
        assert!(refusal(userns).starts_with("linux.uidMappings: "));
    }

    #[test]
    fn a_config_json_past_the_bound_is_refused_before_parsing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = vec![b' '; usize::try_from(MAX_CONFIG_BYTES).expect("fits") + 1];
        std::fs::write(dir.path().join("config.json"), big).expect("write");
        assert!(matches!(read(dir.path()), Err(SpecError::TooLarge { .. })));
    }

    #[test]
    fn a_config_json_that_is_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("real.json"), ctr_spec().to_string()).expect("write");
        std::os::unix::fs::symlink("real.json", dir.path().join("config.json")).expect("link");
        let err = read(dir.path()).expect_err("a symlink");
        assert!(matches!(err, SpecError::Read { .. }), "{err}");
        std::fs::remove_file(dir.path().join("config.json")).expect("rm");
        std::fs::rename(dir.path().join("real.json"), dir.path().join("config.json")).expect("mv");
        assert!(read(dir.path()).is_ok());
    }
}
