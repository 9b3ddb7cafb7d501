//! Access to the vCPU registers a call uses: `x0`–`x17`, and the four control registers a
//! service may rewrite to move the vCPU elsewhere (PC, PSTATE, `ELR_EL1`, `SPSR_EL1`).

use thiserror::Error;

/// Number of registers SMCCC uses: `x0`–`x17`.
pub const SMCCC_REGISTERS: u8 = 18;

/// The registers besides `x0`–`x17` that a service may read or write: what an SDEI dispatcher
/// needs to enter and leave a handler, and what a PSCI `CPU_ON` needs to start a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlRegister {
    /// The program counter.
    Pc,
    /// PSTATE, in SPSR layout (as KVM exposes it).
    Pstate,
    /// `ELR_EL1`: the exception return address at EL1.
    ElrEl1,
    /// `SPSR_EL1`: the saved PSTATE of an exception taken to EL1.
    SpsrEl1,
}

impl ControlRegister {
    /// Every control register, in declaration order.
    pub const ALL: [ControlRegister; 4] = [
        ControlRegister::Pc,
        ControlRegister::Pstate,
        ControlRegister::ElrEl1,
        ControlRegister::SpsrEl1,
    ];
}

/// One vCPU's registers as the router and its services need them.
///
/// Implemented by [`InMemoryRegisters`] for tests and harnesses, and by the KVM adapter
/// (feature `kvm`) over `KVM_GET_ONE_REG`/`KVM_SET_ONE_REG`. Register numbers 18 and above
/// are out of range: an implementation answers them with an error value, never a panic.
/// Reads take `&mut self` so that an implementation may cache or fetch lazily.
pub trait RegisterFile {
    /// Error of the underlying register access.
    type Error;

    /// Reads `x<n>`.
    fn read_x(&mut self, n: u8) -> Result<u64, Self::Error>;

    /// Writes `x<n>`.
    fn write_x(&mut self, n: u8, value: u64) -> Result<(), Self::Error>;

    /// Reads a control register.
    fn read_control(&mut self, reg: ControlRegister) -> Result<u64, Self::Error>;

    /// Writes a control register.
    fn write_control(&mut self, reg: ControlRegister, value: u64) -> Result<(), Self::Error>;

    /// Reads the program counter.
    fn pc(&mut self) -> Result<u64, Self::Error> {
        self.read_control(ControlRegister::Pc)
    }

    /// Writes the program counter.
    fn set_pc(&mut self, value: u64) -> Result<(), Self::Error> {
        self.write_control(ControlRegister::Pc, value)
    }

    /// Reads PSTATE (SPSR layout).
    fn pstate(&mut self) -> Result<u64, Self::Error> {
        self.read_control(ControlRegister::Pstate)
    }

    /// Writes PSTATE (SPSR layout).
    fn set_pstate(&mut self, value: u64) -> Result<(), Self::Error> {
        self.write_control(ControlRegister::Pstate, value)
    }

    /// Writes `ELR_EL1`.
    fn set_elr_el1(&mut self, value: u64) -> Result<(), Self::Error> {
        self.write_control(ControlRegister::ElrEl1, value)
    }

    /// Writes `SPSR_EL1`.
    fn set_spsr_el1(&mut self, value: u64) -> Result<(), Self::Error> {
        self.write_control(ControlRegister::SpsrEl1, value)
    }
}

impl<T: RegisterFile + ?Sized> RegisterFile for &mut T {
    type Error = T::Error;

    fn read_x(&mut self, n: u8) -> Result<u64, Self::Error> {
        (**self).read_x(n)
    }

    fn write_x(&mut self, n: u8, value: u64) -> Result<(), Self::Error> {
        (**self).write_x(n, value)
    }

    fn read_control(&mut self, reg: ControlRegister) -> Result<u64, Self::Error> {
        (**self).read_control(reg)
    }

    fn write_control(&mut self, reg: ControlRegister, value: u64) -> Result<(), Self::Error> {
        (**self).write_control(reg, value)
    }
}

#[cfg(feature = "std")]
impl<T: RegisterFile + ?Sized> RegisterFile for Box<T> {
    type Error = T::Error;

    fn read_x(&mut self, n: u8) -> Result<u64, Self::Error> {
        (**self).read_x(n)
    }

    fn write_x(&mut self, n: u8, value: u64) -> Result<(), Self::Error> {
        (**self).write_x(n, value)
    }

    fn read_control(&mut self, reg: ControlRegister) -> Result<u64, Self::Error> {
        (**self).read_control(reg)
    }

