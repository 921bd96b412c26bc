//! Where and how to reach a running VM's agent for exec sessions: `podvm boot --exec-info FILE`
//! writes `{"cid": N, "port": P, "token": "..."}` to FILE (mode 0600: the token lets anyone run
//! commands in the VM as root) while the VM runs; `podvm exec --exec-info FILE` (and later
//! `podvm enter`) reads it.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes of randomness in a token.
const TOKEN_BYTES: usize = 32;

/// Errors around exec info files and tokens.
#[derive(Debug, thiserror::Error)]
pub enum ExecInfoError {
    /// No randomness for the token.
    #[error("cannot read /dev/urandom for the exec token: {0}")]
    Random(std::io::Error),
    /// The file could not be written.
    #[error("cannot write the exec info file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file could not be read.
    #[error(
        "cannot read the exec info file {path}: {source} (is the VM running with --exec-info?)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not exec info.
    #[error("the exec info file {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// How to reach a VM's exec service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecInfo {
    /// The guest's vsock CID.
    pub cid: u32,
    /// The agent's exec port.
    pub port: u32,
    /// The secret exec requests must present.
    pub token: String,
}

/// A fresh random token (hex).
pub fn new_token() -> Result<String, ExecInfoError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(ExecInfoError::Random)?;
    Ok(hex::encode(bytes))
}

/// Writes `info` to `path` with mode 0600 (atomically: a temp file renamed into place).
pub fn write(path: &Path, info: &ExecInfo) -> Result<(), ExecInfoError> {
    let error = |source| ExecInfoError::Write {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec(info).map_err(|err| error(err.into()))?;
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(error)?;
    file.write_all(&json).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&temp, path).map_err(error)
}

/// Reads exec info from `path`.
pub fn read(path: &Path) -> Result<ExecInfo, ExecInfoError> {
    let bytes = std::fs::read(path).map_err(|source| ExecInfoError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| ExecInfoError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn info_roundtrips_in_a_private_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exec.json");
        let info = ExecInfo {
            cid: 77,
            port: 5150,
            token: new_token().expect("token"),
        };
        assert_eq!(info.token.len(), 2 * TOKEN_BYTES);
        write(&path, &info).expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read(&path).expect("read"), info);
        assert_ne!(new_token().expect("token"), info.token);
    }

    #[test]
    fn missing_or_bad_files_say_which() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read(&dir.path().join("nope")).expect_err("missing");
        assert!(err.to_string().contains("nope"), "{err}");
        std::fs::write(dir.path().join("bad"), b"{").expect("write");
        let err = read(&dir.path().join("bad")).expect_err("bad");
        assert!(err.to_string().contains("not valid"), "{err}");
    }
}
