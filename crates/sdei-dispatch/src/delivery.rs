//! Handler delivery: choosing the next event for a vCPU, entering its handler, reading the
//! interrupted context and completing.
//!
//! Per vCPU at most one normal and one critical handler run. A critical handler may start
//! while a normal one runs (it pre-empts it); nothing starts while a critical handler runs;
//! nothing starts on a masked vCPU.

use crate::abi::{low32, pstate, DENIED, INVALID_PARAMETERS, SAVED_GPRS};
use crate::config::{EventRef, Priority};
use crate::dispatcher::{CallError, Reply};
use crate::machine::{apply, Action};
use crate::regs::RegisterFile;
use crate::state::{HandlerFrame, Routing, SavedContext};
use crate::Dispatcher;

/// A handler [`Dispatcher::dispatch_pending`] started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchInfo {
    /// The event whose handler now runs.
    pub event: u32,
    /// Its priority.
    pub priority: Priority,
    /// The normal event whose handler this critical one pre-empted, if any.
    pub preempted: Option<u32>,
}

impl Dispatcher {
    /// PSTATE on entry to a handler (or to the resume address): an exception taken to EL1h.
    ///
    /// D, A, I and F are set; TCO is set when the guest has MTE; PAN and DIT keep the
    /// interrupted values (PAN as with `SCTLR_EL1.SPAN` = 1: SCTLR is not modelled); SS, IL,
    /// BTYPE and the rest are cleared.
    pub(crate) fn entry_pstate(&self, interrupted: u64) -> u64 {
        let tco = if self.st.config.mte_tco {
            pstate::TCO
        } else {
            0
        };
        pstate::MODE_EL1H | pstate::DAIF | tco | (interrupted & (pstate::PAN | pstate::DIT))
    }

    /// Whether `vcpu` is a target of shared event `i`.
    fn routed_to(&self, i: usize, vcpu: usize) -> bool {
        match self.st.shared_events.get(i).map(|s| s.routing) {
            Some(Routing::Any) => true,
            Some(Routing::Pe(mpidr)) => self.layout.vcpu_by_mpidr(mpidr) == Some(vcpu),
            None => false,
        }
    }

    /// The event `vcpu` would take now: critical before normal, then private before shared,
    /// then configuration order.
    pub(crate) fn next_event(&self, vcpu: usize) -> Option<EventRef> {
        let state = self.st.vcpus.get(vcpu)?;
        if state.masked || state.critical.is_some() {
            return None;
        }
        let ready = |ev: EventRef| {
            self.entry(vcpu, ev)
                .is_some_and(|e| e.pending && apply(e.state, Action::Dispatch).is_some())
        };
        let private = (0..self.layout.private.len()).map(EventRef::Private);
        let shared = (0..self.layout.shared.len())
            .filter(|i| self.routed_to(*i, vcpu))
            .map(EventRef::Shared);
        let candidates = || {
            private
                .clone()
                .chain(shared.clone())
                .filter(|ev| ready(*ev))
        };
        let critical = candidates().find(|ev| {
            self.info(*ev)
                .is_some_and(|i| i.priority == Priority::Critical)
        });
        if critical.is_some() || state.normal.is_some() {
            return critical;
        }
        candidates().next()
    }

    /// Whether `vcpu` has a handler to start (it is unmasked and a deliverable event waits).
    pub fn pending_dispatch(&self, vcpu: usize) -> bool {
        self.next_event(vcpu).is_some()
    }

