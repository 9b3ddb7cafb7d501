//! The dispatcher as a [`hypercall_router::Service`] (feature `router`).
//!
//! A router hands services a view of x0–x17 only. Most SDEI calls need no more; the two
//! completion calls also rewrite PC and PSTATE (and, for COMPLETE_AND_RESUME, ELR_EL1 and
//! SPSR_EL1). [`SdeiService`] therefore runs every call against the router's view and keeps
//! those control-register writes aside per vCPU; the VMM applies them after the router
//! returns with [`SdeiService::take_control_writes`]. Delivery (which reads PC and PSTATE) is
//! not a call and goes through [`SdeiService::dispatch_pending`] with the VMM's full register
//! access.
//!
//! ```
//! use hypercall_router::{CallContext, Conduit, InMemoryRegisters, RouterBuilder};
//! use sdei_dispatch::{DispatcherConfig, SdeiService};
//!
//! let sdei = SdeiService::new(DispatcherConfig::new(1)).unwrap();
//! let mut builder: RouterBuilder<&SdeiService, 4, 8> = RouterBuilder::new();
//! builder.register(&sdei).unwrap();
//! let router = builder.build();
//!
//! // SDEI_VERSION from vCPU 0.
//! let mut regs = InMemoryRegisters::with_x0(0xC400_0020);
//! router.dispatch(&CallContext::new(0, Conduit::Hvc), &mut regs).unwrap();
//! assert_eq!(regs.x[0] >> 48, 1); // major version 1
//! assert!(sdei.take_control_writes(0).is_none());
//! ```

use crate::abi;
use crate::config::{ConfigError, DispatcherConfig};
use crate::delivery::DispatchInfo;
use crate::dispatcher::{CallError, CallOutcome, Dispatcher};
use crate::regs::SdeiRegisters;
use hypercall_router::{
    Call, CallContext, Convention, FunctionRange, Outcome, Owner, RegisterError, RegisterView,
    Service, ServiceInfo,
};
use std::sync::{Mutex, MutexGuard};

/// The function numbers the service answers: SDEI_VERSION (0x20) to SDEI_SHARED_RESET (0x32),
/// SMC64 fast calls of the Standard Secure Service owner. The SMC32 aliases and 0x33–0x3F are
/// not registered, so a router answers them NOT_SUPPORTED. The router reads no argument
/// registers for the service: the dispatcher reads, through the register view, just the ones
/// each call has ([`Function::arg_count`](crate::abi::Function::arg_count)).
pub const SDEI_RANGES: [FunctionRange; 1] =
    [FunctionRange::fast(Convention::Smc64, Owner::StandardSecure, 0x20, 0x32).with_arg_count(0)];

/// Control registers a completion call rewrote, for the VMM to apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlWrites {
    /// New PC.
    pub pc: Option<u64>,
    /// New PSTATE.
    pub pstate: Option<u64>,
    /// New ELR_EL1.
    pub elr_el1: Option<u64>,
    /// New SPSR_EL1.
    pub spsr_el1: Option<u64>,
}

impl ControlWrites {
    fn is_empty(&self) -> bool {
        *self == ControlWrites::default()
    }
}

/// Registers as seen during a routed call: x0 is the routed (masked) function ID, x1–x17 come
/// from the router's view, control-register writes are recorded.
struct CallRegisters<'a, 'v> {
    x0: u64,
    view: &'a mut RegisterView<'v>,
    writes: ControlWrites,
}

/// Why a register access inside a routed call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallRegisterError {
    /// The router's register view failed.
    #[error("register view: {0}")]
    View(RegisterError),
    /// A call tried to read PC or PSTATE, which calls never need.
    #[error("PC and PSTATE are not readable during a call")]
    ControlRead,
}

impl SdeiRegisters for CallRegisters<'_, '_> {
    type Error = CallRegisterError;

    fn x(&mut self, n: usize) -> Result<u64, Self::Error> {
        if n == 0 {
            return Ok(self.x0);
        }
        let n = u8::try_from(n)
            .map_err(|_| CallRegisterError::View(RegisterError::OutOfRange(u8::MAX)))?;
        self.view.read_x(n).map_err(CallRegisterError::View)
    }

