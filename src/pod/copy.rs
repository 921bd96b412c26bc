//! Copying directories into and out of an app's root filesystem (`run --copy-in HOST:GUEST`,
//! `--copy-out GUEST:HOST`), for one-shot jobs: sources in before the VM starts, artifacts out
//! after it ended. Modes and times are kept; owners too when copying in (as root). What comes
//! out belongs to the caller, without setuid/setgid bits or device nodes.
//!
//! The app's tree is hostile (its image and whatever the app wrote): the guest path is walked
//! from the tree's top by descriptors, never through a symlink (a link in the tree is refused,
//! not followed, so a copy cannot land in or read from the host's own files), and the copy
//! itself opens every name relative to its parent ([`crate::tree_copy`]).

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use crate::image::dirfd;
use crate::tree_copy::{self, CopyError, Fidelity};

/// Errors of a copy in or out.
#[derive(Debug, thiserror::Error)]
pub enum PodCopyError {
    /// A flag's value is not `HOST:GUEST` (or `GUEST:HOST`) with an absolute guest path.
    #[error("{flag} {value:?}: expected {form} with an absolute path in the app")]
    Syntax {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// The form expected.
        form: &'static str,
    },
    /// The guest path goes through something that is not a directory, or a symlink.
    #[error("{guest} in the app: {why}")]
    GuestPath {
        /// The path in the app.
        guest: String,
        /// Why.
        why: String,
    },
    /// The host side could not be opened or made.
    #[error("{what} {path}: {source}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// The host path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The copy failed.
    #[error("copying {from} to {to}: {source}")]
    Copy {
        /// Source.
        from: String,
        /// Destination.
        to: String,
        /// Why.
        source: CopyError,
    },
}

/// One copy: a host directory and a directory in the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    /// The host directory.
    pub host: PathBuf,
    /// The directory in the app (absolute).
    pub guest: String,
}

impl CopySpec {
    /// Parses `--copy-in HOST:GUEST`.
    pub fn copy_in(value: &str) -> Result<Self, PodCopyError> {
        let syntax = || PodCopyError::Syntax {
            flag: "--copy-in",
            value: value.to_string(),
            form: "HOST:GUEST",
        };
        let (host, guest) = value.rsplit_once(':').ok_or_else(syntax)?;
        Self::new(host, guest).ok_or_else(syntax)
    }

    /// Parses `--copy-out GUEST:HOST`.
    pub fn copy_out(value: &str) -> Result<Self, PodCopyError> {
        let syntax = || PodCopyError::Syntax {
            flag: "--copy-out",
            value: value.to_string(),
            form: "GUEST:HOST",
        };
        let (guest, host) = value.split_once(':').ok_or_else(syntax)?;
        Self::new(host, guest).ok_or_else(syntax)
    }

    fn new(host: &str, guest: &str) -> Option<Self> {
        (!host.is_empty() && guest.starts_with('/')).then(|| CopySpec {
            host: PathBuf::from(host),
            guest: guest.to_string(),
        })
    }

    /// The guest path relative to the app's root, `..` and `.` resolved lexically inside it.
    fn relative(&self) -> PathBuf {
        let mut parts: Vec<&OsStr> = Vec::new();
        for component in Path::new(&self.guest).components() {
            match component {
                Component::Normal(name) => parts.push(name),
                Component::ParentDir => {
                    parts.pop();
                }
                _ => {}
            }
        }
        parts.iter().collect()
    }
}

/// Copies the host directory's contents into the app's tree `root` at the guest path, creating
/// the missing directories of that path (mode 0755).
pub fn copy_in(root: &Path, spec: &CopySpec) -> Result<u64, PodCopyError> {
    let source = dirfd::open_root(&spec.host).map_err(|source| PodCopyError::Host {
        what: "cannot open the --copy-in directory",
        path: spec.host.clone(),
        source,
    })?;
    let target = make_guest_dir(root, spec)?;
    let copied = tree_copy::copy_into(&source, &target, Fidelity::Faithful);
    let report = copied.map_err(|source| PodCopyError::Copy {
        from: spec.host.display().to_string(),
        to: spec.guest.clone(),
        source,
    })?;
    Ok(report.entries)
}

/// Copies the guest directory's contents from the app's tree `root` into the host directory
/// (created if missing).
pub fn copy_out(root: &Path, spec: &CopySpec) -> Result<u64, PodCopyError> {
    let source = open_guest_dir(root, spec)?;
    std::fs::create_dir_all(&spec.host).map_err(|source| PodCopyError::Host {
        what: "cannot create the --copy-out directory",
        path: spec.host.clone(),
        source,
    })?;
    let target = dirfd::open_root(&spec.host).map_err(|source| PodCopyError::Host {
        what: "cannot open the --copy-out directory",
        path: spec.host.clone(),
        source,
    })?;
    // What the app made is not trusted on the host: no owners, devices or setuid bits.
    let copied = tree_copy::copy_into(&source, &target, Fidelity::Untrusted);
    let report = copied.map_err(|source| PodCopyError::Copy {
        from: spec.guest.clone(),
        to: spec.host.display().to_string(),
        source,
    })?;
    Ok(report.entries)
}

/// The guest directory, opened below `root` without following a symlink.
fn open_guest_dir(root: &Path, spec: &CopySpec) -> Result<OwnedFd, PodCopyError> {
    let top = open_app_root(root)?;
    match dirfd::open_beneath(&top, &spec.relative()) {
        Ok(Some(dir)) => Ok(dir),
        Ok(None) => Err(PodCopyError::GuestPath {
            guest: spec.guest.clone(),
            why: "missing, not a directory, or reached through a symlink (not followed)".into(),
        }),
        Err(err) => Err(PodCopyError::GuestPath {
            guest: spec.guest.clone(),
            why: err.to_string(),
        }),
    }
}

