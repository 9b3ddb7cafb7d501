//! Decoding across every owner, call type, convention and reserved-bit
//! combination, plus property tests over arbitrary `x0` and dispatch inputs.

use hypercall_router::testing::{fuzz_dispatch, fuzz_router};
use hypercall_router::{
    CallType, Conduit, Convention, DecodeError, DispatchOutcome, FunctionId, Owner, SmcccReturn,
    Unsupported,
};
use proptest::prelude::*;

fn expected_owner(number: u8) -> Owner {
    match number {
        0 => Owner::ArmArchitecture,
        1 => Owner::Cpu,
        2 => Owner::SiP,
        3 => Owner::Oem,
        4 => Owner::StandardSecure,
        5 => Owner::StandardHypervisor,
        6 => Owner::VendorHypervisor,
        7 => Owner::VendorEl3Monitor,
        8..=47 => Owner::Reserved(number),
        48 | 49 => Owner::TrustedApplication(number),
        _ => Owner::TrustedOs(number),
    }
}

#[test]
fn every_owner_and_reserved_bit_combination_decodes_as_specified() {
    for fast in [false, true] {
        for smc64 in [false, true] {
            for owner in 0u32..64 {
                for reserved in 0u32..128 {
                    for hint in [false, true] {
                        let raw = (u32::from(fast) << 31)
                            | (u32::from(smc64) << 30)
                            | (owner << 24)
                            | (reserved << 17)
                            | (u32::from(hint) << 16)
                            | 0xA5C3;

                        let decoded = FunctionId::decode(u64::from(raw));

                        if fast && reserved != 0 {
                            assert_eq!(
                                decoded,
                                Err(DecodeError::ReservedBitsSet { raw }),
                                "{raw:#010x}"
                            );
                            continue;
                        }
                        let id = decoded.unwrap();
                        assert_eq!(
                            id.call_type(),
                            if fast {
                                CallType::Fast
                            } else {
                                CallType::Yielding
                            }
                        );
                        assert_eq!(
                            id.convention(),
                            if smc64 {
                                Convention::Smc64
                            } else {
                                Convention::Smc32
                            }
                        );
                        assert_eq!(id.owner(), expected_owner(owner as u8), "{raw:#010x}");
                        assert_eq!(u32::from(id.reserved_bits()), reserved);
                        assert_eq!(id.sve_hint(), hint);
                        assert_eq!(id.number(), 0xA5C3);
                        assert_eq!(id.raw(), raw & !(1 << 16));
                        assert_eq!(id.raw_with_hint(), raw);
                    }
                }
            }
        }
    }
}

fn call_types() -> impl Strategy<Value = CallType> {
    prop_oneof![Just(CallType::Fast), Just(CallType::Yielding)]
}

fn conventions() -> impl Strategy<Value = Convention> {
    prop_oneof![Just(Convention::Smc32), Just(Convention::Smc64)]
}

proptest! {
    #[test]
    fn decode_ignores_the_upper_half_of_x0(x0 in any::<u64>(), upper in any::<u32>()) {
        let other = (x0 & 0xFFFF_FFFF) | (u64::from(upper) << 32);

        prop_assert_eq!(FunctionId::decode(x0), FunctionId::decode(other));
    }

    #[test]
    fn decode_accepts_exactly_the_ids_without_fast_reserved_bits(x0 in any::<u64>()) {
        let word = x0 as u32;
        let malformed = word >> 31 == 1 && (word >> 17) & 0x7F != 0;

        prop_assert_eq!(FunctionId::decode(x0).is_err(), malformed);
    }

    #[test]
    fn built_ids_decode_back_to_their_fields(
        call_type in call_types(),
        convention in conventions(),
        owner in 0u8..64,
        number in any::<u16>(),
        hint in any::<bool>(),
    ) {
        let owner = Owner::from_number(owner).unwrap();
        let id = FunctionId::new(call_type, convention, owner, number).with_sve_hint(hint);

        let decoded = FunctionId::decode(u64::from(id.raw_with_hint())).unwrap();

        prop_assert_eq!(decoded, id);
        prop_assert_eq!(decoded.owner(), owner);
        prop_assert_eq!(decoded.number(), number);
        prop_assert_eq!(decoded.sve_hint(), hint);
    }

    #[test]
    fn arbitrary_registers_dispatch_within_the_conventions(
        x in proptest::array::uniform18(any::<u64>()),
        smc in any::<bool>(),
    ) {
        let router = fuzz_router();
        let conduit = if smc { Conduit::Smc } else { Conduit::Hvc };

        // fuzz_dispatch asserts the convention invariants itself.
        let (outcome, _) = fuzz_dispatch(&router, x, conduit);

        if let DispatchOutcome::NotSupported(Unsupported::Malformed(_)) = outcome {
            prop_assert!(FunctionId::decode(x[0]).is_err());
        }
    }

    #[test]
    fn smc32_echo_sees_and_returns_truncated_arguments(
        args in proptest::array::uniform7(any::<u64>()),
        number in 0u64..0x20,
    ) {
        let router = fuzz_router();
        let mut x = [0u64; 18];
        x[0] = 0x8200_0000 | number;
        x[1..8].copy_from_slice(&args);

        let (_, regs) = fuzz_dispatch(&router, x, Conduit::Hvc);

        prop_assert_eq!(regs.x[0], 0);
        for n in 1..8 {
            prop_assert_eq!(regs.x[n], args[n - 1] & 0xFFFF_FFFF);
        }
    }

    #[test]
    fn unserved_fast_ids_answer_not_supported(owner in 8u8..48, number in any::<u16>(), smc64 in any::<bool>()) {
        let router = fuzz_router();
        let convention = if smc64 { Convention::Smc64 } else { Convention::Smc32 };
        let id = FunctionId::new(CallType::Fast, convention, Owner::from_number(owner).unwrap(), number);
        let mut x = [0u64; 18];
        x[0] = u64::from(id.raw());

        let (_, regs) = fuzz_dispatch(&router, x, Conduit::Smc);

        let expected = if smc64 { SmcccReturn::NotSupported.as_u64() } else { 0xFFFF_FFFF };
        prop_assert_eq!(regs.x[0], expected);
    }
}
