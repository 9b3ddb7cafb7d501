//! The shared harness (`sdei_dispatch::testing`: one dispatcher and one in-memory register
//! file per vCPU), plus the call shorthands these tests use.
#![allow(dead_code)]

pub use sdei_dispatch::testing::*;

use sdei_dispatch::abi::Function;
use sdei_dispatch::CallOutcome;

/// Shorthands for the calls the tests make most, with [`HANDLER`] as the handler.
pub trait Calls {
    /// `EVENT_REGISTER` of `event` with argument `arg`, routing `RM_ANY`.
    fn register(&mut self, vcpu: usize, event: u32, arg: u64) -> i64;
    /// `EVENT_REGISTER` of `event` routed `RM_PE` to `mpidr`, argument 0.
    fn register_pe(&mut self, vcpu: usize, event: u32, mpidr: u64) -> i64;
    /// `EVENT_ENABLE`.
    fn enable(&mut self, vcpu: usize, event: u32) -> i64;
    /// `PE_UNMASK`.
    fn unmask(&mut self, vcpu: usize) -> i64;
    /// `EVENT_STATUS`.
    fn status(&mut self, vcpu: usize, event: u32) -> i64;
    /// Registers (argument: the event number + 1), enables and unmasks: the event is ready to
    /// run on `vcpu`.
    fn ready(&mut self, vcpu: usize, event: u32);
    /// `EVENT_COMPLETE`.
    fn complete(&mut self, vcpu: usize) -> CallOutcome;
}

impl Calls for Vm {
    fn register(&mut self, vcpu: usize, event: u32, arg: u64) -> i64 {
        self.call(
            vcpu,
            Function::EventRegister,
            &[u64::from(event), HANDLER, arg, 0, 0],
        )
    }

    fn register_pe(&mut self, vcpu: usize, event: u32, mpidr: u64) -> i64 {
        self.call(
            vcpu,
            Function::EventRegister,
            &[u64::from(event), HANDLER, 0, 1, mpidr],
        )
    }

    fn enable(&mut self, vcpu: usize, event: u32) -> i64 {
        self.call(vcpu, Function::EventEnable, &[u64::from(event)])
    }

    fn unmask(&mut self, vcpu: usize) -> i64 {
        self.call(vcpu, Function::PeUnmask, &[])
    }

    fn status(&mut self, vcpu: usize, event: u32) -> i64 {
        self.call(vcpu, Function::EventStatus, &[u64::from(event)])
    }

    fn ready(&mut self, vcpu: usize, event: u32) {
        self.ready_at(vcpu, event, HANDLER, u64::from(event) + 1);
    }

    fn complete(&mut self, vcpu: usize) -> CallOutcome {
        self.outcome(vcpu, Function::EventComplete, &[0])
    }
}
