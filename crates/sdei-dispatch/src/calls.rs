//! The SDEI calls that manage registrations, masks and bindings.
//!
//! Each function returns the value for `x0`. The checks follow the order TF-A uses, so that
//! a call with several faults gets the same code from both.

use crate::abi::*;
use crate::config::{EventRef, Priority, EVENT_0, FIRST_PPI, FIRST_SPI, LAST_SPI};
use crate::machine::{apply, Action};
use crate::state::Routing;
use crate::vmm::RaiseOutcome;
use crate::Dispatcher;

impl Dispatcher {
    /// Validates `RM_ANY`/`RM_PE` flags and the affinity for a shared event.
    fn routing_from(&self, flags: u64, affinity: u64) -> Option<Routing> {
        match flags {
            0 => Some(Routing::Any),
            REGISTER_FLAG_RM_PE => {
                let affinity = affinity & MPIDR_AFFINITY_MASK;
                self.layout
                    .vcpu_by_mpidr(affinity)
                    .map(|_| Routing::Pe(affinity))
            }
            _ => None,
        }
    }

    /// The interrupt bound to a bind-slot event: `None` if `event` is not a slot.
    pub(crate) fn binding(&self, event: EventRef) -> Option<Option<u32>> {
        let (shared, slot) = self.layout.slot(event)?;
        let table = if shared {
            &self.st.shared_bindings
        } else {
            &self.st.private_bindings
        };
        table.get(slot).copied()
    }

    fn binding_mut(&mut self, event: EventRef) -> Option<&mut Option<u32>> {
        let (shared, slot) = self.layout.slot(event)?;
        let table = if shared {
            &mut self.st.shared_bindings
        } else {
            &mut self.st.private_bindings
        };
        table.get_mut(slot)
    }

    pub(crate) fn register(
        &mut self,
        vcpu: usize,
        event: u32,
        entry_point: u64,
        argument: u64,
        flags: u64,
        affinity: u64,
    ) -> i64 {
        if entry_point == 0 {
            return INVALID_PARAMETERS;
        }
        let Some(ev) = self.layout.find(event) else {
            return INVALID_PARAMETERS;
        };
        // Private events always target their own PE: routing bits and affinity are ignored,
        // but reserved flag bits (and relative mode, which is not offered) are not.
        let routing = match ev {
            EventRef::Shared(_) => match self.routing_from(flags, affinity) {
                Some(routing) => routing,
                None => return INVALID_PARAMETERS,
            },
            EventRef::Private(_) if flags & !REGISTER_FLAG_RM_PE != 0 => return INVALID_PARAMETERS,
            EventRef::Private(_) => Routing::Any,
        };
        if self.binding(ev) == Some(None) {
            return DENIED; // A bind slot must be bound before it can be registered.
        }
        let Some(entry) = self.entry_mut(vcpu, ev) else {
            return INVALID_PARAMETERS;
        };
        let Some(next) = apply(entry.state, Action::Register) else {
            return DENIED;
        };
        entry.state = next;
        entry.entry_point = entry_point;
        entry.argument = argument;
        if let EventRef::Shared(i) = ev {
            if let Some(shared) = self.st.shared_events.get_mut(i) {
                shared.routing = routing;
            }
        }
        SUCCESS
    }

    pub(crate) fn enable(&mut self, vcpu: usize, event: u32, enable: bool) -> i64 {
        let Some(ev) = self.layout.find(event) else {
            return INVALID_PARAMETERS;
        };
        let Some(entry) = self.entry_mut(vcpu, ev) else {
            return INVALID_PARAMETERS;
        };
        let action = if enable {
            Action::Enable
        } else {
            Action::Disable
        };
        match apply(entry.state, action) {
            Some(next) => {
                entry.state = next;
                SUCCESS
            }
            None => DENIED,
        }
    }

