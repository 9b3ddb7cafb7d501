//! Tag snapshot size and speed for a 1 GiB guest, using the software tag store.
//!
//! Prints, in one run: the encoded size for 1 % and 100 % of pages tagged (as a share of guest
//! RAM), and save and restore times as a ratio to copying the same 1 GiB of memory; then runs
//! the same operations under criterion.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use mte_memory::{SoftwareTagStore, TagSnapshot, TagStore, TAGS_PER_PAGE, TAG_PAGE_SIZE};
use vm_memory::GuestAddress;

const GUEST_SIZE: u64 = 1 << 30;
const BASE: u64 = 0x4000_0000;

fn layout() -> [(GuestAddress, u64); 1] {
    [(GuestAddress(BASE), GUEST_SIZE)]
}

/// A store with one page in `every` tagged with pseudo-random (incompressible) tags.
fn tagged_store(every: u64) -> SoftwareTagStore {
    let mut store = SoftwareTagStore::new(&layout()).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut tags = vec![0u8; TAGS_PER_PAGE];
    for page in (0..GUEST_SIZE / TAG_PAGE_SIZE).step_by(every as usize) {
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
    }
    store
}

fn save(store: &SoftwareTagStore) -> Vec<u8> {
    TagSnapshot::capture_full(store, &layout())
        .unwrap()
        .encode()
}

fn restore(bytes: &[u8], store: &mut SoftwareTagStore) {
    TagSnapshot::decode(bytes).unwrap().restore(store).unwrap();
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort_unstable();
    runs[runs.len() / 2]
}

fn time<F: FnMut()>(mut f: F) -> Duration {
    median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

fn report() {
    let mut src = vec![0u8; GUEST_SIZE as usize];
    src.iter_mut().step_by(4096).for_each(|b| *b = 1);
    let mut dst = vec![0u8; GUEST_SIZE as usize];
    let memcpy = time(|| {
        dst.copy_from_slice(black_box(&src));
        black_box(&dst);
    });
    drop((src, dst));
    println!("memcpy 1 GiB: {memcpy:?}");

    for (label, every) in [("1 % tagged", 100), ("all tagged", 1)] {
        let store = tagged_store(every);
        let bytes = save(&store);
        let share = bytes.len() as f64 * 100.0 / GUEST_SIZE as f64;
        let mut target = SoftwareTagStore::new(&layout()).unwrap();
        let save_t = time(|| {
            black_box(save(&store));
        });
        let restore_t = time(|| restore(&bytes, &mut target));
        println!(
            "{label}: snapshot {} bytes = {share:.4} % of RAM; save {save_t:?} ({:.3}x memcpy); \
             restore {restore_t:?} ({:.3}x memcpy)",
            bytes.len(),
            save_t.as_secs_f64() / memcpy.as_secs_f64(),
            restore_t.as_secs_f64() / memcpy.as_secs_f64(),
        );
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("tag_snapshot_1GiB");
    group.sample_size(10);
    for (label, every) in [("1pct", 100), ("all", 1)] {
        let store = tagged_store(every);
        let bytes = save(&store);
        let mut target = SoftwareTagStore::new(&layout()).unwrap();
        group.bench_function(format!("save_{label}"), |b| {
            b.iter(|| black_box(save(&store)))
        });
        group.bench_function(format!("restore_{label}"), |b| {
            b.iter(|| restore(black_box(&bytes), &mut target))
        });
    }
    let src = vec![1u8; GUEST_SIZE as usize];
    let mut dst = vec![0u8; GUEST_SIZE as usize];
    group.bench_function("memcpy", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)))
    });
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
