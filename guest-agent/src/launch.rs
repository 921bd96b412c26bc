//! Starts a process: environment, working directory, `PATH` lookup, user and groups, pipes or a
//! pty, its own session (so signals reach its whole process group), and exit codes for commands
//! that cannot start (127 not found, 126 not executable or unknown user), as shells report them.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::{Gid, Pid, Uid};
use podvm_protocol::{
    AppLimits, BootSpec, ExecRequest, ProcessSpec, Security, Stream, EXIT_CANNOT_EXEC,
    EXIT_NOT_FOUND,
};

use crate::oom::OomWatch;
use crate::security::{self, SecurityError};
use crate::users::{self, Identity, UserError};

/// The search path every process starts with; the spec's `PATH` overrides it.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run: the parts of a boot spec or an exec request the launcher needs.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// Program and arguments.
    pub command: &'a [String],
    /// `KEY=VALUE` entries.
    pub env: &'a [String],
    /// Working directory (`/` when absent).
    pub workdir: Option<&'a str>,
    /// User name or number.
    pub user: Option<&'a str>,
    /// Group name or number.
    pub group: Option<&'a str>,
    /// Run on a pty.
    pub tty: bool,
    /// The app it belongs to (names its cgroup).
    pub app: &'a str,
    /// Resource limits: run in the app's own cgroup when any is set.
    pub limits: AppLimits,
    /// Capabilities and seccomp filter.
    pub security: &'a Security,
    /// Groups besides the user's.
    pub supplementary_gids: &'a [u32],
}

impl<'a> Job<'a> {
    /// The boot spec's process.
    pub fn from_spec(spec: &'a BootSpec) -> Self {
        Self {
            command: &spec.command,
            env: &spec.env,
            workdir: spec.workdir.as_deref(),
            user: spec.user.as_deref(),
            group: spec.group.as_deref(),
            tty: spec.tty,
            app: spec
                .rootfs
                .as_ref()
                .map_or("app", |rootfs| rootfs.app.as_str()),
            limits: spec.limits,
            security: &spec.security,
            supplementary_gids: &spec.supplementary_gids,
        }
    }

    /// The process of a container (or of an app of a pod of several apps) named `name`.
    pub fn from_process(process: &'a ProcessSpec, name: &'a str) -> Self {
        Self {
            command: &process.command,
            env: &process.env,
            workdir: process.workdir.as_deref(),
            user: process.user.as_deref(),
            group: process.group.as_deref(),
            tty: process.tty,
            app: name,
            limits: process.limits,
            security: &process.security,
            supplementary_gids: &process.supplementary_gids,
        }
    }

    /// An exec session's process, with the security settings of the app it runs in.
    pub fn from_exec(request: &'a ExecRequest, security: &'a Security) -> Self {
        Self {
            command: &request.command,
            env: &request.env,
            workdir: request.workdir.as_deref(),
            user: request.user.as_deref(),
            group: request.group.as_deref(),
            tty: request.tty,
            app: "exec",
            limits: AppLimits::default(),
            security,
            supplementary_gids: &request.supplementary_gids,
        }
    }
}

/// A started process and the agent's ends of its standard streams.
#[derive(Debug)]
pub struct Started {
    /// Its pid, which is also its process group and session id.
    pub pid: Pid,
    /// Where its standard input goes (non-blocking).
    pub stdin: File,
    /// Its output: stdout and stderr pipes, or the pty master as stdout.
    pub outputs: Vec<(Stream, File)>,
    /// The pty master, for resizing, when it runs on a terminal.
    pub terminal: Option<File>,
    /// Where the OOM killer's kills among its processes are counted.
    pub oom: OomWatch,
}

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
    /// The user or group is unknown.
    #[error(transparent)]
    User(#[from] UserError),
    /// The app's cgroup could not be set up.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The app's capabilities or seccomp filter could not be prepared.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The terminal or pipes could not be set up.
    #[error("cannot set up the standard streams ({what}): {source}")]
    Streams {
        /// The step that failed.
        what: &'static str,
        /// Why.
        source: Errno,
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
            LaunchError::NotExecutable { .. }
            | LaunchError::Workdir { .. }
            | LaunchError::User(_)
            | LaunchError::Cgroup(_)
            | LaunchError::Security(_)
            | LaunchError::Streams { .. } => EXIT_CANNOT_EXEC,
        }
    }
}

