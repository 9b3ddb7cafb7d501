//! Saving and restoring the in-kernel GICv3 (KVM's vgic-v3) through its device attributes.
//!
//! [`save`] reads the distributor (SPI state), every vCPU's redistributor (SGI/PPI state) and CPU
//! interface system registers, and the input line levels of level-triggered interrupts into a
//! plain [`GicState`]. [`restore`] validates that state against the VM it is written into (same
//! number of interrupts, same vCPUs in the same order) before touching the device, then writes:
//!
//! 1. `GICD_IIDR` first, so KVM applies the saved implementation revision to everything after;
//! 2. the distributor's SPI registers: group, routing, configuration, priority, then enable and
//!    active (clear every bit, then set the saved ones), the pending latch (KVM's userspace
//!    `ISPENDR` sets and clears the latch in one write) and the line levels (after the
//!    configuration, since only level-triggered lines keep a level);
//! 3. each redistributor: `PROPBASER`/`PENDBASER` before `GICR_CTLR` (the bases are frozen once
//!    LPIs are on), then the SGI/PPI registers in the distributor's order, and the PPI line
//!    levels except those KVM drives itself (timers, PMU);
//! 4. each CPU interface: `ICC_SRE_EL1`, `ICC_CTLR_EL1` (which fixes the number of priority bits
//!    and so which `ICC_AP{0,1}R<n>_EL1` exist), the other registers, the active priorities;
//! 5. `GICD_CTLR` last, so the distributor is enabled only once everything else is in place.
//!
//! The vCPUs must not be running while either function runs (KVM answers `EBUSY`). LPIs are
//! refused: a VM with an ITS keeps LPI state in guest memory and in the ITS tables, which this
//! module does not cover yet.

use crate::layout;
use kvm_bindings::{
    kvm_device_attr, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
    KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
    KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT, KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT,
    KVM_REG_ARM64_SYSREG_CRM_SHIFT, KVM_REG_ARM64_SYSREG_CRN_SHIFT, KVM_REG_ARM64_SYSREG_OP0_SHIFT,
    KVM_REG_ARM64_SYSREG_OP1_SHIFT, KVM_REG_ARM64_SYSREG_OP2_SHIFT, VGIC_LEVEL_INFO_LINE_LEVEL,
};
use kvm_ioctls::DeviceFd;

/// Format version written by [`GicState::encode`].
pub const STATE_VERSION: u32 = 1;
/// Most vCPUs a state may describe (refvmm's own limit).
pub const MAX_CPUS: usize = layout::MAX_VCPUS as usize;

/// Errors saving, restoring, encoding or decoding GIC state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM refused a register access.
    #[error("KVM refused to {op} GICv3 register {what} (attribute {attr:#x})")]
    Access {
        /// "read" or "write".
        op: &'static str,
        /// The register.
        what: &'static str,
        /// The `kvm_device_attr.attr` value.
        attr: u64,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The interrupt count is not one a GICv3 can have.
    #[error("{0} interrupts is not a multiple of 32 between 64 and 1024")]
    BadNrIrqs(u32),
    /// No vCPUs, or more than [`MAX_CPUS`].
    #[error("A GIC state needs between 1 and {MAX_CPUS} vCPUs, not {0}")]
    BadCpuCount(usize),
    /// The device and the caller disagree on the number of interrupts.
    #[error("The GIC has {device} interrupts but the VM was configured with {given}")]
    DeviceNrIrqs {
        /// What `GICD_TYPER` reports.
        device: u32,
        /// What the caller passed.
        given: u32,
    },
    /// The GIC has LPIs (an ITS), whose state is not saved.
    #[error("GIC snapshots do not cover LPIs yet, and this GIC has an ITS")]
    Lpis,
    /// The state was saved from a VM with another number of interrupts.
    #[error("The GIC state has {saved} interrupts but the VM has {vm}")]
    NrIrqsMismatch {
        /// Interrupts in the state.
        saved: u32,
        /// Interrupts in the VM.
        vm: u32,
    },
    /// The state was saved from a VM with another number of vCPUs.
    #[error("The GIC state has {saved} vCPUs but the VM has {vm}")]
    CpuCountMismatch {
        /// vCPUs in the state.
        saved: usize,
        /// vCPUs in the VM.
        vm: usize,
    },
    /// A vCPU's affinity differs between the state and the VM.
    #[error("vCPU {index} has MPIDR {saved:#x} in the GIC state but {vm:#x} in the VM")]
    MpidrMismatch {
        /// vCPU index.
        index: usize,
        /// MPIDR in the state.
        saved: u64,
        /// MPIDR in the VM.
        vm: u64,
    },
    /// A register list is not the one this module saves for the state's shape.
    #[error("The GIC state's {0} registers are not the expected ones")]
    Layout(&'static str),
    /// The encoded state ends early (or a count promises more than the bytes that follow).
    #[error("The encoded GIC state is truncated")]
    Truncated,
    /// The encoded state has bytes after its end.
    #[error("The encoded GIC state has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// The encoded state has a format version this build does not read.
    #[error(
        "The encoded GIC state has format version {0}; this build reads version {STATE_VERSION}"
    )]
    UnsupportedVersion(u32),
}

