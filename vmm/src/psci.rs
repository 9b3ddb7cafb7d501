//! PSCI CPU power management in refvmm, for VMs with SDEI.
//!
//! KVM implements PSCI in the kernel and never tells userspace when a vCPU is turned off or
//! on, so an SDEI dispatcher in userspace cannot apply the power rules firmware applies (TF-A
//! resets a PE's SDEI state when the PE is powered on). With `--sdei`, refvmm therefore asks
//! KVM to forward `CPU_OFF`, `CPU_ON` and `AFFINITY_INFO` (both conventions) through the SMCCC
//! filter and answers them here; every other PSCI call (`PSCI_VERSION`, `PSCI_FEATURES`,
//! `CPU_SUSPEND`, `SYSTEM_OFF`, `SYSTEM_RESET`, ...) stays in KVM.
//!
//! [`PowerTable`] is the power state of every vCPU; [`Psci`] is the hypercall-router service
//! over it. The vCPU threads do what only they can do with their own vCPU (see
//! `crate::sdei`): a vCPU that called `CPU_OFF` sets its KVM MP state to stopped (so
//! `KVM_RUN` sleeps until it is kicked, and snapshots record it as off); a vCPU that
//! `CPU_ON` marked pending resets itself (`KVM_ARM_VCPU_INIT`), starts at the entry point with
//! the context ID in x0, and runs. Both transitions reset the vCPU's SDEI state.

use hypercall_router::{
    Call, CallContext, Convention, FunctionRange, Outcome, Owner, RegisterView, Results, Service,
    ServiceInfo,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// PSCI function number of `CPU_OFF` (SMC32 only).
pub const CPU_OFF: u16 = 2;
/// PSCI function number of `CPU_ON`.
pub const CPU_ON: u16 = 3;
/// PSCI function number of `AFFINITY_INFO`.
pub const AFFINITY_INFO: u16 = 4;

/// PSCI return code: success.
pub const SUCCESS: i64 = 0;
/// PSCI return code: not supported.
pub const NOT_SUPPORTED: i64 = -1;
/// PSCI return code: invalid parameters.
pub const INVALID_PARAMETERS: i64 = -2;
/// PSCI return code: the target is already on.
pub const ALREADY_ON: i64 = -4;
/// PSCI return code: a `CPU_ON` of the target is already under way.
pub const ON_PENDING: i64 = -5;

/// `AFFINITY_INFO` answer: on.
pub const AFF_ON: i64 = 0;
/// `AFFINITY_INFO` answer: off.
pub const AFF_OFF: i64 = 1;
/// `AFFINITY_INFO` answer: on pending.
pub const AFF_ON_PENDING: i64 = 2;

/// The affinity fields of an MPIDR (Aff3, Aff2, Aff1, Aff0), as KVM's PSCI matches them.
pub const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

/// The PSCI calls refvmm answers itself: SMC32 `CPU_OFF`..`AFFINITY_INFO`, SMC64 `CPU_ON` and
/// `AFFINITY_INFO` (`CPU_OFF` has no SMC64 form).
pub const RANGES: [FunctionRange; 2] = [
    FunctionRange::fast(
        Convention::Smc32,
        Owner::StandardSecure,
        CPU_OFF,
        AFFINITY_INFO,
    )
    .with_arg_count(3),
    FunctionRange::fast(
        Convention::Smc64,
        Owner::StandardSecure,
        CPU_ON,
        AFFINITY_INFO,
    )
    .with_arg_count(3),
];

/// The power state of one vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Running (or able to run).
    On,
    /// Turned off (`CPU_OFF`, or a secondary that was never turned on).
    Off,
    /// `CPU_ON` accepted; the vCPU starts at `entry` with `context` in x0 on its next pass.
    OnPending {
        /// Entry point (guest physical address, MMU off).
        entry: u64,
        /// Context ID, passed in x0.
        context: u64,
    },
}

/// The power state of every vCPU of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerTable {
    mpidrs: Vec<u64>,
    power: Vec<Power>,
    /// vCPUs that called `CPU_OFF` and have not stopped themselves in KVM yet.
    stopping: Vec<bool>,
}

impl PowerTable {
    /// vCPUs with these MPIDRs in these power states (`power` is resized to fit, new entries
    /// off).
    pub fn new(mpidrs: &[u64], mut power: Vec<Power>) -> Self {
        power.resize(mpidrs.len(), Power::Off);
        PowerTable {
            mpidrs: mpidrs.iter().map(|m| m & MPIDR_AFFINITY).collect(),
            power,
            stopping: vec![false; mpidrs.len()],
        }
    }

