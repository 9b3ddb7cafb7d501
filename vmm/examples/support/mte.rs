//! MTE helpers shared by the guest-side example programs (aarch64 Linux user space).

use std::arch::asm;

const PROT_MTE: i32 = 0x20;
const PR_SET_TAGGED_ADDR_CTRL: i32 = 55;
const PR_TAGGED_ADDR_ENABLE: u64 = 1;
const PR_MTE_TCF_SYNC: u64 = 1 << 1;
const PR_MTE_TAG_SHIFT: u64 = 3;
const SEGV_MTESERR: i32 = 9;
/// Bytes per allocation tag.
pub const GRANULE: usize = 16;

/// Enables tagged addresses and synchronous tag-check faults for this process.
pub fn enable_sync_tag_checks() -> Result<(), String> {
    let ctrl = PR_TAGGED_ADDR_ENABLE | PR_MTE_TCF_SYNC | (0xfffe << PR_MTE_TAG_SHIFT);
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(PR_SET_TAGGED_ADDR_CTRL, ctrl, 0, 0, 0) } != 0 {
        return Err(format!(
            "prctl(PR_SET_TAGGED_ADDR_CTRL): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Maps `len` bytes of anonymous `PROT_MTE` memory.
pub fn map_tagged(len: usize) -> Result<*mut u8, String> {
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
        return Err(format!(
            "mmap(PROT_MTE): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(base.cast())
}

/// `p` with logical tag `tag` in bits 59:56.
pub fn with_tag(p: *mut u8, tag: u64) -> *mut u8 {
    ((p as u64 & !(0xf << 56)) | (tag << 56)) as *mut u8
}

/// Sets the allocation tag of the granule at `p` to the logical tag in `p`'s top byte.
///
/// # Safety
/// `p` must point into a `PROT_MTE` mapping.
pub unsafe fn stg(p: *mut u8) {
    // SAFETY: the caller passes a pointer into a PROT_MTE mapping.
    unsafe { asm!(".arch_extension memtag", "stg {0}, [{0}]", in(reg) p, options(nostack)) };
}

/// The allocation tag of the granule at `p`.
///
/// # Safety
/// `p` must point into a `PROT_MTE` mapping.
pub unsafe fn ldg(p: *mut u8) -> u64 {
    let mut r = p;
    // SAFETY: as for `stg`.
    unsafe {
        asm!(".arch_extension memtag", "ldg {0}, [{1}]", inout(reg) r, in(reg) p, options(nostack, readonly))
    };
    (r as u64 >> 56) & 0xf
}

extern "C" fn on_segv(_: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(if code == SEGV_MTESERR { 42 } else { 43 }) };
}

/// How an access through a mismatched tag ended.
pub enum Mismatch {
    /// A synchronous tag-check fault (SIGSEGV, SEGV_MTESERR).
    Faulted,
    /// No fault.
    NoFault,
    /// A SIGSEGV of another kind.
    OtherFault,
    /// The child ended otherwise (raw wait status).
    Unexpected(i32),
}

/// Makes `access` (an access through a mismatched tag) in a forked child and reports how the
/// child ended. Call from a single-threaded process.
pub fn mismatch_outcome(access: impl FnOnce()) -> Mismatch {
    // SAFETY: fork in a single-threaded process; the child only installs a handler, makes
    // the access and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: installing a handler that only calls _exit.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_segv as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
        }
        access();
        // SAFETY: _exit in the child.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
        Some(42) => Mismatch::Faulted,
        Some(0) => Mismatch::NoFault,
        Some(43) => Mismatch::OtherFault,
        _ => Mismatch::Unexpected(status),
    }
}
