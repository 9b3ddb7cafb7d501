//! SMCCC function identifiers (Arm DEN0028, up to v1.5).
//!
//! A function identifier travels in `w0`: the upper 32 bits of `x0` carry no
//! meaning and are ignored. Its fields are:
//!
//! | bits  | field                                                    |
//! |-------|----------------------------------------------------------|
//! | 31    | call type: 1 = fast, 0 = yielding                        |
//! | 30    | calling convention: 0 = SMC32, 1 = SMC64                 |
//! | 29:24 | owning entity number                                     |
//! | 23:17 | must be zero for fast calls                              |
//! | 16    | SMCCC v1.3 SVE live-state hint                           |
//! | 15:0  | function number                                          |

use thiserror::Error;

const FAST_BIT: u32 = 1 << 31;
const SMC64_BIT: u32 = 1 << 30;
const OWNER_SHIFT: u32 = 24;
const OWNER_MASK: u32 = 0x3F;
/// Bit 16: the SMCCC v1.3 hint that the caller holds no live SVE state.
pub const SVE_HINT_BIT: u32 = 1 << 16;
/// Bits 23:17: must be zero for fast calls.
pub const FAST_CALL_MBZ_MASK: u32 = 0x7F << 17;
const NUMBER_MASK: u32 = 0xFFFF;

/// Error returned when a raw `x0` value is not a valid function identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A fast call had one of bits 23:17 set; the caller gets NOT_SUPPORTED.
    #[error("fast call {raw:#010x} has reserved bits 23:17 set")]
    ReservedBitsSet {
        /// The 32-bit identifier as the caller passed it.
        raw: u32,
    },
}

/// Fast (atomic) or yielding (pre-emptible) call, bit 31.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallType {
    /// Bit 31 clear: the call may be pre-empted and resumed.
    Yielding,
    /// Bit 31 set: the call completes atomically from the caller's view.
    Fast,
}

/// Register width of a call, bit 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Convention {
    /// Bit 30 clear: arguments in `w1`–`w7`, results in `w0`–`w7`.
    Smc32,
    /// Bit 30 set: arguments in `x1`–`x17`, results in `x0`–`x17`.
    Smc64,
}

impl Convention {
    /// Number of argument registers the convention defines (after the function ID).
    pub const fn max_args(self) -> u8 {
        match self {
            Convention::Smc32 => 7,
            Convention::Smc64 => 17,
        }
    }

    /// Number of result registers the convention defines, `x0`/`w0` included.
    pub const fn max_results(self) -> u8 {
        match self {
            Convention::Smc32 => 8,
            Convention::Smc64 => 18,
        }
    }

    /// Brings a register value to what the convention passes: SMC32 keeps
    /// the low 32 bits (zero-extended), SMC64 keeps all 64.
    pub const fn narrow(self, value: u64) -> u64 {
        match self {
            Convention::Smc32 => value & 0xFFFF_FFFF,
            Convention::Smc64 => value,
        }
    }
}

/// The owning entity of a call, bits 29:24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// 0: Arm Architecture calls (SMCCC_VERSION, SMCCC_ARCH_*).
    ArmArchitecture,
    /// 1: CPU service calls.
    Cpu,
    /// 2: Silicon-provider (SiP) service calls.
    SiP,
    /// 3: OEM service calls.
    Oem,
    /// 4: Standard secure service calls (PSCI, SDEI, TRNG, FF-A, ...).
    StandardSecure,
    /// 5: Standard hypervisor service calls.
    StandardHypervisor,
    /// 6: Vendor-specific hypervisor service calls.
    VendorHypervisor,
    /// 7: Vendor-specific EL3 monitor calls (SMCCC v1.5).
    VendorEl3Monitor,
    /// 8–47: reserved for future use; the number is kept.
    Reserved(u8),
    /// 48–49: Trusted Application calls; the number is kept.
    TrustedApplication(u8),
    /// 50–63: Trusted OS calls; the number is kept.
    TrustedOs(u8),
}

