//! `podvm prepare`: creates a pod from images (fetching them as needed) with rkt's per-app
//! flags, leaving it `prepared` for `run-prepared`. Prints the pod's uuid.
//!
//! Grammar, as rkt: `prepare [POD FLAGS] IMAGE [APP FLAGS] [-- ARGS] [--- IMAGE [APP FLAGS] ...]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser};

use super::fetch::{options, InsecureOption};
use super::net::{NetFlags, NetFlagsError};
use super::pod_manifest::{self, PodManifestError};
use crate::image::fetch::{fetch, PullPolicy};
use crate::image::{self, ImageError, PreparedImage};
use crate::pod::lock::PodLock;
use crate::pod::manifest::{self, App, ImageRef, NameValue, PodManifest, RuntimeApp};
use crate::pod::resources::{Isolator, ResourceError};
use crate::pod::security::{self, SecurityError};
use crate::pod::status::{now, PodStatus};
use crate::pod::volumes::{self, VolumeError};
use crate::pod::{PodError, PodStore};
use crate::store::{Store, StoreError};

/// Annotation holding the pod's hostname.
pub const HOSTNAME_ANNOTATION: &str = "podvm.io/hostname";

/// Pod-level flags of `podvm prepare`.
#[derive(Debug, Clone, Args)]
pub struct PrepareArgs {
    /// Environment for every app, KEY=VALUE (repeatable); app `--environment` wins over it.
    #[arg(long = "set-env", value_name = "KEY=VALUE")]
    set_env: Vec<String>,
    /// File of KEY=VALUE lines (blank lines and `#` or `;` comments skipped) for every app, below
    /// `--set-env`.
    #[arg(long = "set-env-file", value_name = "FILE")]
    set_env_file: Option<PathBuf>,
    /// Give apps podvm's own environment, below what the image and the flags set.
    #[arg(long = "inherit-env")]
    inherit_env: bool,
    /// The pod's hostname (default: podvm-<uuid>).
    #[arg(long)]
    hostname: Option<String>,
    /// Pod annotation, NAME=VALUE (repeatable).
    #[arg(long = "annotation", value_name = "NAME=VALUE")]
    annotations: Vec<String>,
    /// A pod volume, NAME,kind=host|empty[,source=PATH][,readOnly=true|false] (repeatable); apps
    /// mount it with `--mount`.
    #[arg(long = "volume", value_name = "NAME,kind=KIND,...")]
    volumes: Vec<String>,
    /// Write the pod's uuid to this file.
    #[arg(long = "uuid-file-save", value_name = "FILE")]
    uuid_file_save: Option<PathBuf>,
    /// Security checks to skip when fetching (see `podvm fetch --help`).
    #[arg(
        long = "insecure-options",
        value_delimiter = ',',
        default_value = "none"
    )]
    insecure_options: Vec<InsecureOption>,
    /// When to contact registries: new, update, never.
    #[arg(long = "pull-policy", value_enum, default_value_t = PullPolicy::New)]
    pull_policy: PullPolicy,
    #[command(flatten)]
    net: NetFlags,
    /// An annotation of the pod, NAME=VALUE (repeatable; before the first image: after it, the
    /// app's), kept in the pod manifest and shown by `status`.
    #[arg(long = "user-annotation", value_name = "NAME=VALUE")]
    pod_user_annotations: Vec<String>,
    /// A label of the pod, NAME=VALUE (repeatable; before the first image), kept in the pod
    /// manifest and shown by `status`.
    #[arg(long = "user-label", value_name = "NAME=VALUE")]
    pod_user_labels: Vec<String>,
    /// An appc pod manifest describing the pod (its apps, volumes and annotations), instead of
    /// images with app flags (as rkt's `--pod-manifest`).
    #[arg(long = "pod-manifest", value_name = "FILE")]
    pod_manifest: Option<PathBuf>,
    /// IMAGE [APP FLAGS] [-- ARGS] [--- IMAGE ...]
    #[arg(
        required_unless_present = "pod_manifest",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE"
    )]
    apps: Vec<String>,
}

