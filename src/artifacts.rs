//! Finds the guest kernel and the guest agent that `make` built or `make install` installed.
//!
//! Search order: the explicit path, `$PODVM_LIB_DIR`, the directory of the podvm binary, and
//! `<binary dir>/../lib/podvm` (so both `out/bin/podvm` and `PREFIX/bin/podvm` work).

use std::path::{Path, PathBuf};

/// File name of the guest kernel.
pub const KERNEL_NAME: &str = "vmlinux";
/// File name of the guest agent.
pub const AGENT_NAME: &str = "podvm-agent";

/// A missing artifact, with where podvm looked.
#[derive(Debug, thiserror::Error)]
#[error("cannot find the guest {what} `{name}`: looked in {searched}. Build it with `make`, or pass {flag}")]
pub struct ArtifactError {
    what: &'static str,
    name: &'static str,
    searched: String,
    flag: &'static str,
}

/// The directories searched, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("PODVM_LIB_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("../lib/podvm"));
        dirs.push(exe_dir);
    }
    dirs
}

fn find(
    name: &'static str,
    what: &'static str,
    flag: &'static str,
) -> Result<PathBuf, ArtifactError> {
    let dirs = search_dirs();
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .map(|path| path.canonicalize().unwrap_or(path))
        .ok_or_else(|| ArtifactError {
            what,
            name,
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            flag,
        })
}

/// The guest kernel to boot by default.
pub fn kernel() -> Result<PathBuf, ArtifactError> {
    find(KERNEL_NAME, "kernel", "--kernel PATH")
}

/// The guest agent to pack as `/init`.
pub fn agent() -> Result<PathBuf, ArtifactError> {
    find(AGENT_NAME, "agent", "--agent PATH")
}