/// The guest directory, made where missing, one component at a time below `root`.
fn make_guest_dir(root: &Path, spec: &CopySpec) -> Result<OwnedFd, PodCopyError> {
    let refused = |why: String| PodCopyError::GuestPath {
        guest: spec.guest.clone(),
        why,
    };
    let mut dir = open_app_root(root)?;
    for name in spec.relative().iter() {
        match dirfd::mkdir_at(&dir, name, 0o755) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(refused(format!("cannot create {name:?}: {err}"))),
        }
        dir = dirfd::open_dir_at(&dir, name).map_err(|err| {
            refused(format!(
                "{name:?} is not a directory or is a symlink (not followed): {err}"
            ))
        })?;
    }
    Ok(dir)
}

fn open_app_root(root: &Path) -> Result<OwnedFd, PodCopyError> {
    dirfd::open_root(root).map_err(|source| PodCopyError::Host {
        what: "cannot open the app's root",
        path: root.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_an_absolute_guest_path() {
        let spec = CopySpec::copy_in("./src:/work/src").expect("in");
        assert_eq!(spec.host, PathBuf::from("./src"));
        assert_eq!(spec.guest, "/work/src");
        let spec = CopySpec::copy_out("/work/out:artifacts").expect("out");
        assert_eq!(
            (spec.guest.as_str(), spec.host.as_path()),
            ("/work/out", Path::new("artifacts"))
        );
        assert!(CopySpec::copy_in("src:relative").is_err());
        assert!(CopySpec::copy_out("nocolon").is_err());
        let clamped = CopySpec::copy_in("s:/a/../../etc").expect("in");
        assert_eq!(clamped.relative(), PathBuf::from("etc"));
    }

    #[test]
    fn sources_go_in_and_artifacts_come_out_with_their_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, src, out) = (
            dir.path().join("root"),
            dir.path().join("src"),
            dir.path().join("out"),
        );
        std::fs::create_dir_all(root.join("work")).expect("root");
        std::fs::create_dir_all(src.join("sub")).expect("src");
        std::fs::write(src.join("sub/build.sh"), "echo hi").expect("file");
        std::fs::set_permissions(
            src.join("sub/build.sh"),
            std::fs::Permissions::from_mode(0o750),
        )
        .expect("chmod");
        let spec = CopySpec::copy_in(&format!("{}:/work/src", src.display())).expect("spec");
        assert_eq!(copy_in(&root, &spec).expect("copy in"), 2);
        let copied = root.join("work/src/sub/build.sh");
        assert_eq!(std::fs::read_to_string(&copied).expect("copied"), "echo hi");
        assert_eq!(
            std::fs::metadata(&copied)
                .expect("meta")
                .permissions()
                .mode()
                & 0o7777,
            0o750
        );
        let spec = CopySpec::copy_out(&format!("/work/src:{}", out.display())).expect("spec");
        copy_out(&root, &spec).expect("copy out");
        assert_eq!(
            std::fs::read_to_string(out.join("sub/build.sh")).expect("out"),
            "echo hi"
        );
    }

    #[test]
    fn artifacts_lose_setuid_bits_and_owners_on_the_way_out() {
        // Attack: the job leaves a setuid-root program among its artifacts for the host.
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, out) = (dir.path().join("root"), dir.path().join("out"));
        std::fs::create_dir_all(root.join("work/out")).expect("root");
        let planted = root.join("work/out/sh");
        std::fs::write(&planted, "#!/bin/sh\n").expect("file");
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o6755)).expect("chmod");
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&planted, Some(nix::unistd::Uid::from_raw(1234)), None)
                .expect("chown");
        }
        let spec = CopySpec::copy_out(&format!("/work/out:{}", out.display())).expect("spec");
        copy_out(&root, &spec).expect("copy out");
        let meta = std::fs::metadata(out.join("sh")).expect("artifact");
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o755,
            "setuid/setgid dropped"
        );
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw(), "the caller's");
    }

    #[test]
    fn a_symlink_in_the_apps_tree_is_refused_never_followed() {
        // Attack: the image (or the app) makes /work a link to a host directory, so that the
        // copy-in writes into it, or the copy-out reads from it.
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, host_secret, src) = (
            dir.path().join("root"),
            dir.path().join("secret"),
            dir.path().join("src"),
        );
        std::fs::create_dir_all(&root).expect("root");
        std::fs::create_dir_all(&host_secret).expect("secret");
        std::fs::write(host_secret.join("key"), "host-only").expect("key");
        std::fs::create_dir_all(&src).expect("src");
        std::fs::write(src.join("f"), "x").expect("f");
        std::os::unix::fs::symlink(&host_secret, root.join("work")).expect("link");
        let into = CopySpec::copy_in(&format!("{}:/work/in", src.display())).expect("spec");
        let err = copy_in(&root, &into).expect_err("refused");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(
            !host_secret.join("in").exists(),
            "nothing written through the link"
        );
        let out = dir.path().join("out");
        let from = CopySpec::copy_out(&format!("/work:{}", out.display())).expect("spec");
        assert!(copy_out(&root, &from).is_err());
        assert!(!out.join("key").exists(), "nothing read through the link");
    }
}
