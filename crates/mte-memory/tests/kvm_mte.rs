//! MTE with KVM: needs an arm64 host (or emulated machine) with MTE and `/dev/kvm`.
//!
//! Run with `cargo test -p mte-memory --features kvm --test kvm_mte` on such a host.
#![cfg(all(target_arch = "aarch64", feature = "kvm"))]

use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use mte_memory::kvm::{
    self, probe, Error, KvmTagStore, MemorySlots, MteEnabled, Outcome, SlotFlags,
};
use mte_memory::tags::Error as TagError;
use mte_memory::{
    SharedGuestMemory, SharedMemoryConfig, TagSnapshot, TagStore, TAGS_PER_PAGE, TAG_PAGE_SIZE,
};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, MmapRegion};

const BASE: u64 = 0x8000_0000;
const SIZE: u64 = 2 << 20;

fn shared_memory() -> Arc<SharedGuestMemory> {
    Arc::new(
        SharedGuestMemory::new(SharedMemoryConfig {
            regions: vec![(GuestAddress(BASE), SIZE)],
            mte_guest: true,
            ..Default::default()
        })
        .unwrap(),
    )
}

/// An MTE VM, its slots, and its memory registered as slot 0.
struct MteVm {
    vm: VmFd,
    mte: MteEnabled,
    slots: MemorySlots,
    memory: Arc<SharedGuestMemory>,
}

impl MteVm {
    fn store(&self) -> KvmTagStore<'_> {
        KvmTagStore::new(&self.vm, self.mte).unwrap()
    }
}

fn mte_vm(dirty_log: bool) -> MteVm {
    let vm = Kvm::new().unwrap().create_vm().unwrap();
    let mte = kvm::enable(&vm).unwrap();
    let memory = shared_memory();
    let mut slots = MemorySlots::new(&vm, Some(mte)).unwrap();
    let flags = SlotFlags {
        dirty_log,
        ..Default::default()
    };
    slots.add_guest_memory(&vm, &[0], &memory, flags).unwrap();
    MteVm {
        vm,
        mte,
        slots,
        memory,
    }
}

/// A `len`-byte memfd mapping, `MAP_SHARED`, read-write (as refvmm maps a pmem memfd).
fn memfd_mapping(len: u64) -> Arc<MmapRegion> {
    let file = mte_memory::memfd::create_sized("kvm-mte-test", len, false).unwrap();
    Arc::new(
        MmapRegionBuilder::new(len as usize)
            .with_file_offset(FileOffset::new(file, 0))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED)
            .build()
            .unwrap(),
    )
}

fn pattern(pages: usize, seed: u8) -> Vec<u8> {
    (0..pages * TAGS_PER_PAGE)
        .map(|i| ((i as u8).wrapping_mul(7) ^ seed) & 0xf)
        .collect()
}

#[test]
fn probe_finds_mte_and_shared_memfd_but_not_ramfs() {
    let kvm = Kvm::new().unwrap();

    let report = probe(&kvm).unwrap();
    println!("{report}");

    assert!(report.capability);
    assert_eq!(report.enable, Outcome::Yes);
    assert_eq!(report.shared_memfd, Outcome::Yes);
    assert_eq!(report.copy_tags, Outcome::Yes);
    assert!(
        matches!(report.shared_ramfs, Outcome::No(_)),
        "{}",
        report.shared_ramfs
    );
    assert!(report.mte_usable());
}

#[test]
fn tags_written_through_kvm_read_back() {
    let vm = mte_vm(false);
    let mut store = vm.store();
    let tags = pattern(16, 3);

    store
        .write_tags(GuestAddress(BASE + 0x10000), &tags)
        .unwrap();
    let mut back = vec![0u8; tags.len()];
    store
        .read_tags(GuestAddress(BASE + 0x10000), &mut back)
        .unwrap();

    assert_eq!(back, tags);
}

