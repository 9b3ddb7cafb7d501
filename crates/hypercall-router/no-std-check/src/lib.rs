//! A firmware-shaped user of `hypercall-router` without `std` or `alloc`.
#![no_std]
#![deny(unsafe_code)]

use hypercall_router::{
    ArmArchitecture, Call, CallContext, Conduit, Convention, FunctionRange, InMemoryRegisters,
    Outcome, Owner, RegisterView, Results, Router, RouterBuilder, Service, ServiceInfo,
    SmcccReturn,
};

struct Counter;

const RANGES: &[FunctionRange] = &[FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 3)];

impl Service for Counter {
    fn info(&self) -> ServiceInfo<'_> {
        ServiceInfo {
            name: "counter",
            identity: None,
            ranges: RANGES,
        }
    }

    fn call(&self, _ctx: &CallContext, call: &Call, _regs: &mut RegisterView<'_>) -> Outcome {
        Outcome::Return(Results::code(SmcccReturn::Success).with(1, call.arg(1).wrapping_add(1)))
    }
}

/// Builds a router on the stack and dispatches one call; returns `x1`.
///
/// Exported unmangled so the optimiser keeps it: its object size is the
/// code footprint quoted in the README.
#[allow(unsafe_code)] // `no_mangle` only; no unsafe code.
#[no_mangle]
pub extern "C" fn no_std_dispatch(x0: u64, x1: u64) -> u64 {
    let mut builder = RouterBuilder::<Counter, 2, 4>::new();
    let registered = builder
        .register(Counter)
        .and_then(|b| b.arm_architecture(ArmArchitecture::default()))
        .is_ok();
    if !registered {
        return u64::MAX;
    }
    let router: Router<Counter, 2, 4> = builder.build();
    let mut regs = InMemoryRegisters::with_x0(x0);
    regs.x[1] = x1;
    match router.dispatch(&CallContext::new(0, Conduit::Smc), &mut regs) {
        Ok(_) => regs.x[1],
        Err(_) => u64::MAX,
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
