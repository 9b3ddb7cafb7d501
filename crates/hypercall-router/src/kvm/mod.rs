//! KVM forwarding glue: the SMCCC filter that forwards a router's function IDs to userspace,
//! the `KVM_EXIT_HYPERCALL` handler, and a [`RegisterFile`] over `KVM_{GET,SET}_ONE_REG`.
//!
//! The glue needs only two small traits of the hypervisor: [`VcpuAccess`] (get and set one
//! register by its ONE_REG ID) and [`VmAccess`] (install one SMCCC filter range). They are
//! implemented for `kvm_ioctls::VcpuFd` and `kvm_ioctls::VmFd` on aarch64; a VMM that wraps
//! KVM behind its own hypervisor abstraction implements them for its own types instead (a
//! few lines each) and uses everything here unchanged.
//!
//! # Seccomp
//!
//! On a vCPU thread, [`handle_hypercall_exit`] issues `KVM_GET_ONE_REG` and
//! `KVM_SET_ONE_REG` (`ioctl` on the vCPU fd) and nothing else: it neither allocates nor
//! locks unless a service does. [`install_smccc_filter`] issues `KVM_SET_DEVICE_ATTR` on the
//! VM fd, once, before any vCPU runs.

#[cfg(target_arch = "aarch64")]
mod ioctls;

use std::io;

use thiserror::Error;

use crate::call::{CallContext, Conduit};
use crate::filter::IdRange;
use crate::registers::{ControlRegister, RegisterFile, SMCCC_REGISTERS};
use crate::router::{DispatchOutcome, Router};
use crate::service::Service;

/// What the KVM glue needs of a vCPU: one 64-bit register at a time, by ONE_REG ID
/// (`KVM_GET_ONE_REG`/`KVM_SET_ONE_REG`).
pub trait VcpuAccess {
    /// Reads the 64-bit register `id`.
    fn get_one_reg(&self, id: u64) -> io::Result<u64>;
    /// Writes the 64-bit register `id`.
    fn set_one_reg(&self, id: u64, value: u64) -> io::Result<()>;
}

impl<T: VcpuAccess + ?Sized> VcpuAccess for &T {
    fn get_one_reg(&self, id: u64) -> io::Result<u64> {
        (**self).get_one_reg(id)
    }
    fn set_one_reg(&self, id: u64, value: u64) -> io::Result<()> {
        (**self).set_one_reg(id, value)
    }
}

/// `enum kvm_smccc_filter_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FilterAction {
    /// `KVM_SMCCC_FILTER_HANDLE`: KVM answers the calls itself.
    Handle = 0,
    /// `KVM_SMCCC_FILTER_DENY`: KVM answers NOT_SUPPORTED.
    Deny = 1,
    /// `KVM_SMCCC_FILTER_FWD_TO_USER`: a `KVM_EXIT_HYPERCALL` to the VMM.
    ForwardToUser = 2,
}

/// What the KVM glue needs of a VM: one SMCCC filter range
/// (`KVM_SET_DEVICE_ATTR`, group `KVM_ARM_VM_SMCCC_CTRL`, attribute `KVM_ARM_VM_SMCCC_FILTER`).
pub trait VmAccess {
    /// Installs `action` for the `count` function IDs from `base`. The error keeps the
    /// ioctl's errno ([`io::Error::raw_os_error`]): `EBUSY`, `EEXIST` and `ENXIO` have the
    /// meanings [`enum@Error`] gives them.
    fn set_smccc_filter(&self, base: u32, count: u32, action: FilterAction) -> io::Result<()>;
}

impl<T: VmAccess + ?Sized> VmAccess for &T {
    fn set_smccc_filter(&self, base: u32, count: u32, action: FilterAction) -> io::Result<()> {
        (**self).set_smccc_filter(base, count, action)
    }
}

