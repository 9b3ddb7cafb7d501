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

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::panic::PanicInfo;
use core::ptr::{read_volatile, write_volatile};

/// The UART's base in refvmm's memory map (docs/refvmm.md).
const UART: usize = 0x0900_0000;
/// An address below RAM where refvmm maps no device.
const UNBACKED: usize = 0x0400_0000;
/// Most vCPUs the payload drives (one stack each, see link.ld).
const MAX_CPUS: usize = 8;

const PSCI_CPU_OFF: u64 = 0x8400_0002;
const PSCI_CPU_ON: u64 = 0xC400_0003;
const PSCI_AFFINITY_INFO: u64 = 0xC400_0004;
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;
const PSCI_SYSTEM_RESET: u64 = 0x8400_0009;
/// AFFINITY_INFO's answer for a core that is off.
const AFF_OFF: u64 = 1;

// Entry points. Both enable FP/SIMD at EL1 (CPACR_EL1.FPEN) since compiled code may use it, and
// take a stack from the array the linker script reserves: slot 0 for the boot CPU, slot N for
// secondary N (its PSCI context id).
global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    mov     x19, x0
    mov     x1, #0x300000
    msr     cpacr_el1, x1
    isb
    adrp    x1, __stacks
    add     x1, x1, :lo12:__stacks
    add     sp, x1, #0x4000
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
1:  cmp     x1, x2
    b.hs    2f
    str     xzr, [x1], #8
    b       1b
2:  mov     x0, x19
    bl      primary_main
3:  wfi
    b       3b

    .global secondary_entry
secondary_entry:
    mov     x19, x0
    mov     x1, #0x300000
    msr     cpacr_el1, x1
    isb
    adrp    x1, __stacks
    add     x1, x1, :lo12:__stacks
    add     x2, x19, #1
    lsl     x2, x2, #14
    add     sp, x1, x2
    mov     x0, x19
    bl      secondary_main
4:  wfi
    b       4b
"#
);

// The exception vectors (only an IRQ taken at EL1 on SP_EL1 is expected; anything else is
// reported and fails the run) and the SDEI handler's entry, which completes the event itself.
// SDEI_EVENT_COMPLETE gives back x0-x17, the PC and PSTATE of the interrupted context; the
// handler keeps x18-x30 and SP itself (x19-x29 by the procedure call standard).
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
    fn secondary_entry();
    fn sdei_entry();
    static vectors: u8;
}

/// Set to 1 by secondary N once it runs.
static mut UP: [u32; MAX_CPUS] = [0; MAX_CPUS];
/// MPIDR_EL1 as read by secondary N.
static mut SEEN_MPIDR: [u64; MAX_CPUS] = [0; MAX_CPUS];

// ---- UART ----------------------------------------------------------------------------------

fn putc(c: u8) {
    // SAFETY: the UART's registers are MMIO in refvmm's memory map; LSR is at offset 5 and
    // bit 5 says the transmit holding register is empty.
    unsafe {
        while read_volatile((UART + 5) as *const u8) & 0x20 == 0 {}
        write_volatile(UART as *mut u8, c);
    }
}

fn puts(s: &str) {
    for &b in s.as_bytes() {
        putc(b);
    }
}

fn put_bytes(b: Bytes) {
    for i in 0..b.len {
        putc(b.at(i));
    }
}

/// Prints `v` in base 10 or 16 (digits only).
fn put_num(mut v: u64, base: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b"0123456789abcdef"[(v % base) as usize];
        n += 1;
        v /= base;
        if v == 0 {
            break;
        }
    }
    while n > 0 {
        n -= 1;
        putc(digits[n]);
    }
}

fn put_hex(v: u64) {
    puts("0x");
    put_num(v, 16);
}

fn put_dec(v: u64) {
    put_num(v, 10);
}

// ---- PSCI and system registers -------------------------------------------------------------

fn hvc(fid: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    hvc5(fid, [a1, a2, a3, 0, 0])
}

/// An SMCCC call with five arguments, returning x0.
fn hvc5(fid: u64, a: [u64; 5]) -> u64 {
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

fn counter() -> u64 {
    let v;
    // SAFETY: reading the virtual counter has no side effects.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

fn counter_hz() -> u64 {
    let v;
    // SAFETY: reading the counter frequency has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    v
}

fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack)) };
    v & 0xff_00ff_ffff
}