/// The process's environment: `PATH` ([`DEFAULT_PATH`]) and `HOME` (the user's home) overridden
/// by `overrides` (`KEY=VALUE` entries; entries without `=` are skipped).
pub fn environment(overrides: &[String], home: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("HOME".to_string(), home.to_string()),
    ];
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
    search_path(program, path, path, workdir, |candidate| {
        std::fs::metadata(candidate)
            .ok()
            .map(|meta| (meta.is_file(), meta.permissions().mode()))
    })
}

/// Finds the program as [`resolve`] does, but inside `root`: names with a slash relative to
/// `workdir`, others in each `path` entry. Returns the path inside the root.
pub fn resolve_in_root(
    root: &Path,
    program: &str,
    path: &str,
    workdir: &Path,
) -> Result<PathBuf, LaunchError> {
    if program.contains('/') {
        let candidate = workdir.join(program);
        return match crate::rootfs::stat_in_root(root, &candidate) {
            Ok(_) => Ok(candidate),
            Err(_) => Err(LaunchError::NoSuchFile(candidate)),
        };
    }
    let shown = format!("{path} inside {}", root.display());
    search_path(program, path, &shown, workdir, |candidate| {
        crate::rootfs::stat_in_root(root, candidate)
            .ok()
            .map(|st| (st.st_mode & libc::S_IFMT == libc::S_IFREG, st.st_mode))
    })
}

/// Looks `program` up in each `path` entry (relative entries from `workdir`, empty ones mean
/// `workdir`): the first regular file with an execute bit wins. `stat` gives (is a regular
/// file, mode) of a candidate, or `None` if it does not exist; `path_shown` names the search
/// path in the error.
pub fn search_path(
    program: &str,
    path: &str,
    path_shown: &str,
    workdir: &Path,
    stat: impl Fn(&Path) -> Option<(bool, u32)>,
) -> Result<PathBuf, LaunchError> {
    let mut not_executable = None;
    for dir in path.split(':') {
        let candidate = workdir.join(dir).join(program);
        let Some((is_file, mode)) = stat(&candidate) else {
            continue;
        };
        if !is_file {
            continue;
        }
        if mode & 0o111 != 0 {
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
            path: path_shown.to_string(),
        }),
    }
}