#[test]
fn untouched_guest_memory_reads_zero_tags() {
    let vm = mte_vm(false);
    let mut back = vec![0xffu8; 4 * TAGS_PER_PAGE];

    vm.store().read_tags(GuestAddress(BASE), &mut back).unwrap();

    assert!(back.iter().all(|&t| t == 0));
}

/// Reads the allocation tag of the granule at `ptr` with `LDG`.
fn ldg(ptr: *const u8) -> u8 {
    let mut addr = ptr as u64;
    // SAFETY: LDG only reads the allocation tag of the granule containing `addr`, which is in
    // a live PROT_MTE mapping owned by the caller; it writes nothing but the register.
    unsafe {
        std::arch::asm!(
            ".arch_extension memtag",
            "ldg {a}, [{a}]",
            a = inout(reg) addr,
            options(nostack, readonly, preserves_flags)
        );
    }
    ((addr >> 56) & 0xf) as u8
}

#[test]
fn tags_written_through_kvm_are_seen_by_a_tagged_vmm_mapping() {
    let vm = mte_vm(false);
    let view = vm.memory.map_region_again(0, true).unwrap();
    let tags = pattern(1, 9);

    vm.store()
        .write_tags(GuestAddress(BASE + 0x3000), &tags)
        .unwrap();
    let seen: Vec<u8> = (0..TAGS_PER_PAGE)
        .map(|g| ldg(view.as_ptr().wrapping_add(0x3000 + g * 16)))
        .collect();

    assert_eq!(seen, tags);
}

#[test]
fn tag_writes_while_dirty_logging_are_refused_as_busy() {
    let vm = mte_vm(true);
    let mut store = vm.store();

    let result = store.write_tags(GuestAddress(BASE), &pattern(1, 1));
    let mut back = vec![0u8; TAGS_PER_PAGE];
    let read = store.read_tags(GuestAddress(BASE), &mut back);

    assert!(matches!(result, Err(TagError::DirtyLogging)), "{result:?}");
    assert!(read.is_ok());
}

#[test]
fn range_outside_memory_is_out_of_range() {
    let vm = mte_vm(false);
    let mut back = vec![0u8; TAGS_PER_PAGE];

    let result = vm.store().read_tags(GuestAddress(BASE + SIZE), &mut back);

    assert!(
        matches!(result, Err(TagError::OutOfRange { .. })),
        "{result:?}"
    );
}

#[test]
fn enabling_mte_after_a_vcpu_exists_is_refused() {
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let _vcpu = vm.create_vcpu(0).unwrap();

    let result = kvm::enable(&vm);

    assert!(matches!(result, Err(Error::Enable(_))), "{result:?}");
}

#[test]
fn tag_snapshot_restores_into_a_fresh_vm() {
    let source = mte_vm(false);
    let layout = [(GuestAddress(BASE), SIZE)];
    let tagged_pages = [0u64, 1, 100, 511];
    {
        let mut store = source.store();
        for &p in &tagged_pages {
            store
                .write_tags(GuestAddress(BASE + p * TAG_PAGE_SIZE), &pattern(1, p as u8))
                .unwrap();
        }
    }

    let bytes = TagSnapshot::capture_full(&source.store(), &layout)
        .unwrap()
        .encode();
    let target = mte_vm(false);
    TagSnapshot::decode(&bytes)
        .unwrap()
        .restore(&mut target.store())
        .unwrap();

    let mut want = vec![0u8; (SIZE / 16) as usize];
    let mut got = vec![0u8; (SIZE / 16) as usize];
    source
        .store()
        .read_tags(GuestAddress(BASE), &mut want)
        .unwrap();
    target
        .store()
        .read_tags(GuestAddress(BASE), &mut got)
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(TagSnapshot::decode(&bytes).unwrap().tagged_pages(), 4);
}

