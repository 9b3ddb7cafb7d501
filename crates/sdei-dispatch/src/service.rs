//! The dispatcher as a [`hypercall_router::Service`] (feature `router`).
//!
//! The router hands a service the calling vCPU's registers: `x0`–`x17` and the control
//! registers. [`SdeiService`] runs every SDEI call against that view, so the completion calls
//! rewrite PC and PSTATE (and, for COMPLETE_AND_RESUME, `ELR_EL1` and `SPSR_EL1`) themselves:
//! when the router returns, the vCPU is ready to run. Delivery (which starts a handler) is not
//! a call: the VMM runs [`SdeiService::dispatch_pending`] on a vCPU that is out of `KVM_RUN`,
//! when [`SdeiService::has_pending`] says so.
//!
//! # Kicks
//!
//! A call on one vCPU, or a VMM request, can leave an event deliverable on another vCPU (an
//! `EVENT_SIGNAL`, a raise, an unmask or routing change making a shared event deliverable
//! elsewhere). That vCPU must be kicked out of `KVM_RUN` to take it. The service does it: it
//! is built with a [`Kick`], and every access to the dispatcher through it (a routed call,
//! [`SdeiService::dispatcher`], [`SdeiService::raise`], a delivery) ends by kicking each vCPU
//! whose "event deliverable" state has just turned on — except the calling vCPU of a routed
//! call, which is already out of `KVM_RUN`. No VMM can miss one.
//!
//! The same step keeps one flag per vCPU that [`SdeiService::has_pending`] reads without the
//! dispatcher's lock, so a vCPU's check before each `KVM_RUN` costs one atomic load.
//!
//! ```
//! use hypercall_router::{CallContext, Conduit, InMemoryRegisters, RouterBuilder};
//! use sdei_dispatch::{DispatcherConfig, SdeiService};
//!
//! let sdei = SdeiService::new(DispatcherConfig::new(1), |_vcpu: usize| {}).unwrap();
//! let mut builder: RouterBuilder<&SdeiService, 4, 8> = RouterBuilder::new();
//! builder.register(&sdei).unwrap();
//! let router = builder.build();
//!
//! // SDEI_VERSION from vCPU 0.
//! let mut regs = InMemoryRegisters::with_x0(0xC400_0020);
//! router.dispatch(&CallContext::new(0, Conduit::Hvc), &mut regs).unwrap();
//! assert_eq!(regs.x[0] >> 48, 1); // major version 1
//! assert!(!sdei.has_pending(0));
//! ```

use crate::abi;
use crate::config::{ConfigError, DispatcherConfig};
use crate::delivery::DispatchInfo;
use crate::dispatcher::{CallError, Dispatcher};
use crate::regs::{ControlRegister, RegisterFile};
use crate::vmm::{RaiseOutcome, VmmError};
use hypercall_router::{
    Call, CallContext, Convention, FunctionRange, Outcome, Owner, RegisterError, RegisterView,
    Service, ServiceInfo,
};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The function numbers the service answers: SDEI_VERSION (0x20) to SDEI_SHARED_RESET (0x32),
/// SMC64 fast calls of the Standard Secure Service owner. The SMC32 aliases and 0x33–0x3F are
/// not registered, so a router answers them NOT_SUPPORTED. The router reads no argument
/// registers for the service: the dispatcher reads, through the register view, just the ones
/// each call has ([`Function::arg_count`](crate::abi::Function::arg_count)).
pub const SDEI_RANGES: [FunctionRange; 1] =
    [FunctionRange::fast(Convention::Smc64, Owner::StandardSecure, 0x20, 0x32).with_arg_count(0)];

/// Takes a vCPU out of `KVM_RUN` (for example by signalling its thread with `immediate_exit`
/// armed) so that it can take an event. Called with the dispatcher's lock held: it must not
/// call back into the [`SdeiService`].
pub trait Kick: Send + Sync {
    /// Kicks vCPU `vcpu`.
    fn kick(&self, vcpu: usize);
}

impl<F: Fn(usize) + Send + Sync> Kick for F {
    fn kick(&self, vcpu: usize) {
        self(vcpu)
    }
}

/// Registers as seen during a routed call: x0 is the routed (masked) function ID, everything
/// else is the router's view.
struct CallRegisters<'a, 'v> {
    x0: u64,
    view: &'a mut RegisterView<'v>,
}

impl RegisterFile for CallRegisters<'_, '_> {
    type Error = RegisterError;

    fn read_x(&mut self, n: u8) -> Result<u64, RegisterError> {
        if n == 0 {
            return Ok(self.x0);
        }
        self.view.read_x(n)
    }

    fn write_x(&mut self, n: u8, value: u64) -> Result<(), RegisterError> {
        self.view.write_x(n, value)
    }

