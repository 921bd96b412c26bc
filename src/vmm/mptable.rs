//! Intel MultiProcessor Specification 1.4 table: tells a guest without ACPI how many CPUs it
//! has and where its local APICs and the I/O APIC are.
//!
//! Linux scans the last KiB of conventional memory for the floating pointer, so the table lives
//! at [`MPTABLE_START`] and the E820 map marks that area reserved.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the floating pointer structure starts.
pub const MPTABLE_START: u64 = 0x9_fc00;
/// Physical address of the local APICs.
pub const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
/// Physical address of the I/O APIC.
pub const IO_APIC_DEFAULT_BASE: u32 = 0xfec0_0000;
/// Number of I/O APIC input pins that get an interrupt entry.
pub const IOAPIC_PINS: u8 = 24;
/// Space the table may use inside the reserved area that ends at 1 MiB.
const MPTABLE_LIMIT: usize = 0x1000;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// CPU signature reported per processor entry (family 6) and feature flags (FPU, APIC).
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Errors while writing the table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many CPUs for the space the table may use.
    #[error("{0} vCPUs do not fit in the MP table")]
    TooManyCpus(u8),
    /// Writing to guest memory failed.
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// Builds the floating pointer and configuration table for `cpus` vCPUs at [`MPTABLE_START`].
pub fn build(cpus: u8) -> Result<Vec<u8>, MptableError> {
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_BASE.to_le_bytes());
    count += 2;
    for pin in 0..IOAPIC_PINS {
        // srcbus 0 (ISA), source irq = pin, destination = the I/O APIC's pin of the same number.
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            pin,
            ioapic_id,
            pin,
        ]);
        count += 1;
    }
    // ExtINT to LINT0 and NMI to LINT1 of every local APIC (destination 0xff = all).
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let header_len = 44usize;
    let table_len = header_len + entries.len();
    if 16 + table_len > MPTABLE_LIMIT {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let table_addr = u32::try_from(MPTABLE_START + 16).expect("MP table sits below 1 MiB");
    let mut table = Vec::with_capacity(16 + table_len);
    table.extend_from_slice(&floating_pointer(table_addr));
    let mut config = Vec::with_capacity(table_len);
    config.extend_from_slice(b"PCMP");
    config.extend_from_slice(
        &u16::try_from(table_len)
            .expect("checked above")
            .to_le_bytes(),
    );
    config.push(4); // spec revision 1.4
    config.push(0); // checksum, filled below
    config.extend_from_slice(b"PODVM   ");
    config.extend_from_slice(b"MICROVM     ");
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&count.to_le_bytes());
    config.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    config.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    config.extend_from_slice(&[0, 0]); // extended checksum, reserved
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);
    table.extend_from_slice(&config);
    Ok(table)
}

/// Writes the table for `cpus` vCPUs into guest memory.
pub fn write(memory: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    memory.write_slice(&build(cpus)?, GuestAddress(MPTABLE_START))?;
    Ok(())
}

fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut pointer = [0u8; 16];
    pointer[..4].copy_from_slice(b"_MP_");
    pointer[4..8].copy_from_slice(&table_addr.to_le_bytes());
    pointer[8] = 1; // length in 16-byte paragraphs
    pointer[9] = 4; // spec revision 1.4
    pointer[10] = checksum(&pointer);
    pointer
}

/// The byte that makes the sum of all bytes zero (modulo 256).
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, byte| sum.wrapping_sub(*byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte)) == 0
    }

    #[test]
    fn checksums_and_counts_hold() {
        for cpus in [1u8, 2, 8, 32] {
            let table = build(cpus).expect("fits");
            assert!(sums_to_zero(&table[..16]), "floating pointer checksum");
            let config = &table[16..];
            assert_eq!(&config[..4], b"PCMP");
            let len = u16::from_le_bytes([config[4], config[5]]) as usize;
            assert_eq!(len, config.len());
            assert!(sums_to_zero(config), "config table checksum");
            let count = u16::from_le_bytes([config[34], config[35]]);
            assert_eq!(count, u16::from(cpus) + 2 + u16::from(IOAPIC_PINS) + 2);
        }
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        assert!(build(254).is_err());
    }
}
