//! KVM glue for aarch64 hosts (feature `kvm`).
//!
//! - [`install_smccc_filter`] asks KVM to forward the router's function IDs
//!   to user space (`KVM_ARM_VM_SMCCC_FILTER`, action `FWD_TO_USER`).
//! - [`handle_hypercall_exit`] answers the resulting `KVM_EXIT_HYPERCALL`.
//! - [`KvmVcpuRegisters`] is a [`RegisterFile`] over `KVM_GET_ONE_REG` /
//!   `KVM_SET_ONE_REG`.
//!
//! Facts from the KVM API this relies on: the exit's `nr` is the function ID
//! as the guest wrote it in `w0`; the exit's flags (kvm-ioctls names the field
//! `longmode`) carry `KVM_HYPERCALL_EXIT_SMC` for an `SMC` conduit; the PC
//! already points past the `HVC`/`SMC`; user space must write `x0`.

use core::mem::{offset_of, size_of};

use kvm_bindings::{
    kvm_device_attr, kvm_regs, kvm_smccc_filter,
    kvm_smccc_filter_action_KVM_SMCCC_FILTER_FWD_TO_USER, user_pt_regs, KVM_ARM_VM_SMCCC_CTRL,
    KVM_ARM_VM_SMCCC_FILTER, KVM_HYPERCALL_EXIT_SMC, KVM_REG_ARM64, KVM_REG_ARM_CORE,
    KVM_REG_SIZE_U64,
};
use kvm_ioctls::{VcpuFd, VmFd};
use thiserror::Error;
use vmm_sys_util::errno;

use crate::call::{CallContext, Conduit};
use crate::filter::IdRange;
use crate::registers::{RegisterFile, SMCCC_REGISTERS};
use crate::router::{DispatchOutcome, Router};
use crate::service::Service;

/// Error of the KVM adapter.
#[derive(Debug, Error)]
pub enum Error {
    /// `KVM_ARM_VM_SMCCC_FILTER` answered `EBUSY`: a vCPU has already run.
    #[error("the SMCCC filter must be installed before any vCPU runs (KVM_RUN already called)")]
    AfterFirstRun,
    /// `KVM_ARM_VM_SMCCC_FILTER` answered `EEXIST`: KVM already holds an
    /// overlapping range (a second installation, or a reserved range).
    #[error(
        "SMCCC filter range {first:#010x}-{last:#010x} overlaps a range already in the VM's filter"
    )]
    RangeExists {
        /// First function ID of the refused range.
        first: u32,
        /// Last function ID of the refused range.
        last: u32,
    },
    /// The kernel has no SMCCC filter (Linux before 6.4).
    #[error("this kernel does not support the KVM SMCCC filter")]
    FilterUnsupported(#[source] errno::Error),
    /// Any other failure of the filter ioctl.
    #[error("failed to install SMCCC filter range {first:#010x}-{last:#010x}")]
    Install {
        /// First function ID of the range.
        first: u32,
        /// Last function ID of the range.
        last: u32,
        /// The ioctl's error.
        #[source]
        source: errno::Error,
    },
    /// A register number outside `x0`–`x17`.
    #[error("register x{0} is outside x0-x17")]
    RegisterOutOfRange(u8),
    /// `KVM_GET_ONE_REG` failed.
    #[error("failed to read vCPU register x{n}")]
    ReadRegister {
        /// Register number.
        n: u8,
        /// The ioctl's error.
        #[source]
        source: errno::Error,
    },
    /// `KVM_SET_ONE_REG` failed.
    #[error("failed to write vCPU register x{n}")]
    WriteRegister {
        /// Register number.
        n: u8,
        /// The ioctl's error.
        #[source]
        source: errno::Error,
    },
}

/// Result of the KVM adapter.
pub type Result<T> = std::result::Result<T, Error>;

/// The `KVM_{GET,SET}_ONE_REG` ID of an arm64 core register at byte
/// `offset` into `struct kvm_regs`.
///
/// Core register IDs are `KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE`
/// with the index being the offset into `kvm_regs` in 32-bit words.
pub const fn core_reg_id(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset / size_of::<u32>()) as u64
}

/// The ONE_REG ID of general-purpose register `x<n>` (`n` ≤ 30).
pub const fn x_reg_id(n: u8) -> Option<u64> {
    if n > 30 {
        return None;
    }
    let offset =
        offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, regs) + n as usize * size_of::<u64>();
    Some(core_reg_id(offset))
}

/// The ONE_REG ID of the program counter.
pub const fn pc_reg_id() -> u64 {
    core_reg_id(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pc))
}

