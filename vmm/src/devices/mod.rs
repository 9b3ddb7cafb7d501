//! Guest-visible devices and the MMIO bus that routes vCPU MMIO exits to them.

pub mod console_out;
pub mod serial;
pub mod virtio;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device on the MMIO bus. `offset` is relative to the device's base.
pub trait MmioDevice: Send {
    /// Handles a guest read of `data.len()` bytes.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

struct Slot {
    base: u64,
    size: u64,
    dev: Arc<Mutex<dyn MmioDevice>>,
}

/// Errors building the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Two devices claim overlapping windows.
    #[error("MMIO window {base:#x}+{size:#x} overlaps another device")]
    Overlap {
        /// Base of the refused window.
        base: u64,
        /// Size of the refused window.
        size: u64,
    },
}

/// Routes MMIO accesses by address. Accesses that hit no device read as zero and are
/// otherwise ignored (counted, and logged at debug level with a rate limit).
#[derive(Default)]
pub struct MmioBus {
    slots: Vec<Slot>,
    unbacked: AtomicU64,
    /// Guest memory mapped read-only (`base`, `size`): writes to it leave KVM as MMIO exits.
    read_only: Vec<(u64, u64)>,
}

/// Log at most this many unbacked accesses, then only every 2^16th.
const UNBACKED_LOG_FIRST: u64 = 16;

impl MmioBus {
    /// Adds a device at `base..base + size`.
    pub fn insert(
        &mut self,
        base: u64,
        size: u64,
        dev: Arc<Mutex<dyn MmioDevice>>,
    ) -> Result<(), Error> {
        let end = base
            .checked_add(size)
            .ok_or(Error::Overlap { base, size })?;
        if size == 0
            || self
                .slots
                .iter()
                .any(|s| base < s.base + s.size && s.base < end)
        {
            return Err(Error::Overlap { base, size });
        }
        self.slots.push(Slot { base, size, dev });
        self.slots.sort_by_key(|s| s.base);
        Ok(())
    }

    /// Records guest memory at `base..base + size` that KVM maps read-only (a read-only
    /// pmem region): the guest's writes there are dropped, also those KVM cannot decode.
    pub fn add_read_only_memory(&mut self, base: u64, size: u64) {
        self.read_only.push((base, size));
    }

    /// Whether `addr` is in read-only guest memory ([`MmioBus::add_read_only_memory`]).
    pub fn is_read_only_memory(&self, addr: u64) -> bool {
        self.read_only
            .iter()
            .any(|&(base, size)| addr >= base && addr - base < size)
    }

    fn find(&self, addr: u64, len: usize) -> Option<(&Slot, u64)> {
        let s = self
            .slots
            .iter()
            .find(|s| addr >= s.base && addr - s.base < s.size)?;
        let off = addr - s.base;
        (off.checked_add(len as u64)? <= s.size).then_some((s, off))
    }

    fn note_unbacked(&self, write: bool, addr: u64) {
        let n = self.unbacked.fetch_add(1, Ordering::Relaxed);
        if n < UNBACKED_LOG_FIRST || n % 65536 == 0 {
            log::debug!(
                "unbacked MMIO {} at {addr:#x} ({} so far)",
                if write { "write" } else { "read" },
                n + 1
            );
        }
    }

    /// Number of accesses that hit no device.
    pub fn unbacked_accesses(&self) -> u64 {
        self.unbacked.load(Ordering::Relaxed)
    }

    /// Dispatches a read; unbacked reads return zeros.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((s, off)) => match s.dev.lock() {
                Ok(mut d) => d.read(off, data),
                Err(_) => data.fill(0),
            },
            None => {
                data.fill(0);
                self.note_unbacked(false, addr);
            }
        }
    }

    /// Dispatches a write; unbacked writes are ignored.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr, data.len()) {
            Some((s, off)) => {
                if let Ok(mut d) = s.dev.lock() {
                    d.write(off, data);
                }
            }
            None => self.note_unbacked(true, addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);

    impl MmioDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_with_relative_offsets() {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let mut bus = MmioBus::default();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        bus.read(0x1004, &mut b);
        assert_eq!(b, [5]);
        bus.write(0x10ff, &[9]);
        assert_eq!(dev.lock().unwrap().0, vec![(0xff, vec![9])]);
    }

    #[test]
    fn unbacked_reads_are_zero_and_writes_ignored() {
        let mut bus = MmioBus::default();
        bus.insert(0x1000, 0x100, Arc::new(Mutex::new(Echo(Vec::new()))))
            .unwrap();
        let mut b = [0xaau8; 4];
        bus.read(0x2000, &mut b);
        assert_eq!(b, [0; 4]);
        bus.write(0x2000, &[1, 2]);
        // Straddling the end of a window is not the device's business either.
        bus.read(0x10fe, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(bus.unbacked_accesses(), 3);
    }

    #[test]
    fn overlapping_windows_are_refused() {
        let mut bus = MmioBus::default();
        let d = Arc::new(Mutex::new(Echo(Vec::new())));
        bus.insert(0x1000, 0x100, d.clone()).unwrap();
        assert_eq!(
            bus.insert(0x10f0, 0x100, d.clone()),
            Err(Error::Overlap {
                base: 0x10f0,
                size: 0x100
            })
        );
        assert!(bus.insert(0x1100, 0x100, d).is_ok());
    }
}
