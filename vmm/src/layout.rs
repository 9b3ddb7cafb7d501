//! The guest-physical memory map, in one place (described for users in `docs/refvmm.md`).
//!
//! ```text
//! 0x0800_0000  GICv3 distributor            64 KiB
//! 0x0808_0000  GICv3 ITS (optional)         128 KiB
//! 0x080A_0000  GICv3 redistributors         128 KiB per vCPU (up to MAX_VCPUS)
//! 0x0900_0000  16550 UART                   4 KiB, SPI UART_SPI, edge rising
//! 0x0A00_0000  virtio-mmio slots            512 B each (VIRTIO_SLOTS), SPIs from VIRTIO_SPI_BASE
//! 0x8000_0000  RAM                          as large as asked for, memory slot RAM_SLOT
//! above RAM    virtio-pmem regions          from the first 1 GiB boundary above RAM, back to
//!                                           back (each a multiple of 2 MiB), below IPA_LIMIT;
//!                                           memory slots from RAM_SLOT + 1 (pmem_slot)
//! ```
//! Anything else below RAM is unbacked MMIO: reads return zero, writes are ignored. The pmem
//! regions are not RAM: the device tree's memory node does not describe them; each virtio-pmem
//! device reports its region in its configuration space.

/// Base of the GICv3 distributor.
pub const GIC_DIST_BASE: u64 = 0x0800_0000;
/// Size of the distributor frame.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// Base of the optional ITS (two 64 KiB frames), between distributor and redistributors.
pub const GIC_ITS_BASE: u64 = 0x0808_0000;
/// Size of the ITS frames.
pub const GIC_ITS_SIZE: u64 = 0x2_0000;
/// Base of the redistributor region.
pub const GIC_REDIST_BASE: u64 = 0x080A_0000;
/// Size of one vCPU's redistributor (RD_base + SGI_base frames).
pub const GIC_REDIST_SIZE_PER_CPU: u64 = 0x2_0000;
/// Most vCPUs; their redistributors end below the UART.
pub const MAX_VCPUS: u8 = 123;
/// Number of interrupts the GIC is configured with (SGIs + PPIs + SPIs), a multiple of 32.
pub const GIC_NR_IRQS: u32 = 128;

/// Base of the 16550 UART.
pub const UART_BASE: u64 = 0x0900_0000;
/// Size of the UART's MMIO window.
pub const UART_SIZE: u64 = 0x1000;
/// The UART's SPI number (INTID 32 + this).
pub const UART_SPI: u32 = 1;
/// The UART's input clock, reported in the device tree.
pub const UART_CLOCK_HZ: u32 = 1_843_200;

/// Base of the virtio-mmio device slots.
pub const VIRTIO_BASE: u64 = 0x0A00_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_SIZE: u64 = 0x200;
/// SPI of the first virtio-mmio slot.
pub const VIRTIO_SPI_BASE: u32 = 16;
/// Number of virtio-mmio slots (slot `i` at `VIRTIO_BASE + i * VIRTIO_SIZE`, SPI
/// `VIRTIO_SPI_BASE + i`).
pub const VIRTIO_SLOTS: u32 = 32;

/// Start of guest RAM.
pub const RAM_BASE: u64 = 0x8000_0000;
/// KVM memory slot of guest RAM.
pub const RAM_SLOT: u32 = 0;

/// End of the guest-physical address space: KVM's default 40-bit IPA size.
pub const IPA_LIMIT: u64 = 1 << 40;
/// The first pmem region starts at the first multiple of this above the end of RAM.
pub const PMEM_START_ALIGN: u64 = 1 << 30;
/// Size and alignment granule of a pmem region (the guest's memory hotplug sub-section).
pub const PMEM_ALIGN: u64 = 2 << 20;

/// Architected timer PPIs (INTID - 16): secure, non-secure, virtual, hypervisor.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// PMU overflow PPI (INTID 23).
pub const PMU_PPI: u32 = 7;

/// Longest kernel command line, including the terminating NUL (arm64 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;

/// The kernel's load offset into RAM (arm64 boot protocol: 2 MiB aligned base).
pub const KERNEL_OFFSET: u64 = 0;
/// Largest device tree the boot protocol allows.
pub const FDT_MAX_SIZE: u64 = 2 << 20;

/// Where the device tree goes: the last 2 MiB-aligned 2 MiB of RAM (it may not cross a 2 MiB
/// boundary and must be 8-byte aligned).
pub fn fdt_addr(mem_size: u64) -> u64 {
    RAM_BASE + mem_size - FDT_MAX_SIZE
}

/// Where an initrd of `size` bytes goes: page-aligned, directly below the device tree.
pub fn initrd_addr(mem_size: u64, size: u64) -> Option<u64> {
    let top = fdt_addr(mem_size);
    let start = top.checked_sub(size)? & !0xfff;
    (start >= RAM_BASE).then_some(start)
}

/// Base address and SPI of virtio-mmio slot `index`, if there is such a slot.
pub fn virtio_slot(index: usize) -> Option<(u64, u32)> {
    let i = u32::try_from(index).ok().filter(|&i| i < VIRTIO_SLOTS)?;
    Some((
        VIRTIO_BASE + u64::from(i) * VIRTIO_SIZE,
        VIRTIO_SPI_BASE + i,
    ))
}