/// Starts `job` in its own session, as its user, with pipes or a pty. `root` is the app's root
/// directory, where its /etc/passwd and /etc/group are read.
pub fn spawn(job: &Job<'_>, root: &Path) -> Result<Started, LaunchError> {
    let Some((program, args)) = job.command.split_first() else {
        return Err(LaunchError::EmptyCommand);
    };
    let mut identity = users::resolve(root, job.user, job.group)?;
    for gid in job.supplementary_gids {
        if !identity.groups.contains(gid) {
            identity.groups.push(*gid);
        }
    }
    let workdir = PathBuf::from(job.workdir.unwrap_or("/"));
    // The app's own root (a virtio-fs share) or the agent's: then nothing is chrooted.
    let in_own_root = root != Path::new("/");
    let agent_workdir = if in_own_root {
        crate::rootfs::inside(root, &workdir)
    } else {
        workdir.clone()
    };
    std::fs::create_dir_all(&agent_workdir).map_err(|source| LaunchError::Workdir {
        dir: workdir.clone(),
        source,
    })?;
    let env = environment(job.env, &identity.home);
    let path = env
        .iter()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| value.as_str())
        .unwrap_or("");
    let resolved = if in_own_root {
        resolve_in_root(root, program, path, &workdir)?
    } else {
        resolve(program, path, &workdir)?
    };
    let exec_args = ExecArgs::new(&resolved, program, args, &env)?;
    let privileges = security::prepare(job.security)?;
    let oom_score_adj = job
        .limits
        .oom_score_adj
        .map(|adj| adj.to_string().into_bytes());
    let mut command = Command::new(&resolved);
    command
        .arg0(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(key, value)| (key, value)));
    let cgroup = crate::cgroup::prepare(job.app, &job.limits)?;
    let oom = OomWatch::start(cgroup.as_ref().map(|cgroup| cgroup.dir.as_path()));
    if let Some(cgroup) = cgroup {
        // Joins while still root, before the hooks below chroot and drop privileges.
        crate::cgroup::join_before_exec(&mut command, cgroup.procs);
    }
    if in_own_root {
        // chroot + chdir, before the hook of `before_exec` (which ends in execve) runs.
        crate::rootfs::enter(&mut command, root, &workdir);
    } else {
        command.current_dir(&workdir);
    }
    let change_ids =
        job.user.is_some() || job.group.is_some() || !job.supplementary_gids.is_empty();
    let (streams, terminal) = if job.tty {
        pty_streams(&mut command)?
    } else {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        (None, None)
    };
    before_exec(
        &mut command,
        identity,
        change_ids,
        job.tty,
        oom_score_adj,
        privileges,
        exec_args,
    );
    let mut child = command.spawn().map_err(|err| exec_error(resolved, &err))?;
    // The pty's slave ends went into the child; dropping the command closes ours, so the
    // master sees EOF (EIO) once the app and its children are gone.
    drop(command);
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("Linux pids fit in i32"));
    let (stdin, outputs) = match streams {
        Some((stdin, master)) => (stdin, vec![(Stream::Stdout, master)]),
        None => {
            let stdin = File::from(OwnedFd::from(child.stdin.take().expect("piped stdin")));
            let stdout = File::from(OwnedFd::from(child.stdout.take().expect("piped stdout")));
            let stderr = File::from(OwnedFd::from(child.stderr.take().expect("piped stderr")));
            (
                stdin,
                vec![(Stream::Stdout, stdout), (Stream::Stderr, stderr)],
            )
        }
    };
    set_nonblocking(&stdin)?;
    Ok(Started {
        pid,
        stdin,
        outputs,
        terminal,
        oom,
    })
}

/// A pty for the command: the slave becomes its stdin, stdout and stderr. Returns (the stdin
/// writer, the output reader) and the master kept for resizing, all duplicates of the master.
#[allow(clippy::type_complexity)]
fn pty_streams(command: &mut Command) -> Result<(Option<(File, File)>, Option<File>), LaunchError> {
    let streams = |what| move |source| LaunchError::Streams { what, source };
    let pty = nix::pty::openpty(None, None).map_err(streams("openpty"))?;
    let slave = File::from(pty.slave);
    let dup = |file: &File| {
        file.try_clone()
            .map_err(|err| streams("dup")(Errno::from_raw(err.raw_os_error().unwrap_or(0))))
    };
    command
        .stdin(Stdio::from(dup(&slave)?))
        .stdout(Stdio::from(dup(&slave)?))
        .stderr(Stdio::from(slave));
    let master = File::from(pty.master);
    let writer = dup(&master)?;
    let resizer = dup(&master)?;
    Ok((Some((writer, master)), Some(resizer)))
}