    /// A VM at boot: vCPU 0 on, the secondaries off until `CPU_ON`.
    pub fn at_boot(mpidrs: &[u64]) -> Self {
        let power = (0..mpidrs.len())
            .map(|i| if i == 0 { Power::On } else { Power::Off })
            .collect();
        Self::new(mpidrs, power)
    }

    /// The power state of vCPU `index`.
    pub fn power(&self, index: usize) -> Option<Power> {
        self.power.get(index).copied()
    }

    /// Whether some `CPU_ON` has been accepted but its vCPU has not started yet.
    pub fn any_pending(&self) -> bool {
        self.power
            .iter()
            .any(|p| matches!(p, Power::OnPending { .. }))
    }

    /// `CPU_ON(target, entry, context)`: the PSCI return code, and the vCPU to kick when the
    /// call was accepted.
    pub fn cpu_on(&mut self, target: u64, entry: u64, context: u64) -> (i64, Option<usize>) {
        // Bits outside the affinity fields must be zero (KVM refuses them too).
        if target & !MPIDR_AFFINITY != 0 {
            return (INVALID_PARAMETERS, None);
        }
        let Some(index) = self.mpidrs.iter().position(|m| *m == target) else {
            return (INVALID_PARAMETERS, None);
        };
        match self.power[index] {
            Power::On => (ALREADY_ON, None),
            Power::OnPending { .. } => (ON_PENDING, None),
            Power::Off => {
                self.power[index] = Power::OnPending { entry, context };
                (SUCCESS, Some(index))
            }
        }
    }

    /// `CPU_OFF` from vCPU `caller`.
    pub fn cpu_off(&mut self, caller: usize) -> i64 {
        match self.power.get_mut(caller) {
            Some(p) => {
                *p = Power::Off;
                self.stopping[caller] = true;
                SUCCESS
            }
            None => INVALID_PARAMETERS,
        }
    }

    /// `AFFINITY_INFO(target, lowest_level)`: on if any vCPU of the affinity instance is on,
    /// else on-pending if a `CPU_ON` of one is under way, else off. Levels 0-3 are accepted,
    /// as KVM accepts them; an instance with no vCPU is invalid.
    pub fn affinity_info(&self, target: u64, lowest_level: u64) -> i64 {
        let mask = match lowest_level {
            0 => MPIDR_AFFINITY,
            1 => 0xff_00ff_ff00,
            2 => 0xff_00ff_0000,
            3 => 0xff_0000_0000,
            _ => return INVALID_PARAMETERS,
        };
        let mut matched = self
            .mpidrs
            .iter()
            .zip(&self.power)
            .filter(|(m, _)| *m & mask == target & mask)
            .map(|(_, p)| *p)
            .peekable();
        if matched.peek().is_none() {
            return INVALID_PARAMETERS;
        }
        matched.fold(AFF_OFF, |acc, p| match (acc, p) {
            (AFF_ON, _) | (_, Power::On) => AFF_ON,
            (_, Power::OnPending { .. }) => AFF_ON_PENDING,
            (acc, Power::Off) => acc,
        })
    }

    /// Whether vCPU `index` called `CPU_OFF` and must now stop itself; clears the mark.
    pub fn take_stop(&mut self, index: usize) -> bool {
        self.stopping
            .get_mut(index)
            .map(std::mem::take)
            .unwrap_or(false)
    }

    /// The entry point and context ID of vCPU `index`'s pending `CPU_ON`, marking it on.
    pub fn take_start(&mut self, index: usize) -> Option<(u64, u64)> {
        let p = self.power.get_mut(index)?;
        match *p {
            Power::OnPending { entry, context } => {
                *p = Power::On;
                Some((entry, context))
            }
            _ => None,
        }
    }
}

/// The PSCI service: the power table behind a lock, and a way to kick a vCPU that `CPU_ON`
/// made pending out of `KVM_RUN`.
pub struct Psci {
    table: Mutex<PowerTable>,
    /// Per vCPU: a `CPU_ON` made it pending and it has not started yet (read before every
    /// `KVM_RUN` without the table's lock).
    starting: Box<[AtomicBool]>,
    /// Per vCPU: it called `CPU_OFF` and must stop itself (read after every forwarded call).
    stopping: Box<[AtomicBool]>,
    kick: Box<dyn Fn(usize) + Send + Sync>,
}

impl Psci {
    /// The service over `table`; `kick(index)` must make vCPU `index` leave `KVM_RUN`.
    pub fn new(table: PowerTable, kick: Box<dyn Fn(usize) + Send + Sync>) -> Self {
        let starting = (0..table.power.len())
            .map(|i| AtomicBool::new(matches!(table.power(i), Some(Power::OnPending { .. }))))
            .collect();
        let stopping = (0..table.power.len())
            .map(|_| AtomicBool::new(false))
            .collect();
        Psci {
            table: Mutex::new(table),
            starting,
            stopping,
            kick,
        }
    }

