//! The dispatcher's complete runtime state, as a plain struct.
//!
//! [`DispatcherState`] is what the dispatcher mutates, what
//! [`Dispatcher::state`](crate::Dispatcher::state) hands out for migration, and what
//! [`Dispatcher::restore`](crate::Dispatcher::restore) takes back. A restored state is
//! untrusted input: `restore` refuses anything the state machine could never reach.

use alloc::vec::Vec;

use crate::abi::SAVED_GPRS;
use crate::config::{ConfigError, DispatcherConfig, EventRef, Layout, Priority, FIRST_SPI};
use crate::machine::HandlerState;

/// The interrupted context saved when a handler starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SavedContext {
    /// x0–x17.
    pub x: [u64; SAVED_GPRS],
    /// Interrupted PC.
    pub pc: u64,
    /// Interrupted PSTATE.
    pub pstate: u64,
}

/// A running handler on a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerFrame {
    /// The event whose handler runs.
    pub event: u32,
    /// What the handler interrupted.
    pub context: SavedContext,
}

/// The registration of one event handler (per vCPU for private events, per VM for shared).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventEntry {
    /// Event number (checked against the configuration on restore).
    pub number: u32,
    /// State-machine bits.
    pub state: HandlerState,
    /// Registered handler address (0 when unregistered).
    pub entry_point: u64,
    /// Registered handler argument (0 when unregistered).
    pub argument: u64,
    /// Raised and not yet dispatched.
    pub pending: bool,
}

impl EventEntry {
    fn new(number: u32) -> Self {
        EventEntry {
            number,
            ..EventEntry::default()
        }
    }
}

/// Routing of a shared event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Routing {
    /// `RM_ANY`: any vCPU that can take it.
    #[default]
    Any,
    /// `RM_PE`: only the vCPU with this MPIDR affinity.
    Pe(u64),
}

/// A shared event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedEvent {
    /// Registration and state.
    pub entry: EventEntry,
    /// Routing (`Any` when unregistered).
    pub routing: Routing,
    /// The vCPU running its handler, if it runs.
    pub running_on: Option<usize>,
}

/// Per-vCPU state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuState {
    /// `PE_MASK` in effect (every vCPU starts masked).
    pub masked: bool,
    /// This vCPU's instance of every private event, in configuration order.
    pub private_events: Vec<EventEntry>,
    /// The running normal-priority handler.
    pub normal: Option<HandlerFrame>,
    /// The running critical-priority handler (above `normal` when both run).
    pub critical: Option<HandlerFrame>,
}

impl VcpuState {
    /// The innermost running handler.
    pub fn top(&self) -> Option<&HandlerFrame> {
        self.critical.as_ref().or(self.normal.as_ref())
    }
}

/// Everything the dispatcher knows, including the configuration it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherState {
    /// The configuration (must equal the one given to `restore`).
    pub config: DispatcherConfig,
    /// One entry per vCPU.
    pub vcpus: Vec<VcpuState>,
    /// Every shared event, in configuration order.
    pub shared_events: Vec<SharedEvent>,
    /// INTID bound to each private bind slot.
    pub private_bindings: Vec<Option<u32>>,
    /// INTID bound to each shared bind slot.
    pub shared_bindings: Vec<Option<u32>>,
}

impl DispatcherState {
    /// The reset state: nothing registered, nothing bound, every vCPU masked.
    pub(crate) fn initial(config: &DispatcherConfig, layout: &Layout) -> Self {
        let private: Vec<EventEntry> = layout
            .private
            .iter()
            .map(|e| EventEntry::new(e.number))
            .collect();
        let vcpu = VcpuState {
            masked: true,
            private_events: private,
            normal: None,
            critical: None,
        };
        DispatcherState {
            config: config.clone(),
            vcpus: alloc::vec![vcpu; layout.vcpus()],
            shared_events: layout
                .shared
                .iter()
                .map(|e| SharedEvent {
                    entry: EventEntry::new(e.number),
                    ..SharedEvent::default()
                })
                .collect(),
            private_bindings: alloc::vec![None; layout.private_slots()],
            shared_bindings: alloc::vec![None; layout.shared_slots()],
        }
    }
}

/// A state `restore` refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The configuration itself is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// The state was taken under a different configuration.
    #[error("state was taken under a different configuration")]
    ConfigMismatch,
    /// A table's length or event numbers do not match the configuration.
    #[error("{0} does not match the configuration")]
    Shape(&'static str),
    /// A handler state the state machine cannot reach, or fields that contradict it.
    #[error("event {event:#x} holds an impossible state")]
    EventState {
        /// Event number.
        event: u32,
    },
    /// A bind slot in use while unbound, or bound to an interrupt that cannot be bound there.
    #[error("bind slot of event {event:#x} is inconsistent")]
    Binding {
        /// Event number of the slot.
        event: u32,
    },
    /// A shared event routed to an affinity no vCPU has.
    #[error("event {event:#x} is routed to an unknown affinity")]
    Routing {
        /// Event number.
        event: u32,
    },
    /// Running handlers and handler frames disagree on a vCPU.
    #[error("running handlers on vCPU {vcpu} do not match its saved frames")]
    Frames {
        /// vCPU index.
        vcpu: usize,
    },
}

/// Shorthand for results of this module.
pub type Result<T> = core::result::Result<T, RestoreError>;

fn check_entry(entry: &EventEntry, bound: bool) -> Result<()> {
    let state = entry.state;
    let event = entry.number;
    let stale = !state.registered && (entry.entry_point != 0 || entry.argument != 0);
    let no_handler = state.registered && entry.entry_point == 0;
    if !state.is_reachable() || stale || no_handler || (entry.pending && !state.registered) {
        return Err(RestoreError::EventState { event });
    }
    if !bound && (state.registered || state.running || entry.pending) {
        return Err(RestoreError::Binding { event });
    }
    Ok(())
}

