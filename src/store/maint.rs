//! Store maintenance: `verify` (re-hash everything) and `gc`.

use std::collections::HashSet;
use std::fs;
use std::time::{Duration, SystemTime};

use super::{io_err, record::now, Digest, Result, Store};

/// One problem found by [`Store::verify`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// What is wrong, naming the blob or image.
    pub message: String,
}

/// What [`Store::gc`] removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Image ids removed (unused for longer than the grace period).
    pub images: Vec<Digest>,
    /// Blobs removed (referenced by no image).
    pub blobs: Vec<Digest>,
    /// Rendered trees removed (of no image).
    pub trees: usize,
    /// Stale temporary files removed.
    pub tmp: usize,
}

impl Store {
    /// Re-hashes every blob and checks that every image's blobs are present.
    pub fn verify(&self) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        for d in self.list_blobs()? {
            let f = self.open_blob(&d)?;
            let (actual, _) =
                Digest::of_reader(f).map_err(io_err("reading blob", &self.blob_path(&d)))?;
            if actual != d {
                problems.push(Problem {
                    message: format!("blob {d} is corrupt: its content hashes to {actual}"),
                });
            }
        }
        for rec in self.records()? {
            for b in rec.blobs() {
                if !self.has_blob(b) {
                    problems.push(Problem {
                        message: format!(
                            "image {} ({}) is missing blob {b}",
                            rec.id,
                            rec.names.join(", ")
                        ),
                    });
                }
            }
        }
        Ok(problems)
    }

    /// Removes images not used for `grace`, then blobs and trees no image references, and
    /// temporary files older than `grace`.
    pub fn gc(&self, grace: Duration) -> Result<GcReport> {
        let _lock = self.lock(true)?;
        let mut report = GcReport::default();
        let cutoff = now().saturating_sub(grace.as_secs());
        let mut keep_blobs = HashSet::new();
        let mut keep_trees = HashSet::new();
        for rec in self.records()? {
            if rec.last_used < cutoff {
                self.remove_record(&rec.id)?;
                report.images.push(rec.id.clone());
                continue;
            }
            keep_blobs.extend(rec.blobs().cloned());
            keep_trees.insert(rec.id.hex().to_string());
        }
        for d in self.list_blobs()? {
            if !keep_blobs.contains(&d) {
                self.remove_blob(&d)?;
                report.blobs.push(d);
            }
        }
        let trees = self.root().join("trees");
        for e in fs::read_dir(&trees).map_err(io_err("listing", &trees))? {
            let e = e.map_err(io_err("listing", &trees))?;
            if !e
                .file_name()
                .to_str()
                .is_some_and(|n| keep_trees.contains(n))
            {
                fs::remove_dir_all(e.path()).map_err(io_err("removing tree", &e.path()))?;
                report.trees += 1;
            }
        }
        let tmp = self.tmp_dir();
        let old = SystemTime::now() - grace;
        for e in fs::read_dir(&tmp).map_err(io_err("listing", &tmp))? {
            let e = e.map_err(io_err("listing", &tmp))?;
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < old);
            if stale {
                let p = e.path();
                let r = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(io_err("removing temporary file", &p))?;
                report.tmp += 1;
            }
        }
        Ok(report)
    }
}
