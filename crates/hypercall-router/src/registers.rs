//! Access to the general-purpose registers a call uses (`x0`–`x17`).

use thiserror::Error;

/// Number of registers SMCCC uses: `x0`–`x17`.
pub const SMCCC_REGISTERS: u8 = 18;

/// A vCPU's general-purpose registers as the router needs them.
///
/// Implemented by [`InMemoryRegisters`] for tests and harnesses, and by the
/// KVM adapter over `KVM_GET_ONE_REG`/`KVM_SET_ONE_REG`. Register numbers
/// 18 and above are out of range: an implementation answers them with an
/// error value, never a panic.
pub trait RegisterFile {
    /// Error of the underlying register access.
    type Error;

    /// Reads `x<n>`.
    fn read_x(&mut self, n: u8) -> Result<u64, Self::Error>;

    /// Writes `x<n>`.
    fn write_x(&mut self, n: u8, value: u64) -> Result<(), Self::Error>;
}

impl<T: RegisterFile + ?Sized> RegisterFile for &mut T {
    type Error = T::Error;

    fn read_x(&mut self, n: u8) -> Result<u64, Self::Error> {
        (**self).read_x(n)
    }

    fn write_x(&mut self, n: u8, value: u64) -> Result<(), Self::Error> {
        (**self).write_x(n, value)
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

/// A plain in-memory register file, `x0`–`x17`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InMemoryRegisters {
    /// `x0`–`x17`.
    pub x: [u64; SMCCC_REGISTERS as usize],
}

impl InMemoryRegisters {
    /// A register file holding `x`.
    pub const fn new(x: [u64; SMCCC_REGISTERS as usize]) -> Self {
        InMemoryRegisters { x }
    }

    /// A register file with `x0` = `x0` and every other register zero.
    pub const fn with_x0(x0: u64) -> Self {
        let mut x = [0; SMCCC_REGISTERS as usize];
        x[0] = x0;
        InMemoryRegisters { x }
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
    fn capturing_view_refuses_out_of_range_without_touching_backend() {
        let mut backend = InMemoryRegisters::default();
        let mut view = CapturingView::new(&mut backend);

        assert_eq!(view.write_x(18, 1), Err(RegisterError::OutOfRange(18)));
        assert!(view.into_error().is_none());
    }
}
