//! [`Op`]: one step of a generated sequence, and the SDEI [`Call`]s it makes.

use alloc::vec::Vec;

use super::{EVENTS, HANDLER};
use crate::abi::Function;
use crate::config::default_mpidr;

/// One step of a sequence: what a guest or the VMM does next.
///
/// Events are indices into [`EVENTS`] and functions into [`Function::ALL`] (both taken modulo
/// the length). A vCPU index is used as it is: out of range, [`Model::step`](super::Model::step)
/// checks that the dispatcher refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The SDEI call `Function::ALL[function]` with arguments x1–x5.
    Call {
        /// Calling vCPU.
        vcpu: usize,
        /// Index into [`Function::ALL`].
        function: usize,
        /// x1–x5.
        args: [u64; 5],
    },
    /// A call with any function identifier (reserved ones, SMC32 ones).
    Raw {
        /// Calling vCPU.
        vcpu: usize,
        /// Function identifier.
        id: u32,
        /// x1–x5.
        args: [u64; 5],
    },
    /// `EVENT_REGISTER` (`RM_ANY`, handler [`HANDLER`], the event number as argument),
    /// `EVENT_ENABLE` and `PE_UNMASK`: makes handlers actually run.
    Ready {
        /// Calling vCPU.
        vcpu: usize,
        /// Index into [`EVENTS`].
        event: usize,
    },
    /// Registers an event routed `RM_PE` to `target`'s default MPIDR (handler `0x5000`,
    /// argument 9), enables it, and unmasks `target`.
    ReadyPe {
        /// Calling vCPU.
        vcpu: usize,
        /// Index into [`EVENTS`].
        event: usize,
        /// vCPU the event is routed to (taken modulo the number of vCPUs).
        target: usize,
    },
    /// `Dispatcher::raise`.
    Raise {
        /// Index into [`EVENTS`].
        event: usize,
        /// Target vCPU (may be out of range).
        target: Option<usize>,
    },
    /// `Dispatcher::raise_interrupt`.
    RaiseInterrupt {
        /// INTID (bindable or not).
        intid: u32,
        /// Target vCPU (may be out of range).
        target: Option<usize>,
    },
    /// [`Vm::mark`](super::Vm::mark): a recognisable interrupted context.
    Mark {
        /// vCPU whose registers change.
        vcpu: usize,
        /// Value the registers are derived from.
        tag: u64,
    },
    /// The guest runs on: any x0–x17, PC and PSTATE.
    SetRegs {
        /// vCPU whose registers change.
        vcpu: usize,
        /// x0–x17.
        x: [u64; 18],
        /// PC.
        pc: u64,
        /// PSTATE.
        pstate: u64,
    },
    /// `Dispatcher::dispatch_pending`.
    Dispatch {
        /// vCPU taken out of `KVM_RUN`.
        vcpu: usize,
    },
    /// `EVENT_COMPLETE`, or `EVENT_COMPLETE_AND_RESUME` at the given address.
    Complete {
        /// Calling vCPU.
        vcpu: usize,
        /// Resume address.
        resume: Option<u64>,
    },
    /// `Dispatcher::reset_vcpu`.
    ResetVcpu {
        /// vCPU to reset.
        vcpu: usize,
    },
    /// `Dispatcher::reset`.
    Reset,
    /// Replaces the dispatcher by `Dispatcher::restore` of its own state (a migration).
    Migrate,
}

/// An SDEI call an [`Op`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// Calling vCPU.
    pub vcpu: usize,
    /// Function identifier.
    pub id: u32,
    /// x1–x5 (the registers past the arguments read as zero).
    pub args: [u64; 5],
}

impl Op {
    /// The SDEI calls `self` makes, in order, on a VM of `vcpus` vCPUs; none for the ops that
    /// are not calls.
    pub fn calls(&self, vcpus: usize) -> Vec<Call> {
        let call = |vcpu, function: Function, args: &[u64]| {
            let mut all = [0; 5];
            all[..args.len()].copy_from_slice(args);
            Call {
                vcpu,
                id: function.id(),
                args: all,
            }
        };
        let event = |index: usize| u64::from(EVENTS[index % EVENTS.len()]);
        match *self {
            Op::Call {
                vcpu,
                function,
                args,
            } => {
                let function = Function::ALL[function % Function::ALL.len()];
                alloc::vec![call(vcpu, function, &args)]
            }
            Op::Raw { vcpu, id, args } => alloc::vec![Call { vcpu, id, args }],
            Op::Ready { vcpu, event: index } => {
                let e = event(index);
                alloc::vec![
                    call(vcpu, Function::EventRegister, &[e, HANDLER, e, 0, 0]),
                    call(vcpu, Function::EventEnable, &[e]),
                    call(vcpu, Function::PeUnmask, &[]),
                ]
            }
            Op::ReadyPe {
                vcpu,
                event: index,
                target,
            } => {
                let (e, target) = (event(index), target % vcpus);
                let mpidr = default_mpidr(target);
                alloc::vec![
                    call(vcpu, Function::EventRegister, &[e, 0x5000, 9, 1, mpidr]),
                    call(vcpu, Function::EventEnable, &[e]),
                    call(target, Function::PeUnmask, &[]),
                ]
            }
            Op::Complete { vcpu, resume: None } => {
                alloc::vec![call(vcpu, Function::EventComplete, &[0])]
            }
            Op::Complete {
                vcpu,
                resume: Some(at),
            } => alloc::vec![call(vcpu, Function::EventCompleteAndResume, &[at])],
            Op::Raise { .. }
            | Op::RaiseInterrupt { .. }
            | Op::Mark { .. }
            | Op::SetRegs { .. }
            | Op::Dispatch { .. }
            | Op::ResetVcpu { .. }
            | Op::Reset
            | Op::Migrate => Vec::new(),
        }
    }
}
