//! The SDEI calling ABI: function identifiers, return codes and bit layouts.
//!
//! Everything a guest can put in a register is decoded here, in one place, so that glue code
//! (a hypercall router, a fuzzer) only needs [`owns_function_id`] and [`Function::decode`].

/// First SMC64 SDEI function identifier (`SDEI_VERSION`).
pub const SMC64_BASE: u32 = 0xC400_0020;
/// Last identifier of the SMC64 range the SDEI specification reserves.
pub const SMC64_LAST: u32 = 0xC400_003F;
/// First identifier of the SMC32 alias range (every SMC32 SDEI call answers `NOT_SUPPORTED`).
pub const SMC32_BASE: u32 = 0x8400_0020;
/// Last identifier of the SMC32 alias range.
pub const SMC32_LAST: u32 = 0x8400_003F;

/// `SUCCESS`.
pub const SUCCESS: i64 = 0;
/// `NOT_SUPPORTED`.
pub const NOT_SUPPORTED: i64 = -1;
/// `INVALID_PARAMETERS`.
pub const INVALID_PARAMETERS: i64 = -2;
/// `DENIED`.
pub const DENIED: i64 = -3;
/// `PENDING`.
pub const PENDING: i64 = -5;
/// `OUT_OF_RESOURCE`.
pub const OUT_OF_RESOURCE: i64 = -10;

/// Major version reported by `SDEI_VERSION`.
pub const VERSION_MAJOR: u64 = 1;
/// Minor version reported by `SDEI_VERSION`.
pub const VERSION_MINOR: u64 = 1;

/// Builds the `SDEI_VERSION` result: major in bits \[62:48\], minor in \[47:32\], vendor in \[31:0\].
pub const fn version_word(vendor: u32) -> u64 {
    (VERSION_MAJOR << 48) | (VERSION_MINOR << 32) | vendor as u64
}

/// `EVENT_REGISTER` / `EVENT_ROUTING_SET` flags bit 0: route to the PE given by the affinity.
pub const REGISTER_FLAG_RM_PE: u64 = 1;
/// `EVENT_REGISTER` flags bit 1 (v1.1): relative entry-point mode, not offered by this
/// dispatcher (`FEATURES(RELATIVE_MODE)` answers 0).
pub const REGISTER_FLAG_RELATIVE: u64 = 1 << 1;

/// `EVENT_STATUS` bit: the handler is registered.
pub const STATUS_REGISTERED: u64 = 1 << 0;
/// `EVENT_STATUS` bit: the event is enabled.
pub const STATUS_ENABLED: u64 = 1 << 1;
/// `EVENT_STATUS` bit: the handler is running.
pub const STATUS_RUNNING: u64 = 1 << 2;

/// `EVENT_GET_INFO` query: event type (0 private, 1 shared).
pub const INFO_EV_TYPE: u32 = 0;
/// `EVENT_GET_INFO` query: whether the event can be signalled with `EVENT_SIGNAL`.
pub const INFO_EV_SIGNALED: u32 = 1;
/// `EVENT_GET_INFO` query: priority (0 normal, 1 critical).
pub const INFO_EV_PRIORITY: u32 = 2;
/// `EVENT_GET_INFO` query: routing mode of a registered shared event.
pub const INFO_EV_ROUTING_MODE: u32 = 3;
/// `EVENT_GET_INFO` query: routing affinity of a registered shared event routed `RM_PE`.
pub const INFO_EV_ROUTING_AFF: u32 = 4;

/// `FEATURES` query: number of bind slots (private in bits \[15:0\], shared in \[31:16\]).
pub const FEATURE_BIND_SLOTS: u32 = 0;
/// `FEATURES` query: whether relative entry-point mode is supported.
pub const FEATURE_RELATIVE_MODE: u32 = 1;

/// Number of general-purpose registers saved around a handler (x0–x17).
pub const SAVED_GPRS: usize = 18;

/// The affinity fields of an MPIDR value (Aff3, Aff2, Aff1, Aff0).
pub const MPIDR_AFFINITY_MASK: u64 = 0xFF_00FF_FFFF;

/// PSTATE bits this crate reads or writes (SPSR layout for AArch64).
pub mod pstate {
    /// M\[3:0\] = EL1 using SP_EL1 (EL1h), M\[4\] = 0 (AArch64).
    pub const MODE_EL1H: u64 = 0b0101;
    /// D, A, I and F: every asynchronous exception and debug exception masked.
    pub const DAIF: u64 = 0b1111 << 6;
    /// Privileged access never.
    pub const PAN: u64 = 1 << 22;
    /// Data independent timing.
    pub const DIT: u64 = 1 << 24;
    /// Tag check override (FEAT_MTE).
    pub const TCO: u64 = 1 << 25;
}

