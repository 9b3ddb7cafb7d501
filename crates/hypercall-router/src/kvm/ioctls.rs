//! [`VcpuAccess`] and [`VmAccess`] for kvm-ioctls' `VcpuFd` and `VmFd`.

use std::io;
use std::mem::{offset_of, size_of};

use kvm_bindings::{
    kvm_device_attr, kvm_regs, kvm_smccc_filter, user_pt_regs, KVM_ARM_VM_SMCCC_CTRL,
    KVM_ARM_VM_SMCCC_FILTER, KVM_REG_ARM64, KVM_REG_ARM_CORE, KVM_REG_SIZE_U64,
};
use kvm_ioctls::{VcpuFd, VmFd};

use super::{offsets, FilterAction, VcpuAccess, VmAccess};

// The portable constants in `super` are the kernel's ABI; check them against the headers.
const _: () = assert!(super::REG_ARM64 == KVM_REG_ARM64);
const _: () = assert!(super::REG_SIZE_U64 == KVM_REG_SIZE_U64);
const _: () = assert!(super::REG_ARM_CORE == KVM_REG_ARM_CORE as u64);
const _: () = assert!(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, regs) == 0);
const _: () = assert!(offsets::PC == offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pc));
const _: () =
    assert!(offsets::PSTATE == offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pstate));
const _: () = assert!(offsets::ELR_EL1 == offset_of!(kvm_regs, elr_el1));
const _: () = assert!(offsets::SPSR_EL1 == offset_of!(kvm_regs, spsr));
const _: () = assert!(kvm_bindings::KVM_SPSR_EL1 == 0);
const _: () = assert!(
    FilterAction::ForwardToUser as u32
        == kvm_bindings::kvm_smccc_filter_action_KVM_SMCCC_FILTER_FWD_TO_USER
);
const _: () = assert!(super::EBUSY == libc::EBUSY && super::EEXIST == libc::EEXIST);
const _: () = assert!(
    super::NO_FILTER_ERRNOS[0] == libc::ENXIO
        && super::NO_FILTER_ERRNOS[1] == libc::ENODEV
        && super::NO_FILTER_ERRNOS[2] == libc::ENOTTY
);

impl VcpuAccess for VcpuFd {
    fn get_one_reg(&self, id: u64) -> io::Result<u64> {
        let mut bytes = [0u8; size_of::<u64>()];
        VcpuFd::get_one_reg(self, id, &mut bytes)?;
        Ok(u64::from_ne_bytes(bytes))
    }

    fn set_one_reg(&self, id: u64, value: u64) -> io::Result<()> {
        VcpuFd::set_one_reg(self, id, &value.to_ne_bytes())?;
        Ok(())
    }
}

impl VmAccess for VmFd {
    fn set_smccc_filter(&self, base: u32, count: u32, action: FilterAction) -> io::Result<()> {
        let filter = kvm_smccc_filter {
            base,
            nr_functions: count,
            action: action as u8,
            pad: [0; 15],
        };
        let attr = kvm_device_attr {
            flags: 0,
            group: KVM_ARM_VM_SMCCC_CTRL,
            attr: u64::from(KVM_ARM_VM_SMCCC_FILTER),
            // KVM copies the filter from this address during the ioctl.
            addr: &filter as *const kvm_smccc_filter as u64,
        };
        self.set_device_attr(&attr)?;
        Ok(())
    }
}
