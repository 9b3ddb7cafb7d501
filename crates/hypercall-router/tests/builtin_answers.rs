//! Answers the router gives itself: per-owner Call Count/UID/Revision
//! queries and the built-in Arm Architecture service.

mod common;

use common::*;
use hypercall_router::{
    ArmArchitecture, Convention, FunctionId, FunctionRange, InMemoryRegisters, Owner,
    OwnerIdentity, Results, Revision, Router, RouterBuilder, Service, ServiceQuery, SmcccReturn,
    SmcccVersion, SocId, Uid,
};

#[test]
fn owner_queries_answer_from_service_metadata() {
    let mut service = Recorder::new("sip", SIP64, Results::code(SmcccReturn::Success));
    service.identity = Some(OwnerIdentity {
        uid: Some(Uid([0x1111_1111, 0x2222_2222, 0x3333_3333, 0x4444_4444])),
        revision: Some(Revision { major: 2, minor: 7 }),
    });
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&service).unwrap();
    let router = builder.build();
    let mut uid = InMemoryRegisters::with_x0(u64::from(ServiceQuery::Uid.id(Owner::SiP).raw()));
    let mut revision =
        InMemoryRegisters::with_x0(u64::from(ServiceQuery::Revision.id(Owner::SiP).raw()));
    let mut count =
        InMemoryRegisters::with_x0(u64::from(ServiceQuery::CallCount.id(Owner::SiP).raw()));
    let mut reserved = InMemoryRegisters::with_x0(0x8200_FF02);

    for regs in [&mut uid, &mut revision, &mut count, &mut reserved] {
        router.dispatch(&HVC0, regs).unwrap();
    }

    assert_eq!(
        uid.x[..4].to_vec(),
        vec![0x1111_1111, 0x2222_2222, 0x3333_3333, 0x4444_4444]
    );
    assert_eq!(revision.x[..2].to_vec(), vec![2, 7]);
    assert_eq!(count.x[0], 16);
    assert_eq!(reserved.x[0], NOT_SUPPORTED_32);
    assert!(service.calls().is_empty());
}

#[test]
fn owner_queries_are_not_supported_without_identity_or_registration() {
    let service = Recorder::new("sip", SIP64, Results::code(SmcccReturn::Success));
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&service).unwrap();
    let router = builder.build();
    let mut uid = InMemoryRegisters::with_x0(u64::from(ServiceQuery::Uid.id(Owner::SiP).raw()));
    let mut other_owner =
        InMemoryRegisters::with_x0(u64::from(ServiceQuery::CallCount.id(Owner::Oem).raw()));

    router.dispatch(&HVC0, &mut uid).unwrap();
    router.dispatch(&HVC0, &mut other_owner).unwrap();

    assert_eq!(uid.x[0], NOT_SUPPORTED_32);
    assert_eq!(other_owner.x[0], NOT_SUPPORTED_32);
}

#[test]
fn registered_range_covering_a_query_takes_precedence() {
    const HYP_QUERIES: &[FunctionRange] = &[FunctionRange::fast(
        Convention::Smc32,
        Owner::VendorHypervisor,
        0xFF00,
        0xFF03,
    )];
    let service = Recorder::new("vendor-hyp", HYP_QUERIES, Results::value(0x1234));
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&service).unwrap();
    let router = builder.build();
    let mut regs = InMemoryRegisters::with_x0(0x8600_FF01);

    router.dispatch(&HVC0, &mut regs).unwrap();

    assert_eq!(regs.x[0], 0x1234);
    assert_eq!(service.calls().len(), 1);
}

fn arch_router(service: &Recorder) -> Router<&dyn Service> {
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(service).unwrap();
    builder
        .arm_architecture(ArmArchitecture {
            version: SmcccVersion::V1_2,
            soc_id: SocId::new(0x04, 0x3B, 0x0042, 9),
        })
        .unwrap();
    builder.build()
}

fn call_arch(router: &Router<&dyn Service>, id: FunctionId, w1: u64) -> u64 {
    let mut regs = regs_with(u64::from(id.raw()), &[w1]);
    router.dispatch(&HVC0, &mut regs).unwrap();
    regs.x[0]
}

#[test]
fn smccc_version_reports_the_configured_version() {
    let service = Recorder::new("sip", SIP64, Results::code(SmcccReturn::Success));
    let router = arch_router(&service);

    assert_eq!(
        call_arch(&router, FunctionId::SMCCC_VERSION, 0),
        0x0001_0002
    );
}

#[test]
fn arch_features_answers_for_registered_ids_only() {
    let service = Recorder::new("sip", SIP64, Results::code(SmcccReturn::Success));
    let router = arch_router(&service);
    let features = FunctionId::SMCCC_ARCH_FEATURES;

    assert_eq!(call_arch(&router, features, 0xC200_0001), 0, "registered");
    assert_eq!(
        call_arch(&router, features, 0xC201_0001),
        0,
        "registered, SVE hint set"
    );
    assert_eq!(
        call_arch(&router, features, 0xC200_0007),
        u64::from(SmcccReturn::NotRequired.as_u32()),
        "service says"
    );
    assert_eq!(
        call_arch(&router, features, 0xC200_0010),
        NOT_SUPPORTED_32,
        "outside the range"
    );
    assert_eq!(
        call_arch(&router, features, 0xC202_0001),
        NOT_SUPPORTED_32,
        "malformed"
    );
    assert_eq!(
        call_arch(&router, features, 0x8000_0002),
        0,
        "SOC_ID configured"
    );
    assert_eq!(
        call_arch(&router, features, 0x8000_0000),
        0,
        "SMCCC_VERSION"
    );
    assert_eq!(
        call_arch(&router, features, 0x8200_FF00),
        0,
        "call count query of a served owner"
    );
    assert_eq!(
        call_arch(&router, features, 0xFFFF_FFFF_C200_0001),
        0,
        "upper half of w1 ignored"
    );
}

#[test]
fn soc_id_answers_version_revision_and_refuses_other_types() {
    let service = Recorder::new("sip", SIP64, Results::code(SmcccReturn::Success));
    let router = arch_router(&service);
    let soc = FunctionId::SMCCC_ARCH_SOC_ID;

    assert_eq!(call_arch(&router, soc, 0), 0x043B_0042);
    assert_eq!(call_arch(&router, soc, 1), 9);
    assert_eq!(
        call_arch(&router, soc, 2),
        u64::from(SmcccReturn::InvalidParameter.as_u32())
    );
}

#[test]
fn soc_id_without_configuration_is_not_supported() {
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder
        .arm_architecture(ArmArchitecture::default())
        .unwrap();
    let router = builder.build();

    assert_eq!(
        call_arch(&router, FunctionId::SMCCC_ARCH_SOC_ID, 0),
        NOT_SUPPORTED_32
    );
    assert_eq!(
        call_arch(&router, FunctionId::SMCCC_ARCH_FEATURES, 0x8000_0002),
        NOT_SUPPORTED_32
    );
    assert_eq!(
        call_arch(&router, FunctionId::SMCCC_VERSION, 0),
        0x0001_0004
    );
}
