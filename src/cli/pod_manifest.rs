//! `run` / `prepare --pod-manifest FILE`: an appc pod manifest as the pod's description, as rkt
//! takes it. The manifest is translated into the words of the command line it stands for (each
//! app as `IMAGE [APP FLAGS] [-- ARGS]`, joined by `---`; its volumes and annotations as pod
//! flags), so that one path builds every pod; what has no flag is refused, never dropped.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pod::manifest::NameValue;
use std::collections::BTreeMap;

use crate::pod::resources::{self, Isolator};
use crate::pod::security;
use crate::pod::volumes::{Mount, Volume, VolumeKind};

/// The largest pod manifest read.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Errors of `--pod-manifest`.
#[derive(Debug, thiserror::Error)]
pub enum PodManifestError {
    /// The file could not be read.
    #[error("cannot read --pod-manifest {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than podvm reads.
    #[error("--pod-manifest {path} is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not an appc pod manifest.
    #[error("--pod-manifest {path} is not an appc pod manifest: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// Something in it that podvm cannot honour.
    #[error("--pod-manifest {path}: {what}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What, and what to do.
        what: String,
    },
}

/// What a pod manifest says, as the command-line words it stands for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ManifestWords {
    /// The apps: `IMAGE [APP FLAGS] [-- ARGS] --- IMAGE ...`.
    pub apps: Vec<String>,
    /// `--volume` values.
    pub volumes: Vec<String>,
    /// `--annotation` values.
    pub annotations: Vec<String>,
    /// Pod-level `--user-annotation` values.
    pub user_annotations: Vec<String>,
    /// Pod-level `--user-label` values.
    pub user_labels: Vec<String>,
}

/// An appc pod manifest as input: what may be left out is optional.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InputManifest {
    ac_kind: String,
    apps: Vec<InputApp>,
    #[serde(default)]
    volumes: Vec<Volume>,
    #[serde(default)]
    annotations: Vec<NameValue>,
    #[serde(default)]
    user_annotations: BTreeMap<String, String>,
    #[serde(default)]
    user_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InputApp {
    name: String,
    image: InputImage,
    #[serde(default)]
    app: Option<InputAppSpec>,
    #[serde(default, rename = "readOnlyRootFS")]
    read_only_root_fs: bool,
    #[serde(default)]
    mounts: Vec<Mount>,
}

