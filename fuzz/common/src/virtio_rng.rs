//! Target `virtio_rng`: refvmm's virtio entropy device behind the virtio-mmio transport, on
//! guest memory the input fills.
//!
//! The input layout is `virtio_pmem`'s (see [`crate::virtio_pmem`]: queue size, control
//! byte, descriptor table, available and used ring offsets, then guest RAM), so its builder
//! makes the seeds. Control bits: 0–1 extra notifications (0–3); 3 the entropy source fails.
//!
//! Checks after each notification, when the queue runs: the device asked for no reset unless
//! the available ring is broken; each used entry's length is at most the per-request limit
//! and at most what the chain's writable descriptors add up to; the bytes the device reports
//! handing out equal the sum of the used lengths; with a failing source every length is 0;
//! the queue interrupt is raised when chains were returned (unless the driver asked for none
//! with `VRING_AVAIL_F_NO_INTERRUPT`, a hint the device may ignore) and never otherwise.

use refvmm::devices::virtio::mmio::reg;
use refvmm::devices::virtio::rng::{Entropy, RngDevice, MAX_BYTES_PER_REQUEST};
use refvmm::devices::virtio::{status, MmioTransport, VirtioDevice, VIRTIO_F_VERSION_1};
use refvmm::devices::MmioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio_pmem::{ctrl, Counter, HEADER_LEN, RAM_BASE, RAM_SIZE};

/// A source that counts up, or always fails.
struct Source {
    next: u8,
    fail: bool,
}

impl Entropy for Source {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        if self.fail {
            return Err(std::io::Error::other("the source fails"));
        }
        for b in buf {
            *b = self.next;
            self.next = self.next.wrapping_add(1);
        }
        Ok(())
    }
}

fn wr(t: &mut MmioTransport<RngDevice<Source>>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn rd(t: &mut MmioTransport<RngDevice<Source>>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Whether `[a, a + alen)` and `[b, b + blen)` intersect.
pub(crate) fn overlaps((a, alen): (u64, u64), (b, blen): (u64, u64)) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

/// The sum of the lengths of the writable descriptors of a direct chain starting at `head`
/// (following `next` at most `size` times), saturating; `None` where the chain uses an
/// indirect table, leaves RAM, or has a writable buffer over one of the `rings` (the device's
/// writes could then change what it reads next, or the used ring read back here).
pub(crate) fn writable_total(
    mem: &GuestMemoryMmap,
    desc: u64,
    size: u16,
    head: u16,
    rings: &[(u64, u64)],
) -> Option<u64> {
    let mut total = 0u64;
    let mut i = head;
    for _ in 0..size {
        let at = GuestAddress(desc + 16 * u64::from(i));
        let len: u32 = mem.read_obj(GuestAddress(at.0 + 8)).ok()?;
        let flags: u16 = mem.read_obj(GuestAddress(at.0 + 12)).ok()?;
        let next: u16 = mem.read_obj(GuestAddress(at.0 + 14)).ok()?;
        if flags & 4 != 0 {
            return None;
        }
        if flags & 2 != 0 {
            let addr: u64 = mem.read_obj(at).ok()?;
            if rings.iter().any(|r| overlaps(*r, (addr, u64::from(len)))) {
                return None;
            }
            total = total.saturating_add(u64::from(len));
        }
        if flags & 1 == 0 {
            return Some(total);
        }
        if next >= size {
            return None;
        }
        i = next;
    }
    None
}

/// Sets the transport up as a driver does, queue 0 of `size` entries on the given rings;
/// false when the transport refuses the queue.
pub(crate) fn set_up<D: VirtioDevice>(
    t: &mut MmioTransport<D>,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
) -> bool {
    let wr = |t: &mut MmioTransport<D>, off: u64, v: u32| t.write(off, &v.to_le_bytes());
    let rd = |t: &mut MmioTransport<D>, off: u64| {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    };
    wr(t, reg::STATUS, 0);
    wr(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, reg::DRIVER_FEATURES_SEL, 1);
    wr(t, reg::DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
    wr(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    wr(t, reg::QUEUE_SEL, 0);
    let max = t.device().queue_max_sizes()[0];
    assert_eq!(rd(t, reg::QUEUE_NUM_MAX), u32::from(max));
    wr(t, reg::QUEUE_NUM, u32::from(size));
    for (low, addr) in [
        (reg::QUEUE_DESC_LOW, desc),
        (reg::QUEUE_DRIVER_LOW, avail),
        (reg::QUEUE_DEVICE_LOW, used),
    ] {
        wr(t, low, addr as u32);
        wr(t, low + 4, (addr >> 32) as u32);
    }
    wr(t, reg::QUEUE_READY, 1);
    if rd(t, reg::QUEUE_READY) != 1 {
        return false;
    }
    let s = rd(t, reg::STATUS);
    wr(t, reg::STATUS, s | status::DRIVER_OK);
    true
}

/// An input in `virtio_pmem`'s layout: the queue's size and rings, the control byte, and guest
/// RAM filled with the rest.
pub(crate) struct Input {
    pub size: u16,
    pub control: u8,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub mem: GuestMemoryMmap,
}

impl Input {
    /// `None` for an input shorter than the header.
    pub(crate) fn parse(data: &[u8]) -> Option<Input> {
        if data.len() < HEADER_LEN {
            return None;
        }
        let le16 = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), RAM_SIZE as usize)])
            .expect("64 KiB of guest memory");
        let image = &data[HEADER_LEN..];
        mem.write_slice(
            &image[..image.len().min(RAM_SIZE as usize)],
            GuestAddress(RAM_BASE),
        )
        .expect("the image fits");
        Some(Input {
            size: le16(0),
            control: data[2],
            desc: RAM_BASE + u64::from(le16(3)),
            avail: RAM_BASE + u64::from(le16(5)),
            used: RAM_BASE + u64::from(le16(7)),
            mem,
        })
    }
}

