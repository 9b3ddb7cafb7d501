//! SMCCC calls through HVC, the PSCI function IDs, the system registers the payload reads
//! (the virtual counter and MPIDR_EL1), and the three ways a run ends: [`pass`] (PSCI
//! SYSTEM_OFF), [`fail`] (PSCI SYSTEM_RESET) and [`halt`].

use core::arch::asm;

use crate::uart::puts;

pub const PSCI_VERSION: u64 = 0x8400_0000;
pub const PSCI_CPU_OFF: u64 = 0x8400_0002;
pub const PSCI_CPU_ON: u64 = 0xC400_0003;
pub const PSCI_AFFINITY_INFO: u64 = 0xC400_0004;
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;
/// AFFINITY_INFO's answer for a core that is off.
pub const AFF_OFF: u64 = 1;

pub fn hvc(fid: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    hvc5(fid, [a1, a2, a3, 0, 0])
}

/// An SMCCC call with five arguments, returning x0.
pub fn hvc5(fid: u64, a: [u64; 5]) -> u64 {
    let r;
    // SAFETY: an SMCCC call through HVC; every register the callee may change is declared.
    unsafe {
        asm!("hvc #0",
            inout("x0") fid => r, inout("x1") a[0] => _, inout("x2") a[1] => _,
            inout("x3") a[2] => _, inout("x4") a[3] => _, inout("x5") a[4] => _,
            out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _, out("x16") _,
            out("x17") _, options(nostack));
    }
    r
}

pub fn counter() -> u64 {
    let v;
    // SAFETY: reading the virtual counter has no side effects.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

pub fn counter_hz() -> u64 {
    let v;
    // SAFETY: reading the counter frequency has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    v
}

pub fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack)) };
    v & 0xff_00ff_ffff
}

/// Polls `done` for up to `secs` seconds of the architected counter.
pub fn wait_for(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = counter() + secs * counter_hz();
    while counter() < deadline {
        if done() {
            return true;
        }
    }
    done()
}

/// Prints `raw-payload: FAIL: <why>` and resets the VM (refvmm exits with status 10).
pub fn fail(why: &str) -> ! {
    puts("raw-payload: FAIL: ");
    puts(why);
    puts("\n");
    hvc(PSCI_SYSTEM_RESET, 0, 0, 0);
    halt()
}

/// Prints `raw-payload: PASS` and powers the VM off (refvmm exits with status 0).
pub fn pass() -> ! {
    puts("raw-payload: PASS\n");
    hvc(PSCI_SYSTEM_OFF, 0, 0, 0);
    fail("PSCI SYSTEM_OFF returned")
}

pub fn halt() -> ! {
    loop {
        // SAFETY: waiting for an interrupt that never comes; nothing else to do.
        unsafe { asm!("wfi", options(nomem, nostack)) };
    }
}
