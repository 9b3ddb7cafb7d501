//! MTE with KVM: needs an arm64 host (or emulated machine) with MTE and `/dev/kvm`.
//!
//! Run with `cargo test -p mte-memory --features kvm --test kvm_mte` on such a host.
#![cfg(all(target_arch = "aarch64", feature = "kvm"))]

use std::sync::Arc;

use kvm_ioctls::Kvm;
use mte_memory::kvm::{probe, MteEnabledVm, MteVm, Outcome};
use mte_memory::tags::Error as TagError;
use mte_memory::{
    SharedGuestMemory, SharedMemoryConfig, TagSnapshot, TagStore, TAGS_PER_PAGE, TAG_PAGE_SIZE,
};
use vm_memory::GuestAddress;

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

fn mte_vm(dirty_log: bool) -> (MteEnabledVm, Arc<SharedGuestMemory>) {
    let kvm = Kvm::new().unwrap();
    let mut vm = MteVm::create(&kvm).unwrap().enable().unwrap();
    let memory = shared_memory();
    vm.register_memory(Arc::clone(&memory), dirty_log).unwrap();
    (vm, memory)
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
    let (vm, _memory) = mte_vm(false);
    let mut store = vm.tag_store();
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
    let (vm, _memory) = mte_vm(false);
    let mut back = vec![0xffu8; 4 * TAGS_PER_PAGE];

    vm.tag_store()
        .read_tags(GuestAddress(BASE), &mut back)
        .unwrap();

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
    let (vm, memory) = mte_vm(false);
    let view = memory.map_region_again(0, true).unwrap();
    let tags = pattern(1, 9);

    vm.tag_store()
        .write_tags(GuestAddress(BASE + 0x3000), &tags)
        .unwrap();
    let seen: Vec<u8> = (0..TAGS_PER_PAGE)
        .map(|g| ldg(view.as_ptr().wrapping_add(0x3000 + g * 16)))
        .collect();

    assert_eq!(seen, tags);
}

#[test]
fn tag_writes_while_dirty_logging_are_refused_as_busy() {
    let (vm, _memory) = mte_vm(true);
    let mut store = vm.tag_store();

    let result = store.write_tags(GuestAddress(BASE), &pattern(1, 1));
    let mut back = vec![0u8; TAGS_PER_PAGE];
    let read = store.read_tags(GuestAddress(BASE), &mut back);

    assert!(matches!(result, Err(TagError::DirtyLogging)), "{result:?}");
    assert!(read.is_ok());
}

#[test]
fn range_outside_memory_is_out_of_range() {
    let (vm, _memory) = mte_vm(false);
    let mut back = vec![0u8; TAGS_PER_PAGE];

    let result = vm
        .tag_store()
        .read_tags(GuestAddress(BASE + SIZE), &mut back);

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

    let result = MteVm::from_vm(vm).enable();

    assert!(result.is_err());
}

#[test]
fn tag_snapshot_restores_into_a_fresh_vm() {
    let (source, _m1) = mte_vm(false);
    let layout = [(GuestAddress(BASE), SIZE)];
    let tagged_pages = [0u64, 1, 100, 511];
    {
        let mut store = source.tag_store();
        for &p in &tagged_pages {
            store
                .write_tags(GuestAddress(BASE + p * TAG_PAGE_SIZE), &pattern(1, p as u8))
                .unwrap();
        }
    }

    let bytes = TagSnapshot::capture_full(&source.tag_store(), &layout)
        .unwrap()
        .encode();
    let (target, _m2) = mte_vm(false);
    TagSnapshot::decode(&bytes)
        .unwrap()
        .restore(&mut target.tag_store())
        .unwrap();

    let mut want = vec![0u8; (SIZE / 16) as usize];
    let mut got = vec![0u8; (SIZE / 16) as usize];
    source
        .tag_store()
        .read_tags(GuestAddress(BASE), &mut want)
        .unwrap();
    target
        .tag_store()
        .read_tags(GuestAddress(BASE), &mut got)
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(TagSnapshot::decode(&bytes).unwrap().tagged_pages(), 4);
}