/// Program, argv and environment as C strings with their pointer arrays, built before the fork
/// so the child allocates nothing.
struct ExecArgs {
    program: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into the CStrings owned by the same struct, which are never
// mutated or dropped while it lives; the struct is only read, in the forked child.
unsafe impl Send for ExecArgs {}
// SAFETY: as above; nothing is mutated through a shared reference.
unsafe impl Sync for ExecArgs {}

impl ExecArgs {
    fn new(
        resolved: &Path,
        arg0: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Self, LaunchError> {
        let nul = |_| LaunchError::Streams {
            what: "a NUL byte in the command or environment",
            source: Errno::EINVAL,
        };
        let program = CString::new(resolved.as_os_str().as_bytes()).map_err(nul)?;
        let argv_strings = std::iter::once(arg0)
            .chain(args.iter().map(String::as_str))
            .map(|arg| CString::new(arg).map_err(nul))
            .collect::<Result<Vec<_>, _>>()?;
        let env_strings = env
            .iter()
            .map(|(key, value)| CString::new(format!("{key}={value}")).map_err(nul))
            .collect::<Result<Vec<_>, _>>()?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|string| string.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let argv = pointers(&argv_strings);
        let envp = pointers(&env_strings);
        let mut strings = argv_strings;
        strings.extend(env_strings);
        Ok(Self {
            program,
            _strings: strings,
            argv,
            envp,
        })
    }
}

/// In the child: writes `value` (decimal) to its own `oom_score_adj` (in the app's root, whose
/// /proc is the guest's). Allocates nothing.
fn write_oom_score_adj(value: &[u8]) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated literal path; open touches no other memory of ours.
    let fd = unsafe { libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `value` is a live slice of `value.len()` bytes; fd was just opened.
    let written = unsafe { libc::write(fd, value.as_ptr().cast(), value.len()) };
    let result = match written {
        n if n < 0 => Err(std::io::Error::last_os_error()),
        _ => Ok(()),
    };
    // SAFETY: closes the descriptor opened above, which nothing else holds.
    unsafe { libc::close(fd) };
    result
}

/// In the child, between fork and exec: a new session (its own process group), the pty as
/// controlling terminal, the capability bounding set cut (while still root), then groups, gid
/// and uid (in that order: dropping uid comes last), the seccomp filter, and the exec itself:
/// execve, not the execvp std would use, which runs files it cannot execute as shell scripts
/// instead of failing with ENOEXEC.
fn before_exec(
    command: &mut Command,
    identity: Identity,
    change_ids: bool,
    tty: bool,
    oom_score_adj: Option<Vec<u8>>,
    privileges: security::Prepared,
    exec_args: ExecArgs,
) {
    let groups: Vec<Gid> = identity
        .groups
        .iter()
        .map(|gid| Gid::from_raw(*gid))
        .collect();
    let (uid, gid) = (Uid::from_raw(identity.uid), Gid::from_raw(identity.gid));
    let hook = move || -> std::io::Result<()> {
        // Capture the whole struct (Send + Sync), not its raw-pointer fields one by one.
        let exec_args = &exec_args;
        nix::unistd::setsid()?;
        if tty {
            // SAFETY: TIOCSCTTY takes an int argument and touches no memory of ours; fd 0 is
            // the pty slave the parent installed as stdin.
            if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(adj) = &oom_score_adj {
            // First: lowering it needs CAP_SYS_RESOURCE, which the bounding set may lose.
            write_oom_score_adj(adj)?;
        }
        security::drop_bounding(&privileges)?;
        if change_ids {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
        }
        security::install_filter(&privileges)?;
        // SAFETY: program, argv and envp are NUL-terminated strings and NULL-terminated
        // pointer arrays owned by `exec_args`, alive for the call; execve only returns on error.
        unsafe {
            libc::execve(
                exec_args.program.as_ptr(),
                exec_args.argv.as_ptr(),
                exec_args.envp.as_ptr(),
            );
        }
        Err(std::io::Error::last_os_error())
    };
    // SAFETY: the hook only makes async-signal-safe system calls (setsid, ioctl, prctl,
    // setgroups, setgid, setuid, seccomp, execve) on data prepared before the fork; it
    // allocates nothing.
    unsafe {
        command.pre_exec(hook);
    }
}

fn set_nonblocking(file: &File) -> Result<(), LaunchError> {
    let streams = |source| LaunchError::Streams {
        what: "non-blocking stdin",
        source,
    };
    let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL).map_err(streams)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(streams)?;
    Ok(())
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
        let env = environment(
            &["PATH=/app/bin".into(), "FOO=a=b".into(), "BROKEN".into()],
            "/root",
        );
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
    fn programs_in_an_app_root_resolve_inside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("bin")).expect("bin");
        write_file(&root.join("bin/busybox"), 0o755);
        std::os::unix::fs::symlink("/bin/busybox", root.join("bin/sh")).expect("link");
        let found = resolve_in_root(root, "sh", "/usr/bin:/bin", Path::new("/")).expect("found");
        assert_eq!(found, Path::new("/bin/sh"));
        let err = resolve_in_root(root, "nope", "/bin", Path::new("/")).expect_err("missing");
        assert_eq!(err.exit_code(), 127);
        let err = resolve_in_root(root, "./nope", "/bin", Path::new("/")).expect_err("missing");
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
