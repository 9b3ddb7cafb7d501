//! The VMM-facing side: raising events and resetting vCPUs.

use crate::config::{EventKind, EventRef, FIRST_SPI};
use crate::state::{DispatcherState, EventEntry, Routing};
use crate::Dispatcher;

/// What [`Dispatcher::raise`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaiseOutcome {
    /// The event is now pending; see [`Dispatcher::vcpus_needing_kick`].
    Pending,
    /// The event was already pending; the raises merged, as for a level interrupt.
    AlreadyPending,
    /// No handler is registered (on the target vCPU): the event is dropped.
    NotRegistered,
    /// [`Dispatcher::raise_interrupt`] only: no event is bound to the interrupt, so the VMM
    /// delivers it through the interrupt controller as usual.
    NotBound,
}

/// A VMM request the dispatcher refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VmmError {
    /// No such event.
    #[error("event {0:#x} does not exist")]
    UnknownEvent(u32),
    /// vCPU index out of range.
    #[error("vCPU index {0} is out of range")]
    InvalidVcpu(usize),
    /// A private event (or PPI) needs a target vCPU.
    #[error("event {0:#x} is private and needs a target vCPU")]
    TargetRequired(u32),
    /// A shared event (or SPI) goes where its routing says; a target is not accepted.
    #[error("event {0:#x} is shared and is routed by the guest")]
    TargetNotAllowed(u32),
}

/// Shorthand for results of this module.
pub type Result<T> = core::result::Result<T, VmmError>;

impl Dispatcher {
    /// Marks `ev` pending as seen from `vcpu` (ignored for shared events).
    pub(crate) fn raise_on(&mut self, vcpu: usize, ev: EventRef) -> RaiseOutcome {
        match self.entry_mut(vcpu, ev) {
            Some(entry) if !entry.state.registered => RaiseOutcome::NotRegistered,
            Some(entry) if entry.pending => RaiseOutcome::AlreadyPending,
            Some(entry) => {
                entry.pending = true;
                RaiseOutcome::Pending
            }
            None => RaiseOutcome::NotRegistered,
        }
    }

    fn raise_ref(
        &mut self,
        number: u32,
        ev: EventRef,
        target: Option<usize>,
    ) -> Result<RaiseOutcome> {
        match (ev, target) {
            (EventRef::Private(_), None) => Err(VmmError::TargetRequired(number)),
            (EventRef::Private(_), Some(v)) if v >= self.vcpus() => Err(VmmError::InvalidVcpu(v)),
            (EventRef::Private(_), Some(v)) => Ok(self.raise_on(v, ev)),
            (EventRef::Shared(_), Some(_)) => Err(VmmError::TargetNotAllowed(number)),
            (EventRef::Shared(_), None) => Ok(self.raise_on(0, ev)),
        }
    }

    /// Raises event `number`: a private event on vCPU `target`, a shared event (with
    /// `target` = `None`) wherever the guest routed it.
    ///
    /// A registered event stays pending while it is disabled, its target is masked, or a
    /// handler of equal or higher priority runs there, and is delivered afterwards.
    pub fn raise(&mut self, number: u32, target: Option<usize>) -> Result<RaiseOutcome> {
        let ev = self
            .layout
            .find(number)
            .ok_or(VmmError::UnknownEvent(number))?;
        self.raise_ref(number, ev, target)
    }

    /// Raises whatever event the guest bound to interrupt `intid` with `INTERRUPT_BIND`
    /// (a PPI needs the `target` vCPU, an SPI takes `None`).
    pub fn raise_interrupt(&mut self, intid: u32, target: Option<usize>) -> Result<RaiseOutcome> {
        let (table, base) = if intid >= FIRST_SPI {
            (&self.st.shared_bindings, crate::config::SHARED_BIND_BASE)
        } else {
            (&self.st.private_bindings, crate::config::PRIVATE_BIND_BASE)
        };
        let Some(slot) = table.iter().position(|b| *b == Some(intid)) else {
            return Ok(RaiseOutcome::NotBound);
        };
        let number = base + slot as u32;
        let ev = self
            .layout
            .find(number)
            .ok_or(VmmError::UnknownEvent(number))?;
        self.raise_ref(number, ev, target)
    }

    /// The kind of event `number`, if it exists.
    pub fn event_kind(&self, number: u32) -> Option<EventKind> {
        match self.layout.find(number)? {
            EventRef::Private(_) => Some(EventKind::Private),
            EventRef::Shared(_) => Some(EventKind::Shared),
        }
    }

    /// Resets one vCPU as a CPU power-on does (PSCI `CPU_ON`, warm reset): its private
    /// registrations are dropped, its running handlers abandoned (finishing any pending
    /// unregister of shared events they ran), and it is masked.
    pub fn reset_vcpu(&mut self, vcpu: usize) -> Result<()> {
        let state = self
            .st
            .vcpus
            .get_mut(vcpu)
            .ok_or(VmmError::InvalidVcpu(vcpu))?;
        state.masked = true;
        state.normal = None;
        state.critical = None;
        for entry in &mut state.private_events {
            *entry = EventEntry {
                number: entry.number,
                ..EventEntry::default()
            };
        }
        for shared in &mut self.st.shared_events {
            if shared.running_on == Some(vcpu) {
                shared.running_on = None;
                shared.entry.state.running = false;
            }
        }
        Ok(())
    }

    /// Resets the whole VM: the state a fresh dispatcher has.
    pub fn reset(&mut self) {
        self.st = DispatcherState::initial(&self.st.config, &self.layout);
    }

    /// Whether vCPU `vcpu` is masked (`PE_MASK`), or `None` if it does not exist.
    pub fn is_masked(&self, vcpu: usize) -> Option<bool> {
        self.st.vcpus.get(vcpu).map(|s| s.masked)
    }

    /// The routing of shared event `number`, if it is one.
    pub fn routing(&self, number: u32) -> Option<Routing> {
        match self.layout.find(number)? {
            EventRef::Shared(i) => self.st.shared_events.get(i).map(|s| s.routing),
            EventRef::Private(_) => None,
        }
    }
}
