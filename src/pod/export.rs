//! `podvm export`: an app of an exited pod — its image with the pod's writes on top — as an
//! appc ACI (`manifest` + `rootfs/`, uncompressed tar) that `podvm run` accepts, as rkt's
//! `export` makes one.
//!
//! The tree is the app's merged root as the run saw it: the overlay of the image's tree and the
//! pod's upper directory, mounted again read-only for the export (or the private copy a run
//! without mount privilege used). Symlinks are archived as symlinks, never followed, so what
//! the app wrote cannot make the export read host files. The ACI is written to a temporary
//! file next to the destination and renamed into place only when complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::Serialize;

use super::manifest::{NameValue, RuntimeApp};
use super::rootfs;

/// Errors of `podvm export`.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The destination exists and `--overwrite` was not given.
    #[error("{0} exists: pass --overwrite to replace it")]
    Exists(PathBuf),
    /// The app's tree could not be mounted again.
    #[error("cannot mount the app's tree for the export at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: nix::errno::Errno,
    },
    /// The app's tree could not be prepared.
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    /// Writing the ACI failed.
    #[error("cannot write the ACI {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The appc image manifest of an exported app.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageManifest<'a> {
    ac_kind: &'static str,
    ac_version: &'static str,
    name: String,
    labels: Vec<NameValue>,
    app: ExportedApp<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportedApp<'a> {
    exec: &'a [String],
    user: &'a str,
    group: &'a str,
    working_directory: &'a str,
    environment: &'a [NameValue],
}

/// Writes `app` of the pod in `pod_dir` (its image tree `lower`) to `dest` as an ACI.
pub fn export_app(
    pod_dir: &Path,
    app: &RuntimeApp,
    lower: &Path,
    dest: &Path,
    overwrite: bool,
) -> Result<(), ExportError> {
    if !overwrite && std::fs::symlink_metadata(dest).is_ok() {
        return Err(ExportError::Exists(dest.to_path_buf()));
    }
    let tree = MergedTree::mount(pod_dir, &app.name, lower)?;
    let manifest = ImageManifest {
        ac_kind: "ImageManifest",
        ac_version: super::manifest::AC_VERSION,
        name: format!("podvm/exported-{}", app.name),
        labels: vec![
            label("os", "linux"),
            label("arch", "amd64"),
            label("podvm.io/exported-from", &app.image.name),
        ],
        app: ExportedApp {
            exec: &app.app.exec,
            user: &app.app.user,
            group: if app.app.group.is_empty() {
                "0"
            } else {
                &app.app.group
            },
            working_directory: &app.app.working_directory,
            environment: &app.app.environment,
        },
    };
    let write_error = |source| ExportError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let manifest = serde_json::to_vec_pretty(&manifest).map_err(|err| write_error(err.into()))?;
    let partial = partial_path(dest);
    let written =
        write_aci(&partial, &manifest, tree.path()).and_then(|()| std::fs::rename(&partial, dest));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(write_error(source));
    }
    Ok(())
}

fn label(name: &str, value: &str) -> NameValue {
    NameValue {
        name: name.into(),
        value: value.into(),
    }
}

/// `<dest>.partial`, where the ACI is written before it is renamed into place.
fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

/// The tar: `manifest`, then `rootfs/` with the tree (symlinks as symlinks).
fn write_aci(path: &Path, manifest: &[u8], tree: &Path) -> std::io::Result<()> {
    let file = BufWriter::new(File::create(path)?);
    let mut tar = tar::Builder::new(file);
    tar.follow_symlinks(false);
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "manifest", manifest)?;
    tar.append_dir_all("rootfs", tree)?;
    let mut file = tar.into_inner()?;
    file.flush()?;
    file.get_ref().sync_all()
}

/// The app's merged tree for the export: the overlay mounted again read-only at a private
/// mount point in the pod (unmounted on drop), or the run's private copy.
struct MergedTree {
    path: PathBuf,
    mounted: bool,
}