    /// The power table.
    pub fn table(&self) -> MutexGuard<'_, PowerTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the power table (after boot set-up or a restore, before any vCPU runs).
    pub fn replace_table(&self, table: PowerTable) {
        let mut t = self.table();
        for (i, flag) in self.starting.iter().enumerate() {
            flag.store(
                matches!(table.power(i), Some(Power::OnPending { .. })),
                Ordering::Release,
            );
        }
        *t = table;
    }

    /// Whether vCPU `index` called `CPU_OFF` and must now stop itself; clears the mark. One
    /// atomic load, and the swap and the table's lock only after a `CPU_OFF`.
    pub fn take_stop(&self, index: usize) -> bool {
        let marked = self.stopping.get(index).is_some_and(|f| {
            // A load first: the swap (a read-modify-write) only after a CPU_OFF.
            f.load(Ordering::Acquire) && f.swap(false, Ordering::AcqRel)
        });
        marked && self.table().take_stop(index)
    }

    /// Whether vCPU `index` has a `CPU_ON` to act on (one atomic load, no lock).
    pub fn start_pending(&self, index: usize) -> bool {
        self.starting
            .get(index)
            .is_some_and(|f| f.load(Ordering::Acquire))
    }

    /// The entry point and context ID of vCPU `index`'s pending `CPU_ON`, marking it on; takes
    /// the table's lock only when [`Psci::start_pending`] says there is one.
    pub fn take_start(&self, index: usize) -> Option<(u64, u64)> {
        if !self.start_pending(index) {
            return None;
        }
        let mut t = self.table();
        let start = t.take_start(index);
        if let Some(flag) = self.starting.get(index) {
            flag.store(false, Ordering::Release);
        }
        start
    }
}

