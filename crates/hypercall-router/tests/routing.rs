//! Router behaviour: registration checks, argument and result conventions,
//! register access and sharing.

mod common;

use common::*;
use hypercall_router::testing::InvertingService;
use hypercall_router::{
    ArmArchitecture, CallContext, CallType, Conduit, ControlRegister, Convention, DispatchOutcome,
    FunctionRange, InMemoryRegisters, Owner, OwnerIdentity, RegisterFile, Results, RouterBuilder,
    RouterError, Service, SmcccReturn, Uid, Unsupported,
};

#[test]
fn smc64_call_reaches_service_with_x1_to_x17() {
    let service = Recorder::new("sip", SIP64, Results::code(SmcccReturn::Success));
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&service).unwrap();
    let router = builder.build();
    let args: Vec<u64> = (1..=17).map(|n| 0xA5A5_0000_0000_0000 | n).collect();
    let mut regs = regs_with(0xC200_0003, &args);

    let outcome = router
        .dispatch(&CallContext::new(3, Conduit::Smc), &mut regs)
        .unwrap();

    let calls = service.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, CallContext::new(3, Conduit::Smc));
    assert_eq!(calls[0].1.id.number(), 3);
    assert_eq!(calls[0].1.args.to_vec(), args);
    assert!(matches!(
        outcome,
        DispatchOutcome::Service { service: "sip", .. }
    ));
    assert_eq!(regs.x[0], 0);
}

#[test]
fn smc32_arguments_are_truncated_to_w1_to_w7() {
    let service = Recorder::new("sip32", SIP32, Results::code(SmcccReturn::Success));
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&service).unwrap();
    let router = builder.build();
    let args: Vec<u64> = (1..=17).map(|n| 0xFFFF_FFFF_0000_0000 | n).collect();
    let mut regs = regs_with(0x8200_0001, &args);

    router.dispatch(&HVC0, &mut regs).unwrap();

    let call = service.calls()[0].1;
    assert_eq!(call.args[..7].to_vec(), (1..=7).collect::<Vec<u64>>());
    assert_eq!(
        call.args[7..].to_vec(),
        vec![0; 10],
        "x8-x17 are not SMC32 arguments"
    );
}

#[test]
fn smc32_results_are_truncated_and_zero_extended_up_to_w7() {
    let answer = Results::from_slice(&[0xDEAD_BEEF_0000_0001; 10]);
    let service = Recorder::new("sip32", SIP32, answer);
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&service).unwrap();
    let router = builder.build();
    let mut regs = InMemoryRegisters::new([0x7777; 18]);
    regs.x[0] = 0xFFFF_FFFF_8200_0002;

    router.dispatch(&HVC0, &mut regs).unwrap();

    assert_eq!(regs.x[..8].to_vec(), vec![1; 8]);
    assert_eq!(
        regs.x[8..].to_vec(),
        vec![0x7777; 10],
        "w8 and above are not SMC32 results"
    );
}

#[test]
fn smc64_results_are_written_in_full_up_to_x17() {
    let answer = Results::from_slice(&[0xDEAD_BEEF_0000_0001; 18]);
    let service = Recorder::new("sip", SIP64, answer);
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&service).unwrap();
    let router = builder.build();
    let mut regs = InMemoryRegisters::with_x0(0xC200_0000);

    router.dispatch(&HVC0, &mut regs).unwrap();

    assert_eq!(regs.x.to_vec(), vec![0xDEAD_BEEF_0000_0001; 18]);
}

#[test]
fn unknown_id_answers_not_supported_per_convention() {
    let router = RouterBuilder::<&dyn Service>::new().build();
    let mut smc32 = InMemoryRegisters::with_x0(0x8400_0000);
    let mut smc64 = InMemoryRegisters::with_x0(0xC400_0000);

    let outcome = router.dispatch(&HVC0, &mut smc32).unwrap();
    router.dispatch(&HVC0, &mut smc64).unwrap();

    assert!(matches!(
        outcome,
        DispatchOutcome::NotSupported(Unsupported::Unrouted(_))
    ));
    assert_eq!(smc32.x[0], NOT_SUPPORTED_32);
    assert_eq!(smc64.x[0], NOT_SUPPORTED_64);
}

