//! [`Model`]: a [`Vm`] that runs [`Op`]s and checks what the dispatcher must guarantee.
//!
//! Invariants checked after every step ([`Model::check_invariants`]) and during calls and
//! dispatches:
//! - no handler starts on a masked vCPU, nothing pre-empts a critical handler, and a normal
//!   handler never nests (so at most one normal and one critical run per vCPU);
//! - `dispatch_pending` starts a handler exactly when `pending_dispatch` says one waits, and
//!   `vcpus_needing_kick` lists exactly those vCPUs;
//! - a handler starts with x0 = event, x2/x3 = interrupted PC/PSTATE, PC = its entry point;
//! - completion restores exactly the registers saved when that handler started (and a resume
//!   enters the resume address with ELR/SPSR holding the interrupted PC/PSTATE);
//! - a call that returns a value changes x0 only;
//! - `EVENT_STATUS` agrees with the state, and an event's running bit with the frames;
//! - the state is always one `Dispatcher::restore` accepts, and restores to itself;
//! - an out-of-range vCPU index is refused.

use alloc::vec::Vec;

use super::{Op, Vm, EVENTS};
use crate::abi::Function;
use crate::state::EventEntry;
use crate::{
    CallOutcome, Dispatcher, DispatcherConfig, DispatcherState, InMemoryRegisters, Priority,
};

/// The system under test and the harness's record of what runs.
#[derive(Debug)]
pub struct Model {
    vm: Vm,
    /// What the dispatcher is (re)built from.
    config: DispatcherConfig,
    /// Per vCPU, the registers each running handler interrupted, innermost last.
    saved: Vec<Vec<InMemoryRegisters>>,
    /// Handlers started so far (lets tests show a sequence reached the handlers).
    pub dispatched: usize,
    /// Handlers completed so far.
    pub completed: usize,
}

/// The registration of `event` as `vcpu` sees it, and whether its handler runs there.
fn entry_of(state: &DispatcherState, vcpu: usize, event: u32) -> Option<(EventEntry, bool)> {
    let v = state.vcpus.get(vcpu)?;
    if let Some(e) = v.private_events.iter().find(|e| e.number == event) {
        return Some((*e, e.state.running));
    }
    let s = state
        .shared_events
        .iter()
        .find(|s| s.entry.number == event)?;
    Some((s.entry, s.running_on == Some(vcpu)))
}

impl Model {
    /// A fresh VM built from `config`, nothing running.
    pub fn new(config: DispatcherConfig) -> Self {
        let vcpus = config.vcpus;
        Model {
            vm: Vm::with_config(config.clone()),
            config,
            saved: alloc::vec![Vec::new(); vcpus],
            dispatched: 0,
            completed: 0,
        }
    }

