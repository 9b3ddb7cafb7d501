//! Tag snapshot size and speed with `KvmTagStore`, for a 1 GiB MTE guest (arm64 with MTE and
//! `/dev/kvm`; feature `kvm`).
//!
//! In one run: two MTE VMs, each with 1 GiB of memfd `MAP_SHARED` memory, all of it
//! populated. With one page in a hundred, then every page, holding pseudo-random tags in the
//! source VM, a full tag snapshot is saved (capture + encode) and restored (decode + restore
//! into the target VM), and both are timed against copying the source's 1 GiB of guest
//! memory into the target's. After each restore the target's tags are captured again and
//! must encode to the same bytes. Prints sizes and time ratios (medians of three runs).
//!
//! ```text
//! RUSTC=/usr/bin/rustc cargo build --release --target aarch64-unknown-linux-gnu \
//!     -p mte-memory --features kvm --example kvm_tag_bench
//! cargo xtask arm64 run --memory 3072 --timeout 1800 \
//!     --file target/aarch64-unknown-linux-gnu/release/examples/kvm_tag_bench -- ./kvm_tag_bench
//! ```

#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
mod bench {
    use std::hint::black_box;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use kvm_ioctls::{Kvm, VmFd};
    use mte_memory::kvm::{self, KvmTagStore, MemorySlots, MteEnabled, SlotFlags};
    use mte_memory::{
        SharedGuestMemory, SharedMemoryConfig, TagSnapshot, TagStore, TAGS_PER_PAGE, TAG_PAGE_SIZE,
    };
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

    const BASE: u64 = 0x8000_0000;
    const GUEST_SIZE: u64 = 1 << 30;
    const PAGES: u64 = GUEST_SIZE / TAG_PAGE_SIZE;
    const RUNS: usize = 3;
    /// Pages per tag write while setting up a case.
    const WRITE_CHUNK: u64 = 64;

    fn layout() -> [(GuestAddress, u64); 1] {
        [(GuestAddress(BASE), GUEST_SIZE)]
    }

    /// An MTE VM and its memory (memory slot 0); the slots keep the memory mapped.
    struct MteVm {
        vm: VmFd,
        mte: MteEnabled,
        _slots: MemorySlots,
    }

    impl MteVm {
        fn store(&self) -> KvmTagStore<'_> {
            KvmTagStore::new(&self.vm, self.mte).unwrap()
        }
    }

    fn mte_vm(kvm: &Kvm) -> (MteVm, Arc<SharedGuestMemory>) {
        let vm = kvm.create_vm().unwrap();
        let mte = kvm::enable(&vm).unwrap();
        let memory = Arc::new(
            SharedGuestMemory::new(SharedMemoryConfig {
                regions: layout().to_vec(),
                mte_guest: true,
                ..Default::default()
            })
            .unwrap(),
        );
        let mut slots = MemorySlots::new(&vm, Some(mte)).unwrap();
        slots
            .add_guest_memory(&vm, &[0], &memory, SlotFlags::default())
            .unwrap();
        (
            MteVm {
                vm,
                mte,
                _slots: slots,
            },
            memory,
        )
    }

    /// Where the VMM maps the whole guest region.
    fn host_ptr(memory: &SharedGuestMemory) -> *mut u8 {
        let region = memory.memory().find_region(GuestAddress(BASE)).unwrap();
        assert_eq!(region.len(), GUEST_SIZE);
        region.get_host_address(MemoryRegionAddress(0)).unwrap()
    }

    /// Pseudo-random (incompressible) tags on one page in `every`, written `WRITE_CHUNK`
    /// pages at a time where pages are consecutive.
    fn tag_pages(vm: &MteVm, every: u64) {
        let mut store = vm.store();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let per_write = if every == 1 { WRITE_CHUNK } else { 1 };
        let mut tags = vec![0u8; per_write as usize * TAGS_PER_PAGE];
        let mut page = 0;
        while page < PAGES {
            for t in tags.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *t = (x & 0xf) as u8;
            }
            tags[0] |= 1;
            store
                .write_tags(GuestAddress(BASE + page * TAG_PAGE_SIZE), &tags)
                .unwrap();
            page += if every == 1 { per_write } else { every };
        }
    }

    fn save(vm: &MteVm) -> Vec<u8> {
        TagSnapshot::capture_full(&vm.store(), &layout())
            .unwrap()
            .encode()
    }

    fn restore(bytes: &[u8], vm: &MteVm) {
        TagSnapshot::decode(bytes)
            .unwrap()
            .restore(&mut vm.store())
            .unwrap();
    }

    fn time<F: FnMut()>(mut f: F) -> Duration {
        let mut runs: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect();
        runs.sort_unstable();
        runs[RUNS / 2]
    }

    pub fn run() {
        let kvm = Kvm::new().expect("/dev/kvm is needed");
        let (source, source_memory) = mte_vm(&kvm);
        let (target, target_memory) = mte_vm(&kvm);
        // SAFETY: each pointer is the start of a live mapping of GUEST_SIZE bytes, kept alive
        // by `source_memory` and `target_memory` until the end of this function; no guest runs,
        // and these are the only references to the two (distinct) mappings.
        let src = unsafe {
            std::slice::from_raw_parts_mut(host_ptr(&source_memory), GUEST_SIZE as usize)
        };
        // SAFETY: as above, for the target's mapping.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(host_ptr(&target_memory), GUEST_SIZE as usize)
        };
        // Populate both: every byte differs from the other side, so no page stays shared.
        src.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i >> 12) as u8);
        dst.fill(0xff);
        let memcpy = time(|| {
            dst.copy_from_slice(black_box(&*src));
            black_box(&mut *dst);
        });
        assert!(dst[..] == src[..], "copy of guest memory differs");
        println!(
            "guest memory: {} MiB on memfd MAP_SHARED, {PAGES} pages of {TAG_PAGE_SIZE} bytes",
            GUEST_SIZE >> 20
        );
        println!("memcpy of guest memory: {memcpy:?} (median of {RUNS})");

        for (label, every) in [("1 % of pages tagged", 100), ("all pages tagged", 1)] {
            let start = Instant::now();
            tag_pages(&source, every);
            let tagging = start.elapsed();
            let bytes = save(&source);
            let save_t = time(|| {
                black_box(save(&source));
            });
            let restore_t = time(|| restore(&bytes, &target));
            let again = save(&target);
            assert!(again == bytes, "{label}: target tags differ after restore");
            let tagged = TagSnapshot::decode(&bytes).unwrap().tagged_pages();
            println!(
                "{label}: {tagged} tagged pages (set up in {tagging:?}); snapshot {} bytes = \
                 {:.4} % of RAM; save {save_t:?} = {:.3}x memcpy; restore {restore_t:?} = \
                 {:.3}x memcpy; restored tags verified",
                bytes.len(),
                bytes.len() as f64 * 100.0 / GUEST_SIZE as f64,
                save_t.as_secs_f64() / memcpy.as_secs_f64(),
                restore_t.as_secs_f64() / memcpy.as_secs_f64(),
            );
        }
    }
}

fn main() {
    #[cfg(all(target_arch = "aarch64", feature = "kvm"))]
    bench::run();
    #[cfg(not(all(target_arch = "aarch64", feature = "kvm")))]
    eprintln!("kvm_tag_bench needs an aarch64 build with the `kvm` feature (and MTE + /dev/kvm)");
}
