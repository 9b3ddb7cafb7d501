//! SDEI for the guest: sdei-dispatch plugged into hypercall-router, KVM's SMCCC filter
//! forwarding the SDEI function IDs to refvmm, delivery by rewriting vCPU registers, and kicks
//! that take a vCPU out of `KVM_RUN` when (and only when) it has an event to take.
//!
//! refvmm's own events (numbers in the dispatcher's VMM-defined range):
//!
//! | number | type | priority |
//! |---|---|---|
//! | `0x0100_0000` | private | normal |
//! | `0x0100_0001` | private | critical |
//! | `0x0100_0002` | shared | normal |
//! | `0x0100_0003` | shared | critical |

use crate::regs;
use crate::vcpu::{HypercallHandler, Kicker};
use hypercall_router::kvm::{handle_hypercall_exit, install_smccc_filter, x_reg_id};
use hypercall_router::{Router, RouterBuilder};
use kvm_bindings::{kvm_regs, user_pt_regs};
use kvm_ioctls::{VcpuFd, VmFd};
use sdei_dispatch::{
    DispatcherConfig, EventDecl, EventKind, Priority, RaiseOutcome, SdeiRegisters, SdeiService,
};
use std::mem::offset_of;
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

/// The router refvmm uses: one service (SDEI), room for a few ranges.
pub type SdeiRouter = Router<Arc<SdeiService>, 4, 8>;

/// Errors setting up or using SDEI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The dispatcher refused the configuration.
    #[error("SDEI configuration: {0}")]
    Config(String),
    /// The router refused the service.
    #[error("SDEI routing: {0}")]
    Route(String),
    /// KVM refused the SMCCC filter.
    #[error("Cannot forward SDEI calls from KVM: {0}")]
    Filter(#[source] hypercall_router::kvm::Error),
    /// The dispatcher refused a raise.
    #[error("{0}")]
    Raise(#[source] sdei_dispatch::VmmError),
}

/// Result of SDEI operations.
pub type Result<T> = std::result::Result<T, Error>;

/// SDEI state of the VM.
pub struct Sdei {
    service: Arc<SdeiService>,
    router: SdeiRouter,
    kicker: Arc<Kicker>,
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

    /// Routes the SDEI function IDs to `service`.
    fn with_service(service: SdeiService, kicker: Arc<Kicker>) -> Result<Self> {
        let service = Arc::new(service);
        let mut b: RouterBuilder<Arc<SdeiService>, 4, 8> = RouterBuilder::new();
        b.register(service.clone())
            .map_err(|e| Error::Route(e.to_string()))?;
        Ok(Sdei {
            service,
            router: b.build(),
            kicker,
        })
    }

    /// SDEI for vCPUs with these MPIDRs, with refvmm's events declared.
    pub fn new(mpidrs: &[u64], mte: bool, kicker: Arc<Kicker>) -> Result<Self> {
        let service = SdeiService::new(Self::config(mpidrs, mte))
            .map_err(|e| Error::Config(e.to_string()))?;
        Self::with_service(service, kicker)
    }

    /// SDEI restored from an sdei-migration snapshot taken of a VM with the same vCPUs.
    pub fn restore(mpidrs: &[u64], mte: bool, kicker: Arc<Kicker>, bytes: &[u8]) -> Result<Self> {
        let dispatcher = sdei_migration::load(bytes, Self::config(mpidrs, mte))
            .map_err(|e| Error::Config(e.to_string()))?;
        Self::with_service(SdeiService::from_dispatcher(dispatcher), kicker)
    }

    /// The dispatcher's state in sdei-migration's format.
    pub fn save(&self) -> std::result::Result<Vec<u8>, sdei_migration::SnapshotError> {
        sdei_migration::save(&self.service.dispatcher())
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
        let (outcome, kicks): (RaiseOutcome, Vec<usize>) = {
            let mut d = self.service.dispatcher();
            let outcome = d.raise(event, vcpu).map_err(Error::Raise)?;
            (outcome, d.vcpus_needing_kick().collect())
        };
        for v in kicks {
            self.kicker.kick(v);
        }
        Ok(outcome)
    }
}

/// A vCPU's registers through ONE_REG, as the dispatcher sees them.
struct KvmSdeiRegs<'a>(&'a VcpuFd);

fn core(offset: usize) -> u64 {
    hypercall_router::kvm::core_reg_id(offset)
}