#[test]
fn guest_memory_at_a_caller_chosen_slot_reads_tags_back() {
    let vm = Kvm::new().unwrap().create_vm().unwrap();
    let mte = kvm::enable(&vm).unwrap();
    let memory = shared_memory();
    let mut slots = MemorySlots::new(&vm, Some(mte)).unwrap();
    let flags = SlotFlags {
        dirty_log: true,
        ..Default::default()
    };
    let tags = pattern(2, 5);

    slots.add_guest_memory(&vm, &[7], &memory, flags).unwrap();
    let mut back = vec![0xffu8; tags.len()];
    KvmTagStore::new(&vm, mte)
        .unwrap()
        .read_tags(GuestAddress(BASE + 0x4000), &mut back)
        .unwrap();
    let dirty = slots.dirty_pages(&vm, 7).unwrap();
    let wrong_slot = slots.dirty_pages(&vm, 0);

    assert!(back.iter().all(|&t| t == 0));
    assert_eq!(dirty.pages(), SIZE / TAG_PAGE_SIZE);
    assert_eq!(dirty.count(), 0, "nothing ran, nothing is dirty");
    assert!(
        matches!(wrong_slot, Err(Error::UnknownSlot(0))),
        "{wrong_slot:?}"
    );
}

#[test]
fn mapping_at_a_caller_chosen_slot_holds_tags_until_removed() {
    let vm = mte_vm(false);
    let mut slots = vm.slots;
    let device_base = GuestAddress(0x1_0000_0000);
    let tags = pattern(3, 11);

    slots
        .add_mapping(
            &vm.vm,
            12,
            device_base,
            memfd_mapping(SIZE),
            SlotFlags::default(),
        )
        .unwrap();
    let mut store = KvmTagStore::new(&vm.vm, vm.mte).unwrap();
    store
        .write_tags(GuestAddress(device_base.0 + 0x2000), &tags)
        .unwrap();
    let mut back = vec![0u8; tags.len()];
    store
        .read_tags(GuestAddress(device_base.0 + 0x2000), &mut back)
        .unwrap();
    slots.remove(&vm.vm, 12).unwrap();
    let after = store.read_tags(GuestAddress(device_base.0 + 0x2000), &mut back);
    let again = slots.remove(&vm.vm, 12);

    assert_eq!(back, tags);
    assert!(
        matches!(after, Err(TagError::OutOfRange { .. })),
        "{after:?}"
    );
    assert!(matches!(again, Err(Error::UnknownSlot(12))), "{again:?}");
}

#[test]
fn vm_without_mte_registers_guest_memory_and_mappings_at_the_callers_slots() {
    let vm = Kvm::new().unwrap().create_vm().unwrap();
    let memory = Arc::new(
        SharedGuestMemory::new(SharedMemoryConfig {
            regions: vec![(GuestAddress(BASE), SIZE)],
            ..Default::default()
        })
        .unwrap(),
    );
    let mut slots = MemorySlots::new(&vm, None).unwrap();
    let logged = SlotFlags {
        dirty_log: true,
        ..Default::default()
    };
    let readonly = SlotFlags {
        readonly: true,
        ..Default::default()
    };

    slots.add_guest_memory(&vm, &[3], &memory, logged).unwrap();
    slots
        .add_mapping(
            &vm,
            4,
            GuestAddress(0x1_0000_0000),
            memfd_mapping(SIZE),
            readonly,
        )
        .unwrap();

    assert_eq!(slots.mte(), None);
    // KVM knows the slots by the caller's numbers: slot 3 has a dirty log, and deleting slot 4
    // (which KVM refuses for a slot it does not have) succeeds.
    assert_eq!(slots.dirty_pages(&vm, 3).unwrap().count(), 0);
    assert!(matches!(
        slots.dirty_pages(&vm, 4),
        Err(Error::NoDirtyLog(4))
    ));
    slots.remove(&vm, 4).unwrap();
    slots.remove(&vm, 3).unwrap();
}