#[derive(Debug, Deserialize)]
struct InputImage {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InputAppSpec {
    #[serde(default)]
    exec: Vec<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    working_directory: Option<String>,
    #[serde(default)]
    environment: Vec<NameValue>,
    #[serde(default)]
    isolators: Vec<Isolator>,
    #[serde(default, rename = "supplementaryGIDs")]
    supplementary_gids: Vec<u32>,
    #[serde(default)]
    user_annotations: BTreeMap<String, String>,
    #[serde(default)]
    user_labels: BTreeMap<String, String>,
}

/// Reads the pod manifest at `path` and translates it.
pub fn read(path: &Path) -> Result<ManifestWords, PodManifestError> {
    let read_error = |source| PodManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut text = Vec::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(PodManifestError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let manifest: InputManifest =
        serde_json::from_slice(&text).map_err(|source| PodManifestError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    translate(&manifest).map_err(|what| PodManifestError::Unsupported {
        path: path.to_path_buf(),
        what,
    })
}

/// The words `manifest` stands for, or what in it has none.
fn translate(manifest: &InputManifest) -> Result<ManifestWords, String> {
    if manifest.ac_kind != "PodManifest" {
        return Err(format!(
            "acKind is {:?}, not \"PodManifest\"",
            manifest.ac_kind
        ));
    }
    if manifest.apps.is_empty() {
        return Err("it has no apps".into());
    }
    let mut apps = Vec::new();
    for (index, app) in manifest.apps.iter().enumerate() {
        if index > 0 {
            apps.push("---".to_string());
        }
        apps.extend(app_words(app).map_err(|why| format!("app {:?}: {why}", app.name))?);
    }
    let volumes = manifest
        .volumes
        .iter()
        .map(volume_words)
        .collect::<Result<_, _>>()?;
    let annotations = manifest
        .annotations
        .iter()
        .map(|pair| format!("{}={}", pair.name, pair.value))
        .collect();
    let pairs = |map: &BTreeMap<String, String>| -> Vec<String> {
        map.iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect()
    };
    Ok(ManifestWords {
        apps,
        volumes,
        annotations,
        user_annotations: pairs(&manifest.user_annotations),
        user_labels: pairs(&manifest.user_labels),
    })
}

/// `IMAGE [APP FLAGS] [-- ARGS]` of one app.
fn app_words(app: &InputApp) -> Result<Vec<String>, String> {
    let image = app
        .image
        .name
        .clone()
        .or_else(|| app.image.id.clone())
        .ok_or("its image has neither a name nor an id")?;
    let mut words = vec![image, format!("--name={}", app.name)];
    if app.read_only_root_fs {
        words.push("--readonly-rootfs".into());
    }
    for mount in &app.mounts {
        words.push(format!(
            "--mount=volume={},target={}",
            mount.volume, mount.path
        ));
    }
    let spec = app.app.as_ref();
    let Some(spec) = spec else { return Ok(words) };
    let optional = [
        ("--user", &spec.user),
        ("--group", &spec.group),
        ("--working-dir", &spec.working_directory),
    ];
    for (flag, value) in optional {
        if let Some(value) = value {
            words.push(format!("{flag}={value}"));
        }
    }
    for pair in &spec.environment {
        words.push(format!("--environment={}={}", pair.name, pair.value));
    }
    for isolator in &spec.isolators {
        words.push(isolator_word(isolator)?);
    }
    if !spec.supplementary_gids.is_empty() {
        let gids: Vec<String> = spec.supplementary_gids.iter().map(u32::to_string).collect();
        words.push(format!("--supplementary-gids={}", gids.join(",")));
    }
    for (flag, pairs) in [
        ("--user-annotation", &spec.user_annotations),
        ("--user-label", &spec.user_labels),
    ] {
        words.extend(
            pairs
                .iter()
                .map(|(name, value)| format!("{flag}={name}={value}")),
        );
    }
    if let Some((program, args)) = spec.exec.split_first() {
        words.push(format!("--exec={program}"));
        if !args.is_empty() {
            words.push("--".into());
            words.extend(args.iter().cloned());
        }
    }
    Ok(words)
}

/// The app flag of an isolator: resources, the capability and seccomp sets, OOM score and CPU
/// shares (the values are checked where the flags are parsed).
fn isolator_word(isolator: &Isolator) -> Result<String, String> {
    let value = &isolator.value;
    let number = || {
        value
            .number
            .map(|n| n.to_string())
            .ok_or(format!("isolator {:?} needs a number", isolator.name))
    };
    let seccomp = |mode: &str| {
        let errno = value
            .errno
            .as_ref()
            .map(|errno| format!(",errno={errno}"))
            .unwrap_or_default();
        format!("--seccomp=mode={mode}{errno},{}", value.set.join(","))
    };
    Ok(match isolator.name.as_str() {
        resources::MEMORY_ISOLATOR => format!("--memory={}", value.limit),
        resources::CPU_ISOLATOR => format!("--cpu={}", value.limit),
        resources::OOM_SCORE_ADJ_ISOLATOR => format!("--oom-score-adj={}", number()?),
        resources::CPU_SHARES_ISOLATOR => format!("--cpu-shares={}", number()?),
        security::CAPS_RETAIN_ISOLATOR => format!("--caps-retain={}", value.set.join(",")),
        security::CAPS_REMOVE_ISOLATOR => format!("--caps-remove={}", value.set.join(",")),
        security::SECCOMP_RETAIN_ISOLATOR => seccomp("retain"),
        security::SECCOMP_REMOVE_ISOLATOR => seccomp("remove"),
        other => return Err(format!("isolator {other:?} is not supported")),
    })
}

/// The `--volume` value of a pod volume.
fn volume_words(volume: &Volume) -> Result<String, String> {
    let kind = match volume.kind {
        VolumeKind::Host => "host",
        VolumeKind::Empty => "empty",
    };
    let mut text = format!("{},kind={kind}", volume.name);
    if let Some(source) = &volume.source {
        let source = source
            .to_str()
            .filter(|source| !source.contains(','))
            .ok_or_else(|| {
                format!(
                    "volume {:?}: its source {} has a comma or is not UTF-8",
                    volume.name,
                    source.display()
                )
            })?;
        text.push_str(&format!(",source={source}"));
    }
    text.push_str(&format!(",readOnly={}", volume.read_only));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(json: &str) -> Result<ManifestWords, String> {
        translate(&serde_json::from_str(json).expect("json"))
    }

    #[test]
    fn a_manifest_becomes_the_command_line_it_stands_for() {
        let got = words(
            r#"{"acKind":"PodManifest","acVersion":"0.8.11",
              "apps":[{"name":"one","image":{"name":"oci:bb:latest"},
                       "app":{"exec":["/bin/sh","-c","echo hi"],"user":"0","group":"0",
                              "environment":[{"name":"A","value":"b c"}],
                              "isolators":[{"name":"resource/memory","value":{"limit":"64Mi"}},
                                           {"name":"os/linux/capabilities-retain-set","value":{"set":["CAP_NET_ADMIN"]}},
                                           {"name":"os/linux/seccomp-remove-set","value":{"set":["stat"],"errno":"EXFULL"}},
                                           {"name":"os/linux/oom-score-adj","value":100}],
                              "supplementaryGIDs":[10,27],"userLabels":{"tier":"web"}},
                       "mounts":[{"volume":"data","path":"/data"}]},
                      {"name":"two","image":{"id":"sha256:ab"},"readOnlyRootFS":true}],
              "volumes":[{"name":"data","kind":"host","source":"/srv/d","readOnly":true}],
              "annotations":[{"name":"team","value":"ci"}]}"#,
        )
        .expect("translates");
        assert_eq!(
            got.apps,
            [
                "oci:bb:latest",
                "--name=one",
                "--mount=volume=data,target=/data",
                "--user=0",
                "--group=0",
                "--environment=A=b c",
                "--memory=64Mi",
                "--caps-retain=CAP_NET_ADMIN",
                "--seccomp=mode=remove,errno=EXFULL,stat",
                "--oom-score-adj=100",
                "--supplementary-gids=10,27",
                "--user-label=tier=web",
                "--exec=/bin/sh",
                "--",
                "-c",
                "echo hi",
                "---",
                "sha256:ab",
                "--name=two",
                "--readonly-rootfs",
            ]
        );
        assert_eq!(got.volumes, ["data,kind=host,source=/srv/d,readOnly=true"]);
        assert_eq!(got.annotations, ["team=ci"]);
    }

    #[test]
    fn what_has_no_flag_is_refused() {
        let isolator = words(
            r#"{"acKind":"PodManifest","apps":[{"name":"a","image":{"name":"x"},
              "app":{"isolators":[{"name":"os/linux/no-new-privileges","value":{"limit":"1"}}]}}]}"#,
        );
        assert!(isolator.is_err_and(|why| why.contains("os/linux/no-new-privileges")));
        let shares = words(
            r#"{"acKind":"PodManifest","apps":[{"name":"a","image":{"name":"x"},
              "app":{"isolators":[{"name":"os/linux/cpu-shares","value":{"limit":"1"}}]}}]}"#,
        );
        assert!(shares.is_err_and(|why| why.contains("needs a number")));
        let kind = words(r#"{"acKind":"ImageManifest","apps":[]}"#);
        assert!(kind.is_err_and(|why| why.contains("ImageManifest")));
        let empty = words(r#"{"acKind":"PodManifest","apps":[]}"#);
        assert!(empty.is_err_and(|why| why.contains("no apps")));
    }
}