impl Owner {
    /// Number of owning-entity values (6 bits).
    pub const COUNT: usize = 64;

    /// The owner for a 6-bit entity number, or `None` above 63.
    pub const fn from_number(number: u8) -> Option<Owner> {
        Some(match number {
            0 => Owner::ArmArchitecture,
            1 => Owner::Cpu,
            2 => Owner::SiP,
            3 => Owner::Oem,
            4 => Owner::StandardSecure,
            5 => Owner::StandardHypervisor,
            6 => Owner::VendorHypervisor,
            7 => Owner::VendorEl3Monitor,
            8..=47 => Owner::Reserved(number),
            48..=49 => Owner::TrustedApplication(number),
            50..=63 => Owner::TrustedOs(number),
            _ => return None,
        })
    }

    /// The 6-bit entity number. Numbers carried by the range variants are
    /// trusted as built by [`Owner::from_number`]; out-of-range values are
    /// masked to 6 bits.
    pub const fn number(self) -> u8 {
        match self {
            Owner::ArmArchitecture => 0,
            Owner::Cpu => 1,
            Owner::SiP => 2,
            Owner::Oem => 3,
            Owner::StandardSecure => 4,
            Owner::StandardHypervisor => 5,
            Owner::VendorHypervisor => 6,
            Owner::VendorEl3Monitor => 7,
            Owner::Reserved(n) | Owner::TrustedApplication(n) | Owner::TrustedOs(n) => n & 0x3F,
        }
    }

    /// Whether the value names a well-formed owner (range variants in range).
    pub const fn is_valid(self) -> bool {
        match self {
            Owner::Reserved(n) => n >= 8 && n <= 47,
            Owner::TrustedApplication(n) => n >= 48 && n <= 49,
            Owner::TrustedOs(n) => n >= 50 && n <= 63,
            _ => true,
        }
    }
}

/// The general service queries every owner range may answer (function numbers 0xFF00–0xFF03).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceQuery {
    /// 0xFF00: number of calls in the range (deprecated by the specification).
    CallCount,
    /// 0xFF01: 128-bit UID of the implementation, in `w0`–`w3`.
    Uid,
    /// 0xFF03: revision of the implementation, major in `w0`, minor in `w1`.
    Revision,
}

impl ServiceQuery {
    /// First function number of the query block (Call Count).
    pub const FIRST: u16 = 0xFF00;
    /// Last function number of the query block (Revision).
    pub const LAST: u16 = 0xFF03;

    /// The query a function number names, if any (0xFF02 is reserved).
    pub const fn from_number(number: u16) -> Option<ServiceQuery> {
        match number {
            0xFF00 => Some(ServiceQuery::CallCount),
            0xFF01 => Some(ServiceQuery::Uid),
            0xFF03 => Some(ServiceQuery::Revision),
            _ => None,
        }
    }

    /// The function number of the query.
    pub const fn number(self) -> u16 {
        match self {
            ServiceQuery::CallCount => 0xFF00,
            ServiceQuery::Uid => 0xFF01,
            ServiceQuery::Revision => 0xFF03,
        }
    }

    /// The fast SMC32 function ID of this query for `owner`.
    pub const fn id(self, owner: Owner) -> FunctionId {
        FunctionId::new(CallType::Fast, Convention::Smc32, owner, self.number())
    }
}

/// A decoded function identifier.
///
/// The SVE hint is kept apart from the identity: two calls that differ only
/// in bit 16 compare equal through [`FunctionId::raw`] and route to the same
/// service, which can still read [`FunctionId::sve_hint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FunctionId {
    /// Bits 31:0 with the SVE hint cleared.
    raw: u32,
    sve_hint: bool,
}

