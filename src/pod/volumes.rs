//! Pod volumes, as rkt has them: pod-level `--volume NAME,kind=host|empty,source=PATH,
//! readOnly=BOOL` and per-app `--mount volume=NAME,target=PATH`, recorded in the pod manifest
//! with appc's field names. In the VM each volume is one virtio-fs share: a host volume shares
//! its source directory (read-only enforced by the host too), an empty volume a fresh directory
//! in the pod (`<pod>/volumes/<name>`, removed with the pod), which starts with what the
//! image has at the path it is mounted on ([`populate`], Docker's rule for new volumes).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::acname::{self, NameError};
use crate::image::config::MountPoint;
use crate::tree_copy::{self, CopyError};

/// The directory of empty volumes inside a pod directory.
pub const VOLUMES_DIR: &str = "volumes";

/// Errors in volume and mount flags.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The flag does not parse.
    #[error("{flag} {value:?}: {why} (expected {expected})")]
    Syntax {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
        /// What is wrong.
        why: String,
        /// The accepted form.
        expected: &'static str,
    },
    /// A volume's name (from a pod manifest on disk) is not an ACName; it is never joined to a
    /// host path.
    #[error("volume name refused: {0}")]
    Name(#[from] NameError),
    /// Two volumes share a name.
    #[error("volume {0:?} is declared twice")]
    Duplicate(String),
    /// A mount names no declared volume.
    #[error("app {app}: --mount names volume {volume:?}, but no --volume declares it")]
    Unknown {
        /// The app.
        app: String,
        /// The volume.
        volume: String,
    },
    /// A host volume's source is not a directory.
    #[error("volume {name}: source {source_dir} is not a directory on this host")]
    Source {
        /// The volume.
        name: String,
        /// Its source.
        source_dir: PathBuf,
    },
    /// A new empty volume could not take the image's files.
    #[error("volume {volume}: cannot copy the image's {path} into {dir}: {source}")]
    Populate {
        /// The volume.
        volume: String,
        /// The mount path in the app.
        path: String,
        /// The volume's directory.
        dir: PathBuf,
        /// Why (boxed: the error stays small where no copy happens).
        source: Box<CopyError>,
    },
}

const VOLUME_FORM: &str = "NAME,kind=host|empty,source=PATH,readOnly=true|false";
const MOUNT_FORM: &str = "volume=NAME,target=/PATH";

/// What backs a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// A directory of the host.
    Host,
    /// A new empty directory in the pod.
    Empty,
}

/// A pod volume (appc `volumes[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Its name (an appc ACName).
    pub name: String,
    /// Host directory or empty.
    pub kind: VolumeKind,
    /// The host directory (host volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// Whether apps may only read it.
    #[serde(default)]
    pub read_only: bool,
}

/// A volume mounted into an app (appc `apps[].mounts[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The volume's name.
    pub volume: String,
    /// Absolute path inside the app.
    pub path: String,
}

/// Splits `a=b,c=d` into pairs; the first word may be a bare name.
fn pairs(text: &str) -> Vec<(&str, Option<&str>)> {
    text.split(',')
        .map(|part| match part.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (part, None),
        })
        .collect()
}

/// Parses `--volume NAME,kind=host|empty,source=PATH,readOnly=BOOL`.
pub fn parse_volume(text: &str) -> Result<Volume, VolumeError> {
    let bad = |why: String| VolumeError::Syntax {
        flag: "--volume",
        value: text.to_string(),
        why,
        expected: VOLUME_FORM,
    };
    let mut parts = pairs(text).into_iter();
    let name = match parts.next() {
        Some((name, None)) if valid_name(name) => name.to_string(),
        _ => return Err(bad("the first word must be the volume's name".into())),
    };
    let (mut kind, mut source, mut read_only) = (None, None, false);
    for (key, value) in parts {
        let value = value.ok_or_else(|| bad(format!("{key:?} has no value")))?;
        match key {
            "kind" if value == "host" => kind = Some(VolumeKind::Host),
            "kind" if value == "empty" => kind = Some(VolumeKind::Empty),
            "source" => source = Some(PathBuf::from(value)),
            "readOnly" => {
                read_only = value
                    .parse()
                    .map_err(|_| bad(format!("readOnly={value} is not true or false")))?
            }
            _ => return Err(bad(format!("unknown or bad {key}={value}"))),
        }
    }
    let kind = kind.ok_or_else(|| bad("kind= is missing".into()))?;
    match (kind, &source) {
        (VolumeKind::Host, None) => return Err(bad("a host volume needs source=".into())),
        (VolumeKind::Host, Some(path)) if !path.is_absolute() => {
            return Err(bad("source= must be an absolute path".into()))
        }
        (VolumeKind::Empty, Some(_)) => return Err(bad("an empty volume has no source".into())),
        _ => {}
    }
    Ok(Volume {
        name,
        kind,
        source,
        read_only,
    })
}

