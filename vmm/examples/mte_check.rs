//! A guest-side check of MTE, run inside a refvmm guest (static aarch64 binary): maps memory
//! with `PROT_MTE`, tags it, and checks that an access through a pointer with the matching tag
//! works while one with a mismatched tag takes a synchronous tag-check fault (SIGSEGV,
//! `si_code` SEGV_MTESERR). Prints `MTE-CHECK PASS` and exits 0, or says what failed and
//! exits 1.

#[cfg(target_arch = "aarch64")]
mod check {
    use std::arch::asm;

    const PROT_MTE: i32 = 0x20;
    const PR_SET_TAGGED_ADDR_CTRL: i32 = 55;
    const PR_TAGGED_ADDR_ENABLE: u64 = 1;
    const PR_MTE_TCF_SYNC: u64 = 1 << 1;
    const PR_MTE_TAG_SHIFT: u64 = 3;
    const SEGV_MTESERR: i32 = 9;
    const GRANULE: usize = 16;

    fn fail(msg: &str) -> ! {
        println!("MTE-CHECK FAIL: {msg}");
        std::process::exit(1);
    }

    /// Sets the allocation tag of the granule at `p` to the logical tag in `p`'s top byte.
    unsafe fn stg(p: *mut u8) {
        // SAFETY: the caller passes a pointer into a PROT_MTE mapping.
        unsafe { asm!(".arch_extension memtag", "stg {0}, [{0}]", in(reg) p, options(nostack)) };
    }

    /// Reads the allocation tag of the granule at `p` (returned in the pointer's tag bits).
    unsafe fn ldg(p: *mut u8) -> *mut u8 {
        let mut r = p;
        // SAFETY: as for `stg`.
        unsafe {
            asm!(".arch_extension memtag", "ldg {0}, [{1}]", inout(reg) r, in(reg) p, options(nostack, readonly))
        };
        r
    }

    fn with_tag(p: *mut u8, tag: u64) -> *mut u8 {
        ((p as u64 & !(0xf << 56)) | (tag << 56)) as *mut u8
    }

    extern "C" fn on_segv(_sig: i32, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let code = unsafe { (*info).si_code };
        // Only async-signal-safe calls from here.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(if code == SEGV_MTESERR { 42 } else { 43 }) };
    }

    pub fn run() {
        let ctrl = PR_TAGGED_ADDR_ENABLE | PR_MTE_TCF_SYNC | (0xfffe << PR_MTE_TAG_SHIFT);
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(PR_SET_TAGGED_ADDR_CTRL, ctrl, 0, 0, 0) } != 0 {
            fail(&format!(
                "prctl(PR_SET_TAGGED_ADDR_CTRL): {}",
                std::io::Error::last_os_error()
            ));
        }
        let len = 4096;
        // SAFETY: a fresh anonymous mapping.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE | PROT_MTE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            fail(&format!(
                "mmap(PROT_MTE): {}",
                std::io::Error::last_os_error()
            ));
        }
        let base = base as *mut u8;
        let tagged = with_tag(base, 0x7);
        for g in 0..len / GRANULE {
            // SAFETY: within the PROT_MTE mapping.
            unsafe { stg(tagged.add(g * GRANULE)) };
        }
        // SAFETY: within the mapping, through a pointer whose tag matches.
        let seen = unsafe {
            tagged.add(100).write_volatile(0x5a);
            tagged.add(100).read_volatile()
        };
        if seen != 0x5a {
            fail("a matching-tag access read back the wrong value");
        }
        // SAFETY: LDG within the mapping.
        let got = unsafe { ldg(base.add(32)) } as u64 >> 56 & 0xf;
        if got != 0x7 {
            fail(&format!("LDG reads tag {got:#x}, expected 0x7"));
        }
        println!("MTE-CHECK matching tag: ok (LDG sees {got:#x})");

        // A mismatched access must fault synchronously; do it in a child.
        // SAFETY: fork in a single-threaded process.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: installing a handler that only calls _exit.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_segv as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO;
                libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
            }
            let wrong = with_tag(base, 0x3);
            // SAFETY: deliberately mismatched tag; the expected outcome is a tag-check fault.
            unsafe { wrong.add(100).write_volatile(1) };
            // SAFETY: _exit in the child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        match code {
            Some(42) => println!("MTE-CHECK mismatched tag: tag-check fault (SEGV_MTESERR)"),
            Some(0) => fail("a mismatched-tag store did not fault"),
            Some(43) => fail("a mismatched-tag store faulted, but not with SEGV_MTESERR"),
            other => fail(&format!(
                "child ended unexpectedly: {other:?} (status {status:#x})"
            )),
        }
        println!("MTE-CHECK PASS");
    }
}

fn main() {
    #[cfg(target_arch = "aarch64")]
    check::run();
    #[cfg(not(target_arch = "aarch64"))]
    {
        eprintln!("mte_check runs only on aarch64");
        std::process::exit(2);
    }
}
