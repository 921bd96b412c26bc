//! Applying layer tarballs to a rootfs: decompression by magic bytes, OCI whiteouts, path
//! safety, limits against decompression bombs.
//!
//! Every change to the rootfs goes through a descriptor: an entry's parent directory is
//! resolved from a descriptor on the rootfs with [`resolve_dir_at`] (the image's own symlinks
//! followed as if the rootfs were `/`, never out of it), and the entry is then created,
//! removed, chowned, chmodded and timestamped with `*at()` calls on that descriptor that do
//! not follow a symlink (see [`super::dirfd`]). Directory metadata, applied at the end of each
//! layer, is kept by the directory's resolved path below the rootfs and re-opened by a walk
//! that follows no symlink at all: a directory one of whose ancestors became a symlink (or a
//! file) since is skipped, so an image cannot redirect it out of the rootfs.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::SFlag;
use tar::EntryType;

use super::dirfd;
use super::safepath::{entry_components, resolve_dir_at, symlink_escapes, Resolved};

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

/// Saved access and modification times of a directory.
type Times = (nix::sys::time::TimeSpec, nix::sys::time::TimeSpec);

/// A directory's access and modification times, to restore after changing its contents.
fn dir_times(dir: &OwnedFd) -> Option<Times> {
    dirfd::times(dir).ok()
}

