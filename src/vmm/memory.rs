//! Guest physical memory: the address map, allocation and registration with KVM.
//!
//! ```text
//! 0x0000_0500  GDT used for the PVH entry        (boot::GDT_START)
//! 0x0000_6000  PVH start_info, module list, E820 (boot::START_INFO ...)
//! 0x0002_0000  kernel command line               (boot::CMDLINE_START)
//! 0x0009_fc00  MP table, reserved to 1 MiB       (mptable::MPTABLE_START)
//! 0x0010_0000  RAM: kernel (at its ELF address), initramfs at the top of low RAM
//! 0xd000_0000  MMIO hole for devices up to 4 GiB
//! 0x1_0000_0000 RAM above the hole when the guest has more than the hole's start
//! ```

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// Start of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xd000_0000;
/// End of the MMIO hole (4 GiB).
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// End of conventional memory (the last KiB below 640 KiB is reserved for the MP table).
pub const LOW_RAM_END: u64 = 0x9_fc00;
/// Start of extended memory.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// The smallest guest we accept, in MiB.
pub const MIN_MEMORY_MIB: u64 = 32;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host could not map the memory.
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Allocate {
        /// Requested size.
        mib: u64,
        /// Why.
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM refused a memory slot.
    #[error("KVM refused guest memory slot {slot} at {addr:#x}: {source}")]
    Register {
        /// Slot number.
        slot: u32,
        /// Guest physical start address.
        addr: u64,
        /// Why.
        source: kvm_ioctls::Error,
    },
}

/// The RAM ranges (start, length) of a guest with `size` bytes of memory.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    let below_hole = size.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), to_usize(below_hole))];
    if size > MMIO_HOLE_START {
        ranges.push((
            GuestAddress(MMIO_HOLE_END),
            to_usize(size - MMIO_HOLE_START),
        ));
    }
    ranges
}

/// Allocates `mib` MiB of anonymous guest memory laid out by [`ram_ranges`].
pub fn create(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(mib << 20))
        .map_err(|source| MemoryError::Allocate { mib, source })
}

/// Registers every region of `memory` with the VM.
pub fn register(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in (0u32..).zip(memory.iter()) {
        let addr = region.start_addr().raw_value();
        let descriptor = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: addr,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live anonymous mapping owned by `memory`, which the VMM keeps
        // alive for as long as the VM exists, and slots do not overlap (disjoint ranges).
        unsafe { vm.set_user_memory_region(descriptor) }
            .map_err(|source| MemoryError::Register { slot, addr, source })?;
    }
    Ok(())
}

/// The end of RAM below the MMIO hole (exclusive).
pub fn low_ram_end(memory: &GuestMemoryMmap) -> u64 {
    memory
        .iter()
        .map(|region| region.start_addr().raw_value() + region.len())
        .filter(|end| *end <= MMIO_HOLE_START)
        .max()
        .unwrap_or(0)
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).expect("guest memory sizes fit in usize on 64-bit hosts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(
            ranges[1],
            (
                GuestAddress(MMIO_HOLE_END),
                ((4 << 30) - MMIO_HOLE_START) as usize
            )
        );
    }

    #[test]
    fn low_end_of_small_guest() {
        let memory = create(64).expect("alloc");
        assert_eq!(low_ram_end(&memory), 64 << 20);
    }
}