/// Per-app flags, given after each image.
#[derive(Debug, Parser)]
#[command(name = "IMAGE", no_binary_name = true)]
struct AppArgs {
    /// The image.
    image: String,
    /// App name (default: from the image name).
    #[arg(long)]
    name: Option<String>,
    /// Program to run instead of the image's.
    #[arg(long)]
    exec: Option<String>,
    /// User (name or uid) to run as.
    #[arg(long)]
    user: Option<String>,
    /// Group (name or gid) to run as; with `--user` alone, that user's primary group (from
    /// the image's /etc/passwd), as OCI images define it.
    #[arg(long)]
    group: Option<String>,
    /// Working directory.
    #[arg(long = "working-dir")]
    working_dir: Option<String>,
    /// Environment for this app, KEY=VALUE (repeatable).
    #[arg(long = "environment", value_name = "KEY=VALUE")]
    environment: Vec<String>,
    /// Make the app's root filesystem read-only.
    #[arg(long = "readonly-rootfs")]
    readonly_rootfs: bool,
    /// Memory limit of the app, e.g. 512M or 1Gi (the VM is sized to the sum of its apps').
    #[arg(long)]
    memory: Option<String>,
    /// CPU limit of the app, e.g. 500m or 2 (the VM gets the sum, rounded up, as vCPUs).
    #[arg(long)]
    cpu: Option<String>,
    /// Mount a pod volume into this app, volume=NAME,target=PATH (repeatable).
    #[arg(long = "mount", value_name = "volume=NAME,target=PATH")]
    mounts: Vec<String>,
    /// Keep only these capabilities, e.g. CAP_NET_ADMIN,CAP_CHOWN (default: rkt's set).
    #[arg(
        long = "caps-retain",
        value_name = "CAP,...",
        conflicts_with = "caps_remove"
    )]
    caps_retain: Option<String>,
    /// Remove these capabilities from rkt's default set.
    #[arg(long = "caps-remove", value_name = "CAP,...")]
    caps_remove: Option<String>,
    /// Seccomp filter: mode=retain|remove[,errno=NAME],SYSCALL,... (wildcards such as
    /// @rkt/default-whitelist; default: rkt's whitelist, other calls killed).
    #[arg(long = "seccomp", value_name = "mode=MODE,...")]
    seccomp: Option<String>,
    /// Groups the app's process is in besides its user's, by number, e.g. 10,27.
    #[arg(
        long = "supplementary-gids",
        value_name = "GID,...",
        value_delimiter = ','
    )]
    supplementary_gids: Vec<u32>,
    /// An annotation of the app, NAME=VALUE (repeatable), kept in the pod manifest.
    #[arg(long = "user-annotation", value_name = "NAME=VALUE")]
    user_annotations: Vec<String>,
    /// A label of the app, NAME=VALUE (repeatable), kept in the pod manifest.
    #[arg(long = "user-label", value_name = "NAME=VALUE")]
    user_labels: Vec<String>,
    /// The app's OOM score adjustment, -1000 (never killed) to 1000.
    #[arg(
        long = "oom-score-adj",
        value_name = "N",
        allow_negative_numbers = true
    )]
    oom_score_adj: Option<i64>,
    /// The app's CPU shares (2 to 262144, default 1024), relative to the pod's other apps.
    #[arg(long = "cpu-shares", value_name = "N")]
    cpu_shares: Option<i64>,
    /// Arguments replacing the image's (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

