//! Creating the in-kernel GICv3 (and an ITS).

use crate::layout;
use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};

/// Errors setting up the GIC.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM could not create a GICv3 (the host may lack GICv3 support).
    #[error("KVM cannot create an in-kernel GICv3")]
    Create(#[source] kvm_ioctls::Error),
    /// KVM could not create an ITS.
    #[error("KVM cannot create a GICv3 ITS")]
    CreateIts(#[source] kvm_ioctls::Error),
    /// A GIC attribute was refused.
    #[error("KVM refused GICv3 attribute {what}")]
    Attr {
        /// What was being set.
        what: &'static str,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
}

/// Result of GIC set-up.
pub type Result<T> = std::result::Result<T, Error>;

/// The VM's GICv3 device.
pub struct Gic {
    fd: DeviceFd,
    its: Option<DeviceFd>,
    /// The vCPUs' MPIDRs in index order: the redistributors, which a saved state lists in the
    /// same order.
    mpidrs: Vec<u64>,
}

fn set(fd: &DeviceFd, what: &'static str, group: u32, attr: u64, addr: u64) -> Result<()> {
    let a = kvm_device_attr {
        group,
        attr,
        addr,
        flags: 0,
    };
    fd.set_device_attr(&a)
        .map_err(|source| Error::Attr { what, source })
}

impl Gic {
    /// Creates the GICv3 (after every vCPU exists: the redistributors follow them; `mpidrs`
    /// are theirs, in index order) and initialises it.
    pub fn new(vm: &VmFd, mpidrs: &[u64]) -> Result<Self> {
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let fd = vm.create_device(&mut dev).map_err(Error::Create)?;
        let dist = layout::GIC_DIST_BASE;
        let redist = layout::GIC_REDIST_BASE;
        set(
            &fd,
            "distributor address",
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
            &dist as *const u64 as u64,
        )?;
        set(
            &fd,
            "redistributor address",
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
            &redist as *const u64 as u64,
        )?;
        let nr_irqs: u32 = layout::GIC_NR_IRQS;
        set(
            &fd,
            "number of interrupts",
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            &nr_irqs as *const u32 as u64,
        )?;
        set(
            &fd,
            "initialisation",
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            0,
        )?;
        Ok(Gic {
            fd,
            its: None,
            mpidrs: mpidrs.to_vec(),
        })
    }

    /// Adds an ITS at [`layout::GIC_ITS_BASE`] (after the GIC is initialised).
    pub fn add_its(&mut self, vm: &VmFd) -> Result<()> {
        let mut dev = kvm_create_device {
            type_: kvm_bindings::kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_ITS,
            fd: 0,
            flags: 0,
        };
        let fd = vm.create_device(&mut dev).map_err(Error::CreateIts)?;
        let base = layout::GIC_ITS_BASE;
        set(
            &fd,
            "ITS address",
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(kvm_bindings::KVM_VGIC_ITS_ADDR_TYPE),
            &base as *const u64 as u64,
        )?;
        set(
            &fd,
            "ITS initialisation",
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            0,
        )?;
        self.its = Some(fd);
        Ok(())
    }

    /// The vCPUs' MPIDRs it was created for.
    pub fn mpidrs(&self) -> &[u64] {
        &self.mpidrs
    }

    /// The device fd (for saving and restoring GIC state).
    pub fn fd(&self) -> &DeviceFd {
        &self.fd
    }
}