/// `x0`–`x17` of a KVM vCPU, one ONE_REG ioctl per access.
#[derive(Debug, Clone, Copy)]
pub struct KvmVcpuRegisters<'a> {
    vcpu: &'a VcpuFd,
}

impl<'a> KvmVcpuRegisters<'a> {
    /// A register view of `vcpu`.
    pub const fn new(vcpu: &'a VcpuFd) -> Self {
        KvmVcpuRegisters { vcpu }
    }
}

fn smccc_reg_id(n: u8) -> Result<u64> {
    if n >= SMCCC_REGISTERS {
        return Err(Error::RegisterOutOfRange(n));
    }
    x_reg_id(n).ok_or(Error::RegisterOutOfRange(n))
}

impl RegisterFile for KvmVcpuRegisters<'_> {
    type Error = Error;

    fn read_x(&mut self, n: u8) -> Result<u64> {
        let id = smccc_reg_id(n)?;
        let mut bytes = [0u8; size_of::<u64>()];
        self.vcpu
            .get_one_reg(id, &mut bytes)
            .map_err(|source| Error::ReadRegister { n, source })?;
        Ok(u64::from_ne_bytes(bytes))
    }

    fn write_x(&mut self, n: u8, value: u64) -> Result<()> {
        let id = smccc_reg_id(n)?;
        self.vcpu
            .set_one_reg(id, &value.to_ne_bytes())
            .map_err(|source| Error::WriteRegister { n, source })?;
        Ok(())
    }
}

/// Installs `FWD_TO_USER` SMCCC filter ranges for every ID the router
/// serves ([`Router::forwarded_ranges`]: merged, Arm Architecture range
/// never requested). Returns the installed ranges.
///
/// Must run before the first `KVM_RUN` of any vCPU of `vm`, and once.
pub fn install_smccc_filter<S: Service, const SERVICES: usize, const RANGES: usize>(
    vm: &VmFd,
    router: &Router<S, SERVICES, RANGES>,
) -> Result<Vec<IdRange>> {
    let ranges = router.forwarded_ranges();
    for range in &ranges {
        let filter = kvm_smccc_filter {
            base: range.first,
            nr_functions: range.count(),
            action: kvm_smccc_filter_action_KVM_SMCCC_FILTER_FWD_TO_USER as u8,
            pad: [0; 15],
        };
        let attr = kvm_device_attr {
            flags: 0,
            group: KVM_ARM_VM_SMCCC_CTRL,
            attr: u64::from(KVM_ARM_VM_SMCCC_FILTER),
            // KVM copies the filter from this address during the ioctl.
            addr: &filter as *const kvm_smccc_filter as u64,
        };
        vm.set_device_attr(&attr)
            .map_err(|source| match source.errno() {
                libc::EBUSY => Error::AfterFirstRun,
                libc::EEXIST => Error::RangeExists {
                    first: range.first,
                    last: range.last,
                },
                libc::ENXIO | libc::ENODEV | libc::ENOTTY => Error::FilterUnsupported(source),
                _ => Error::Install {
                    first: range.first,
                    last: range.last,
                    source,
                },
            })?;
    }
    Ok(ranges)
}

/// Answers a `KVM_EXIT_HYPERCALL`: `nr` and `flags` are the exit's `nr` and
/// flags (`HypercallExit::nr`, `u64::from(HypercallExit::longmode)`).
///
/// The function ID is taken from `nr` (its upper 32 bits ignored); only the
/// argument registers the call's convention and range need are read; the
/// results are written back and `x0` always is, unless the service answered
/// [`crate::Outcome::Handled`] and wrote the registers itself.
pub fn handle_hypercall_exit<S: Service, const SERVICES: usize, const RANGES: usize>(
    router: &Router<S, SERVICES, RANGES>,
    vcpu: &VcpuFd,
    nr: u64,
    flags: u64,
    vcpu_index: usize,
) -> Result<DispatchOutcome> {
    let conduit = if flags & u64::from(KVM_HYPERCALL_EXIT_SMC) != 0 {
        Conduit::Smc
    } else {
        Conduit::Hvc
    };
    let ctx = CallContext::new(vcpu_index, conduit);
    let mut regs = KvmVcpuRegisters::new(vcpu);
    router.dispatch_raw(&ctx, nr & u64::from(u32::MAX), &mut regs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x0_and_pc_ids_follow_the_core_register_layout() {
        // x0 is the first word of kvm_regs; pc follows x0-x30 and sp.
        assert_eq!(
            x_reg_id(0),
            Some(KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64)
        );
        assert_eq!(x_reg_id(1).map(|id| id & 0xFFFF), Some(2));
        assert_eq!(pc_reg_id() & 0xFFFF, 64);
        assert_eq!(x_reg_id(31), None);
    }
}