/// Error of the KVM adapter.
#[derive(Debug, Error)]
pub enum Error {
    /// The filter ioctl answered `EBUSY`: a vCPU has already run.
    #[error("the SMCCC filter must be installed before any vCPU runs (KVM_RUN already called)")]
    AfterFirstRun,
    /// The filter ioctl answered `EEXIST`: KVM already holds an overlapping range (a second
    /// installation, or a reserved range).
    #[error(
        "SMCCC filter range {first:#010x}-{last:#010x} overlaps a range already in the VM's filter"
    )]
    RangeExists {
        /// First function ID of the refused range.
        first: u32,
        /// Last function ID of the refused range.
        last: u32,
    },
    /// The VM has no SMCCC filter attribute (`ENXIO`, `ENODEV` or `ENOTTY`). Kernels before
    /// 6.4, which have no VM device attributes on arm64 at all, answer `EINVAL`, reported as
    /// [`Error::Install`] with that errno.
    #[error("this kernel does not support the KVM SMCCC filter")]
    FilterUnsupported(#[source] io::Error),
    /// Any other failure of the filter ioctl.
    #[error("failed to install SMCCC filter range {first:#010x}-{last:#010x}")]
    Install {
        /// First function ID of the range.
        first: u32,
        /// Last function ID of the range.
        last: u32,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// A register number outside `x0`–`x17`.
    #[error("register x{0} is outside x0-x17")]
    RegisterOutOfRange(u8),
    /// `KVM_GET_ONE_REG` failed.
    #[error("failed to read vCPU register {reg}")]
    ReadRegister {
        /// Register name (`x3`, `PC`, ...).
        reg: RegisterName,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// `KVM_SET_ONE_REG` failed.
    #[error("failed to write vCPU register {reg}")]
    WriteRegister {
        /// Register name.
        reg: RegisterName,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
}

/// Names a register in [`enum@Error`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterName {
    /// `x<n>`.
    X(u8),
    /// A control register.
    Control(ControlRegister),
}

impl core::fmt::Display for RegisterName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RegisterName::X(n) => write!(f, "x{n}"),
            RegisterName::Control(ControlRegister::Pc) => f.write_str("PC"),
            RegisterName::Control(ControlRegister::Pstate) => f.write_str("PSTATE"),
            RegisterName::Control(ControlRegister::ElrEl1) => f.write_str("ELR_EL1"),
            RegisterName::Control(ControlRegister::SpsrEl1) => f.write_str("SPSR_EL1"),
        }
    }
}

/// Result of the KVM adapter.
pub type Result<T> = std::result::Result<T, Error>;

/// `KVM_REG_ARM64`.
const REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// `KVM_REG_SIZE_U64`.
const REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// `KVM_REG_ARM_CORE`.
const REG_ARM_CORE: u64 = 0x0010 << 16;

/// Byte offsets into `struct kvm_regs` (the arm64 KVM ABI): `regs.regs[31]`, `regs.sp`,
/// `regs.pc`, `regs.pstate`, then `sp_el1`, `elr_el1`, `spsr[KVM_NR_SPSR]`.
mod offsets {
    pub(super) const PC: usize = 32 * 8;
    pub(super) const PSTATE: usize = 33 * 8;
    pub(super) const ELR_EL1: usize = 35 * 8;
    /// `spsr[KVM_SPSR_EL1]`, the first element.
    pub(super) const SPSR_EL1: usize = 36 * 8;
}

/// The `KVM_{GET,SET}_ONE_REG` ID of an arm64 core register at byte `offset` into
/// `struct kvm_regs`: `KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE` with the offset
/// in 32-bit words as the index.
pub const fn core_reg_id(offset: usize) -> u64 {
    REG_ARM64 | REG_SIZE_U64 | REG_ARM_CORE | (offset / 4) as u64
}

/// The ONE_REG ID of general-purpose register `x<n>` (`n` ≤ 30).
pub const fn x_reg_id(n: u8) -> Option<u64> {
    if n > 30 {
        return None;
    }
    Some(core_reg_id(n as usize * 8))
}

/// The ONE_REG ID of the program counter.
pub const fn pc_reg_id() -> u64 {
    core_reg_id(offsets::PC)
}

/// The ONE_REG ID of a control register.
pub const fn control_reg_id(reg: ControlRegister) -> u64 {
    core_reg_id(match reg {
        ControlRegister::Pc => offsets::PC,
        ControlRegister::Pstate => offsets::PSTATE,
        ControlRegister::ElrEl1 => offsets::ELR_EL1,
        ControlRegister::SpsrEl1 => offsets::SPSR_EL1,
    })
}

/// `x0`–`x17` and the control registers of a vCPU, one ONE_REG access per register.
#[derive(Debug, Clone, Copy)]
pub struct KvmVcpuRegisters<V> {
    vcpu: V,
}

impl<V: VcpuAccess> KvmVcpuRegisters<V> {
    /// A register view of `vcpu` (a `&VcpuFd`, or any [`VcpuAccess`]).
    pub const fn new(vcpu: V) -> Self {
        KvmVcpuRegisters { vcpu }
    }
}

