//! SDEI: the function IDs the payload calls, the handler's entry (assembly) and its Rust side,
//! and [`arm_vmm_event`], which readies the calling CPU for refvmm's private event.

use core::arch::global_asm;

use crate::sys::{fail, hvc, hvc5};
use crate::{hotplug, latency};

pub const SDEI_VERSION: u64 = 0xC400_0020;
const SDEI_EVENT_REGISTER: u64 = 0xC400_0021;
const SDEI_EVENT_ENABLE: u64 = 0xC400_0022;
pub const SDEI_EVENT_STATUS: u64 = 0xC400_0028;
pub const SDEI_PE_MASK: u64 = 0xC400_002B;
const SDEI_PE_UNMASK: u64 = 0xC400_002C;
/// refvmm's private, normal-priority VMM event (docs/refvmm.md).
pub const SDEI_VMM_PRIVATE_NORMAL: u64 = 0x0100_0000;

// The SDEI handler's entry, which completes the event itself. Its first instruction sets the
// marker `sdei_handler` checks. SDEI_EVENT_COMPLETE (0xC400_0025) gives back x0-x17, the PC
// and PSTATE of the interrupted context; the handler keeps x18-x30 and SP itself (x19-x29 by
// the procedure call standard).
global_asm!(
    r#"
    .section .text.sdei_entry, "ax"
    .balign 4
    .global sdei_entry
sdei_entry:
    mov     x0, #0x5d1
    sub     sp, sp, #16
    stp     x18, x30, [sp]
    bl      sdei_handler
    ldp     x18, x30, [sp]
    add     sp, sp, #16
    movz    x0, #0x0025
    movk    x0, #0xc400, lsl #16
    mov     x1, #0
    hvc     #0
6:  b       6b
"#
);

extern "C" {
    fn sdei_entry();
}

/// Registers `sdei_entry` as the handler of refvmm's private normal event on the calling CPU,
/// enables the event and unmasks the CPU. False as soon as one of the three calls fails (the
/// later ones are then not made).
pub fn arm_vmm_event() -> bool {
    let ev = SDEI_VMM_PRIVATE_NORMAL;
    hvc5(
        SDEI_EVENT_REGISTER,
        [ev, sdei_entry as *const () as usize as u64, 0, 0, 0],
    ) == 0
        && hvc(SDEI_EVENT_ENABLE, ev, 0, 0) == 0
        && hvc(SDEI_PE_UNMASK, 0, 0, 0) == 0
}

/// The handler's first instruction sets `marker`: entering anywhere else (a VMM that let a
/// late MMIO completion move the PC past the entry point) is caught here. In hotplug mode the
/// event goes to [`hotplug::handler`], otherwise (latency mode) to [`latency::sdei_event`].
#[no_mangle]
extern "C" fn sdei_handler(marker: u64) {
    if marker != 0x5d1 {
        fail("the SDEI handler was entered past its first instruction");
    }
    if hotplug::round() != 0 {
        // Hotplug mode: only cpu 1 registers the event.
        hotplug::handler();
        return;
    }
    latency::sdei_event();
}