/// Every SDEI call, decoded from the function identifier in `w0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    /// `SDEI_VERSION`.
    Version,
    /// `SDEI_EVENT_REGISTER`.
    EventRegister,
    /// `SDEI_EVENT_ENABLE`.
    EventEnable,
    /// `SDEI_EVENT_DISABLE`.
    EventDisable,
    /// `SDEI_EVENT_CONTEXT`.
    EventContext,
    /// `SDEI_EVENT_COMPLETE`.
    EventComplete,
    /// `SDEI_EVENT_COMPLETE_AND_RESUME`.
    EventCompleteAndResume,
    /// `SDEI_EVENT_UNREGISTER`.
    EventUnregister,
    /// `SDEI_EVENT_STATUS`.
    EventStatus,
    /// `SDEI_EVENT_GET_INFO`.
    EventGetInfo,
    /// `SDEI_EVENT_ROUTING_SET`.
    EventRoutingSet,
    /// `SDEI_PE_MASK`.
    PeMask,
    /// `SDEI_PE_UNMASK`.
    PeUnmask,
    /// `SDEI_INTERRUPT_BIND`.
    InterruptBind,
    /// `SDEI_INTERRUPT_RELEASE`.
    InterruptRelease,
    /// `SDEI_EVENT_SIGNAL`.
    EventSignal,
    /// `SDEI_FEATURES`.
    Features,
    /// `SDEI_PRIVATE_RESET`.
    PrivateReset,
    /// `SDEI_SHARED_RESET`.
    SharedReset,
}

impl Function {
    /// Every call, in function-identifier order.
    pub const ALL: [Function; 19] = [
        Function::Version,
        Function::EventRegister,
        Function::EventEnable,
        Function::EventDisable,
        Function::EventContext,
        Function::EventComplete,
        Function::EventCompleteAndResume,
        Function::EventUnregister,
        Function::EventStatus,
        Function::EventGetInfo,
        Function::EventRoutingSet,
        Function::PeMask,
        Function::PeUnmask,
        Function::InterruptBind,
        Function::InterruptRelease,
        Function::EventSignal,
        Function::Features,
        Function::PrivateReset,
        Function::SharedReset,
    ];

    /// How many argument registers (`x1` upwards) the dispatcher reads for this call: what
    /// DEN0054 defines for it, less arguments whose value does not change the outcome
    /// (`SDEI_EVENT_COMPLETE`'s status). Reading no more keeps a forwarded call cheap when
    /// every register read is an ioctl.
    pub const fn arg_count(self) -> usize {
        match self {
            Function::Version
            | Function::EventComplete
            | Function::PeMask
            | Function::PeUnmask
            | Function::PrivateReset
            | Function::SharedReset => 0,
            Function::EventEnable
            | Function::EventDisable
            | Function::EventContext
            | Function::EventCompleteAndResume
            | Function::EventUnregister
            | Function::EventStatus
            | Function::InterruptBind
            | Function::InterruptRelease
            | Function::Features => 1,
            Function::EventGetInfo | Function::EventSignal => 2,
            Function::EventRoutingSet => 3,
            Function::EventRegister => 5,
        }
    }

    /// Decodes an SMC64 SDEI function identifier; `None` for anything else, including the
    /// SMC32 aliases and the reserved identifiers 0xC4000033–0xC400003F.
    pub fn decode(function_id: u32) -> Option<Function> {
        let offset = function_id.checked_sub(SMC64_BASE)?;
        Function::ALL.get(usize::try_from(offset).ok()?).copied()
    }

    /// The SMC64 function identifier of this call.
    pub fn id(self) -> u32 {
        // The discriminants follow `ALL`, which is in identifier order.
        SMC64_BASE + self as u32
    }
}

/// Whether `function_id` lies in a range the SDEI specification reserves (SMC64 or SMC32).
///
/// The dispatcher answers every such identifier: decoded calls are executed, the rest
/// answer `NOT_SUPPORTED`.
pub fn owns_function_id(function_id: u32) -> bool {
    (SMC64_BASE..=SMC64_LAST).contains(&function_id)
        || (SMC32_BASE..=SMC32_LAST).contains(&function_id)
}

/// The low 32 bits of a register: SDEI parameters defined as 32-bit ignore the upper half.
pub(crate) fn low32(value: u64) -> u32 {
    (value & 0xFFFF_FFFF) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_smc64_identifier_from_0x20_to_0x32_decodes_in_order() {
        for (offset, function) in Function::ALL.iter().enumerate() {
            let id = SMC64_BASE + offset as u32;
            assert_eq!(Function::decode(id), Some(*function));
            assert_eq!(function.id(), id);
        }
    }

    #[test]
    fn reserved_and_smc32_identifiers_do_not_decode_but_are_owned() {
        for id in 0xC400_0033..=SMC64_LAST {
            assert_eq!(Function::decode(id), None);
            assert!(owns_function_id(id));
        }
        for id in SMC32_BASE..=SMC32_LAST {
            assert_eq!(Function::decode(id), None);
            assert!(owns_function_id(id));
        }
        assert!(!owns_function_id(0xC400_0040));
        assert!(!owns_function_id(0x8400_0000));
        assert_eq!(Function::decode(0x0000_0000), None);
    }

    #[test]
    fn version_word_reports_1_1_and_the_vendor() {
        let word = version_word(0xABCD);
        assert_eq!((word >> 48) & 0x7FFF, 1);
        assert_eq!((word >> 32) & 0xFFFF, 1);
        assert_eq!(word & 0xFFFF_FFFF, 0xABCD);
    }
}
