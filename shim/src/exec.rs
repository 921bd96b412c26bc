//! Exec processes of the task (`ctr task exec`): the OCI process spec of an
//! ExecProcessRequest, read within bounds and translated into the runtime's
//! [`ExecConfig`]; the exec's state in the shim; and the `ProcessDetails` that name an exec in
//! Pids answers.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::Process;
use podvm::runtime::{ExecConfig, ExecProcess, Io};

use crate::phase::{Phase, StdioPaths};
use crate::stdio::FifoSource;

/// The most bytes an exec's process spec (JSON) may have.
pub const MAX_SPEC_BYTES: usize = 1 << 20;
/// The most arguments an exec's command may have.
pub const MAX_ARGS: usize = 1024;
/// The most environment entries an exec may have.
pub const MAX_ENV: usize = 1024;
/// The most bytes of one argument or environment entry.
pub const MAX_ENTRY_BYTES: usize = 32 << 10;
/// The most bytes of all arguments, environment entries and the working directory together
/// (the agent's frames carry at most 1 MiB).
pub const MAX_TOTAL_BYTES: usize = 256 << 10;
/// The most supplementary groups of an exec.
pub const MAX_GIDS: usize = 256;
/// The most exec processes a task holds at once (not yet deleted).
pub const MAX_EXECS: usize = 64;
/// The most bytes of an exec id (containerd's identifiers have at most 76).
pub const MAX_EXEC_ID: usize = 76;
/// The type of the `info` of a Pids answer that names an exec (the one containerd's runc shim
/// uses, which `ctr task ps` prints).
const PROCESS_DETAILS_TYPE: &str = "containerd.runc.v1.ProcessDetails";

/// Errors reading an exec's spec; each names the field and the bound.
#[derive(Debug, thiserror::Error)]
pub enum ExecSpecError {
    /// The exec id is empty, too long or not printable.
    #[error("exec id {0:?}: empty, longer than {MAX_EXEC_ID} bytes or not printable ASCII")]
    BadId(String),
    /// The request carried no spec.
    #[error("exec {0}: the request has no process spec")]
    Missing(String),
    /// The spec is larger than [`MAX_SPEC_BYTES`].
    #[error("exec {id}: its process spec has {len} bytes, more than {MAX_SPEC_BYTES}")]
    TooLarge {
        /// The exec.
        id: String,
        /// Its size.
        len: usize,
    },
    /// The spec is not an OCI process.
    #[error("exec {id}: not an OCI process spec: {source}")]
    Parse {
        /// The exec.
        id: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A field is out of bounds or refused.
    #[error("exec {id}: process.{field}: {why}")]
    Refused {
        /// The exec.
        id: String,
        /// The field.
        field: &'static str,
        /// Why.
        why: String,
    },
}

/// What an exec runs, from its request.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The process.
    pub config: ExecConfig,
}

/// Checks an exec id: 1 to [`MAX_EXEC_ID`] printable ASCII bytes.
pub fn check_id(exec_id: &str) -> Result<(), ExecSpecError> {
    let printable = exec_id.bytes().all(|b| b.is_ascii_graphic());
    if exec_id.is_empty() || exec_id.len() > MAX_EXEC_ID || !printable {
        return Err(ExecSpecError::BadId(exec_id.chars().take(80).collect()));
    }
    Ok(())
}

/// Reads the process spec of exec `exec_id` (`terminal`: the request's) within the bounds.
pub fn parse(exec_id: &str, spec: Option<&Any>, terminal: bool) -> Result<ExecSpec, ExecSpecError> {
    check_id(exec_id)?;
    let id = exec_id.to_string();
    let bytes = spec
        .map(|any| any.value.as_slice())
        .ok_or_else(|| ExecSpecError::Missing(id.clone()))?;
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(ExecSpecError::TooLarge {
            id,
            len: bytes.len(),
        });
    }
    let process: Process =
        serde_json::from_slice(bytes).map_err(|source| ExecSpecError::Parse {
            id: id.clone(),
            source,
        })?;
    translate(&id, &process, terminal)
}