/// Result of GIC state operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The whole saved GICv3. Register lists are `(offset or encoding, value)` pairs in restore
/// order; [`GicState::check`] insists they are exactly the lists [`save`] writes for the
/// state's shape, so a state cannot make [`restore`] touch any other register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GicState {
    /// Interrupts (SGIs + PPIs + SPIs) the GIC was configured with.
    pub nr_irqs: u32,
    /// Distributor registers: `(offset, value)`, SPI parts only, `GICD_CTLR` last.
    pub dist: Vec<(u32, u32)>,
    /// Input line levels of the SPIs, one bit each, 32 per word from INTID 32.
    pub spi_levels: Vec<u32>,
    /// Per-vCPU state, in vCPU index order.
    pub cpus: Vec<CpuState>,
}

/// One vCPU's redistributor and CPU interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuState {
    /// The vCPU's MPIDR_EL1 when saved.
    pub mpidr: u64,
    /// Redistributor registers: `(offset from RD_base, value)`; SGI_base is at 0x10000.
    pub redist: Vec<(u32, u32)>,
    /// Input line levels of the PPIs (bit n is INTID n).
    pub ppi_levels: u32,
    /// CPU interface registers: (encoding as from [`sysreg`], value).
    pub icc: Vec<(u32, u64)>,
}