fn check_binding(layout: &Layout, intid: Option<u32>, shared: bool, event: u32) -> Result<()> {
    match intid {
        Some(i) if !layout.is_bindable(i) || (i >= FIRST_SPI) != shared => {
            Err(RestoreError::Binding { event })
        }
        _ => Ok(()),
    }
}

/// Checks that `state` is one the dispatcher built from `config` could reach.
pub(crate) fn validate(
    config: &DispatcherConfig,
    layout: &Layout,
    state: &DispatcherState,
) -> Result<()> {
    if &state.config != config {
        return Err(RestoreError::ConfigMismatch);
    }
    if state.vcpus.len() != layout.vcpus() {
        return Err(RestoreError::Shape("vCPU table"));
    }
    if state.private_bindings.len() != layout.private_slots()
        || state.shared_bindings.len() != layout.shared_slots()
    {
        return Err(RestoreError::Shape("bind slot table"));
    }
    // Bindings: bindable, of the right kind, and each interrupt at most once.
    let first_private_slot = layout.private.len() - layout.private_slots();
    let first_shared_slot = layout.shared.len() - layout.shared_slots();
    let all_bindings = state
        .private_bindings
        .iter()
        .map(|b| (b, false))
        .chain(state.shared_bindings.iter().map(|b| (b, true)));
    for (n, (binding, shared)) in all_bindings.enumerate() {
        let event = layout
            .private
            .iter()
            .chain(layout.shared.iter())
            .filter(|e| e.bind_slot)
            .nth(n)
            .map_or(0, |e| e.number);
        check_binding(layout, *binding, shared, event)?;
        let again = state
            .private_bindings
            .iter()
            .chain(state.shared_bindings.iter())
            .skip(n + 1);
        if binding.is_some() && again.into_iter().any(|other| other == binding) {
            return Err(RestoreError::Binding { event });
        }
    }
    let private_bound = |i: usize| match i.checked_sub(first_private_slot) {
        Some(slot) => state
            .private_bindings
            .get(slot)
            .copied()
            .flatten()
            .is_some(),
        None => true,
    };
    let shared_bound = |i: usize| match i.checked_sub(first_shared_slot) {
        Some(slot) => state.shared_bindings.get(slot).copied().flatten().is_some(),
        None => true,
    };

    if state.shared_events.len() != layout.shared.len() {
        return Err(RestoreError::Shape("shared event table"));
    }
    for (i, (shared, info)) in state.shared_events.iter().zip(&layout.shared).enumerate() {
        let event = info.number;
        if shared.entry.number != event {
            return Err(RestoreError::Shape("shared event table"));
        }
        check_entry(&shared.entry, shared_bound(i))?;
        match shared.routing {
            Routing::Pe(_) if !shared.entry.state.registered => {
                return Err(RestoreError::Routing { event })
            }
            Routing::Pe(mpidr) if layout.vcpu_by_mpidr(mpidr).is_none() => {
                return Err(RestoreError::Routing { event })
            }
            // Routing only changes while the event is registered, disabled and not running,
            // and it cannot be registered again while it runs: a handler runs where it is
            // routed.
            Routing::Pe(mpidr)
                if shared
                    .running_on
                    .is_some_and(|v| layout.vcpu_by_mpidr(mpidr) != Some(v)) =>
            {
                return Err(RestoreError::Routing { event })
            }
            _ => {}
        }
        if shared.entry.state.running != shared.running_on.is_some() {
            return Err(RestoreError::EventState { event });
        }
    }

    for (v, vcpu) in state.vcpus.iter().enumerate() {
        if vcpu.private_events.len() != layout.private.len() {
            return Err(RestoreError::Shape("private event table"));
        }
        for (i, (entry, info)) in vcpu.private_events.iter().zip(&layout.private).enumerate() {
            if entry.number != info.number {
                return Err(RestoreError::Shape("private event table"));
            }
            check_entry(entry, private_bound(i))?;
        }
        // Every frame names a running event of the frame's priority, running here.
        let frames = [
            (vcpu.normal, Priority::Normal),
            (vcpu.critical, Priority::Critical),
        ];
        for (frame, priority) in frames {
            let Some(frame) = frame else { continue };
            let event = layout
                .find(frame.event)
                .ok_or(RestoreError::Frames { vcpu: v })?;
            let info = layout.info(event).ok_or(RestoreError::Frames { vcpu: v })?;
            let runs_here = match event {
                EventRef::Private(i) => vcpu.private_events.get(i).is_some_and(|e| e.state.running),
                EventRef::Shared(i) => state
                    .shared_events
                    .get(i)
                    .is_some_and(|s| s.running_on == Some(v)),
            };
            if info.priority != priority || !runs_here {
                return Err(RestoreError::Frames { vcpu: v });
            }
        }
        // Every running private event, and shared event running here, has a frame.
        let has_frame = |number: u32| {
            vcpu.normal
                .iter()
                .chain(vcpu.critical.iter())
                .any(|f| f.event == number)
        };
        let private_running = vcpu.private_events.iter().filter(|e| e.state.running);
        let shared_running = state
            .shared_events
            .iter()
            .filter(|s| s.running_on == Some(v))
            .map(|s| &s.entry);
        if !private_running
            .chain(shared_running)
            .all(|e| has_frame(e.number))
        {
            return Err(RestoreError::Frames { vcpu: v });
        }
    }
    // A shared event running on a vCPU that does not exist has no frame anywhere.
    for shared in &state.shared_events {
        if shared.running_on.is_some_and(|v| v >= layout.vcpus()) {
            return Err(RestoreError::EventState {
                event: shared.entry.number,
            });
        }
    }
    Ok(())
}