/// Restores times saved by [`dir_times`] (best effort: the tree is still correct without).
fn restore_times(dir: &OwnedFd, saved: Option<Times>) {
    if let Some(t) = saved {
        let _ = dirfd::set_times(dir, t);
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
    /// The rootfs, opened by the first [`Applier::apply`]; every change goes through it.
    root_fd: Option<OwnedFd>,
    image: String,
    limits: Limits,
    privileged: bool,
    bytes: u64,
    entries: u64,
    /// Directories the current layer listed, by resolved path below the root.
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// Only entries under this prefix are applied, without it (`rootfs/` for appc ACIs).
    prefix: Option<&'static [u8]>,
    /// Warnings (e.g. device nodes skipped when unprivileged).
    pub warnings: Vec<String>,
}

/// Per-layer state: the layer name and the paths (resolved, below the root) this layer
/// created (opaque whiteouts remove only what lower layers created).
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
            root_fd: None,
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
        if self.root_fd.is_none() {
            let fd = dirfd::open_root(&self.root).map_err(|e| io_e("opening the rootfs", "", e))?;
            self.root_fd = Some(fd);
        }
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
        self.finish_dirs(layer_name)?;
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
            self.dirs.insert(PathBuf::new(), meta);
            return Ok(());
        };
        let base_b = base.as_bytes();
        if base_b == b".wh..wh..opq" {
            return self.opaque(ctx, &name, parent);
        }
        if let Some(hidden) = base_b.strip_prefix(b".wh.") {
            return self.whiteout(ctx, &name, parent, hidden);
        }
        let dir = self
            .resolve(parent, true)
            .map_err(self.err_io(ctx, &name, "resolving parent directory"))?
            .ok_or_else(|| self.err_unsafe(ctx, &name, "parent directory cannot be created"))?;
        // Writing into a directory must not change its mtime (as umoci does); no need when
        // this layer lists the directory (its times are set at the end of the layer).
        let listed = self.dirs.contains_key(&dir.rel);
        let saved = if listed { None } else { dir_times(&dir.fd) };
        let result = self.write_entry(ctx, &name, parent, &dir, base, entry);
        restore_times(&dir.fd, saved);
        result
    }

    /// The rootfs descriptor (opened by [`Applier::apply`]).
    fn root_fd(&self) -> io::Result<&OwnedFd> {
        self.root_fd
            .as_ref()
            .ok_or_else(|| io::Error::other("the rootfs is not open"))
    }

    /// Resolves the directory `comps` below the root (see [`resolve_dir_at`]).
    fn resolve(&self, comps: &[OsString], create: bool) -> io::Result<Option<Resolved>> {
        resolve_dir_at(self.root_fd()?, comps, create)
    }

    /// Writes one non-whiteout entry `base` into the resolved directory `dir`.
    fn write_entry<R: Read>(
        &mut self,
        ctx: &mut LayerCtx,
        name: &str,
        parent: &[OsString],
        dir: &Resolved,
        base: &OsStr,
        entry: &mut tar::Entry<R>,
    ) -> Result<(), LayerError> {
        let target = dir.rel.join(base);
        let kind = entry.header().entry_type();
        if !matches!(kind, EntryType::Regular | EntryType::Continuous) {
            // (Regular files are created with O_EXCL and cleared only if that fails.)
            self.clear_for(ctx, name, &dir.fd, base, kind == EntryType::Directory)?;
        }
        match kind {
            EntryType::Directory => {
                let exists = dirfd::stat_at(&dir.fd, base)
                    .map_err(self.err_io(ctx, name, "inspecting existing entry"))?
                    .is_some();
                if !exists {
                    dirfd::mkdir_at(&dir.fd, base, 0o755).map_err(self.err_io(
                        ctx,
                        name,
                        "creating directory",
                    ))?;
                }
                let meta = self.dir_meta(entry.header());
                self.dirs.insert(target.clone(), meta);
            }
            EntryType::Regular | EntryType::Continuous => {
                self.write_file(ctx, name, &dir.fd, base, entry)?
            }
            EntryType::Symlink => self.symlink(ctx, name, parent, &dir.fd, base, entry)?,
            EntryType::Link => self.hardlink(ctx, name, &dir.fd, base, entry)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                if !self.special(ctx, name, &dir.fd, base, entry)? {
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
                &dir.fd,
                base,
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

    /// Removes what is at `base` in `dir` unless both it and the new entry are directories.
    fn clear_for(
        &self,
        ctx: &LayerCtx,
        name: &str,
        dir: &OwnedFd,
        base: &OsStr,
        new_is_dir: bool,
    ) -> Result<(), LayerError> {
        let st = dirfd::stat_at(dir, base).map_err(self.err_io(
            ctx,
            name,
            "inspecting existing entry",
        ))?;
        match st.map(|st| dirfd::kind(&st) == SFlag::S_IFDIR) {
            None => Ok(()),
            Some(true) if new_is_dir => Ok(()),
            Some(true) => {
                dirfd::remove_tree(dir, base).map_err(self.err_io(ctx, name, "replacing directory"))
            }
            Some(false) => {
                dirfd::unlink_file(dir, base).map_err(self.err_io(ctx, name, "replacing file"))
            }
        }
    }

    fn write_file<R: Read>(
        &mut self,
        ctx: &mut LayerCtx,
        name: &str,
        dir: &OwnedFd,
        base: &OsStr,
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
        let create = || dirfd::create_file_at(dir, base);
        let mut f = match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.clear_for(ctx, name, dir, base, false)?;
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
        dir: &OwnedFd,
        base: &OsStr,
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
        dirfd::symlink_at(OsStr::from_bytes(&link), dir, base).map_err(self.err_io(
            ctx,
            name,
            "creating symlink",
        ))
    }

    fn hardlink<R: Read>(
        &self,
        ctx: &LayerCtx,
        name: &str,
        dir: &OwnedFd,
        base: &OsStr,
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
        let (src_base, src_parent) = comps.split_last().ok_or_else(outside)?;
        let src_dir = self
            .resolve(src_parent, false)
            .map_err(self.err_io(ctx, name, "resolving hard link target"))?
            .ok_or_else(outside)?;
        match dirfd::stat_at(&src_dir.fd, src_base) {
            Ok(Some(st)) if dirfd::kind(&st) != SFlag::S_IFDIR => {}
            _ => return Err(outside()),
        }
        dirfd::link_at(&src_dir.fd, src_base, dir, base).map_err(self.err_io(
            ctx,
            name,
            "creating hard link",
        ))
    }

    /// Creates a device node or FIFO; returns false if it was skipped.
    fn special<R: Read>(
        &mut self,
        ctx: &LayerCtx,
        name: &str,
        dir: &OwnedFd,
        base: &OsStr,
        entry: &tar::Entry<R>,
    ) -> Result<bool, LayerError> {
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
        dirfd::mknod_at(dir, base, kind, dev).map_err(self.err_io(
            ctx,
            name,
            "creating device node",
        ))?;
        Ok(true)
    }

    /// Sets the owner, mode (not of a symlink) and mtime of `base` in `dir`, never through a
    /// symlink.
    fn set_owner_mode_time(
        &self,
        ctx: &LayerCtx,
        name: &str,
        dir: &OwnedFd,
        base: &OsStr,
        h: &tar::Header,
        is_link: bool,
    ) -> Result<(), LayerError> {
        if let Some((uid, gid)) = self.owner(h) {
            dirfd::chown_at(dir, base, uid, gid).map_err(self.err_io(ctx, name, "chown"))?;
        }
        if !is_link {
            // chown clears setuid/setgid, so the mode is set afterwards (setuid bits are kept,
            // as rkt does).
            let mode = h.mode().unwrap_or(0o644) & 0o7777;
            dirfd::chmod_at(dir, base, mode).map_err(self.err_io(ctx, name, "chmod"))?;
        }
        let mtime = mtime_secs(h.mtime().unwrap_or(0));
        dirfd::set_times_at(dir, base, mtime).map_err(self.err_io(ctx, name, "setting mtime"))
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
        let Some(dir) =
            self.resolve(parent, false)
                .map_err(self.err_io(ctx, name, "resolving whiteout"))?
        else {
            return Ok(());
        };
        let saved = dir_times(&dir.fd);
        let result = self.clear_for(ctx, name, &dir.fd, OsStr::from_bytes(hidden), false);
        restore_times(&dir.fd, saved);
        result
    }

    fn opaque(&self, ctx: &LayerCtx, name: &str, parent: &[OsString]) -> Result<(), LayerError> {
        let dir = self
            .resolve(parent, true)
            .map_err(self.err_io(ctx, name, "resolving opaque directory"))?
            .ok_or_else(|| self.err_unsafe(ctx, name, "opaque directory cannot be created"))?;
        let saved = dir_times(&dir.fd);
        let result = self.clear_lower(ctx, name, &dir);
        restore_times(&dir.fd, saved);
        result
    }

    /// Removes the children of `dir` that this layer did not create.
    fn clear_lower(&self, ctx: &LayerCtx, name: &str, dir: &Resolved) -> Result<(), LayerError> {
        let list =
            dirfd::list(&dir.fd).map_err(self.err_io(ctx, name, "listing opaque directory"))?;
        for (child, _) in list {
            if !ctx.created.contains(&dir.rel.join(&child)) {
                self.clear_for(ctx, name, &dir.fd, &child, false)?;
            }
        }
        Ok(())
    }

    /// Applies directory modes, owners and mtimes (deepest first); call after the last layer.
    pub fn finish(mut self) -> Result<Vec<String>, LayerError> {
        self.finish_dirs("-")?;
        Ok(self.warnings)
    }

    /// Applies the metadata of the directories the last layer listed (deepest first), as
    /// umoci and docker do at the end of each layer: later layers that change a directory
    /// then update its mtime. Unprivileged, directories keep owner rwx so that later layers
    /// can still write into them. Each directory is re-opened by a walk from the root that
    /// follows no symlink; one that is gone, or whose path now passes through a symlink or a
    /// file (a later entry replaced an ancestor), is skipped: its metadata has no place left
    /// in the rootfs.
    fn finish_dirs(&mut self, layer: &str) -> Result<(), LayerError> {
        let dirs = std::mem::take(&mut self.dirs);
        if dirs.is_empty() {
            return Ok(());
        }
        for (rel, meta) in dirs.iter().rev() {
            let io_e = |what| {
                let (image, layer, entry) = (
                    self.image.clone(),
                    layer.to_string(),
                    rel.display().to_string(),
                );
                move |source| LayerError::Io {
                    image,
                    layer,
                    entry,
                    what,
                    source,
                }
            };
            let root = self.root_fd().map_err(io_e("opening directory"))?;
            let Some(fd) = dirfd::open_beneath(root, rel).map_err(io_e("opening directory"))?
            else {
                continue;
            };
            let mode = if self.privileged {
                meta.mode
            } else {
                meta.mode | 0o700
            };
            dirfd::set_dir_meta(&fd, meta.owner, mode, mtime_secs(meta.mtime))
                .map_err(io_e("setting owner, mode and mtime"))?;
        }
        Ok(())
    }
}

/// A tar mtime as seconds for utimensat (absurd values are clamped).
fn mtime_secs(mtime: u64) -> i64 {
    i64::try_from(mtime).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

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

    /// Like [`tar_of`], every entry owned by `uid:uid`.
    fn tar_owned(entries: &[Spec], uid: u64) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let raw = tar_of(entries);
        let mut ar = tar::Archive::new(&raw[..]);
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let mut h = e.header().clone();
            h.set_uid(uid);
            h.set_gid(uid);
            h.set_cksum();
            let mut data = Vec::new();
            io::Read::read_to_end(&mut e, &mut data).expect("read");
            b.append(&h, &data[..]).expect("append");
        }
        b.into_inner().expect("tar")
    }

    /// What a host-side check compares of every path under a sentinel tree.
    type Snapshot = Vec<(PathBuf, u32, u32, u32, i64, u64, Option<Vec<u8>>)>;

    fn snapshot(top: &Path) -> Snapshot {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut todo = vec![PathBuf::new()];
        while let Some(rel) = todo.pop() {
            let p = top.join(&rel);
            let m = fs::symlink_metadata(&p).expect("stat sentinel");
            let content = m.is_file().then(|| fs::read(&p).expect("read sentinel"));
            if m.is_dir() {
                for e in fs::read_dir(&p).expect("ls sentinel").flatten() {
                    todo.push(rel.join(e.file_name()));
                }
            }
            out.push((
                rel,
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.nlink(),
                content,
            ));
        }
        out.sort();
        out
    }

    /// A host directory outside any rootfs: `sentinel/victim/keep` ("keep"), known modes
    /// and mtimes. Returns the tempdir holding it and the sentinel's absolute path.
    fn sentinel() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().expect("tempdir");
        let s = t.path().join("sentinel");
        fs::create_dir_all(s.join("victim")).expect("mkdir");
        fs::write(s.join("victim/keep"), b"keep").expect("write");
        for (p, mode) in [("victim/keep", 0o640), ("victim", 0o750), ("", 0o700)] {
            let p = s.join(p);
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
            let t = filetime::FileTime::from_unix_time(1_500_000_000, 0);
            filetime::set_symlink_file_times(&p, t, t).expect("utimes");
        }
        (t, s)
    }

    fn bytes(p: &Path) -> &[u8] {
        p.as_os_str().as_bytes()
    }

    const L: EntryType = EntryType::Symlink;

    // Attack 2 of issue 19: `x/`, `x/victim/` (0777, uid 4242), then `x` -> a host directory.
    // Directory metadata was applied by path after the layer, through the new symlink, so the
    // host's `victim` became 4242:4242 0777. Now it is applied through a no-follow walk, which
    // skips `x/victim` (its ancestor is a symlink), and the rest of the layer stays inside.
    #[test]
    fn swapped_ancestor_absolute_symlink_changes_nothing_outside() {
        let (_keep, s) = sentinel();
        let before = snapshot(&s);
        let layer = tar_owned(
            &[
                (b"x/", D, b"", 0o755),
                (b"x/victim/", D, b"", 0o777),
                (b"x", L, bytes(&s), 0o777),
                (b"x/victim/f", F, b"pwned", 0o4777),
            ],
            4242,
        );
        let (t, res) = render(&[layer]);
        res.expect("the links resolve inside the rootfs");
        assert_eq!(snapshot(&s), before, "the host sentinel changed");
        let r = t.path().join("rootfs");
        assert!(fs::symlink_metadata(r.join("x"))
            .expect("x")
            .file_type()
            .is_symlink());
        // What went through the link landed inside the rootfs, as if it were `/`.
        let inside = r.join(s.strip_prefix("/").expect("absolute"));
        assert_eq!(fs::read(inside.join("victim/f")).expect("f"), b"pwned");
    }

    // Attack 2 with a relative link climbing out (`x -> ../sentinel`, the rootfs being next
    // to the sentinel): the link is refused when it is created, and nothing outside changed.
    #[test]
    fn swapped_ancestor_relative_symlink_is_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().join("rootfs");
        fs::create_dir(&root).expect("mkdir");
        let s = t.path().join("sentinel");
        fs::create_dir_all(s.join("victim")).expect("mkdir");
        fs::write(s.join("victim/keep"), b"keep").expect("write");
        let before = snapshot(&s);
        for target in [
            &b"../sentinel"[..],
            b"../../../../../../../..",
            b"a/../../sentinel",
        ] {
            let layer = tar_owned(
                &[
                    (b"x/", D, b"", 0o755),
                    (b"x/victim/", D, b"", 0o777),
                    (b"x", L, target, 0o777),
                ],
                4242,
            );
            let mut a = Applier::new(&root, "test-image", Limits::from_env());
            let e = a
                .apply("layer0", 0, &layer[..])
                .and_then(|_| a.finish().map(|_| ()))
                .map(|_| ())
                .expect_err("an escaping symlink is refused");
            let e = e.to_string();
            assert!(
                e.contains("test-image") && e.contains("layer0") && e.contains("\"x\""),
                "{e}"
            );
            assert_eq!(snapshot(&s), before, "the host sentinel changed");
        }
    }

    // The swap across layers: a lower layer made `x/victim/`; an upper one lists `x/victim/`
    // (0777, uid 4242) and then replaces `x` by a link to the host; a third writes through it.
    #[test]
    fn swapped_ancestor_across_layers_changes_nothing_outside() {
        let (_keep, s) = sentinel();
        let before = snapshot(&s);
        let l1 = tar_of(&[(b"x/", D, b"", 0o755), (b"x/victim/", D, b"", 0o755)]);
        let l2 = tar_owned(
            &[(b"x/victim/", D, b"", 0o777), (b"x", L, bytes(&s), 0o777)],
            4242,
        );
        let l3 = tar_owned(
            &[
                (b"x/victim/", D, b"", 0o777),
                (b"x/victim/keep", F, b"pwned", 0o777),
                (b"x/victim/f", F, b"pwned", 0o777),
            ],
            4242,
        );
        let (t, res) = render(&[l1, l2, l3]);
        res.expect("renders inside the rootfs");
        assert_eq!(snapshot(&s), before, "the host sentinel changed");
        let inside = t
            .path()
            .join("rootfs")
            .join(s.strip_prefix("/").expect("absolute"));
        assert_eq!(
            fs::read(inside.join("victim/keep")).expect("keep"),
            b"pwned"
        );
        let m = fs::metadata(inside.join("victim")).expect("victim");
        assert_eq!(m.permissions().mode() & 0o7777, 0o777);
    }

    // Whiteouts and opaque markers under a swapped ancestor remove only inside the rootfs.
    #[test]
    fn whiteout_and_opaque_through_swapped_ancestor_stay_inside() {
        let (_keep, s) = sentinel();
        let before = snapshot(&s);
        let l1 = tar_of(&[
            (b"x/", D, b"", 0o755),
            (b"x/victim/", D, b"", 0o755),
            (b"x", L, bytes(&s), 0o777),
            (b"x/victim/.wh.keep", F, b"", 0o644),
            (b"y", L, bytes(&s.join("victim")), 0o777),
        ]);
        let l2 = tar_of(&[
            (b"x/victim/.wh.keep", F, b"", 0o644),
            (b"x/.wh.victim", F, b"", 0o644),
            (b"x/.wh..wh..opq", F, b"", 0o644),
            (b"y/.wh..wh..opq", F, b"", 0o644),
            (b"y/.wh.keep", F, b"", 0o644),
        ]);
        let (_t, res) = render(&[l1, l2]);
        res.expect("renders inside the rootfs");
        assert_eq!(snapshot(&s), before, "the host sentinel changed");
    }

    // A hard link whose target path goes through a link to the host is refused (the target
    // is looked up inside the rootfs, where it does not exist), and the host file gets no
    // new link.
    #[test]
    fn hard_link_through_symlink_to_outside_is_refused() {
        let (_keep, s) = sentinel();
        let before = snapshot(&s);
        let keep = s.join("victim/keep");
        for layers in [
            vec![tar_of(&[
                (b"x", L, bytes(&s), 0o777),
                (b"h", EntryType::Link, b"x/victim/keep", 0o644),
            ])],
            vec![
                tar_of(&[(b"x", L, bytes(&s.join("victim")), 0o777)]),
                tar_of(&[(b"h", EntryType::Link, b"x/keep", 0o644)]),
            ],
        ] {
            let (_t, res) = render(&layers);
            let e = res.expect_err("refused").to_string();
            assert!(
                e.contains("test-image") && e.contains("not a file inside the image"),
                "{e}"
            );
            assert_eq!(snapshot(&s), before, "the host sentinel changed");
        }
        assert_eq!(fs::read(keep).expect("keep"), b"keep");
    }

    // A listed directory replaced by a file, or removed, later in the layer: its deferred
    // metadata is skipped (nothing to apply it to), the layer still applies.
    #[test]
    fn deferred_dir_metadata_skips_replaced_directories() {
        let (t, res) = render(&[tar_of(&[
            (b"a/", D, b"", 0o700),
            (b"a/b/", D, b"", 0o700),
            (b"a", F, b"now a file", 0o644),
            (b"c/", D, b"", 0o750),
            (b"c/d/", D, b"", 0o711),
        ])]);
        res.expect("renders");
        let r = t.path().join("rootfs");
        assert_eq!(fs::read(r.join("a")).expect("a"), b"now a file");
        let mode = |p: &str| fs::metadata(r.join(p)).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode("c/d"), 0o711);
        assert_eq!(mode("c"), 0o750);
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