    fn write_control(&mut self, reg: ControlRegister, value: u64) -> Result<(), Self::Error> {
        (**self).write_control(reg, value)
    }
}

/// Error of a register access through [`RegisterView`] or [`InMemoryRegisters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RegisterError {
    /// The register number is 18 or above.
    #[error("register x{0} is outside x0-x17")]
    OutOfRange(u8),
    /// The register file behind the view failed; the router reports its
    /// own error from [`crate::Router::dispatch`].
    #[error("the vCPU register file failed")]
    Backend,
}

/// The register view a [`crate::Service`] receives: any register file, its
/// error reduced to [`RegisterError`].
pub type RegisterView<'a> = dyn RegisterFile<Error = RegisterError> + 'a;

/// A plain in-memory register file: `x0`–`x17` and the control registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InMemoryRegisters {
    /// `x0`–`x17`.
    pub x: [u64; SMCCC_REGISTERS as usize],
    /// Program counter.
    pub pc: u64,
    /// PSTATE in SPSR layout.
    pub pstate: u64,
    /// `ELR_EL1`.
    pub elr_el1: u64,
    /// `SPSR_EL1`.
    pub spsr_el1: u64,
}

impl InMemoryRegisters {
    /// A register file holding `x`, every control register zero.
    pub const fn new(x: [u64; SMCCC_REGISTERS as usize]) -> Self {
        InMemoryRegisters {
            x,
            pc: 0,
            pstate: 0,
            elr_el1: 0,
            spsr_el1: 0,
        }
    }

    /// A register file with `x0` = `x0` and every other register zero.
    pub const fn with_x0(x0: u64) -> Self {
        let mut x = [0; SMCCC_REGISTERS as usize];
        x[0] = x0;
        InMemoryRegisters::new(x)
    }

    /// A register file holding a call: `x0` = `function_id`, then `args` from `x1` (past
    /// `x17` dropped); every other register zero.
    pub fn call(function_id: u32, args: &[u64]) -> Self {
        let mut regs = InMemoryRegisters::default();
        regs.load_call(function_id, args);
        regs
    }

    /// Replaces `x0` and `x1`–`x17` with a call (unused argument registers zeroed), leaving
    /// the control registers as they are.
    pub fn load_call(&mut self, function_id: u32, args: &[u64]) {
        self.x[0] = u64::from(function_id);
        for (index, slot) in self.x.iter_mut().enumerate().skip(1) {
            *slot = args.get(index - 1).copied().unwrap_or(0);
        }
    }

    /// `x0` read as a signed return value.
    pub const fn ret(&self) -> i64 {
        self.x[0] as i64
    }

    fn control_mut(&mut self, reg: ControlRegister) -> &mut u64 {
        match reg {
            ControlRegister::Pc => &mut self.pc,
            ControlRegister::Pstate => &mut self.pstate,
            ControlRegister::ElrEl1 => &mut self.elr_el1,
            ControlRegister::SpsrEl1 => &mut self.spsr_el1,
        }
    }
}

impl RegisterFile for InMemoryRegisters {
    type Error = RegisterError;

    fn read_x(&mut self, n: u8) -> Result<u64, RegisterError> {
        self.x
            .get(usize::from(n))
            .copied()
            .ok_or(RegisterError::OutOfRange(n))
    }

    fn write_x(&mut self, n: u8, value: u64) -> Result<(), RegisterError> {
        let slot = self
            .x
            .get_mut(usize::from(n))
            .ok_or(RegisterError::OutOfRange(n))?;
        *slot = value;
        Ok(())
    }

    fn read_control(&mut self, reg: ControlRegister) -> Result<u64, RegisterError> {
        Ok(*self.control_mut(reg))
    }

    fn write_control(&mut self, reg: ControlRegister, value: u64) -> Result<(), RegisterError> {
        *self.control_mut(reg) = value;
        Ok(())
    }
}

/// Presents a register file as a [`RegisterView`], keeping the first
/// backend error so the router can return it after the service ran.
pub(crate) struct CapturingView<'r, R: RegisterFile> {
    inner: &'r mut R,
    error: Option<R::Error>,
}

impl<'r, R: RegisterFile> CapturingView<'r, R> {
    pub(crate) fn new(inner: &'r mut R) -> Self {
        CapturingView { inner, error: None }
    }

    pub(crate) fn into_error(self) -> Option<R::Error> {
        self.error
    }

    fn check(&self, n: u8) -> Result<(), RegisterError> {
        if n >= SMCCC_REGISTERS {
            Err(RegisterError::OutOfRange(n))
        } else if self.error.is_some() {
            Err(RegisterError::Backend)
        } else {
            Ok(())
        }
    }
}

