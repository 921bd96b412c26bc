//! Loads the guest kernel (ELF `vmlinux` with a PVH entry note), the initramfs and the command
//! line, and writes the PVH `start_info` with the E820 memory map.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use super::memory::{self, HIGH_RAM_START, LOW_RAM_END};
use super::mptable::MPTABLE_START;

/// Where the GDT for the 32-bit PVH entry lives.
pub const GDT_START: u64 = 0x500;
/// Where the (empty) IDT lives.
pub const IDT_START: u64 = 0x520;
/// Where the PVH `hvm_start_info` is written; its address goes to the BSP in %ebx.
pub const START_INFO: u64 = 0x6000;
/// Where the module list (the initramfs) is written.
const MODLIST_START: u64 = 0x6800;
/// Where the E820 memory map entries are written.
const MEMMAP_START: u64 = 0x7000;
/// Where the kernel command line is written.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Longest command line accepted.
pub const CMDLINE_MAX: usize = 4096;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const PAGE_SIZE: u64 = 4096;

/// Errors while loading what the guest boots from.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file does not exist.
    #[error("kernel image {0} not found: build it with `make kernel`, or pass --kernel PATH")]
    KernelMissing(PathBuf),
    /// The kernel file cannot be read.
    #[error("cannot read kernel image {path}: {source}")]
    KernelRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is a bzImage, which podvm does not boot.
    #[error(
        "{0} is a bzImage; podvm boots the uncompressed ELF `vmlinux` with a PVH entry \
         (CONFIG_PVH=y): pass that file instead"
    )]
    KernelIsBzImage(PathBuf),
    /// The file is not a kernel at all.
    #[error(
        "{0} is not a kernel image (no ELF header): pass an ELF `vmlinux` built with CONFIG_PVH=y"
    )]
    NotAKernel(PathBuf),
    /// The ELF has no PVH note.
    #[error("kernel {0} has no PVH entry point: rebuild it with CONFIG_PVH=y")]
    NoPvhEntry(PathBuf),
    /// linux-loader rejected the ELF.
    #[error("cannot load kernel {path}: {source}")]
    KernelLoad {
        /// The file.
        path: PathBuf,
        /// Why.
        source: linux_loader::loader::Error,
    },
    /// The initramfs does not fit.
    #[error(
        "the initramfs ({initrd_mib} MiB) does not fit in guest memory above the kernel: \
         give the VM more memory (--memory)"
    )]
    InitrdTooLarge {
        /// Its size in MiB.
        initrd_mib: u64,
    },
    /// The command line is too long.
    #[error("the kernel command line is {0} bytes long, the limit is {CMDLINE_MAX}")]
    CmdlineTooLong(usize),
    /// Writing boot structures into guest memory failed.
    #[error("cannot write boot data into guest memory: {0}")]
    GuestWrite(#[from] vm_memory::GuestMemoryError),
    /// linux-loader could not write the PVH structures.
    #[error("cannot write the PVH boot parameters: {0}")]
    Configure(#[from] linux_loader::configurator::Error),
}

/// What the vCPU setup needs from the loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The 32-bit PVH entry point.
    pub entry: GuestAddress,
}

/// Loads kernel (`file`, opened by [`open_kernel`]; `kernel` names it in errors), initramfs
/// and command line and writes the PVH start info.
pub fn load(
    memory: &GuestMemoryMmap,
    kernel: &Path,
    mut file: File,
    initramfs: &[u8],
    cmdline: &str,
) -> Result<LoadedKernel, BootError> {
    let loaded = Elf::load(memory, None, &mut file, Some(GuestAddress(HIGH_RAM_START))).map_err(
        |source| BootError::KernelLoad {
            path: kernel.to_path_buf(),
            source,
        },
    )?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => entry,
        _ => return Err(BootError::NoPvhEntry(kernel.to_path_buf())),
    };
    let initrd_addr = place_initramfs(memory, loaded.kernel_end, initramfs)?;
    write_cmdline(memory, cmdline)?;
    write_start_info(memory, initrd_addr, initramfs.len() as u64)?;
    Ok(LoadedKernel { entry })
}

