//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Mutex;

use hypercall_router::{
    Call, CallContext, Conduit, Convention, FunctionId, FunctionRange, InMemoryRegisters, Outcome,
    Owner, OwnerIdentity, RegisterView, Results, Service, ServiceInfo, SmcccReturn,
};

pub const HVC0: CallContext = CallContext::new(0, Conduit::Hvc);
pub const NOT_SUPPORTED_32: u64 = 0xFFFF_FFFF;
pub const NOT_SUPPORTED_64: u64 = 0xFFFF_FFFF_FFFF_FFFF;

/// Records every call and answers with fixed results.
pub struct Recorder {
    pub name: &'static str,
    pub ranges: &'static [FunctionRange],
    pub identity: Option<OwnerIdentity>,
    pub answer: Results,
    pub seen: Mutex<Vec<(CallContext, Call)>>,
}

impl Recorder {
    pub fn new(name: &'static str, ranges: &'static [FunctionRange], answer: Results) -> Self {
        Recorder {
            name,
            ranges,
            identity: None,
            answer,
            seen: Mutex::new(Vec::new()),
        }
    }

    pub fn calls(&self) -> Vec<(CallContext, Call)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Service for Recorder {
    fn info(&self) -> ServiceInfo<'_> {
        ServiceInfo {
            name: self.name,
            identity: self.identity,
            ranges: self.ranges,
        }
    }

    fn call(&self, ctx: &CallContext, call: &Call, _regs: &mut RegisterView<'_>) -> Outcome {
        self.seen.lock().unwrap().push((*ctx, *call));
        Outcome::Return(self.answer)
    }

    fn arch_features(&self, id: FunctionId) -> i32 {
        if id.number() == 7 {
            SmcccReturn::NotRequired.as_i32()
        } else {
            SmcccReturn::Success.as_i32()
        }
    }
}

pub const SIP64: &[FunctionRange] = &[FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 0x0F)];
pub const SIP32: &[FunctionRange] = &[FunctionRange::fast(Convention::Smc32, Owner::SiP, 0, 0x0F)];
pub const SIP64_OVERLAP: &[FunctionRange] = &[
    FunctionRange::fast(Convention::Smc64, Owner::Oem, 0, 1),
    FunctionRange::fast(Convention::Smc64, Owner::SiP, 0x0F, 0x20),
];

pub fn regs_with(x0: u64, args: &[u64]) -> InMemoryRegisters {
    let mut regs = InMemoryRegisters::with_x0(x0);
    for (n, v) in args.iter().enumerate() {
        regs.x[n + 1] = *v;
    }
    regs
}