    fn read_control(&mut self, reg: ControlRegister) -> Result<u64, RegisterError> {
        self.view.read_control(reg)
    }

    fn write_control(&mut self, reg: ControlRegister, value: u64) -> Result<(), RegisterError> {
        self.view.write_control(reg, value)
    }
}

/// An SDEI dispatcher behind a lock, plugged into a router, that kicks vCPUs as events
/// become deliverable on them.
pub struct SdeiService {
    dispatcher: Mutex<Dispatcher>,
    /// Per vCPU: an event was deliverable when the dispatcher was last released.
    pending: Box<[AtomicBool]>,
    kick: Box<dyn Kick>,
}

impl SdeiService {
    /// A service around a new dispatcher; `kick` takes a vCPU out of `KVM_RUN`.
    pub fn new(config: DispatcherConfig, kick: impl Kick + 'static) -> Result<Self, ConfigError> {
        Ok(Self::from_dispatcher(Dispatcher::new(config)?, kick))
    }

    /// A service around an existing (for example restored) dispatcher. Events already
    /// deliverable in it are kicked at once.
    pub fn from_dispatcher(dispatcher: Dispatcher, kick: impl Kick + 'static) -> Self {
        let vcpus = dispatcher.vcpus();
        let service = SdeiService {
            dispatcher: Mutex::new(dispatcher),
            pending: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            kick: Box::new(kick),
        };
        drop(service.dispatcher());
        service
    }

    /// Number of vCPUs.
    pub fn vcpus(&self) -> usize {
        self.pending.len()
    }

    /// Locks the dispatcher (for the VMM: raise, reset, state capture). When the guard is
    /// dropped, vCPUs that now have an event to take are kicked. A poisoned lock is recovered:
    /// the dispatcher's own state is consistent after every call.
    pub fn dispatcher(&self) -> DispatcherGuard<'_> {
        self.lock(None)
    }

    fn lock(&self, caller: Option<usize>) -> DispatcherGuard<'_> {
        DispatcherGuard {
            guard: self.dispatcher.lock().unwrap_or_else(|p| p.into_inner()),
            pending: &self.pending,
            kick: &*self.kick,
            caller,
        }
    }

    /// Whether vCPU `vcpu` had an event to take when the dispatcher was last released
    /// (no lock taken; `false` for an unknown vCPU). A vCPU checks this before each
    /// `KVM_RUN`; the kick covers an event that becomes deliverable after the check.
    pub fn has_pending(&self, vcpu: usize) -> bool {
        self.pending
            .get(vcpu)
            .is_some_and(|p| p.load(Ordering::Acquire))
    }

    /// Raises event `number` ([`Dispatcher::raise`]) and kicks where it became deliverable.
    pub fn raise(&self, number: u32, target: Option<usize>) -> Result<RaiseOutcome, VmmError> {
        self.dispatcher().raise(number, target)
    }

    /// Delivers the highest-priority deliverable event on `vcpu`, if any. Takes no lock when
    /// [`SdeiService::has_pending`] is false.
    ///
    /// Call it while the vCPU is out of `KVM_RUN` with no MMIO access open: KVM finishes an
    /// MMIO exit (loads the value, moves the PC past the instruction) inside the next
    /// `KVM_RUN`, so after an MMIO exit run the vCPU once with `immediate_exit` set first, or
    /// the late completion lands on the handler's registers.
    pub fn dispatch_pending<R: RegisterFile>(
        &self,
        vcpu: usize,
        regs: &mut R,
    ) -> Result<Option<DispatchInfo>, CallError<R::Error>> {
        if vcpu >= self.vcpus() {
            return Err(CallError::InvalidVcpu(vcpu));
        }
        if !self.has_pending(vcpu) {
            return Ok(None);
        }
        let result = self.lock(Some(vcpu)).dispatch_pending(vcpu, regs);
        if result.is_err() {
            // The event is still deliverable, but this vCPU could not take it now: drop its
            // flag so that the next access through the service sees it rise and kicks again,
            // instead of the flag staying set with nobody kicking.
            if let Some(flag) = self.pending.get(vcpu) {
                flag.store(false, Ordering::Release);
            }
        }
        result
    }
}

/// The locked dispatcher. Dropping it refreshes each vCPU's [`SdeiService::has_pending`] flag
/// and kicks the vCPUs whose flag turned on.
pub struct DispatcherGuard<'a> {
    guard: MutexGuard<'a, Dispatcher>,
    pending: &'a [AtomicBool],
    kick: &'a dyn Kick,
    /// The vCPU whose call or delivery this is: out of `KVM_RUN` already, never kicked.
    caller: Option<usize>,
}

