//! The per-event handler state machine.
//!
//! An event handler (per vCPU for a private event, per VM for a shared one) is described by
//! three bits: registered, enabled, running. [`transition`] is the specification's state table
//! (SDEI section 6.1, as TF-A's `sdei_state.c` reads it): for each state and action it says
//! whether the action is allowed and which state follows.

use crate::abi::{STATUS_ENABLED, STATUS_REGISTERED, STATUS_RUNNING};

/// The three state bits of one event handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HandlerState {
    /// A handler is registered.
    pub registered: bool,
    /// The event is enabled.
    pub enabled: bool,
    /// The handler is running (possibly after an unregister, which is then pending).
    pub running: bool,
}

impl HandlerState {
    /// Builds a state from its bits.
    pub const fn new(registered: bool, enabled: bool, running: bool) -> Self {
        HandlerState {
            registered,
            enabled,
            running,
        }
    }

    /// The `EVENT_STATUS` encoding of this state.
    pub fn status_bits(self) -> u64 {
        let mut bits = 0;
        if self.registered {
            bits |= STATUS_REGISTERED;
        }
        if self.enabled {
            bits |= STATUS_ENABLED;
        }
        if self.running {
            bits |= STATUS_RUNNING;
        }
        bits
    }

    /// Whether the state machine can ever reach this state (enabled implies registered).
    pub fn is_reachable(self) -> bool {
        self.registered || !self.enabled
    }

    /// Whether an unregister is pending: running, but no longer registered.
    pub fn unregister_pending(self) -> bool {
        self.running && !self.registered
    }
}

/// What is being done to an event handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `EVENT_REGISTER`.
    Register,
    /// `INTERRUPT_RELEASE` (never changes state).
    Release,
    /// `EVENT_ENABLE`.
    Enable,
    /// `EVENT_DISABLE`.
    Disable,
    /// `EVENT_UNREGISTER`.
    Unregister,
    /// `EVENT_ROUTING_SET` (never changes state).
    RoutingSet,
    /// `EVENT_CONTEXT` (never changes state).
    Context,
    /// `EVENT_COMPLETE`.
    Complete,
    /// `EVENT_COMPLETE_AND_RESUME`.
    CompleteAndResume,
    /// Starting the handler on a vCPU.
    Dispatch,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 10] = [
        Action::Register,
        Action::Release,
        Action::Enable,
        Action::Disable,
        Action::Unregister,
        Action::RoutingSet,
        Action::Context,
        Action::Complete,
        Action::CompleteAndResume,
        Action::Dispatch,
    ];
}

/// The verdict of the state table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The action is not allowed in this state.
    Denied,
    /// The action is allowed and leaves the state as it is.
    Unchanged,
    /// The action is allowed and moves the handler to this state.
    To(HandlerState),
}

/// Looks `action` up in the state table for `state`.
pub fn transition(state: HandlerState, action: Action) -> Transition {
    use Action::*;
    use Transition::{Denied, To, Unchanged};
    let to = |r, e, g| {
        To(HandlerState {
            running: r,
            enabled: e,
            registered: g,
        })
    };
    // Letters: R/r running, E/e enabled, G/g registered (upper case = set).
    match (state.running, state.enabled, state.registered) {
        // reg: the default state. Only register, and release, are possible.
        (false, false, false) => match action {
            Register => to(false, false, true),
            Release => Unchanged,
            _ => Denied,
        },
        // Reg: unregistered while running; completion finishes the unregister.
        (true, false, false) => match action {
            Context => Unchanged,
            Complete | CompleteAndResume => to(false, false, false),
            _ => Denied,
        },
        // reG: registered, disabled.
        (false, false, true) => match action {
            Enable => to(false, true, true),
            Disable | RoutingSet => Unchanged,
            Unregister => to(false, false, false),
            _ => Denied,
        },
        // ReG: registered, disabled, running.
        (true, false, true) => match action {
            Enable => to(true, true, true),
            Disable | Context => Unchanged,
            Unregister => to(true, false, false),
            Complete | CompleteAndResume => to(false, false, true),
            _ => Denied,
        },
        // rEG: registered and enabled: the only state an event is dispatched from.
        (false, true, true) => match action {
            Enable => Unchanged,
            Disable => to(false, false, true),
            Unregister => to(false, false, false),
            Dispatch => to(true, true, true),
            _ => Denied,
        },
        // REG: registered, enabled, running.
        (true, true, true) => match action {
            Enable | Context => Unchanged,
            Disable => to(true, false, true),
            Unregister => to(true, false, false),
            Complete | CompleteAndResume => to(false, true, true),
            _ => Denied,
        },
        // rEg and REg cannot be reached: enabled needs registered.
        (_, true, false) => Denied,
    }
}

/// Applies `action` to `state`: `Some(new state)` when allowed.
pub fn apply(state: HandlerState, action: Action) -> Option<HandlerState> {
    match transition(state, action) {
        Transition::Denied => None,
        Transition::Unchanged => Some(state),
        Transition::To(next) => Some(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_states() -> impl Iterator<Item = HandlerState> {
        (0..8u8).map(|b| HandlerState::new(b & 1 != 0, b & 2 != 0, b & 4 != 0))
    }

    #[test]
    fn unreachable_states_allow_nothing() {
        for state in all_states().filter(|s| !s.is_reachable()) {
            for action in Action::ALL {
                assert_eq!(
                    transition(state, action),
                    Transition::Denied,
                    "{state:?} {action:?}"
                );
            }
        }
    }

    #[test]
    fn no_allowed_action_leads_to_an_unreachable_state() {
        for state in all_states().filter(|s| s.is_reachable()) {
            for action in Action::ALL {
                if let Some(next) = apply(state, action) {
                    assert!(next.is_reachable(), "{state:?} {action:?} -> {next:?}");
                }
            }
        }
    }

    #[test]
    fn unregister_always_disables_and_keeps_running() {
        for state in all_states() {
            if let Some(next) = apply(state, Action::Unregister) {
                assert!(!next.registered && !next.enabled);
                assert_eq!(next.running, state.running);
            }
        }
    }

    #[test]
    fn context_and_complete_need_a_running_handler() {
        for state in all_states() {
            for action in [Action::Context, Action::Complete, Action::CompleteAndResume] {
                assert_eq!(
                    apply(state, action).is_some(),
                    state.running && state.is_reachable()
                );
            }
        }
    }

    #[test]
    fn status_bits_are_registered_enabled_running() {
        assert_eq!(HandlerState::new(true, true, true).status_bits(), 0b111);
        assert_eq!(HandlerState::new(false, false, true).status_bits(), 0b100);
        assert_eq!(HandlerState::new(true, false, false).status_bits(), 0b001);
    }
}
