//! Standard SMCCC return codes.

/// The return codes DEN0028 defines for every service.
///
/// They travel in `w0`/`x0` as negative 32-bit integers, sign-extended when
/// an SMC64 call returns them in `x0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum SmcccReturn {
    /// The call completed.
    Success = 0,
    /// The function is not implemented (also the answer to an unknown ID).
    NotSupported = -1,
    /// The call is not needed on this system.
    NotRequired = -2,
    /// An argument was out of range.
    InvalidParameter = -3,
}

impl SmcccReturn {
    /// The code as a signed 32-bit integer.
    pub const fn as_i32(self) -> i32 {
        self as i32
    }

    /// The code as `w0` carries it (two's complement, 32 bits).
    pub const fn as_u32(self) -> u32 {
        self as i32 as u32
    }

    /// The code sign-extended to 64 bits, as `x0` carries it
    /// (`NotSupported` is `0xFFFF_FFFF_FFFF_FFFF`).
    pub const fn as_u64(self) -> u64 {
        self as i32 as i64 as u64
    }

    /// The code a register value holds, if it is one of the standard ones;
    /// only the low 32 bits are looked at.
    pub const fn from_register(value: u64) -> Option<SmcccReturn> {
        match value as u32 as i32 {
            0 => Some(SmcccReturn::Success),
            -1 => Some(SmcccReturn::NotSupported),
            -2 => Some(SmcccReturn::NotRequired),
            -3 => Some(SmcccReturn::InvalidParameter),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sign_extended_to_64_bits() {
        assert_eq!(SmcccReturn::Success.as_u64(), 0);
        assert_eq!(SmcccReturn::NotSupported.as_u64(), 0xFFFF_FFFF_FFFF_FFFF);
        assert_eq!(SmcccReturn::NotRequired.as_u64(), 0xFFFF_FFFF_FFFF_FFFE);
        assert_eq!(
            SmcccReturn::InvalidParameter.as_u64(),
            0xFFFF_FFFF_FFFF_FFFD
        );
    }

    #[test]
    fn codes_fit_w0_as_32_bit_values() {
        assert_eq!(SmcccReturn::NotSupported.as_u32(), 0xFFFF_FFFF);
        assert_eq!(SmcccReturn::InvalidParameter.as_i32(), -3);
    }

    #[test]
    fn register_values_read_back_as_codes() {
        assert_eq!(
            SmcccReturn::from_register(0xFFFF_FFFF),
            Some(SmcccReturn::NotSupported)
        );
        assert_eq!(
            SmcccReturn::from_register(SmcccReturn::NotRequired.as_u64()),
            Some(SmcccReturn::NotRequired)
        );
        assert_eq!(SmcccReturn::from_register(7), None);
    }
}
