//! SDEI for the guest: sdei-dispatch plugged into hypercall-router, KVM's SMCCC filter
//! forwarding the SDEI function IDs to refvmm, delivery by rewriting vCPU registers, and kicks
//! that take a vCPU out of `KVM_RUN` when (and only when) it has an event to take.
//!
//! The same router answers PSCI's `CPU_OFF`, `CPU_ON` and `AFFINITY_INFO` ([`crate::psci`]), so
//! that a vCPU's SDEI state is reset when it is turned off and again when it is turned on (as
//! TF-A does on power-up): its private registrations go, a handler it was running is
//! abandoned, and it is masked, so no event reaches a vCPU that is off.
//!
//! refvmm's own events (numbers in the dispatcher's VMM-defined range):
//!
//! | number | type | priority |
//! |---|---|---|
//! | `0x0100_0000` | private | normal |
//! | `0x0100_0001` | private | critical |
//! | `0x0100_0002` | shared | normal |
//! | `0x0100_0003` | shared | critical |

use crate::persist::{Persist, Stored};
use crate::psci::{Power, PowerTable, Psci};
use crate::regs;
use crate::vcpu::{HypercallHandler, Kicker};
use hypercall_router::{
    Call, CallContext, FunctionId, Outcome, RegisterFile, RegisterView, Router, RouterBuilder,
    Service, ServiceInfo,
};
use kvm_bindings::{kvm_mp_state, kvm_vcpu_init, KVM_MP_STATE_STOPPED};
use kvm_ioctls::{VcpuFd, VmFd};
use sdei_dispatch::kvm::KvmVcpuRegisters;
use sdei_dispatch::kvm::{deliver_pending, handle_hypercall_exit, install_smccc_filter};
use sdei_dispatch::{DispatcherConfig, EventDecl, EventKind, Priority, RaiseOutcome, SdeiService};
use std::sync::Arc;

/// refvmm's private, normal-priority event.
pub const EVENT_PRIVATE_NORMAL: u32 = 0x0100_0000;
/// refvmm's private, critical-priority event.
pub const EVENT_PRIVATE_CRITICAL: u32 = 0x0100_0001;
/// refvmm's shared, normal-priority event.
pub const EVENT_SHARED_NORMAL: u32 = 0x0100_0002;
/// refvmm's shared, critical-priority event.
pub const EVENT_SHARED_CRITICAL: u32 = 0x0100_0003;

/// All of refvmm's events with their type and priority.
pub const VMM_EVENTS: [(u32, EventKind, Priority); 4] = [
    (EVENT_PRIVATE_NORMAL, EventKind::Private, Priority::Normal),
    (
        EVENT_PRIVATE_CRITICAL,
        EventKind::Private,
        Priority::Critical,
    ),
    (EVENT_SHARED_NORMAL, EventKind::Shared, Priority::Normal),
    (EVENT_SHARED_CRITICAL, EventKind::Shared, Priority::Critical),
];

/// A service refvmm routes: SDEI, or PSCI's CPU power calls.
pub enum Routed {
    /// The SDEI dispatcher.
    Sdei(Arc<SdeiService>),
    /// `CPU_OFF`, `CPU_ON`, `AFFINITY_INFO`.
    Psci(Arc<Psci>),
}

impl Service for Routed {
    fn info(&self) -> ServiceInfo<'_> {
        match self {
            Routed::Sdei(s) => s.info(),
            Routed::Psci(p) => p.info(),
        }
    }

    fn call(&self, ctx: &CallContext, call: &Call, regs: &mut RegisterView<'_>) -> Outcome {
        match self {
            Routed::Sdei(s) => s.call(ctx, call, regs),
            Routed::Psci(p) => p.call(ctx, call, regs),
        }
    }

    fn arch_features(&self, id: FunctionId) -> i32 {
        match self {
            Routed::Sdei(s) => s.arch_features(id),
            Routed::Psci(p) => p.arch_features(id),
        }
    }
}

/// The router refvmm uses: SDEI and PSCI, room for a few ranges.
pub type SdeiRouter = Router<Routed, 4, 8>;