fn fail(why: &str) -> ! {
    puts("raw-payload: FAIL: ");
    puts(why);
    puts("\n");
    hvc(PSCI_SYSTEM_RESET, 0, 0, 0);
    halt()
}

fn pass() -> ! {
    puts("raw-payload: PASS\n");
    hvc(PSCI_SYSTEM_OFF, 0, 0, 0);
    fail("PSCI SYSTEM_OFF returned")
}

fn halt() -> ! {
    loop {
        // SAFETY: waiting for an interrupt that never comes; nothing else to do.
        unsafe { asm!("wfi", options(nomem, nostack)) };
    }
}

/// Polls `done` for up to `secs` seconds of the architected counter.
fn wait_for(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = counter() + secs * counter_hz();
    while counter() < deadline {
        if done() {
            return true;
        }
    }
    done()
}

// ---- Device tree ---------------------------------------------------------------------------

/// Bytes in guest memory, read one at a time (Device memory: no unaligned accesses).
#[derive(Clone, Copy)]
struct Bytes {
    addr: usize,
    len: usize,
}

impl Bytes {
    fn at(&self, i: usize) -> u8 {
        // SAFETY: callers stay below `len`, inside the device tree refvmm placed in RAM.
        unsafe { read_volatile((self.addr + i) as *const u8) }
    }

    fn eq(&self, s: &[u8]) -> bool {
        self.len == s.len() && (0..s.len()).all(|i| self.at(i) == s[i])
    }

    fn starts_with(&self, s: &[u8]) -> bool {
        self.len >= s.len() && (0..s.len()).all(|i| self.at(i) == s[i])
    }

    fn be(&self, off: usize, n: usize) -> u64 {
        (0..n).fold(0u64, |v, i| (v << 8) | u64::from(self.at(off + i)))
    }

    fn sub(&self, off: usize, len: usize) -> Bytes {
        Bytes {
            addr: self.addr + off,
            len,
        }
    }
}

/// What the payload needs from the device tree.
struct Facts {
    bootargs: Option<Bytes>,
    mpidrs: [u64; MAX_CPUS],
    cpus: usize,
    memory: Option<(u64, u64)>,
    initrd_start: Option<u64>,
    initrd_end: Option<u64>,
}

const FDT_BEGIN_NODE: u64 = 1;
const FDT_END_NODE: u64 = 2;
const FDT_PROP: u64 = 3;
const FDT_NOP: u64 = 4;
const FDT_END: u64 = 9;

fn parse_fdt(addr: usize) -> Facts {
    let hdr = Bytes { addr, len: 40 };
    if hdr.be(0, 4) != 0xd00d_feed {
        fail("no device tree magic at x0");
    }
    let total = hdr.be(4, 4) as usize;
    let fdt = Bytes { addr, len: total };
    let structs = hdr.be(8, 4) as usize;
    let strings = hdr.be(12, 4) as usize;
    let mut f = Facts {
        bootargs: None,
        mpidrs: [0; MAX_CPUS],
        cpus: 0,
        memory: None,
        initrd_start: None,
        initrd_end: None,
    };
    // Names of the nodes at depth 1 and 2 of the current path.
    let mut depth = 0usize;
    let mut top = Bytes { addr, len: 0 };
    let mut second = Bytes { addr, len: 0 };
    let mut off = structs;
    loop {
        if off + 4 > total {
            fail("device tree structure runs past its end");
        }
        let token = fdt.be(off, 4);
        off += 4;
        match token {
            FDT_BEGIN_NODE => {
                let mut n = 0;
                while off + n < total && fdt.at(off + n) != 0 {
                    n += 1;
                }
                let name = fdt.sub(off, n);
                depth += 1;
                if depth == 2 {
                    top = name;
                } else if depth == 3 {
                    second = name;
                }
                off = (off + n + 1 + 3) & !3;
            }
            FDT_END_NODE => depth = depth.saturating_sub(1),
            FDT_PROP => {
                let len = fdt.be(off, 4) as usize;
                let nameoff = fdt.be(off + 4, 4) as usize;
                let val = fdt.sub(off + 8, len);
                off = (off + 8 + len + 3) & !3;
                let mut n = 0;
                while strings + nameoff + n < total && fdt.at(strings + nameoff + n) != 0 {
                    n += 1;
                }
                let name = fdt.sub(strings + nameoff, n);
                prop(&mut f, depth, top, second, name, val);
            }
            FDT_NOP => {}
            FDT_END => break,
            _ => fail("unknown device tree token"),
        }
    }
    f
}

