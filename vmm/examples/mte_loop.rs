//! A guest-side MTE soak for snapshot tests (static aarch64 binary): tags 64 KiB of
//! `PROT_MTE` memory (granule g gets tag g % 15 + 1), then every second checks with LDG that
//! every tag is still there and reads every granule through its tagged pointer, printing
//! `MTE-LOOP ok <n>`. On SIGUSR1 it also checks that a mismatched tag still faults (in a child)
//! and prints `MTE-LOOP mismatch faulted` or `MTE-LOOP mismatch NOT faulted`. A lost tag makes
//! it print `MTE-LOOP BAD ...` (or die of a tag-check fault).

#[cfg(target_arch = "aarch64")]
mod soak {
    use std::arch::asm;
    use std::sync::atomic::{AtomicBool, Ordering};

    const PROT_MTE: i32 = 0x20;
    const PR_SET_TAGGED_ADDR_CTRL: i32 = 55;
    const CTRL: u64 = 1 | (1 << 1) | (0xfffe << 3);
    const SEGV_MTESERR: i32 = 9;
    const LEN: usize = 64 * 1024;
    const GRANULE: usize = 16;

    static CHECK_MISMATCH: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_usr1(_: i32) {
        CHECK_MISMATCH.store(true, Ordering::SeqCst);
    }

    extern "C" fn on_segv(_: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let code = unsafe { (*info).si_code };
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(if code == SEGV_MTESERR { 42 } else { 43 }) };
    }

    fn tagged(p: *mut u8, tag: u64) -> *mut u8 {
        ((p as u64 & !(0xf << 56)) | (tag << 56)) as *mut u8
    }

    fn tag_of(g: usize) -> u64 {
        (g % 15) as u64 + 1
    }

    pub fn run() {
        // SAFETY: plain prctl and mmap calls; the mapping is checked.
        let base = unsafe {
            if libc::prctl(PR_SET_TAGGED_ADDR_CTRL, CTRL, 0, 0, 0) != 0 {
                println!("MTE-LOOP BAD prctl");
                std::process::exit(1);
            }
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE | PROT_MTE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            println!("MTE-LOOP BAD mmap");
            std::process::exit(1);
        }
        let base = base as *mut u8;
        for g in 0..LEN / GRANULE {
            let p = tagged(base, tag_of(g)).wrapping_add(g * GRANULE);
            // SAFETY: STG and a store within the PROT_MTE mapping, through the tagged pointer.
            unsafe {
                asm!(".arch_extension memtag", "stg {0}, [{0}]", in(reg) p, options(nostack));
                p.write_volatile(g as u8);
            }
        }
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as usize) };
        println!("MTE-LOOP tagged {} granules", LEN / GRANULE);
        let mut n = 0u64;
        loop {
            for g in 0..LEN / GRANULE {
                let plain = base.wrapping_add(g * GRANULE);
                let mut got = plain;
                // SAFETY: LDG within the mapping.
                unsafe {
                    asm!(".arch_extension memtag", "ldg {0}, [{1}]", inout(reg) got, in(reg) plain, options(nostack, readonly))
                };
                let tag = (got as u64 >> 56) & 0xf;
                if tag != tag_of(g) {
                    println!(
                        "MTE-LOOP BAD granule {g} has tag {tag:#x}, expected {:#x}",
                        tag_of(g)
                    );
                    std::process::exit(1);
                }
                // SAFETY: a load through the matching tag.
                let v = unsafe { tagged(base, tag).wrapping_add(g * GRANULE).read_volatile() };
                if v != g as u8 {
                    println!("MTE-LOOP BAD granule {g} holds {v}");
                    std::process::exit(1);
                }
            }
            n += 1;
            println!("MTE-LOOP ok {n}");
            if CHECK_MISMATCH.swap(false, Ordering::SeqCst) {
                check_mismatch(base);
            }
            std::thread::sleep(std::time::Duration::from_millis(1000));
        }
    }

    fn check_mismatch(base: *mut u8) {
        // SAFETY: fork in a single-threaded process; the child only installs a handler, makes
        // one access and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_segv as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO;
                libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
                // Granule 0 has tag 1: use tag 9.
                tagged(base, 9).read_volatile();
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 42 {
            println!("MTE-LOOP mismatch faulted");
        } else {
            println!("MTE-LOOP mismatch NOT faulted (status {status:#x})");
        }
    }
}

fn main() {
    #[cfg(target_arch = "aarch64")]
    soak::run();
    #[cfg(not(target_arch = "aarch64"))]
    {
        eprintln!("mte_loop runs only on aarch64");
        std::process::exit(2);
    }
}
