//! The few arm64 KVM ABI values that the saved-state codecs ([`crate::gic::state`],
//! [`crate::vcpu::state`]) need, so that they build on every host (kvm-bindings provides its
//! arm64 bindings only when building for aarch64, and the fuzz targets run on x86_64).
//!
//! On aarch64, `super::gic` and `super::vcpu` assert at compile time that every value here is
//! the one kvm-bindings defines, so the copies cannot drift.

/// `KVM_REG_ARM64_SYSREG_OP0_SHIFT`: Op0 of a system register encoding.
pub const SYSREG_OP0_SHIFT: u32 = 14;
/// `KVM_REG_ARM64_SYSREG_OP1_SHIFT`: Op1.
pub const SYSREG_OP1_SHIFT: u32 = 11;
/// `KVM_REG_ARM64_SYSREG_CRN_SHIFT`: CRn.
pub const SYSREG_CRN_SHIFT: u32 = 7;
/// `KVM_REG_ARM64_SYSREG_CRM_SHIFT`: CRm.
pub const SYSREG_CRM_SHIFT: u32 = 3;
/// `KVM_REG_ARM64_SYSREG_OP2_SHIFT`: Op2.
pub const SYSREG_OP2_SHIFT: u32 = 0;

/// `KVM_REG_ARM64`: the architecture field of an arm64 register id.
pub const REG_ARM64: u64 = 0x6000_0000_0000_0000;
/// `KVM_REG_SIZE_U64`: the size field of a 64-bit register id.
pub const REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
/// `KVM_REG_ARM64_SYSREG`: the coprocessor field of a system register id.
pub const REG_ARM64_SYSREG: u64 = 0x0013 << 16;
/// `KVM_REG_SIZE_SHIFT`: where a register id holds log2 of the register's size in bytes.
pub const REG_SIZE_SHIFT: u32 = 52;
/// `KVM_REG_SIZE_MASK`: the size field of a register id.
pub const REG_SIZE_MASK: u64 = 0x00f0_0000_0000_0000;

/// `KVM_MP_STATE_SUSPENDED`: the highest MP state arm64 KVM defines.
pub const MP_STATE_SUSPENDED: u32 = 10;

/// A system register's encoding with the Op0/Op1/CRn/CRm/Op2 fields where KVM puts them (the
/// low 16 bits of a `KVM_REG_ARM64_SYSREG` id, and the `instr` field of
/// `KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS`).
pub const fn sysreg_fields(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    (op0 << SYSREG_OP0_SHIFT)
        | (op1 << SYSREG_OP1_SHIFT)
        | (crn << SYSREG_CRN_SHIFT)
        | (crm << SYSREG_CRM_SHIFT)
        | (op2 << SYSREG_OP2_SHIFT)
}

/// The `KVM_{GET,SET}_ONE_REG` id of the 64-bit system register with this encoding.
pub const fn sysreg_id(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    REG_ARM64 | REG_SIZE_U64 | REG_ARM64_SYSREG | sysreg_fields(op0, op1, crn, crm, op2)
}

#[cfg(target_arch = "aarch64")]
const _: () = {
    use kvm_bindings as kb;
    assert!(SYSREG_OP0_SHIFT == kb::KVM_REG_ARM64_SYSREG_OP0_SHIFT);
    assert!(SYSREG_OP1_SHIFT == kb::KVM_REG_ARM64_SYSREG_OP1_SHIFT);
    assert!(SYSREG_CRN_SHIFT == kb::KVM_REG_ARM64_SYSREG_CRN_SHIFT);
    assert!(SYSREG_CRM_SHIFT == kb::KVM_REG_ARM64_SYSREG_CRM_SHIFT);
    assert!(SYSREG_OP2_SHIFT == kb::KVM_REG_ARM64_SYSREG_OP2_SHIFT);
    assert!(REG_ARM64 == kb::KVM_REG_ARM64);
    assert!(REG_SIZE_U64 == kb::KVM_REG_SIZE_U64);
    assert!(REG_ARM64_SYSREG == kb::KVM_REG_ARM64_SYSREG as u64);
    assert!(REG_SIZE_SHIFT == kb::KVM_REG_SIZE_SHIFT);
    assert!(REG_SIZE_MASK == kb::KVM_REG_SIZE_MASK);
    assert!(MP_STATE_SUSPENDED == kb::KVM_MP_STATE_SUSPENDED);
    assert!(crate::vcpu::state::COUNTERS[0] == crate::regs::TIMER_CNT);
    assert!(crate::vcpu::state::COUNTERS[1] == crate::regs::PTIMER_CNT);
    assert!(sysreg_id(3, 0, 0, 0, 5) == crate::regs::MPIDR_EL1);
};
