//! Test doubles for the virtio devices, shared by refvmm's unit tests and the fuzz targets
//! (feature `test-utils`; not for production use).

use super::pmem::Flush;
use super::Interrupt;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// An interrupt that counts its triggers.
#[derive(Clone, Default)]
pub struct CountingInterrupt(pub Arc<AtomicU32>);

impl CountingInterrupt {
    /// Triggers so far.
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Interrupt for CountingInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A pmem backing that counts flushes, and fails them (`EIO`) when `fail` is set.
#[derive(Clone, Default)]
pub struct CountingFlush {
    /// Flushes so far.
    pub calls: Arc<AtomicU64>,
    /// Whether each flush fails.
    pub fail: bool,
}

impl CountingFlush {
    /// A backing whose every flush fails.
    pub fn failing() -> Self {
        CountingFlush {
            fail: true,
            ..CountingFlush::default()
        }
    }

    /// Flushes so far.
    pub fn count(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Flush for CountingFlush {
    fn flush(&self) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.fail {
            Err(io::Error::from_raw_os_error(libc::EIO))
        } else {
            Ok(())
        }
    }
}

/// Guest RAM of the [`Driver`]: 1 MiB at this address.
pub const RAM: u64 = 0x4000_0000;
/// The driver's descriptor table.
pub const DESC: u64 = RAM;
/// The driver's available ring.
pub const AVAIL: u64 = RAM + 0x1000;
/// The device's used ring.
pub const USED: u64 = RAM + 0x2000;
/// Where tests put request and answer buffers.
pub const DATA: u64 = RAM + 0x4000;
/// Descriptor flag: the chain continues.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub const F_WRITE: u16 = 2;

/// A guest driver's view of a device's first queue: it writes descriptors and rings in guest
/// memory and drives the virtio-mmio registers as Linux does.
pub struct Driver<D: super::VirtioDevice> {
    /// The transport under test.
    pub t: super::MmioTransport<D>,
    /// Guest RAM.
    pub mem: vm_memory::GuestMemoryMmap,
    /// The device's interrupt.
    pub irq: CountingInterrupt,
    avail_idx: u16,
    size: u16,
}

impl<D: super::VirtioDevice> Driver<D> {
    /// A transport for `device`, probed and with queue 0 of `size` entries ready.
    pub fn new(device: D, size: u16) -> Self {
        let mem =
            vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(RAM), 0x10_0000)])
                .expect("test RAM");
        let irq = CountingInterrupt::default();
        let mut d = Driver {
            t: super::MmioTransport::new(device, mem.clone(), Box::new(irq.clone()))
                .expect("transport"),
            mem,
            irq,
            avail_idx: 0,
            size,
        };
        d.probe(size);
        d
    }

    /// Writes register `off`.
    pub fn wr(&mut self, off: u64, v: u32) {
        crate::devices::MmioDevice::write(&mut self.t, off, &v.to_le_bytes());
    }

    /// Reads register `off`.
    pub fn rd(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        crate::devices::MmioDevice::read(&mut self.t, off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Resets the device and sets it up again as Linux does, queue 0 of `size` entries on
    /// fresh rings (both ring indices back at 0).
    pub fn probe(&mut self, size: u16) {
        use super::mmio::reg;
        use super::status;
        use vm_memory::Bytes;
        self.size = size;
        self.avail_idx = 0;
        for idx in [AVAIL + 2, USED + 2] {
            self.mem
                .write_obj(0u16, vm_memory::GuestAddress(idx))
                .expect("ring in RAM");
        }
        self.wr(reg::STATUS, 0);
        self.wr(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.wr(reg::DRIVER_FEATURES_SEL, 1);
        self.wr(reg::DRIVER_FEATURES, 1 << (super::VIRTIO_F_VERSION_1 - 32));
        self.wr(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(self.rd(reg::STATUS) & status::FEATURES_OK, 0);
        self.wr(reg::QUEUE_SEL, 0);
        let max = self.t.device().queue_max_sizes()[0];
        assert_eq!(self.rd(reg::QUEUE_NUM_MAX), u32::from(max));
        self.wr(reg::QUEUE_NUM, u32::from(size));
        self.wr(reg::QUEUE_DESC_LOW, DESC as u32);
        self.wr(reg::QUEUE_DRIVER_LOW, AVAIL as u32);
        self.wr(reg::QUEUE_DEVICE_LOW, USED as u32);
        self.wr(reg::QUEUE_READY, 1);
        assert_eq!(self.rd(reg::QUEUE_READY), 1);
        let s = self.rd(reg::STATUS);
        self.wr(reg::STATUS, s | status::DRIVER_OK);
    }

    /// Writes descriptor `i` of the queue's descriptor table.
    pub fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc_at(DESC, i, addr, len, flags, next);
    }

    /// Writes descriptor `i` of the table at guest address `table` (an indirect table, say).
    pub fn desc_at(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        use vm_memory::Bytes;
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&raw, vm_memory::GuestAddress(table + 16 * u64::from(i)))
            .expect("descriptor in RAM");
    }

    /// Makes the chains starting at `heads` available and notifies queue 0.
    pub fn submit(&mut self, heads: &[u16]) {
        use vm_memory::Bytes;
        for &h in heads {
            let slot = u64::from(self.avail_idx % self.size) * 2;
            self.mem
                .write_obj(h.to_le(), vm_memory::GuestAddress(AVAIL + 4 + slot))
                .expect("ring in RAM");
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        self.mem
            .write_obj(self.avail_idx.to_le(), vm_memory::GuestAddress(AVAIL + 2))
            .expect("ring in RAM");
        self.wr(super::mmio::reg::QUEUE_NOTIFY, 0);
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        use vm_memory::Bytes;
        self.mem
            .read_obj(vm_memory::GuestAddress(USED + 2))
            .expect("ring in RAM")
    }

    /// Used ring entry `n`: (descriptor head, length written).
    pub fn used(&self, n: u16) -> (u32, u32) {
        use vm_memory::Bytes;
        let at = USED + 4 + 8 * u64::from(n);
        (
            self.mem
                .read_obj(vm_memory::GuestAddress(at))
                .expect("ring in RAM"),
            self.mem
                .read_obj(vm_memory::GuestAddress(at + 4))
                .expect("ring in RAM"),
        )
    }

    /// The 32-bit word at guest address `addr`.
    pub fn word(&self, addr: u64) -> u32 {
        use vm_memory::Bytes;
        self.mem
            .read_obj(vm_memory::GuestAddress(addr))
            .expect("word in RAM")
    }

    /// Writes the 32-bit word `v` at guest address `addr`.
    pub fn put(&self, addr: u64, v: u32) {
        use vm_memory::Bytes;
        self.mem
            .write_obj(v, vm_memory::GuestAddress(addr))
            .expect("word in RAM");
    }
}