impl FunctionId {
    /// `SMCCC_VERSION` (fast SMC32, Arm Architecture 0x0000).
    pub const SMCCC_VERSION: FunctionId =
        FunctionId::new(CallType::Fast, Convention::Smc32, Owner::ArmArchitecture, 0);
    /// `SMCCC_ARCH_FEATURES` (fast SMC32, Arm Architecture 0x0001).
    pub const SMCCC_ARCH_FEATURES: FunctionId =
        FunctionId::new(CallType::Fast, Convention::Smc32, Owner::ArmArchitecture, 1);
    /// `SMCCC_ARCH_SOC_ID` (fast SMC32, Arm Architecture 0x0002).
    pub const SMCCC_ARCH_SOC_ID: FunctionId =
        FunctionId::new(CallType::Fast, Convention::Smc32, Owner::ArmArchitecture, 2);

    /// Builds an identifier from its fields (SVE hint clear).
    pub const fn new(
        call_type: CallType,
        convention: Convention,
        owner: Owner,
        number: u16,
    ) -> Self {
        let mut raw = ((owner.number() as u32) << OWNER_SHIFT) | number as u32;
        if let CallType::Fast = call_type {
            raw |= FAST_BIT;
        }
        if let Convention::Smc64 = convention {
            raw |= SMC64_BIT;
        }
        FunctionId {
            raw,
            sve_hint: false,
        }
    }

    /// The same identifier with the SVE hint set or cleared.
    pub const fn with_sve_hint(self, hint: bool) -> Self {
        FunctionId {
            raw: self.raw,
            sve_hint: hint,
        }
    }

    /// Decodes the function ID from a raw `x0`; bits 63:32 are ignored.
    ///
    /// A fast call with any of bits 23:17 set is refused. Yielding calls keep
    /// bits 23:17 as given (the router serves none of them).
    pub const fn decode(x0: u64) -> Result<FunctionId, DecodeError> {
        let word = x0 as u32;
        if word & FAST_BIT != 0 && word & FAST_CALL_MBZ_MASK != 0 {
            return Err(DecodeError::ReservedBitsSet { raw: word });
        }
        Ok(FunctionId {
            raw: word & !SVE_HINT_BIT,
            sve_hint: word & SVE_HINT_BIT != 0,
        })
    }

    /// The 32-bit identifier with the SVE hint cleared: the routing key.
    pub const fn raw(self) -> u32 {
        self.raw
    }

    /// The 32-bit identifier as the caller wrote it, SVE hint included.
    pub const fn raw_with_hint(self) -> u32 {
        if self.sve_hint {
            self.raw | SVE_HINT_BIT
        } else {
            self.raw
        }
    }

    /// Fast or yielding.
    pub const fn call_type(self) -> CallType {
        if self.raw & FAST_BIT != 0 {
            CallType::Fast
        } else {
            CallType::Yielding
        }
    }

    /// SMC32 or SMC64.
    pub const fn convention(self) -> Convention {
        if self.raw & SMC64_BIT != 0 {
            Convention::Smc64
        } else {
            Convention::Smc32
        }
    }

    /// The owning entity.
    pub const fn owner(self) -> Owner {
        match Owner::from_number(((self.raw >> OWNER_SHIFT) & OWNER_MASK) as u8) {
            Some(owner) => owner,
            // Six bits always name an owner.
            None => Owner::ArmArchitecture,
        }
    }

    /// The function number, bits 15:0.
    pub const fn number(self) -> u16 {
        (self.raw & NUMBER_MASK) as u16
    }

    /// Bits 23:17 (always zero for a decoded fast call).
    pub const fn reserved_bits(self) -> u8 {
        ((self.raw & FAST_CALL_MBZ_MASK) >> 17) as u8
    }

    /// SMCCC v1.3 hint: the caller holds no live SVE state (bit 16).
    pub const fn sve_hint(self) -> bool {
        self.sve_hint
    }