fn prop(f: &mut Facts, depth: usize, top: Bytes, second: Bytes, name: Bytes, val: Bytes) {
    if depth == 2 && top.eq(b"chosen") {
        if name.eq(b"bootargs") {
            // The string without its terminating NUL.
            f.bootargs = Some(val.sub(0, val.len.saturating_sub(1)));
        } else if name.eq(b"linux,initrd-start") {
            f.initrd_start = Some(val.be(0, val.len.min(8)));
        } else if name.eq(b"linux,initrd-end") {
            f.initrd_end = Some(val.be(0, val.len.min(8)));
        }
    } else if depth == 2 && top.starts_with(b"memory") && name.eq(b"reg") && val.len >= 16 {
        f.memory = Some((val.be(0, 8), val.be(8, 8)));
    } else if depth == 3 && top.eq(b"cpus") && second.starts_with(b"cpu@") && name.eq(b"reg") {
        if f.cpus == MAX_CPUS {
            fail("more CPUs in the device tree than the payload drives");
        }
        f.mpidrs[f.cpus] = val.be(0, val.len.min(8));
        f.cpus += 1;
    }
}

/// The decimal value of `key` (e.g. `payload.cpus=`) among the space-separated bootargs.
fn arg_value(args: Bytes, key: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < args.len {
        let word_start = i;
        while i < args.len && args.at(i) != b' ' {
            i += 1;
        }
        let word = args.sub(word_start, i - word_start);
        if word.starts_with(key) {
            let digits = word.sub(key.len(), word.len - key.len());
            if digits.len == 0 {
                return None;
            }
            let mut v = 0u64;
            for j in 0..digits.len {
                let d = digits.at(j);
                if !d.is_ascii_digit() {
                    return None;
                }
                v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            }
            return Some(v);
        }
        i += 1;
    }
    None
}

// ---- The checks ----------------------------------------------------------------------------

#[no_mangle]
extern "C" fn primary_main(fdt_addr: usize) -> ! {
    puts("raw-payload: hello from cpu 0, device tree at ");
    put_hex(fdt_addr as u64);
    puts("\n");
    let f = parse_fdt(fdt_addr);

    let Some(args) = f.bootargs else {
        fail("no /chosen/bootargs in the device tree")
    };
    puts("raw-payload: bootargs [");
    put_bytes(args);
    puts("]\n");

    let Some((base, size)) = f.memory else {
        fail("no memory node in the device tree")
    };
    puts("raw-payload: memory ");
    put_hex(base);
    puts(" size ");
    put_hex(size);
    puts("\n");
    if let Some(mib) = arg_value(args, b"payload.mem=") {
        if size != mib << 20 {
            fail("the memory node does not describe payload.mem= MiB");
        }
    }

    puts("raw-payload: ");
    put_dec(f.cpus as u64);
    puts(" cpus in the device tree\n");
    let Some(want_cpus) = arg_value(args, b"payload.cpus=") else {
        fail("no payload.cpus= expectation on the command line")
    };
    if want_cpus != f.cpus as u64 {
        puts("raw-payload: expected ");
        put_dec(want_cpus);
        puts(" cpus\n");
        fail("the device tree does not have payload.cpus= CPUs");
    }
    if f.mpidrs[0] != mpidr() {
        fail("the boot CPU's MPIDR is not the first CPU in the device tree");
    }

    match (f.initrd_start, f.initrd_end) {
        (Some(start), Some(end)) if end > start => {
            let img = Bytes {
                addr: start as usize,
                len: (end - start) as usize,
            };
            puts("raw-payload: initrd ");
            put_hex(start);
            puts("..");
            put_hex(end);
            puts(" begins [");
            put_bytes(img.sub(0, img.len.min(16)));
            puts("]\n");
        }
        (None, None) => puts("raw-payload: no initrd\n"),
        _ => fail("inconsistent initrd properties in /chosen"),
    }

    // An unbacked MMIO address: reads are zero, writes vanish.
    // SAFETY: refvmm maps no device here; the accesses trap to the VMM, which answers them.
    let (first, after) = unsafe {
        let p = UNBACKED as *mut u32;
        let first = read_volatile(p);
        write_volatile(p, 0xdead_beef);
        (first, read_volatile(p))
    };
    puts("raw-payload: unbacked MMIO at ");
    put_hex(UNBACKED as u64);
    puts(" reads ");
    put_hex(u64::from(first));
    puts(", and ");
    put_hex(u64::from(after));
    puts(" after a write\n");
    if first != 0 || after != 0 {
        fail("an unbacked MMIO read did not return zero");
    }

    if let Some(n) = arg_value(args, b"payload.bench=") {
        hypercall_bench(n);
    }
    if let Some(ms) = arg_value(args, b"payload.sdeispin=") {
        // SAFETY: no event is enabled yet; the handler only reads this.
        unsafe { write_volatile(&raw mut SDEI_SPIN_TICKS, ms * counter_hz() / 1000) };
    }
    if let Some(ms) = arg_value(args, b"payload.tick=") {
        // SAFETY: no interrupt is enabled yet; the IRQ handler only reads this.
        unsafe { write_volatile(&raw mut TICK_PERIOD, ms * counter_hz() / 1000) };
    }
    if let Some(mode) = arg_value(args, b"payload.latency=") {
        latency_mode(mode == 2);
    }

    if arg_value(args, b"payload.hotplug=").is_some() {
        if f.cpus < 2 {
            fail("payload.hotplug= needs two cpus");
        }
        hotplug_mode(f.mpidrs[1]);
    }

    for i in 1..f.cpus {
        let target = f.mpidrs[i];
        let ret = hvc(
            PSCI_CPU_ON,
            target,
            secondary_entry as *const () as usize as u64,
            i as u64,
        );
        if ret != 0 {
            puts("raw-payload: CPU_ON returned ");
            put_hex(ret);
            puts("\n");
            fail("PSCI CPU_ON failed");
        }
        // SAFETY: UP[i] is written by secondary i only; volatile reads see its store.
        if !wait_for(60, || unsafe { read_volatile(&raw const UP[i]) } == 1) {
            fail("a secondary CPU did not come up");
        }
        // SAFETY: written by secondary i before it set UP[i].
        let seen = unsafe { read_volatile(&raw const SEEN_MPIDR[i]) };
        if seen != target {
            fail("a secondary CPU runs with another MPIDR than the device tree says");
        }
        if !wait_for(60, || hvc(PSCI_AFFINITY_INFO, target, 0, 0) == AFF_OFF) {
            fail("a secondary CPU did not turn itself off");
        }
        puts("raw-payload: cpu ");
        put_dec(i as u64);
        puts(" is off again\n");
    }

    pass()
}