/// The app flags (given after each IMAGE) with their meaning, for the help of the verbs that
/// take images: clap cannot list them itself, as they are parsed per app.
pub fn app_flags_help() -> String {
    use clap::CommandFactory;
    use std::fmt::Write as _;

    let command = AppArgs::command();
    let mut text = String::from("App flags (after each IMAGE, as in rkt):\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let value = match arg.get_value_names() {
            Some(names) if arg.get_action().takes_values() => format!("={}", names.join(" ")),
            _ => String::new(),
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let _ = writeln!(text, "  --{long}{value}\n          {help}");
    }
    text.push_str("  -- ARGS\n          Arguments replacing the image's\n");
    text.push_str("  --- IMAGE [APP FLAGS] [-- ARGS]\n          Another app of the same pod\n");
    text
}

/// Errors of `podvm prepare`.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// An app's `--name` is not an ACName (it names the app's log file in the pod).
    #[error("app {index} ({image}): --name refused: {source}")]
    AppName {
        /// 1-based position of the app.
        index: usize,
        /// The image.
        image: String,
        /// What is wrong with it.
        source: crate::image::acname::NameError,
    },
    /// Bad per-app flags.
    #[error("app {index} ({image}): {message}")]
    AppFlags {
        /// 1-based position of the app.
        index: usize,
        /// The image, or the raw words.
        image: String,
        /// clap's message.
        message: String,
    },
    /// A KEY=VALUE flag without `=`.
    #[error("{flag} {value:?}: expected KEY=VALUE")]
    NotKeyValue {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
    },
    /// The `--set-env-file` could not be read.
    #[error("cannot read --set-env-file {path}: {source}")]
    EnvFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A bad `--volume` or `--mount`.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A bad `--memory` or `--cpu`.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// A bad `--caps-retain`, `--caps-remove` or `--seccomp`.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The image has no command and none was given.
    #[error("image {0} has no command: pass --exec")]
    NoCommand(String),
    /// Image store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Image failure.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Pod store failure.
    #[error(transparent)]
    Pod(#[from] PodError),
    /// Bad network flags.
    #[error(transparent)]
    Net(#[from] NetFlagsError),
    /// A bad `--pod-manifest`.
    #[error(transparent)]
    PodManifest(#[from] PodManifestError),
    /// Flags given with `--pod-manifest` that the manifest decides.
    #[error(
        "conflicting flags: --pod-manifest describes the pod; {flags} cannot be given with it"
    )]
    ConflictingFlags {
        /// The flags.
        flags: String,
    },
    /// The uuid file could not be written.
    #[error("cannot write the pod uuid to {path}: {source}")]
    UuidFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl PrepareArgs {
    /// Where `--uuid-file-save` asks the uuid to be written.
    pub fn uuid_file(&self) -> Option<&Path> {
        self.uuid_file_save.as_deref()
    }
}

impl PrepareArgs {
    /// These flags with what the pod manifest at `path` says in place of images, app flags,
    /// volumes and annotations; flags that the manifest decides are refused, as rkt does.
    fn with_pod_manifest(&self, path: &Path) -> Result<PrepareArgs, PrepareError> {
        let given = [
            ("IMAGE and app flags", !self.apps.is_empty()),
            ("--volume", !self.volumes.is_empty()),
            ("--set-env", !self.set_env.is_empty()),
            ("--set-env-file", self.set_env_file.is_some()),
            ("--inherit-env", self.inherit_env),
        ];
        let conflicting: Vec<&str> = given
            .iter()
            .filter(|(_, given)| *given)
            .map(|(flag, _)| *flag)
            .collect();
        if !conflicting.is_empty() {
            return Err(PrepareError::ConflictingFlags {
                flags: conflicting.join(", "),
            });
        }
        let words = pod_manifest::read(path)?;
        let mut args = self.clone();
        args.pod_manifest = None;
        args.apps = words.apps;
        args.volumes = words.volumes;
        args.annotations.extend(words.annotations);
        args.pod_user_annotations.extend(words.user_annotations);
        args.pod_user_labels.extend(words.user_labels);
        Ok(args)
    }
}

/// Runs `podvm prepare`.
pub fn run(data_dir: &Path, args: PrepareArgs) -> Result<ExitCode, PrepareError> {
    let uuid = prepare(data_dir, &args)?;
    if let Some(path) = &args.uuid_file_save {
        std::fs::write(path, format!("{uuid}\n")).map_err(|source| PrepareError::UuidFile {
            path: path.clone(),
            source,
        })?;
    }
    println!("{uuid}");
    Ok(ExitCode::SUCCESS)
}

/// Creates the pod and returns its uuid; on failure nothing of the pod is left behind.
pub fn prepare(data_dir: &Path, args: &PrepareArgs) -> Result<String, PrepareError> {
    prepare_locked(data_dir, args).map(|(uuid, _lock)| uuid)
}

/// [`prepare`], returning the pod's lock still held, so that `run` goes on to start the pod
/// without a moment in which another command (a `gc`) could take it.
pub fn prepare_locked(
    data_dir: &Path,
    args: &PrepareArgs,
) -> Result<(String, PodLock), PrepareError> {
    let from_manifest;
    let args = match &args.pod_manifest {
        Some(path) => {
            from_manifest = args.with_pod_manifest(path)?;
            &from_manifest
        }
        None => args,
    };
    let set_env = pod_env(args)?;
    let mut annotations = parse_pairs("--annotation", &args.annotations)?;
    annotations.push(args.net.annotation()?);
    let app_args = split_apps(&args.apps)?;
    let pods = PodStore::open(data_dir)?;
    let (embryo, held) = pods.create()?;
    let pod = pods.transition(&embryo, "prepare")?;
    let result = build_manifest(data_dir, args, &app_args, &set_env, annotations, &pod.uuid)
        .and_then(|manifest| {
            pods.write_manifest(&pod, &manifest)?;
            pods.write_status(
                &pod,
                &PodStatus {
                    created: now(),
                    ..Default::default()
                },
            )?;
            Ok(pods.transition(&pod, "prepared")?)
        });
    match result {
        Ok(prepared) => Ok((prepared.uuid, held)),
        Err(err) => {
            let _ = pods.delete(&pod);
            Err(err)
        }
    }
}

fn build_manifest(
    data_dir: &Path,
    args: &PrepareArgs,
    app_args: &[AppArgs],
    set_env: &PodEnv,
    mut annotations: Vec<NameValue>,
    uuid: &str,
) -> Result<PodManifest, PrepareError> {
    let store = Store::open(data_dir)?;
    let fetch_options = options(data_dir, &args.insecure_options, args.pull_policy);
    let mut apps: Vec<RuntimeApp> = Vec::new();
    let mut mount_points = Vec::new();
    for app in app_args {
        let record = fetch(&store, &fetch_options, &app.image)?;
        let prepared = image::prepare(&store, &record)?;
        let taken: Vec<String> = apps.iter().map(|a| a.name.clone()).collect();
        apps.push(runtime_app(app, &prepared, set_env, &taken)?);
        mount_points.push(prepared.defaults.mount_points.clone());
    }
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| format!("podvm-{uuid}"));
    annotations.push(NameValue {
        name: HOSTNAME_ANNOTATION.into(),
        value: hostname,
    });
    let mut manifest = PodManifest::new(apps, annotations);
    manifest.user_annotations = parse_map("--user-annotation", &args.pod_user_annotations)?;
    manifest.user_labels = parse_map("--user-label", &args.pod_user_labels)?;
    manifest.volumes = args
        .volumes
        .iter()
        .map(|text| volumes::parse_volume(text))
        .collect::<Result<_, _>>()?;
    for (app, points) in manifest.apps.iter_mut().zip(&mount_points) {
        volumes::add_image_mounts(&app.name, points, &mut manifest.volumes, &mut app.mounts);
    }
    volumes::check(
        &manifest.volumes,
        manifest
            .apps
            .iter()
            .map(|app| (app.name.as_str(), app.mounts.as_slice())),
    )?;
    Ok(manifest)
}

