//! The flattened device tree handed to the guest in x0.

use crate::layout;
use vm_fdt::{Error as FdtError, FdtWriter};

const GIC_PHANDLE: u32 = 1;
/// Device-tree interrupt types (first cell).
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
/// Device-tree interrupt flags (third cell).
const IRQ_EDGE_RISING: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;
/// GICv3 maintenance interrupt PPI.
const GIC_MAINT_PPI: u32 = 9;

/// Everything the device tree describes.
#[derive(Debug, Clone, Default)]
pub struct FdtConfig {
    /// MPIDR_EL1 of each vCPU, in vCPU order.
    pub mpidrs: Vec<u64>,
    /// Guest RAM size (RAM starts at [`layout::RAM_BASE`]).
    pub memory: u64,
    /// Kernel command line (`/chosen/bootargs`, byte for byte).
    pub cmdline: String,
    /// Initrd as (start, end) guest-physical addresses.
    pub initrd: Option<(u64, u64)>,
    /// Describe SDEI firmware (`/firmware/sdei`, conduit HVC).
    pub sdei: bool,
    /// Describe the PMUv3 (its overflow PPI).
    pub pmu: bool,
    /// Describe a GICv3 ITS.
    pub its: bool,
    /// virtio-mmio devices as (base, SPI).
    pub virtio: Vec<(u64, u32)>,
}

/// Errors building the device tree.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// vm-fdt refused a node or property.
    #[error("Cannot build the device tree")]
    Build(#[from] FdtError),
    /// The result exceeds what the boot protocol allows.
    #[error("The device tree is {0} bytes, more than the boot protocol's 2 MiB")]
    TooLarge(usize),
}

