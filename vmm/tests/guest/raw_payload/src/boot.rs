//! The entry points and the checks run at boot: `_start` and `primary_main` on the boot CPU,
//! `secondary_entry` and `secondary_main` on each secondary. Without a mode on the command
//! line, the boot CPU checks the device tree against the command line's expectations, reads
//! an unbacked MMIO address, then starts each secondary with CPU_ON and waits for it to turn
//! itself off again; `payload.bench=`, `payload.latency=` and `payload.hotplug=` hand over to
//! their modes instead, after the device-tree and MMIO checks.

use core::arch::{asm, global_asm};
use core::ptr::{read_volatile, write_volatile};

use crate::fdt::{self, arg_value, Bytes};
use crate::sys::{
    fail, hvc, mpidr, pass, wait_for, AFF_OFF, PSCI_AFFINITY_INFO, PSCI_CPU_OFF, PSCI_CPU_ON,
};
use crate::uart::{put_bytes, put_dec, put_hex, puts};
use crate::{bench, hotplug, latency, MAX_CPUS, UNBACKED};

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

extern "C" {
    pub fn secondary_entry();
}

/// Set to 1 by secondary N once it runs.
pub static mut UP: [u32; MAX_CPUS] = [0; MAX_CPUS];
/// MPIDR_EL1 as read by secondary N.
static mut SEEN_MPIDR: [u64; MAX_CPUS] = [0; MAX_CPUS];

/// The boot CPU, called by `_start` with the device tree's address.
#[no_mangle]
extern "C" fn primary_main(fdt_addr: usize) -> ! {
    puts("raw-payload: hello from cpu 0, device tree at ");
    put_hex(fdt_addr as u64);
    puts("\n");
    let f = fdt::parse(fdt_addr);

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
        bench::run(n);
    }
    if let Some(ms) = arg_value(args, b"payload.sdeispin=") {
        latency::set_sdei_spin_ms(ms);
    }
    if let Some(ms) = arg_value(args, b"payload.tick=") {
        latency::set_tick_ms(ms);
    }
    if let Some(mode) = arg_value(args, b"payload.latency=") {
        latency::run(mode == 2);
    }

    if arg_value(args, b"payload.hotplug=").is_some() {
        if f.cpus < 2 {
            fail("payload.hotplug= needs two cpus");
        }
        hotplug::run(f.mpidrs[1]);
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

/// Secondary `index` (its CPU_ON context id), called by `secondary_entry`.
#[no_mangle]
extern "C" fn secondary_main(index: u64) -> ! {
    let i = index as usize;
    if i == 0 || i >= MAX_CPUS {
        fail("a secondary started with a bad context id");
    }
    if hotplug::round() != 0 {
        hotplug::secondary(i);
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
