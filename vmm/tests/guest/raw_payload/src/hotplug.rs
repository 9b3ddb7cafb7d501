//! Hotplug mode (`payload.hotplug=1`): CPU_OFF inside an SDEI handler and CPU_ON afterwards,
//! with `--sdei` on two vCPUs and a driver on the host (`kvm_raw_payload.rs`).
//!
//! cpu 1 registers, enables and unmasks refvmm's private event and waits; the host raises it
//! there, and the handler turns cpu 1 off with `CPU_OFF` before completing. With cpu 1 off,
//! the boot CPU waits for a byte on the UART (the host raises the event for cpu 1 again
//! first, which must find nothing registered), then turns cpu 1 on again: cpu 1 must find the
//! event unregistered and itself masked, registers again, and takes one more event normally.

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

use crate::boot::{secondary_entry, UP};
use crate::sdei::{self, SDEI_EVENT_STATUS, SDEI_PE_MASK, SDEI_VMM_PRIVATE_NORMAL};
use crate::sys::{
    fail, halt, hvc, pass, wait_for, AFF_OFF, PSCI_AFFINITY_INFO, PSCI_CPU_OFF, PSCI_CPU_ON,
};
use crate::uart::{self, put_dec, put_hex, puts};

/// CPU_ON's answers for a core that is on, and for one being turned on.
const PSCI_ALREADY_ON: u64 = -4i64 as u64;
const PSCI_ON_PENDING: u64 = -5i64 as u64;

/// The hotplug round cpu 1 is in (0: not in hotplug mode). Written by the boot CPU before each
/// CPU_ON, read by cpu 1 and its SDEI handler.
static mut HOTPLUG_ROUND: u64 = 0;
/// Set by cpu 1's handler in round 2.
static mut HOTPLUG_HANDLED: u64 = 0;

fn set_round(r: u64) {
    // SAFETY: written by the boot CPU while cpu 1 is off; CPU_ON (a hypercall) follows, and
    // the barrier makes the store visible before it.
    unsafe {
        write_volatile(&raw mut HOTPLUG_ROUND, r);
        write_volatile(&raw mut UP[1], 0);
        asm!("dsb sy", options(nostack));
    }
}

/// The hotplug round cpu 1 is in; 0 outside hotplug mode.
pub fn round() -> u64 {
    // SAFETY: see `set_round`.
    unsafe { read_volatile(&raw const HOTPLUG_ROUND) }
}

/// The boot CPU's side of hotplug mode; `target` is cpu 1's MPIDR.
pub fn run(target: u64) -> ! {
    set_round(1);
    let entry = secondary_entry as *const () as usize as u64;
    if hvc(PSCI_CPU_ON, target, entry, 1) != 0 {
        fail("PSCI CPU_ON of cpu 1 failed");
    }
    // SAFETY: UP[1] is written by cpu 1 only.
    if !wait_for(60, || unsafe { read_volatile(&raw const UP[1]) } == 1) {
        fail("cpu 1 did not come up");
    }
    if !wait_for(120, || hvc(PSCI_AFFINITY_INFO, target, 0, 0) == AFF_OFF) {
        fail("cpu 1 did not turn itself off in its SDEI handler");
    }
    puts("raw-payload: cpu 1 is off, its handler unfinished\n");
    if !wait_for(120, uart::rx_ready) {
        fail("no byte on the UART");
    }
    let _ = uart::getc();
    set_round(2);
    if hvc(PSCI_CPU_ON, target, entry, 1) != 0 {
        fail("the second PSCI CPU_ON of cpu 1 failed");
    }
    let again = hvc(PSCI_CPU_ON, target, entry, 1);
    if again != PSCI_ALREADY_ON && again != PSCI_ON_PENDING {
        puts("raw-payload: CPU_ON of a cpu being turned on returned ");
        put_hex(again);
        puts("\n");
        fail("CPU_ON of a cpu that is on or turning on did not say so");
    }
    // SAFETY: as above.
    if !wait_for(60, || unsafe { read_volatile(&raw const UP[1]) } == 1) {
        fail("cpu 1 did not come up again");
    }
    if !wait_for(120, || {
        // SAFETY: HOTPLUG_HANDLED is written by cpu 1's handler only.
        unsafe { read_volatile(&raw const HOTPLUG_HANDLED) == 1 }
    }) {
        fail("the event raised after CPU_ON did not reach cpu 1's handler");
    }
    puts("raw-payload: cpu 1 took an event after CPU_ON\n");
    pass()
}

/// cpu 1 in hotplug mode (`i` is its context id, 1).
pub fn secondary(i: usize) -> ! {
    let ev = SDEI_VMM_PRIVATE_NORMAL;
    if round() == 2 {
        let status = hvc(SDEI_EVENT_STATUS, ev, 0, 0);
        if status != 0 {
            puts("raw-payload: event status after CPU_OFF and CPU_ON ");
            put_hex(status);
            puts("\n");
            fail("cpu 1's SDEI registration or running handler survived CPU_OFF and CPU_ON");
        }
        if hvc(SDEI_PE_MASK, 0, 0, 0) != 0 {
            fail("cpu 1 came back from CPU_ON with SDEI unmasked");
        }
    }
    if !sdei::arm_vmm_event() {
        fail("cpu 1 cannot register, enable and unmask refvmm's SDEI event");
    }
    puts("raw-payload: cpu 1 armed, round ");
    put_dec(round());
    puts("\n");
    // SAFETY: only this CPU writes UP[i]; the barrier orders the output before it.
    unsafe {
        asm!("dsb sy", options(nostack));
        write_volatile(&raw mut UP[i], 1);
    }
    halt()
}

/// cpu 1's SDEI handler in hotplug mode.
pub fn handler() {
    if round() == 1 {
        puts("raw-payload: cpu 1 turns itself off inside its handler\n");
        hvc(PSCI_CPU_OFF, 0, 0, 0);
        fail("PSCI CPU_OFF returned");
    }
    // SAFETY: only this handler writes it; the boot CPU polls it.
    unsafe { write_volatile(&raw mut HOTPLUG_HANDLED, 1) };
}
