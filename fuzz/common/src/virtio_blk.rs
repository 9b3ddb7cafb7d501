//! Target `virtio_blk`: refvmm's virtio block device behind the virtio-mmio transport, on a
//! 64 KiB disk in memory and guest memory the input fills.
//!
//! The input layout is `virtio_pmem`'s (see [`crate::virtio_pmem`]: queue size, control
//! byte, descriptor table, available and used ring offsets, then guest RAM), so its builder
//! makes the seeds. Control bits: 0–1 extra notifications (0–3); 3 the disk fails every
//! operation; 4 the disk is read-only.
//!
//! Checks after each notification, when the queue runs: the device asked for no reset unless
//! the available ring is broken; the disk keeps its size; a read-only disk's bytes never
//! change; a failing disk completes no read or write; and, with the rings apart
//! and every offered chain direct, each used length is at most what the chain's writable
//! descriptors add up to.

use refvmm::devices::virtio::block::memdisk::MemDisk;
use refvmm::devices::virtio::block::{BlockDevice, BlockOptions};
use refvmm::devices::virtio::mmio::reg;
use refvmm::devices::virtio::{status, MmioTransport};
use refvmm::devices::MmioDevice;
use vm_memory::{Bytes, GuestAddress};

use crate::virtio_pmem::{ctrl, Counter};
use crate::virtio_rng::{overlaps, set_up, writable_total, Input};

/// Control bit: the disk is read-only.
pub const READ_ONLY: u8 = 1 << 4;
/// Size of the disk.
pub const DISK_SIZE: usize = 64 << 10;

/// Runs one input; panics when a check fails.
pub fn run_virtio_blk(data: &[u8]) {
    let Some(Input {
        size,
        control,
        desc,
        avail,
        used,
        mem,
    }) = Input::parse(data)
    else {
        return;
    };
    let readonly = control & READ_ONLY != 0;
    let mut disk = MemDisk::new(DISK_SIZE);
    for (i, b) in disk.bytes.iter_mut().enumerate() {
        *b = (i % 253) as u8;
    }
    disk.broken = control & ctrl::FLUSH_FAILS != 0;
    let original = disk.bytes.clone();
    let device = BlockDevice::new(
        disk,
        BlockOptions {
            readonly,
            block_size: 512,
            serial: Some("fuzz".into()),
        },
    );
    let irq = Counter::default();
    let mut t = MmioTransport::new(device, mem.clone(), Box::new(irq))
        .expect("the block queue size is valid");
    if !set_up(&mut t, size, desc, avail, used) {
        return;
    }
    mem.write_obj(0u16, GuestAddress(used + 2))
        .expect("used ring in RAM");
    let n = u64::from(size);
    let rings = [(desc, 16 * n), (avail, 6 + 2 * n), (used, 6 + 8 * n)];
    let rings_apart = !overlaps(rings[0], rings[1])
        && !overlaps(rings[0], rings[2])
        && !overlaps(rings[1], rings[2]);
    let mut seen_used = 0u16;
    for _ in 0..=(control & ctrl::EXTRA_NOTIFIES) {
        let heads: Vec<Option<u64>> = {
            let avail_idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap_or(0);
            (0..avail_idx.wrapping_sub(seen_used).min(size))
                .map(|k| {
                    let slot = u64::from(seen_used.wrapping_add(k) % size);
                    let head: u16 = mem.read_obj(GuestAddress(avail + 4 + 2 * slot)).ok()?;
                    (head < size).then(|| writable_total(&mem, desc, size, head, &rings))?
                })
                .collect()
        };
        t.write(reg::QUEUE_NOTIFY, &0u32.to_le_bytes());
        let dev = t.device();
        assert_eq!(dev.disk().bytes.len(), DISK_SIZE, "the disk changed size");
        if readonly {
            assert!(dev.disk().bytes == original, "a read-only disk was written");
        }
        if control & ctrl::FLUSH_FAILS != 0 {
            // (A read-only disk's flush needs no disk: it may complete.)
            let (reads, writes, _) = dev.counts();
            assert_eq!(
                (reads, writes),
                (0, 0),
                "a failing disk completed transfers"
            );
        }
        let mut st = [0u8; 4];
        t.read(reg::STATUS, &mut st);
        if u32::from_le_bytes(st) & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        if !rings_apart || heads.iter().any(Option::is_none) {
            return;
        }
        let used_idx: u16 = mem
            .read_obj(GuestAddress(used + 2))
            .expect("used ring in RAM");
        for k in 0..used_idx.wrapping_sub(seen_used) {
            let slot = u64::from(seen_used.wrapping_add(k) % size);
            let len: u32 = mem
                .read_obj(GuestAddress(used + 4 + 8 * slot + 4))
                .expect("used ring in RAM");
            if let Some(Some(total)) = heads.get(usize::from(k)) {
                assert!(
                    u64::from(len) <= *total,
                    "used length {len} beyond the chain's {total} writable bytes"
                );
            }
        }
        seen_used = used_idx;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_inputs_are_ignored() {
        run_virtio_blk(&[]);
        run_virtio_blk(&[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
