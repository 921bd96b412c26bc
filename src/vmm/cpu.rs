//! Per-vCPU architectural setup: CPUID, the local APIC's LINT pins and, for the boot CPU, the
//! 32-bit protected-mode state the PVH entry expects.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::{GDT_START, IDT_START, START_INFO};

/// Errors while configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A KVM vCPU ioctl failed.
    #[error("cannot {what} of vCPU {cpu}: {source}")]
    Ioctl {
        /// What was being set.
        what: &'static str,
        /// The vCPU index.
        cpu: u8,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// KVM did not report its supported CPUID.
    #[error("cannot read the CPUID KVM supports: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    /// Writing the GDT failed.
    #[error("cannot write the boot GDT into guest memory: {0}")]
    Gdt(#[from] vm_memory::GuestMemoryError),
}

/// The CPUID KVM supports on this host, read once per VM.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, CpuError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuError::SupportedCpuid)
}

/// Sets CPUID (with this vCPU's APIC id and the VM's topology) and the LAPIC LINT pins.
pub fn configure_common(vcpu: &VcpuFd, base: &CpuId, cpu: u8, cpus: u8) -> Result<(), CpuError> {
    let mut cpuid = base.clone();
    patch_cpuid(&mut cpuid, cpu, cpus);
    vcpu.set_cpuid2(&cpuid).map_err(|source| CpuError::Ioctl {
        what: "set CPUID",
        cpu,
        source,
    })?;
    set_lint_pins(vcpu, cpu)
}

/// Puts the boot CPU at the PVH entry: flat 32-bit protected mode, paging off, %ebx = start info.
pub fn configure_boot_cpu(
    vcpu: &VcpuFd,
    memory: &GuestMemoryMmap,
    entry: GuestAddress,
) -> Result<(), CpuError> {
    let ioctl = |what| {
        move |source| CpuError::Ioctl {
            what,
            cpu: 0,
            source,
        }
    };
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("set FPU state"))?;
    let regs = kvm_regs {
        rip: entry.0,
        rbx: START_INFO,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(ioctl("set registers"))?;
    let mut sregs = vcpu.get_sregs().map_err(ioctl("read special registers"))?;
    let gdt = [
        gdt_entry(0, 0, 0),
        gdt_entry(0xc09b, 0, 0xffff_ffff), // code: 32-bit, execute/read, accessed
        gdt_entry(0xc093, 0, 0xffff_ffff), // data: read/write, accessed
        gdt_entry(0x008b, 0, 0x67),        // TSS: busy 32-bit
    ];
    for (index, entry) in (0u64..).zip(gdt.iter()) {
        memory.write_obj(*entry, GuestAddress(GDT_START + index * 8))?;
    }
    memory.write_obj(0u64, GuestAddress(IDT_START))?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = u16::try_from(gdt.len() * 8 - 1).expect("four GDT entries");
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    let code = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
        .map_err(ioctl("set special registers"))
}

/// Gives each vCPU its own APIC id and describes `cpus` single-threaded cores in one package.
fn patch_cpuid(cpuid: &mut CpuId, cpu: u8, cpus: u8) {
    let core_bits = u32::BITS - u32::from(cpus.saturating_sub(1)).leading_zeros();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(cpu) << 24) | (u32::from(cpus) << 16);
                entry.ecx |= 1 << 31; // running under a hypervisor
                if cpus > 1 {
                    entry.edx |= 1 << 28; // HTT: more than one logical processor
                }
            }
            0xb => {
                entry.edx = u32::from(cpu);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8;
                    }
                    1 => {
                        entry.eax = core_bits;
                        entry.ebx = u32::from(cpus);
                        entry.ecx = (2 << 8) | 1;
                    }
                    index => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = index;
                    }
                }
            }
            0x8000_0008 => {
                entry.ecx = (entry.ecx & !0xf0ff) | u32::from(cpus.saturating_sub(1));
            }
            _ => {}
        }
    }
}

/// LINT0 delivers ExtINT (the legacy PIC), LINT1 delivers NMI, as firmware would leave them.
fn set_lint_pins(vcpu: &VcpuFd, cpu: u8) -> Result<(), CpuError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0b111 << 8;
    const DELIVERY_NMI: u32 = 0b100 << 8;
    let ioctl = |what| move |source| CpuError::Ioctl { what, cpu, source };
    let mut lapic = vcpu.get_lapic().map_err(ioctl("read the local APIC"))?;
    for (offset, mode) in [(LVT_LINT0, DELIVERY_EXTINT), (LVT_LINT1, DELIVERY_NMI)] {
        let old = read_lapic_reg(&lapic.regs, offset);
        write_lapic_reg(&mut lapic.regs, offset, (old & !0x700) | mode);
    }
    vcpu.set_lapic(&lapic).map_err(ioctl("set the local APIC"))
}

fn read_lapic_reg(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i].to_ne_bytes()[0]);
    u32::from_le_bytes(bytes)
}

fn write_lapic_reg(regs: &mut [std::os::raw::c_char; 1024], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = std::os::raw::c_char::from_ne_bytes([*byte]);
    }
}

/// Encodes a GDT descriptor from access/flags bits (`flags` = 0xF0FF mask layout), base, limit.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

/// Decodes a GDT descriptor into the segment KVM loads into a segment register.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let bits = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let granular = bits(55, 1);
    let limit = if granular == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit: u32::try_from(limit).expect("a 20-bit limit scaled by 4 KiB fits in 32 bits"),
        selector: index * 8,
        type_: bits(40, 0xf),
        present: bits(47, 1),
        dpl: bits(45, 3),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g: granular,
        avl: bits(52, 1),
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment_decodes() {
        let code = segment(gdt_entry(0xc09b, 0, 0xffff_ffff), 1);
        assert_eq!(code.base, 0);
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.type_, 0xb);
        assert_eq!(
            (code.present, code.db, code.s, code.g, code.l),
            (1, 1, 1, 1, 0)
        );
        assert_eq!(code.selector, 8);
        let tss = segment(gdt_entry(0x008b, 0, 0x67), 3);
        assert_eq!((tss.limit, tss.type_, tss.s, tss.g), (0x67, 0xb, 0, 0));
    }

    #[test]
    fn lapic_register_roundtrip() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        write_lapic_reg(&mut regs, 0x350, 0xdead_beef);
        assert_eq!(read_lapic_reg(&regs, 0x350), 0xdead_beef);
    }
}