    /// The general service query this identifier names, if it is a fast
    /// SMC32 call to function 0xFF00, 0xFF01 or 0xFF03.
    pub const fn service_query(self) -> Option<ServiceQuery> {
        match (self.call_type(), self.convention()) {
            (CallType::Fast, Convention::Smc32) => ServiceQuery::from_number(self.number()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psci_version_decodes_to_standard_secure_fast_smc32() {
        let id = FunctionId::decode(0x8400_0000).unwrap();

        assert_eq!(id.call_type(), CallType::Fast);
        assert_eq!(id.convention(), Convention::Smc32);
        assert_eq!(id.owner(), Owner::StandardSecure);
        assert_eq!(id.number(), 0);
        assert!(!id.sve_hint());
    }

    #[test]
    fn upper_half_of_x0_is_ignored() {
        let id = FunctionId::decode(0xDEAD_BEEF_C400_0003).unwrap();

        assert_eq!(id.raw(), 0xC400_0003);
        assert_eq!(id.convention(), Convention::Smc64);
    }

    #[test]
    fn sve_hint_is_masked_from_raw_and_kept_visible() {
        let id = FunctionId::decode(0x8601_0005).unwrap();

        assert!(id.sve_hint());
        assert_eq!(id.raw(), 0x8600_0005);
        assert_eq!(id.raw_with_hint(), 0x8601_0005);
        assert_eq!(id.number(), 5);
    }

    #[test]
    fn fast_call_with_reserved_bits_is_refused() {
        let err = FunctionId::decode(0x8402_0000).unwrap_err();

        assert_eq!(err, DecodeError::ReservedBitsSet { raw: 0x8402_0000 });
    }

    #[test]
    fn yielding_call_keeps_reserved_bits() {
        let id = FunctionId::decode(0x32FE_0001).unwrap();

        assert_eq!(id.call_type(), CallType::Yielding);
        assert_eq!(id.reserved_bits(), 0x7F);
        assert_eq!(id.owner(), Owner::TrustedOs(50));
    }

    #[test]
    fn owner_numbers_cover_every_named_entity() {
        let named = [
            (0, Owner::ArmArchitecture),
            (1, Owner::Cpu),
            (2, Owner::SiP),
            (3, Owner::Oem),
            (4, Owner::StandardSecure),
            (5, Owner::StandardHypervisor),
            (6, Owner::VendorHypervisor),
            (7, Owner::VendorEl3Monitor),
            (8, Owner::Reserved(8)),
            (47, Owner::Reserved(47)),
            (48, Owner::TrustedApplication(48)),
            (49, Owner::TrustedApplication(49)),
            (50, Owner::TrustedOs(50)),
            (63, Owner::TrustedOs(63)),
        ];

        for (number, owner) in named {
            assert_eq!(Owner::from_number(number), Some(owner));
            assert_eq!(owner.number(), number);
            assert!(owner.is_valid());
        }
        assert_eq!(Owner::from_number(64), None);
        assert!(!Owner::Reserved(3).is_valid());
        assert!(!Owner::TrustedOs(49).is_valid());
    }

    #[test]
    fn well_known_ids_have_their_architected_values() {
        assert_eq!(FunctionId::SMCCC_VERSION.raw(), 0x8000_0000);
        assert_eq!(FunctionId::SMCCC_ARCH_FEATURES.raw(), 0x8000_0001);
        assert_eq!(FunctionId::SMCCC_ARCH_SOC_ID.raw(), 0x8000_0002);
        assert_eq!(
            ServiceQuery::Uid.id(Owner::VendorHypervisor).raw(),
            0x8600_FF01
        );
        assert_eq!(
            ServiceQuery::Revision.id(Owner::TrustedOs(63)).raw(),
            0xBF00_FF03
        );
    }

    #[test]
    fn service_query_is_only_fast_smc32() {
        let smc64 = FunctionId::new(CallType::Fast, Convention::Smc64, Owner::SiP, 0xFF01);
        let reserved = FunctionId::new(CallType::Fast, Convention::Smc32, Owner::SiP, 0xFF02);

        assert_eq!(
            ServiceQuery::CallCount.id(Owner::Oem).service_query(),
            Some(ServiceQuery::CallCount)
        );
        assert_eq!(smc64.service_query(), None);
        assert_eq!(reserved.service_query(), None);
    }
}