impl MergedTree {
    fn mount(pod_dir: &Path, app: &str, lower: &Path) -> Result<Self, ExportError> {
        let upper = rootfs::upper_path(pod_dir, app);
        if !upper.is_dir() {
            // The run had no mount privilege: its private copy is the app's tree.
            return Ok(MergedTree {
                path: rootfs::merged_path(pod_dir, app),
                mounted: false,
            });
        }
        let path = pod_dir.join("export").join(app);
        crate::private::create_dir_all(&path).map_err(|source| rootfs::RootfsError::Create {
            path: path.clone(),
            source,
        })?;
        // Read-only, without a work dir: nothing is written to the pod's layers.
        let options = format!(
            "lowerdir={}:{}",
            rootfs::escape(&upper),
            rootfs::escape(lower)
        );
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(
            Some("overlay"),
            &path,
            Some("overlay"),
            flags,
            Some(options.as_str()),
        )
        .map_err(|source| ExportError::Mount {
            path: path.clone(),
            source,
        })?;
        Ok(MergedTree {
            path,
            mounted: true,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MergedTree {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umount2(&self.path, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::manifest::{App, ImageRef};
    use std::collections::BTreeMap;
    use std::io::Read;

    fn app() -> RuntimeApp {
        RuntimeApp {
            name: "web".into(),
            image: ImageRef {
                name: "oci:busybox:latest".into(),
                id: "sha256:00".into(),
            },
            app: App {
                exec: vec!["/bin/sh".into()],
                user: "0".into(),
                group: String::new(),
                working_directory: "/".into(),
                environment: Vec::new(),
                isolators: Vec::new(),
                supplementary_gids: Vec::new(),
                user_annotations: Default::default(),
                user_labels: Default::default(),
            },
            read_only_root_fs: false,
            mounts: Vec::new(),
        }
    }

    /// The entries of the tar at `path`: name → content (symlinks: `-> target`).
    fn entries(path: &Path) -> BTreeMap<String, String> {
        let mut archive = tar::Archive::new(File::open(path).expect("aci"));
        let mut found = BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            let content = match entry.link_name().expect("link") {
                Some(target) => format!("-> {}", target.display()),
                None => {
                    let mut text = String::new();
                    let _ = entry.read_to_string(&mut text);
                    text
                }
            };
            found.insert(name, content);
        }
        found
    }

    #[test]
    fn the_aci_holds_the_image_with_the_pods_writes_and_deletions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pod, lower) = (dir.path().join("pod"), dir.path().join("lower"));
        std::fs::create_dir_all(lower.join("etc")).expect("lower");
        std::fs::write(lower.join("etc/kept"), "image").expect("kept");
        std::fs::write(lower.join("etc/removed"), "image").expect("removed");
        let upper = rootfs::upper_path(&pod, "web");
        std::fs::create_dir_all(upper.join("etc")).expect("upper");
        std::fs::write(upper.join("written"), "pod").expect("written");
        // The app's symlink to a host file is archived as a link, never followed.
        std::os::unix::fs::symlink("/etc/shadow", upper.join("escape")).expect("symlink");
        // overlayfs records the app's `rm` as a whiteout: a 0/0 character device.
        let whiteout = nix::sys::stat::mknod(
            &upper.join("etc/removed"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        );
        if whiteout.is_err() {
            eprintln!("skipped: cannot make a whiteout here (not root): {whiteout:?}");
            return;
        }
        let dest = dir.path().join("web.aci");
        match export_app(&pod, &app(), &lower, &dest, false) {
            Err(ExportError::Mount {
                source: nix::errno::Errno::EPERM,
                ..
            }) => {
                eprintln!("skipped: no privilege to mount an overlay here");
                return;
            }
            result => result.expect("export"),
        }
        let found = entries(&dest);
        assert_eq!(
            found.get("rootfs/etc/kept").map(String::as_str),
            Some("image")
        );
        assert_eq!(found.get("rootfs/written").map(String::as_str), Some("pod"));
        assert_eq!(
            found.get("rootfs/escape").map(String::as_str),
            Some("-> /etc/shadow")
        );
        assert!(!found.contains_key("rootfs/etc/removed"), "{found:?}");
        let manifest: serde_json::Value =
            serde_json::from_str(&found["manifest"]).expect("manifest json");
        assert_eq!(manifest["acKind"], "ImageManifest");
        assert_eq!(manifest["app"]["exec"], serde_json::json!(["/bin/sh"]));
        assert!(!pod.join("export/web").exists(), "the mount point goes");
        let again = export_app(&pod, &app(), &lower, &dest, false);
        assert!(matches!(again, Err(ExportError::Exists(_))), "{again:?}");
        export_app(&pod, &app(), &lower, &dest, true).expect("--overwrite");
    }
}
