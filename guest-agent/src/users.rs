//! Who the app runs as: user and group names or numbers (as rkt's `--user` / `--group`),
//! resolved through the app root's own /etc/passwd and /etc/group.
//!
//! The files are parsed here (no NSS in a static PID 1): `name:password:uid:gid:gecos:home:shell`
//! and `name:password:gid:member,member`. The root directory is a parameter so an app's own root
//! can be passed in; lines that do not parse are skipped.

use std::path::{Path, PathBuf};

/// Errors while resolving the app's identity.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A user name that the passwd file does not list.
    #[error("unknown user {name:?}: it is not in {passwd} (use a name listed there or a number)")]
    UnknownUser {
        /// The requested name.
        name: String,
        /// The passwd file searched.
        passwd: PathBuf,
    },
    /// A group name that the group file does not list.
    #[error("unknown group {name:?}: it is not in {group} (use a name listed there or a number)")]
    UnknownGroup {
        /// The requested name.
        name: String,
        /// The group file searched.
        group: PathBuf,
    },
    /// A file that exists could not be read.
    #[error("cannot read {path} to resolve the user: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The credentials the app gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (including the primary one).
    pub groups: Vec<u32>,
    /// Home directory from passwd (`/` for a number that passwd does not list).
    pub home: String,
}

impl Identity {
    /// Root, as the agent itself runs.
    pub fn root() -> Self {
        Self {
            uid: 0,
            gid: 0,
            groups: vec![0],
            home: "/root".into(),
        }
    }
}

/// One passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// One group entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 7 || fields[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields[5].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].parse().ok()?,
                members: fields[3]
                    .split(',')
                    .filter(|member| !member.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Reads a file of the app root; a missing file reads as empty.
fn read_optional(path: &Path) -> Result<String, UserError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(UserError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Resolves `user` and `group` (names or numbers; `None` = root / the user's primary group)
/// through `root`/etc/passwd and `root`/etc/group.
pub fn resolve(
    root: &Path,
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Identity, UserError> {
    if user.is_none() && group.is_none() {
        return Ok(Identity::root());
    }
    let passwd_path = root.join("etc/passwd");
    let group_path = root.join("etc/group");
    let passwd = parse_passwd(&read_optional(&passwd_path)?);
    let groups = parse_group(&read_optional(&group_path)?);
    let user = user.unwrap_or("0");
    let entry = match passwd.iter().find(|entry| entry.name == user) {
        Some(entry) => Some(entry.clone()),
        None => match user.parse::<u32>() {
            Ok(uid) => passwd.iter().find(|entry| entry.uid == uid).cloned(),
            Err(_) => {
                return Err(UserError::UnknownUser {
                    name: user.to_string(),
                    passwd: passwd_path,
                })
            }
        },
    };
    let (uid, primary, home, name) = match &entry {
        Some(entry) => (entry.uid, entry.gid, entry.home.clone(), Some(&entry.name)),
        // A number passwd does not list: that uid, group 0, home / (as Docker and rkt do).
        None => (user.parse::<u32>().unwrap_or(0), 0, "/".to_string(), None),
    };
    let gid = match group {
        None => primary,
        Some(group) => match groups.iter().find(|entry| entry.name == group) {
            Some(entry) => entry.gid,
            None => group.parse::<u32>().map_err(|_| UserError::UnknownGroup {
                name: group.to_string(),
                group: group_path.clone(),
            })?,
        },
    };
    let mut supplementary = vec![gid];
    if let Some(name) = name {
        for entry in &groups {
            if entry.members.iter().any(|member| member == name)
                && !supplementary.contains(&entry.gid)
            {
                supplementary.push(entry.gid);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups: supplementary,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\
             # a comment line is skipped\n\
             broken:line\n\
             app:x:1000:1000:App:/home/app:/bin/sh\n\
             nobody:x:65534:65534::/nonexistent:/bin/false\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:root,app\naudio:x:29:app\nstaff:x:50:\n",
        )
        .expect("group");
        dir
    }

    #[test]
    fn nobody_asked_means_root() {
        let identity = resolve(Path::new("/nonexistent"), None, None).expect("root");
        assert_eq!(identity, Identity::root());
    }

    #[test]
    fn a_name_gives_uid_primary_group_members_and_home() {
        let dir = root();
        let identity = resolve(dir.path(), Some("app"), None).expect("app");
        assert_eq!(identity.uid, 1000);
        assert_eq!(identity.gid, 1000);
        assert_eq!(identity.groups, vec![1000, 10, 29]);
        assert_eq!(identity.home, "/home/app");
    }

    #[test]
    fn numbers_work_with_and_without_passwd_entries() {
        let dir = root();
        let known = resolve(dir.path(), Some("1000"), Some("staff")).expect("known");
        assert_eq!((known.uid, known.gid), (1000, 50));
        assert_eq!(known.home, "/home/app");
        let unknown = resolve(dir.path(), Some("4242"), Some("77")).expect("unknown number");
        assert_eq!((unknown.uid, unknown.gid), (4242, 77));
        assert_eq!(unknown.groups, vec![77]);
        assert_eq!(unknown.home, "/");
        let group_only = resolve(dir.path(), None, Some("wheel")).expect("group only");
        assert_eq!((group_only.uid, group_only.gid), (0, 10));
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let dir = root();
        let err = resolve(dir.path(), Some("ghost"), None).expect_err("unknown user");
        assert!(err.to_string().contains("unknown user \"ghost\""), "{err}");
        assert!(err.to_string().contains("etc/passwd"), "{err}");
        let err = resolve(dir.path(), Some("app"), Some("ghosts")).expect_err("unknown group");
        assert!(
            err.to_string().contains("unknown group \"ghosts\""),
            "{err}"
        );
        let empty = tempfile::tempdir().expect("tempdir");
        let err = resolve(empty.path(), Some("app"), None).expect_err("no passwd");
        assert!(err.to_string().contains("unknown user"), "{err}");
    }
}