    fn set_x(&mut self, n: usize, value: u64) -> Result<(), Self::Error> {
        let n = u8::try_from(n)
            .map_err(|_| CallRegisterError::View(RegisterError::OutOfRange(u8::MAX)))?;
        self.view.write_x(n, value).map_err(CallRegisterError::View)
    }

    fn pc(&mut self) -> Result<u64, Self::Error> {
        Err(CallRegisterError::ControlRead)
    }

    fn set_pc(&mut self, value: u64) -> Result<(), Self::Error> {
        self.writes.pc = Some(value);
        Ok(())
    }

    fn pstate(&mut self) -> Result<u64, Self::Error> {
        Err(CallRegisterError::ControlRead)
    }

    fn set_pstate(&mut self, value: u64) -> Result<(), Self::Error> {
        self.writes.pstate = Some(value);
        Ok(())
    }

    fn set_elr_el1(&mut self, value: u64) -> Result<(), Self::Error> {
        self.writes.elr_el1 = Some(value);
        Ok(())
    }

    fn set_spsr_el1(&mut self, value: u64) -> Result<(), Self::Error> {
        self.writes.spsr_el1 = Some(value);
        Ok(())
    }
}

/// An SDEI dispatcher behind a lock, plugged into a router.
pub struct SdeiService {
    dispatcher: Mutex<Dispatcher>,
    writes: Mutex<Vec<Option<ControlWrites>>>,
}

impl SdeiService {
    /// A service around a new dispatcher.
    pub fn new(config: DispatcherConfig) -> Result<Self, ConfigError> {
        Ok(Self::from_dispatcher(Dispatcher::new(config)?))
    }

    /// A service around an existing (for example restored) dispatcher.
    pub fn from_dispatcher(dispatcher: Dispatcher) -> Self {
        let vcpus = dispatcher.vcpus();
        SdeiService {
            dispatcher: Mutex::new(dispatcher),
            writes: Mutex::new(vec![None; vcpus]),
        }
    }

    /// Locks the dispatcher (for the VMM API: raise, kicks, state capture). A poisoned lock
    /// is recovered: the dispatcher's own state is consistent after every call.
    pub fn dispatcher(&self) -> MutexGuard<'_, Dispatcher> {
        self.dispatcher.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Control registers the last completion call on `vcpu` rewrote, if any (taken once).
    pub fn take_control_writes(&self, vcpu: usize) -> Option<ControlWrites> {
        let mut w = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        w.get_mut(vcpu).and_then(Option::take)
    }

    /// Delivers the highest-priority deliverable event on `vcpu`, if any (call it while the
    /// vCPU is out of `KVM_RUN`).
    pub fn dispatch_pending<R: SdeiRegisters>(
        &self,
        vcpu: usize,
        regs: &mut R,
    ) -> Result<Option<DispatchInfo>, CallError<R::Error>> {
        self.dispatcher().dispatch_pending(vcpu, regs)
    }
}

impl Service for SdeiService {
    fn info(&self) -> ServiceInfo<'_> {
        ServiceInfo {
            name: "sdei",
            identity: None,
            ranges: &SDEI_RANGES,
        }
    }

    fn call(&self, ctx: &CallContext, call: &Call, regs: &mut RegisterView<'_>) -> Outcome {
        let mut view = CallRegisters {
            x0: u64::from(call.id.raw()),
            view: regs,
            writes: ControlWrites::default(),
        };
        let result = self.dispatcher().handle_call(ctx.vcpu_index, &mut view);
        match result {
            Ok(CallOutcome::Completed { .. }) if !view.writes.is_empty() => {
                let mut w = self.writes.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(slot) = w.get_mut(ctx.vcpu_index) {
                    *slot = Some(view.writes);
                }
                Outcome::Handled
            }
            // The dispatcher wrote x0 itself.
            Ok(_) => Outcome::Handled,
            // A register failure or a vCPU index the dispatcher does not know.
            Err(_) => Outcome::from(hypercall_router::SmcccReturn::NotSupported),
        }
    }
}