/// Guest-physical bases of pmem regions of `sizes` bytes (each a non-zero multiple of
/// [`PMEM_ALIGN`]) in a VM with `mem_size` bytes of RAM: the first at the first
/// [`PMEM_START_ALIGN`] boundary above RAM, the others directly after their predecessor. `None`
/// if a size is not such a multiple or the regions do not end below [`IPA_LIMIT`].
pub fn pmem_bases(mem_size: u64, sizes: &[u64]) -> Option<Vec<u64>> {
    let ram_end = RAM_BASE.checked_add(mem_size)?;
    let mut next = ram_end.checked_next_multiple_of(PMEM_START_ALIGN)?;
    let mut bases = Vec::with_capacity(sizes.len());
    for &size in sizes {
        if size == 0 || size % PMEM_ALIGN != 0 {
            return None;
        }
        bases.push(next);
        next = next.checked_add(size)?;
    }
    (next <= IPA_LIMIT).then_some(bases)
}

/// KVM memory slot of pmem region `index`: the slots after [`RAM_SLOT`], one per region.
pub fn pmem_slot(index: usize) -> Option<u32> {
    let i = u32::try_from(index).ok().filter(|&i| i < VIRTIO_SLOTS)?;
    Some(RAM_SLOT + 1 + i)
}

/// Redistributor region size for `cpus` vCPUs.
pub fn redist_size(cpus: u8) -> u64 {
    GIC_REDIST_SIZE_PER_CPU * u64::from(cpus)
}

// The map's regions do not overlap (checked at compile time).
const _: () = {
    assert!(GIC_DIST_BASE + GIC_DIST_SIZE <= GIC_ITS_BASE);
    assert!(GIC_ITS_BASE + GIC_ITS_SIZE <= GIC_REDIST_BASE);
    assert!(GIC_REDIST_BASE + GIC_REDIST_SIZE_PER_CPU * MAX_VCPUS as u64 <= UART_BASE);
    assert!(UART_BASE + UART_SIZE <= VIRTIO_BASE);
    assert!(VIRTIO_BASE + VIRTIO_SIZE * VIRTIO_SLOTS as u64 <= RAM_BASE);
    // Every virtio SPI exists in the GIC (INTIDs 32 + SPI < GIC_NR_IRQS).
    assert!(32 + VIRTIO_SPI_BASE + VIRTIO_SLOTS <= GIC_NR_IRQS);
    assert!(UART_SPI < VIRTIO_SPI_BASE);
    assert!(PMEM_START_ALIGN % PMEM_ALIGN == 0);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdt_sits_in_the_last_two_mib_of_ram() {
        assert_eq!(fdt_addr(512 << 20), RAM_BASE + (510 << 20));
        assert_eq!(fdt_addr(512 << 20) % (2 << 20), 0);
    }

    #[test]
    fn initrd_is_page_aligned_below_the_fdt_or_refused() {
        let mem = 64 << 20;
        let a = initrd_addr(mem, 10_000).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 10_000 <= fdt_addr(mem));
        assert_eq!(initrd_addr(mem, 63 << 20), None);
    }

    #[test]
    fn virtio_slots_are_consecutive_with_their_own_spis() {
        assert_eq!(virtio_slot(0), Some((VIRTIO_BASE, VIRTIO_SPI_BASE)));
        assert_eq!(
            virtio_slot(3),
            Some((VIRTIO_BASE + 3 * VIRTIO_SIZE, VIRTIO_SPI_BASE + 3))
        );
        assert_eq!(virtio_slot(VIRTIO_SLOTS as usize), None);
    }

    #[test]
    fn pmem_regions_start_on_the_gib_above_ram_and_follow_each_other() {
        let mib = 1u64 << 20;
        // 512 MiB of RAM ends at 2.5 GiB: the first region goes at 3 GiB.
        let bases = pmem_bases(512 * mib, &[2 * mib, 64 * mib, 2 * mib]).unwrap();
        assert_eq!(
            bases,
            vec![3 << 30, (3 << 30) + 2 * mib, (3 << 30) + 66 * mib]
        );
        // RAM ending exactly on a GiB boundary: no gap.
        assert_eq!(pmem_bases(2 << 30, &[2 * mib]).unwrap(), vec![4 << 30]);
        assert!(bases.iter().all(|b| b % PMEM_ALIGN == 0));
    }

    #[test]
    fn pmem_slots_follow_the_ram_slot_one_per_device() {
        assert_eq!(pmem_slot(0), Some(RAM_SLOT + 1));
        assert_eq!(pmem_slot(5), Some(RAM_SLOT + 6));
        assert_eq!(
            pmem_slot(VIRTIO_SLOTS as usize - 1),
            Some(RAM_SLOT + VIRTIO_SLOTS)
        );
        assert_eq!(pmem_slot(VIRTIO_SLOTS as usize), None);
    }

    #[test]
    fn pmem_regions_must_be_whole_granules_below_the_ipa_limit() {
        let mib = 1u64 << 20;
        assert_eq!(pmem_bases(512 * mib, &[mib]), None);
        assert_eq!(pmem_bases(512 * mib, &[0]), None);
        // 3 GiB + 1021 GiB ends exactly at 1 TiB; one granule more does not fit.
        assert!(pmem_bases(512 * mib, &[1021 << 30]).is_some());
        assert_eq!(pmem_bases(512 * mib, &[1021 << 30, 2 * mib]), None);
        assert_eq!(pmem_bases(512 * mib, &[u64::MAX - (2 * mib - 1)]), None);
        assert_eq!(pmem_bases(512 * mib, &[]), Some(vec![]));
    }
}