fn smccc_reg_id(n: u8) -> Result<u64> {
    if n >= SMCCC_REGISTERS {
        return Err(Error::RegisterOutOfRange(n));
    }
    x_reg_id(n).ok_or(Error::RegisterOutOfRange(n))
}

impl<V: VcpuAccess> RegisterFile for KvmVcpuRegisters<V> {
    type Error = Error;

    fn read_x(&mut self, n: u8) -> Result<u64> {
        let id = smccc_reg_id(n)?;
        self.vcpu
            .get_one_reg(id)
            .map_err(|source| Error::ReadRegister {
                reg: RegisterName::X(n),
                source,
            })
    }

    fn write_x(&mut self, n: u8, value: u64) -> Result<()> {
        let id = smccc_reg_id(n)?;
        self.vcpu
            .set_one_reg(id, value)
            .map_err(|source| Error::WriteRegister {
                reg: RegisterName::X(n),
                source,
            })
    }

    fn read_control(&mut self, reg: ControlRegister) -> Result<u64> {
        self.vcpu
            .get_one_reg(control_reg_id(reg))
            .map_err(|source| Error::ReadRegister {
                reg: RegisterName::Control(reg),
                source,
            })
    }

    fn write_control(&mut self, reg: ControlRegister, value: u64) -> Result<()> {
        self.vcpu
            .set_one_reg(control_reg_id(reg), value)
            .map_err(|source| Error::WriteRegister {
                reg: RegisterName::Control(reg),
                source,
            })
    }
}

/// `ENXIO`, `ENODEV`, `ENOTTY`: the kernel has no SMCCC filter attribute.
const NO_FILTER_ERRNOS: [i32; 3] = [6, 19, 25];
/// `EBUSY`.
const EBUSY: i32 = 16;
/// `EEXIST`.
const EEXIST: i32 = 17;

/// Installs `FWD_TO_USER` SMCCC filter ranges for every ID the router serves
/// ([`Router::forwarded_ranges`]: merged, Arm Architecture range never requested). Returns
/// the installed ranges.
///
/// Must run before the first `KVM_RUN` of any vCPU of `vm`, and once.
pub fn install_smccc_filter<V, S, const SERVICES: usize, const RANGES: usize>(
    vm: &V,
    router: &Router<S, SERVICES, RANGES>,
) -> Result<Vec<IdRange>>
where
    V: VmAccess + ?Sized,
    S: Service,
{
    let ranges = router.forwarded_ranges();
    for range in &ranges {
        vm.set_smccc_filter(range.first, range.count(), FilterAction::ForwardToUser)
            .map_err(|source| match source.raw_os_error() {
                Some(EBUSY) => Error::AfterFirstRun,
                Some(EEXIST) => Error::RangeExists {
                    first: range.first,
                    last: range.last,
                },
                Some(e) if NO_FILTER_ERRNOS.contains(&e) => Error::FilterUnsupported(source),
                _ => Error::Install {
                    first: range.first,
                    last: range.last,
                    source,
                },
            })?;
    }
    Ok(ranges)
}

/// Answers a `KVM_EXIT_HYPERCALL`: `nr` and `flags` are the exit's `nr` and flags
/// (`HypercallExit::nr`, `u64::from(HypercallExit::longmode)` in kvm-ioctls, which exposes
/// the arm64 `flags` field under that name).
///
/// The function ID is taken from `nr` (its upper 32 bits ignored); the conduit from `flags`
/// ([`Conduit::from_kvm_exit_flags`]); only the argument registers the call's convention and
/// range need are read; the results are written back and `x0` always is, unless the service
/// answered [`crate::Outcome::Handled`] and wrote the registers itself. KVM has already moved
/// the PC past the `HVC` or `SMC`.
pub fn handle_hypercall_exit<V, S, const SERVICES: usize, const RANGES: usize>(
    router: &Router<S, SERVICES, RANGES>,
    vcpu: &V,
    nr: u64,
    flags: u64,
    vcpu_index: usize,
) -> Result<DispatchOutcome>
where
    V: VcpuAccess + ?Sized,
    S: Service,
{
    let ctx = CallContext::new(vcpu_index, Conduit::from_kvm_exit_flags(flags));
    let mut regs = KvmVcpuRegisters::new(vcpu);
    router.dispatch_raw(&ctx, nr & u64::from(u32::MAX), &mut regs)
}

#[cfg(test)]
mod tests;
