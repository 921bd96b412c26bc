//! The guard over a real passthrough of a temporary directory (needs root for mknod and
//! trusted.* xattrs, as the tests run in CI).

use std::ffi::CString;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};

use fuse_backend_rs::api::filesystem::ROOT_ID;
use fuse_backend_rs::passthrough::{Config, PassthroughFs};

use super::*;

struct Share {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    fs: Guard<PassthroughFs>,
}

fn share(read_only: bool) -> Share {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("share");
    std::fs::create_dir(&root).expect("share dir");
    std::fs::write(root.join("file"), b"original").expect("file");
    std::fs::write(dir.path().join("outside"), b"sentinel").expect("sentinel");
    let config = Config {
        root_dir: root.to_str().expect("utf-8 temp path").to_owned(),
        xattr: true,
        ..Config::default()
    };
    let fs = Guard::new(
        PassthroughFs::<()>::new(config).expect("passthrough"),
        read_only,
    );
    fs.init(FsOptions::empty()).expect("init imports the root");
    Share {
        _dir: dir,
        root,
        fs,
    }
}

fn c(name: &str) -> CString {
    CString::new(name).expect("no NUL")
}

fn code(err: io::Error) -> i32 {
    err.raw_os_error().expect("an errno")
}

fn ctx() -> Context {
    Context::new()
}

#[test]
fn dotdot_at_the_root_is_the_root() {
    let s = share(false);
    let entry = s.fs.lookup(&ctx(), ROOT_ID, &c("..")).expect("lookup ..");
    assert_eq!(entry.inode, ROOT_ID);
    let host = std::fs::metadata(&s.root).expect("stat share");
    assert_eq!(entry.attr.st_ino, host.ino());
}

#[test]
fn names_with_a_slash_are_refused() {
    let s = share(false);
    let err =
        s.fs.lookup(&ctx(), ROOT_ID, &c("../outside"))
            .expect_err("slash");
    assert_eq!(code(err), libc::EINVAL);
}

