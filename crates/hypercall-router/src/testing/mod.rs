//! Ready-made services and an entry point for tests, harnesses and fuzzing, and a few A64
//! encodings for hand-assembled guests ([`a64`], with `std`).

#[cfg(feature = "std")]
pub mod a64;

use crate::arch::{ArmArchitecture, SocId};
use crate::call::{Call, CallContext, Conduit, Outcome, Results};
use crate::function_id::{CallType, Convention, Owner};
use crate::registers::{InMemoryRegisters, RegisterView, SMCCC_REGISTERS};
use crate::return_code::SmcccReturn;
use crate::router::{DispatchOutcome, Router, RouterBuilder};
use crate::service::{FunctionRange, OwnerIdentity, Service, ServiceInfo};

/// A service that answers SUCCESS in `x0` and echoes its arguments:
/// result `x<n>` = argument `x<n>` for every argument the convention passes.
#[derive(Debug, Clone, Copy)]
pub struct EchoService {
    name: &'static str,
    ranges: &'static [FunctionRange],
    identity: Option<OwnerIdentity>,
}

impl EchoService {
    /// An echo service named `name` serving `ranges`.
    pub const fn new(
        name: &'static str,
        ranges: &'static [FunctionRange],
        identity: Option<OwnerIdentity>,
    ) -> Self {
        EchoService {
            name,
            ranges,
            identity,
        }
    }
}

impl Service for EchoService {
    fn info(&self) -> ServiceInfo<'_> {
        ServiceInfo {
            name: self.name,
            identity: self.identity,
            ranges: self.ranges,
        }
    }

    fn call(&self, _ctx: &CallContext, call: &Call, _regs: &mut RegisterView<'_>) -> Outcome {
        let mut results = Results::code(SmcccReturn::Success);
        for (n, arg) in (1..call.convention().max_results()).zip(call.args) {
            results.set(n, arg);
        }
        Outcome::Return(results)
    }
}

/// A service that writes its own registers and answers [`Outcome::Handled`]:
/// it stores the bitwise NOT of every register `x0`–`x17` back in place.
#[derive(Debug, Clone, Copy)]
pub struct InvertingService {
    ranges: &'static [FunctionRange],
}

impl InvertingService {
    /// An inverting service serving `ranges`.
    pub const fn new(ranges: &'static [FunctionRange]) -> Self {
        InvertingService { ranges }
    }
}

impl Service for InvertingService {
    fn info(&self) -> ServiceInfo<'_> {
        ServiceInfo {
            name: "inverting",
            identity: None,
            ranges: self.ranges,
        }
    }

    fn call(&self, _ctx: &CallContext, _call: &Call, regs: &mut RegisterView<'_>) -> Outcome {
        for n in 0..SMCCC_REGISTERS {
            if let Ok(value) = regs.read_x(n) {
                // A failed write is reported by the router from the register file.
                let _ = regs.write_x(n, !value);
            }
        }
        Outcome::Handled
    }
}

const FUZZ_SIP: &[FunctionRange] = &[
    FunctionRange::fast(Convention::Smc32, Owner::SiP, 0, 0x1F),
    FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 0x1F),
];
const FUZZ_TRUSTED_OS: &[FunctionRange] =
    &[
        FunctionRange::fast(Convention::Smc64, Owner::TrustedOs(50), 0x10, 0x10)
            .with_call_type(CallType::Yielding),
    ];
const FUZZ_VENDOR_HYP: &[FunctionRange] = &[FunctionRange::fast(
    Convention::Smc32,
    Owner::VendorHypervisor,
    0,
    3,
)];

/// The router [`fuzz_dispatch`] uses: echo services on SiP (SMC32 and SMC64,
/// 0x00–0x1F, with an identity) and on Trusted OS 50 (yielding SMC64 0x10),
/// an [`InvertingService`] on vendor hypervisor 0–3, and the built-in Arm
/// Architecture service.
pub fn fuzz_router() -> Router<&'static dyn Service> {
    static SIP: EchoService = EchoService::new(
        "echo-sip",
        FUZZ_SIP,
        Some(OwnerIdentity {
            uid: Some(crate::service::Uid([1, 2, 3, 4])),
            revision: None,
        }),
    );
    static TOS: EchoService = EchoService::new("echo-tos", FUZZ_TRUSTED_OS, None);
    static INVERT: InvertingService = InvertingService::new(FUZZ_VENDOR_HYP);
    let mut builder = RouterBuilder::<&'static dyn Service>::new();
    let arch = ArmArchitecture {
        soc_id: SocId::new(0x04, 0x3B, 0x1234, 1),
        ..ArmArchitecture::default()
    };
    builder
        .register(&SIP)
        .and_then(|b| b.register(&TOS))
        .and_then(|b| b.register(&INVERT))
        .and_then(|b| b.arm_architecture(arch))
        .expect("the fixed fuzz registrations neither overlap nor overflow the router");
    builder.build()
}

/// Decodes and dispatches arbitrary `x0`–`x17` through [`fuzz_router`],
/// checking the router's invariants; returns the outcome and the registers
/// as the guest would see them.
///
/// A fuzz target is `fuzz_dispatch(&router, regs, conduit)` on any input.
///
/// # Panics
///
/// Panics if an invariant is broken (which is what a fuzzer looks for):
/// dispatch failed on an in-memory register file, an SMC32 call left a
/// non-zero upper half in a written register, NOT_SUPPORTED was reported
/// without being written, or a register past the convention's result
/// registers changed.
pub fn fuzz_dispatch(
    router: &Router<&'static dyn Service>,
    x: [u64; SMCCC_REGISTERS as usize],
    conduit: Conduit,
) -> (DispatchOutcome, InMemoryRegisters) {
    let before = InMemoryRegisters::new(x);
    let mut regs = before;
    let ctx = CallContext::new(0, conduit);
    let outcome = match router.dispatch(&ctx, &mut regs) {
        Ok(outcome) => outcome,
        Err(err) => panic!("in-memory dispatch failed: {err}"),
    };
    let smc64 = x[0] & (1 << 30) != 0;
    let writable = if smc64 {
        Convention::Smc64
    } else {
        Convention::Smc32
    }
    .max_results();
    if let DispatchOutcome::Service { handled: true, .. } = outcome {
        return (outcome, regs);
    }
    for n in usize::from(writable)..usize::from(SMCCC_REGISTERS) {
        assert_eq!(
            regs.x[n], before.x[n],
            "x{n} beyond the result registers changed"
        );
    }
    if !smc64 {
        for n in 0..usize::from(writable) {
            let changed = regs.x[n] != before.x[n];
            assert!(
                !changed || regs.x[n] >> 32 == 0,
                "SMC32 result x{n} is not zero-extended"
            );
        }
    }
    if let DispatchOutcome::NotSupported(_) = outcome {
        let expected = if smc64 {
            SmcccReturn::NotSupported.as_u64()
        } else {
            u64::from(SmcccReturn::NotSupported.as_u32())
        };
        assert_eq!(
            regs.x[0], expected,
            "NOT_SUPPORTED reported but not written"
        );
    }
    (outcome, regs)
}
