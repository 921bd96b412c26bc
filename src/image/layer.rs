//! Applying layer tarballs to a rootfs: decompression by magic bytes, OCI whiteouts, path
//! safety, limits against decompression bombs.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::safepath::{entry_components, resolve_dir, symlink_escapes};

/// Errors applying a layer. Every variant names the image and the entry.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The entry is unsafe; the image is rejected.
    #[error("image {image}: layer {layer}: unsafe entry {entry:?}: {why}; refusing the image")]
    Unsafe {
        /// Image name.
        image: String,
        /// Layer digest.
        layer: String,
        /// Entry name.
        entry: String,
        /// What is wrong.
        why: String,
    },
    /// A limit was exceeded (decompression bomb or absurd image).
    #[error("image {image}: layer {layer}: entry {entry:?}: {why} (raise it with {var} if the image is legitimate)")]
    Limit {
        /// Image name.
        image: String,
        /// Layer digest.
        layer: String,
        /// Entry name.
        entry: String,
        /// Which limit.
        why: String,
        /// Environment variable raising the limit.
        var: &'static str,
    },
    /// An I/O error writing the entry or reading the layer.
    #[error("image {image}: layer {layer}: entry {entry:?}: {what}: {source}")]
    Io {
        /// Image name.
        image: String,
        /// Layer digest.
        layer: String,
        /// Entry name.
        entry: String,
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
}

/// Bounds on what a whole image may expand to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total bytes of file content over all layers.
    pub max_bytes: u64,
    /// Total number of entries over all layers.
    pub max_entries: u64,
    /// A layer may expand to at most this many times its compressed size (or 1 GiB, whichever
    /// is more): beyond that it is taken for a decompression bomb.
    pub max_ratio: u64,
}

impl Limits {
    /// Defaults (16 GiB, 2 million entries), overridable by `PODVM_IMAGE_MAX_BYTES` and
    /// `PODVM_IMAGE_MAX_ENTRIES`.
    pub fn from_env() -> Limits {
        let get = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        Limits {
            max_bytes: get("PODVM_IMAGE_MAX_BYTES", 16 << 30),
            max_entries: get("PODVM_IMAGE_MAX_ENTRIES", 2_000_000),
            max_ratio: get("PODVM_IMAGE_MAX_RATIO", 100),
        }
    }
}

/// Wraps `r` in the decompressor its magic bytes call for (gzip, zstd, bzip2, xz, or none).
pub fn decompress<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(1 << 16, r);
    let head = br.fill_buf()?.to_vec();
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(br)?)
    } else if head.starts_with(b"BZh") {
        Box::new(bzip2::bufread::MultiBzDecoder::new(br))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Box::new(xz2::bufread::XzDecoder::new_multi_decoder(br))
    } else {
        Box::new(br)
    })
}

/// A directory's access and modification times, to restore after changing its contents.
fn dir_times(dir: &Path) -> Option<(filetime::FileTime, filetime::FileTime)> {
    let m = fs::symlink_metadata(dir).ok()?;
    Some((
        filetime::FileTime::from_last_access_time(&m),
        filetime::FileTime::from_last_modification_time(&m),
    ))
}

/// Restores times saved by [`dir_times`] (best effort: the tree is still correct without).
fn restore_times(dir: &Path, saved: Option<(filetime::FileTime, filetime::FileTime)>) {
    if let Some((a, m)) = saved {
        let _ = filetime::set_symlink_file_times(dir, a, m);
    }
}

/// Hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        Ok(n)
    }
}

/// Metadata applied to directories once all layers are in (so that read-only directories can
/// still be filled).
struct DirMeta {
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: u64,
}

/// Applies layers, in order, to one rootfs.
pub struct Applier {
    root: PathBuf,
    image: String,
    limits: Limits,
    privileged: bool,
    bytes: u64,
    entries: u64,
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// Only entries under this prefix are applied, without it (`rootfs/` for appc ACIs).
    prefix: Option<&'static [u8]>,
    /// Warnings (e.g. device nodes skipped when unprivileged).
    pub warnings: Vec<String>,
}