impl<R: RegisterFile> RegisterFile for CapturingView<'_, R> {
    type Error = RegisterError;

    fn read_x(&mut self, n: u8) -> Result<u64, RegisterError> {
        self.check(n)?;
        self.inner.read_x(n).map_err(|e| {
            self.error = Some(e);
            RegisterError::Backend
        })
    }

    fn write_x(&mut self, n: u8, value: u64) -> Result<(), RegisterError> {
        self.check(n)?;
        self.inner.write_x(n, value).map_err(|e| {
            self.error = Some(e);
            RegisterError::Backend
        })
    }

    fn read_control(&mut self, reg: ControlRegister) -> Result<u64, RegisterError> {
        self.check(0)?;
        self.inner.read_control(reg).map_err(|e| {
            self.error = Some(e);
            RegisterError::Backend
        })
    }

    fn write_control(&mut self, reg: ControlRegister, value: u64) -> Result<(), RegisterError> {
        self.check(0)?;
        self.inner.write_control(reg, value).map_err(|e| {
            self.error = Some(e);
            RegisterError::Backend
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FailingRegisters;

    impl RegisterFile for FailingRegisters {
        type Error = &'static str;

        fn read_x(&mut self, _n: u8) -> Result<u64, &'static str> {
            Err("read failed")
        }

        fn write_x(&mut self, _n: u8, _value: u64) -> Result<(), &'static str> {
            Err("write failed")
        }

        fn read_control(&mut self, _reg: ControlRegister) -> Result<u64, &'static str> {
            Err("control read failed")
        }

        fn write_control(
            &mut self,
            _reg: ControlRegister,
            _value: u64,
        ) -> Result<(), &'static str> {
            Err("control write failed")
        }
    }

    #[test]
    fn in_memory_register_18_is_an_error_not_a_panic() {
        let mut regs = InMemoryRegisters::default();

        assert_eq!(regs.read_x(18), Err(RegisterError::OutOfRange(18)));
        assert_eq!(regs.write_x(255, 1), Err(RegisterError::OutOfRange(255)));
    }

    #[test]
    fn in_memory_registers_round_trip() {
        let mut regs = InMemoryRegisters::with_x0(5);

        regs.write_x(17, 0xAB).unwrap();

        assert_eq!(regs.read_x(0), Ok(5));
        assert_eq!(regs.read_x(17), Ok(0xAB));
    }

    #[test]
    fn capturing_view_keeps_the_first_backend_error() {
        let mut backend = FailingRegisters;
        let mut view = CapturingView::new(&mut backend);

        let first = view.write_x(1, 2);
        let second = view.read_x(2);

        assert_eq!(first, Err(RegisterError::Backend));
        assert_eq!(second, Err(RegisterError::Backend));
        assert_eq!(view.into_error(), Some("write failed"));
    }

    #[test]
    fn capturing_view_passes_control_registers_and_their_errors() {
        let mut backend = InMemoryRegisters::default();
        let mut view = CapturingView::new(&mut backend);
        view.set_pc(0x4000).unwrap();
        view.set_spsr_el1(0x3c5).unwrap();
        assert_eq!(view.pc(), Ok(0x4000));
        assert!(view.into_error().is_none());
        assert_eq!((backend.pc, backend.spsr_el1), (0x4000, 0x3c5));

        let mut failing = FailingRegisters;
        let mut view = CapturingView::new(&mut failing);
        assert_eq!(view.set_elr_el1(1), Err(RegisterError::Backend));
        assert_eq!(view.read_x(1), Err(RegisterError::Backend));
        assert_eq!(view.into_error(), Some("control write failed"));
    }

    #[test]
    fn in_memory_call_loads_x0_and_arguments_only() {
        let mut regs = InMemoryRegisters::call(1, &[5, 6, 7]);
        regs.pc = 0x80;
        regs.load_call(0xC400_0020, &[9]);
        assert_eq!(regs.x[..4], [0xC400_0020, 9, 0, 0]);
        assert_eq!(regs.pc, 0x80);
        assert_eq!(InMemoryRegisters::with_x0(u64::MAX).ret(), -1);
    }

    #[test]
    fn capturing_view_refuses_out_of_range_without_touching_backend() {
        let mut backend = InMemoryRegisters::default();
        let mut view = CapturingView::new(&mut backend);

        assert_eq!(view.write_x(18, 1), Err(RegisterError::OutOfRange(18)));
        assert!(view.into_error().is_none());
    }
}
