//! virtio devices behind the virtio-mmio transport (version 2, virtio 1.x).
//!
//! - [`mmio`]: [`MmioTransport`], the register file a guest driver talks to, which owns the
//!   device's queues ([`virtio_queue::Queue`]) and its interrupt.
//! - [`block`]: the virtio block device.
//! - [`pmem`]: the virtio-pmem device.
//! - [`rng`]: the virtio entropy device.
//!
//! A device implements [`VirtioDevice`]: its ID, feature bits, queue sizes, configuration
//! space, and what to do when the driver notifies a queue. The transport turns every guest
//! mistake (bad queue sizes, rings outside RAM, broken descriptor chains) into an error status
//! (`DEVICE_NEEDS_RESET`) and a log line; none of them panics.

pub mod block;
pub mod mmio;
pub mod pmem;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use mmio::MmioTransport;

use std::io;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

/// Feature bit of virtio 1.x devices; virtio-mmio version 2 drivers insist on it.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device may use its queues.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete (the device accepted the driver's features).
    pub const FEATURES_OK: u32 = 8;
    /// The device met an error it cannot recover from; the driver must reset it.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bits of virtio-mmio.
pub mod interrupt {
    /// A queue's used ring was updated.
    pub const VRING: u32 = 1;
    /// The configuration (or the device status) changed.
    pub const CONFIG: u32 = 2;
}

/// The line a device raises towards the guest: an irqfd on a real VM, a counter in tests.
pub trait Interrupt: Send {
    /// Raises the interrupt (edge).
    fn trigger(&self) -> io::Result<()>;
}

impl Interrupt for vmm_sys_util::eventfd::EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// Why a device stopped processing a queue; the transport then asks for a reset.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue's rings could not be read or written.
    #[error("virtio queue {index} cannot be used")]
    Queue {
        /// The queue.
        index: usize,
        /// virtio-queue's error.
        source: virtio_queue::Error,
    },
}

/// A virtio device, as its transport sees it.
pub trait VirtioDevice: Send {
    /// The virtio device ID (virtio 1.2, 5).
    fn device_id(&self) -> u32;
    /// Device-specific feature bits offered (the transport adds `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// The largest size of each queue (powers of two); the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the configuration space at `offset`; bytes beyond it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Handles the driver's notification of queue `index`: consumes the available chains and
    /// returns how many it put in the used ring.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<usize, QueueError>;
    /// Forgets whatever the device holds for the driver (the transport resets the queues).
    fn reset(&mut self) {}
}

/// The requests a device answered with an error (or cut short): counted, and the first 16
/// and every 65536th logged at debug level, so that a guest cannot flood the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct FailedRequests {
    count: u64,
}

impl FailedRequests {
    /// How many so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Counts one failure of `device`'s request at descriptor `head`, for `why`.
    pub fn note(&mut self, device: &str, head: u16, why: &dyn std::fmt::Display) {
        self.count += 1;
        let n = self.count;
        if n <= 16 || n % 65536 == 0 {
            log::debug!("{device}: request at descriptor {head} failed: {why} ({n} so far)");
        }
    }
}

/// The usual `process_queue`: takes the chains available in `queue` now (one pass, at most the
/// queue's size), hands each to `serve`, which returns its used length, and puts it in the
/// used ring; returns how many chains went back.
pub fn serve_available(
    index: usize,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut serve: impl FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<usize, QueueError> {
    use virtio_queue::{QueueOwnedT, QueueT};
    let err = |source| QueueError::Queue { index, source };
    let chains: Vec<_> = queue.iter(mem).map_err(err)?.collect();
    let mut done = 0;
    for chain in chains {
        let head = chain.head_index();
        let used = serve(chain);
        queue.add_used(mem, head, used).map_err(err)?;
        done += 1;
    }
    Ok(done)
}

/// Copies `config[offset..]` into `data`, zero past the end: the usual `read_config`.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded_and_zero_filled() {
        let cfg = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 9, &mut out);
        assert_eq!(out, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }
}