fn refused(id: &str, field: &'static str, why: String) -> ExecSpecError {
    ExecSpecError::Refused {
        id: id.to_string(),
        field,
        why,
    }
}

/// Checks a list's count and its entries' sizes; their total bytes.
fn bounded(
    id: &str,
    field: &'static str,
    entries: &[String],
    max: usize,
) -> Result<usize, ExecSpecError> {
    if entries.len() > max {
        let why = format!("{} entries, more than {max}", entries.len());
        return Err(refused(id, field, why));
    }
    let mut total = 0usize;
    for (index, entry) in entries.iter().enumerate() {
        if entry.len() > MAX_ENTRY_BYTES {
            let why = format!(
                "entry {index} has {} bytes, more than {MAX_ENTRY_BYTES}",
                entry.len()
            );
            return Err(refused(id, field, why));
        }
        if entry.contains('\0') {
            return Err(refused(
                id,
                field,
                format!("entry {index} holds a NUL byte"),
            ));
        }
        total += entry.len();
    }
    Ok(total)
}

fn translate(id: &str, process: &Process, terminal: bool) -> Result<ExecSpec, ExecSpecError> {
    let command = process.args().clone().unwrap_or_default();
    if command.is_empty() {
        return Err(refused(id, "args", "empty: nothing to run".into()));
    }
    let env = process.env().clone().unwrap_or_default();
    let cwd = process.cwd().to_string_lossy().into_owned();
    let total = bounded(id, "args", &command, MAX_ARGS)? + bounded(id, "env", &env, MAX_ENV)?;
    if total + cwd.len() > MAX_TOTAL_BYTES {
        let why = format!(
            "args, env and cwd have {} bytes together, more than {MAX_TOTAL_BYTES}",
            total + cwd.len()
        );
        return Err(refused(id, "args", why));
    }
    if cwd.len() > MAX_ENTRY_BYTES || cwd.contains('\0') {
        return Err(refused(id, "cwd", "too long or holds a NUL byte".into()));
    }
    if process.terminal().unwrap_or(false) != terminal {
        return Err(refused(
            id,
            "terminal",
            "the spec and the request disagree".into(),
        ));
    }
    let user = process.user();
    let supplementary_gids = user.additional_gids().clone().unwrap_or_default();
    if supplementary_gids.len() > MAX_GIDS {
        let why = format!("{} groups, more than {MAX_GIDS}", supplementary_gids.len());
        return Err(refused(id, "user.additionalGids", why));
    }
    Ok(ExecSpec {
        config: ExecConfig {
            command,
            env,
            workdir: (!cwd.is_empty()).then_some(cwd),
            user: Some(user.uid().to_string()),
            group: Some(user.gid().to_string()),
            supplementary_gids,
            tty: terminal,
        },
    })
}

/// One exec process of the task.
pub struct Exec {
    /// What it runs, until Start takes it.
    pub spec: Option<ExecSpec>,
    /// The stdio paths containerd gave.
    pub stdio: StdioPaths,
    /// It runs on a terminal.
    pub terminal: bool,
    /// Where it is in its life.
    pub phase: Phase,
    /// Its outputs, until Start hands them over.
    pub io: Option<Io>,
    /// Its stdin, until Start hands it over.
    pub stdin: Option<FifoSource>,
    /// Set when it ended: its stdin source stops reading.
    pub stdin_stop: Arc<AtomicBool>,
    /// The running process.
    pub process: Option<Arc<ExecProcess>>,
}