// ---- CPU hotplug with SDEI (payload.hotplug=1) ----------------------------------------------

const SDEI_EVENT_STATUS: u64 = 0xC400_0028;
const SDEI_PE_MASK: u64 = 0xC400_002B;
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

fn round() -> u64 {
    // SAFETY: see `set_round`.
    unsafe { read_volatile(&raw const HOTPLUG_ROUND) }
}

/// Hotplug mode, with `--sdei` on two vCPUs and a driver on the host (`kvm_raw_payload.rs`):
/// cpu 1 registers, enables and unmasks refvmm's private event and waits; the host raises it
/// there, and the handler turns cpu 1 off with `CPU_OFF` before completing. With cpu 1 off,
/// the boot CPU waits for a byte on the UART (the host raises the event for cpu 1 again
/// first, which must find nothing registered), then turns cpu 1 on again: cpu 1 must find the
/// event unregistered and itself masked, registers again, and takes one more event normally.
fn hotplug_mode(target: u64) -> ! {
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
    // SAFETY: the UART's line status and receive registers (byte registers of refvmm's
    // memory map); reading the received byte consumes it.
    if !wait_for(
        120,
        || unsafe { read_volatile((UART + 5) as *const u8) } & 1 != 0,
    ) {
        fail("no byte on the UART");
    }
    // SAFETY: as above.
    let _ = unsafe { read_volatile(UART as *const u8) };
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
    // SAFETY: as above; HOTPLUG_HANDLED is written by cpu 1's handler only.
    if !wait_for(60, || unsafe { read_volatile(&raw const UP[1]) } == 1) {
        fail("cpu 1 did not come up again");
    }
    if !wait_for(
        120,
        || unsafe { read_volatile(&raw const HOTPLUG_HANDLED) } == 1,
    ) {
        fail("the event raised after CPU_ON did not reach cpu 1's handler");
    }
    puts("raw-payload: cpu 1 took an event after CPU_ON\n");
    pass()
}