/// Per-layer state: the layer name and the paths this layer created (opaque whiteouts remove
/// only what lower layers created).
struct LayerCtx {
    layer: String,
    created: HashSet<PathBuf>,
    /// Most file content this layer may expand to (see [`Limits::max_ratio`]).
    budget: u64,
    /// File content written so far by this layer.
    expanded: u64,
}

impl Applier {
    /// Prepares to render `image` into the existing empty directory `root`.
    pub fn new(root: &Path, image: &str, limits: Limits) -> Applier {
        Applier {
            root: root.to_path_buf(),
            image: image.to_string(),
            limits,
            privileged: nix::unistd::geteuid().is_root(),
            bytes: 0,
            entries: 0,
            dirs: BTreeMap::new(),
            prefix: None,
            warnings: Vec::new(),
        }
    }

    /// Applies only entries under `prefix` (e.g. `rootfs/` of an ACI), stripped of it, to the
    /// following layers; other entries are skipped.
    pub fn set_prefix(&mut self, prefix: Option<&'static [u8]>) {
        self.prefix = prefix;
    }

    /// Strips the prefix; `None` if the entry is outside it.
    fn strip<'a>(&self, raw: &'a [u8]) -> Option<&'a [u8]> {
        let Some(p) = self.prefix else {
            return Some(raw);
        };
        let mut r = raw;
        while let Some(rest) = r.strip_prefix(b"./") {
            r = rest;
        }
        if r == p.strip_suffix(b"/").unwrap_or(p) {
            return Some(b"");
        }
        r.strip_prefix(p)
    }

    /// Applies one (possibly compressed) layer tarball of `size` bytes.
    /// Returns the digest of the uncompressed tar stream (the layer's "diff id").
    pub fn apply(
        &mut self,
        layer_name: &str,
        size: u64,
        data: impl Read,
    ) -> Result<crate::store::Digest, LayerError> {
        let mut ctx = LayerCtx {
            layer: layer_name.to_string(),
            created: HashSet::new(),
            budget: size.saturating_mul(self.limits.max_ratio).max(1 << 30),
            expanded: 0,
        };
        let image = self.image.clone();
        let io_e = |what, entry: &str, source| LayerError::Io {
            image: image.clone(),
            layer: layer_name.to_string(),
            entry: entry.to_string(),
            what,
            source,
        };
        let reader = decompress(data).map_err(|e| io_e("decompressing layer", "", e))?;
        let mut ar = tar::Archive::new(HashingReader {
            inner: reader,
            hasher: sha2::Sha256::default(),
        });
        let entries = ar.entries().map_err(|e| io_e("reading layer tar", "", e))?;
        let mut last = String::from("(start of layer)");
        for entry in entries {
            let mut entry = entry.map_err(|e| io_e("reading layer tar after entry", &last, e))?;
            last = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.apply_entry(&mut ctx, &mut entry)?;
        }
        self.finish_dirs()?;
        // Hash the rest of the stream (padding after the end-of-archive blocks), bounded.
        let mut rest = ar.into_inner();
        io::copy(&mut (&mut rest).take(1 << 20), &mut io::sink())
            .map_err(|e| io_e("reading layer tar after entry", &last, e))?;
        Ok(crate::store::Digest::from_hasher(rest.hasher))
    }

    fn err_unsafe(&self, ctx: &LayerCtx, entry: &str, why: impl Into<String>) -> LayerError {
        LayerError::Unsafe {
            image: self.image.clone(),
            layer: ctx.layer.clone(),
            entry: entry.to_string(),
            why: why.into(),
        }
    }

    fn err_io(
        &self,
        ctx: &LayerCtx,
        entry: &str,
        what: &'static str,
    ) -> impl FnOnce(io::Error) -> LayerError {
        let (image, layer, entry) = (self.image.clone(), ctx.layer.clone(), entry.to_string());
        move |source| LayerError::Io {
            image,
            layer,
            entry,
            what,
            source,
        }
    }

    fn apply_entry<R: Read>(
        &mut self,
        ctx: &mut LayerCtx,
        entry: &mut tar::Entry<R>,
    ) -> Result<(), LayerError> {
        let full = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&full).into_owned();
        let Some(raw) = self.strip(&full).map(<[u8]>::to_vec) else {
            return Ok(());
        };
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(LayerError::Limit {
                image: self.image.clone(),
                layer: ctx.layer.clone(),
                entry: name,
                why: format!("more than {} entries", self.limits.max_entries),
                var: "PODVM_IMAGE_MAX_ENTRIES",
            });
        }
        let comps =
            entry_components(&raw).map_err(|u| self.err_unsafe(ctx, &name, u.to_string()))?;
        let Some((base, parent)) = comps.split_last() else {
            // The root directory itself.
            let meta = self.dir_meta(entry.header());
            self.dirs.insert(self.root.clone(), meta);
            return Ok(());
        };
        let base_b = base.as_bytes();
        if base_b == b".wh..wh..opq" {
            return self.opaque(ctx, &name, parent);
        }
        if let Some(hidden) = base_b.strip_prefix(b".wh.") {
            return self.whiteout(ctx, &name, parent, hidden);
        }
        let dir = resolve_dir(&self.root, parent, true)
            .map_err(self.err_io(ctx, &name, "resolving parent directory"))?
            .ok_or_else(|| self.err_unsafe(ctx, &name, "parent directory cannot be created"))?;
        // Writing into a directory must not change its mtime (as umoci does); no need when
        // this layer lists the directory (its times are set at the end of the layer).
        let listed = self.dirs.contains_key(&dir);
        let saved = if listed { None } else { dir_times(&dir) };
        let result = self.write_entry(ctx, &name, parent, &dir, base, entry);
        restore_times(&dir, saved);
        result
    }

    /// Writes one non-whiteout entry `base` into the resolved directory `dir`.
    fn write_entry<R: Read>(
        &mut self,
        ctx: &mut LayerCtx,
        name: &str,
        parent: &[OsString],
        dir: &Path,
        base: &std::ffi::OsStr,
        entry: &mut tar::Entry<R>,
    ) -> Result<(), LayerError> {
        let target = dir.join(base);
        let kind = entry.header().entry_type();
        if !matches!(kind, EntryType::Regular | EntryType::Continuous) {
            // (Regular files are created with O_EXCL and cleared only if that fails.)
            self.clear_for(ctx, name, &target, kind == EntryType::Directory)?;
        }
        match kind {
            EntryType::Directory => {
                if !target.is_dir() {
                    fs::create_dir(&target).map_err(self.err_io(
                        ctx,
                        name,
                        "creating directory",
                    ))?;
                }
                let meta = self.dir_meta(entry.header());
                self.dirs.insert(target.clone(), meta);
            }
            EntryType::Regular | EntryType::Continuous => {
                self.write_file(ctx, name, &target, entry)?
            }
            EntryType::Symlink => self.symlink(ctx, name, parent, &target, entry)?,
            EntryType::Link => self.hardlink(ctx, name, &target, entry)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                if !self.special(ctx, name, &target, entry)? {
                    return Ok(());
                }
            }
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => return Ok(()),
            other => {
                return Err(self.err_unsafe(ctx, name, format!("unsupported entry type {other:?}")))
            }
        }
        // A hard link shares the inode (and so the metadata) of its target.
        if kind != EntryType::Directory && kind != EntryType::Link {
            self.set_owner_mode_time(
                ctx,
                name,
                &target,
                entry.header(),
                kind == EntryType::Symlink,
            )?;
        }
        ctx.created.insert(target);
        Ok(())
    }

    fn dir_meta(&self, h: &tar::Header) -> DirMeta {
        DirMeta {
            mode: h.mode().unwrap_or(0o755) & 0o7777,
            owner: self.owner(h),
            mtime: h.mtime().unwrap_or(0),
        }
    }

    fn owner(&self, h: &tar::Header) -> Option<(u32, u32)> {
        if !self.privileged {
            return None;
        }
        let uid = h.uid().ok().and_then(|u| u32::try_from(u).ok())?;
        let gid = h.gid().ok().and_then(|g| u32::try_from(g).ok())?;
        Some((uid, gid))
    }

    /// Removes what is at `target` unless both it and the new entry are directories.
    fn clear_for(
        &self,
        ctx: &LayerCtx,
        name: &str,
        target: &Path,
        new_is_dir: bool,
    ) -> Result<(), LayerError> {
        match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() && new_is_dir => Ok(()),
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(target).map_err(self.err_io(ctx, name, "replacing directory"))
            }
            Ok(_) => fs::remove_file(target).map_err(self.err_io(ctx, name, "replacing file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err_io(ctx, name, "inspecting existing entry")(e)),
        }
    }

    fn write_file<R: Read>(
        &mut self,
        ctx: &mut LayerCtx,
        name: &str,
        target: &Path,
        entry: &mut tar::Entry<R>,
    ) -> Result<(), LayerError> {
        // entry.size() honours PAX size records, which may differ from the header.
        let declared = entry.size();
        let global_left = self.limits.max_bytes - self.bytes;
        let layer_left = ctx.budget.saturating_sub(ctx.expanded);
        let (remaining, why, var) = if layer_left < global_left {
            let why = format!(
                "layer expands to more than {} bytes, over {} times its compressed size (decompression bomb?)",
                ctx.budget, self.limits.max_ratio
            );
            (layer_left, why, "PODVM_IMAGE_MAX_RATIO")
        } else {
            let why = format!(
                "image content exceeds {} bytes (decompression bomb?)",
                self.limits.max_bytes
            );
            (global_left, why, "PODVM_IMAGE_MAX_BYTES")
        };
        let limit_err = LayerError::Limit {
            image: self.image.clone(),
            layer: ctx.layer.clone(),
            entry: name.to_string(),
            why,
            var,
        };
        if declared > remaining {
            return Err(limit_err);
        }
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(target)
        };
        let mut f = match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.clear_for(ctx, name, target, false)?;
                create()
            }
            other => other,
        }
        .map_err(self.err_io(ctx, name, "creating file"))?;
        let n = crate::store::copy_large(
            &mut entry.take(remaining.saturating_add(1)),
            &mut f,
            Some(declared),
        )
        .map_err(self.err_io(ctx, name, "writing file"))?;
        if n > remaining {
            return Err(limit_err);
        }
        self.bytes += n;
        ctx.expanded += n;
        Ok(())
    }

    fn symlink<R: Read>(
        &self,
        ctx: &LayerCtx,
        name: &str,
        parent: &[OsString],
        target: &Path,
        entry: &tar::Entry<R>,
    ) -> Result<(), LayerError> {
        let link = entry
            .link_name_bytes()
            .ok_or_else(|| self.err_unsafe(ctx, name, "symlink without a target"))?;
        if symlink_escapes(parent, &link) {
            let t = String::from_utf8_lossy(&link);
            return Err(self.err_unsafe(
                ctx,
                name,
                format!("symlink target {t:?} points outside the image root"),
            ));
        }
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&link), target).map_err(self.err_io(
            ctx,
            name,
            "creating symlink",
        ))
    }

    fn hardlink<R: Read>(
        &self,
        ctx: &LayerCtx,
        name: &str,
        target: &Path,
        entry: &tar::Entry<R>,
    ) -> Result<(), LayerError> {
        let full = entry
            .link_name_bytes()
            .ok_or_else(|| self.err_unsafe(ctx, name, "hard link without a target"))?;
        let t = String::from_utf8_lossy(&full).into_owned();
        let link = self.strip(&full).ok_or_else(|| {
            self.err_unsafe(
                ctx,
                name,
                format!("hard link target {t:?} is outside the rootfs"),
            )
        })?;
        let comps = entry_components(link)
            .map_err(|u| self.err_unsafe(ctx, name, format!("hard link target {t:?}: {u}")))?;
        let outside = || {
            self.err_unsafe(
                ctx,
                name,
                format!("hard link target {t:?} is not a file inside the image"),
            )
        };
        let (base, parent) = comps.split_last().ok_or_else(outside)?;
        let dir = resolve_dir(&self.root, parent, false)
            .map_err(self.err_io(ctx, name, "resolving hard link target"))?
            .ok_or_else(outside)?;
        let src = dir.join(base);
        match fs::symlink_metadata(&src) {
            Ok(m) if !m.is_dir() => {}
            _ => return Err(outside()),
        }
        fs::hard_link(&src, target).map_err(self.err_io(ctx, name, "creating hard link"))
    }

    /// Creates a device node or FIFO; returns false if it was skipped.
    fn special<R: Read>(
        &mut self,
        ctx: &LayerCtx,
        name: &str,
        target: &Path,
        entry: &tar::Entry<R>,
    ) -> Result<bool, LayerError> {
        use nix::sys::stat::{mknod, Mode, SFlag};
        let h = entry.header();
        let kind = match h.entry_type() {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        if kind != SFlag::S_IFIFO && !self.privileged {
            let w = format!(
                "image {}: skipping device node {name:?} (not running as root)",
                self.image
            );
            eprintln!("warning: {w}");
            self.warnings.push(w);
            return Ok(false);
        }
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        let dev = nix::sys::stat::makedev(major.into(), minor.into());
        mknod(target, kind, Mode::from_bits_truncate(0o600), dev)
            .map_err(|e| self.err_io(ctx, name, "creating device node")(e.into()))?;
        Ok(true)
    }

    fn set_owner_mode_time(
        &self,
        ctx: &LayerCtx,
        name: &str,
        target: &Path,
        h: &tar::Header,
        is_link: bool,
    ) -> Result<(), LayerError> {
        if let Some((uid, gid)) = self.owner(h) {
            std::os::unix::fs::lchown(target, Some(uid), Some(gid))
                .map_err(self.err_io(ctx, name, "chown"))?;
        }
        let mtime = filetime::FileTime::from_unix_time(h.mtime().unwrap_or(0) as i64, 0);
        if is_link {
            filetime::set_symlink_file_times(target, mtime, mtime).map_err(self.err_io(
                ctx,
                name,
                "setting mtime",
            ))?;
            return Ok(());
        }
        // chown clears setuid/setgid, so the mode is set afterwards (setuid bits are kept, as rkt does).
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        fs::set_permissions(target, fs::Permissions::from_mode(mode))
            .map_err(self.err_io(ctx, name, "chmod"))?;
        filetime::set_symlink_file_times(target, mtime, mtime).map_err(self.err_io(
            ctx,
            name,
            "setting mtime",
        ))
    }

    fn whiteout(
        &self,
        ctx: &LayerCtx,
        name: &str,
        parent: &[OsString],
        hidden: &[u8],
    ) -> Result<(), LayerError> {
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.err_unsafe(ctx, name, "whiteout of an invalid name"));
        }
        let Some(dir) = resolve_dir(&self.root, parent, false).map_err(self.err_io(
            ctx,
            name,
            "resolving whiteout",
        ))?
        else {
            return Ok(());
        };
        let victim = dir.join(std::ffi::OsStr::from_bytes(hidden));
        let saved = dir_times(&dir);
        let result = self.clear_for(ctx, name, &victim, false);
        restore_times(&dir, saved);
        result
    }

    fn opaque(&self, ctx: &LayerCtx, name: &str, parent: &[OsString]) -> Result<(), LayerError> {
        let dir = resolve_dir(&self.root, parent, true)
            .map_err(self.err_io(ctx, name, "resolving opaque directory"))?
            .ok_or_else(|| self.err_unsafe(ctx, name, "opaque directory cannot be created"))?;
        let saved = dir_times(&dir);
        let result = self.clear_lower(ctx, name, &dir);
        restore_times(&dir, saved);
        result
    }

    /// Removes the children of `dir` that this layer did not create.
    fn clear_lower(&self, ctx: &LayerCtx, name: &str, dir: &Path) -> Result<(), LayerError> {
        let list = fs::read_dir(dir).map_err(self.err_io(ctx, name, "listing opaque directory"))?;
        for child in list {
            let child = child
                .map_err(self.err_io(ctx, name, "listing opaque directory"))?
                .path();
            if !ctx.created.contains(&child) {
                self.clear_for(ctx, name, &child, false)?;
            }
        }
        Ok(())
    }

    /// Applies directory modes, owners and mtimes (deepest first); call after the last layer.
    pub fn finish(mut self) -> Result<Vec<String>, LayerError> {
        self.finish_dirs()?;
        Ok(self.warnings)
    }

    /// Applies the metadata of the directories the last layer listed (deepest first), as
    /// umoci and docker do at the end of each layer: later layers that change a directory
    /// then update its mtime. Unprivileged, directories keep owner rwx so that later layers
    /// can still write into them.
    fn finish_dirs(&mut self) -> Result<(), LayerError> {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, meta) in dirs.iter().rev() {
            let io_e = |what| {
                let entry = path
                    .strip_prefix(&self.root)
                    .unwrap_or(path)
                    .display()
                    .to_string();
                let image = self.image.clone();
                move |source| LayerError::Io {
                    image,
                    layer: "-".to_string(),
                    entry,
                    what,
                    source,
                }
            };
            if !fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            if let Some((u, g)) = meta.owner {
                std::os::unix::fs::lchown(path, Some(u), Some(g)).map_err(io_e("chown"))?;
            }
            let mode = if self.privileged {
                meta.mode
            } else {
                meta.mode | 0o700
            };
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_e("chmod"))?;
            let t = filetime::FileTime::from_unix_time(meta.mtime as i64, 0);
            filetime::set_symlink_file_times(path, t, t).map_err(io_e("setting mtime"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tar entry: (raw name, type, content or link target, mode).
    type Spec<'a> = (&'a [u8], EntryType, &'a [u8], u32);

    fn tar_of(entries: &[Spec]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            // Raw names, so that unsafe names the tar crate would refuse can be written.
            h.as_gnu_mut().expect("gnu header").name[..name.len()].copy_from_slice(name);
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_mtime(1_700_000_000);
            if matches!(kind, EntryType::Symlink | EntryType::Link) {
                h.set_size(0);
                h.as_gnu_mut().expect("gnu header").linkname[..data.len()].copy_from_slice(data);
                h.set_cksum();
                b.append(&h, io::empty()).expect("append");
            } else {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, *data).expect("append");
            }
        }
        b.into_inner().expect("tar")
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut e, data).expect("gzip");
        e.finish().expect("gzip")
    }

    const F: EntryType = EntryType::Regular;
    const D: EntryType = EntryType::Directory;

    fn render(layers: &[Vec<u8>]) -> (tempfile::TempDir, Result<(), LayerError>) {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("rootfs");
        fs::create_dir(&root).expect("mkdir");
        let mut a = Applier::new(&root, "test-image", Limits::from_env());
        let mut res = Ok(());
        for (i, l) in layers.iter().enumerate() {
            res = a
                .apply(&format!("layer{i}"), l.len() as u64, &l[..])
                .map(|_| ());
            if res.is_err() {
                break;
            }
        }
        if res.is_ok() {
            res = a.finish().map(|_| ());
        }
        (t, res)
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let l1 = tar_of(&[
            (b"etc/", D, b"", 0o755),
            (b"etc/a", F, b"a", 0o644),
            (b"etc/b", F, b"b", 0o644),
            (b"opq/", D, b"", 0o755),
            (b"opq/old", F, b"old", 0o644),
            (b"opq/sub/", D, b"", 0o755),
        ]);
        let l2 = gz(&tar_of(&[
            (b"etc/.wh.a", F, b"", 0o644),
            (b"opq/new", F, b"new", 0o4755),
            (b"opq/.wh..wh..opq", F, b"", 0o644),
        ]));
        let l3_tar = tar_of(&[(b"./etc/c", F, b"c", 0o600)]);
        let t3 = tempfile::tempdir().expect("tempdir");
        let diff_id = Applier::new(t3.path(), "t", Limits::from_env())
            .apply(
                "l3",
                0,
                &zstd::encode_all(&l3_tar[..], 3).expect("zstd")[..],
            )
            .expect("applies");
        assert_eq!(
            diff_id,
            crate::store::Digest::of_bytes(&l3_tar),
            "diff id of the tar stream"
        );
        let l3 = zstd::encode_all(&l3_tar[..], 3).expect("zstd");
        let (t, res) = render(&[l1, l2, l3]);
        res.expect("renders");
        let r = t.path().join("rootfs");
        assert!(!r.join("etc/a").exists(), "whited-out file still there");
        assert_eq!(fs::read(r.join("etc/b")).expect("b"), b"b");
        assert_eq!(fs::read(r.join("etc/c")).expect("c"), b"c");
        assert!(
            !r.join("opq/old").exists() && !r.join("opq/sub").exists(),
            "opaque dir kept lower entries"
        );
        let m = fs::metadata(r.join("opq/new")).expect("new");
        assert_eq!(
            m.permissions().mode() & 0o7777,
            0o4755,
            "setuid bit must be kept"
        );
        assert!(!r.join("opq/.wh..wh..opq").exists() && !r.join("etc/.wh.a").exists());
    }

    fn rejected(entries: &[Spec], needle: &str) {
        let (t, res) = render(&[tar_of(entries)]);
        let e = res.expect_err("must be rejected").to_string();
        assert!(
            e.contains("test-image") && e.contains(needle),
            "error {e:?} should name {needle:?}"
        );
        // Nothing was written next to the rootfs.
        let names: Vec<_> = fs::read_dir(t.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("rootfs")]);
    }

    #[test]
    fn rejects_unsafe_entries() {
        rejected(&[(b"../evil", F, b"x", 0o644)], "../evil");
        rejected(&[(b"a/../../evil", F, b"x", 0o644)], "a/../../evil");
        rejected(&[(b"/abs", F, b"x", 0o644)], "/abs");
        rejected(
            &[(b"link", EntryType::Symlink, b"../../../etc", 0o777)],
            "link",
        );
        rejected(&[(b"hl", EntryType::Link, b"../outside", 0o644)], "hl");
        rejected(&[(b"hl", EntryType::Link, b"/etc/passwd", 0o644)], "hl");
    }

    #[test]
    fn never_writes_through_symlinks() {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = t.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        let root = t.path().join("rootfs");
        fs::create_dir(&root).expect("mkdir");
        let target = outside.to_str().expect("utf8").as_bytes();
        let l1 = tar_of(&[
            (b"d", EntryType::Symlink, target, 0o777),
            (b"f", EntryType::Symlink, b"/etc/x", 0o777),
        ]);
        let l2 = tar_of(&[
            (b"d/file", F, b"pwned", 0o644),
            (b"f", F, b"replaced", 0o644),
        ]);
        let mut a = Applier::new(&root, "test-image", Limits::from_env());
        a.apply("l1", 0, &l1[..]).expect("l1");
        a.apply("l2", 0, &l2[..]).expect("l2");
        assert!(
            fs::read_dir(&outside).expect("ls").next().is_none(),
            "wrote outside the rootfs"
        );
        // The absolute symlink was resolved inside the rootfs.
        let inside = root
            .join(outside.strip_prefix("/").expect("absolute"))
            .join("file");
        assert_eq!(fs::read(inside).expect("inside"), b"pwned");
        assert_eq!(fs::read(root.join("f")).expect("f"), b"replaced");
        assert!(fs::symlink_metadata(root.join("f")).expect("f").is_file());
    }

    #[test]
    fn limits_bound_decompression_bombs() {
        let big = vec![0u8; 1 << 20];
        let layer = gz(&tar_of(&[(b"zeros", F, &big, 0o644)]));
        let t = tempfile::tempdir().expect("tempdir");
        let mut a = Applier::new(
            t.path(),
            "bomb",
            Limits {
                max_bytes: 1000,
                max_entries: 10,
                max_ratio: 100,
            },
        );
        let e = a
            .apply("l", layer.len() as u64, &layer[..])
            .expect_err("over the limit")
            .to_string();
        assert!(
            e.contains("zeros") && e.contains("PODVM_IMAGE_MAX_BYTES"),
            "{e}"
        );
        let many: Vec<Vec<u8>> = (0..20).map(|i| format!("f{i}").into_bytes()).collect();
        let specs: Vec<Spec> = many
            .iter()
            .map(|n| (n.as_slice(), F, &b""[..], 0o644))
            .collect();
        let mut a = Applier::new(
            t.path(),
            "many",
            Limits {
                max_bytes: 1000,
                max_entries: 10,
                max_ratio: 100,
            },
        );
        let e = a
            .apply("l", 0, &tar_of(&specs)[..])
            .expect_err("too many")
            .to_string();
        assert!(e.contains("PODVM_IMAGE_MAX_ENTRIES"), "{e}");
    }
}