    /// The dispatcher under test.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.vm.sdei
    }

    /// The registers each handler running on `vcpu` interrupted, innermost last.
    pub fn saved(&self, vcpu: usize) -> &[InMemoryRegisters] {
        &self.saved[vcpu]
    }

    fn call(&mut self, vcpu: usize, id: u32, args: &[u64]) {
        let Some(regs) = self.vm.regs.get_mut(vcpu) else {
            let mut scratch = InMemoryRegisters::call(id, args);
            assert!(
                self.vm.sdei.handle_call(vcpu, &mut scratch).is_err(),
                "a call on vCPU {vcpu}, which does not exist, was accepted"
            );
            return;
        };
        regs.load_call(id, args);
        let before = *regs;
        let outcome = self
            .vm
            .sdei
            .handle_call(vcpu, regs)
            .expect("an in-memory register file never fails");
        let regs = *regs;
        match outcome {
            CallOutcome::Completed { resumed, .. } => {
                let saved = self.saved[vcpu]
                    .pop()
                    .expect("a completion without a running handler");
                self.completed += 1;
                assert_eq!(regs.x, saved.x, "completion restores x0-x17");
                if resumed {
                    assert_eq!(
                        (regs.elr_el1, regs.spsr_el1),
                        (saved.pc, saved.pstate),
                        "resume saves the interrupted context in ELR/SPSR"
                    );
                    assert_eq!(regs.pc, before.x[1], "resume enters the resume address");
                } else {
                    assert_eq!(
                        (regs.pc, regs.pstate),
                        (saved.pc, saved.pstate),
                        "completion returns to the interrupted PC and PSTATE"
                    );
                }
            }
            CallOutcome::Returned(value) => {
                assert_eq!(regs.ret(), value, "x0 holds the return value");
                assert_eq!(
                    regs.x[1..],
                    before.x[1..],
                    "a returning call changes x0 only"
                );
                assert_eq!(
                    (regs.pc, regs.pstate),
                    (before.pc, before.pstate),
                    "a returning call leaves PC and PSTATE"
                );
            }
            CallOutcome::NotSdei => panic!("SDEI function identifier {id:#x} not owned"),
        }
    }

    fn dispatch(&mut self, vcpu: usize) {
        let Some(regs) = self.vm.regs.get_mut(vcpu) else {
            let mut scratch = InMemoryRegisters::default();
            assert!(
                self.vm.sdei.dispatch_pending(vcpu, &mut scratch).is_err(),
                "a dispatch on vCPU {vcpu}, which does not exist, was accepted"
            );
            return;
        };
        let state = self.vm.sdei.state();
        let (masked, normal, critical) = {
            let v = &state.vcpus[vcpu];
            (v.masked, v.normal.is_some(), v.critical.is_some())
        };
        let waiting = self.vm.sdei.pending_dispatch(vcpu);
        let before = *regs;
        let started = self
            .vm
            .sdei
            .dispatch_pending(vcpu, regs)
            .expect("an in-memory register file never fails");
        let regs = *regs;
        assert_eq!(
            started.is_some(),
            waiting,
            "pending_dispatch disagrees with dispatch_pending"
        );
        let Some(info) = started else {
            assert_eq!(
                regs, before,
                "a dispatch that starts nothing changes nothing"
            );
            return;
        };
        assert!(!masked, "a handler started on a masked vCPU");
        assert!(!critical, "a handler pre-empted a critical handler");
        assert!(
            info.priority == Priority::Critical || !normal,
            "a normal handler nested"
        );
        assert_eq!(
            info.preempted.is_some(),
            normal && info.priority == Priority::Critical,
            "pre-emption reported wrongly"
        );
        let after = self.vm.sdei.state();
        let (entry, running_here) =
            entry_of(&after, vcpu, info.event).expect("a dispatched event exists");
        assert!(running_here, "a started handler is not marked running");
        assert_eq!(regs.x[0], u64::from(info.event), "x0 = event number");
        assert_eq!(regs.x[1], entry.argument, "x1 = registered argument");
        assert_eq!(
            (regs.x[2], regs.x[3]),
            (before.pc, before.pstate),
            "x2/x3 = interrupted PC/PSTATE"
        );
        assert_eq!(regs.pc, entry.entry_point, "PC = registered entry point");
        self.saved[vcpu].push(before);
        self.dispatched += 1;
    }

    /// Runs one op, checking every call and dispatch it makes.
    ///
    /// # Panics
    ///
    /// If the dispatcher breaks an invariant.
    pub fn step(&mut self, op: Op) {
        let vcpus = self.vm.regs.len();
        for call in op.calls(vcpus) {
            self.call(call.vcpu, call.id, &call.args);
        }
        match op {
            Op::Dispatch { vcpu } => self.dispatch(vcpu),
            Op::ResetVcpu { vcpu } => {
                let result = self.vm.sdei.reset_vcpu(vcpu);
                assert_eq!(result.is_ok(), vcpu < vcpus, "reset_vcpu({vcpu})");
                if let Some(saved) = self.saved.get_mut(vcpu) {
                    saved.clear();
                }
            }
            Op::Reset => {
                self.vm.sdei.reset();
                self.saved.iter_mut().for_each(Vec::clear);
                let fresh = Dispatcher::new(self.config.clone()).expect("valid configuration");
                assert_eq!(
                    self.vm.sdei.state(),
                    fresh.state(),
                    "reset gives the fresh state"
                );
            }
            Op::Migrate => {
                let state = self.vm.sdei.state();
                self.vm.sdei = Dispatcher::restore(self.config.clone(), state.clone())
                    .expect("the dispatcher's own state is restorable");
                assert_eq!(self.vm.sdei.state(), state, "restore keeps the state");
            }
            // The registers of a vCPU that does not exist cannot change.
            Op::Mark { vcpu, .. } | Op::SetRegs { vcpu, .. } if vcpu >= vcpus => {}
            _ => self.vm.act(&op),
        }
    }

    /// Checks the invariants that hold between steps.
    ///
    /// # Panics
    ///
    /// If one is broken.
    pub fn check_invariants(&mut self) {
        let state = self.vm.sdei.state();
        match Dispatcher::restore(self.config.clone(), state.clone()) {
            Ok(restored) => assert_eq!(restored.state(), state, "restore changes the state"),
            Err(err) => panic!("the dispatcher reached a state restore refuses: {err}"),
        }
        let kicked: Vec<usize> = self.vm.sdei.vcpus_needing_kick().collect();
        for (v, vcpu) in state.vcpus.iter().enumerate() {
            let waiting = self.vm.sdei.pending_dispatch(v);
            assert_eq!(kicked.contains(&v), waiting, "kick list of vCPU {v}");
            assert!(
                !(waiting && vcpu.masked),
                "masked vCPU {v} has a handler to start"
            );
            if vcpu.critical.is_some() {
                assert!(!waiting, "vCPU {v} would pre-empt its critical handler");
            }
            let frames = usize::from(vcpu.normal.is_some()) + usize::from(vcpu.critical.is_some());
            assert_eq!(
                frames,
                self.saved[v].len(),
                "one frame per running handler on vCPU {v}"
            );
            for event in EVENTS {
                let mut scratch =
                    InMemoryRegisters::call(Function::EventStatus.id(), &[u64::from(event)]);
                self.vm
                    .sdei
                    .handle_call(v, &mut scratch)
                    .expect("an in-memory register file never fails");
                let (entry, running_here) =
                    entry_of(&state, v, event).expect("every harness event exists");
                assert_eq!(
                    scratch.x[0],
                    entry.state.status_bits(),
                    "EVENT_STATUS of {event:#x} on vCPU {v}"
                );
                let has_frame = vcpu
                    .normal
                    .iter()
                    .chain(vcpu.critical.iter())
                    .any(|f| f.event == event);
                assert_eq!(
                    has_frame, running_here,
                    "running bit of {event:#x} against the frames of vCPU {v}"
                );
            }
        }
    }
}
