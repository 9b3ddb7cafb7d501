//! Latency mode (`payload.latency=1|2`): the UART's receive interrupt (an SPI the VMM injects
//! when input arrives) and refvmm's private normal SDEI event both end in a handler that prints
//! one character (`I` and `S`), so a driver on the host can time "input written → `I`" against
//! "event raised → `S`". A `q` on the UART powers off. `payload.latency=1` idles in WFI between
//! deliveries; `payload.latency=2` keeps making MMIO reads instead (a stress test of delivery).
//! With `payload.tick=MS` the virtual timer also interrupts every MS milliseconds (each handler
//! stays half a period, every 50th prints `t`): snapshots must keep it ticking. With
//! `payload.sdeispin=MS` the first SDEI delivery prints `s`, busy-waits MS milliseconds (so
//! that a snapshot can be taken while it runs), then prints `S`.
//!
//! This is the only mode that takes interrupts, so the exception vectors live here too.

use core::arch::{asm, global_asm};
use core::ptr::{read_volatile, write_volatile};

use crate::sys::{counter, counter_hz, fail, pass, wait_for};
use crate::uart::{self, put_hex, putc, puts, UART_INTID};
use crate::{sdei, UNBACKED};

const GICD: usize = 0x0800_0000;
const GICR0: usize = 0x080A_0000;
/// The virtual timer's interrupt (PPI 11).
const VTIMER_INTID: usize = 27;

// The exception vectors: only an IRQ taken at EL1 on SP_EL1 is expected (it calls
// `irq_handler` with x0-x18 and x30 saved); anything else is reported by
// `unexpected_exception` and fails the run.
global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 2048
    .global vectors
vectors:
    .rept 5
    b       unexpected_entry
    .balign 128
    .endr
    b       irq_entry
    .balign 128
    .rept 10
    b       unexpected_entry
    .balign 128
    .endr