#[test]
fn fast_call_with_reserved_bits_is_not_supported_even_inside_a_range() {
    let service = Recorder::new("sip", SIP64, Results::code(SmcccReturn::Success));
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&service).unwrap();
    let router = builder.build();
    let mut regs = InMemoryRegisters::with_x0(0xC202_0001);

    let outcome = router.dispatch(&HVC0, &mut regs).unwrap();

    assert!(matches!(
        outcome,
        DispatchOutcome::NotSupported(Unsupported::Malformed(_))
    ));
    assert_eq!(regs.x[0], NOT_SUPPORTED_64);
    assert!(service.calls().is_empty());
}

#[test]
fn sve_hint_is_masked_for_routing_and_visible_to_the_service() {
    let service = Recorder::new("sip", SIP64, Results::code(SmcccReturn::Success));
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&service).unwrap();
    let router = builder.build();
    let mut regs = InMemoryRegisters::with_x0(0xABCD_0000_C201_0004);

    router.dispatch(&HVC0, &mut regs).unwrap();

    let call = service.calls()[0].1;
    assert!(call.id.sve_hint());
    assert_eq!(call.id.raw(), 0xC200_0004);
    assert_eq!(regs.x[0], 0);
}

#[test]
fn overlapping_registration_is_refused_naming_both_services() {
    let first = Recorder::new("first", SIP64, Results::code(SmcccReturn::Success));
    let second = Recorder::new("second", SIP64_OVERLAP, Results::code(SmcccReturn::Success));
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&first).unwrap();

    let err = builder.register(&second).unwrap_err();

    assert_eq!(
        err,
        RouterError::Overlap {
            existing: "first",
            new: "second",
            id: 0xC200_000F
        }
    );
    let message = err.to_string();
    assert!(
        message.contains("first") && message.contains("second"),
        "{message}"
    );
    // The refused service left nothing behind: its OEM range is not routed.
    let router = builder.build();
    let mut regs = InMemoryRegisters::with_x0(0xC300_0000);
    router.dispatch(&HVC0, &mut regs).unwrap();
    assert_eq!(regs.x[0], NOT_SUPPORTED_64);
    assert_eq!(router.ranges().count(), 1);
}

#[test]
fn ranges_of_one_service_overlapping_each_other_are_refused() {
    const SELF_OVERLAP: &[FunctionRange] = &[
        FunctionRange::fast(Convention::Smc32, Owner::Cpu, 0, 4),
        FunctionRange::fast(Convention::Smc32, Owner::Cpu, 4, 8),
    ];
    let service = Recorder::new("twice", SELF_OVERLAP, Results::code(SmcccReturn::Success));

    let err = RouterBuilder::<&dyn Service>::new()
        .register(&service)
        .map(|_| ())
        .unwrap_err();

    assert_eq!(
        err,
        RouterError::Overlap {
            existing: "twice",
            new: "twice",
            id: 0x8100_0004
        }
    );
}

#[test]
fn same_numbers_in_another_convention_or_call_type_do_not_overlap() {
    const YIELDING: &[FunctionRange] =
        &[FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 0x0F)
            .with_call_type(CallType::Yielding)];
    let fast64 = Recorder::new("fast64", SIP64, Results::code(SmcccReturn::Success));
    let fast32 = Recorder::new("fast32", SIP32, Results::code(SmcccReturn::Success));
    let yielding = Recorder::new("yielding", YIELDING, Results::code(SmcccReturn::Success));
    let mut builder = RouterBuilder::<&dyn Service>::new();

    builder.register(&fast64).unwrap();
    builder.register(&fast32).unwrap();
    builder.register(&yielding).unwrap();
    let router = builder.build();
    let mut regs = InMemoryRegisters::with_x0(0x4200_0005);
    router.dispatch(&HVC0, &mut regs).unwrap();

    assert_eq!(yielding.calls().len(), 1);
    assert!(fast64.calls().is_empty() && fast32.calls().is_empty());
}

#[test]
fn service_overlapping_the_built_in_arm_architecture_is_refused() {
    const ARCH: &[FunctionRange] = &[FunctionRange::fast(
        Convention::Smc32,
        Owner::ArmArchitecture,
        2,
        0x10,
    )];
    let service = Recorder::new("soc", ARCH, Results::code(SmcccReturn::Success));
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder
        .arm_architecture(ArmArchitecture::default())
        .unwrap();

    let err = builder.register(&service).map(|_| ()).unwrap_err();

    assert_eq!(
        err,
        RouterError::Overlap {
            existing: hypercall_router::ARM_ARCHITECTURE_NAME,
            new: "soc",
            id: 0x8000_0002
        }
    );
}