// The numbers above and the dispatcher's own view of its range must agree.
const _: () = assert!(abi::SMC64_BASE == 0xC400_0020);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EventDecl, EventKind, Priority};
    use crate::regs::RegisterFile;
    use hypercall_router::{Conduit, InMemoryRegisters, RouterBuilder};

    const EV: u32 = 0x0100_0000;

    fn routed(sdei: &SdeiService) -> hypercall_router::Router<&SdeiService, 4, 8> {
        let mut b: RouterBuilder<&SdeiService, 4, 8> = RouterBuilder::new();
        b.register(sdei).unwrap();
        b.build()
    }

    fn call(
        router: &hypercall_router::Router<&SdeiService, 4, 8>,
        vcpu: usize,
        x: &[u64],
    ) -> InMemoryRegisters {
        let mut regs = InMemoryRegisters::default();
        regs.x[..x.len()].copy_from_slice(x);
        router
            .dispatch(&CallContext::new(vcpu, Conduit::Hvc), &mut regs)
            .unwrap();
        regs
    }

    #[test]
    fn smc32_aliases_and_unassigned_numbers_answer_not_supported() {
        let sdei = SdeiService::new(DispatcherConfig::new(1)).unwrap();
        let r = routed(&sdei);
        // An SMC32 call's result is w0, zero-extended.
        assert_eq!(call(&r, 0, &[0x8400_0020]).x[0], 0xFFFF_FFFF);
        assert_eq!(call(&r, 0, &[0xC400_0033]).x[0], u64::MAX);
    }

    #[test]
    fn completion_through_the_router_hands_back_pc_and_pstate() {
        let mut cfg = DispatcherConfig::new(1);
        cfg.events.push(EventDecl {
            number: EV,
            kind: EventKind::Private,
            priority: Priority::Normal,
        });
        let sdei = SdeiService::new(cfg).unwrap();
        let r = routed(&sdei);
        // REGISTER(ev, entry, arg, flags=RM_ANY, affinity), ENABLE, PE_UNMASK.
        assert_eq!(
            call(&r, 0, &[0xC400_0021, EV.into(), 0x1000, 7, 0, 0]).x[0],
            0
        );
        assert_eq!(call(&r, 0, &[0xC400_0022, EV.into()]).x[0], 0);
        call(&r, 0, &[0xC400_002C]);
        sdei.dispatcher().raise(EV, Some(0)).unwrap();
        let mut full = RegisterFile {
            pc: 0x4000,
            pstate: 0x3c5,
            ..Default::default()
        };
        let info = sdei.dispatch_pending(0, &mut full).unwrap().unwrap();
        assert_eq!(info.event, EV);
        assert_eq!(full.pc, 0x1000);
        // EVENT_COMPLETE(status 0) through the router.
        call(&r, 0, &[0xC400_0025, 0]);
        let w = sdei
            .take_control_writes(0)
            .expect("completion rewrites PC and PSTATE");
        assert_eq!(w.pc, Some(0x4000));
        assert_eq!(w.pstate, Some(0x3c5));
        assert!(sdei.take_control_writes(0).is_none());
    }

    /// Records which registers a call read (every read is an ioctl in a VMM).
    #[derive(Default)]
    struct Recording {
        regs: InMemoryRegisters,
        reads: Vec<u8>,
    }

    impl hypercall_router::RegisterFile for Recording {
        type Error = RegisterError;
        fn read_x(&mut self, n: u8) -> Result<u64, RegisterError> {
            self.reads.push(n);
            hypercall_router::RegisterFile::read_x(&mut self.regs, n)
        }
        fn write_x(&mut self, n: u8, value: u64) -> Result<(), RegisterError> {
            hypercall_router::RegisterFile::write_x(&mut self.regs, n, value)
        }
    }

    #[test]
    fn each_call_reads_only_its_own_argument_registers() {
        let sdei = SdeiService::new(DispatcherConfig::new(1)).unwrap();
        let r = routed(&sdei);
        let mut reads_by_call = Vec::new();
        for f in abi::Function::ALL {
            let mut regs = Recording::default();
            regs.regs.x[0] = u64::from(f.id());
            r.dispatch_raw(
                &CallContext::new(0, Conduit::Hvc),
                u64::from(f.id()),
                &mut regs,
            )
            .unwrap();
            let expected: Vec<u8> = (1..=f.arg_count() as u8).collect();
            assert_eq!(regs.reads, expected, "{f:?}");
            reads_by_call.push(regs.reads.len());
        }
        // SDEI_VERSION, the call a guest makes most, reads nothing at all.
        assert_eq!(reads_by_call[0], 0);
    }
}
