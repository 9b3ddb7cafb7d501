//! Guest-side probe (static aarch64 binary): can a program in the guest use tagged memory on a
//! pmem device? Maps the device given as argument `MAP_SHARED` with `PROT_MTE`, and separately
//! maps it without and asks `mprotect` to add `PROT_MTE`; prints one line per attempt:
//! `PMEM-MTE mmap ok|refused <errno>` and `PMEM-MTE mprotect ok|refused <errno>`. A plain mapping
//! must work (`PMEM-MTE plain mmap ok`), or the probe proves nothing.

#[cfg(target_arch = "aarch64")]
fn main() {
    use std::os::fd::AsRawFd;
    const PROT_MTE: i32 = 0x20;
    const LEN: usize = 2 << 20;
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/dev/pmem0".into());
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            println!("PMEM-MTE cannot open {path}: {e}");
            std::process::exit(1);
        }
    };
    let map = |prot: i32| {
        // SAFETY: a new shared mapping of the device with no address hint; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        (p != libc::MAP_FAILED)
            .then_some(p)
            .ok_or_else(std::io::Error::last_os_error)
    };
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    match map(rw | PROT_MTE) {
        Ok(_) => println!("PMEM-MTE mmap ok"),
        Err(e) => println!("PMEM-MTE mmap refused {}", e.raw_os_error().unwrap_or(0)),
    }
    match map(rw) {
        Ok(p) => {
            println!("PMEM-MTE plain mmap ok");
            // SAFETY: `p` is the LEN-byte mapping just made.
            let rc = unsafe { libc::mprotect(p, LEN, rw | PROT_MTE) };
            if rc == 0 {
                println!("PMEM-MTE mprotect ok");
            } else {
                let e = std::io::Error::last_os_error();
                println!(
                    "PMEM-MTE mprotect refused {}",
                    e.raw_os_error().unwrap_or(0)
                );
            }
        }
        Err(e) => {
            println!("PMEM-MTE plain mmap failed: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn main() {
    eprintln!("pmem_mte_probe runs inside an arm64 guest");
}