/// The environment every app gets, lowest precedence first: inherited (`--inherit-env`, marked
/// so that image values win over it), `--set-env-file`, `--set-env`.
fn pod_env(args: &PrepareArgs) -> Result<PodEnv, PrepareError> {
    let inherited = if args.inherit_env {
        std::env::vars()
            .map(|(name, value)| NameValue { name, value })
            .collect()
    } else {
        Vec::new()
    };
    let mut set = Vec::new();
    if let Some(path) = &args.set_env_file {
        let text = std::fs::read_to_string(path).map_err(|source| PrepareError::EnvFile {
            path: path.clone(),
            source,
        })?;
        let lines: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|line| !is_env_file_comment(line))
            .map(String::from)
            .collect();
        set.extend(parse_pairs("--set-env-file", &lines)?);
    }
    set.extend(parse_pairs("--set-env", &args.set_env)?);
    Ok(PodEnv { inherited, set })
}

/// Whether a `--set-env-file` line is skipped: blank, or a `#` or `;` comment (as rkt).
fn is_env_file_comment(line: &str) -> bool {
    line.is_empty() || line.starts_with('#') || line.starts_with(';')
}

/// Pod-level environment for the apps.
#[derive(Debug, Default)]
struct PodEnv {
    /// Below the image's environment.
    inherited: Vec<NameValue>,
    /// Above the image's, below the app's `--environment`.
    set: Vec<NameValue>,
}