/// A system register's encoding as the `instr` field of `KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS`.
pub const fn sysreg(op0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> u32 {
    (op0 << KVM_REG_ARM64_SYSREG_OP0_SHIFT)
        | (op1 << KVM_REG_ARM64_SYSREG_OP1_SHIFT)
        | (crn << KVM_REG_ARM64_SYSREG_CRN_SHIFT)
        | (crm << KVM_REG_ARM64_SYSREG_CRM_SHIFT)
        | (op2 << KVM_REG_ARM64_SYSREG_OP2_SHIFT)
}

// Distributor offsets.
const GICD_CTLR: u32 = 0x0;
const GICD_TYPER: u32 = 0x4;
const GICD_IIDR: u32 = 0x8;
const GICD_STATUSR: u32 = 0x10;
const GICD_TYPER_LPIS: u32 = 1 << 17;

/// Per-interrupt distributor registers saved for the SPIs, in restore order (configuration
/// before state), with their bits per interrupt.
const DIST_SPI_REGS: [(u32, u32, &str); 8] = [
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
const SGI: u32 = 0x1_0000;
const GICR_PROPBASER: u32 = 0x70;
const GICR_PENDBASER: u32 = 0x78;

/// Redistributor registers, in restore order: the LPI table bases before `GICR_CTLR` (KVM
/// ignores them once LPIs are on), configuration before state.
const REDIST_REGS: [(u32, &str); 22] = [
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

const ICC_CTLR_EL1: u32 = sysreg(3, 0, 12, 12, 4);

/// CPU interface registers before the active priorities, in restore order: `ICC_SRE_EL1`
/// first, then `ICC_CTLR_EL1`, which sets the number of priority bits.
const ICC_REGS: [(u32, &str); 7] = [
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
fn icc_layout(icc_ctlr: u64) -> Vec<(u32, &'static str)> {
    let n = ap_count(icc_ctlr);
    let ap0 = (0..n).map(|i| (sysreg(3, 0, 12, 8, 4 | i), "ICC_AP0R<n>_EL1"));
    let ap1 = (0..n).map(|i| (sysreg(3, 0, 12, 9, i), "ICC_AP1R<n>_EL1"));
    ICC_REGS.into_iter().chain(ap0).chain(ap1).collect()
}

/// The distributor registers saved for `nr_irqs` interrupts: `GICD_IIDR` first (it selects
/// KVM's behaviour for the rest), `GICD_CTLR` last.
fn dist_layout(nr_irqs: u32) -> Vec<(u32, &'static str)> {
    let spis = nr_irqs.saturating_sub(32);
    let mut regs = vec![(GICD_IIDR, "GICD_IIDR"), (GICD_STATUSR, "GICD_STATUSR")];
    for (base, bits, name) in DIST_SPI_REGS {
        let first = base + 32 * bits / 8;
        regs.extend((0..spis * bits / 32).map(|i| (first + 4 * i, name)));
    }
    regs.push((GICD_CTLR, "GICD_CTLR"));
    regs
}

/// For a set-enable or set-active register, its clear twin (0x80 above): restore clears every
/// bit before setting the saved ones. `ISPENDR` needs none: KVM's userspace write of it sets and
/// clears the pending latch at once.
fn clear_twin(offset: u32) -> Option<u32> {
    let o = offset & 0xffff;
    ((0x100..0x180).contains(&o) || (0x300..0x380).contains(&o)).then_some(offset + 0x80)
}

/// The affinity fields of an MPIDR (Aff3, Aff2, Aff1, Aff0), the rest cleared.
pub fn affinity(mpidr: u64) -> u64 {
    mpidr & 0xff_00ff_ffff
}

/// The attribute's vCPU field: the affinity packed as Aff3.Aff2.Aff1.Aff0 in bits 63 to 32.
fn cpu_attr(mpidr: u64) -> u64 {
    let packed = (mpidr & 0xff_ffff) | ((mpidr >> 8) & 0xff00_0000);
    packed << KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT
}

/// The attribute of the line levels of the 32 interrupts from `intid`.
fn level_attr(mpidr: u64, intid: u32) -> u64 {
    cpu_attr(mpidr)
        | (u64::from(VGIC_LEVEL_INFO_LINE_LEVEL) << KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT)
        | u64::from(intid)
}

const DIST: u32 = KVM_DEV_ARM_VGIC_GRP_DIST_REGS;
const REDIST: u32 = KVM_DEV_ARM_VGIC_GRP_REDIST_REGS;
const SYSREGS: u32 = KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS;
const LEVELS: u32 = KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO;

/// Reads an attribute into a `T` (u32 for the register groups, u64 for the CPU interface).
fn get<T: Copy + Default>(gic: &DeviceFd, group: u32, attr: u64, what: &'static str) -> Result<T> {
    let mut value = T::default();
    let mut a = kvm_device_attr {
        group,
        attr,
        addr: &mut value as *mut T as u64,
        flags: 0,
    };
    // SAFETY: `addr` points at `value`, live and writable for the call; callers pick `T` as the
    // group's value width (32 bits for registers and levels, 64 for system registers), so the
    // kernel writes within it.
    unsafe { gic.get_device_attr(&mut a) }.map_err(|source| Error::Access {
        op: "read",
        what,
        attr,
        source,
    })?;
    Ok(value)
}

fn set<T: Copy>(gic: &DeviceFd, group: u32, attr: u64, value: T, what: &'static str) -> Result<()> {
    let a = kvm_device_attr {
        group,
        attr,
        addr: &value as *const T as u64,
        flags: 0,
    };
    gic.set_device_attr(&a).map_err(|source| Error::Access {
        op: "write",
        what,
        attr,
        source,
    })
}

fn check_nr_irqs(nr_irqs: u32) -> Result<()> {
    if (64..=1024).contains(&nr_irqs) && nr_irqs % 32 == 0 {
        Ok(())
    } else {
        Err(Error::BadNrIrqs(nr_irqs))
    }
}

/// Checks what the device itself says: no LPIs, and `nr_irqs` interrupts.
fn check_device(gic: &DeviceFd, nr_irqs: u32) -> Result<()> {
    let typer: u32 = get(gic, DIST, GICD_TYPER.into(), "GICD_TYPER")?;
    if typer & GICD_TYPER_LPIS != 0 {
        return Err(Error::Lpis);
    }
    let device = ((typer & 0x1f) + 1) * 32;
    if device != nr_irqs {
        return Err(Error::DeviceNrIrqs {
            device,
            given: nr_irqs,
        });
    }
    Ok(())
}

/// Saves the GIC of a VM with `nr_irqs` interrupts whose vCPUs (none running) have the MPIDRs
/// `mpidrs`, in vCPU order.
pub fn save(gic: &DeviceFd, mpidrs: &[u64], nr_irqs: u32) -> Result<GicState> {
    check_nr_irqs(nr_irqs)?;
    let first = match mpidrs {
        [first, ..] if mpidrs.len() <= MAX_CPUS => *first,
        _ => return Err(Error::BadCpuCount(mpidrs.len())),
    };
    check_device(gic, nr_irqs)?;
    let dist = dist_layout(nr_irqs)
        .into_iter()
        .map(|(off, what)| Ok((off, get(gic, DIST, off.into(), what)?)))
        .collect::<Result<_>>()?;
    let spi_levels = (32..nr_irqs)
        .step_by(32)
        .map(|intid| get(gic, LEVELS, level_attr(first, intid), "SPI line level"))
        .collect::<Result<_>>()?;
    let cpus = mpidrs
        .iter()
        .map(|&mpidr| save_cpu(gic, mpidr))
        .collect::<Result<_>>()?;
    Ok(GicState {
        nr_irqs,
        dist,
        spi_levels,
        cpus,
    })
}

fn save_cpu(gic: &DeviceFd, mpidr: u64) -> Result<CpuState> {
    let cpu = cpu_attr(mpidr);
    let redist = REDIST_REGS
        .iter()
        .map(|&(off, what)| Ok((off, get(gic, REDIST, cpu | u64::from(off), what)?)))
        .collect::<Result<_>>()?;
    let ctlr = get(gic, SYSREGS, cpu | u64::from(ICC_CTLR_EL1), "ICC_CTLR_EL1")?;
    let icc = icc_layout(ctlr)
        .into_iter()
        .map(|(reg, what)| Ok((reg, get(gic, SYSREGS, cpu | u64::from(reg), what)?)))
        .collect::<Result<_>>()?;
    Ok(CpuState {
        mpidr,
        redist,
        ppi_levels: get(gic, LEVELS, level_attr(mpidr, 0), "PPI line level")?,
        icc,
    })
}

/// Whether `regs` lists exactly the registers of `layout`, in order.
fn same_layout<T>(regs: &[(u32, T)], layout: &[(u32, &str)]) -> bool {
    regs.len() == layout.len() && regs.iter().zip(layout).all(|(r, l)| r.0 == l.0)
}

impl GicState {
    /// Checks the state's own consistency: interrupt and vCPU counts in range, and every
    /// register list exactly what [`save`] writes for that shape.
    pub fn check(&self) -> Result<()> {
        check_nr_irqs(self.nr_irqs)?;
        if self.cpus.is_empty() || self.cpus.len() > MAX_CPUS {
            return Err(Error::BadCpuCount(self.cpus.len()));
        }
        if !same_layout(&self.dist, &dist_layout(self.nr_irqs)) {
            return Err(Error::Layout("distributor"));
        }
        if self.spi_levels.len() as u32 != (self.nr_irqs - 32) / 32 {
            return Err(Error::Layout("SPI line level"));
        }
        for cpu in &self.cpus {
            if !same_layout(&cpu.redist, &REDIST_REGS) {
                return Err(Error::Layout("redistributor"));
            }
            let ctlr = cpu.icc_reg(ICC_CTLR_EL1).unwrap_or_default();
            if !same_layout(&cpu.icc, &icc_layout(ctlr)) {
                return Err(Error::Layout("CPU interface"));
            }
        }
        Ok(())
    }

    /// Checks that the state fits a VM with vCPUs `mpidrs` (in order) and `nr_irqs`
    /// interrupts, and is consistent in itself.
    pub fn check_fits(&self, mpidrs: &[u64], nr_irqs: u32) -> Result<()> {
        if self.nr_irqs != nr_irqs {
            return Err(Error::NrIrqsMismatch {
                saved: self.nr_irqs,
                vm: nr_irqs,
            });
        }
        if self.cpus.len() != mpidrs.len() {
            return Err(Error::CpuCountMismatch {
                saved: self.cpus.len(),
                vm: mpidrs.len(),
            });
        }
        for (index, (cpu, &vm)) in self.cpus.iter().zip(mpidrs).enumerate() {
            if affinity(cpu.mpidr) != affinity(vm) {
                return Err(Error::MpidrMismatch {
                    index,
                    saved: cpu.mpidr,
                    vm,
                });
            }
        }
        self.check()
    }

    /// The saved value of the distributor register at `offset`, if saved.
    pub fn dist_reg(&self, offset: u32) -> Option<u32> {
        find(&self.dist, offset)
    }
}

impl CpuState {
    /// The saved value of the redistributor register at `offset` (from RD_base), if saved.
    pub fn redist_reg(&self, offset: u32) -> Option<u32> {
        find(&self.redist, offset)
    }

    /// The saved value of the CPU interface register `encoding` (see [`sysreg`]), if saved.
    pub fn icc_reg(&self, encoding: u32) -> Option<u64> {
        find(&self.icc, encoding)
    }
}

fn find<T: Copy>(regs: &[(u32, T)], key: u32) -> Option<T> {
    regs.iter().find(|r| r.0 == key).map(|r| r.1)
}

/// Restores `state` into the GIC of a VM with `nr_irqs` interrupts whose vCPUs (none running)
/// have the MPIDRs `mpidrs`, after checking that the state fits that VM.
pub fn restore(gic: &DeviceFd, mpidrs: &[u64], nr_irqs: u32, state: &GicState) -> Result<()> {
    state.check_fits(mpidrs, nr_irqs)?;
    check_device(gic, nr_irqs)?;
    // Checked above: `state.dist` lists exactly the registers of this layout. GICD_CTLR waits
    // until the end.
    for (&(off, value), (_, what)) in state.dist.iter().zip(dist_layout(nr_irqs)) {
        if off == GICD_CTLR {
            continue;
        }
        if let Some(clear) = clear_twin(off) {
            set(gic, DIST, clear.into(), u32::MAX, what)?;
        }
        set(gic, DIST, off.into(), value, what)?;
    }
    // Line levels after ICFGR: KVM keeps a level only for level-triggered interrupts.
    let first = mpidrs.first().copied().unwrap_or_default();
    for (intid, &level) in (32..).step_by(32).zip(&state.spi_levels) {
        set(
            gic,
            LEVELS,
            level_attr(first, intid),
            level,
            "SPI line level",
        )?;
    }
    for (cpu, &mpidr) in state.cpus.iter().zip(mpidrs) {
        restore_redist(gic, mpidr, cpu)?;
    }
    for (cpu, &mpidr) in state.cpus.iter().zip(mpidrs) {
        let attr = cpu_attr(mpidr);
        let ctlr = cpu.icc_reg(ICC_CTLR_EL1).unwrap_or_default();
        for (&(reg, value), (_, what)) in cpu.icc.iter().zip(icc_layout(ctlr)) {
            set(gic, SYSREGS, attr | u64::from(reg), value, what)?;
        }
    }
    let ctlr = state.dist_reg(GICD_CTLR).unwrap_or_default();
    set(gic, DIST, GICD_CTLR.into(), ctlr, "GICD_CTLR")
}

fn restore_redist(gic: &DeviceFd, mpidr: u64, cpu: &CpuState) -> Result<()> {
    let attr = cpu_attr(mpidr);
    for (&(off, value), &(_, what)) in cpu.redist.iter().zip(&REDIST_REGS) {
        // KVM sanitises the LPI table bases on write, so their reset value (PROPBASER 0)
        // would not survive a write-back: write them only where they differ.
        let base = (GICR_PROPBASER..GICR_PENDBASER + 8).contains(&off);
        if base && get::<u32>(gic, REDIST, attr | u64::from(off), what)? == value {
            continue;
        }
        if let Some(clear) = clear_twin(off) {
            set(gic, REDIST, attr | u64::from(clear), u32::MAX, what)?;
        }
        set(gic, REDIST, attr | u64::from(off), value, what)?;
    }
    set(
        gic,
        LEVELS,
        level_attr(mpidr, 0),
        cpu.ppi_levels & !kvm_driven_ppis(),
        "PPI line level",
    )
}

/// The PPIs whose input line KVM drives itself from the vCPU's own state: the architected
/// timers (from the restored timer registers, when the vCPU first runs) and the PMU overflow
/// interrupt. Their saved levels are not written back. A timer's level written from userspace
/// lands before KVM ties that PPI to the hardware timer (on the first `KVM_RUN`), and a Linux
/// guest snapshotted while its timer interrupt was pending (an SDEI handler held interrupts
/// masked) then took no further timer interrupt on that vCPU after restore.
fn kvm_driven_ppis() -> u32 {
    let ppi = |n: u32| 1u32 << (16 + n);
    layout::TIMER_PPIS
        .iter()
        .fold(ppi(layout::PMU_PPI), |m, &n| m | ppi(n))
}

/// Little-endian reader that never reads past its input.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>().ok_or(Error::Truncated)?;
        self.0 = tail;
        Ok(*head)
    }
    fn u32(&mut self) -> Result<u32> {
        self.bytes().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64> {
        self.bytes().map(u64::from_le_bytes)
    }
    /// A count of `size`-byte items, refused if the rest of the input cannot hold them (so no
    /// allocation exceeds the input's size).
    fn count(&mut self, size: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        match n.checked_mul(size) {
            Some(bytes) if bytes <= self.0.len() => Ok(n),
            _ => Err(Error::Truncated),
        }
    }
    fn list<T>(
        &mut self,
        size: usize,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let n = self.count(size)?;
        (0..n).map(|_| item(self)).collect()
    }
}

fn put_list<T>(out: &mut Vec<u8>, items: &[T], mut item: impl FnMut(&mut Vec<u8>, &T)) {
    // Lists are at most a few thousand entries (checked by `GicState::check` on decode).
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for i in items {
        item(out, i);
    }
}

impl GicState {
    /// Encodes the state: format version, then every field little-endian, lists prefixed by
    /// their u32 length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&STATE_VERSION.to_le_bytes());
        out.extend_from_slice(&self.nr_irqs.to_le_bytes());
        let pair32 = |o: &mut Vec<u8>, &(k, v): &(u32, u32)| {
            o.extend_from_slice(&k.to_le_bytes());
            o.extend_from_slice(&v.to_le_bytes());
        };
        put_list(&mut out, &self.dist, pair32);
        put_list(&mut out, &self.spi_levels, |o, v| {
            o.extend_from_slice(&v.to_le_bytes())
        });
        put_list(&mut out, &self.cpus, |o, cpu| {
            o.extend_from_slice(&cpu.mpidr.to_le_bytes());
            put_list(o, &cpu.redist, pair32);
            o.extend_from_slice(&cpu.ppi_levels.to_le_bytes());
            put_list(o, &cpu.icc, |o, &(k, v)| {
                o.extend_from_slice(&k.to_le_bytes());
                o.extend_from_slice(&v.to_le_bytes());
            });
        });
        out
    }

    /// Decodes and checks ([`GicState::check`]) an encoded state; never allocates more than
    /// the input's size.
    pub fn decode(bytes: &[u8]) -> Result<GicState> {
        let mut r = Reader(bytes);
        let version = r.u32()?;
        if version != STATE_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let nr_irqs = r.u32()?;
        let pair32 = |r: &mut Reader| Ok((r.u32()?, r.u32()?));
        let dist = r.list(8, pair32)?;
        let spi_levels = r.list(4, Reader::u32)?;
        // The smallest encoded vCPU: MPIDR, two empty lists, PPI levels.
        let cpus = r.list(20, |r| {
            Ok(CpuState {
                mpidr: r.u64()?,
                redist: r.list(8, pair32)?,
                ppi_levels: r.u32()?,
                icc: r.list(12, |r| Ok((r.u32()?, r.u64()?)))?,
            })
        })?;
        if !r.0.is_empty() {
            return Err(Error::TrailingBytes(r.0.len()));
        }
        let state = GicState {
            nr_irqs,
            dist,
            spi_levels,
            cpus,
        };
        state.check()?;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gic_state_cpu_attr_packs_aff3_above_aff2() {
        let mpidr = 0x0000_0012_8034_5601; // Aff3 0x12, U/RES1 bits, Aff2 0x34, Aff1 0x56, Aff0 1.
        assert_eq!(cpu_attr(mpidr), 0x1234_5601_0000_0000);
    }

    #[test]
    fn gic_state_sysreg_encodings_match_the_architecture() {
        assert_eq!(sysreg(3, 0, 4, 6, 0), 0xc230); // ICC_PMR_EL1
        assert_eq!(ICC_CTLR_EL1, 0xc664);
    }

    #[test]
    fn gic_state_ap_count_follows_priority_bits() {
        assert_eq!(ap_count(4 << 8), 1);
        assert_eq!(ap_count(5 << 8), 2);
        assert_eq!(ap_count(6 << 8), 4);
    }

    #[test]
    fn gic_state_dist_layout_covers_spis_only_and_ends_with_ctlr() {
        let layout = dist_layout(128);
        // IIDR, STATUSR, 3 words of each 1-bit register (5), 24 priority, 6 config, 192 router
        // halves, CTLR.
        assert_eq!(layout.len(), 2 + 5 * 3 + 24 + 6 + 192 + 1);
        assert_eq!(layout.last(), Some(&(GICD_CTLR, "GICD_CTLR")));
        assert!(layout.iter().any(|&(o, _)| o == 0x6000 + 8 * 32));
        assert!(!layout
            .iter()
            .any(|&(o, _)| o == 0x6000 + 8 * 31 || o == 0x100));
    }

    #[test]
    fn gic_state_kvm_driven_ppis_are_the_timers_and_the_pmu() {
        // INTIDs 23 (PMU), 26, 27, 29, 30 (hypervisor, virtual, secure and non-secure timers).
        assert_eq!(
            kvm_driven_ppis(),
            1 << 23 | 1 << 26 | 1 << 27 | 1 << 29 | 1 << 30
        );
    }

    #[test]
    fn gic_state_clear_twin_only_for_enable_and_active() {
        assert_eq!(clear_twin(0x104), Some(0x184));
        assert_eq!(clear_twin(SGI + 0x300), Some(SGI + 0x380));
        assert_eq!(clear_twin(0x204), None);
        assert_eq!(clear_twin(SGI + 0x200), None);
    }
}