/// Result of building the device tree.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds the device tree blob.
pub fn build(cfg: &FdtConfig) -> Result<Vec<u8>> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_string("compatible", "linux,dummy-virt")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 0)?;
    for mpidr in &cfg.mpidrs {
        let reg = mpidr & 0xff_00ff_ffff;
        let cpu = w.begin_node(&format!("cpu@{reg:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,arm-v8")?;
        if cfg.mpidrs.len() > 1 {
            w.property_string("enable-method", "psci")?;
        }
        w.property_u64("reg", reg)?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let mem = w.begin_node(&format!("memory@{:x}", layout::RAM_BASE))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[layout::RAM_BASE, cfg.memory])?;
    w.end_node(mem)?;

    let chosen = w.begin_node("chosen")?;
    w.property_string("bootargs", &cfg.cmdline)?;
    if let Some((start, end)) = cfg.initrd {
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", end)?;
    }
    w.property_string("stdout-path", &format!("/uart@{:x}", layout::UART_BASE))?;
    w.end_node(chosen)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    if cfg.sdei {
        let fw = w.begin_node("firmware")?;
        let sdei = w.begin_node("sdei")?;
        w.property_string("compatible", "arm,sdei-1.0")?;
        w.property_string("method", "hvc")?;
        w.end_node(sdei)?;
        w.end_node(fw)?;
    }

    let cpus_n = u8::try_from(cfg.mpidrs.len()).unwrap_or(layout::MAX_VCPUS);
    let gic = w.begin_node(&format!("intc@{:x}", layout::GIC_DIST_BASE))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_array_u64(
        "reg",
        &[
            layout::GIC_DIST_BASE,
            layout::GIC_DIST_SIZE,
            layout::GIC_REDIST_BASE,
            layout::redist_size(cpus_n),
        ],
    )?;
    w.property_u32("phandle", GIC_PHANDLE)?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_null("ranges")?;
    w.property_array_u32("interrupts", &[GIC_PPI, GIC_MAINT_PPI, IRQ_LEVEL_HIGH])?;
    if cfg.its {
        let its = w.begin_node(&format!("msi-controller@{:x}", layout::GIC_ITS_BASE))?;
        w.property_string("compatible", "arm,gic-v3-its")?;
        w.property_null("msi-controller")?;
        w.property_u32("#msi-cells", 1)?;
        w.property_array_u64("reg", &[layout::GIC_ITS_BASE, layout::GIC_ITS_SIZE])?;
        w.end_node(its)?;
    }
    w.end_node(gic)?;

    let timer = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    w.property_null("always-on")?;
    let mut irqs = Vec::new();
    for ppi in layout::TIMER_PPIS {
        irqs.extend_from_slice(&[GIC_PPI, ppi, IRQ_LEVEL_HIGH]);
    }
    w.property_array_u32("interrupts", &irqs)?;
    w.end_node(timer)?;

    if cfg.pmu {
        let pmu = w.begin_node("pmu")?;
        w.property_string("compatible", "arm,armv8-pmuv3")?;
        w.property_array_u32("interrupts", &[GIC_PPI, layout::PMU_PPI, IRQ_LEVEL_HIGH])?;
        w.end_node(pmu)?;
    }

    let uart = w.begin_node(&format!("uart@{:x}", layout::UART_BASE))?;
    w.property_string("compatible", "ns16550a")?;
    w.property_array_u64("reg", &[layout::UART_BASE, layout::UART_SIZE])?;
    w.property_u32("clock-frequency", layout::UART_CLOCK_HZ)?;
    w.property_array_u32("interrupts", &[GIC_SPI, layout::UART_SPI, IRQ_EDGE_RISING])?;
    w.end_node(uart)?;

    for (base, spi) in &cfg.virtio {
        let v = w.begin_node(&format!("virtio_mmio@{base:x}"))?;
        w.property_string("compatible", "virtio,mmio")?;
        w.property_array_u64("reg", &[*base, layout::VIRTIO_SIZE])?;
        w.property_array_u32("interrupts", &[GIC_SPI, *spi, IRQ_EDGE_RISING])?;
        w.property_null("dma-coherent")?;
        w.end_node(v)?;
    }

    w.end_node(root)?;
    let blob = w.finish()?;
    if blob.len() as u64 > layout::FDT_MAX_SIZE {
        return Err(Error::TooLarge(blob.len()));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn base() -> FdtConfig {
        FdtConfig {
            mpidrs: vec![0x8000_0000, 0x8000_0001],
            memory: 512 << 20,
            cmdline: "console=ttyS0 quiet".into(),
            ..Default::default()
        }
    }

    #[test]
    fn blob_has_the_fdt_magic_and_the_command_line_verbatim() {
        let blob = build(&base()).unwrap();
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        assert!(contains(&blob, b"console=ttyS0 quiet\0"));
        assert!(contains(&blob, b"cpu@1\0"));
        assert!(contains(&blob, b"memory@80000000\0"));
    }

    #[test]
    fn sdei_node_only_when_asked() {
        assert!(!contains(&build(&base()).unwrap(), b"arm,sdei-1.0"));
        let cfg = FdtConfig {
            sdei: true,
            ..base()
        };
        assert!(contains(&build(&cfg).unwrap(), b"arm,sdei-1.0"));
    }

    #[test]
    fn pmu_and_its_nodes_only_when_asked() {
        let blob = build(&base()).unwrap();
        assert!(!contains(&blob, b"arm,armv8-pmuv3") && !contains(&blob, b"arm,gic-v3-its"));
        let blob = build(&FdtConfig {
            pmu: true,
            its: true,
            ..base()
        })
        .unwrap();
        assert!(contains(&blob, b"arm,armv8-pmuv3") && contains(&blob, b"arm,gic-v3-its"));
    }

    #[test]
    fn initrd_range_is_described() {
        let cfg = FdtConfig {
            initrd: Some((0x9000_0000, 0x9010_0000)),
            ..base()
        };
        let blob = build(&cfg).unwrap();
        assert!(contains(&blob, b"linux,initrd-start"));
        assert!(contains(&blob, &0x9010_0000u64.to_be_bytes()));
    }

    #[test]
    fn virtio_mmio_nodes_describe_window_spi_and_coherency() {
        assert!(!contains(&build(&base()).unwrap(), b"virtio,mmio"));
        let (b0, s0) = layout::virtio_slot(0).unwrap();
        let (b1, s1) = layout::virtio_slot(1).unwrap();
        let blob = build(&FdtConfig {
            virtio: vec![(b0, s0), (b1, s1)],
            ..base()
        })
        .unwrap();
        assert!(contains(&blob, b"virtio_mmio@a000000\0"));
        assert!(contains(&blob, b"virtio_mmio@a000200\0"));
        assert!(contains(&blob, b"virtio,mmio\0"));
        assert!(contains(&blob, b"dma-coherent\0"));
        let mut reg = Vec::new();
        reg.extend_from_slice(&b1.to_be_bytes());
        reg.extend_from_slice(&layout::VIRTIO_SIZE.to_be_bytes());
        assert!(contains(&blob, &reg));
        let mut irq = Vec::new();
        for cell in [GIC_SPI, s1, IRQ_EDGE_RISING] {
            irq.extend_from_slice(&cell.to_be_bytes());
        }
        assert!(contains(&blob, &irq));
    }

    #[test]
    fn memory_node_describes_exactly_the_ram_asked_for() {
        let blob = build(&base()).unwrap();
        let mut reg = Vec::new();
        reg.extend_from_slice(&layout::RAM_BASE.to_be_bytes());
        reg.extend_from_slice(&(512u64 << 20).to_be_bytes());
        assert!(contains(&blob, &reg));
    }
}