/// One app: image defaults, then pod-level `--set-env`, then the app's own flags.
fn runtime_app(
    app: &AppArgs,
    image: &PreparedImage,
    pod_env: &PodEnv,
    taken: &[String],
) -> Result<RuntimeApp, PrepareError> {
    let defaults = &image.defaults;
    let exec = match &app.exec {
        Some(program) => std::iter::once(program.clone())
            .chain(app.args.iter().cloned())
            .collect(),
        None if app.args.is_empty() => defaults.exec.clone(),
        None => defaults
            .entrypoint
            .iter()
            .chain(app.args.iter())
            .cloned()
            .collect(),
    };
    if exec.is_empty() {
        return Err(PrepareError::NoCommand(app.image.clone()));
    }
    let mut environment: Vec<NameValue> = Vec::new();
    for entry in pod_env
        .inherited
        .iter()
        .cloned()
        .chain(defaults.env.iter().map(|(name, value)| NameValue {
            name: name.clone(),
            value: value.clone(),
        }))
        .chain(pod_env.set.iter().cloned())
        .chain(parse_pairs("--environment", &app.environment)?)
    {
        match environment
            .iter_mut()
            .find(|existing| existing.name == entry.name)
        {
            Some(existing) => existing.value = entry.value,
            None => environment.push(entry),
        }
    }
    let name = app
        .name
        .clone()
        .unwrap_or_else(|| manifest::app_name_from_image(&app.image));
    Ok(RuntimeApp {
        name: manifest::unique_name(name, taken),
        image: ImageRef {
            name: app.image.clone(),
            id: image.record.id.to_string(),
        },
        app: App {
            exec,
            user: app.user.clone().unwrap_or_else(|| defaults.user.clone()),
            group: match (&app.group, &app.user) {
                (Some(group), _) => group.clone(),
                (None, Some(_)) => String::new(),
                (None, None) => defaults.group.clone(),
            },
            working_directory: app
                .working_dir
                .clone()
                .unwrap_or_else(|| defaults.working_dir.clone()),
            environment,
            isolators: isolators(app)?,
            supplementary_gids: app.supplementary_gids.clone(),
            user_annotations: parse_map("--user-annotation", &app.user_annotations)?,
            user_labels: parse_map("--user-label", &app.user_labels)?,
        },
        read_only_root_fs: app.readonly_rootfs,
        mounts: app
            .mounts
            .iter()
            .map(|text| volumes::parse_mount(text))
            .collect::<Result<_, _>>()?,
    })
}

