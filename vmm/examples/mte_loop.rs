//! A guest-side MTE soak for snapshot tests (static aarch64 binary): tags 64 KiB of
//! `PROT_MTE` memory (granule g gets tag g % 15 + 1), then every second checks with LDG that
//! every tag is still there and reads every granule through its tagged pointer, printing
//! `MTE-LOOP ok <n>`. On SIGUSR1 it also checks that a mismatched tag still faults (in a child)
//! and prints `MTE-LOOP mismatch faulted` or `MTE-LOOP mismatch NOT faulted`. A lost tag makes
//! it print `MTE-LOOP BAD ...` (or die of a tag-check fault).

#[cfg(target_arch = "aarch64")]
#[path = "support/mte.rs"]
mod mte;

#[cfg(target_arch = "aarch64")]
mod soak {
    use super::mte::{self, ldg, stg, with_tag, Mismatch, GRANULE};
    use std::sync::atomic::{AtomicBool, Ordering};

    const LEN: usize = 64 * 1024;

    static CHECK_MISMATCH: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_usr1(_: i32) {
        CHECK_MISMATCH.store(true, Ordering::SeqCst);
    }

    fn tag_of(g: usize) -> u64 {
        (g % 15) as u64 + 1
    }

    fn bad(msg: &str) -> ! {
        println!("MTE-LOOP BAD {msg}");
        std::process::exit(1);
    }

    pub fn run() {
        mte::enable_sync_tag_checks().unwrap_or_else(|_| bad("prctl"));
        let base = mte::map_tagged(LEN).unwrap_or_else(|_| bad("mmap"));
        for g in 0..LEN / GRANULE {
            let p = with_tag(base, tag_of(g)).wrapping_add(g * GRANULE);
            // SAFETY: STG and a store within the PROT_MTE mapping, through the tagged pointer.
            unsafe {
                stg(p);
                p.write_volatile(g as u8);
            }
        }
        // SAFETY: installing a handler that only stores to an atomic.
        unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as usize) };
        println!("MTE-LOOP tagged {} granules", LEN / GRANULE);
        let mut n = 0u64;
        loop {
            for g in 0..LEN / GRANULE {
                // SAFETY: LDG within the mapping.
                let tag = unsafe { ldg(base.wrapping_add(g * GRANULE)) };
                if tag != tag_of(g) {
                    bad(&format!(
                        "granule {g} has tag {tag:#x}, expected {:#x}",
                        tag_of(g)
                    ));
                }
                // SAFETY: a load through the matching tag.
                let v = unsafe {
                    with_tag(base, tag)
                        .wrapping_add(g * GRANULE)
                        .read_volatile()
                };
                if v != g as u8 {
                    bad(&format!("granule {g} holds {v}"));
                }
            }
            n += 1;
            println!("MTE-LOOP ok {n}");
            if CHECK_MISMATCH.swap(false, Ordering::SeqCst) {
                // Granule 0 has tag 1: use tag 9.
                // SAFETY: deliberately mismatched tag; the expected outcome is a tag-check fault.
                match mte::mismatch_outcome(|| unsafe {
                    with_tag(base, 9).read_volatile();
                }) {
                    Mismatch::Faulted => println!("MTE-LOOP mismatch faulted"),
                    Mismatch::NoFault | Mismatch::OtherFault => {
                        println!("MTE-LOOP mismatch NOT faulted")
                    }
                    Mismatch::Unexpected(status) => {
                        println!("MTE-LOOP mismatch NOT faulted (status {status:#x})")
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1000));
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
