//! The crate's only unsafe code: memfd and seal system calls, `fstatfs`, and (aarch64 with
//! the `kvm` feature) the `KVM_ARM_MTE_COPY_TAGS` and memory-slot ioctls.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

/// Creates a close-on-exec memfd that allows sealing, backed by huge pages if `hugetlb`.
pub fn memfd_create(name: &CStr, hugetlb: bool) -> io::Result<File> {
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if hugetlb {
        flags |= libc::MFD_HUGETLB;
    }
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the kernel does
    // not keep the pointer.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid and owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Adds `seals` (`F_SEAL_*`) to a memfd.
pub fn add_seals(file: &File, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: F_ADD_SEALS takes an integer argument and only touches kernel state of the fd,
    // which `file` keeps open for the duration of the call.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Returns the seals (`F_SEAL_*`) of a memfd.
pub fn get_seals(file: &File) -> io::Result<libc::c_int> {
    // SAFETY: F_GET_SEALS takes no argument and returns an integer.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// Returns the magic number of the filesystem holding `file`.
pub fn fs_magic(file: &File) -> io::Result<u64> {
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable statfs the kernel fills in; the fd is open.
    let ret = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type is signed on some targets; the magic numbers are 32-bit patterns.
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as u64 & 0xffff_ffff)
}

/// Asks for transparent huge pages on `len` bytes mapped at `addr` (`MADV_HUGEPAGE`).
pub fn madvise_hugepage(addr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: the callers pass a mapping of `len` bytes they own; MADV_HUGEPAGE only sets a
    // flag on the mapping and never changes its contents or validity.
    let ret = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `PR_SET_VMA` and `PR_SET_VMA_ANON_NAME` from `linux/prctl.h`.
const PR_SET_VMA: libc::c_int = 0x53_56_4d_41;
const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;

/// Names the anonymous mapping of `len` bytes at `addr` (shown as `[anon:<name>]`).
pub fn name_anonymous(addr: *mut u8, len: usize, name: &str) -> io::Result<()> {
    let name = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: PR_SET_VMA_ANON_NAME reads the NUL-terminated `name` (copied by the kernel, and
    // alive for the call) and only labels the caller's own mapping at `addr`.
    let ret = unsafe {
        libc::prctl(
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            addr as libc::c_ulong,
            len as libc::c_ulong,
            name.as_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Host page size in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
pub use kvm::*;

#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
mod kvm {
    use std::io;

    use kvm_bindings::{kvm_arm_copy_mte_tags, kvm_enable_cap, kvm_userspace_memory_region, KVMIO};
    use kvm_ioctls::VmFd;
    use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};
    use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

    // The kernel declares this ioctl with _IOR although it copies in both directions.
    ioctl_ior_nr!(KVM_ARM_MTE_COPY_TAGS, KVMIO, 0xb4, kvm_arm_copy_mte_tags);
    ioctl_iow_nr!(KVM_ENABLE_CAP, KVMIO, 0xa3, kvm_enable_cap);

    /// `KVM_ENABLE_CAP` on the VM. Issued directly: kvm-ioctls' `VmFd::enable_cap` exists on
    /// aarch64 only from 0.25.1, and the crate works with 0.25.0.
    pub fn enable_cap(vm: &VmFd, cap: &kvm_enable_cap) -> io::Result<()> {
        // SAFETY: `vm` is a VM fd and `cap` a valid kvm_enable_cap the kernel only reads
        // during the call.
        let ret = unsafe { ioctl_with_ref(vm, KVM_ENABLE_CAP(), cap) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The ioctl number of `KVM_ARM_MTE_COPY_TAGS`, derived from kvm-bindings.
    pub fn copy_tags_ioctl_nr() -> u64 {
        KVM_ARM_MTE_COPY_TAGS() as u64
    }

    /// Issues one `KVM_ARM_MTE_COPY_TAGS`; returns the number of bytes of guest memory covered.
    ///
    /// `tags` must hold at least `length / 16` bytes; the caller checked this.
    pub fn copy_tags(
        vm: &VmFd,
        guest_ipa: u64,
        length: u64,
        tags: *mut u8,
        flags: u64,
    ) -> io::Result<u64> {
        let mut arg = kvm_arm_copy_mte_tags {
            guest_ipa,
            length,
            addr: tags.cast(),
            flags,
            reserved: [0; 2],
        };
        // SAFETY: `vm` is a VM fd; `arg` is a valid kvm_arm_copy_mte_tags, and `arg.addr`
        // points to a buffer of at least `length / 16` bytes (the kernel's maximum access),
        // writable when `flags` asks for tags from the guest, that outlives the call.
        let ret = unsafe { ioctl_with_mut_ref(vm, KVM_ARM_MTE_COPY_TAGS(), &mut arg) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret as u64)
    }

    /// Registers a memory slot.
    ///
    /// `region.userspace_addr .. + memory_size` must be a mapping that stays valid while the
    /// slot exists; the callers in this crate pass mappings they keep alive for the VM.
    pub fn set_memory_region(vm: &VmFd, region: kvm_userspace_memory_region) -> io::Result<()> {
        // SAFETY: the callers pass a live mapping of `memory_size` bytes that outlives the
        // slot (they remove the slot, or drop the VM, before unmapping).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// Mounts a fresh ramfs at `dir` (needs `CAP_SYS_ADMIN`).
#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
pub fn mount_ramfs(dir: &CStr) -> io::Result<()> {
    // SAFETY: all pointers are valid NUL-terminated strings (or null for `data`) that outlive
    // the call; mount does not keep them.
    let ret = unsafe {
        libc::mount(
            c"ramfs".as_ptr(),
            dir.as_ptr(),
            c"ramfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lazily unmounts `dir`.
#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
pub fn unmount(dir: &CStr) -> io::Result<()> {
    // SAFETY: `dir` is a valid NUL-terminated path that outlives the call.
    let ret = unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