    /// Unregisters `ev` as seen from `vcpu`: `SUCCESS`, `PENDING` while the handler runs, or
    /// `DENIED` when it was not registered.
    fn unregister_event(&mut self, vcpu: usize, ev: EventRef) -> i64 {
        let Some(entry) = self.entry_mut(vcpu, ev) else {
            return INVALID_PARAMETERS;
        };
        let Some(next) = apply(entry.state, Action::Unregister) else {
            // Already unregistered: still PENDING while the handler has not completed.
            return if entry.state.running { PENDING } else { DENIED };
        };
        entry.state = next;
        entry.entry_point = 0;
        entry.argument = 0;
        entry.pending = false;
        if let EventRef::Shared(i) = ev {
            if let Some(shared) = self.st.shared_events.get_mut(i) {
                shared.routing = Routing::Any;
            }
        }
        if next.running {
            PENDING
        } else {
            SUCCESS
        }
    }

    pub(crate) fn unregister(&mut self, vcpu: usize, event: u32) -> i64 {
        match self.layout.find(event) {
            Some(ev) => self.unregister_event(vcpu, ev),
            None => INVALID_PARAMETERS,
        }
    }

    pub(crate) fn status(&self, vcpu: usize, event: u32) -> i64 {
        let entry = self.layout.find(event).and_then(|ev| self.entry(vcpu, ev));
        entry.map_or(INVALID_PARAMETERS, |e| e.state.status_bits() as i64)
    }

    pub(crate) fn get_info(&self, vcpu: usize, event: u32, info: u32) -> i64 {
        let Some(ev) = self.layout.find(event) else {
            return INVALID_PARAMETERS;
        };
        let (Some(facts), Some(entry)) = (self.info(ev), self.entry(vcpu, ev)) else {
            return INVALID_PARAMETERS;
        };
        let routing = match ev {
            EventRef::Shared(i) => self.st.shared_events.get(i).map(|s| s.routing),
            EventRef::Private(_) => None,
        };
        match info {
            INFO_EV_TYPE => i64::from(matches!(ev, EventRef::Shared(_))),
            // 0 = "can be signalled" (event 0), 1 = cannot: TF-A's and Arm's SDEI ACS reading.
            INFO_EV_SIGNALED => i64::from(event != EVENT_0),
            INFO_EV_PRIORITY => i64::from(facts.priority == Priority::Critical),
            INFO_EV_ROUTING_MODE | INFO_EV_ROUTING_AFF => match routing {
                None => INVALID_PARAMETERS,
                Some(_) if !entry.state.registered => DENIED,
                Some(Routing::Any) if info == INFO_EV_ROUTING_MODE => 0,
                Some(Routing::Pe(_)) if info == INFO_EV_ROUTING_MODE => 1,
                Some(Routing::Any) => INVALID_PARAMETERS,
                Some(Routing::Pe(affinity)) => affinity as i64,
            },
            _ => INVALID_PARAMETERS,
        }
    }

    pub(crate) fn routing_set(&mut self, event: u32, flags: u64, affinity: u64) -> i64 {
        let Some(routing) = self.routing_from(flags, affinity) else {
            return INVALID_PARAMETERS;
        };
        let Some(EventRef::Shared(i)) = self.layout.find(event) else {
            return INVALID_PARAMETERS;
        };
        if self.binding(EventRef::Shared(i)) == Some(None) {
            return INVALID_PARAMETERS;
        }
        let Some(shared) = self.st.shared_events.get_mut(i) else {
            return INVALID_PARAMETERS;
        };
        // Allowed only when registered, disabled and not running.
        if apply(shared.entry.state, Action::RoutingSet).is_none() {
            return DENIED;
        }
        shared.routing = routing;
        SUCCESS
    }

    pub(crate) fn pe_mask(&mut self, vcpu: usize) -> i64 {
        let Some(state) = self.st.vcpus.get_mut(vcpu) else {
            return INVALID_PARAMETERS;
        };
        let was_masked = core::mem::replace(&mut state.masked, true);
        // 1 when this call masked the PE, 0 when it was already masked.
        i64::from(!was_masked)
    }

    pub(crate) fn pe_unmask(&mut self, vcpu: usize) -> i64 {
        let Some(state) = self.st.vcpus.get_mut(vcpu) else {
            return INVALID_PARAMETERS;
        };
        state.masked = false;
        SUCCESS
    }

