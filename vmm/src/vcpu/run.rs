//! vCPUs: creation and initialisation (PSCI 0.2, secondaries powered off), boot registers,
//! and the run loop that turns KVM exits into device accesses, hypercalls and VM exits.

use crate::config::CpuFeatures;
use crate::devices::MmioBus;
use crate::regs;
use kvm_bindings::{
    kvm_vcpu_init, KVM_ARM_VCPU_PMU_V3, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2,
    KVM_ARM_VCPU_PTRAUTH_ADDRESS, KVM_ARM_VCPU_PTRAUTH_GENERIC, KVM_ARM_VCPU_SVE,
    KVM_EXIT_ARM_NISV, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::{Arc, Mutex};

/// Errors creating or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM refused to create the vCPU.
    #[error("Cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// KVM has no preferred CPU target.
    #[error("KVM reports no preferred vCPU target")]
    PreferredTarget(#[source] kvm_ioctls::Error),
    /// `KVM_ARM_VCPU_INIT` failed.
    #[error("Cannot initialise vCPU {0}")]
    Init(u8, #[source] kvm_ioctls::Error),
    /// A register access failed.
    #[error("Cannot access register {reg:#x} of vCPU {index}")]
    Reg {
        /// vCPU index.
        index: u8,
        /// ONE_REG id.
        reg: u64,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// `KVM_RUN` failed for a reason other than a signal.
    #[error("KVM_RUN failed on vCPU {0}")]
    Run(u8, #[source] kvm_ioctls::Error),
}

/// Result of vCPU operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a vCPU stopped running for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuStop {
    /// PSCI SYSTEM_OFF.
    Poweroff,
    /// PSCI SYSTEM_RESET.
    Reset,
    /// A crash the guest reported, or KVM could not run the guest any more.
    Crash,
    /// The operator stopped the VM (API `quit`).
    Requested,
}

/// Pausing: vCPU threads park at a checkpoint between `KVM_RUN`s, saving their state for a
/// snapshot on the way in.
pub struct VcpuControl {
    inner: Mutex<ControlState>,
    cv: std::sync::Condvar,
    /// Set (under the lock) while the VM is paused or stopped: the checkpoint each vCPU
    /// passes before every `KVM_RUN` costs one atomic load when neither is asked.
    attention: std::sync::atomic::AtomicBool,
}

struct ControlState {
    pause: bool,
    /// Set once the VM has stopped: every vCPU thread returns at its next checkpoint.
    stop: bool,
    parked: usize,
    saved: Vec<Option<std::result::Result<super::state::VcpuState, String>>>,
}

/// How long a pause waits for every vCPU to park.
const PAUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl VcpuControl {
    /// Control for `n` vCPUs, running.
    pub fn new(n: usize) -> Self {
        VcpuControl {
            inner: Mutex::new(ControlState {
                pause: false,
                stop: false,
                parked: 0,
                saved: vec![None; n],
            }),
            cv: std::sync::Condvar::new(),
            attention: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by vCPU `index`'s thread out of `KVM_RUN`: parks while the VM is paused;
    /// returns whether the thread must stop (the VM has stopped, see [`VcpuControl::stop`]).
    #[must_use]
    pub fn checkpoint(&self, vcpu: &Vcpu) -> bool {
        use crate::persist::Persist;
        // A pause or stop sets the flag before it kicks; the kick makes the next KVM_RUN
        // return at once, so a load missed here is seen on the next pass.
        if !self.attention.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let index = usize::from(vcpu.index);
        let mut g = self.lock();
        if g.stop {
            return true;
        }
        if !g.pause {
            return false;
        }
        let state = vcpu.save().map_err(|e| crate::error_chain(&e));
        if let Some(slot) = g.saved.get_mut(index) {
            *slot = Some(state);
        }
        g.parked += 1;
        self.cv.notify_all();
        while g.pause && !g.stop {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.parked -= 1;
        self.cv.notify_all();
        g.stop
    }

    /// Makes every vCPU thread return at its next checkpoint, paused or not, and kicks them
    /// out of `KVM_RUN` (a vCPU that is off sleeps there); for the end of the VM.
    pub fn stop(&self, kicker: &Kicker) {
        let n = {
            let mut g = self.lock();
            g.stop = true;
            self.attention
                .store(true, std::sync::atomic::Ordering::Release);
            g.saved.len()
        };
        self.cv.notify_all();
        for i in 0..n {
            kicker.kick(i);
        }
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.lock().pause
    }

    /// Pauses every vCPU (kicking them out of `KVM_RUN`) and returns their saved states.
    pub fn pause(
        &self,
        kicker: &Kicker,
    ) -> std::result::Result<Vec<super::state::VcpuState>, String> {
        let n = {
            let mut g = self.lock();
            if !g.pause {
                // Wait for threads still leaving the previous pause.
                while g.parked != 0 {
                    g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                g.pause = true;
                self.attention
                    .store(true, std::sync::atomic::Ordering::Release);
                g.saved.iter_mut().for_each(|s| *s = None);
            }
            g.saved.len()
        };
        for i in 0..n {
            kicker.kick(i);
        }
        let deadline = std::time::Instant::now() + PAUSE_TIMEOUT;
        let mut g = self.lock();
        while g.parked < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(format!("only {} of {n} vCPUs paused in time", g.parked));
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        g.saved
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Some(Ok(st)) => Ok(st.clone()),
                Some(Err(e)) => Err(e.clone()),
                None => Err(format!("vCPU {i} saved no state")),
            })
            .collect()
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        let mut g = self.lock();
        g.pause = false;
        self.attention
            .store(g.stop, std::sync::atomic::Ordering::Release);
        drop(g);
        self.cv.notify_all();
    }
}

/// Handles a forwarded hypercall (`KVM_EXIT_HYPERCALL`) on a vCPU, and gets a look at the
/// vCPU before each `KVM_RUN` (to deliver events by rewriting registers).
pub trait HypercallHandler: Send + Sync {
    /// `nr` is the raw function ID, `flags` KVM's exit flags; the handler reads and writes the
    /// vCPU's registers itself and must always write x0.
    fn handle(&self, vcpu: &VcpuFd, index: u8, nr: u64, flags: u64);

    /// Called with the vCPU out of `KVM_RUN`, right before it enters again.
    fn before_run(&self, vcpu: &VcpuFd, index: u8);

    /// Whether `before_run` is about to rewrite vCPU `index`'s registers (then an MMIO access
    /// still open from the last exit is completed first).
    fn wants_registers(&self, index: u8) -> bool;
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the kick signal's handler (process-wide, once before vCPU threads start).
pub fn install_kick_handler() -> std::io::Result<()> {
    crate::sys::kick::install_handler(kick_signal())
}

/// Kicks vCPU threads out of `KVM_RUN`.
///
/// Each vCPU thread registers its own thread ID when it starts ([`Kicker::register_current`])
/// and unregisters when it returns; a thread is signalled (`tgkill`) only while registered,
/// with the registry locked, so a kick never reaches a thread ID the kernel may have reused.
pub struct Kicker {
    threads: Mutex<Vec<Option<libc::pid_t>>>,
}

impl Kicker {
    /// A kicker for `n` vCPUs, none registered yet.
    pub fn new(n: usize) -> Self {
        Kicker {
            threads: Mutex::new(vec![None; n]),
        }
    }

    /// Records the calling thread as vCPU `index`'s, until the guard it returns is dropped
    /// (when the thread returns or unwinds). A kick before this is lost, so call it before
    /// the thread first looks for work.
    pub fn register_current(self: &Arc<Self>, index: usize) -> KickGuard {
        if let Some(slot) = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(index)
        {
            *slot = Some(crate::sys::gettid());
        }
        KickGuard {
            kicker: self.clone(),
            index,
        }
    }

    /// Forgets vCPU `index`'s thread; called by that thread before it exits.
    pub fn unregister(&self, index: usize) {
        if let Some(slot) = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(index)
        {
            *slot = None;
        }
    }

    /// Sends the kick signal to vCPU `index`'s thread, if it is still running.
    pub fn kick(&self, index: usize) {
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tid) = threads.get(index).copied().flatten() {
            // Registered: the thread has not passed `unregister` yet (which needs the lock
            // held here), so the thread ID is still its own.
            if let Err(e) = crate::sys::tgkill(tid, kick_signal()) {
                log::warn!("cannot kick vCPU {index}: {e}");
            }
        }
    }
}

/// Unregisters a vCPU thread from its [`Kicker`] when dropped.
pub struct KickGuard {
    kicker: Arc<Kicker>,
    index: usize,
}

impl Drop for KickGuard {
    fn drop(&mut self) {
        self.kicker.unregister(self.index);
    }
}

/// One vCPU.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    mpidr: u64,
    /// The `KVM_ARM_VCPU_INIT` argument, without `POWER_OFF` (a reset repeats it).
    init: kvm_vcpu_init,
}

impl Vcpu {
    /// Creates and initialises vCPU `index` with features from `base` (KVM's preferred target
    /// plus any feature bits the VM asks for); vCPU 0 starts running, the others are powered
    /// off until PSCI CPU_ON.
    pub fn new(fd: VcpuFd, index: u8, base: &kvm_vcpu_init, features: CpuFeatures) -> Result<Self> {
        let mut init = *base;
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        if index > 0 {
            init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        if features.pmu {
            init.features[0] |= 1 << KVM_ARM_VCPU_PMU_V3;
        }
        if features.sve {
            init.features[0] |= 1 << KVM_ARM_VCPU_SVE;
        }
        if features.pauth {
            init.features[0] |=
                (1 << KVM_ARM_VCPU_PTRAUTH_ADDRESS) | (1 << KVM_ARM_VCPU_PTRAUTH_GENERIC);
        }
        fd.vcpu_init(&init).map_err(|e| Error::Init(index, e))?;
        let mut reset_init = init;
        reset_init.features[0] &= !(1 << KVM_ARM_VCPU_POWER_OFF);
        if features.sve {
            // Keep every vector length KVM offers (the default set) and finalize.
            let what = KVM_ARM_VCPU_SVE as i32;
            fd.vcpu_finalize(&what).map_err(|e| Error::Init(index, e))?;
        }
        let mut v = Vcpu {
            fd,
            index,
            mpidr: 0,
            init: reset_init,
        };
        v.mpidr = v.get(regs::MPIDR_EL1)?;
        Ok(v)
    }

    /// KVM's preferred target for this host, the base of every vCPU's init.
    pub fn preferred_init(vm: &VmFd) -> Result<kvm_vcpu_init> {
        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .map_err(Error::PreferredTarget)?;
        Ok(init)
    }

    /// Reads a 64-bit register.
    pub fn get(&self, reg: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.fd
            .get_one_reg(reg, &mut b)
            .map_err(|source| Error::Reg {
                index: self.index,
                reg,
                source,
            })?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a 64-bit register.
    pub fn set(&self, reg: u64, v: u64) -> Result<()> {
        self.fd
            .set_one_reg(reg, &v.to_le_bytes())
            .map(|_| ())
            .map_err(|source| Error::Reg {
                index: self.index,
                reg,
                source,
            })
    }

    /// Wires the PMU's overflow interrupt to `ppi` and initialises it (after the GIC exists).
    pub fn init_pmu(&self, ppi: u32) -> Result<()> {
        let intid: i32 = 16 + ppi as i32;
        let irq = kvm_bindings::kvm_device_attr {
            group: kvm_bindings::KVM_ARM_VCPU_PMU_V3_CTRL,
            attr: u64::from(kvm_bindings::KVM_ARM_VCPU_PMU_V3_IRQ),
            addr: &intid as *const i32 as u64,
            flags: 0,
        };
        self.fd
            .set_device_attr(&irq)
            .map_err(|e| Error::Init(self.index, e))?;
        let init = kvm_bindings::kvm_device_attr {
            group: kvm_bindings::KVM_ARM_VCPU_PMU_V3_CTRL,
            attr: u64::from(kvm_bindings::KVM_ARM_VCPU_PMU_V3_INIT),
            addr: 0,
            flags: 0,
        };
        self.fd
            .set_device_attr(&init)
            .map_err(|e| Error::Init(self.index, e))
    }

    /// The `KVM_ARM_VCPU_INIT` argument that resets this vCPU (PSCI `CPU_ON`).
    pub fn reset_init(&self) -> kvm_vcpu_init {
        self.init
    }

    /// MPIDR_EL1 as KVM assigned it.
    pub fn mpidr(&self) -> u64 {
        self.mpidr
    }

    /// The vCPU's index (0 is the boot vCPU).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The vCPU's file descriptor.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Sets the boot registers of the boot CPU: PC at the kernel entry, x0 the device tree.
    pub fn set_boot_regs(&self, entry: u64, fdt: u64) -> Result<()> {
        self.set(regs::PSTATE, regs::PSTATE_EL1H_DAIF)?;
        self.set(regs::PC, entry)?;
        self.set(regs::X0, fdt)
    }

    /// Runs until the guest stops the VM.
    pub fn run(
        &mut self,
        bus: &MmioBus,
        hypercalls: Option<&Arc<dyn HypercallHandler>>,
        control: &VcpuControl,
    ) -> Result<VcpuStop> {
        self.run_loop(bus, hypercalls, control)
    }

    /// Lets KVM finish the last exit's MMIO access without entering the guest: `KVM_RUN` with
    /// `immediate_exit` set completes it, commits the PC and returns EINTR.
    fn complete_open_exit(&mut self) -> Result<()> {
        self.fd.set_kvm_immediate_exit(1);
        let res = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match res {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(()),
            Err(e) => Err(Error::Run(self.index, e)),
            Ok(()) => {
                log::warn!(
                    "vCPU {}: KVM_RUN with immediate_exit returned an exit",
                    self.index
                );
                Ok(())
            }
        }
    }

    fn run_loop(
        &mut self,
        bus: &MmioBus,
        hypercalls: Option<&Arc<dyn HypercallHandler>>,
        control: &VcpuControl,
    ) -> Result<VcpuStop> {
        // After an MMIO exit, KVM finishes the access (the loaded value into its register, the
        // PC past the instruction) only inside the next KVM_RUN. Registers read or rewritten
        // before that (a snapshot, an SDEI delivery) would see the access half done, and the
        // late completion would then land on the rewritten state.
        // So with an access open, nothing touches the registers: what wants them now gets the
        // access completed first; what starts wanting them later has kicked the vCPU, and the
        // kick makes the next KVM_RUN complete the access and return at once.
        let mut mmio_open = false;
        loop {
            if mmio_open
                && (control.is_paused()
                    || hypercalls.is_some_and(|h| h.wants_registers(self.index)))
            {
                self.complete_open_exit()?;
                mmio_open = false;
            }
            if !mmio_open {
                if control.checkpoint(self) {
                    return Ok(VcpuStop::Requested);
                }
                if let Some(h) = hypercalls {
                    h.before_run(&self.fd, self.index);
                }
            }
            mmio_open = false;
            let exit = match crate::sys::kick::run(&mut self.fd) {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) => return Err(Error::Run(self.index, e)),
            };
            match exit {
                VcpuExit::MmioRead(addr, data) => {
                    bus.read(addr, data);
                    mmio_open = true;
                }
                VcpuExit::MmioWrite(addr, data) => {
                    bus.write(addr, data);
                    mmio_open = true;
                }
                VcpuExit::SystemEvent(kind, _) => {
                    return Ok(match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::Poweroff,
                        KVM_SYSTEM_EVENT_RESET => VcpuStop::Reset,
                        KVM_SYSTEM_EVENT_CRASH => VcpuStop::Crash,
                        other => {
                            crate::guest_log!(
                                log::Level::Warn,
                                "vCPU {}: unknown system event {other}",
                                self.index
                            );
                            VcpuStop::Crash
                        }
                    })
                }
                VcpuExit::Hypercall(h) => {
                    // Copy the exit data out: it borrows the vCPU.
                    let (nr, flags) = (h.nr, u64::from(h.longmode));
                    match hypercalls {
                        Some(handler) => handler.handle(&self.fd, self.index, nr, flags),
                        None => {
                            // No service forwards anything; answer NOT_SUPPORTED regardless.
                            self.set(regs::X0, u64::MAX)?;
                        }
                    }
                }
                VcpuExit::Unsupported(KVM_EXIT_ARM_NISV) => {
                    let ipa = crate::sys::nisv_fault_ipa(&mut self.fd);
                    if !bus.is_read_only_memory(ipa) {
                        log::error!(
                            "vCPU {}: an access at {ipa:#x} that KVM cannot decode (no valid \
                             syndrome) outside read-only memory",
                            self.index
                        );
                        return Ok(VcpuStop::Crash);
                    }
                    crate::guest_log!(
                        log::Level::Warn,
                        "vCPU {}: a write to read-only memory at {ipa:#x} was dropped",
                        self.index
                    );
                    // Skip the store (A64 instructions are 4 bytes): the write is dropped, as
                    // KVM drops decodable writes to read-only memory it hands to userspace.
                    let pc = self.get(regs::PC)?;
                    self.set(regs::PC, pc.wrapping_add(4))?;
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    log::error!(
                        "vCPU {}: KVM could not enter the guest (reason {reason:#x}, cpu {cpu})",
                        self.index
                    );
                    return Ok(VcpuStop::Crash);
                }
                VcpuExit::InternalError => {
                    log::error!("vCPU {}: KVM internal error", self.index);
                    return Ok(VcpuStop::Crash);
                }
                other => {
                    log::debug!("vCPU {}: ignored exit {other:?}", self.index);
                }
            }
        }
    }
}

#[cfg(test)]
mod kicker_tests {
    use super::*;

    #[test]
    fn a_thread_that_has_exited_is_never_kicked() {
        install_kick_handler().unwrap();
        let kicker = Arc::new(Kicker::new(1));
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
        let k = kicker.clone();
        let t = std::thread::spawn(move || {
            let _registered = k.register_current(0);
            up_tx.send(()).unwrap();
            go_rx.recv().unwrap();
        });
        up_rx.recv().unwrap();
        assert!(kicker.threads.lock().unwrap()[0].is_some(), "registered");
        kicker.kick(0); // Alive: the signal is delivered and handled.
        go_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(
            kicker.threads.lock().unwrap()[0].is_none(),
            "the exiting thread unregistered itself"
        );
        kicker.kick(0); // A no-op, not a signal to a thread ID the kernel may reuse.
    }
}
