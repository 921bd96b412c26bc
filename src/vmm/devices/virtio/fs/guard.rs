//! [`Guard`]: the file system the guest talks to. It forwards to the passthrough of the shared
//! directory and refuses, before the host is touched:
//!
//! - on every share: creating char/block device nodes (EPERM) or anything but a regular file,
//!   FIFO or socket with MKNOD (EINVAL), renames with `RENAME_WHITEOUT` (EINVAL: they would make
//!   a 0:0 char device on the host; EINVAL is what a file system without whiteout support
//!   answers, so an overlayfs in the guest falls back instead of failing its mount), opening
//!   anything but a regular file or directory on the host (EPERM; the guest kernel serves its
//!   device nodes, FIFOs and sockets itself and never sends FUSE_OPEN for them), and xattrs
//!   outside `user.*` (setting them is EPERM, reading or removing them finds nothing, listing
//!   hides them), so the guest cannot plant `security.capability` or `trusted.overlay.*`
//!   attributes on host files;
//! - on every share, names that are not one path component: empty, `.`, `..` or containing `/`
//!   (EINVAL) in every operation that takes a name (LOOKUP, MKNOD, MKDIR, CREATE, SYMLINK, LINK,
//!   RENAME's two names, UNLINK, RMDIR). The Linux VFS never sends them (it resolves `.` and `..`
//!   in its own dcache; LOOKUP of `..` comes only with FUSE_EXPORT_SUPPORT, which is not
//!   offered), so only a hostile guest kernel would: a LOOKUP of `..` on a directory that the
//!   host moved out of the share would otherwise hand it the outside parent;
//! - on read-only shares: every mutating operation and every open with write access (EROFS).
//!
//! # Privilege bits (what the guest sees)
//!
//! The VMM runs as root and files the guest creates are owned by the guest's uid/gid (guest root
//! is host root), so a setuid file left in a share would be a setuid-root program on the host.
//! The guard therefore never lets a guest-written file carry S_ISUID or S_ISGID on the host:
//!
//! - CREATE, MKNOD, MKDIR and SETATTR of the mode drop S_ISUID always and S_ISGID on everything
//!   but directories (a setgid directory only makes new entries inherit its group, which the
//!   guest can set with chown anyway; it grants no privilege). The operation succeeds and the
//!   reply carries the host's attributes, so in the guest `chmod 4755 f` succeeds and `stat f`
//!   shows 0755, `chmod 2775 d` on a directory keeps 2775.
//! - An open with write access or O_TRUNC, a CREATE that opens an existing file, and a SETATTR of
//!   the size first clear S_ISUID and S_ISGID of an existing regular file on the host (what the
//!   kernel's killpriv does for unprivileged writers, done here for every writer, guest root
//!   included): a setuid image file such as `/usr/bin/passwd`, copied up into a pod's upper dir
//!   and rewritten by the guest, does not stay setuid. Opening it read-only keeps its bits.
//! - LINK of a regular file with S_ISUID or S_ISGID is refused (EPERM): a host setuid program in
//!   a shared volume cannot get a second name that survives the host replacing or removing it.
//!
//! Operations not forwarded (DAX mappings, ioctl, locks, poll) get the trait's ENOSYS.
use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

/// Largest xattr name list the kernel returns (XATTR_LIST_MAX).
const XATTR_LIST_MAX: u32 = 65536;
/// The only xattr namespace the guest may use.
const USER_XATTR_PREFIX: &[u8] = b"user.";
/// The mode bits a guest-written file never keeps on the host.
const PRIVILEGE_BITS: u32 = libc::S_ISUID | libc::S_ISGID;
/// What the guard asks of the guest's FUSE driver besides the passthrough's options (which are
/// only readdirplus): writes of up to 1 MiB in one request instead of 4 KiB (BIG_WRITES,
/// MAX_PAGES), reads it may send at once (ASYNC_READ) and lookups and listings in one
/// directory at once (PARALLEL_DIROPS). None of them lets a request do more on the host.
const THROUGHPUT_OPTIONS: FsOptions = FsOptions::BIG_WRITES
    .union(FsOptions::MAX_PAGES)
    .union(FsOptions::ASYNC_READ)
    .union(FsOptions::PARALLEL_DIROPS);
/// The renameat2 flags forwarded (RENAME_WHITEOUT would create a 0:0 char device).
const RENAME_FLAGS: u32 = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;