/// The app's `--memory`, `--cpu`, `--oom-score-adj`, `--cpu-shares`, capability and seccomp
/// flags as appc isolators.
fn isolators(app: &AppArgs) -> Result<Vec<Isolator>, PrepareError> {
    let memory = app.memory.as_deref().map(Isolator::memory);
    let cpu = app.cpu.as_deref().map(Isolator::cpu);
    let oom = app.oom_score_adj.map(Isolator::oom_score_adj);
    let shares = app.cpu_shares.map(Isolator::cpu_shares);
    let mut isolators: Vec<Isolator> = memory
        .into_iter()
        .chain(cpu)
        .chain(oom)
        .chain(shares)
        .collect::<Result<_, _>>()?;
    let retain = app
        .caps_retain
        .as_deref()
        .map(|v| security::caps_isolator(true, v));
    let remove = app
        .caps_remove
        .as_deref()
        .map(|v| security::caps_isolator(false, v));
    let seccomp = app.seccomp.as_deref().map(security::seccomp_isolator);
    for isolator in retain.into_iter().chain(remove).chain(seccomp) {
        isolators.push(isolator?);
    }
    Ok(isolators)
}

/// Splits the raw words at `---` and parses each app's flags.
fn split_apps(words: &[String]) -> Result<Vec<AppArgs>, PrepareError> {
    words
        .split(|word| word == "---")
        .enumerate()
        .map(|(index, segment)| {
            let app = AppArgs::try_parse_from(segment).map_err(|err| PrepareError::AppFlags {
                index: index + 1,
                image: segment.first().cloned().unwrap_or_default(),
                message: err.render().to_string().trim().to_string(),
            })?;
            if let Some(name) = &app.name {
                crate::image::acname::check(name).map_err(|source| PrepareError::AppName {
                    index: index + 1,
                    image: app.image.clone(),
                    source,
                })?;
            }
            Ok(app)
        })
        .collect()
}

/// NAME=VALUE flags as a map (a later NAME wins).
fn parse_map(
    flag: &'static str,
    values: &[String],
) -> Result<std::collections::BTreeMap<String, String>, PrepareError> {
    Ok(parse_pairs(flag, values)?
        .into_iter()
        .map(|pair| (pair.name, pair.value))
        .collect())
}

fn parse_pairs(flag: &'static str, values: &[String]) -> Result<Vec<NameValue>, PrepareError> {
    values
        .iter()
        .map(|value| match value.split_once('=') {
            Some((name, val)) if !name.is_empty() => Ok(NameValue {
                name: name.into(),
                value: val.into(),
            }),
            _ => Err(PrepareError::NotKeyValue {
                flag,
                value: value.clone(),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn apps_split_at_triple_dash_with_their_own_flags_and_args() {
        let apps = split_apps(&words(
            "img1 --exec /bin/echo --user app -- hello world --- img2 --name db",
        ))
        .expect("parse");
        assert_eq!(apps.len(), 2);
        assert_eq!(apps[0].image, "img1");
        assert_eq!(apps[0].exec.as_deref(), Some("/bin/echo"));
        assert_eq!(apps[0].user.as_deref(), Some("app"));
        assert_eq!(apps[0].args, vec!["hello", "world"]);
        assert_eq!(apps[1].name.as_deref(), Some("db"));
    }

    #[test]
    fn bad_app_flags_name_the_app() {
        let err = split_apps(&words("img1 --- img2 --bogus")).expect_err("bogus flag");
        let text = err.to_string();
        assert!(text.starts_with("app 2 (img2)"), "{text}");
        assert!(text.contains("--bogus"), "{text}");
    }

    #[test]
    fn key_value_pairs_are_checked() {
        assert!(parse_pairs("--set-env", &["A=1".into(), "B=".into()]).is_ok());
        let err = parse_pairs("--set-env", &["NOPE".into()]).expect_err("no =");
        assert_eq!(err.to_string(), "--set-env \"NOPE\": expected KEY=VALUE");
    }
}
