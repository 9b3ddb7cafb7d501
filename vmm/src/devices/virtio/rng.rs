//! The virtio entropy device (virtio 1.2, 5.4): one request queue whose device-writable
//! buffers the device fills with random bytes from the host (`getrandom(2)`).
//!
//! The device has no configuration space and no feature bits of its own. Each chain's
//! device-writable buffers are filled in order, at most [`MAX_BYTES_PER_REQUEST`] bytes per
//! chain (the used length says how many), through a fixed bounce buffer: a guest cannot make
//! refvmm allocate, and one notification costs at most the queue's size in chains. Readable
//! buffers are skipped. A buffer outside guest RAM ends its chain with what was written before
//! it; an entropy failure answers 0 bytes. Neither stops the device.

use super::{QueueError, VirtioDevice};
use std::io;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The virtio device ID of the entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets (Linux asks for at most a page at a time).
pub const MAX_BYTES_PER_REQUEST: usize = 64 << 10;
/// The bounce buffer's size.
const CHUNK: usize = 4096;

/// Where the random bytes come from.
pub trait Entropy: Send {
    /// Fills `buf` entirely.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()>;
}

/// The host kernel's random number generator (`getrandom(2)`, blocking only until the kernel's
/// pool is first initialised).
#[derive(Debug, Default, Clone, Copy)]
pub struct HostRandom;

impl Entropy for HostRandom {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        crate::sys::getrandom(buf)
    }
}

/// The virtio entropy device.
pub struct RngDevice<E> {
    entropy: E,
    bytes: u64,
    failed: super::FailedRequests,
    buf: Box<[u8; CHUNK]>,
}

impl<E: Entropy> RngDevice<E> {
    /// A device drawing from `entropy`.
    pub fn new(entropy: E) -> Self {
        RngDevice {
            entropy,
            bytes: 0,
            failed: super::FailedRequests::default(),
            buf: Box::new([0; CHUNK]),
        }
    }

    /// Bytes handed to the guest so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Requests that ended early (a buffer outside RAM, an entropy failure).
    pub fn failed_requests(&self) -> u64 {
        self.failed.count()
    }