#[test]
fn invalid_ranges_are_refused() {
    const EMPTY: &[FunctionRange] = &[FunctionRange::fast(Convention::Smc32, Owner::Oem, 5, 4)];
    const TOO_MANY_ARGS: &[FunctionRange] =
        &[FunctionRange::fast(Convention::Smc32, Owner::Oem, 0, 4).with_arg_count(8)];
    const BAD_OWNER: &[FunctionRange] = &[FunctionRange::fast(
        Convention::Smc32,
        Owner::Reserved(3),
        0,
        4,
    )];

    for ranges in [EMPTY, TOO_MANY_ARGS, BAD_OWNER] {
        let service = Recorder::new("bad", ranges, Results::code(SmcccReturn::Success));
        let err = RouterBuilder::<&dyn Service>::new()
            .register(&service)
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, RouterError::InvalidRange { service: "bad", .. }),
            "{err:?}"
        );
    }
}

#[test]
fn second_identity_for_an_owner_is_refused() {
    let identity = Some(OwnerIdentity {
        uid: Some(Uid([1, 2, 3, 4])),
        revision: None,
    });
    let mut first = Recorder::new("first", SIP64, Results::code(SmcccReturn::Success));
    first.identity = identity;
    let mut second = Recorder::new("second", SIP32, Results::code(SmcccReturn::Success));
    second.identity = identity;
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&first).unwrap();

    let err = builder.register(&second).map(|_| ()).unwrap_err();

    assert_eq!(
        err,
        RouterError::DuplicateIdentity {
            owner: Owner::SiP,
            existing: "first",
            new: "second"
        }
    );
}

#[test]
fn full_router_refuses_more_services_and_ranges() {
    const ONE: &[FunctionRange] = &[FunctionRange::fast(Convention::Smc32, Owner::Oem, 0, 0)];
    const TWO: &[FunctionRange] = &[
        FunctionRange::fast(Convention::Smc32, Owner::Oem, 1, 1),
        FunctionRange::fast(Convention::Smc32, Owner::Oem, 2, 2),
    ];
    let one = Recorder::new("one", ONE, Results::code(SmcccReturn::Success));
    let two = Recorder::new("two", TWO, Results::code(SmcccReturn::Success));
    let mut by_services = RouterBuilder::<&dyn Service, 1, 8>::new();
    let mut by_ranges = RouterBuilder::<&dyn Service, 4, 2>::new();
    by_services.register(&one).unwrap();
    by_ranges.register(&one).unwrap();

    let services_err = by_services.register(&two).map(|_| ()).unwrap_err();
    let ranges_err = by_ranges.register(&two).map(|_| ()).unwrap_err();

    assert_eq!(services_err, RouterError::TooManyServices { capacity: 1 });
    assert_eq!(ranges_err, RouterError::TooManyRanges { capacity: 2 });
}

#[test]
fn handled_outcome_leaves_registers_to_the_service() {
    const HYP: &[FunctionRange] = &[FunctionRange::fast(
        Convention::Smc32,
        Owner::VendorHypervisor,
        0,
        0,
    )];
    let service = InvertingService::new(HYP);
    let mut builder = RouterBuilder::<InvertingService>::new();
    builder.register(service).unwrap();
    let router = builder.build();
    let mut regs = InMemoryRegisters::new([0x0F0F; 18]);
    regs.x[0] = 0x8600_0000;

    let outcome = router.dispatch(&HVC0, &mut regs).unwrap();

    assert!(matches!(
        outcome,
        DispatchOutcome::Service { handled: true, .. }
    ));
    assert_eq!(regs.x[0], !0x8600_0000u64);
    assert_eq!(
        regs.x[17], !0x0F0Fu64,
        "SMC32 convention does not limit what a Handled service writes"
    );
}

/// Counts register reads and fails writes of one register.
struct Probe {
    inner: InMemoryRegisters,
    reads: Vec<u8>,
    fail_write: Option<u8>,
}

impl RegisterFile for Probe {
    type Error = String;

    fn read_x(&mut self, n: u8) -> Result<u64, String> {
        self.reads.push(n);
        self.inner.read_x(n).map_err(|e| e.to_string())
    }