/// cpu 1 in hotplug mode.
fn hotplug_secondary(i: usize) -> ! {
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
    let ret = hvc5(
        SDEI_EVENT_REGISTER,
        [ev, sdei_entry as *const () as usize as u64, 0, 0, 0],
    );
    if ret != 0 || hvc(SDEI_EVENT_ENABLE, ev, 0, 0) != 0 || hvc(SDEI_PE_UNMASK, 0, 0, 0) != 0 {
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
fn hotplug_handler() {
    if round() == 1 {
        puts("raw-payload: cpu 1 turns itself off inside its handler\n");
        hvc(PSCI_CPU_OFF, 0, 0, 0);
        fail("PSCI CPU_OFF returned");
    }
    // SAFETY: only this handler writes it; the boot CPU polls it.
    unsafe { write_volatile(&raw mut HOTPLUG_HANDLED, 1) };
}

// ---- Benchmarks (run by `cargo xtask bench`, never by tests) -------------------------------

const PSCI_VERSION: u64 = 0x8400_0000;
const SDEI_VERSION: u64 = 0xC400_0020;
const SDEI_EVENT_REGISTER: u64 = 0xC400_0021;
const SDEI_EVENT_ENABLE: u64 = 0xC400_0022;
const SDEI_PE_UNMASK: u64 = 0xC400_002C;
/// refvmm's private, normal-priority VMM event (docs/refvmm.md).
const SDEI_VMM_PRIVATE_NORMAL: u64 = 0x0100_0000;

/// Times `n` PSCI_VERSION calls (answered inside KVM) against `n` SDEI_VERSION calls
/// (forwarded to refvmm's router and dispatcher), alternating, five rounds; prints the counter
/// ticks of each loop.
fn hypercall_bench(n: u64) -> ! {
    if hvc(SDEI_VERSION, 0, 0, 0) >> 48 != 1 {
        fail("SDEI_VERSION is not answered by an SDEI 1.x dispatcher (run refvmm with --sdei)");
    }
    puts("raw-payload: counter frequency ");
    put_dec(counter_hz());
    puts(" Hz\n");
    for round in 0..5 {
        let t0 = counter();
        for _ in 0..n {
            hvc(PSCI_VERSION, 0, 0, 0);
        }
        let t1 = counter();
        for _ in 0..n {
            hvc(SDEI_VERSION, 0, 0, 0);
        }
        let t2 = counter();
        puts("raw-payload: bench round ");
        put_dec(round);
        puts(" calls ");
        put_dec(n);
        puts(" psci_version_ticks ");
        put_dec(t1 - t0);
        puts(" sdei_version_ticks ");
        put_dec(t2 - t1);
        puts("\n");
    }
    pass()
}

const GICD: usize = 0x0800_0000;
const GICR0: usize = 0x080A_0000;
const UART_INTID: usize = 33;

fn mmio_w32(addr: usize, v: u32) {
    // SAFETY: a GIC or UART register of refvmm's memory map.
    unsafe { write_volatile(addr as *mut u32, v) }
}

fn mmio_r32(addr: usize) -> u32 {
    // SAFETY: a GIC or UART register of refvmm's memory map.
    unsafe { read_volatile(addr as *const u32) }
}

/// Latency mode: the UART's receive interrupt (an SPI the VMM injects when input arrives)
/// and refvmm's private normal SDEI event both end in a handler that prints one character
/// (`I` and `S`), so a driver on the host can time "input written → `I`" against "event raised
/// → `S`". A `q` on the UART powers off. `payload.latency=1` idles in WFI between deliveries;
/// `payload.latency=2` keeps making MMIO reads instead (a stress test of delivery). With
/// `payload.tick=MS` the virtual timer also interrupts every MS milliseconds (each handler
/// stays half a period, every 50th prints `t`): snapshots must keep it ticking.
fn latency_mode(busy: bool) -> ! {
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
    // UART: received-data interrupt on (and OUT2, which gates the line on a PC 16550).
    // SAFETY: UART registers of refvmm's memory map.
    unsafe {
        write_volatile((UART + 4) as *mut u8, 0x08);
        write_volatile((UART + 1) as *mut u8, 0x01);
    }
    let ev = SDEI_VMM_PRIVATE_NORMAL;
    let ret = hvc5(
        SDEI_EVENT_REGISTER,
        [ev, sdei_entry as *const () as usize as u64, 0, 0, 0],
    );
    if ret != 0 || hvc(SDEI_EVENT_ENABLE, ev, 0, 0) != 0 || hvc(SDEI_PE_UNMASK, 0, 0, 0) != 0 {
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

#[no_mangle]
extern "C" fn irq_handler() {
    let iar: u64;
    // SAFETY: acknowledging the highest-priority pending group 1 interrupt.
    unsafe { asm!("mrs {}, S3_0_C12_C12_0", out(reg) iar, options(nostack)) };
    if iar as usize == UART_INTID {
        // SAFETY: UART registers: LSR bit 0 says a byte waits in RBR.
        while unsafe { read_volatile((UART + 5) as *const u8) } & 1 != 0 {
            // SAFETY: reading RBR takes the byte that LSR announced.
            let c = unsafe { read_volatile(UART as *const u8) };
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

/// The virtual timer's interrupt (PPI 11).
const VTIMER_INTID: usize = 27;
/// With `payload.tick=MS` (latency mode), the virtual timer's period in counter ticks.
static mut TICK_PERIOD: u64 = 0;
/// Timer interrupts taken; every 50th prints `t`.
static mut TICKS: u64 = 0;

/// Programs the virtual timer to fire `period` ticks from now (enabled, unmasked).
fn arm_tick(period: u64) {
    // SAFETY: CNTV_TVAL_EL0 and CNTV_CTL_EL0 only drive this vCPU's virtual timer.
    unsafe {
        asm!("msr cntv_tval_el0, {p}", "mov {t}, #1", "msr cntv_ctl_el0, {t}", "isb",
             p = in(reg) period, t = out(reg) _, options(nomem, nostack));
    }
}

/// How long the SDEI handler busy-waits (`payload.sdeispin=MS`), in counter ticks; 0: not at all.
static mut SDEI_SPIN_TICKS: u64 = 0;

/// The handler's first instruction sets `marker`: entering anywhere else (a VMM that let a
/// late MMIO completion move the PC past the entry point) is caught here. With
/// `payload.sdeispin=MS` the first delivery prints `s`, busy-waits MS milliseconds (so that a
/// snapshot can be taken while it runs), then prints `S`.
#[no_mangle]
extern "C" fn sdei_handler(marker: u64) {
    if marker != 0x5d1 {
        fail("the SDEI handler was entered past its first instruction");
    }
    if round() != 0 {
        // Hotplug mode: only cpu 1 registers the event.
        hotplug_handler();
        return;
    }
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

#[no_mangle]
extern "C" fn unexpected_exception(esr: u64, elr: u64) -> ! {
    puts("raw-payload: exception ESR ");
    put_hex(esr);
    puts(" ELR ");
    put_hex(elr);
    puts("\n");
    fail("unexpected exception")
}

#[no_mangle]
extern "C" fn secondary_main(index: u64) -> ! {
    let i = index as usize;
    if i == 0 || i >= MAX_CPUS {
        fail("a secondary started with a bad context id");
    }
    if round() != 0 {
        hotplug_secondary(i);
    }
    let m = mpidr();
    puts("raw-payload: cpu ");
    put_dec(index);
    puts(" up, mpidr ");
    put_hex(m);
    puts("\n");
    // SAFETY: only this CPU writes its slots; the boot CPU reads them after UP[i] is set (the
    // data barrier orders the two stores as the boot CPU observes them).
    unsafe {
        write_volatile(&raw mut SEEN_MPIDR[i], m);
        asm!("dsb sy", options(nostack));
        write_volatile(&raw mut UP[i], 1);
    }
    hvc(PSCI_CPU_OFF, 0, 0, 0);
    fail("PSCI CPU_OFF returned")
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    fail("panic")
}

// The compiler may call these for copies and fills; the C library is not linked. Volatile
// byte accesses keep LLVM from turning the loops back into calls to themselves.

/// # Safety
/// Standard `memcpy` contract.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes.
        unsafe { write_volatile(dst.add(i), read_volatile(src.add(i))) };
    }
    dst
}

/// # Safety
/// Standard `memmove` contract.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) < (src as usize) {
        // SAFETY: as for memcpy; copying forwards is safe when dst is below src.
        return unsafe { memcpy(dst, src, n) };
    }
    for i in (0..n).rev() {
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes.
        unsafe { write_volatile(dst.add(i), read_volatile(src.add(i))) };
    }
    dst
}

/// # Safety
/// Standard `memset` contract.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller guarantees the range is valid for `n` bytes.
        unsafe { write_volatile(dst.add(i), c as u8) };
    }
    dst
}

/// # Safety
/// Standard `memcmp` contract.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are valid for `n` bytes.
        let (x, y) = unsafe { (read_volatile(a.add(i)), read_volatile(b.add(i))) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// Standard `bcmp` contract.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
