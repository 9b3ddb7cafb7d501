//! The router the benchmark and the timing example dispatch through.
#![allow(dead_code)]

use hypercall_router::testing::EchoService;
use hypercall_router::{
    ArmArchitecture, Call, CallContext, CallType, Convention, FunctionRange, InMemoryRegisters,
    Outcome, Owner, RegisterView, Results, Router, RouterBuilder, Service, ServiceInfo,
    SmcccReturn,
};

/// A service doing the least a real one does: SUCCESS and one value.
pub struct Minimal {
    name: &'static str,
    ranges: &'static [FunctionRange],
}

impl Service for Minimal {
    fn info(&self) -> ServiceInfo<'_> {
        ServiceInfo {
            name: self.name,
            identity: None,
            ranges: self.ranges,
        }
    }

    fn call(&self, _ctx: &CallContext, call: &Call, _regs: &mut RegisterView<'_>) -> Outcome {
        Outcome::Return(Results::code(SmcccReturn::Success).with(1, call.arg(1)))
    }
}

/// Either bench service, so one router holds both without `dyn`.
pub enum BenchService {
    Minimal(Minimal),
    Echo(EchoService),
}

impl Service for BenchService {
    fn info(&self) -> ServiceInfo<'_> {
        match self {
            BenchService::Minimal(s) => s.info(),
            BenchService::Echo(s) => s.info(),
        }
    }

    fn call(&self, ctx: &CallContext, call: &Call, regs: &mut RegisterView<'_>) -> Outcome {
        match self {
            BenchService::Minimal(s) => s.call(ctx, call, regs),
            BenchService::Echo(s) => s.call(ctx, call, regs),
        }
    }
}

const SIP: &[FunctionRange] = &[
    FunctionRange::fast(Convention::Smc32, Owner::SiP, 0, 0x3F),
    FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 0x3F),
];
const STD: &[FunctionRange] = &[
    FunctionRange::fast(Convention::Smc32, Owner::StandardSecure, 0, 0x1F),
    FunctionRange::fast(Convention::Smc64, Owner::StandardSecure, 0, 0x1F),
    FunctionRange::fast(Convention::Smc32, Owner::StandardSecure, 0x20, 0x3F).with_arg_count(4),
    FunctionRange::fast(Convention::Smc64, Owner::StandardSecure, 0x20, 0x3F).with_arg_count(4),
];
const HYP: &[FunctionRange] = &[
    FunctionRange::fast(Convention::Smc32, Owner::VendorHypervisor, 0, 0x7F),
    FunctionRange::fast(Convention::Smc64, Owner::VendorHypervisor, 0, 0x7F),
];
const TOS: &[FunctionRange] = &[
    FunctionRange::fast(Convention::Smc32, Owner::TrustedOs(50), 0, 0xFF),
    FunctionRange::fast(Convention::Smc64, Owner::TrustedOs(63), 0, 0xFF)
        .with_call_type(CallType::Yielding),
];

/// A router with 4 services, 10 ranges and the built-in Arm Architecture
/// service; the vendor-hypervisor service echoes all its arguments.
pub fn router() -> Router<BenchService> {
    let mut builder = RouterBuilder::<BenchService>::new();
    for (name, ranges) in [("sip", SIP), ("std", STD), ("tos", TOS)] {
        builder
            .register(BenchService::Minimal(Minimal { name, ranges }))
            .unwrap();
    }
    builder
        .register(BenchService::Echo(EchoService::new("hyp", HYP, None)))
        .unwrap();
    builder
        .arm_architecture(ArmArchitecture::default())
        .unwrap();
    builder.build()
}

/// The dispatched cases: name and initial registers.
pub fn cases() -> [(&'static str, InMemoryRegisters); 4] {
    let mut psci_like = InMemoryRegisters::with_x0(0x8400_0023);
    psci_like.x[1..5].copy_from_slice(&[1, 2, 3, 4]);
    [
        // SMC32 with a 4-argument range (PSCI-like): reads x0-x4, writes w0-w1.
        ("decode_dispatch_smc32_4_args", psci_like),
        // SMC64 echo of every argument: reads x0-x17, writes x0-x17.
        (
            "decode_dispatch_smc64_echo_17_args",
            InMemoryRegisters::new([0xC600_0042; 18]),
        ),
        (
            "decode_dispatch_unknown",
            InMemoryRegisters::with_x0(0xC300_0001),
        ),
        (
            "decode_dispatch_smccc_version",
            InMemoryRegisters::with_x0(0x8000_0000),
        ),
    ]
}