/// Parses `--mount volume=NAME,target=PATH`.
pub fn parse_mount(text: &str) -> Result<Mount, VolumeError> {
    let bad = |why: String| VolumeError::Syntax {
        flag: "--mount",
        value: text.to_string(),
        why,
        expected: MOUNT_FORM,
    };
    let (mut volume, mut path) = (None, None);
    for (key, value) in pairs(text) {
        match (key, value) {
            ("volume", Some(name)) if valid_name(name) => volume = Some(name.to_string()),
            ("target", Some(target)) if target.starts_with('/') => {
                path = Some(clamp_target(target))
            }
            _ => return Err(bad(format!("unknown or bad {key:?}"))),
        }
    }
    Ok(Mount {
        volume: volume.ok_or_else(|| bad("volume= is missing".into()))?,
        path: path.ok_or_else(|| bad("target= is missing".into()))?,
    })
}

/// `target` with `.` and `..` resolved lexically inside the app's root, as rkt does: `..` at the
/// root stays at the root, so `/dir1/../../../x` is `/x`. (The agent still refuses a target that
/// a symlink in the image takes outside the root.)
pub fn clamp_target(target: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    format!("/{}", parts.join("/"))
}

/// An appc ACName (a volume's name ends up in a host path of the pod).
fn valid_name(name: &str) -> bool {
    acname::is_valid(name)
}

/// Checks the pod's volumes and the apps' mounts (`(app, mounts)`) against them.
pub fn check<'a>(
    volumes: &[Volume],
    apps: impl IntoIterator<Item = (&'a str, &'a [Mount])>,
) -> Result<(), VolumeError> {
    for (index, volume) in volumes.iter().enumerate() {
        if volumes[..index]
            .iter()
            .any(|other| other.name == volume.name)
        {
            return Err(VolumeError::Duplicate(volume.name.clone()));
        }
        if let Some(source) = &volume.source {
            if !source.is_dir() {
                return Err(VolumeError::Source {
                    name: volume.name.clone(),
                    source_dir: source.clone(),
                });
            }
        }
    }
    for (app, mounts) in apps {
        for mount in mounts {
            if !volumes.iter().any(|volume| volume.name == mount.volume) {
                return Err(VolumeError::Unknown {
                    app: app.to_string(),
                    volume: mount.volume.clone(),
                });
            }
        }
    }
    Ok(())
}

/// rkt's rule for the image's mount points of an app: one the app already mounts something on
/// stays so; one named like a pod volume gets that volume; any other gets a new empty volume of
/// its name (with a note on stderr, as rkt prints).
pub fn add_image_mounts(
    app: &str,
    points: &[MountPoint],
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<Mount>,
) {
    for point in points {
        let same = |path: &str| path.trim_end_matches('/') == point.path.trim_end_matches('/');
        if mounts.iter().any(|mount| same(&mount.path)) {
            continue;
        }
        if !volumes.iter().any(|volume| volume.name == point.name) {
            eprintln!(
                "podvm: app {app}: no volume for the image's mount point {} ({}); using an \
                 empty volume",
                point.name, point.path
            );
            volumes.push(Volume {
                name: point.name.clone(),
                kind: VolumeKind::Empty,
                source: None,
                read_only: point.read_only,
            });
        }
        mounts.push(Mount {
            volume: point.name.clone(),
            path: point.path.clone(),
        });
    }
}

/// Fills the new empty volume `volume` (directory `dir`) with what the first app mounting it
/// has at its mount path (`apps`: each app's root tree and mounts), as Docker does for a new
/// volume; nothing when that path is no directory or is reached through a symlink.
pub fn populate(dir: &Path, volume: &str, apps: &[(&Path, &[Mount])]) -> Result<(), VolumeError> {
    let Some((root, mount)) = apps.iter().find_map(|(root, mounts)| {
        let mount = mounts.iter().find(|mount| mount.volume == volume)?;
        Some((*root, mount))
    }) else {
        return Ok(());
    };
    let failed = |source| VolumeError::Populate {
        volume: volume.to_string(),
        path: mount.path.clone(),
        dir: dir.to_path_buf(),
        source: Box::new(source),
    };
    let Some(from) = tree_copy::open_dir_below(root, Path::new(&mount.path)).map_err(failed)?
    else {
        return Ok(());
    };
    tree_copy::copy_contents(&from, dir).map_err(failed)?;
    Ok(())
}

/// The host directory shared for `volume` of the pod in `pod_dir`; an empty volume's name is
/// checked again before it becomes a path component (the manifest is read back from disk).
pub fn host_dir(pod_dir: &Path, volume: &Volume) -> Result<PathBuf, VolumeError> {
    match (&volume.kind, &volume.source) {
        (VolumeKind::Host, Some(source)) => Ok(source.clone()),
        _ => {
            acname::check(&volume.name)?;
            Ok(pod_dir.join(VOLUMES_DIR).join(&volume.name))
        }
    }
}

