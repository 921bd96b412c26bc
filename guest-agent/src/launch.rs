//! Starts the workload: environment, working directory, `PATH` lookup, and exit codes for
//! commands that cannot start (127 not found, 126 not executable), as shells report them.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::errno::Errno;
use podvm_protocol::{BootSpec, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND};

/// The environment every workload starts from; the boot spec's entries override it.
pub const DEFAULT_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
];

/// Why the workload did not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The spec names no program.
    #[error("command not found: the boot spec's command is empty")]
    EmptyCommand,
    /// No such program.
    #[error("command not found: {program} (searched PATH={path})")]
    NotFoundInPath {
        /// The name looked up.
        program: String,
        /// The search path.
        path: String,
    },
    /// A program given by path does not exist.
    #[error("command not found: {0} (no such file)")]
    NoSuchFile(PathBuf),
    /// The program exists but cannot be executed.
    #[error("cannot execute {program}: {reason}")]
    NotExecutable {
        /// The resolved program.
        program: PathBuf,
        /// Why.
        reason: String,
    },
    /// The working directory could not be created.
    #[error("cannot create the working directory {dir}: {source}")]
    Workdir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl LaunchError {
    /// The exit status a shell would report for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::EmptyCommand
            | LaunchError::NotFoundInPath { .. }
            | LaunchError::NoSuchFile(_) => EXIT_NOT_FOUND,
            LaunchError::NotExecutable { .. } | LaunchError::Workdir { .. } => EXIT_CANNOT_EXEC,
        }
    }
}

/// The workload's environment: [`DEFAULT_ENV`] overridden by `overrides` (`KEY=VALUE` entries;
/// entries without `=` are skipped).
pub fn environment(overrides: &[String]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = DEFAULT_ENV
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    for entry in overrides {
        let Some((key, value)) = entry.split_once('=') else {
            diag!("ignoring environment entry {entry:?}: it has no '='");
            continue;
        };
        match env.iter_mut().find(|(existing, _)| existing == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => env.push((key.to_string(), value.to_string())),
        }
    }
    env
}

/// Finds the program to execute: names with a slash are taken as they are (relative to
/// `workdir`), others are looked up in `path`.
pub fn resolve(program: &str, path: &str, workdir: &Path) -> Result<PathBuf, LaunchError> {
    if program.contains('/') {
        let resolved = workdir.join(program);
        if std::fs::symlink_metadata(&resolved).is_err() {
            return Err(LaunchError::NoSuchFile(resolved));
        }
        return Ok(resolved);
    }
    let mut not_executable = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() {
            workdir
        } else {
            Path::new(dir)
        };
        let candidate = workdir.join(dir).join(program);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if meta.permissions().mode() & 0o111 != 0 {
            return Ok(candidate);
        }
        not_executable.get_or_insert(candidate);
    }
    match not_executable {
        Some(program) => Err(LaunchError::NotExecutable {
            program,
            reason: "permission denied (no execute bit)".into(),
        }),
        None => Err(LaunchError::NotFoundInPath {
            program: program.to_string(),
            path: path.to_string(),
        }),
    }
}

/// Starts the spec's command with stdin on /dev/null and stdout and stderr on pipes.
pub fn spawn(spec: &BootSpec) -> Result<Child, LaunchError> {
    let Some((program, args)) = spec.command.split_first() else {
        return Err(LaunchError::EmptyCommand);
    };
    let workdir = PathBuf::from(spec.workdir.as_deref().unwrap_or("/"));
    let root = spec.rootfs.as_ref().map(crate::rootfs::mount_point);
    let agent_workdir = root.as_deref().map_or_else(
        || workdir.clone(),
        |root| crate::rootfs::inside(root, &workdir),
    );
    std::fs::create_dir_all(&agent_workdir).map_err(|source| LaunchError::Workdir {
        dir: workdir.clone(),
        source,
    })?;
    let env = environment(&spec.env);
    let path = env
        .iter()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| value.as_str())
        .unwrap_or("");
    let resolved = match root.as_deref() {
        Some(root) => crate::rootfs::resolve(root, program, path, &workdir)?,
        None => resolve(program, path, &workdir)?,
    };
    let mut command = Command::new(&resolved);
    match root.as_deref() {
        Some(root) => crate::rootfs::enter(&mut command, root, &workdir),
        None => drop(command.current_dir(&workdir)),
    }
    command
        .arg0(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| exec_error(resolved, &err))
}

fn exec_error(program: PathBuf, err: &std::io::Error) -> LaunchError {
    let reason = match err.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EACCES) => "permission denied".to_string(),
        Some(Errno::ENOEXEC) => {
            "not an executable format (a script without a #! line, or a binary for another machine)"
                .to_string()
        }
        Some(Errno::ENOENT) => {
            "its interpreter (the #! line or the ELF loader) does not exist".to_string()
        }
        _ => err.to_string(),
    };
    LaunchError::NotExecutable { program, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(path: &Path, mode: u32) {
        std::fs::write(path, b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn spec_env_overrides_defaults() {
        let env = environment(&["PATH=/app/bin".into(), "FOO=a=b".into(), "BROKEN".into()]);
        assert_eq!(
            env,
            vec![
                ("PATH".to_string(), "/app/bin".to_string()),
                ("HOME".to_string(), "/root".to_string()),
                ("FOO".to_string(), "a=b".to_string()),
            ]
        );
    }

    #[test]
    fn lookup_takes_the_first_executable_in_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::create_dir(&b).expect("mkdir");
        write_file(&a.join("tool"), 0o644);
        write_file(&b.join("tool"), 0o755);
        let path = format!("{}:{}", a.display(), b.display());
        let found = resolve("tool", &path, Path::new("/")).expect("found");
        assert_eq!(found, b.join("tool"));
    }

    #[test]
    fn lookup_failures_map_to_shell_codes() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_file(&dir.path().join("plain"), 0o644);
        let path = dir.path().display().to_string();
        let err = resolve("plain", &path, Path::new("/")).expect_err("not executable");
        assert_eq!(err.exit_code(), 126, "{err}");
        let err = resolve("absent", &path, Path::new("/")).expect_err("missing");
        assert_eq!(err.exit_code(), 127);
        assert!(err.to_string().contains(&format!("PATH={path}")), "{err}");
        let err = resolve("./absent", &path, dir.path()).expect_err("missing");
        assert_eq!(err.exit_code(), 127);
    }

    #[test]
    fn relative_paths_start_at_the_workdir() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_file(&dir.path().join("run.sh"), 0o755);
        let found = resolve("./run.sh", "", dir.path()).expect("found");
        assert_eq!(found, dir.path().join("./run.sh"));
    }
}
