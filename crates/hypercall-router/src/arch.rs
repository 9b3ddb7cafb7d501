//! The built-in Arm Architecture service: `SMCCC_VERSION`,
//! `SMCCC_ARCH_FEATURES` and `SMCCC_ARCH_SOC_ID`.
//!
//! For VMMs that do not rely on KVM's implementation. KVM reserves the Arm
//! Architecture range (`0x8000_0000`–`0x8000_FFFF`, `0xC000_0000`–`0xC000_FFFF`)
//! and never forwards it to user space, so under KVM the guest sees KVM's
//! answers whatever this service is configured with.

use crate::call::{Call, Results};
use crate::function_id::{Convention, FunctionId, Owner};
use crate::return_code::SmcccReturn;
use crate::router::{Router, Target};
use crate::service::{FunctionRange, Service};

/// The range the built-in service occupies: fast SMC32 functions 0–2 of the
/// Arm Architecture owner, one argument each.
pub(crate) const ARCH_RANGE: FunctionRange =
    FunctionRange::fast(Convention::Smc32, Owner::ArmArchitecture, 0, 2).with_arg_count(1);

/// An SMCCC version as `SMCCC_VERSION` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SmcccVersion {
    /// Major version (15 bits; bit 31 of the answer is zero).
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

impl SmcccVersion {
    /// SMCCC v1.1, the first version with `SMCCC_VERSION`.
    pub const V1_1: SmcccVersion = SmcccVersion { major: 1, minor: 1 };
    /// SMCCC v1.2 (`SMCCC_ARCH_SOC_ID`, SMC64 `x1`–`x17`).
    pub const V1_2: SmcccVersion = SmcccVersion { major: 1, minor: 2 };
    /// SMCCC v1.3 (SVE hint).
    pub const V1_3: SmcccVersion = SmcccVersion { major: 1, minor: 3 };
    /// SMCCC v1.4.
    pub const V1_4: SmcccVersion = SmcccVersion { major: 1, minor: 4 };

    /// The 32-bit value `SMCCC_VERSION` returns: major in bits 30:16,
    /// minor in bits 15:0.
    pub const fn encode(self) -> u32 {
        (((self.major & 0x7FFF) as u32) << 16) | self.minor as u32
    }
}

/// The SoC identification `SMCCC_ARCH_SOC_ID` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocId {
    version: u32,
    revision: u32,
}

impl SocId {
    /// Builds the answers from the JEP-106 bank (continuation-code count,
    /// 7 bits), the JEP-106 identification code (parity bit cleared, 7 bits),
    /// the implementation-defined SoC ID and the SoC revision (31 bits).
    /// `None` if a field does not fit.
    pub const fn new(
        jep106_bank: u8,
        jep106_code: u8,
        soc_id: u16,
        revision: u32,
    ) -> Option<SocId> {
        if jep106_bank > 0x7F || jep106_code > 0x7F || revision > 0x7FFF_FFFF {
            return None;
        }
        Some(SocId {
            version: ((jep106_bank as u32) << 24) | ((jep106_code as u32) << 16) | soc_id as u32,
            revision,
        })
    }

    /// The answer to SoC_ID_type 0 (SoC version).
    pub const fn version(&self) -> u32 {
        self.version
    }

    /// The answer to SoC_ID_type 1 (SoC revision).
    pub const fn revision(&self) -> u32 {
        self.revision
    }
}

/// Configuration of the built-in Arm Architecture service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArmArchitecture {
    /// Version `SMCCC_VERSION` reports.
    pub version: SmcccVersion,
    /// SoC identification; `None` makes `SMCCC_ARCH_SOC_ID` NOT_SUPPORTED.
    pub soc_id: Option<SocId>,
}

impl Default for ArmArchitecture {
    fn default() -> Self {
        ArmArchitecture {
            version: SmcccVersion::V1_4,
            soc_id: None,
        }
    }
}

const SOC_ID_VERSION: u64 = 0;
const SOC_ID_REVISION: u64 = 1;

impl<S: Service, const SERVICES: usize, const RANGES: usize> Router<S, SERVICES, RANGES> {
    /// Answers a call routed to the built-in Arm Architecture range.
    pub(crate) fn arch_call(&self, call: &Call) -> Results {
        let Some(arch) = self.arch else {
            return Results::code(SmcccReturn::NotSupported);
        };
        match call.id {
            id if id == FunctionId::SMCCC_VERSION => {
                Results::value(u64::from(arch.version.encode()))
            }
            id if id == FunctionId::SMCCC_ARCH_FEATURES => {
                Results::value(i64::from(self.arch_features(call.arg(1))) as u64)
            }
            id if id == FunctionId::SMCCC_ARCH_SOC_ID => match (arch.soc_id, call.arg(1)) {
                (None, _) => Results::code(SmcccReturn::NotSupported),
                (Some(soc), SOC_ID_VERSION) => Results::value(u64::from(soc.version())),
                (Some(soc), SOC_ID_REVISION) => Results::value(u64::from(soc.revision())),
                (Some(_), _) => Results::code(SmcccReturn::InvalidParameter),
            },
            _ => Results::code(SmcccReturn::NotSupported),
        }
    }

    /// `SMCCC_ARCH_FEATURES` for the function ID in `w1`.
    fn arch_features(&self, queried: u64) -> i32 {
        let not_supported = SmcccReturn::NotSupported.as_i32();
        let Ok(id) = FunctionId::decode(queried) else {
            return not_supported;
        };
        match self.route(id).map(|r| r.target) {
            Some(Target::Service(index)) => self
                .service(index)
                .map_or(not_supported, |s| s.arch_features(id)),
            Some(Target::ArmArchitecture) => {
                let soc_missing = id == FunctionId::SMCCC_ARCH_SOC_ID
                    && self.arch.is_none_or(|arch| arch.soc_id.is_none());
                if soc_missing {
                    not_supported
                } else {
                    SmcccReturn::Success.as_i32()
                }
            }
            None if self.owner_query(id).is_some() => SmcccReturn::Success.as_i32(),
            None => not_supported,
        }
    }
}
