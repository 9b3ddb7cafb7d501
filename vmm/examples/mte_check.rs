//! A guest-side check of MTE, run inside a refvmm guest (static aarch64 binary): maps memory
//! with `PROT_MTE`, tags it, and checks that an access through a pointer with the matching tag
//! works while one with a mismatched tag takes a synchronous tag-check fault (SIGSEGV,
//! `si_code` SEGV_MTESERR). Prints `MTE-CHECK PASS` and exits 0, or says what failed and
//! exits 1.

#[cfg(target_arch = "aarch64")]
#[path = "support/mte.rs"]
mod mte;

#[cfg(target_arch = "aarch64")]
mod check {
    use super::mte::{self, ldg, stg, with_tag, Mismatch, GRANULE};

    fn fail(msg: &str) -> ! {
        println!("MTE-CHECK FAIL: {msg}");
        std::process::exit(1);
    }

    pub fn run() {
        mte::enable_sync_tag_checks().unwrap_or_else(|e| fail(&e));
        let len = 4096;
        let base = mte::map_tagged(len).unwrap_or_else(|e| fail(&e));
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
        let got = unsafe { ldg(base.add(32)) };
        if got != 0x7 {
            fail(&format!("LDG reads tag {got:#x}, expected 0x7"));
        }
        println!("MTE-CHECK matching tag: ok (LDG sees {got:#x})");

        // A mismatched access must fault synchronously; do it in a child.
        let wrong = with_tag(base, 0x3);
        // SAFETY: deliberately mismatched tag; the expected outcome is a tag-check fault.
        match mte::mismatch_outcome(|| unsafe { wrong.add(100).write_volatile(1) }) {
            Mismatch::Faulted => {
                println!("MTE-CHECK mismatched tag: tag-check fault (SEGV_MTESERR)")
            }
            Mismatch::NoFault => fail("a mismatched-tag store did not fault"),
            Mismatch::OtherFault => {
                fail("a mismatched-tag store faulted, but not with SEGV_MTESERR")
            }
            Mismatch::Unexpected(status) => {
                fail(&format!("child ended unexpectedly (status {status:#x})"))
            }
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