/// Confines and, for read-only shares, write-protects the file system `F`.
pub struct Guard<F> {
    inner: F,
    read_only: bool,
    /// The open flags of each file handle. READ and WRITE pass these to the passthrough, never
    /// the request's own: fuse-backend-rs 0.14 calls F_SETFL when they differ and, if that
    /// fails, closes the handle's fd while the handle still owns it (the number then reaches
    /// whatever file podvm opens next).
    handle_flags: std::sync::Mutex<std::collections::HashMap<u64, u32>>,
}

impl<F> Guard<F> {
    /// Wraps `inner`; with `read_only` every mutation fails with EROFS.
    pub fn new(inner: F, read_only: bool) -> Self {
        Self {
            inner,
            read_only,
            handle_flags: Default::default(),
        }
    }

    fn remember_flags(&self, handle: u64, flags: u32) {
        if let Ok(mut map) = self.handle_flags.lock() {
            map.insert(handle, flags);
        }
    }

    /// The flags `handle` was opened with; EBADF for a handle the guest was never given.
    fn flags_of(&self, handle: u64) -> io::Result<u32> {
        let map = self.handle_flags.lock().map_err(|_| errno(libc::EIO))?;
        map.get(&handle).copied().ok_or_else(|| errno(libc::EBADF))
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(errno(libc::EROFS))
        } else {
            Ok(())
        }
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Whether open(2) `flags` ask for write access or truncation.
pub fn wants_write(flags: u32) -> bool {
    let flags = i32::from_ne_bytes(flags.to_ne_bytes());
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

fn is_user_xattr(name: &CStr) -> bool {
    name.to_bytes().starts_with(USER_XATTR_PREFIX)
}

fn is_device(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK)
}

/// Whether MKNOD may create a node of `mode`'s type: a regular file (type 0 means one, as for
/// mknod(2)), a FIFO or a socket.
fn mknod_type_allowed(mode: u32) -> bool {
    matches!(
        mode & libc::S_IFMT,
        0 | libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK
    )
}

/// `mode` without the bits a guest may not leave on the host: S_ISUID always, S_ISGID unless
/// the node is a directory.
pub fn without_privilege(mode: u32, directory: bool) -> u32 {
    if directory {
        mode & !libc::S_ISUID
    } else {
        mode & !PRIVILEGE_BITS
    }
}

/// Refuses (EINVAL) a name that is not exactly one path component: empty, `.`, `..`, or with a
/// `/` (the CStr already excludes NUL).
pub fn check_name(name: &CStr) -> io::Result<()> {
    match name.to_bytes() {
        b"" | b"." | b".." => Err(errno(libc::EINVAL)),
        bytes if bytes.contains(&b'/') => Err(errno(libc::EINVAL)),
        _ => Ok(()),
    }
}

fn is_dir(st: &stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Whether `st` is a regular file with S_ISUID or S_ISGID.
fn is_privileged_file(st: &stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_mode & PRIVILEGE_BITS != 0
}

/// Keeps the `user.*` names of a NUL-separated xattr name list.
fn user_names(list: &[u8]) -> Vec<u8> {
    list.split(|b| *b == 0)
        .filter(|name| name.starts_with(USER_XATTR_PREFIX))
        .flat_map(|name| name.iter().copied().chain(std::iter::once(0)))
        .collect()
}

impl<F: FileSystem> Guard<F>
where
    F::Inode: Copy,
    F::Handle: Copy,
{
    /// Clears S_ISUID and S_ISGID of `inode` on the host if it is a regular file with either
    /// (`st` is its current attributes); returns the attributes it has afterwards.
    fn kill_privilege(&self, ctx: &Context, inode: F::Inode, st: stat64) -> io::Result<stat64> {
        if !is_privileged_file(&st) {
            return Ok(st);
        }
        let mut attr = st;
        attr.st_mode = st.st_mode & 0o7777 & !PRIVILEGE_BITS;
        let (after, _) = self
            .inner
            .setattr(ctx, inode, attr, None, SetattrValid::MODE)?;
        Ok(after)
    }
}

impl<F: FileSystem> FileSystem for Guard<F>
where
    F::Inode: Copy,
    F::Handle: Copy,
{
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        Ok(self.inner.init(capable)? | (capable & THROUGHPUT_OPTIONS))
    }

    fn destroy(&self) {
        self.inner.destroy();
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        check_name(name)?;
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count);
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests);
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        let mut attr = attr;
        if valid.intersects(SetattrValid::MODE | SetattrValid::SIZE) {
            // The node's type comes from the host, never from the guest's request.
            let (st, _) = self.inner.getattr(ctx, inode, None)?;
            if valid.contains(SetattrValid::MODE) {
                attr.st_mode = without_privilege(attr.st_mode, is_dir(&st));
            }
            if valid.contains(SetattrValid::SIZE) {
                self.kill_privilege(ctx, inode, st)?;
            }
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(name)?;
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(name)?;
        if is_device(mode) {
            return Err(errno(libc::EPERM));
        }
        if !mknod_type_allowed(mode) {
            return Err(errno(libc::EINVAL));
        }
        let mode = without_privilege(mode, false);
        self.inner.mknod(ctx, inode, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(name)?;
        let mode = without_privilege(mode, true);
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_name(name)?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        check_name(name)?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        check_name(oldname)?;
        check_name(newname)?;
        if flags & !RENAME_FLAGS != 0 {
            return Err(errno(libc::EINVAL));
        }
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        check_name(newname)?;
        // A second path to a setuid/setgid file outlives the host's own upgrade or removal of
        // the first (the hard-link attack fs.protected_hardlinks stops for unprivileged users;
        // guest root is host root, so the kernel's check does not apply here).
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        if is_privileged_file(&st) {
            return Err(errno(libc::EPERM));
        }
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        if flags & (libc::O_PATH as u32) != 0 {
            return Err(errno(libc::EINVAL));
        }
        let write = wants_write(flags);
        if write {
            self.writable()?;
        }
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(errno(libc::EPERM));
        }
        if write {
            self.kill_privilege(ctx, inode, st)?;
        }
        let opened = self.inner.open(ctx, inode, flags, fuse_flags)?;
        if let Some(handle) = &opened.0 {
            self.remember_flags(Into::<u64>::into(*handle), flags);
        }
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        check_name(name)?;
        if args.flags & (libc::O_PATH as u32) != 0 {
            return Err(errno(libc::EINVAL));
        }
        let mut args = args;
        args.mode = without_privilege(args.mode, false);
        let (mut entry, handle, options, passthrough) =
            self.inner.create(ctx, parent, name, args)?;
        if let Some(handle) = &handle {
            self.remember_flags(Into::<u64>::into(*handle), args.flags);
        }
        if !wants_write(args.flags) {
            return Ok((entry, handle, options, passthrough));
        }
        // Without O_EXCL an existing file is opened for writing: it loses its privilege bits
        // before the reply lets the guest write to it.
        let inode = Self::Inode::from(entry.inode);
        match self.kill_privilege(ctx, inode, entry.attr) {
            Ok(attr) => entry.attr = attr,
            Err(err) => {
                if let Some(handle) = handle {
                    // Best effort: the create failed as a whole, its handle goes with it.
                    let _ = self
                        .inner
                        .release(ctx, inode, args.flags, handle, false, false, None);
                }
                self.inner.forget(ctx, inode, 1);
                return Err(err);
            }
        }
        Ok((entry, handle, options, passthrough))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let flags = self.flags_of(Into::<u64>::into(handle))?;
        let read = self
            .inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)?;
        super::counters::count_read(read);
        Ok(read)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        let flags = self.flags_of(Into::<u64>::into(handle))?;
        let written = self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )?;
        super::counters::count_written(written);
        Ok(written)
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        if let Ok(mut map) = self.handle_flags.lock() {
            map.remove(&Into::<u64>::into(handle));
        }
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        if !is_user_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if !is_user_xattr(name) {
            return Err(errno(libc::ENODATA));
        }
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        let names = match self.inner.listxattr(ctx, inode, XATTR_LIST_MAX)? {
            ListxattrReply::Names(names) => user_names(&names),
            ListxattrReply::Count(_) => return Err(errno(libc::EIO)),
        };
        let len = u32::try_from(names.len()).map_err(|_| errno(libc::E2BIG))?;
        if size == 0 {
            Ok(ListxattrReply::Count(len))
        } else if len > size {
            Err(errno(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(names))
        }
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        if !is_user_xattr(name) {
            return Err(errno(libc::ENODATA));
        }
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        if self.read_only && mask & u32::try_from(libc::W_OK).expect("small constant") != 0 {
            return Err(errno(libc::EROFS));
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