#[test]
fn slots_are_checked_before_kvm_is_asked() {
    let vm = mte_vm(false);
    let mut slots = vm.slots;
    let mapping = memfd_mapping(SIZE);
    let other_vm = Kvm::new().unwrap().create_vm().unwrap();

    let in_use = slots.add_mapping(
        &vm.vm,
        0,
        GuestAddress(0x1_0000_0000),
        Arc::clone(&mapping),
        SlotFlags::default(),
    );
    let overlap = slots.add_mapping(
        &vm.vm,
        1,
        GuestAddress(BASE + SIZE - 0x1000),
        Arc::clone(&mapping),
        SlotFlags::default(),
    );
    let unaligned = slots.add_mapping(
        &vm.vm,
        1,
        GuestAddress(0x1_0000_0800),
        Arc::clone(&mapping),
        SlotFlags::default(),
    );
    let wrong_vm = slots.add_mapping(
        &other_vm,
        1,
        GuestAddress(0x1_0000_0000),
        Arc::clone(&mapping),
        SlotFlags::default(),
    );
    let wrong_proof = KvmTagStore::new(&other_vm, vm.mte);
    let wrong_slots = MemorySlots::new(&other_vm, Some(vm.mte));

    assert!(matches!(in_use, Err(Error::SlotInUse(0))), "{in_use:?}");
    assert!(
        matches!(overlap, Err(Error::Overlap { slot: 1, other: 0 })),
        "{overlap:?}"
    );
    assert!(
        matches!(unaligned, Err(Error::Unaligned { slot: 1, .. })),
        "{unaligned:?}"
    );
    assert!(matches!(wrong_vm, Err(Error::OtherVm)), "{wrong_vm:?}");
    assert!(matches!(wrong_proof, Err(Error::OtherVm)));
    assert!(matches!(wrong_slots, Err(Error::OtherVm)));
    assert!(!vm.mte.is_for(&other_vm));
}

/// A `MAP_SHARED` mapping of a file on a private ramfs mounted in a fresh directory.
fn ramfs_mapping(len: u64) -> Arc<MmapRegion> {
    let dir = std::env::temp_dir().join(format!("kvm-mte-ramfs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cdir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings that outlive the call; ramfs takes no data.
    let rc = unsafe {
        libc::mount(
            c"ramfs".as_ptr(),
            cdir.as_ptr(),
            c"ramfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount ramfs: {}", std::io::Error::last_os_error());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("pmem"))
        .unwrap();
    file.set_len(len).unwrap();
    let mapping = MmapRegionBuilder::new(len as usize)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
        .unwrap();
    // Detached: the mapping keeps the file alive.
    // SAFETY: a valid NUL-terminated path that outlives the call.
    unsafe { libc::umount2(cdir.as_ptr(), libc::MNT_DETACH) };
    Arc::new(mapping)
}

#[test]
fn ramfs_mapping_is_refused_for_an_mte_vm_with_the_rule_but_not_without_mte() {
    let mapping = ramfs_mapping(SIZE);
    let vm = mte_vm(false);
    let mut slots = vm.slots;
    let plain = Kvm::new().unwrap().create_vm().unwrap();
    let mut plain_slots = MemorySlots::new(&plain, None).unwrap();
    let base = GuestAddress(0x1_0000_0000);

    let refused = slots.add_mapping(&vm.vm, 1, base, Arc::clone(&mapping), SlotFlags::default());
    let accepted = plain_slots.add_mapping(&plain, 1, base, mapping, SlotFlags::default());

    let Err(Error::Backing { slot: 1, source }) = refused else {
        panic!("ramfs accepted for an MTE VM: {refused:?}");
    };
    let text = source.to_string();
    assert!(
        text.contains("a ramfs file cannot back an MTE guest"),
        "{text}"
    );
    assert!(
        text.contains("regular files and ramfs are refused"),
        "{text}"
    );
    accepted.unwrap();
}