#[test]
fn the_server_never_follows_symlinks() {
    let s = share(false);
    symlink("/", s.root.join("abs")).expect("symlink to /");
    symlink("../outside", s.root.join("rel")).expect("symlink to ..");
    for name in ["abs", "rel"] {
        let entry = s.fs.lookup(&ctx(), ROOT_ID, &c(name)).expect("lookup link");
        assert_eq!(entry.attr.st_mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
        let through = s.fs.lookup(&ctx(), entry.inode, &c("etc"));
        assert_eq!(
            code(through.expect_err("not a dir")),
            libc::ENOTDIR,
            "{name}"
        );
        let open = s.fs.open(&ctx(), entry.inode, 0, 0);
        assert_eq!(
            code(open.expect_err("link not opened")),
            libc::EPERM,
            "{name}"
        );
    }
}

#[test]
fn read_only_refuses_every_mutation_with_erofs() {
    let s = share(true);
    let file =
        s.fs.lookup(&ctx(), ROOT_ID, &c("file"))
            .expect("file")
            .inode;
    let create = CreateIn {
        flags: u32::try_from(libc::O_WRONLY).expect("flag"),
        mode: 0o644,
        ..CreateIn::default()
    };
    let cx = ctx();
    let results = [
        s.fs.mkdir(&cx, ROOT_ID, &c("d"), 0o755, 0).map(drop),
        s.fs.create(&cx, ROOT_ID, &c("new"), create).map(drop),
        s.fs.unlink(&cx, ROOT_ID, &c("file")),
        s.fs.symlink(&cx, &c("file"), ROOT_ID, &c("l")).map(drop),
        s.fs.link(&cx, file, ROOT_ID, &c("h")).map(drop),
        s.fs.rename(&cx, ROOT_ID, &c("file"), ROOT_ID, &c("r"), 0),
        s.fs.setxattr(&cx, file, &c("user.x"), b"1", 0),
        s.fs.mknod(&cx, ROOT_ID, &c("fifo"), libc::S_IFIFO | 0o644, 0, 0)
            .map(drop),
        s.fs.open(&cx, file, u32::try_from(libc::O_WRONLY).expect("flag"), 0)
            .map(drop),
        s.fs.open(&cx, file, u32::try_from(libc::O_RDWR).expect("flag"), 0)
            .map(drop),
        s.fs.open(&cx, file, u32::try_from(libc::O_TRUNC).expect("flag"), 0)
            .map(drop),
        s.fs.access(&cx, file, u32::try_from(libc::W_OK).expect("flag")),
    ];
    for (index, result) in results.into_iter().enumerate() {
        assert_eq!(
            code(result.expect_err("refused")),
            libc::EROFS,
            "op {index}"
        );
    }
    s.fs.open(&cx, file, 0, 0).expect("read-only open works");
    assert_eq!(
        std::fs::read(s.root.join("file")).expect("read"),
        b"original"
    );
    let names: Vec<_> = std::fs::read_dir(&s.root).expect("ls").collect();
    assert_eq!(names.len(), 1, "nothing created");
}

#[test]
fn device_nodes_cannot_be_created_or_opened_on_the_host() {
    let s = share(false);
    let cx = ctx();
    for kind in [libc::S_IFCHR, libc::S_IFBLK] {
        let err = s.fs.mknod(&cx, ROOT_ID, &c("dev"), kind | 0o666, 0x0103, 0);
        assert_eq!(code(err.expect_err("device refused")), libc::EPERM);
    }
    assert!(!s.root.join("dev").exists());
    s.fs.mknod(&cx, ROOT_ID, &c("fifo"), libc::S_IFIFO | 0o644, 0, 0)
        .expect("fifos are fine");
    assert!(std::fs::metadata(s.root.join("fifo"))
        .expect("fifo")
        .file_type()
        .is_fifo());
    // A device node planted on the host side (root only) is never opened by the server.
    let null = c(s.root.join("null").to_str().expect("utf-8"));
    // SAFETY: `null` is a valid NUL-terminated path; mknod only reads it.
    let made = unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    if made != 0 {
        eprintln!("skip: cannot mknod a host device node (not root?)");
        return;
    }
    let entry = s.fs.lookup(&cx, ROOT_ID, &c("null")).expect("lookup null");
    let err = s.fs.open(
        &cx,
        entry.inode,
        u32::try_from(libc::O_RDWR).expect("flag"),
        0,
    );
    assert_eq!(code(err.expect_err("device not opened")), libc::EPERM);
}

#[test]
fn only_user_xattrs_are_visible_or_settable() {
    let s = share(false);
    let cx = ctx();
    let file = s.fs.lookup(&cx, ROOT_ID, &c("file")).expect("file").inode;
    for name in ["trusted.overlay.opaque", "security.capability", "system.x"] {
        let err = s.fs.setxattr(&cx, file, &c(name), b"y", 0);
        assert_eq!(code(err.expect_err("refused")), libc::EPERM, "{name}");
        let err = s.fs.getxattr(&cx, file, &c(name), 64).err();
        assert_eq!(err.map(code), Some(libc::ENODATA), "{name}");
    }
    if let Err(err) = s.fs.setxattr(&cx, file, &c("user.k"), b"v", 0) {
        eprintln!("skip: user xattrs unsupported by the host file system: {err}");
        return;
    }
    // A trusted.* attribute set on the host (root) stays invisible to the guest.
    let path = c(s.root.join("file").to_str().expect("utf-8"));
    let name = c("trusted.podvm");
    // SAFETY: path and name are NUL-terminated; the value pointer/length describe a live slice.
    let set = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"t".as_ptr().cast(), 1, 0) };
    match s.fs.listxattr(&cx, file, 1024).expect("list") {
        ListxattrReply::Names(names) => assert_eq!(names, b"user.k\0"),
        ListxattrReply::Count(_) => panic!("asked for names"),
    }
    match s.fs.listxattr(&cx, file, 0).expect("count") {
        ListxattrReply::Count(n) => assert_eq!(n, 7),
        ListxattrReply::Names(_) => panic!("asked for the size"),
    }
    if set != 0 {
        eprintln!("note: could not set trusted.* on the host (not root?)");
    }
}

#[test]
fn write_flags() {
    assert!(!wants_write(0));
    assert!(wants_write(u32::try_from(libc::O_WRONLY).expect("flag")));
    assert!(wants_write(u32::try_from(libc::O_RDWR).expect("flag")));
    assert!(wants_write(u32::try_from(libc::O_TRUNC).expect("flag")));
    assert_eq!(
        user_names(b"user.a\0trusted.b\0user.c\0"),
        b"user.a\0user.c\0"
    );
}