    fn write_x(&mut self, n: u8, value: u64) -> Result<(), String> {
        if self.fail_write == Some(n) {
            return Err(format!("x{n} is read-only"));
        }
        self.inner.write_x(n, value).map_err(|e| e.to_string())
    }

    fn read_control(&mut self, reg: ControlRegister) -> Result<u64, String> {
        self.inner.read_control(reg).map_err(|e| e.to_string())
    }

    fn write_control(&mut self, reg: ControlRegister, value: u64) -> Result<(), String> {
        self.inner
            .write_control(reg, value)
            .map_err(|e| e.to_string())
    }
}

#[test]
fn only_the_registers_a_range_needs_are_read() {
    const TWO_ARGS: &[FunctionRange] =
        &[FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 0).with_arg_count(2)];
    let service = Recorder::new("two-args", TWO_ARGS, Results::code(SmcccReturn::Success));
    let mut builder = RouterBuilder::<&dyn Service>::new();
    builder.register(&service).unwrap();
    let router = builder.build();
    let mut probe = Probe {
        inner: regs_with(0xC200_0000, &[5, 6, 7]),
        reads: Vec::new(),
        fail_write: None,
    };

    router.dispatch(&HVC0, &mut probe).unwrap();

    assert_eq!(probe.reads, vec![0, 1, 2]);
    assert_eq!(service.calls()[0].1.args[..3].to_vec(), vec![5, 6, 0]);
}

#[test]
fn register_file_errors_are_returned_not_swallowed() {
    const HYP: &[FunctionRange] = &[FunctionRange::fast(
        Convention::Smc32,
        Owner::VendorHypervisor,
        0,
        0,
    )];
    let mut builder = RouterBuilder::<InvertingService>::new();
    builder.register(InvertingService::new(HYP)).unwrap();
    let router = builder.build();
    let mut results_fail = Probe {
        inner: InMemoryRegisters::with_x0(0x8400_0000),
        reads: Vec::new(),
        fail_write: Some(0),
    };
    let mut handled_fail = Probe {
        inner: InMemoryRegisters::with_x0(0x8600_0000),
        reads: Vec::new(),
        fail_write: Some(3),
    };

    let unrouted = router.dispatch(&HVC0, &mut results_fail);
    let handled = router.dispatch(&HVC0, &mut handled_fail);

    assert_eq!(unrouted.unwrap_err(), "x0 is read-only");
    assert_eq!(handled.unwrap_err(), "x3 is read-only");
}

#[test]
fn router_is_shared_between_vcpu_threads() {
    let service = Recorder::new("sip", SIP64, Results::code(SmcccReturn::Success));
    let mut builder = RouterBuilder::<&Recorder>::new();
    builder.register(&service).unwrap();
    let router = builder.build();

    std::thread::scope(|scope| {
        for vcpu in 0..4 {
            let router = &router;
            scope.spawn(move || {
                let mut regs = InMemoryRegisters::with_x0(0xC200_0001);
                router
                    .dispatch(&CallContext::new(vcpu, Conduit::Hvc), &mut regs)
                    .unwrap();
            });
        }
    });

    let mut vcpus: Vec<usize> = service
        .calls()
        .iter()
        .map(|(ctx, _)| ctx.vcpu_index)
        .collect();
    vcpus.sort_unstable();
    assert_eq!(vcpus, vec![0, 1, 2, 3]);
}

/// Forwarding impls that need `std` (`Box`, `Arc`).
#[cfg(feature = "std")]
mod forwarding_impls {
    use std::sync::Arc;

    use hypercall_router::testing::EchoService;

    use super::*;

    #[test]
    fn boxed_and_shared_services_register_through_forwarding_impls() {
        let shared = Arc::new(Recorder::new("shared", SIP32, Results::value(1)));
        let mut builder = RouterBuilder::<hypercall_router::BoxedService>::new();
        builder.register(Box::new(Arc::clone(&shared))).unwrap();
        builder
            .register(Box::new(EchoService::new("echo", SIP64, None)))
            .unwrap();
        let router = builder.build();
        let mut regs32 = InMemoryRegisters::with_x0(0x8200_0000);
        let mut regs64 = regs_with(0xC200_0000, &[9]);

        router.dispatch(&HVC0, &mut regs32).unwrap();
        router.dispatch(&HVC0, &mut regs64).unwrap();

        assert_eq!(shared.calls().len(), 1);
        assert_eq!((regs32.x[0], regs64.x[0], regs64.x[1]), (1, 0, 9));
    }
}