/// The virtio-fs tag of the pod's volume number `index`.
pub fn tag(index: usize) -> String {
    format!("vol-{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse_as_rkt_writes_them() {
        let volume = parse_volume("data,kind=host,source=/srv/data,readOnly=true").expect("ok");
        assert_eq!(volume.name, "data");
        assert_eq!(volume.kind, VolumeKind::Host);
        assert_eq!(volume.source, Some(PathBuf::from("/srv/data")));
        assert!(volume.read_only);
        let empty = parse_volume("scratch,kind=empty").expect("ok");
        assert_eq!(empty.kind, VolumeKind::Empty);
        assert!(!empty.read_only);
        assert_eq!(
            host_dir(Path::new("/pods/x"), &empty).expect("valid name"),
            Path::new("/pods/x/volumes/scratch")
        );
    }

    /// Attack: a pod manifest on disk whose empty volume is named like a path; its host
    /// directory would be outside the pod.
    #[test]
    fn a_volume_named_like_a_path_gets_no_host_directory() {
        for name in ["../../../tmp/target", "/tmp/target", "..", "a/b"] {
            let volume = Volume {
                name: name.to_string(),
                kind: VolumeKind::Empty,
                source: None,
                read_only: false,
            };
            let err = host_dir(Path::new("/pods/x"), &volume).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
            let flag = format!("{name},kind=empty");
            assert!(parse_volume(&flag).is_err(), "--volume {flag} accepted");
            let mount = format!("volume={name},target=/data");
            assert!(parse_mount(&mount).is_err(), "--mount {mount} accepted");
        }
    }

    #[test]
    fn bad_volumes_say_what_is_wrong() {
        for (text, expected) in [
            ("data,kind=host", "needs source"),
            ("data,kind=host,source=rel", "absolute"),
            ("data,kind=nfs", "kind=nfs"),
            ("data", "kind= is missing"),
            ("Data,kind=empty", "name"),
            ("data,kind=empty,readOnly=yes", "readOnly=yes"),
            ("data,kind=empty,source=/x", "no source"),
        ] {
            let err = parse_volume(text).expect_err(text);
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn image_mount_points_get_the_named_volume_or_an_empty_one() {
        let point = |name: &str, path: &str| MountPoint {
            name: name.into(),
            path: path.into(),
            read_only: false,
        };
        let points = [
            point("data", "/var/data"),
            point("cache", "/cache"),
            point("logs", "/logs/"),
        ];
        let mut volumes = vec![parse_volume("data,kind=host,source=/srv").expect("ok")];
        let mut mounts = vec![parse_mount("volume=data,target=/logs").expect("ok")];
        add_image_mounts("web", &points, &mut volumes, &mut mounts);
        let names: Vec<_> = volumes.iter().map(|v| (v.name.as_str(), v.kind)).collect();
        assert_eq!(
            names,
            [("data", VolumeKind::Host), ("cache", VolumeKind::Empty)]
        );
        let mounted: Vec<_> = mounts
            .iter()
            .map(|m| (m.volume.as_str(), m.path.as_str()))
            .collect();
        assert_eq!(
            mounted,
            [
                ("data", "/logs"),
                ("data", "/var/data"),
                ("cache", "/cache")
            ],
            "/logs was mounted already; data by name; cache empty"
        );
    }

    #[test]
    fn mounts_parse_and_must_name_a_volume() {
        let mount = parse_mount("volume=data,target=/var/data").expect("ok");
        assert_eq!(mount.volume, "data");
        assert_eq!(mount.path, "/var/data");
        assert!(parse_mount("volume=data,target=rel").is_err());
        // As rkt: `..` never leaves the app's root.
        let clamped = parse_mount("volume=data,target=/dir1/../../../x").expect("ok");
        assert_eq!(clamped.path, "/x");
        assert_eq!(clamp_target("/a/./b/../c/"), "/a/c");
        assert_eq!(clamp_target("/.."), "/");
        assert!(parse_mount("volume=data").is_err());
        let volumes = [parse_volume("data,kind=empty").expect("ok")];
        let good = [mount.clone()];
        check(&volumes, [("web", &good[..])]).expect("declared");
        let other = [parse_mount("volume=logs,target=/l").expect("ok")];
        let err = check(&volumes, [("web", &other[..])]).expect_err("undeclared");
        assert!(err.to_string().contains("no --volume declares"), "{err}");
        let twice = [volumes[0].clone(), volumes[0].clone()];
        assert!(check(&twice, []).is_err());
        let missing = [parse_volume("h,kind=host,source=/nonexistent/dir").expect("ok")];
        assert!(check(&missing, []).is_err());
    }
}
