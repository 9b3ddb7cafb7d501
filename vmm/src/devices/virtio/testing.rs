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