/// The `info` of a Pids answer for exec `exec_id`: containerd's `ProcessDetails { exec_id }`
/// (protobuf field 1, a string).
pub fn process_details(exec_id: &str) -> Any {
    let mut value = vec![0x0a];
    let mut len = exec_id.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            value.push(byte);
            break;
        }
        value.push(byte | 0x80);
    }
    value.extend_from_slice(exec_id.as_bytes());
    Any {
        type_url: PROCESS_DETAILS_TYPE.to_string(),
        value,
        ..Any::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(json: &str) -> Any {
        Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: json.as_bytes().to_vec(),
            ..Any::default()
        }
    }

    fn spec(args: &[String], env: &[String]) -> Any {
        let json = serde_json::json!({
            "args": args, "env": env, "cwd": "/tmp",
            "user": {"uid": 1000, "gid": 100, "additionalGids": [10, 27]}, "terminal": false
        });
        any(&json.to_string())
    }

    #[test]
    fn a_process_spec_becomes_an_exec_config() {
        let args = vec!["sh".to_string(), "-c".into(), "echo x".into()];
        let env = vec!["PATH=/bin".to_string()];
        let parsed = parse("e1", Some(&spec(&args, &env)), false).expect("parse");
        assert_eq!(parsed.config.command, args);
        assert_eq!(parsed.config.env, env);
        assert_eq!(parsed.config.workdir.as_deref(), Some("/tmp"));
        assert_eq!(parsed.config.user.as_deref(), Some("1000"));
        assert_eq!(parsed.config.group.as_deref(), Some("100"));
        assert_eq!(parsed.config.supplementary_gids, [10, 27]);
        assert!(!parsed.config.tty);
    }

    /// Attack: an exec spec with a huge environment or argument list, meant to exhaust the
    /// shim's or the agent's memory; refused before anything starts, naming the bound.
    #[test]
    fn huge_env_or_args_are_refused() {
        let args = vec!["true".to_string()];
        let many: Vec<String> = (0..=MAX_ENV).map(|i| format!("V{i}=1")).collect();
        let err = parse("e1", Some(&spec(&args, &many)), false).expect_err("too many");
        assert!(err.to_string().contains("process.env"), "{err}");
        let big = vec![format!("V={}", "x".repeat(MAX_ENTRY_BYTES))];
        let err = parse("e1", Some(&spec(&args, &big)), false).expect_err("too big");
        assert!(err.to_string().contains("bytes, more than"), "{err}");
        let many_args: Vec<String> = (0..=MAX_ARGS).map(|i| i.to_string()).collect();
        let err = parse("e1", Some(&spec(&many_args, &[])), false).expect_err("args");
        assert!(err.to_string().contains("process.args"), "{err}");
        let total: Vec<String> = (0..10).map(|_| "y".repeat(30 << 10)).collect();
        let err = parse("e1", Some(&spec(&args, &total)), false).expect_err("total");
        assert!(err.to_string().contains("together"), "{err}");
        let huge = any(&" ".repeat(MAX_SPEC_BYTES + 1));
        let err = parse("e1", Some(&huge), false).expect_err("spec size");
        assert!(matches!(err, ExecSpecError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn bad_ids_missing_specs_and_empty_commands_are_refused() {
        assert!(check_id("").is_err());
        assert!(check_id(&"e".repeat(MAX_EXEC_ID + 1)).is_err());
        assert!(check_id("e 1").is_err());
        assert!(check_id("exec-1").is_ok());
        assert!(matches!(
            parse("e1", None, false),
            Err(ExecSpecError::Missing(_))
        ));
        let err = parse("e1", Some(&spec(&[], &[])), false).expect_err("empty");
        assert!(err.to_string().contains("nothing to run"), "{err}");
        let err = parse("e1", Some(&any("{\"args\": 3}")), false).expect_err("json");
        assert!(matches!(err, ExecSpecError::Parse { .. }), "{err}");
        let args = vec!["tty".to_string()];
        let err = parse("e1", Some(&spec(&args, &[])), true).expect_err("disagree");
        assert!(err.to_string().contains("terminal"), "{err}");
    }

    #[test]
    fn process_details_encode_the_exec_id_as_field_one() {
        let details = process_details("e1");
        assert_eq!(details.value, vec![0x0a, 2, b'e', b'1']);
        let long = "x".repeat(200);
        let details = process_details(&long);
        assert_eq!(&details.value[..3], &[0x0a, 0xc8, 0x01]);
        assert_eq!(details.value.len(), 203);
    }
}