    pub(crate) fn bind(&mut self, intid: u32) -> i64 {
        if !(FIRST_PPI..=LAST_SPI).contains(&intid) {
            return INVALID_PARAMETERS; // SGIs and special INTIDs cannot be bound.
        }
        let shared = intid >= FIRST_SPI;
        let table = if shared {
            &self.st.shared_bindings
        } else {
            &self.st.private_bindings
        };
        let base = if shared {
            crate::config::SHARED_BIND_BASE
        } else {
            crate::config::PRIVATE_BIND_BASE
        };
        // Binding a bound interrupt again returns its event.
        if let Some(slot) = table.iter().position(|b| *b == Some(intid)) {
            return i64::from(base) + slot as i64;
        }
        if !self.layout.is_bindable(intid) {
            return DENIED; // Not an interrupt the VMM hands over.
        }
        let table = if shared {
            &mut self.st.shared_bindings
        } else {
            &mut self.st.private_bindings
        };
        match table.iter_mut().enumerate().find(|(_, b)| b.is_none()) {
            Some((slot, free)) => {
                *free = Some(intid);
                i64::from(base) + slot as i64
            }
            None => OUT_OF_RESOURCE,
        }
    }

    /// Whether no instance of `ev` is registered or running (its registration count is 0).
    fn unused(&self, ev: EventRef) -> bool {
        (0..self.vcpus()).all(|v| {
            self.entry(v, ev)
                .is_some_and(|e| e.state == Default::default())
        })
    }

    fn release_event(&mut self, ev: EventRef) -> i64 {
        if self.binding(ev).is_none() {
            return INVALID_PARAMETERS; // Only dynamic (bind slot) events can be released.
        }
        if !self.unused(ev) {
            return DENIED;
        }
        match self.binding_mut(ev) {
            Some(binding @ Some(_)) => {
                *binding = None;
                SUCCESS
            }
            _ => INVALID_PARAMETERS,
        }
    }

    pub(crate) fn release(&mut self, event: u32) -> i64 {
        match self.layout.find(event) {
            Some(ev) => self.release_event(ev),
            None => INVALID_PARAMETERS,
        }
    }

    pub(crate) fn signal(&mut self, event: u32, target: u64) -> i64 {
        if event != EVENT_0 {
            return INVALID_PARAMETERS; // Only event 0 can be signalled.
        }
        let Some(vcpu) = self.layout.vcpu_by_mpidr(target) else {
            return INVALID_PARAMETERS;
        };
        // A target that has not registered event 0 could never take the signal: refused rather
        // than accepted and dropped, so the caller learns it.
        match self.raise_on(vcpu, EventRef::Private(0)) {
            RaiseOutcome::NotRegistered => INVALID_PARAMETERS,
            _ => SUCCESS,
        }
    }

    pub(crate) fn features(&self, feature: u32) -> i64 {
        match feature {
            FEATURE_BIND_SLOTS => {
                let private = (self.layout.private_slots() & 0xFFFF) as i64;
                let shared = (self.layout.shared_slots() & 0xFFFF) as i64;
                private | (shared << 16)
            }
            FEATURE_RELATIVE_MODE => 0,
            _ => INVALID_PARAMETERS,
        }
    }

    pub(crate) fn private_reset(&mut self, vcpu: usize) -> i64 {
        let mut result = SUCCESS;
        for i in 0..self.layout.private.len() {
            // Not being registered is fine; a running handler makes the reset fail.
            if self.unregister_event(vcpu, EventRef::Private(i)) == PENDING {
                result = DENIED;
            }
        }
        result
    }

    pub(crate) fn shared_reset(&mut self) -> i64 {
        let mut result = SUCCESS;
        for i in 0..self.layout.shared.len() {
            if self.unregister_event(0, EventRef::Shared(i)) == PENDING {
                result = DENIED;
            }
        }
        if result != SUCCESS {
            return result;
        }
        // Release every binding, private and shared; a registered private slot refuses.
        let slots = (0..self.layout.private.len())
            .map(EventRef::Private)
            .chain((0..self.layout.shared.len()).map(EventRef::Shared));
        let bound: alloc::vec::Vec<EventRef> = slots
            .filter(|ev| matches!(self.binding(*ev), Some(Some(_))))
            .collect();
        for ev in bound {
            let code = self.release_event(ev);
            if code != SUCCESS && result == SUCCESS {
                result = code;
            }
        }
        result
    }
}
