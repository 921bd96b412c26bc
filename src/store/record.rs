//! Image records: what the store knows about one image (names, blobs, sizes, times).

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{io_err, write_atomic, Digest, Result, Store, StoreError};

/// One blob referenced by an image (its manifest, config or a layer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRef {
    /// The blob's digest.
    pub digest: Digest,
    /// Its media type as the manifest gave it.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Everything the store records about one image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image id: the digest of the image config blob.
    pub id: Digest,
    /// Names (canonical references such as `docker://host/repo:tag`) pointing at this image.
    pub names: Vec<String>,
    /// The manifest (stored as a blob too).
    pub manifest: BlobRef,
    /// The config blob.
    pub config: BlobRef,
    /// The layers, lowest first.
    pub layers: Vec<BlobRef>,
    /// When the image was first imported (seconds since the epoch).
    pub import_time: u64,
    /// When the image was last fetched or used (seconds since the epoch).
    pub last_used: u64,
}

impl ImageRecord {
    /// Total size of the image's blobs (manifest, config and compressed layers).
    pub fn size(&self) -> u64 {
        self.manifest.size + self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
    }

    /// All blobs the image references.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest.digest, &self.config.digest]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    fn record_path(&self, id: &Digest) -> std::path::PathBuf {
        self.root()
            .join("records")
            .join(format!("{}.json", id.hex()))
    }

    /// Saves a record, merging names with an existing record of the same id and taking `name`
    /// away from any other image (a name points at one image).
    pub fn save_record(&self, rec: &ImageRecord) -> Result<ImageRecord> {
        let _guard = self.lock_records()?;
        let mut merged = rec.clone();
        for mut other in self.records()? {
            if other.id == rec.id {
                merged.import_time = other.import_time;
                for n in &other.names {
                    if !merged.names.contains(n) {
                        merged.names.push(n.clone());
                    }
                }
            } else if other.names.iter().any(|n| rec.names.contains(n)) {
                other.names.retain(|n| !rec.names.contains(n));
                self.write_record(&other)?;
            }
        }
        self.write_record(&merged)?;
        Ok(merged)
    }

    fn write_record(&self, rec: &ImageRecord) -> Result<()> {
        let p = self.record_path(&rec.id);
        let data = serde_json::to_vec_pretty(rec).map_err(|e| StoreError::BadRecord {
            path: p.clone(),
            source: e,
        })?;
        write_atomic(&p, &data)
    }

    fn lock_records(&self) -> Result<super::StoreLock> {
        super::StoreLock::acquire(&self.root().join("records.lock"), true)
    }

    /// All image records, oldest import first.
    pub fn records(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root().join("records");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let e = e.map_err(io_err("listing", &dir))?;
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let data = fs::read(&p).map_err(io_err("reading", &p))?;
            let rec = serde_json::from_slice(&data)
                .map_err(|e| StoreError::BadRecord { path: p, source: e })?;
            out.push(rec);
        }
        out.sort_by(|a: &ImageRecord, b| (a.import_time, &a.id).cmp(&(b.import_time, &b.id)));
        Ok(out)
    }

    /// Finds an image by id (`sha256:<hex>`, or a hex prefix of at least 6 digits) or by one of
    /// its names; `canonical` is the query normalised as a reference, if it parses as one.
    pub fn find(&self, query: &str, canonical: Option<&str>) -> Result<ImageRecord> {
        let recs = self.records()?;
        if let Some(r) = recs.iter().find(|r| {
            r.names
                .iter()
                .any(|n| n == query || Some(n.as_str()) == canonical)
        }) {
            return Ok(r.clone());
        }
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        if hex.len() >= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<_> = recs
                .iter()
                .filter(|r| r.id.hex().starts_with(hex))
                .collect();
            match hits.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                _ => return Err(StoreError::Ambiguous(query.to_string())),
            }
        }
        Err(StoreError::NotFound(query.to_string()))
    }

    /// Removes an image record (its blobs and tree stay until `gc`).
    pub fn remove_record(&self, id: &Digest) -> Result<()> {
        let _guard = self.lock_records()?;
        let p = self.record_path(id);
        fs::remove_file(&p).map_err(io_err("removing record", &p))
    }

    /// Updates `last_used` of an image.
    pub fn touch_record(&self, id: &Digest) -> Result<()> {
        let _guard = self.lock_records()?;
        let p = self.record_path(id);
        let data = fs::read(&p).map_err(io_err("reading", &p))?;
        let mut rec: ImageRecord =
            serde_json::from_slice(&data).map_err(|e| StoreError::BadRecord {
                path: p.clone(),
                source: e,
            })?;
        rec.last_used = now();
        self.write_record(&rec)
    }
}
