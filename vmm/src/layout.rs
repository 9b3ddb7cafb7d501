//! The guest-physical memory map, in one place (described for users in `docs/refvmm.md`).
//!
//! ```text
//! 0x0800_0000  GICv3 distributor            64 KiB
//! 0x0808_0000  GICv3 ITS (optional)         128 KiB
//! 0x080A_0000  GICv3 redistributors         128 KiB per vCPU (up to MAX_VCPUS)
//! 0x0900_0000  16550 UART                   4 KiB, SPI UART_SPI, edge rising
//! 0x0A00_0000  virtio-mmio slots            512 B each, SPIs from VIRTIO_SPI_BASE
//! 0x8000_0000  RAM                          as large as asked for
//! ```
//! Anything else below RAM is unbacked MMIO: reads return zero, writes are ignored.

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

/// Start of guest RAM.
pub const RAM_BASE: u64 = 0x8000_0000;

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
    assert!(VIRTIO_BASE < RAM_BASE);
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
}