irq_entry:
    sub     sp, sp, #160
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x30, [sp, #144]
    bl      irq_handler
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x30, [sp, #144]
    add     sp, sp, #160
    eret

unexpected_entry:
    mrs     x0, esr_el1
    mrs     x1, elr_el1
    bl      unexpected_exception
5:  b       5b
"#
);

extern "C" {
    static vectors: u8;
}

/// With `payload.tick=MS`, the virtual timer's period in counter ticks.
static mut TICK_PERIOD: u64 = 0;
/// Timer interrupts taken; every 50th prints `t`.
static mut TICKS: u64 = 0;
/// How long the SDEI handler busy-waits (`payload.sdeispin=MS`), in counter ticks; 0: not at all.
static mut SDEI_SPIN_TICKS: u64 = 0;

/// `payload.tick=MS`: the virtual timer interrupts every `ms` milliseconds in latency mode.
pub fn set_tick_ms(ms: u64) {
    // SAFETY: called by the boot CPU before any interrupt is enabled; the IRQ handler only
    // reads this.
    unsafe { write_volatile(&raw mut TICK_PERIOD, ms * counter_hz() / 1000) };
}

/// `payload.sdeispin=MS`: the first SDEI delivery busy-waits `ms` milliseconds.
pub fn set_sdei_spin_ms(ms: u64) {
    // SAFETY: called by the boot CPU before any event is enabled; after that only the SDEI
    // handler touches it.
    unsafe { write_volatile(&raw mut SDEI_SPIN_TICKS, ms * counter_hz() / 1000) };
}

fn mmio_w32(addr: usize, v: u32) {
    // SAFETY: a GIC register of refvmm's memory map.
    unsafe { write_volatile(addr as *mut u32, v) }
}

fn mmio_r32(addr: usize) -> u32 {
    // SAFETY: a GIC register of refvmm's memory map.
    unsafe { read_volatile(addr as *const u32) }
}

/// Sets up the GIC, the timer, the UART's interrupt and the SDEI event, then waits for
/// deliveries (in WFI, or with `busy` making MMIO reads); never returns (`q` passes).
pub fn run(busy: bool) -> ! {
    // Distributor: affinity routing, group 1; the UART's SPI edge-triggered, group 1, to CPU 0.
    mmio_w32(GICD, (1 << 4) | (1 << 1) | 1);
    let n = UART_INTID;
    mmio_w32(
        GICD + 0x80 + 4 * (n / 32),
        mmio_r32(GICD + 0x80 + 4 * (n / 32)) | 1 << (n % 32),
    );
    let icfg = GICD + 0xC00 + 4 * (n / 16);
    mmio_w32(icfg, mmio_r32(icfg) | 2 << (2 * (n % 16)));
    let prio = GICD + 0x400 + (n & !3);
    mmio_w32(
        prio,
        (mmio_r32(prio) & !(0xff << (8 * (n % 4)))) | 0xa0 << (8 * (n % 4)),
    );
    mmio_w32(GICD + 0x6000 + 8 * n, 0);
    mmio_w32(GICD + 0x6000 + 8 * n + 4, 0);
    mmio_w32(GICD + 0x100 + 4 * (n / 32), 1 << (n % 32));
    // This CPU's redistributor awake.
    mmio_w32(GICR0 + 0x14, mmio_r32(GICR0 + 0x14) & !(1 << 1));
    if !wait_for(5, || mmio_r32(GICR0 + 0x14) & (1 << 2) == 0) {
        fail("the redistributor stays asleep");
    }
    // SAFETY: written before interrupts are enabled.
    let tick = unsafe { read_volatile(&raw const TICK_PERIOD) };
    if tick != 0 {
        // The virtual timer's PPI: group 1, priority 0xa0, enabled (SGI_base frame).
        let sgi = GICR0 + 0x1_0000;
        mmio_w32(sgi + 0x80, mmio_r32(sgi + 0x80) | 1 << VTIMER_INTID);
        let prio = sgi + 0x400 + (VTIMER_INTID & !3);
        let shift = 8 * (VTIMER_INTID % 4);
        mmio_w32(prio, (mmio_r32(prio) & !(0xff << shift)) | 0xa0 << shift);
        mmio_w32(sgi + 0x100, 1 << VTIMER_INTID);
        arm_tick(tick);
    }
    // SAFETY: GICv3 CPU interface set-up (system register interface, priority mask open,
    // group 1 on) and the vector table; IRQs are still masked in PSTATE.
    unsafe {
        asm!(
            "mrs {t}, S3_0_C12_C12_5", "orr {t}, {t}, #1", "msr S3_0_C12_C12_5, {t}", "isb",
            "mov {t}, #0xff", "msr S3_0_C4_C6_0, {t}",
            "mov {t}, #1", "msr S3_0_C12_C12_7, {t}",
            "msr vbar_el1, {v}", "isb",
            t = out(reg) _, v = in(reg) &raw const vectors as usize, options(nostack));
    }
    uart::enable_rx_interrupt();
    if !sdei::arm_vmm_event() {
        fail("cannot register, enable and unmask refvmm's SDEI event (run refvmm with --sdei)");
    }
    puts("raw-payload: latency ready\n");
    // SAFETY: unmasking IRQs; the handlers do all the work from here on.
    unsafe { asm!("msr daifclr, #2", options(nomem, nostack)) };
    if busy {
        // Busy: back-to-back MMIO reads, so that events and interrupts mostly arrive while the
        // vCPU is out of the guest with an access to complete.
        loop {
            // SAFETY: an unbacked MMIO address; refvmm answers zero.
            let v = unsafe { read_volatile(UNBACKED as *const u32) };
            if v != 0 {
                fail("an unbacked MMIO read did not return zero");
            }
        }
    }
    loop {
        // SAFETY: idle until the next interrupt.
        unsafe { asm!("wfi", options(nomem, nostack)) };
    }
}

/// Called by `irq_entry`: echoes UART input as `I` (`q` passes), counts timer ticks.
#[no_mangle]
extern "C" fn irq_handler() {
    let iar: u64;
    // SAFETY: acknowledging the highest-priority pending group 1 interrupt.
    unsafe { asm!("mrs {}, S3_0_C12_C12_0", out(reg) iar, options(nostack)) };
    if iar as usize == UART_INTID {
        while uart::rx_ready() {
            let c = uart::getc();
            if c == b'q' {
                puts("\n");
                pass();
            }
            putc(b'I');
        }
    }
    if iar as usize == VTIMER_INTID {
        // SAFETY: only this handler writes it after boot.
        let n = unsafe { read_volatile(&raw const TICKS) } + 1;
        // SAFETY: as above.
        unsafe { write_volatile(&raw mut TICKS, n) };
        if n % 50 == 0 {
            putc(b't');
        }
        // SAFETY: written before interrupts were enabled.
        let period = unsafe { read_volatile(&raw const TICK_PERIOD) };
        // Stay in the handler (the interrupt active) for half the period, so that a pause or
        // snapshot often finds it active.
        let end = counter() + period / 2;
        while counter() < end {}
        arm_tick(period);
    }
    if iar < 1020 {
        // SAFETY: ending the interrupt that was acknowledged.
        unsafe { asm!("msr S3_0_C12_C12_1, {}", in(reg) iar, options(nostack)) };
    }
}

/// Programs the virtual timer to fire `period` ticks from now (enabled, unmasked).
fn arm_tick(period: u64) {
    // SAFETY: CNTV_TVAL_EL0 and CNTV_CTL_EL0 only drive this vCPU's virtual timer.
    unsafe {
        asm!("msr cntv_tval_el0, {p}", "mov {t}, #1", "msr cntv_ctl_el0, {t}", "isb",
             p = in(reg) period, t = out(reg) _, options(nomem, nostack));
    }
}

/// The latency mode's SDEI event (see the module docs), called by `sdei_handler`.
pub fn sdei_event() {
    // SAFETY: written once by the boot CPU before any event is enabled.
    let spin = unsafe { read_volatile(&raw const SDEI_SPIN_TICKS) };
    if spin != 0 {
        // SAFETY: only this handler writes it after boot; spin on the first delivery only.
        unsafe { write_volatile(&raw mut SDEI_SPIN_TICKS, 0) };
        putc(b's');
        // Polls: in the emulated test bed a WFIT here would sleep until an interrupt arrives
        // (QEMU reports a trapped WFIT to KVM as a plain WFI), and none comes in this handler.
        let end = counter() + spin;
        while counter() < end {}
    }
    putc(b'S');
}

/// Called by `unexpected_entry` with ESR_EL1 and ELR_EL1.
#[no_mangle]
extern "C" fn unexpected_exception(esr: u64, elr: u64) -> ! {
    puts("raw-payload: exception ESR ");
    put_hex(esr);
    puts(" ELR ");
    put_hex(elr);
    puts("\n");
    fail("unexpected exception")
}
