//! A freestanding aarch64 test payload for refvmm's raw-binary boot path.
//!
//! It relies on nothing but the arm64 boot contract refvmm promises for a raw binary: loaded at
//! RAM base + 0x80000 and entered at its first byte on vCPU 0 with the MMU off and x0 holding
//! the device tree's address; the other vCPUs off until PSCI CPU_ON; a 16550 UART at
//! 0x0900_0000 that takes polled writes; PSCI through HVC.
//!
//! It reads the device tree (the CPUs, the memory node, `/chosen/bootargs` and the initrd),
//! checks the expectations written on its command line (`payload.cpus=N`, required, and
//! `payload.mem=MIB`, optional), reads an unbacked MMIO address, brings every secondary up with
//! CPU_ON and waits for it to turn itself off again, and prints its verdict on the UART:
//! `raw-payload: PASS` followed by PSCI SYSTEM_OFF, or `raw-payload: FAIL: <why>` followed by
//! PSCI SYSTEM_RESET (so refvmm's exit status tells the two apart too).
//!
//! With the MMU off every data access is Device memory, where unaligned accesses fault: the
//! crate is built with `+strict-align`, and device tree reads are byte by byte.
//!
//! Modules:
//! - [`boot`]: the entry points (assembly), `primary_main`'s checks and `secondary_main`;
//! - [`fdt`]: the device-tree parser and the command-line lookup;
//! - [`uart`]: output (and input) through the 16550;
//! - [`sys`]: SMCCC/PSCI calls, the counter and MPIDR, and the exits `pass`, `fail`, `halt`;
//! - [`sdei`]: SDEI function IDs, the handler's entry and arming refvmm's event;
//! - [`hotplug`], [`latency`], [`bench`]: the modes a `payload.*=` option selects;
//! - [`mem`]: `memcpy` and friends for the compiler.

#![no_std]
#![no_main]

mod bench;
mod boot;
mod fdt;
mod hotplug;
mod latency;
mod mem;
mod sdei;
mod sys;
mod uart;

use core::panic::PanicInfo;

/// An address below RAM where refvmm maps no device.
const UNBACKED: usize = 0x0400_0000;
/// Most vCPUs the payload drives (one stack each, see link.ld).
const MAX_CPUS: usize = 8;

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    sys::fail("panic")
}