impl Service for Psci {
    fn info(&self) -> ServiceInfo<'_> {
        ServiceInfo {
            name: "psci",
            identity: None,
            ranges: &RANGES,
        }
    }

    fn call(&self, ctx: &CallContext, call: &Call, _regs: &mut RegisterView<'_>) -> Outcome {
        let (code, kick) = match call.id.number() {
            CPU_OFF if call.convention() == Convention::Smc32 => {
                let code = self.table().cpu_off(ctx.vcpu_index);
                if code == SUCCESS {
                    if let Some(flag) = self.stopping.get(ctx.vcpu_index) {
                        flag.store(true, Ordering::Release);
                    }
                }
                (code, None)
            }
            CPU_ON => self.table().cpu_on(call.arg(1), call.arg(2), call.arg(3)),
            AFFINITY_INFO => (self.table().affinity_info(call.arg(1), call.arg(2)), None),
            _ => (NOT_SUPPORTED, None),
        };
        if let Some(index) = kick {
            if let Some(flag) = self.starting.get(index) {
                flag.store(true, Ordering::Release);
            }
            (self.kick)(index);
        }
        Outcome::Return(Results::value(code as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_router::{Conduit, FunctionId, InMemoryRegisters, RouterBuilder};
    use std::sync::Arc;

    const MPIDRS: [u64; 3] = [0x8000_0000, 0x8000_0001, 0x8000_0100];

    #[test]
    fn cpu_on_starts_an_off_vcpu_once() {
        let mut t = PowerTable::at_boot(&MPIDRS);
        assert_eq!(t.cpu_on(0, 0x1000, 7), (ALREADY_ON, None), "the boot vCPU");
        assert_eq!(t.cpu_on(1, 0x1000, 7), (SUCCESS, Some(1)));
        assert_eq!(t.cpu_on(1, 0x2000, 8), (ON_PENDING, None));
        assert_eq!(t.affinity_info(1, 0), AFF_ON_PENDING);
        assert!(t.any_pending());
        assert_eq!(t.take_start(1), Some((0x1000, 7)));
        assert_eq!(t.take_start(1), None, "started once");
        assert_eq!(t.power(1), Some(Power::On));
        assert_eq!(t.cpu_on(1, 0x1000, 7), (ALREADY_ON, None));
        assert!(!t.any_pending());
    }

    #[test]
    fn cpu_on_refuses_unknown_targets_and_non_affinity_bits() {
        let mut t = PowerTable::at_boot(&MPIDRS);
        assert_eq!(t.cpu_on(2, 0, 0), (INVALID_PARAMETERS, None));
        assert_eq!(t.cpu_on(0x8000_0001, 0, 0), (INVALID_PARAMETERS, None));
        assert_eq!(t.cpu_on(0x100, 0, 0), (SUCCESS, Some(2)), "Aff1 = 1");
    }

    #[test]
    fn cpu_off_marks_the_caller_to_stop_once() {
        let mut t = PowerTable::at_boot(&MPIDRS);
        t.cpu_on(1, 0, 0);
        t.take_start(1);
        assert_eq!(t.cpu_off(1), SUCCESS);
        assert_eq!(t.power(1), Some(Power::Off));
        assert_eq!(t.affinity_info(1, 0), AFF_OFF);
        assert!(t.take_stop(1));
        assert!(!t.take_stop(1));
        assert!(!t.take_stop(0));
        assert_eq!(t.cpu_off(9), INVALID_PARAMETERS);
    }

    #[test]
    fn affinity_info_combines_an_instance_and_checks_its_level() {
        let mut t = PowerTable::at_boot(&MPIDRS);
        assert_eq!(t.affinity_info(0, 0), AFF_ON);
        assert_eq!(t.affinity_info(1, 0), AFF_OFF);
        // Level 1: Aff1 = 0 holds vCPUs 0 and 1 (0 is on); Aff1 = 1 holds vCPU 2 (off).
        assert_eq!(t.affinity_info(0x1, 1), AFF_ON);
        assert_eq!(t.affinity_info(0x100, 1), AFF_OFF);
        t.cpu_on(0x100, 0, 0);
        assert_eq!(t.affinity_info(0x1ff, 1), AFF_ON_PENDING);
        assert_eq!(
            t.affinity_info(0x200, 1),
            INVALID_PARAMETERS,
            "no such cluster"
        );
        assert_eq!(t.affinity_info(0, 4), INVALID_PARAMETERS);
    }

    #[test]
    fn restored_tables_take_the_saved_power_states() {
        let t = PowerTable::new(&MPIDRS, vec![Power::Off, Power::On]);
        assert_eq!(t.power(0), Some(Power::Off));
        assert_eq!(t.power(1), Some(Power::On));
        assert_eq!(t.power(2), Some(Power::Off), "missing entries are off");
        assert_eq!(t.power(3), None);
    }

    fn id(convention: Convention, number: u16) -> u64 {
        u64::from(
            FunctionId::new(
                hypercall_router::CallType::Fast,
                convention,
                Owner::StandardSecure,
                number,
            )
            .raw(),
        )
    }

    #[test]
    fn the_service_answers_through_a_router_and_kicks_the_target() {
        let kicked = Arc::new(Mutex::new(Vec::new()));
        let k = kicked.clone();
        let psci = Psci::new(
            PowerTable::at_boot(&MPIDRS),
            Box::new(move |i| k.lock().unwrap().push(i)),
        );
        let mut b: RouterBuilder<&Psci, 2, 4> = RouterBuilder::new();
        b.register(&psci).unwrap();
        let router = b.build();
        let call = |vcpu: usize, x: &[u64]| {
            let mut regs = InMemoryRegisters::default();
            regs.x[..x.len()].copy_from_slice(x);
            router
                .dispatch(&CallContext::new(vcpu, Conduit::Hvc), &mut regs)
                .unwrap();
            regs.x[0]
        };
        assert_eq!(0x8400_0003, id(Convention::Smc32, CPU_ON));
        assert_eq!(call(0, &[id(Convention::Smc64, CPU_ON), 1, 0x4000, 9]), 0);
        assert_eq!(*kicked.lock().unwrap(), [1]);
        // SMC32 results are 32-bit: ON_PENDING as w0.
        assert_eq!(
            call(0, &[id(Convention::Smc32, CPU_ON), 1, 0x4000, 9]),
            ON_PENDING as u32 as u64
        );
        assert_eq!(
            call(0, &[id(Convention::Smc64, AFFINITY_INFO), 1, 0]),
            AFF_ON_PENDING as u64
        );
        assert!(psci.start_pending(1) && !psci.start_pending(0));
        assert_eq!(psci.take_start(1), Some((0x4000, 9)));
        assert!(!psci.start_pending(1));
        assert_eq!(psci.take_start(1), None);
        assert!(!psci.take_stop(1));
        assert_eq!(call(1, &[id(Convention::Smc32, CPU_OFF)]), 0);
        assert!(psci.take_stop(1));
        assert!(!psci.take_stop(1));
        assert_eq!(
            call(0, &[id(Convention::Smc32, AFFINITY_INFO), 1, 0]),
            AFF_OFF as u64
        );
        assert_eq!(
            *kicked.lock().unwrap(),
            [1],
            "only an accepted CPU_ON kicks"
        );
        assert!(router.is_routed(FunctionId::decode(0x8400_0002).unwrap()));
        assert!(
            !router.is_routed(FunctionId::decode(0x8400_0000).unwrap()),
            "PSCI_VERSION stays in KVM"
        );
        assert!(
            !router.is_routed(FunctionId::decode(0xC400_0002).unwrap()),
            "no SMC64 CPU_OFF"
        );
    }
}
