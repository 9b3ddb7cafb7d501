//! [`Vm`]: a dispatcher and the registers of each vCPU.

use alloc::vec::Vec;

use super::{config, Op, EVENTS};
use crate::abi::Function;
use crate::{CallOutcome, DispatchInfo, Dispatcher, DispatcherConfig, InMemoryRegisters};

/// A dispatcher and one in-memory register file per vCPU.
///
/// The helpers index `regs` by vCPU and unwrap the dispatcher's results: they panic on a vCPU
/// that does not exist (an in-memory register file never fails otherwise).
#[derive(Debug, Clone)]
pub struct Vm {
    /// The dispatcher under test.
    pub sdei: Dispatcher,
    /// Registers of each vCPU, by index.
    pub regs: Vec<InMemoryRegisters>,
}

impl Vm {
    /// A VM of `vcpus` vCPUs with the test [`config`].
    pub fn new(vcpus: usize) -> Vm {
        Vm::with_config(config(vcpus))
    }

    /// A VM built from `config`, every register zero.
    pub fn with_config(config: DispatcherConfig) -> Vm {
        let vcpus = config.vcpus;
        Vm {
            sdei: Dispatcher::new(config).expect("the test configuration is valid"),
            regs: alloc::vec![InMemoryRegisters::default(); vcpus],
        }
    }

    /// Makes the call with function identifier `id` (any value) on `vcpu` and returns what it
    /// did.
    pub fn outcome_id(&mut self, vcpu: usize, id: u32, args: &[u64]) -> CallOutcome {
        self.regs[vcpu].load_call(id, args);
        self.sdei.handle_call(vcpu, &mut self.regs[vcpu]).unwrap()
    }

    /// Makes an SDEI call on `vcpu` and returns what it did.
    pub fn outcome(&mut self, vcpu: usize, function: Function, args: &[u64]) -> CallOutcome {
        self.outcome_id(vcpu, function.id(), args)
    }

    /// Makes an SDEI call on `vcpu` that returns a value, and returns it.
    ///
    /// # Panics
    ///
    /// If the call does not return a value (a completion), or `x0` does not hold it.
    pub fn call(&mut self, vcpu: usize, function: Function, args: &[u64]) -> i64 {
        match self.outcome(vcpu, function, args) {
            CallOutcome::Returned(value) => {
                assert_eq!(self.regs[vcpu].ret(), value, "x0 holds the return value");
                value
            }
            other => panic!("{function:?} did not return a value: {other:?}"),
        }
    }

    /// Registers `event` with handler `entry` and argument `arg` (routing `RM_ANY`), enables
    /// it and unmasks `vcpu`.
    ///
    /// # Panics
    ///
    /// If one of the three calls fails.
    pub fn ready_at(&mut self, vcpu: usize, event: u32, entry: u64, arg: u64) {
        let e = u64::from(event);
        for (function, args) in [
            (Function::EventRegister, &[e, entry, arg, 0, 0][..]),
            (Function::EventEnable, &[e][..]),
            (Function::PeUnmask, &[][..]),
        ] {
            let ret = self.call(vcpu, function, args);
            assert_eq!(ret, 0, "{function:?} for event {event:#x} on vCPU {vcpu}");
        }
    }

    /// Puts a recognisable interrupted context in the registers of `vcpu`: x0–x17 and PC
    /// derived from `tag` (any value), PSTATE EL1h with DAIF clear and NZCV from the tag's low
    /// bits.
    pub fn mark(&mut self, vcpu: usize, tag: u64) {
        let regs = &mut self.regs[vcpu];
        for (n, x) in regs.x.iter_mut().enumerate() {
            *x = tag.wrapping_mul(0x100).wrapping_add(n as u64);
        }
        regs.pc = 0xFFFF_0000_0000_0000 | (tag << 12);
        regs.pstate = 0x5 | (tag & 0xF) << 28;
    }

    /// Takes `vcpu` out of `KVM_RUN`: starts the handler of a pending event, if one is due.
    pub fn dispatch(&mut self, vcpu: usize) -> Option<DispatchInfo> {
        self.sdei
            .dispatch_pending(vcpu, &mut self.regs[vcpu])
            .unwrap()
    }

    /// Number of handlers running on `vcpu`.
    pub fn depth(&self, vcpu: usize) -> usize {
        let state = self.sdei.state();
        let v = &state.vcpus[vcpu];
        usize::from(v.normal.is_some()) + usize::from(v.critical.is_some())
    }

    /// Runs `op` without checking anything: refused raises are ignored, vCPU indices must be
    /// in range.
    pub fn step(&mut self, op: &Op) {
        for call in op.calls(self.regs.len()) {
            self.outcome_id(call.vcpu, call.id, &call.args);
        }
        self.act(op);
    }

    /// The part of `op` that is not an SDEI call (nothing, for the ops that are calls).
    pub(super) fn act(&mut self, op: &Op) {
        match *op {
            Op::Raise { event, target } => {
                // Refusals (wrong kind of target, no such vCPU) are part of the API.
                let _ = self.sdei.raise(EVENTS[event % EVENTS.len()], target);
            }
            Op::RaiseInterrupt { intid, target } => {
                let _ = self.sdei.raise_interrupt(intid, target);
            }
            Op::Mark { vcpu, tag } => self.mark(vcpu, tag),
            Op::SetRegs {
                vcpu,
                x,
                pc,
                pstate,
            } => {
                let regs = &mut self.regs[vcpu];
                (regs.x, regs.pc, regs.pstate) = (x, pc, pstate);
            }
            Op::Dispatch { vcpu } => {
                self.dispatch(vcpu);
            }
            Op::ResetVcpu { vcpu } => self.sdei.reset_vcpu(vcpu).unwrap(),
            Op::Reset => self.sdei.reset(),
            Op::Migrate => {
                let config = self.sdei.config().clone();
                self.sdei = Dispatcher::restore(config, self.sdei.state()).unwrap();
            }
            Op::Call { .. }
            | Op::Raw { .. }
            | Op::Ready { .. }
            | Op::ReadyPe { .. }
            | Op::Complete { .. } => {}
        }
    }
}
