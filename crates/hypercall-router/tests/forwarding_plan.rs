//! The ID blocks a hypervisor is asked to forward ([`Router::forwarded_ranges`]).
#![cfg(feature = "std")]

use hypercall_router::testing::EchoService;
use hypercall_router::{
    ArmArchitecture, CallType, Convention, FunctionRange, IdRange, Owner, Router, RouterBuilder,
    Service, ARM_ARCHITECTURE_RESERVED,
};

const SIP_A: &[FunctionRange] = &[FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 3)];
const SIP_B: &[FunctionRange] = &[FunctionRange::fast(Convention::Smc64, Owner::SiP, 4, 7)];
const ARCH_WORKAROUND: &[FunctionRange] = &[FunctionRange::fast(
    Convention::Smc32,
    Owner::ArmArchitecture,
    0x8000,
    0x8000,
)];
const TOS_YIELDING: &[FunctionRange] =
    &[
        FunctionRange::fast(Convention::Smc32, Owner::TrustedOs(50), 0, 1)
            .with_call_type(CallType::Yielding),
    ];

fn router() -> Router<EchoService> {
    let mut builder = RouterBuilder::<EchoService>::new();
    builder
        .register(EchoService::new("sip-a", SIP_A, None))
        .unwrap();
    builder
        .register(EchoService::new("sip-b", SIP_B, None))
        .unwrap();
    builder
        .register(EchoService::new("workaround", ARCH_WORKAROUND, None))
        .unwrap();
    builder
        .register(EchoService::new("tos", TOS_YIELDING, None))
        .unwrap();
    builder
        .arm_architecture(ArmArchitecture::default())
        .unwrap();
    builder.build()
}

#[test]
fn adjacent_ranges_of_two_services_are_merged() {
    let plan = router().forwarded_ranges();

    assert!(
        plan.contains(&IdRange {
            first: 0xC200_0000,
            last: 0xC200_0007
        }),
        "{plan:x?}"
    );
}

#[test]
fn arm_architecture_owner_is_never_requested() {
    let plan = router().forwarded_ranges();

    for block in &plan {
        for reserved in ARM_ARCHITECTURE_RESERVED {
            assert!(
                block.last < reserved.first || block.first > reserved.last,
                "{block:x?} hits {reserved:x?}"
            );
        }
        assert_ne!(block.first >> 24 & 0x3F, 0, "owner 0 requested: {block:x?}");
    }
}

#[test]
fn plan_is_sorted_disjoint_and_covers_every_served_id() {
    let router = router();

    let plan = router.forwarded_ranges();

    assert!(
        plan.windows(2)
            .all(|w| w[0].last.saturating_add(1) < w[1].first),
        "{plan:x?}"
    );
    let covered = |id: u32| plan.iter().any(|b| b.contains(id));
    assert!(covered(0xC200_0005));
    assert!(covered(0xC201_0005), "SVE-hint copy of a fast range");
    assert!(covered(0x3200_0001), "yielding range");
    assert!(!covered(0x3201_0001), "no hint copy for yielding ranges");
    assert!(
        covered(0x8200_FF01) && covered(0xB200_FF03),
        "owner queries of served owners"
    );
    assert!(!covered(0x8300_FF01), "owner without registrations");
}

#[test]
fn empty_router_requests_nothing() {
    let router = RouterBuilder::<&dyn Service>::new().build();

    assert!(router.forwarded_ranges().is_empty());
}
