//! The register-level seam between the dispatcher and a vCPU.
//!
//! The dispatcher never touches KVM: it reads and writes a vCPU through [`SdeiRegisters`].
//! A VMM implements it over `KVM_GET_ONE_REG`/`KVM_SET_ONE_REG`; tests and fuzzers use the
//! in-memory [`RegisterFile`].

use crate::abi::SAVED_GPRS;

/// The registers the SDEI dispatcher reads and writes on one vCPU.
///
/// `n` passed to [`x`](SdeiRegisters::x) and [`set_x`](SdeiRegisters::set_x) is always in
/// `0..=17`: SDEI saves and restores x0–x17 only. Reads take `&mut self` so that an
/// implementation may cache or fetch lazily.
pub trait SdeiRegisters {
    /// Error reported by the register backend (for KVM: the ioctl error).
    type Error;

    /// Reads general-purpose register `xn`.
    fn x(&mut self, n: usize) -> Result<u64, Self::Error>;
    /// Writes general-purpose register `xn`.
    fn set_x(&mut self, n: usize, value: u64) -> Result<(), Self::Error>;
    /// Reads the program counter.
    fn pc(&mut self) -> Result<u64, Self::Error>;
    /// Writes the program counter.
    fn set_pc(&mut self, value: u64) -> Result<(), Self::Error>;
    /// Reads PSTATE (in SPSR layout, as KVM exposes it).
    fn pstate(&mut self) -> Result<u64, Self::Error>;
    /// Writes PSTATE (in SPSR layout).
    fn set_pstate(&mut self, value: u64) -> Result<(), Self::Error>;
    /// Writes `ELR_EL1`.
    fn set_elr_el1(&mut self, value: u64) -> Result<(), Self::Error>;
    /// Writes `SPSR_EL1`.
    fn set_spsr_el1(&mut self, value: u64) -> Result<(), Self::Error>;
}

impl<R: SdeiRegisters + ?Sized> SdeiRegisters for &mut R {
    type Error = R::Error;

    fn x(&mut self, n: usize) -> Result<u64, Self::Error> {
        (**self).x(n)
    }
    fn set_x(&mut self, n: usize, value: u64) -> Result<(), Self::Error> {
        (**self).set_x(n, value)
    }
    fn pc(&mut self) -> Result<u64, Self::Error> {
        (**self).pc()
    }
    fn set_pc(&mut self, value: u64) -> Result<(), Self::Error> {
        (**self).set_pc(value)
    }
    fn pstate(&mut self) -> Result<u64, Self::Error> {
        (**self).pstate()
    }
    fn set_pstate(&mut self, value: u64) -> Result<(), Self::Error> {
        (**self).set_pstate(value)
    }
    fn set_elr_el1(&mut self, value: u64) -> Result<(), Self::Error> {
        (**self).set_elr_el1(value)
    }
    fn set_spsr_el1(&mut self, value: u64) -> Result<(), Self::Error> {
        (**self).set_spsr_el1(value)
    }
}

/// A general-purpose register index outside x0–x17 was asked of a [`RegisterFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("register x{0} is not held by the register file")]
pub struct RegisterIndexError(pub usize);

/// An in-memory vCPU register file for tests, fuzzers and harnesses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RegisterFile {
    /// x0–x17.
    pub x: [u64; SAVED_GPRS],
    /// Program counter.
    pub pc: u64,
    /// PSTATE in SPSR layout.
    pub pstate: u64,
    /// `ELR_EL1`.
    pub elr_el1: u64,
    /// `SPSR_EL1`.
    pub spsr_el1: u64,
}

impl RegisterFile {
    /// A register file holding an SMC/HVC call: `x0` = function identifier, then arguments.
    pub fn call(function_id: u32, args: &[u64]) -> Self {
        let mut regs = RegisterFile::default();
        regs.x[0] = u64::from(function_id);
        for (slot, value) in regs.x.iter_mut().skip(1).zip(args) {
            *slot = *value;
        }
        regs
    }

    /// Replaces `x0` and the arguments, leaving every other register as it is.
    pub fn load_call(&mut self, function_id: u32, args: &[u64]) {
        self.x[0] = u64::from(function_id);
        for (index, slot) in self.x.iter_mut().enumerate().skip(1) {
            *slot = args.get(index - 1).copied().unwrap_or(0);
        }
    }

    /// `x0` read as the signed SDEI return value.
    pub fn ret(&self) -> i64 {
        self.x[0] as i64
    }
}

impl SdeiRegisters for RegisterFile {
    type Error = RegisterIndexError;

    fn x(&mut self, n: usize) -> Result<u64, Self::Error> {
        self.x.get(n).copied().ok_or(RegisterIndexError(n))
    }
    fn set_x(&mut self, n: usize, value: u64) -> Result<(), Self::Error> {
        let slot = self.x.get_mut(n).ok_or(RegisterIndexError(n))?;
        *slot = value;
        Ok(())
    }
    fn pc(&mut self) -> Result<u64, Self::Error> {
        Ok(self.pc)
    }
    fn set_pc(&mut self, value: u64) -> Result<(), Self::Error> {
        self.pc = value;
        Ok(())
    }
    fn pstate(&mut self) -> Result<u64, Self::Error> {
        Ok(self.pstate)
    }
    fn set_pstate(&mut self, value: u64) -> Result<(), Self::Error> {
        self.pstate = value;
        Ok(())
    }
    fn set_elr_el1(&mut self, value: u64) -> Result<(), Self::Error> {
        self.elr_el1 = value;
        Ok(())
    }
    fn set_spsr_el1(&mut self, value: u64) -> Result<(), Self::Error> {
        self.spsr_el1 = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_file_refuses_indices_past_x17() {
        let mut regs = RegisterFile::default();
        assert_eq!(regs.x(18), Err(RegisterIndexError(18)));
        assert_eq!(regs.set_x(31, 1), Err(RegisterIndexError(31)));
    }

    #[test]
    fn forwarding_impl_reaches_the_underlying_file() {
        fn write<R: SdeiRegisters>(mut regs: R) -> Result<(), R::Error> {
            regs.set_x(17, 7)?;
            regs.set_elr_el1(0x10)
        }
        let mut regs = RegisterFile::default();
        write(&mut regs).unwrap();
        assert_eq!(regs.x[17], 7);
        assert_eq!(regs.elr_el1, 0x10);
    }

    #[test]
    fn load_call_clears_unused_arguments() {
        let mut regs = RegisterFile::call(1, &[5, 6, 7]);
        regs.load_call(2, &[9]);
        assert_eq!(regs.x[..4], [2, 9, 0, 0]);
    }
}