impl KvmSdeiRegs<'_> {
    fn get(&self, id: u64) -> std::result::Result<u64, kvm_ioctls::Error> {
        let mut b = [0u8; 8];
        self.0.get_one_reg(id, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn put(&self, id: u64, v: u64) -> std::result::Result<(), kvm_ioctls::Error> {
        self.0.set_one_reg(id, &v.to_le_bytes()).map(|_| ())
    }
}

fn x_id(n: usize) -> std::result::Result<u64, kvm_ioctls::Error> {
    u8::try_from(n)
        .ok()
        .filter(|n| *n < 18)
        .and_then(x_reg_id)
        .ok_or_else(|| kvm_ioctls::Error::new(libc::EINVAL))
}

const ELR_EL1: usize = offset_of!(kvm_regs, elr_el1);
/// SPSR_EL1 is `spsr[KVM_SPSR_EL1]`, the first element.
const SPSR_EL1: usize = offset_of!(kvm_regs, spsr);
const _: () = assert!(kvm_bindings::KVM_SPSR_EL1 == 0);
const _: () = assert!(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, regs) == 0);

impl SdeiRegisters for KvmSdeiRegs<'_> {
    type Error = kvm_ioctls::Error;

    fn x(&mut self, n: usize) -> std::result::Result<u64, Self::Error> {
        self.get(x_id(n)?)
    }
    fn set_x(&mut self, n: usize, value: u64) -> std::result::Result<(), Self::Error> {
        self.put(x_id(n)?, value)
    }
    fn pc(&mut self) -> std::result::Result<u64, Self::Error> {
        self.get(regs::PC)
    }
    fn set_pc(&mut self, value: u64) -> std::result::Result<(), Self::Error> {
        self.put(regs::PC, value)
    }
    fn pstate(&mut self) -> std::result::Result<u64, Self::Error> {
        self.get(regs::PSTATE)
    }
    fn set_pstate(&mut self, value: u64) -> std::result::Result<(), Self::Error> {
        self.put(regs::PSTATE, value)
    }
    fn set_elr_el1(&mut self, value: u64) -> std::result::Result<(), Self::Error> {
        self.put(core(ELR_EL1), value)
    }
    fn set_spsr_el1(&mut self, value: u64) -> std::result::Result<(), Self::Error> {
        self.put(core(SPSR_EL1), value)
    }
}

impl HypercallHandler for Sdei {
    fn handle(&self, vcpu: &VcpuFd, index: u8, nr: u64, flags: u64) {
        let i = usize::from(index);
        log::trace!("vCPU {index}: SDEI call {nr:#x}");
        if let Err(e) = handle_hypercall_exit(&self.router, vcpu, nr, flags, i) {
            crate::guest_log!(
                log::Level::Error,
                "vCPU {index}: hypercall {nr:#x} could not be answered: {e}"
            );
            return;
        }
        if let Some(w) = self.service.take_control_writes(i) {
            let mut r = KvmSdeiRegs(vcpu);
            let res = (|| {
                if let Some(v) = w.elr_el1 {
                    r.set_elr_el1(v)?;
                }
                if let Some(v) = w.spsr_el1 {
                    r.set_spsr_el1(v)?;
                }
                if let Some(v) = w.pstate {
                    r.set_pstate(v)?;
                }
                if let Some(v) = w.pc {
                    r.set_pc(v)?;
                }
                Ok::<(), kvm_ioctls::Error>(())
            })();
            if let Err(e) = res {
                crate::guest_log!(
                    log::Level::Error,
                    "vCPU {index}: cannot finish an SDEI completion: {e}"
                );
            }
        }
    }

    fn wants_registers(&self, index: u8) -> bool {
        self.service
            .dispatcher()
            .pending_dispatch(usize::from(index))
    }

    fn before_run(&self, vcpu: &VcpuFd, index: u8) {
        let i = usize::from(index);
        // Deliver while out of KVM_RUN; at most one event per entry (a critical event can
        // still pre-empt the normal handler just entered on the next pass).
        if !self.service.dispatcher().pending_dispatch(i) {
            return;
        }
        match self.service.dispatch_pending(i, &mut KvmSdeiRegs(vcpu)) {
            Ok(Some(info)) => log::debug!("vCPU {index}: SDEI event {:#x} delivered", info.event),
            Ok(None) => {}
            Err(e) => crate::guest_log!(
                log::Level::Error,
                "vCPU {index}: SDEI delivery failed: {e:?}"
            ),
        }
    }
}
