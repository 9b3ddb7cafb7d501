//! The register-level seam between the dispatcher and a vCPU.
//!
//! The dispatcher never touches KVM: it reads and writes a vCPU through
//! [`hypercall_router::RegisterFile`], the one register trait the router and its services
//! share (`x0`–`x17` by `u8` number, and the [`ControlRegister`]s PC, PSTATE, `ELR_EL1`,
//! `SPSR_EL1`). A VMM implements it over `KVM_GET_ONE_REG`/`KVM_SET_ONE_REG` (feature `kvm`
//! has that adapter); tests and fuzzers use [`InMemoryRegisters`].
//!
//! SDEI saves and restores `x0`–`x17` only, so the dispatcher never asks for a higher
//! register number.

pub use hypercall_router::{ControlRegister, InMemoryRegisters, RegisterError, RegisterFile};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_memory_file_holds_what_sdei_saves() {
        let mut regs = InMemoryRegisters::call(0xC400_0020, &[1]);
        regs.set_elr_el1(0x10).unwrap();
        assert_eq!(regs.read_x(18), Err(RegisterError::OutOfRange(18)));
        assert_eq!((regs.x[1], regs.elr_el1), (1, 0x10));
        assert_eq!(regs.x.len(), crate::abi::SAVED_GPRS);
    }
}
