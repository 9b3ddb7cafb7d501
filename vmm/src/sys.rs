//! Every `unsafe` of refvmm, behind safe functions: nothing else in the crate may use
//! `unsafe` (`lib.rs` denies it everywhere but here).
//!
//! Each function wraps one system call, or one read of a structure the kernel filled, that
//! std, vm-memory, kvm-ioctls and vmm-sys-util offer no safe form of; none takes a raw pointer
//! or a lifetime it cannot check, so no caller can break memory safety through it.
//!
//! - process: [`effective_uid`], [`gettid`], [`write_stderr`], [`exit_now`], [`tgkill`];
//! - files: [`flock`], [`msync`], [`preadv`], [`pwritev`], [`fallocate`],
//!   [`rename_noreplace`], [`read_stdin`], [`peer_uid`];
//! - signals: [`install_sigsys_handler`] (the seccomp violation report) and, on aarch64,
//!   `kick` (the vCPU kick signal and the `KVM_RUN` it interrupts);
//! - KVM, on aarch64: `get_device_attr`, `nisv_fault_ipa`;
//! - tests: `testing` (built for unit tests only).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The process's effective user ID.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The calling thread's kernel thread ID.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Writes `bytes` to fd 2 with one `write` (no allocation, no lock: usable in a signal
/// handler); a failure (fd 2 closed) is ignored.
pub fn write_stderr(bytes: &[u8]) {
    // SAFETY: the buffer is valid for reads of its length for the duration of the call.
    let _ = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// Ends the process at once with `status` (`_exit`: no destructors, no atexit handlers;
/// usable in a signal handler).
pub fn exit_now(status: i32) -> ! {
    // SAFETY: _exit has no preconditions; nothing after it runs.
    unsafe { libc::_exit(status) }
}

/// Sends `signal` to thread `tid` of this process (`tgkill`). A thread that has exited gives
/// `ESRCH`; a reused thread ID would signal another thread of this process, never memory.
pub fn tgkill(tid: libc::pid_t, signal: i32) -> std::io::Result<()> {
    // SAFETY: the syscall takes three integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `flock(fd, op | LOCK_NB)`: an advisory lock that never blocks.
pub fn flock(fd: BorrowedFd<'_>, op: i32) -> std::io::Result<()> {
    // SAFETY: flock takes a descriptor (kept open by the borrow) and an integer.
    if unsafe { libc::flock(fd.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `msync(MS_SYNC)` of the whole of `mapping`: writes its dirty pages back to the file.
pub fn msync(mapping: &vm_memory::MmapRegion) -> std::io::Result<()> {
    // SAFETY: the range is exactly the live mapping `mapping` owns (start and length as mmap
    // returned them); msync only writes its pages back and touches no Rust memory.
    let rc = unsafe { libc::msync(mapping.as_ptr().cast(), mapping.size(), libc::MS_SYNC) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Fills `buf` from the kernel's random number generator (`getrandom(2)`, no flags: it blocks
/// only until the pool is first initialised), retrying short reads and `EINTR`.
pub fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which is valid,
        // writable memory for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Most buffers one `preadv`/`pwritev` call takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// The guards keep each slice's pointer valid (vm-memory's rule) for as long as they live.
fn guards(bufs: &[vm_memory::VolatileSlice<'_>]) -> Vec<vm_memory::volatile_memory::PtrGuardMut> {
    bufs.iter()
        .take(IOV_MAX)
        .map(|b| b.ptr_guard_mut())
        .collect()
}

fn iovecs(guards: &[vm_memory::volatile_memory::PtrGuardMut]) -> Vec<libc::iovec> {
    guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect()
}

fn file_offset(offset: u64) -> std::io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// The two vectored transfers between a file and guest memory.
#[derive(Clone, Copy)]
enum Vectored {
    Read,
    Write,
}

fn vectored(
    dir: Vectored,
    fd: BorrowedFd<'_>,
    bufs: &[vm_memory::VolatileSlice<'_>],
    offset: u64,
) -> std::io::Result<usize> {
    let held = guards(bufs);
    let iov = iovecs(&held);
    let offset = file_offset(offset)?;
    let (fd, count) = (fd.as_raw_fd(), iov.len() as i32);
    // SAFETY: each iovec is a live VolatileSlice of guest memory (its guard held), mapped
    // read-write for the slices' lifetime, which outlasts the call; the kernel reads (pwritev)
    // or writes (preadv) only within them. Guest memory is never a Rust reference, so the
    // kernel's writes break no aliasing rule.
    let n = unsafe {
        match dir {
            Vectored::Read => libc::preadv(fd, iov.as_ptr(), count, offset),
            Vectored::Write => libc::pwritev(fd, iov.as_ptr(), count, offset),
        }
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `preadv(fd, bufs, offset)`: reads from `offset` into the guest memory `bufs` (the first
/// 1024 of them); returns the bytes read.
pub fn preadv(
    fd: BorrowedFd<'_>,
    bufs: &[vm_memory::VolatileSlice<'_>],
    offset: u64,
) -> std::io::Result<usize> {
    vectored(Vectored::Read, fd, bufs, offset)
}

/// `pwritev(fd, bufs, offset)`: writes the guest memory `bufs` (the first 1024 of them) at
/// `offset`; returns the bytes written.
pub fn pwritev(
    fd: BorrowedFd<'_>,
    bufs: &[vm_memory::VolatileSlice<'_>],
    offset: u64,
) -> std::io::Result<usize> {
    vectored(Vectored::Write, fd, bufs, offset)
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
    let (offset, len) = (file_offset(offset)?, file_offset(len)?);
    // SAFETY: fallocate takes a descriptor (kept open by the borrow) and integers.
    if unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn c_path(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// `rename(from, to)` that fails with `EEXIST` instead of replacing an existing `to`
/// (`renameat2(RENAME_NOREPLACE)`); a path with a NUL byte fails with `EINVAL`.
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let (cf, ct) = (c_path(from)?, c_path(to)?);
    // SAFETY: both pointers are NUL-terminated strings that live across the call; renameat2
    // only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One `read` of fd 0 into `buf` (std's `Stdin` buffers, which the console must not).
pub fn read_stdin(buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading at most `buf.len()` bytes into a live, writable buffer of that size.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// The user ID of the process at the other end of a Unix stream socket (`SO_PEERCRED`).
pub fn peer_uid(stream: &std::os::unix::net::UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the size of `cred`; the
    // kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(std::io::Error::other("short SO_PEERCRED answer"));
    }
    Ok(cred.uid)
}

/// What the SIGSYS handler calls with the number of the forbidden system call.
static SIGSYS_REPORT: std::sync::OnceLock<fn(u32) -> !> = std::sync::OnceLock::new();

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // For SIGSYS, siginfo_t's union holds {void *call_addr; int syscall; unsigned arch}: the
    // syscall number sits 24 bytes in on 64-bit Linux.
    let nr = if info.is_null() {
        u32::MAX
    } else {
        // SAFETY: the kernel passes a full siginfo_t; the read is inside it and aligned.
        unsafe { info.cast::<u8>().add(24).cast::<i32>().read() as u32 }
    };
    match SIGSYS_REPORT.get() {
        Some(report) => report(nr),
        None => exit_now(i32::from(crate::exit_status::SECCOMP_VIOLATION)),
    }
}

/// Installs the process-wide SIGSYS handler, which calls `report` with the forbidden system
/// call's number (in signal context: `report` must only make async-signal-safe calls, and
/// must end the process). The first `report` installed stays.
pub fn install_sigsys_handler(report: fn(u32) -> !) -> std::io::Result<()> {
    let _ = SIGSYS_REPORT.set(report);
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Reads a KVM device attribute (`KVM_GET_DEVICE_ATTR`) of `group` and `attr`. The kernel
/// writes 32 bits (vgic-v3 distributor and redistributor registers, line levels) or 64 (CPU
/// interface system registers, ITS registers) into an 8-byte buffer, so any group is safe to
/// read; a 32-bit value is the low half of the result (arm64 is little-endian).
#[cfg(target_arch = "aarch64")]
pub fn get_device_attr(
    device: &kvm_ioctls::DeviceFd,
    group: u32,
    attr: u64,
) -> Result<u64, kvm_ioctls::Error> {
    let mut value = 0u64;
    let mut a = kvm_bindings::kvm_device_attr {
        group,
        attr,
        addr: &mut value as *mut u64 as u64,
        flags: 0,
    };
    // SAFETY: `addr` points at `value`, live and writable for the call, and 8 bytes long: no
    // KVM device attribute value is wider.
    unsafe { device.get_device_attr(&mut a) }?;
    Ok(value)
}

/// The guest-physical address of the access behind a `KVM_EXIT_ARM_NISV` exit; call only
/// right after `KVM_RUN` returned that exit (otherwise the value is whatever the union
/// holds, plain data either way).
#[cfg(target_arch = "aarch64")]
pub fn nisv_fault_ipa(fd: &mut kvm_ioctls::VcpuFd) -> u64 {
    let run = fd.get_kvm_run();
    // SAFETY: every member of the kvm_run exit union is plain integers, so reading
    // `arm_nisv` is defined whatever exit KVM filled in; the area is this vCPU's, mapped for
    // as long as `fd` lives.
    unsafe { run.__bindgen_anon_1.arm_nisv.fault_ipa }
}

/// The vCPU kick: a signal that takes a vCPU thread out of `KVM_RUN`, or keeps it from
/// entering.
#[cfg(target_arch = "aarch64")]
pub mod kick {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, Ordering};

    thread_local! {
        /// This thread's vCPU `kvm_run` area while it is inside [`run`].
        static RUN_AREA: Cell<*mut kvm_bindings::kvm_run> =
            const { Cell::new(std::ptr::null_mut()) };
        /// A kick that arrived while this thread was outside [`run`].
        static KICKED: AtomicBool = const { AtomicBool::new(false) };
    }

    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        let p = RUN_AREA.with(Cell::get);
        if p.is_null() {
            KICKED.with(|k| k.store(true, Ordering::Relaxed));
        } else {
            // Setting immediate_exit makes a KVM_RUN that has not started yet return EINTR
            // at once, closing the race between "nothing to do" and entering the guest.
            // SAFETY: `p` is this thread's vCPU `kvm_run` mapping, published only inside
            // `run`, which holds the `VcpuFd` (and so the mapping) borrowed all the while; a
            // one-byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
        }
    }

    /// Installs `signal`'s handler (process-wide, once before vCPU threads start).
    pub fn install_handler(signal: i32) -> std::io::Result<()> {
        vmm_sys_util::signal::register_signal_handler(signal, on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    /// `KVM_RUN` that a kick interrupts, or keeps from entering the guest when it arrived
    /// since the thread's last `run` (after whatever check the caller made before calling).
    pub fn run(fd: &mut kvm_ioctls::VcpuFd) -> Result<kvm_ioctls::VcpuExit<'_>, kvm_ioctls::Error> {
        let area: *mut kvm_bindings::kvm_run = fd.get_kvm_run();
        RUN_AREA.with(|c| c.set(area));
        // A kick from before the area was published: honour it now. One from after it sets
        // immediate_exit itself.
        if KICKED.with(|k| k.swap(false, Ordering::Relaxed)) {
            fd.set_kvm_immediate_exit(1);
        }
        let res = fd.run();
        RUN_AREA.with(|c| c.set(std::ptr::null_mut()));
        res
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_kick_outside_run_makes_the_next_run_return_at_once() {
            let signal = vmm_sys_util::signal::SIGRTMIN();
            install_handler(signal).unwrap();
            let kvm = kvm_ioctls::Kvm::new().unwrap();
            let vm = kvm.create_vm().unwrap();
            let mut init = kvm_bindings::kvm_vcpu_init::default();
            vm.get_preferred_target(&mut init).unwrap();
            let mut fd = vm.create_vcpu(0).unwrap();
            fd.vcpu_init(&init).unwrap();
            // Outside `run`, the kick is remembered for the next one.
            crate::sys::tgkill(crate::sys::gettid(), signal).unwrap();
            assert!(KICKED.with(|k| k.load(Ordering::Relaxed)), "remembered");
            let e = run(&mut fd).map(|_| ()).unwrap_err();
            assert_eq!(e.errno(), libc::EINTR, "the guest was not entered");
            assert!(
                !KICKED.with(|k| k.load(Ordering::Relaxed)),
                "the kick was taken"
            );
            assert!(RUN_AREA.with(Cell::get).is_null(), "unpublished after run");
        }
    }
}

/// Helpers for tests.
#[cfg(test)]
pub mod testing {
    use std::path::Path;

    /// Creates a FIFO at `path`.
    pub fn mkfifo(path: &Path) -> std::io::Result<()> {
        let c = super::c_path(path)?;
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Copies `data` into `mapping` at `offset` (which must fit: checked).
    pub fn write_mapping(mapping: &vm_memory::MmapRegion, offset: usize, data: &[u8]) {
        assert!(offset
            .checked_add(data.len())
            .is_some_and(|e| e <= mapping.size()));
        assert!(
            mapping.prot() & libc::PROT_WRITE != 0,
            "a read-only mapping"
        );
        // SAFETY: the range is inside the live, writable mapping (checked above); nothing
        // else writes it during the copy in these tests.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), mapping.as_ptr().add(offset), data.len())
        };
    }

    /// Copies `len` bytes of `mapping` from `offset` (which must fit: checked).
    pub fn read_mapping(mapping: &vm_memory::MmapRegion, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset.checked_add(len).is_some_and(|e| e <= mapping.size()));
        let mut out = vec![0u8; len];
        // SAFETY: the range is inside the live mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(mapping.as_ptr().add(offset), out.as_mut_ptr(), len)
        };
        out
    }

    /// Connects to the Unix socket at `path` from a forked child running as uid/gid 65534,
    /// sends `request` and returns the first bytes of the answer. The child makes raw
    /// syscalls only (no allocation, no locks), as a child forked from a threaded process
    /// must.
    pub fn request_as_nobody(path: &Path, request: &[u8]) -> String {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: a zeroed sockaddr_un is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        assert!(bytes.len() < addr.sun_path.len());
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let (mut rx, tx) = std::os::unix::net::UnixStream::pair().unwrap();
        let tx_fd = tx.as_raw_fd();
        // SAFETY: the child only makes async-signal-safe syscalls on memory set up before the
        // fork, then `_exit`s; the parent only waits for it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(2);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if fd < 0 || libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0
                {
                    libc::_exit(3);
                }
                libc::write(fd, request.as_ptr().cast(), request.len());
                let mut buf = [0u8; 256];
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n > 0 {
                    libc::write(tx_fd, buf.as_ptr().cast(), n as usize);
                }
                libc::_exit(0);
            }
            drop(tx);
            let mut answer = String::new();
            let _ = rx.read_to_string(&mut answer);
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
            assert!(
                libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                "child status {st:#x}"
            );
            answer
        }
    }
}
