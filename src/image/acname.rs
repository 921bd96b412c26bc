//! appc ACNames (`^[a-z0-9]+(-[a-z0-9]+)*$`): the names of apps, volumes and mount points.
//!
//! These names come from images and flags and end up in host paths (a pod's
//! `volumes/<name>`, `logs/<name>.log`), so they are checked when they are parsed: an ACName
//! has no `/`, no `.`, cannot be empty and cannot climb out of the directory it is joined to.

/// Longest accepted name, in bytes (a path component must fit in 255).
pub const MAX_LEN: usize = 200;

/// Why a string is not an ACName.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid name: {why} (names are lower-case letters and digits joined by single '-', at most {MAX_LEN} characters)")]
pub struct NameError {
    /// The string given.
    pub value: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Checks that `value` is an ACName.
pub fn check(value: &str) -> Result<(), NameError> {
    let fail = |why| {
        Err(NameError {
            value: value.chars().take(MAX_LEN + 8).collect(),
            why,
        })
    };
    if value.is_empty() {
        return fail("it is empty");
    }
    if value.len() > MAX_LEN {
        return fail("it is too long");
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return fail(match bad {
            '/' => "it contains '/'",
            '.' => "it contains '.'",
            _ => "it contains a character other than a-z, 0-9 and '-'",
        });
    }
    if value.starts_with('-') || value.ends_with('-') || value.contains("--") {
        return fail("a '-' must stand between two letters or digits");
    }
    Ok(())
}

/// Whether `value` is an ACName.
pub fn is_valid(value: &str) -> bool {
    check(value).is_ok()
}

/// Turns any string into an ACName as rkt's `SanitizeACName` does: lower case, every run of
/// other characters one `-`, no `-` at either end; `fallback` when nothing is left.
pub fn sanitize(value: &str, fallback: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out.truncate(MAX_LEN);
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        fallback.to_string()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_reach_outside_a_directory_are_refused() {
        for bad in [
            "",
            "/tmp/target",
            "../../..",
            "..",
            ".",
            "a/b",
            "a.b",
            "A",
            "-a",
            "a-",
            "a--b",
            "a b",
            "a\0b",
            "é",
        ] {
            assert!(check(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check(&"a".repeat(MAX_LEN + 1)).is_err());
        let err = check("/root/.ssh").expect_err("refused").to_string();
        assert!(err.contains("/root/.ssh") && err.contains('/'), "{err}");
    }

    #[test]
    fn ordinary_names_pass() {
        for good in ["data", "volume-var-lib-data", "a1", "0", "web-2"] {
            check(good).expect(good);
        }
    }

    #[test]
    fn sanitize_makes_names_that_pass() {
        assert_eq!(sanitize("/var//lib/Data.d/", "x"), "var-lib-data-d");
        assert_eq!(sanitize("../..", "app"), "app");
        assert_eq!(sanitize("busy_box", "app"), "busy-box");
        let long = sanitize(&"ab-".repeat(200), "x");
        check(&long).expect("long names are cut to a valid one");
    }
}
