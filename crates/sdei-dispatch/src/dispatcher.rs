//! The [`Dispatcher`]: construction, snapshots and the register-level call entry point.

use crate::abi::{self, low32, owns_function_id, Function, NOT_SUPPORTED};
use crate::config::{ConfigError, DispatcherConfig, EventInfo, EventRef, Layout};
use crate::regs::RegisterFile;
use crate::state::{self, DispatcherState, EventEntry, HandlerFrame, RestoreError};

/// The SDEI dispatcher of one VM.
///
/// All methods take `&mut self`: a VMM shares one dispatcher between vCPU threads behind a
/// `Mutex`. Guest input reaches it only through [`handle_call`](Dispatcher::handle_call) and
/// never panics it; every refused call gets the architected error code.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    pub(crate) layout: Layout,
    pub(crate) st: DispatcherState,
}

/// What [`Dispatcher::handle_call`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The call returned this value in `x0` (errors are negative).
    Returned(i64),
    /// `EVENT_COMPLETE` or `EVENT_COMPLETE_AND_RESUME` succeeded: the interrupted context is
    /// back in the registers (and, for a resume, an IRQ-like exception entry was emulated).
    Completed {
        /// The event whose handler completed.
        event: u32,
        /// Whether this was `EVENT_COMPLETE_AND_RESUME`.
        resumed: bool,
    },
    /// The function identifier in `w0` is not an SDEI one; no register was touched.
    NotSdei,
}

/// A failure of [`Dispatcher::handle_call`] or [`Dispatcher::dispatch_pending`] that is the
/// VMM's concern rather than the guest's.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The vCPU index is out of range.
    #[error("vCPU index {0} is out of range")]
    InvalidVcpu(usize),
    /// The register backend failed; the vCPU's registers may be partly written.
    #[error("register access failed")]
    Registers(#[source] E),
}

/// What a call did to the state, before registers are written.
pub(crate) enum Reply {
    Value(i64),
    Completed {
        frame: HandlerFrame,
        resume_at: Option<u64>,
    },
}

impl Dispatcher {
    /// Builds a dispatcher in the reset state: nothing registered, every vCPU masked.
    pub fn new(config: DispatcherConfig) -> Result<Dispatcher, ConfigError> {
        let layout = Layout::new(&config)?;
        let st = DispatcherState::initial(&config, &layout);
        Ok(Dispatcher { layout, st })
    }

    /// Rebuilds a dispatcher from a saved state, refusing any state the dispatcher built
    /// from `config` could not have reached.
    pub fn restore(
        config: DispatcherConfig,
        state: DispatcherState,
    ) -> Result<Dispatcher, RestoreError> {
        let layout = Layout::new(&config)?;
        state::validate(&config, &layout, &state)?;
        Ok(Dispatcher { layout, st: state })
    }

    /// A copy of the complete state, for migration or inspection.
    pub fn state(&self) -> DispatcherState {
        self.st.clone()
    }

    /// The configuration this dispatcher was built from.
    pub fn config(&self) -> &DispatcherConfig {
        &self.st.config
    }

    /// Number of vCPUs.
    pub fn vcpus(&self) -> usize {
        self.layout.vcpus()
    }

    /// Executes the SDEI call held in `regs` (function identifier in `w0`, arguments in
    /// x1–x5) on behalf of vCPU `vcpu`, and updates the registers as firmware would.
    ///
    /// The caller advances the PC past the `HVC`/`SMC` as its conduit requires; the dispatcher
    /// only changes the PC when a handler completes. After every call the VMM should try
    /// [`dispatch_pending`](Dispatcher::dispatch_pending) on this vCPU and kick
    /// [`vcpus_needing_kick`](Dispatcher::vcpus_needing_kick).
    pub fn handle_call<R: RegisterFile>(
        &mut self,
        vcpu: usize,
        regs: &mut R,
    ) -> Result<CallOutcome, CallError<R::Error>> {
        if vcpu >= self.vcpus() {
            return Err(CallError::InvalidVcpu(vcpu));
        }
        let function_id = low32(regs.read_x(0).map_err(CallError::Registers)?);
        if !owns_function_id(function_id) {
            return Ok(CallOutcome::NotSdei);
        }
        let Some(function) = Function::decode(function_id) else {
            regs.write_x(0, NOT_SUPPORTED as u64)
                .map_err(CallError::Registers)?;
            return Ok(CallOutcome::Returned(NOT_SUPPORTED));
        };
        let mut args = [0u64; 5];
        for (arg, n) in args.iter_mut().take(function.arg_count()).zip(1u8..) {
            *arg = regs.read_x(n).map_err(CallError::Registers)?;
        }
        match self.execute(vcpu, function, args) {
            Reply::Value(value) => {
                regs.write_x(0, value as u64)
                    .map_err(CallError::Registers)?;
                Ok(CallOutcome::Returned(value))
            }
            Reply::Completed { frame, resume_at } => {
                self.write_completion(regs, &frame, resume_at)
                    .map_err(CallError::Registers)?;
                Ok(CallOutcome::Completed {
                    event: frame.event,
                    resumed: resume_at.is_some(),
                })
            }
        }
    }

