//! Reads the boot spec the host packed into the initramfs.

use std::path::{Path, PathBuf};

use podvm_protocol::BootSpec;

/// Errors while reading the boot spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file is missing or unreadable.
    #[error(
        "cannot read the boot spec {path}: {source} (the host must pack it into the initramfs)"
    )]
    Read {
        /// The spec file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid spec.
    #[error("the boot spec {path} is not valid JSON for this agent: {source} (host and agent from different builds?)")]
    Parse {
        /// The spec file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The spec names nothing to run.
    #[error("the boot spec {0} has an empty command: there is nothing to run")]
    EmptyCommand(PathBuf),
}

/// Loads and checks the boot spec at `path`.
pub fn load(path: &Path) -> Result<BootSpec, SpecError> {
    let bytes = std::fs::read(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &bytes)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BootSpec, SpecError> {
    let spec: BootSpec = serde_json::from_slice(bytes).map_err(|source| SpecError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if spec.apps.is_empty() && (spec.command.is_empty() || spec.command[0].is_empty()) {
        return Err(SpecError::EmptyCommand(path.to_path_buf()));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_spec_parses() {
        let spec = parse(
            Path::new("x"),
            br#"{"command":["sh","-c","true"],"env":["A=1"],"workdir":null}"#,
        )
        .expect("valid");
        assert_eq!(spec.command, ["sh", "-c", "true"]);
        assert_eq!(spec.env, ["A=1"]);
        assert_eq!(spec.workdir, None);
    }

    #[test]
    fn bad_specs_say_why() {
        let err = parse(Path::new("/podvm/boot.json"), b"{nope").expect_err("invalid");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        let err = parse(
            Path::new("/podvm/boot.json"),
            br#"{"command":[],"env":[],"workdir":null}"#,
        )
        .expect_err("empty");
        assert!(err.to_string().contains("empty command"), "{err}");
        let err = load(Path::new("/nonexistent/boot.json")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/boot.json"), "{err}");
    }
}
