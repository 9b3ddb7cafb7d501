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

use super::regs::{
    dist_layout, icc_layout, GICD_CTLR, GICR_PENDBASER, GICR_PROPBASER, ICC_CTLR_EL1, REDIST_REGS,
};
use super::state::{check_nr_irqs, CpuState, Error, GicState, Result, MAX_CPUS};
use super::Gic;
use crate::layout;
use crate::persist::Persist;
use kvm_bindings::{
    kvm_device_attr, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, KVM_DEV_ARM_VGIC_GRP_DIST_REGS,
    KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
    KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT, KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT,
    VGIC_LEVEL_INFO_LINE_LEVEL,
};
use kvm_ioctls::DeviceFd;

impl Persist for Gic {
    type State = GicState;
    type Error = Error;

    /// The vCPUs must not be running.
    fn save(&self) -> Result<GicState> {
        save(self.fd(), self.mpidrs(), layout::GIC_NR_IRQS)
    }

    /// Call once every vCPU's own state is restored, none running; the state is checked
    /// against this GIC's vCPUs and interrupts before anything is written.
    fn restore(self, state: &GicState) -> Result<Self> {
        restore(self.fd(), self.mpidrs(), layout::GIC_NR_IRQS, state)?;
        Ok(self)
    }
}

const GICD_TYPER: u32 = 0x4;
const GICD_TYPER_LPIS: u32 = 1 << 17;

/// For a set-enable or set-active register, its clear twin (0x80 above): restore clears every
/// bit before setting the saved ones. `ISPENDR` needs none: KVM's userspace write of it sets and
/// clears the pending latch at once.
fn clear_twin(offset: u32) -> Option<u32> {
    let o = offset & 0xffff;
    ((0x100..0x180).contains(&o) || (0x300..0x380).contains(&o)).then_some(offset + 0x80)
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

/// The width of a group's values: u32 for the register groups and line levels, u64 for the
/// CPU interface.
trait AttrValue: Copy {
    fn from_attr(v: u64) -> Self;
}

impl AttrValue for u32 {
    fn from_attr(v: u64) -> Self {
        // A 32-bit attribute fills the low half (`sys::get_device_attr`).
        v as u32
    }
}

impl AttrValue for u64 {
    fn from_attr(v: u64) -> Self {
        v
    }
}

/// Reads an attribute as a `T`.
fn get<T: AttrValue>(gic: &DeviceFd, group: u32, attr: u64, what: &'static str) -> Result<T> {
    crate::sys::get_device_attr(gic, group, attr)
        .map(T::from_attr)
        .map_err(|source| Error::Access {
            op: "read",
            what,
            attr,
            source,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gic::regs::SGI;

    #[test]
    fn gic_state_cpu_attr_packs_aff3_above_aff2() {
        let mpidr = 0x0000_0012_8034_5601; // Aff3 0x12, U/RES1 bits, Aff2 0x34, Aff1 0x56, Aff0 1.
        assert_eq!(cpu_attr(mpidr), 0x1234_5601_0000_0000);
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