    /// Runs one decoded call against the state.
    fn execute(&mut self, vcpu: usize, function: Function, a: [u64; 5]) -> Reply {
        let event = low32(a[0]);
        let value = match function {
            Function::Version => abi::version_word(self.st.config.vendor_id) as i64,
            Function::EventRegister => self.register(vcpu, event, a[1], a[2], a[3], a[4]),
            Function::EventEnable => self.enable(vcpu, event, true),
            Function::EventDisable => self.enable(vcpu, event, false),
            Function::EventContext => self.context(vcpu, a[0]),
            Function::EventComplete => return self.complete(vcpu, None),
            Function::EventCompleteAndResume => return self.complete(vcpu, Some(a[0])),
            Function::EventUnregister => self.unregister(vcpu, event),
            Function::EventStatus => self.status(vcpu, event),
            Function::EventGetInfo => self.get_info(vcpu, event, low32(a[1])),
            Function::EventRoutingSet => self.routing_set(event, a[1], a[2]),
            Function::PeMask => self.pe_mask(vcpu),
            Function::PeUnmask => self.pe_unmask(vcpu),
            Function::InterruptBind => self.bind(event),
            Function::InterruptRelease => self.release(event),
            Function::EventSignal => self.signal(event, a[1]),
            Function::Features => self.features(event),
            Function::PrivateReset => self.private_reset(vcpu),
            Function::SharedReset => self.shared_reset(),
        };
        Reply::Value(value)
    }

    /// Static facts about an event.
    pub(crate) fn info(&self, event: EventRef) -> Option<EventInfo> {
        self.layout.info(event)
    }

    /// The entry `vcpu` sees for `event` (its own instance of a private event).
    pub(crate) fn entry(&self, vcpu: usize, event: EventRef) -> Option<&EventEntry> {
        match event {
            EventRef::Private(i) => self.st.vcpus.get(vcpu)?.private_events.get(i),
            EventRef::Shared(i) => self.st.shared_events.get(i).map(|s| &s.entry),
        }
    }

    /// Mutable form of [`entry`](Dispatcher::entry).
    pub(crate) fn entry_mut(&mut self, vcpu: usize, event: EventRef) -> Option<&mut EventEntry> {
        match event {
            EventRef::Private(i) => self.st.vcpus.get_mut(vcpu)?.private_events.get_mut(i),
            EventRef::Shared(i) => self.st.shared_events.get_mut(i).map(|s| &mut s.entry),
        }
    }

    /// Bytes used by this dispatcher: the struct plus every table it allocated.
    pub fn memory_footprint(&self) -> usize {
        use core::mem::size_of;
        let vcpu_tables: usize = self
            .st
            .vcpus
            .iter()
            .map(|v| v.private_events.capacity() * size_of::<EventEntry>())
            .sum();
        size_of::<Self>()
            + self.st.vcpus.capacity() * size_of::<state::VcpuState>()
            + vcpu_tables
            + self.st.shared_events.capacity() * size_of::<state::SharedEvent>()
            + (self.st.private_bindings.capacity() + self.st.shared_bindings.capacity())
                * size_of::<Option<u32>>()
            + self.layout.heap_bytes()
            + self.st.config.heap_bytes()
    }
}
