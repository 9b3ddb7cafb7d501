//! arm64 `KVM_{GET,SET}_ONE_REG` identifiers that refvmm needs beyond x0–x17 and PC
//! (those come from `hypercall_router::kvm`).

use kvm_bindings::{
    kvm_regs, user_pt_regs, KVM_REG_ARM64, KVM_REG_ARM64_SYSREG, KVM_REG_ARM_CORE, KVM_REG_SIZE_U64,
};
use std::mem::offset_of;

/// ONE_REG id of a 64-bit field of `struct kvm_regs` at byte `offset`.
const fn core(offset: usize) -> u64 {
    hypercall_router::kvm::core_reg_id(offset)
}

/// PSTATE.
pub const PSTATE: u64 = core(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pstate));
/// x0.
pub const X0: u64 = core(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, regs));
/// PC.
pub const PC: u64 = core(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pc));

/// ONE_REG id of a system register given its encoding (op0, op1, CRn, CRm, op2).
pub const fn sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG as u64
        | (op0 << kvm_bindings::KVM_REG_ARM64_SYSREG_OP0_SHIFT)
        | (op1 << kvm_bindings::KVM_REG_ARM64_SYSREG_OP1_SHIFT)
        | (crn << kvm_bindings::KVM_REG_ARM64_SYSREG_CRN_SHIFT)
        | (crm << kvm_bindings::KVM_REG_ARM64_SYSREG_CRM_SHIFT)
        | (op2 << kvm_bindings::KVM_REG_ARM64_SYSREG_OP2_SHIFT)
}

/// MPIDR_EL1 (S3_0_C0_C0_5).
pub const MPIDR_EL1: u64 = sysreg(3, 0, 0, 0, 5);

/// `KVM_REG_ARM_TIMER_CNT`: the guest's virtual counter (CNTVCT_EL0). KVM's id uses the
/// encoding of CNTV_CVAL_EL0 (S3_3_C14_C3_2), and the two timer ids are swapped for good.
pub const TIMER_CNT: u64 = sysreg(3, 3, 14, 3, 2);
/// `KVM_REG_ARM_PTIMER_CNT`: the guest's physical counter (CNTPCT_EL0, id S3_3_C14_C0_1).
pub const PTIMER_CNT: u64 = sysreg(3, 3, 14, 0, 1);

/// PSTATE for entering a kernel: EL1h, D, A, I and F masked.
pub const PSTATE_EL1H_DAIF: u64 = 0x3c5;

const _: () = assert!(KVM_REG_ARM_CORE as u64 != 0);