    /// Fills the chain's device-writable buffers; returns the bytes written.
    fn fill_chain(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> u32 {
        let head = chain.head_index();
        let mut written = 0usize;
        for desc in chain.writable() {
            let mut at = desc.addr();
            let mut left = (desc.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
            while left > 0 {
                let n = left.min(CHUNK);
                let chunk = &mut self.buf[..n];
                if let Err(e) = self.entropy.fill(chunk) {
                    crate::guest_log!(
                        log::Level::Warn,
                        "virtio-rng: no entropy from the host: {e}"
                    );
                    self.failed.note("virtio-rng", head, &e);
                    return written as u32;
                }
                if let Err(e) = mem.write_slice(chunk, at) {
                    self.failed
                        .note("virtio-rng", head, &format!("buffer {:#x}: {e}", at.0));
                    return written as u32;
                }
                written += n;
                left -= n;
                at = GuestAddress(at.0.wrapping_add(n as u64));
            }
            if written >= MAX_BYTES_PER_REQUEST {
                break;
            }
        }
        // MAX_BYTES_PER_REQUEST fits a u32.
        written as u32
    }
}

impl<E: Entropy> VirtioDevice for RngDevice<E> {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<usize, QueueError> {
        super::serve_available(index, queue, mem, |chain| {
            let written = self.fill_chain(chain, mem);
            self.bytes += u64::from(written);
            written
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::reg;
    use crate::devices::virtio::status;
    use crate::devices::virtio::testing::{Driver, DATA, F_NEXT, F_WRITE};

    /// Counts up from a seed, so the bytes a request got are known; fails when told to.
    #[derive(Default)]
    struct Counting {
        next: u8,
        fail: bool,
    }

    impl Entropy for Counting {
        fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::from_raw_os_error(libc::EAGAIN));
            }
            for b in buf {
                *b = self.next;
                self.next = self.next.wrapping_add(1);
            }
            Ok(())
        }
    }

    fn bytes_at(d: &Driver<RngDevice<Counting>>, addr: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        d.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn the_device_is_an_entropy_source_without_configuration() {
        let dev = RngDevice::new(HostRandom);
        assert_eq!(dev.device_id(), 4);
        assert_eq!(dev.features(), 0);
        let mut b = [0xff; 8];
        dev.read_config(0, &mut b);
        assert_eq!(b, [0; 8]);
    }

    #[test]
    fn each_writable_buffer_is_filled_and_the_used_length_counts_them() {
        let mut d = Driver::new(RngDevice::new(Counting::default()), 16);
        // A readable buffer first (skipped), then two writable ones.
        d.desc(0, DATA, 16, F_NEXT, 1);
        d.desc(1, DATA + 0x100, 10, F_NEXT | F_WRITE, 2);
        d.desc(2, DATA + 0x200, 6, F_WRITE, 0);
        d.put(DATA, 0x1234_5678);
        d.submit(&[0]);
        assert_eq!(d.used_idx(), 1);
        assert_eq!(d.used(0), (0, 16));
        assert_eq!(bytes_at(&d, DATA + 0x100, 10), (0..10).collect::<Vec<u8>>());
        assert_eq!(bytes_at(&d, DATA + 0x200, 6), (10..16).collect::<Vec<u8>>());
        assert_eq!(d.word(DATA), 0x1234_5678, "a readable buffer is left alone");
        assert_eq!(d.irq.count(), 1);
        assert_eq!(d.t.device().bytes(), 16);
    }

    #[test]
    fn the_host_generator_gives_different_bytes_each_time() {
        let mut d = Driver::new(RngDevice::new(HostRandom), 16);
        d.desc(0, DATA, 64, F_WRITE, 0);
        d.desc(1, DATA + 0x100, 64, F_WRITE, 0);
        d.submit(&[0, 1]);
        assert_eq!((d.used(0), d.used(1)), ((0, 64), (1, 64)));
        let a = {
            let mut v = [0u8; 64];
            d.mem.read_slice(&mut v, GuestAddress(DATA)).unwrap();
            v
        };
        let mut b = [0u8; 64];
        d.mem
            .read_slice(&mut b, GuestAddress(DATA + 0x100))
            .unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0; 64]);
    }

    #[test]
    fn a_huge_request_gets_at_most_the_per_request_limit() {
        let mut d = Driver::new(RngDevice::new(Counting::default()), 16);
        // 1 MiB of RAM in all: a buffer claiming 4 GiB - 1 stops at the limit (or at RAM's end).
        d.desc(0, DATA, u32::MAX, F_WRITE, 0);
        d.submit(&[0]);
        assert_eq!(d.used(0), (0, MAX_BYTES_PER_REQUEST as u32));
        assert_eq!(d.rd(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn a_buffer_outside_ram_or_a_failing_source_ends_the_request_not_the_device() {
        let mut d = Driver::new(RngDevice::new(Counting::default()), 16);
        d.desc(0, DATA, 8, F_NEXT | F_WRITE, 1);
        d.desc(1, 0x10, 8, F_WRITE, 0);
        d.submit(&[0]);
        assert_eq!(d.used(0), (0, 8), "what came before the bad buffer counts");
        assert_eq!(d.t.device().failed_requests(), 1);
        assert_eq!(d.rd(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);

        let mut d = Driver::new(
            RngDevice::new(Counting {
                next: 0,
                fail: true,
            }),
            16,
        );
        d.desc(0, DATA, 8, F_WRITE, 0);
        d.submit(&[0]);
        assert_eq!(d.used(0), (0, 0));
        assert_eq!(d.t.device().failed_requests(), 1);
    }

    #[test]
    fn a_chain_with_no_writable_buffer_is_returned_empty() {
        let mut d = Driver::new(RngDevice::new(Counting::default()), 16);
        d.desc(0, DATA, 8, 0, 0);
        d.submit(&[0]);
        assert_eq!(d.used(0), (0, 0));
        assert_eq!(d.t.device().failed_requests(), 0);
    }
}