/// Errors setting up or using SDEI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The dispatcher refused refvmm's SDEI configuration (a refvmm bug).
    #[error("The SDEI dispatcher refused refvmm's configuration")]
    Config(#[source] sdei_dispatch::ConfigError),
    /// The router refused the service.
    #[error("The hypercall router refused the {0} service")]
    Route(&'static str, #[source] hypercall_router::RouterError),
    /// A vCPU's power state could not be read.
    #[error("Cannot read the power state of vCPU {0}")]
    Power(usize, #[source] kvm_ioctls::Error),
    /// KVM refused the SMCCC filter.
    #[error("Cannot forward SDEI calls from KVM")]
    Filter(#[source] hypercall_router::kvm::Error),
    /// The dispatcher refused a raise.
    #[error("The SDEI dispatcher refused to raise the event")]
    Raise(#[source] sdei_dispatch::VmmError),
}

/// Result of SDEI operations.
pub type Result<T> = std::result::Result<T, Error>;

/// SDEI state of the VM.
pub struct Sdei {
    service: Arc<SdeiService>,
    psci: Arc<Psci>,
    router: SdeiRouter,
    /// What a vCPU turned on by `CPU_ON` resets itself with (`KVM_ARM_VCPU_INIT`).
    reset_init: kvm_vcpu_init,
    mpidrs: Vec<u64>,
    /// Whether the guest has MTE (the dispatcher's configuration depends on it).
    mte: bool,
}

/// The SDEI dispatcher's saved state: an sdei-migration snapshot (`sdei.bin`), decoded and
/// checked by [`Sdei`]'s restore against the VM's own dispatcher configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdeiState(pub Vec<u8>);

impl Stored for SdeiState {
    const FILE: &'static str = "sdei.bin";

    fn encode(&self) -> crate::snapshot::Result<Vec<u8>> {
        Ok(self.0.clone())
    }

    fn decode(bytes: &[u8]) -> crate::snapshot::Result<Self> {
        Ok(SdeiState(bytes.to_vec()))
    }
}

/// Why the SDEI state cannot be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The dispatcher's state does not encode.
    #[error("Cannot save the SDEI dispatcher")]
    Save(#[source] sdei_migration::SnapshotError),
    /// The saved state does not decode or does not fit this VM's dispatcher.
    #[error("Cannot load the SDEI dispatcher")]
    Load(#[source] sdei_migration::SnapshotError),
}

impl Persist for Sdei {
    type State = SdeiState;
    type Error = StateError;

    fn save(&self) -> std::result::Result<SdeiState, StateError> {
        sdei_migration::save(&self.service.dispatcher())
            .map(SdeiState)
            .map_err(StateError::Save)
    }

    /// The dispatcher is replaced by the saved one, checked against this VM's configuration;
    /// the vCPUs it leaves with an event to deliver are kicked (none runs yet).
    fn restore(self, state: &SdeiState) -> std::result::Result<Self, StateError> {
        let loaded = sdei_migration::load(&state.0, Self::config(&self.mpidrs, self.mte))
            .map_err(StateError::Load)?;
        *self.service.dispatcher() = loaded;
        Ok(self)
    }
}

impl Sdei {
    /// The dispatcher configuration for vCPUs with these MPIDRs, with refvmm's events.
    fn config(mpidrs: &[u64], mte: bool) -> DispatcherConfig {
        let mut cfg = DispatcherConfig::new(mpidrs.len());
        // Affinity fields only (Aff3, Aff2, Aff1, Aff0): bit 31 is RES1, bit 30 and 24 are
        // the U and MT flags, none of which identify a PE.
        cfg.mpidrs = Some(mpidrs.iter().map(|m| m & 0xff_00ff_ffff).collect());
        cfg.mte_tco = mte;
        cfg.events = VMM_EVENTS
            .iter()
            .map(|&(number, kind, priority)| EventDecl {
                number,
                kind,
                priority,
            })
            .collect();
        cfg
    }

    /// Routes the SDEI function IDs to `service` and PSCI's CPU calls to a power table (every
    /// vCPU but the first off until [`Sdei::sync_power`] reads the real states).
    fn with_service(
        service: SdeiService,
        mpidrs: &[u64],
        mte: bool,
        kicker: Arc<Kicker>,
        reset_init: kvm_vcpu_init,
    ) -> Result<Self> {
        let service = Arc::new(service);
        let psci = Arc::new(Psci::new(
            PowerTable::at_boot(mpidrs),
            Box::new(move |i| kicker.kick(i)),
        ));
        let mut b: RouterBuilder<Routed, 4, 8> = RouterBuilder::new();
        b.register(Routed::Sdei(service.clone()))
            .map_err(|e| Error::Route("SDEI", e))?;
        b.register(Routed::Psci(psci.clone()))
            .map_err(|e| Error::Route("PSCI", e))?;
        Ok(Sdei {
            service,
            psci,
            router: b.build(),
            reset_init,
            mpidrs: mpidrs.to_vec(),
            mte,
        })
    }

    /// SDEI for vCPUs with these MPIDRs, with refvmm's events declared; `reset_init` is the
    /// vCPUs' `KVM_ARM_VCPU_INIT` argument (without `POWER_OFF`).
    pub fn new(
        mpidrs: &[u64],
        mte: bool,
        kicker: Arc<Kicker>,
        reset_init: kvm_vcpu_init,
    ) -> Result<Self> {
        let k = kicker.clone();
        let service = SdeiService::new(Self::config(mpidrs, mte), move |i| k.kick(i))
            .map_err(Error::Config)?;
        Self::with_service(service, mpidrs, mte, kicker, reset_init)
    }

    /// Takes each vCPU's power state from KVM (stopped = off), once the vCPUs are set up for
    /// boot or restored, before any runs.
    pub fn sync_power<'a>(&self, vcpus: impl IntoIterator<Item = &'a VcpuFd>) -> Result<()> {
        let mut power = Vec::new();
        for (i, fd) in vcpus.into_iter().enumerate() {
            let mp = fd.get_mp_state().map_err(|e| Error::Power(i, e))?;
            power.push(if mp.mp_state == KVM_MP_STATE_STOPPED {
                Power::Off
            } else {
                Power::On
            });
        }
        self.psci
            .replace_table(PowerTable::new(&self.mpidrs, power));
        Ok(())
    }

    /// Whether a `CPU_ON` was accepted and its vCPU has not started yet (a snapshot taken now
    /// would lose it).
    pub fn power_change_pending(&self) -> bool {
        self.psci.table().any_pending()
    }

    /// vCPU `index` called `CPU_OFF`: it stops in KVM (`KVM_RUN` sleeps until a kick) and its
    /// SDEI state is reset.
    fn stop_vcpu(&self, vcpu: &VcpuFd, index: usize) {
        let stopped = kvm_mp_state {
            mp_state: KVM_MP_STATE_STOPPED,
        };
        if let Err(e) = vcpu.set_mp_state(stopped) {
            crate::guest_log!(
                log::Level::Error,
                "vCPU {index}: cannot stop after CPU_OFF: {e}"
            );
        }
        let _ = self.service.dispatcher().reset_vcpu(index);
        crate::guest_log!(log::Level::Debug, "vCPU {index}: off (PSCI CPU_OFF)");
    }

    /// vCPU `index` was turned on by `CPU_ON`: reset, entry point, context ID in x0, EL1h with
    /// DAIF masked, and a reset SDEI state.
    fn start_vcpu(&self, vcpu: &VcpuFd, index: usize, entry: u64, context: u64) {
        let _ = self.service.dispatcher().reset_vcpu(index);
        let res = vcpu
            .vcpu_init(&self.reset_init)
            .map_err(|e| crate::error_chain(&e));
        let res = res.and_then(|()| {
            let mut r = KvmVcpuRegisters::new(vcpu);
            r.set_pstate(regs::PSTATE_EL1H_DAIF)
                .and_then(|()| r.set_pc(entry))
                .and_then(|()| r.write_x(0, context))
                .map_err(|e| crate::error_chain(&e))
        });
        match res {
            Ok(()) => crate::guest_log!(
                log::Level::Debug,
                "vCPU {index}: on at {entry:#x} (PSCI CPU_ON)"
            ),
            Err(e) => crate::guest_log!(
                log::Level::Error,
                "vCPU {index}: cannot start after CPU_ON: {e}"
            ),
        }
    }

    /// Asks KVM to forward the SDEI function IDs (before any vCPU runs).
    pub fn install_filter(&self, vm: &VmFd) -> Result<()> {
        install_smccc_filter(vm, &self.router)
            .map(|_| ())
            .map_err(Error::Filter)
    }

    /// Raises `event` (on `vcpu` for a private event; a shared one goes to its route) and
    /// kicks the vCPUs that now have an event to take.
    pub fn raise(&self, event: u32, vcpu: Option<usize>) -> Result<RaiseOutcome> {
        self.service.raise(event, vcpu).map_err(Error::Raise)
    }
}

impl HypercallHandler for Sdei {
    fn handle(&self, vcpu: &VcpuFd, index: u8, nr: u64, flags: u64) {
        let i = usize::from(index);
        log::trace!("vCPU {index}: SDEI call {nr:#x}");
        let answered = handle_hypercall_exit(&self.router, vcpu, nr, flags, i);
        // A CPU_OFF took effect in the power table even if writing its answer failed: stop
        // now, or the mark would linger and stop the vCPU after a later CPU_ON.
        if self.psci.take_stop(i) {
            self.stop_vcpu(vcpu, i);
        }
        if let Err(e) = answered {
            crate::guest_log!(
                log::Level::Error,
                "vCPU {index}: hypercall {nr:#x} could not be answered: {}",
                crate::error_chain(&e)
            );
        }
        // The SDEI service has kicked every other vCPU the call left an event pending on,
        // and a completion has already put the interrupted context back.
    }

    fn wants_registers(&self, index: u8) -> bool {
        let i = usize::from(index);
        self.psci.start_pending(i) || self.service.has_pending(i)
    }

    fn before_run(&self, vcpu: &VcpuFd, index: u8) {
        let i = usize::from(index);
        if let Some((entry, context)) = self.psci.take_start(i) {
            self.start_vcpu(vcpu, i, entry, context);
        }
        // Deliver while out of KVM_RUN; at most one event per entry (a critical event can
        // still pre-empt the normal handler just entered on the next pass). Nothing pending
        // costs one atomic load.
        match deliver_pending(&self.service, vcpu, i) {
            Ok(Some(info)) => log::debug!("vCPU {index}: SDEI event {:#x} delivered", info.event),
            Ok(None) => {}
            Err(e) => crate::guest_log!(
                log::Level::Error,
                "vCPU {index}: SDEI delivery failed: {e:?}"
            ),
        }
    }
}