/// Opens the kernel and tells apart "missing", "bzImage" and "not a kernel" with clear errors
/// (in the supervisor, which hands the file to the VMM process).
pub fn open_kernel(path: &Path) -> Result<File, BootError> {
    let read_error = |source| BootError::KernelRead {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => BootError::KernelMissing(path.to_path_buf()),
        _ => read_error(err),
    })?;
    let mut head = vec![0u8; 0x210];
    let read = read_prefix(&mut file, &mut head).map_err(read_error)?;
    head.truncate(read);
    if head.starts_with(b"\x7fELF") {
        return Ok(file);
    }
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Err(BootError::KernelIsBzImage(path.to_path_buf()));
    }
    Err(BootError::NotAKernel(path.to_path_buf()))
}

fn read_prefix(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Puts the initramfs at the top of low RAM, page aligned, above the kernel.
fn place_initramfs(
    memory: &GuestMemoryMmap,
    kernel_end: u64,
    initramfs: &[u8],
) -> Result<GuestAddress, BootError> {
    let size = initramfs.len() as u64;
    let too_large = BootError::InitrdTooLarge {
        initrd_mib: size.div_ceil(1 << 20),
    };
    let top = memory::low_ram_end(memory);
    let addr = top.checked_sub(size).ok_or(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end {
        return Err(BootError::InitrdTooLarge {
            initrd_mib: size.div_ceil(1 << 20),
        });
    }
    memory.write_slice(initramfs, GuestAddress(addr))?;
    Ok(GuestAddress(addr))
}

fn write_cmdline(memory: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(cmdline.len()));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    memory.write_slice(&bytes, GuestAddress(CMDLINE_START))?;
    Ok(())
}

/// The E820 map: conventional memory, the reserved MP table/BIOS area, then the RAM regions.
fn memory_map(memory: &GuestMemoryMmap) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64, type_: u32| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut map = vec![
        entry(0, LOW_RAM_END, E820_RAM),
        entry(MPTABLE_START, HIGH_RAM_START - MPTABLE_START, E820_RESERVED),
    ];
    for region in memory.iter() {
        use vm_memory::{Address, GuestMemoryRegion};
        let start = region.start_addr().raw_value().max(HIGH_RAM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

fn write_start_info(
    memory: &GuestMemoryMmap,
    initrd: GuestAddress,
    initrd_size: u64,
) -> Result<(), BootError> {
    let memmap = memory_map(memory);
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: 1,
        modlist_paddr: MODLIST_START,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: u32::try_from(memmap.len()).expect("a handful of E820 entries"),
        ..Default::default()
    };
    let module = hvm_modlist_entry {
        paddr: initrd.0,
        size: initrd_size,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(START_INFO));
    params.set_sections(&memmap, GuestAddress(MEMMAP_START));
    params.set_modules(&[module], GuestAddress(MODLIST_START));
    PvhBootConfigurator::write_bootparams(&params, memory)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_bogus_kernels_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        assert!(matches!(
            open_kernel(&missing),
            Err(BootError::KernelMissing(_))
        ));
        let text = dir.path().join("text");
        std::fs::write(&text, "hello, I am not a kernel\n").expect("write");
        let err = open_kernel(&text).expect_err("text is no kernel");
        assert!(err.to_string().contains("is not a kernel image"), "{err}");
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bzimage = dir.path().join("bzImage");
        std::fs::write(&bzimage, bz).expect("write");
        assert!(matches!(
            open_kernel(&bzimage),
            Err(BootError::KernelIsBzImage(_))
        ));
    }

    #[test]
    fn initramfs_goes_to_the_top_of_low_ram() {
        let memory = memory::create(64).expect("alloc");
        let addr = place_initramfs(&memory, 32 << 20, &[1u8; 5000]).expect("fits");
        assert_eq!(addr.0 % PAGE_SIZE, 0);
        assert!(addr.0 + 5000 <= 64 << 20);
        assert!(place_initramfs(&memory, 60 << 20, &vec![0u8; 8 << 20]).is_err());
    }

    #[test]
    fn memory_map_reserves_the_bios_area() {
        let memory = memory::create(64).expect("alloc");
        let map = memory_map(&memory);
        assert_eq!(map[1].addr, MPTABLE_START);
        assert_eq!(map[1].type_, E820_RESERVED);
        assert_eq!(map[2].addr, HIGH_RAM_START);
        assert_eq!(map[2].addr + map[2].size, 64 << 20);
    }
}