impl Deref for DispatcherGuard<'_> {
    type Target = Dispatcher;

    fn deref(&self) -> &Dispatcher {
        &self.guard
    }
}

impl DerefMut for DispatcherGuard<'_> {
    fn deref_mut(&mut self) -> &mut Dispatcher {
        &mut self.guard
    }
}

impl Drop for DispatcherGuard<'_> {
    fn drop(&mut self) {
        for (vcpu, flag) in self.pending.iter().enumerate() {
            let now = self.guard.pending_dispatch(vcpu);
            let was = flag.swap(now, Ordering::AcqRel);
            if now && !was && self.caller != Some(vcpu) {
                self.kick.kick(vcpu);
            }
        }
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
        };
        let result = self
            .lock(Some(ctx.vcpu_index))
            .handle_call(ctx.vcpu_index, &mut view);
        match result {
            // The dispatcher wrote x0 (and, completing a handler, the rest) itself.
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
    use crate::regs::InMemoryRegisters;
    use hypercall_router::{Conduit, RouterBuilder};
    use std::sync::Arc;

    const EV: u32 = 0x0100_0000;

    /// Records every kick.
    #[derive(Default)]
    struct Kicks(Mutex<Vec<usize>>);

    impl Kicks {
        fn take(&self) -> Vec<usize> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    impl Kick for Arc<Kicks> {
        fn kick(&self, vcpu: usize) {
            self.0.lock().unwrap().push(vcpu);
        }
    }

    fn private_event(vcpus: usize) -> DispatcherConfig {
        let mut cfg = DispatcherConfig::new(vcpus);
        cfg.events.push(EventDecl {
            number: EV,
            kind: EventKind::Private,
            priority: Priority::Normal,
        });
        cfg
    }

    /// REGISTER(ev, entry 0x1000, arg 7, RM_ANY), ENABLE, PE_UNMASK on `vcpu`.
    fn register_and_unmask(r: &hypercall_router::Router<&SdeiService, 4, 8>, vcpu: usize) {
        assert_eq!(
            call(r, vcpu, &[0xC400_0021, EV.into(), 0x1000, 7, 0, 0]).x[0],
            0
        );
        assert_eq!(call(r, vcpu, &[0xC400_0022, EV.into()]).x[0], 0);
        assert_eq!(call(r, vcpu, &[0xC400_002C]).x[0], 0);
    }

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
        let sdei = SdeiService::new(DispatcherConfig::new(1), |_: usize| {}).unwrap();
        let r = routed(&sdei);
        // An SMC32 call's result is w0, zero-extended.
        assert_eq!(call(&r, 0, &[0x8400_0020]).x[0], 0xFFFF_FFFF);
        assert_eq!(call(&r, 0, &[0xC400_0033]).x[0], u64::MAX);
    }

    #[test]
    fn completion_through_the_router_puts_pc_and_pstate_back_itself() {
        let sdei = SdeiService::new(private_event(1), |_: usize| {}).unwrap();
        let r = routed(&sdei);
        register_and_unmask(&r, 0);
        sdei.raise(EV, Some(0)).unwrap();
        assert!(sdei.has_pending(0));
        let mut regs = InMemoryRegisters {
            pc: 0x4000,
            pstate: 0x3c5,
            ..Default::default()
        };
        let info = sdei.dispatch_pending(0, &mut regs).unwrap().unwrap();
        assert_eq!(info.event, EV);
        assert_eq!(regs.pc, 0x1000);
        assert!(!sdei.has_pending(0));

        // EVENT_COMPLETE(status 0) through the router, on the same registers.
        regs.load_call(0xC400_0025, &[0]);
        r.dispatch(&CallContext::new(0, Conduit::Hvc), &mut regs)
            .unwrap();

        assert_eq!((regs.pc, regs.pstate), (0x4000, 0x3c5));
    }

    #[test]
    fn an_event_signal_kicks_the_signalled_vcpu_and_not_the_caller() {
        let kicks = Arc::new(Kicks::default());
        let sdei = SdeiService::new(private_event(2), kicks.clone()).unwrap();
        let r = routed(&sdei);
        // Event 0 is the software-signalled event every SDEI implementation has.
        for vcpu in 0..2 {
            assert_eq!(call(&r, vcpu, &[0xC400_0021, 0, 0x2000, 0, 0, 0]).x[0], 0);
            assert_eq!(call(&r, vcpu, &[0xC400_0022, 0]).x[0], 0);
            assert_eq!(call(&r, vcpu, &[0xC400_002C]).x[0], 0);
        }
        assert_eq!(kicks.take(), Vec::<usize>::new());

        // EVENT_SIGNAL(0, MPIDR of vCPU 1) from vCPU 0.
        let mpidr1 = crate::config::default_mpidr(1);
        assert_eq!(call(&r, 0, &[0xC400_002F, 0, mpidr1]).x[0], 0);

        assert_eq!(kicks.take(), [1]);
        assert!(sdei.has_pending(1) && !sdei.has_pending(0));
        // Still pending: a second look kicks nobody again.
        call(&r, 0, &[0xC400_0020]);
        assert_eq!(kicks.take(), Vec::<usize>::new());
        // A signal to itself: pending at once, no kick (the caller is out of KVM_RUN).
        let mpidr0 = crate::config::default_mpidr(0);
        assert_eq!(call(&r, 0, &[0xC400_002F, 0, mpidr0]).x[0], 0);
        assert!(sdei.has_pending(0));
        assert_eq!(kicks.take(), Vec::<usize>::new());
    }

    #[test]
    fn a_raise_from_the_vmm_kicks_its_target_once() {
        let kicks = Arc::new(Kicks::default());
        let sdei = SdeiService::new(private_event(2), kicks.clone()).unwrap();
        let r = routed(&sdei);
        register_and_unmask(&r, 1);

        assert_eq!(sdei.raise(EV, Some(1)), Ok(RaiseOutcome::Pending));
        assert_eq!(sdei.raise(EV, Some(1)), Ok(RaiseOutcome::AlreadyPending));
        assert_eq!(sdei.raise(EV, Some(0)), Ok(RaiseOutcome::NotRegistered));

        assert_eq!(kicks.take(), [1]);
        assert!(sdei.has_pending(1));
        assert!(!sdei.has_pending(0) && !sdei.has_pending(7));
        // Masking vCPU 1 takes the event out of reach: the flag drops with it. (PE_MASK
        // answers 1: the PE was unmasked.)
        assert_eq!(call(&r, 1, &[0xC400_002B]).x[0], 1);
        assert!(!sdei.has_pending(1));
    }

    /// Fails every PC write.
    struct NoPc(InMemoryRegisters);

    impl RegisterFile for NoPc {
        type Error = RegisterError;
        fn read_x(&mut self, n: u8) -> Result<u64, RegisterError> {
            self.0.read_x(n)
        }
        fn write_x(&mut self, n: u8, value: u64) -> Result<(), RegisterError> {
            self.0.write_x(n, value)
        }
        fn read_control(&mut self, reg: ControlRegister) -> Result<u64, RegisterError> {
            self.0.read_control(reg)
        }
        fn write_control(&mut self, reg: ControlRegister, value: u64) -> Result<(), RegisterError> {
            match reg {
                ControlRegister::Pc => Err(RegisterError::Backend),
                _ => self.0.write_control(reg, value),
            }
        }
    }

    #[test]
    fn a_failed_delivery_is_kicked_again_by_the_next_access() {
        let kicks = Arc::new(Kicks::default());
        let sdei = SdeiService::new(private_event(2), kicks.clone()).unwrap();
        let r = routed(&sdei);
        register_and_unmask(&r, 1);
        sdei.raise(EV, Some(1)).unwrap();
        assert_eq!(kicks.take(), [1]);

        assert!(sdei
            .dispatch_pending(1, &mut NoPc(InMemoryRegisters::default()))
            .is_err());

        // Any later access (here a call from vCPU 0) kicks vCPU 1 again.
        call(&r, 0, &[0xC400_0020]);
        assert_eq!(kicks.take(), [1]);
        let mut regs = InMemoryRegisters::default();
        assert!(sdei.dispatch_pending(1, &mut regs).unwrap().is_some());
        assert_eq!(regs.pc, 0x1000);
    }

    #[test]
    fn a_restored_dispatcher_with_a_deliverable_event_is_kicked_at_once() {
        let sdei = SdeiService::new(private_event(1), |_: usize| {}).unwrap();
        let r = routed(&sdei);
        register_and_unmask(&r, 0);
        sdei.raise(EV, Some(0)).unwrap();
        let state = sdei.dispatcher().state();
        let restored = Dispatcher::restore(private_event(1), state).unwrap();

        let kicks = Arc::new(Kicks::default());
        let again = SdeiService::from_dispatcher(restored, kicks.clone());

        assert_eq!(kicks.take(), [0]);
        assert!(again.has_pending(0));
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
        fn read_control(&mut self, reg: ControlRegister) -> Result<u64, RegisterError> {
            self.regs.read_control(reg)
        }
        fn write_control(&mut self, reg: ControlRegister, value: u64) -> Result<(), RegisterError> {
            self.regs.write_control(reg, value)
        }
    }

    #[test]
    fn each_call_reads_only_its_own_argument_registers() {
        let sdei = SdeiService::new(DispatcherConfig::new(1), |_: usize| {}).unwrap();
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