    /// The vCPUs that have a handler to start and should be kicked out of `KVM_RUN`.
    ///
    /// A shared `RM_ANY` event makes every vCPU that could take it appear; the first to call
    /// [`dispatch_pending`](Dispatcher::dispatch_pending) takes it.
    pub fn vcpus_needing_kick(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.vcpus()).filter(|v| self.pending_dispatch(*v))
    }

    /// Starts the highest-priority deliverable handler on `vcpu`, which must be out of
    /// `KVM_RUN`: saves x0–x17, PC and PSTATE, and enters the handler with x0 = event,
    /// x1 = argument, x2 = interrupted PC, x3 = interrupted PSTATE.
    pub fn dispatch_pending<R: RegisterFile>(
        &mut self,
        vcpu: usize,
        regs: &mut R,
    ) -> Result<Option<DispatchInfo>, CallError<R::Error>> {
        if vcpu >= self.vcpus() {
            return Err(CallError::InvalidVcpu(vcpu));
        }
        let Some(ev) = self.next_event(vcpu) else {
            return Ok(None);
        };
        let (Some(info), Some(entry)) = (self.info(ev), self.entry(vcpu, ev).copied()) else {
            return Ok(None);
        };
        let Some(next) = apply(entry.state, Action::Dispatch) else {
            return Ok(None);
        };

        let mut context = SavedContext::default();
        for (slot, n) in context.x.iter_mut().zip(0u8..) {
            *slot = regs.read_x(n).map_err(CallError::Registers)?;
        }
        context.pc = regs.pc().map_err(CallError::Registers)?;
        context.pstate = regs.pstate().map_err(CallError::Registers)?;

        let handler_pstate = self.entry_pstate(context.pstate);
        let args = [
            u64::from(info.number),
            entry.argument,
            context.pc,
            context.pstate,
        ];
        // PSTATE first: KVM narrows x0-x14 and PC to 32 bits after any core-register write
        // while PSTATE is an AArch32 mode, so an event that interrupted AArch32 EL0 would
        // otherwise enter its handler at a truncated address with a truncated argument.
        let entered = regs
            .set_pstate(handler_pstate)
            .and_then(|()| regs.set_pc(entry.entry_point))
            .and_then(|()| {
                args.into_iter()
                    .zip(0u8..)
                    .try_for_each(|(value, n)| regs.write_x(n, value))
            });
        if let Err(e) = entered {
            // Nothing is committed: put back what the vCPU had (best effort, registers before
            // PSTATE for the same reason) so that it resumes where it was.
            for (value, n) in context.x.iter().take(args.len()).zip(0u8..) {
                let _ = regs.write_x(n, *value);
            }
            let _ = regs.set_pc(context.pc);
            let _ = regs.set_pstate(context.pstate);
            return Err(CallError::Registers(e));
        }

        // Registers are written: commit.
        if let Some(e) = self.entry_mut(vcpu, ev) {
            e.state = next;
            e.pending = false;
        }
        if let EventRef::Shared(i) = ev {
            if let Some(shared) = self.st.shared_events.get_mut(i) {
                shared.running_on = Some(vcpu);
            }
        }
        let frame = Some(HandlerFrame {
            event: info.number,
            context,
        });
        let Some(state) = self.st.vcpus.get_mut(vcpu) else {
            return Ok(None);
        };
        let preempted = match info.priority {
            Priority::Critical => {
                state.critical = frame;
                state.normal.map(|f| f.event)
            }
            Priority::Normal => {
                state.normal = frame;
                None
            }
        };
        Ok(Some(DispatchInfo {
            event: info.number,
            priority: info.priority,
            preempted,
        }))
    }

    /// `EVENT_CONTEXT`: a saved register of the innermost running handler on `vcpu`.
    pub(crate) fn context(&self, vcpu: usize, param: u64) -> i64 {
        let index = low32(param) as usize;
        if index >= SAVED_GPRS {
            return INVALID_PARAMETERS;
        }
        let top = self.st.vcpus.get(vcpu).and_then(|s| s.top());
        let frame = match top {
            Some(frame) => frame,
            None => return DENIED, // Not called from a handler.
        };
        let running = self
            .layout
            .find(frame.event)
            .and_then(|ev| self.entry(vcpu, ev))
            .is_some_and(|e| apply(e.state, Action::Context).is_some());
        match (running, frame.context.x.get(index)) {
            (true, Some(value)) => *value as i64,
            _ => DENIED,
        }
    }

    /// `EVENT_COMPLETE` (`resume_at` = `None`) and `EVENT_COMPLETE_AND_RESUME`: ends the
    /// innermost handler on `vcpu`, finishing a pending unregister.
    pub(crate) fn complete(&mut self, vcpu: usize, resume_at: Option<u64>) -> Reply {
        let action = if resume_at.is_some() {
            Action::CompleteAndResume
        } else {
            Action::Complete
        };
        let Some(frame) = self.st.vcpus.get(vcpu).and_then(|s| s.top()).copied() else {
            return Reply::Value(DENIED); // Not called from a handler.
        };
        let Some(ev) = self.layout.find(frame.event) else {
            return Reply::Value(DENIED);
        };
        let Some(entry) = self.entry_mut(vcpu, ev) else {
            return Reply::Value(DENIED);
        };
        let Some(next) = apply(entry.state, action) else {
            return Reply::Value(DENIED);
        };
        entry.state = next;
        if let EventRef::Shared(i) = ev {
            if let Some(shared) = self.st.shared_events.get_mut(i) {
                shared.running_on = None;
            }
        }
        if let Some(state) = self.st.vcpus.get_mut(vcpu) {
            if state.critical.take().is_none() {
                state.normal = None;
            }
        }
        Reply::Completed { frame, resume_at }
    }

    /// Puts the interrupted context back, and for a resume emulates an IRQ taken to EL1 at
    /// `resume_at`: ELR_EL1 = interrupted PC, SPSR_EL1 = interrupted PSTATE.
    pub(crate) fn write_completion<R: RegisterFile>(
        &self,
        regs: &mut R,
        frame: &HandlerFrame,
        resume_at: Option<u64>,
    ) -> Result<(), R::Error> {
        for (value, n) in frame.context.x.iter().zip(0u8..) {
            regs.write_x(n, *value)?;
        }
        match resume_at {
            None => {
                regs.set_pc(frame.context.pc)?;
                regs.set_pstate(frame.context.pstate)
            }
            Some(address) => {
                regs.set_elr_el1(frame.context.pc)?;
                regs.set_spsr_el1(frame.context.pstate)?;
                regs.set_pc(address)?;
                regs.set_pstate(self.entry_pstate(frame.context.pstate))
            }
        }
    }
}