/// Runs one input; panics when a check fails.
pub fn run_virtio_rng(data: &[u8]) {
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
    let fails = control & ctrl::FLUSH_FAILS != 0;
    let irq = Counter::default();
    let device = RngDevice::new(Source {
        next: 0,
        fail: fails,
    });
    let mut t = MmioTransport::new(device, mem.clone(), Box::new(irq.clone()))
        .expect("the rng queue size is valid");

    if !set_up(&mut t, size, desc, avail, used) {
        return;
    }

    // A driver starts on a zeroed used ring (Linux allocates it zeroed); the device counts
    // from 0 whatever the memory held.
    mem.write_obj(0u16, GuestAddress(used + 2))
        .expect("used ring in RAM");
    let mut seen_used = 0u16;
    let mut handed_out = 0u64;
    let n = u64::from(size);
    let rings = [(desc, 16 * n), (avail, 6 + 2 * n), (used, 6 + 8 * n)];
    // With rings over each other, what the device reads and what is read back here depend on
    // the order of its writes: only "no panic" is checked then.
    let rings_apart = !overlaps(rings[0], rings[1])
        && !overlaps(rings[0], rings[2])
        && !overlaps(rings[1], rings[2]);
    for _ in 0..=(control & ctrl::EXTRA_NOTIFIES) {
        let irqs_before = irq.count();
        // VRING_AVAIL_F_NO_INTERRUPT (no EVENT_IDX is offered): the driver wants no interrupt.
        let quiet = mem.read_obj::<u16>(GuestAddress(avail)).unwrap_or(0) & 1 != 0;
        // What the driver offered, read before the device writes anything.
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
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        if rd(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        // Every offered chain walked, none writing over a ring: the used ring read back is
        // what the device wrote.
        if !rings_apart || heads.iter().any(Option::is_none) {
            return;
        }
        let used_idx: u16 = mem
            .read_obj(GuestAddress(used + 2))
            .expect("used ring in RAM");
        let returned = used_idx.wrapping_sub(seen_used);
        for k in 0..returned {
            let slot = u64::from(seen_used.wrapping_add(k) % size);
            let len: u32 = mem
                .read_obj(GuestAddress(used + 4 + 8 * slot + 4))
                .expect("used ring in RAM");
            assert!(len as usize <= MAX_BYTES_PER_REQUEST, "used length {len}");
            if fails {
                assert_eq!(len, 0, "a failing source handed out bytes");
            }
            if let Some(Some(total)) = heads.get(usize::from(k)) {
                assert!(
                    u64::from(len) <= *total,
                    "used length {len} beyond the chain's {total} writable bytes"
                );
            }
            handed_out += u64::from(len);
        }
        assert_eq!(
            t.device().bytes(),
            handed_out,
            "the device's count and the used lengths disagree"
        );
        // The flag is a hint the device may ignore (virtio 1.2, 2.7.7.2): with it, an
        // interrupt for returned chains is allowed either way.
        let raised = irq.count() > irqs_before;
        assert!(
            raised == (returned > 0) || (quiet && returned > 0),
            "interrupt raised {} times for {returned} chains (driver asked for none: {quiet})",
            irq.count() - irqs_before
        );
        seen_used = used_idx;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_inputs_are_ignored() {
        run_virtio_rng(&[]);
        run_virtio_rng(&[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
