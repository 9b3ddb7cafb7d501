//! Smoke tests of the arm64 KVM features the project relies on. They talk to a real
//! `/dev/kvm` and so only run on aarch64 (inside the emulated machine on x86 hosts). They
//! register memory slots with KVM directly, not through mte-memory's `MemorySlots`, whose own
//! checks would refuse the ramfs mapping before KVM could.
#![cfg(target_arch = "aarch64")]

use kvm_bindings::{
    kvm_device_attr, kvm_enable_cap, kvm_userspace_memory_region, KVM_ARM_VM_SMCCC_CTRL,
    KVM_ARM_VM_SMCCC_FILTER, KVM_CAP_ARM_MTE,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

const MEM_SIZE: usize = 2 << 20;
const GUEST_BASE: u64 = 0x8000_0000;

fn mte_vm(kvm: &Kvm) -> VmFd {
    let vm = kvm.create_vm().expect("create VM");
    let cap = kvm_enable_cap {
        cap: KVM_CAP_ARM_MTE,
        ..Default::default()
    };
    vm.enable_cap(&cap)
        .expect("enable KVM_CAP_ARM_MTE on a VM without vCPUs");
    vm
}

/// Maps `size` bytes of `fd` shared, read-write.
fn map_shared(fd: &OwnedFd, size: usize) -> *mut libc::c_void {
    // SAFETY: a fresh mapping chosen by the kernel; the fd is valid and at least `size` long.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p
}

fn set_region(vm: &VmFd, host: *mut libc::c_void, size: usize) -> Result<(), kvm_ioctls::Error> {
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: GUEST_BASE,
        memory_size: size as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: `host` is a live mapping of `size` bytes that outlives the VM in these tests
    // (it is never unmapped before the process exits).
    unsafe { vm.set_user_memory_region(region) }
}

fn memfd(size: usize) -> OwnedFd {
    // Not sealed: the smoke tests ask KVM about a plain memfd.
    let file = mte_memory::memfd::create("smoke", false).expect("memfd_create");
    file.set_len(size as u64).expect("ftruncate");
    OwnedFd::from(file)
}

#[test]
fn smoke_kvm_reports_mte_capability() {
    let kvm = Kvm::new().expect("open /dev/kvm");
    assert!(kvm.check_extension(Cap::ArmPsci02), "PSCI 0.2 expected");
    let mte = kvm.check_extension_raw(u64::from(KVM_CAP_ARM_MTE));
    assert!(mte > 0, "KVM_CAP_ARM_MTE not reported (got {mte})");
}

#[test]
fn smoke_vm_has_smccc_filter_attribute() {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create VM");
    let attr = kvm_device_attr {
        group: KVM_ARM_VM_SMCCC_CTRL,
        attr: u64::from(KVM_ARM_VM_SMCCC_FILTER),
        ..Default::default()
    };
    vm.has_device_attr(&attr)
        .expect("KVM_ARM_VM_SMCCC_FILTER attribute missing on the VM fd");
}

#[test]
fn smoke_mte_vm_accepts_shared_memfd_memory() {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = mte_vm(&kvm);
    let fd = memfd(MEM_SIZE);
    let host = map_shared(&fd, MEM_SIZE);
    set_region(&vm, host, MEM_SIZE).expect("MTE VM must accept a MAP_SHARED memfd region");
}

#[test]
fn smoke_mte_vm_refuses_shared_ramfs_file() {
    let dir = std::env::temp_dir().join(format!("smoke-ramfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = CString::new("ramfs").unwrap();
    let target = CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings; a null data pointer is allowed for ramfs.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount ramfs: {}", std::io::Error::last_os_error());
    let path = dir.join("guest-ram");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(MEM_SIZE as u64).unwrap();
    let fd = OwnedFd::from(file);
    let host = map_shared(&fd, MEM_SIZE);

    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = mte_vm(&kvm);
    let err = set_region(&vm, host, MEM_SIZE)
        .expect_err("an MTE VM must refuse MAP_SHARED memory from a ramfs file");
    assert_eq!(err.errno(), libc::EINVAL, "expected EINVAL, got {err}");

    // The same ramfs memory is fine for a VM without MTE: the refusal is the MTE rule.
    let plain = kvm.create_vm().expect("create VM");
    set_region(&plain, host, MEM_SIZE).expect("a non-MTE VM accepts ramfs memory");
}
