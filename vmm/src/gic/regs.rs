//! The GICv3 registers a saved state holds, in the order a restore writes them: the
//! distributor's ([`dist_layout`]), each redistributor's ([`REDIST_REGS`]) and each CPU
//! interface's ([`icc_layout`]), and the encodings KVM's vgic-v3 device attributes use for
//! them.

use crate::kvm_abi;

/// A system register's encoding as the `instr` field of `KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS`.
pub const fn sysreg(op0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> u32 {
    (op0 << kvm_abi::SYSREG_OP0_SHIFT)
        | (op1 << kvm_abi::SYSREG_OP1_SHIFT)
        | (crn << kvm_abi::SYSREG_CRN_SHIFT)
        | (crm << kvm_abi::SYSREG_CRM_SHIFT)
        | (op2 << kvm_abi::SYSREG_OP2_SHIFT)
}

/// `GICD_CTLR`, the distributor's control register (restored last).
pub const GICD_CTLR: u32 = 0x0;
/// `GICD_IIDR`, the implementer identification (restored first: it selects KVM's behaviour).
pub const GICD_IIDR: u32 = 0x8;
/// `GICD_STATUSR`.
pub const GICD_STATUSR: u32 = 0x10;

/// Per-interrupt distributor registers saved for the SPIs, in restore order (configuration
/// before state), with their bits per interrupt.
pub const DIST_SPI_REGS: [(u32, u32, &str); 8] = [
    (0x80, 1, "GICD_IGROUPR"),
    (0x6000, 64, "GICD_IROUTER"),
    (0xc00, 2, "GICD_ICFGR"),
    (0xd00, 1, "GICD_IGRPMODR"),
    (0x400, 8, "GICD_IPRIORITYR"),
    (0x100, 1, "GICD_ISENABLER"),
    (0x200, 1, "GICD_ISPENDR"),
    (0x300, 1, "GICD_ISACTIVER"),
];

/// SGI_base frame of a redistributor.
pub const SGI: u32 = 0x1_0000;
/// `GICR_PROPBASER`, the LPI configuration table's base (64 bits: two words).
pub const GICR_PROPBASER: u32 = 0x70;
/// `GICR_PENDBASER`, the LPI pending table's base (64 bits: two words).
pub const GICR_PENDBASER: u32 = 0x78;

/// Redistributor registers, in restore order: the LPI table bases before `GICR_CTLR` (KVM
/// ignores them once LPIs are on), configuration before state.
pub const REDIST_REGS: [(u32, &str); 22] = [
    (GICR_PROPBASER, "GICR_PROPBASER"),
    (GICR_PROPBASER + 4, "GICR_PROPBASER"),
    (GICR_PENDBASER, "GICR_PENDBASER"),
    (GICR_PENDBASER + 4, "GICR_PENDBASER"),
    (0x0, "GICR_CTLR"),
    (0x10, "GICR_STATUSR"),
    (0x14, "GICR_WAKER"),
    (SGI + 0x80, "GICR_IGROUPR0"),
    (SGI + 0xc00, "GICR_ICFGR0"),
    (SGI + 0xc04, "GICR_ICFGR1"),
    (SGI + 0xd00, "GICR_IGRPMODR0"),
    (SGI + 0x400, "GICR_IPRIORITYR"),
    (SGI + 0x404, "GICR_IPRIORITYR"),
    (SGI + 0x408, "GICR_IPRIORITYR"),
    (SGI + 0x40c, "GICR_IPRIORITYR"),
    (SGI + 0x410, "GICR_IPRIORITYR"),
    (SGI + 0x414, "GICR_IPRIORITYR"),
    (SGI + 0x418, "GICR_IPRIORITYR"),
    (SGI + 0x41c, "GICR_IPRIORITYR"),
    (SGI + 0x100, "GICR_ISENABLER0"),
    (SGI + 0x200, "GICR_ISPENDR0"),
    (SGI + 0x300, "GICR_ISACTIVER0"),
];

/// `ICC_CTLR_EL1`, whose PRIbits field decides which active-priority registers exist.
pub const ICC_CTLR_EL1: u32 = sysreg(3, 0, 12, 12, 4);

/// CPU interface registers before the active priorities, in restore order: `ICC_SRE_EL1`
/// first, then `ICC_CTLR_EL1`, which sets the number of priority bits.
pub const ICC_REGS: [(u32, &str); 7] = [
    (sysreg(3, 0, 12, 12, 5), "ICC_SRE_EL1"),
    (ICC_CTLR_EL1, "ICC_CTLR_EL1"),
    (sysreg(3, 0, 4, 6, 0), "ICC_PMR_EL1"),
    (sysreg(3, 0, 12, 8, 3), "ICC_BPR0_EL1"),
    (sysreg(3, 0, 12, 12, 3), "ICC_BPR1_EL1"),
    (sysreg(3, 0, 12, 12, 6), "ICC_IGRPEN0_EL1"),
    (sysreg(3, 0, 12, 12, 7), "ICC_IGRPEN1_EL1"),
];

/// How many `ICC_AP{0,1}R<n>_EL1` exist for an `ICC_CTLR_EL1` value: one for 5 priority bits,
/// two for 6, four for 7 (PRIbits, bits 10 to 8, holds the count minus one).
pub fn ap_count(icc_ctlr: u64) -> u32 {
    match ((icc_ctlr >> 8) & 7) + 1 {
        0..=5 => 1,
        6 => 2,
        _ => 4,
    }
}

/// The CPU interface registers saved for a vCPU whose `ICC_CTLR_EL1` is `icc_ctlr`.
pub fn icc_layout(icc_ctlr: u64) -> Vec<(u32, &'static str)> {
    let n = ap_count(icc_ctlr);
    let ap0 = (0..n).map(|i| (sysreg(3, 0, 12, 8, 4 | i), "ICC_AP0R<n>_EL1"));
    let ap1 = (0..n).map(|i| (sysreg(3, 0, 12, 9, i), "ICC_AP1R<n>_EL1"));
    ICC_REGS.into_iter().chain(ap0).chain(ap1).collect()
}

/// The distributor registers saved for `nr_irqs` interrupts: `GICD_IIDR` first (it selects
/// KVM's behaviour for the rest), `GICD_CTLR` last.
pub fn dist_layout(nr_irqs: u32) -> Vec<(u32, &'static str)> {
    let spis = nr_irqs.saturating_sub(32);
    let mut regs = vec![(GICD_IIDR, "GICD_IIDR"), (GICD_STATUSR, "GICD_STATUSR")];
    for (base, bits, name) in DIST_SPI_REGS {
        let first = base + 32 * bits / 8;
        regs.extend((0..spis * bits / 32).map(|i| (first + 4 * i, name)));
    }
    regs.push((GICD_CTLR, "GICD_CTLR"));
    regs
}

/// The affinity fields of an MPIDR (Aff3, Aff2, Aff1, Aff0), the rest cleared.
pub fn affinity(mpidr: u64) -> u64 {
    mpidr & 0xff_00ff_ffff
}
