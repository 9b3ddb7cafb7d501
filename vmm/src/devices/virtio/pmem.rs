//! The virtio-pmem device (virtio 1.2, 5.19): a region of guest-physical address space backed
//! by a host file or memfd, which the guest maps as persistent memory, and one request queue
//! on which the guest asks for its writes to be made durable.
//!
//! Configuration space: `start: le64`, `size: le64`, the region's guest-physical address and
//! size. A request is a device-readable `type: le32` (0: flush); the answer is a
//! device-writable `ret: le32`, 0 for success and 1 for an I/O error. Everything the driver
//! puts in the queue is checked: a request that is short, of an unknown type, unreadable, or
//! placed after the answer's buffer is answered 1; a chain without room for the answer is
//! returned with nothing written. [`parse_request`] is the pure part, shared with the fuzz
//! target.
//!
//! All chains available at a notification are read first; if any asks for a flush, the
//! backing is flushed once (it covers every write the guest made before it queued the
//! requests), and only then are the answers written and the chains returned.

use super::{read_config_bytes, QueueError, VirtioDevice};
use std::io;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The virtio device ID of pmem.
pub const VIRTIO_ID_PMEM: u32 = 27;
/// Request type: make every earlier write to the region durable.
pub const REQ_TYPE_FLUSH: u32 = 0;
/// Answer: done.
pub const RESP_OK: u32 = 0;
/// Answer: failed (the guest reports an I/O error).
pub const RESP_EIO: u32 = 1;
/// Length of a request and of an answer.
pub const MESSAGE_LEN: usize = 4;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// A request the device understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmemRequest {
    /// Make the region's contents durable.
    Flush,
}

/// Why request bytes are not a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Fewer than 4 bytes.
    #[error("request of {0} bytes, fewer than 4")]
    TooShort(usize),
    /// A type other than flush.
    #[error("unknown request type {0}")]
    UnknownType(u32),
}

/// Parses the device-readable bytes of a request: a little-endian `u32` type, then anything
/// (ignored).
pub fn parse_request(bytes: &[u8]) -> Result<PmemRequest, RequestError> {
    let head: [u8; MESSAGE_LEN] = bytes
        .get(..MESSAGE_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(RequestError::TooShort(bytes.len()))?;
    match u32::from_le_bytes(head) {
        REQ_TYPE_FLUSH => Ok(PmemRequest::Flush),
        other => Err(RequestError::UnknownType(other)),
    }
}

/// Why a descriptor chain does not hold a usable request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The request bytes are not a request.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A device-readable buffer is outside guest RAM.
    #[error("request buffer at {0:#x} is not in guest RAM")]
    Unreadable(u64),
    /// A device-readable buffer follows a device-writable one.
    #[error("device-readable buffer after a device-writable one")]
    ReadableAfterWritable,
}

/// What one descriptor chain asks for, and where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedChain {
    /// The request, or why there is none.
    pub request: Result<PmemRequest, ChainError>,
    /// The first device-writable buffer of at least 4 bytes, if any.
    pub response: Option<GuestAddress>,
}

/// Reads the request of `chain` (its first 4 device-readable bytes, gathered across buffers)
/// and finds the buffer for the answer. Never fails: problems end up in the result.
pub fn read_chain(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> ParsedChain {
    let mut request = [0u8; MESSAGE_LEN];
    let mut got = 0;
    let mut fault = None;
    let mut response = None;
    let mut seen_writable = false;
    for desc in chain {
        if desc.is_write_only() {
            seen_writable = true;
            if response.is_none() && desc.len() as usize >= MESSAGE_LEN {
                response = Some(desc.addr());
            }
            continue;
        }
        if seen_writable {
            fault.get_or_insert(ChainError::ReadableAfterWritable);
            continue;
        }
        let want = (MESSAGE_LEN - got).min(desc.len() as usize);
        if want == 0 || fault.is_some() {
            continue;
        }
        match mem.read_slice(&mut request[got..got + want], desc.addr()) {
            Ok(()) => got += want,
            Err(_) => {
                fault = Some(ChainError::Unreadable(desc.addr().0));
            }
        }
    }
    let request = match fault {
        Some(f) => Err(f),
        None => parse_request(&request[..got]).map_err(ChainError::from),
    };
    ParsedChain { request, response }
}

/// What makes a pmem region durable.
pub trait Flush: Send {
    /// Writes back everything written to the region and waits until it is durable.
    fn flush(&self) -> io::Result<()>;
}

impl Flush for crate::pmem_backing::PmemBacking {
    fn flush(&self) -> io::Result<()> {
        crate::pmem_backing::PmemBacking::flush(self).map_err(io::Error::other)
    }
}

/// The virtio-pmem device for one region.
pub struct PmemDevice<F> {
    config: [u8; 16],
    backing: F,
    flushes: u64,
    failed: super::FailedRequests,
}

impl<F: Flush> PmemDevice<F> {
    /// A device for the region at guest-physical `start` of `size` bytes, flushed by `backing`.
    pub fn new(start: u64, size: u64, backing: F) -> Self {
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&start.to_le_bytes());
        config[8..].copy_from_slice(&size.to_le_bytes());
        PmemDevice {
            config,
            backing,
            flushes: 0,
            failed: super::FailedRequests::default(),
        }
    }

    /// The backing.
    pub fn backing(&self) -> &F {
        &self.backing
    }

    /// How many times the backing was flushed.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    /// How many requests were answered with an error.
    pub fn failed_requests(&self) -> u64 {
        self.failed.count()
    }
}

impl<F: Flush> VirtioDevice for PmemDevice<F> {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_PMEM
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<usize, QueueError> {
        let err = |source| QueueError::Queue { index, source };
        let chains: Vec<(u16, ParsedChain)> = queue
            .iter(mem)
            .map_err(err)?
            .map(|chain| (chain.head_index(), read_chain(chain, mem)))
            .collect();
        let flush = chains
            .iter()
            .any(|(_, c)| c.request == Ok(PmemRequest::Flush))
            .then(|| {
                self.flushes += 1;
                self.backing.flush()
            });
        match &flush {
            Some(Err(e)) => {
                crate::guest_log!(log::Level::Warn, "virtio-pmem: {}", crate::error_chain(e))
            }
            Some(Ok(())) => log::debug!("virtio-pmem: flush {} done", self.flushes),
            None => {}
        }
        for (head, chain) in &chains {
            let status = match (&chain.request, &flush) {
                (Ok(PmemRequest::Flush), Some(Ok(()))) => RESP_OK,
                (Ok(PmemRequest::Flush), _) => RESP_EIO,
                (Err(e), _) => {
                    self.failed.note("virtio-pmem", *head, e);
                    RESP_EIO
                }
            };
            let written = match chain.response {
                Some(addr) => match mem.write_slice(&status.to_le_bytes(), addr) {
                    Ok(()) => MESSAGE_LEN as u32,
                    Err(e) => {
                        self.failed.note(
                            "virtio-pmem",
                            *head,
                            &format!("answer buffer {:#x}: {e}", addr.0),
                        );
                        0
                    }
                },
                None => {
                    self.failed.note(
                        "virtio-pmem",
                        *head,
                        &"no device-writable buffer of 4 bytes",
                    );
                    0
                }
            };
            queue.add_used(mem, *head, written).map_err(err)?;
        }
        Ok(chains.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::reg;
    use crate::devices::virtio::status;
    use std::sync::atomic::Ordering;

    use crate::devices::virtio::testing::{
        CountingFlush as FakeFlush, Driver as TestDriver, DATA, F_NEXT, F_WRITE,
    };

    /// The test driver over a pmem device for a 2 MiB region at 4 GiB.
    type Driver<F> = TestDriver<PmemDevice<F>>;

    fn driver<F: Flush>(backing: F, size: u16) -> Driver<F> {
        TestDriver::new(PmemDevice::new(0x1_0000_0000, 2 << 20, backing), size)
    }

    /// A two-descriptor request (type at DATA + 16 * slot, answer 8 bytes after it), using
    /// descriptors 2 * slot and 2 * slot + 1.
    fn request<F: Flush>(d: &Driver<F>, slot: u16, kind: u32) -> (u16, u64) {
        let req = DATA + 16 * u64::from(slot);
        d.put(req, kind);
        d.put(req + 8, 0xdead_beef);
        d.desc(2 * slot, req, 4, F_NEXT, 2 * slot + 1);
        d.desc(2 * slot + 1, req + 8, 4, F_WRITE, 0);
        (2 * slot, req + 8)
    }

    #[test]
    fn parse_request_knows_flush_only() {
        assert_eq!(parse_request(&[0, 0, 0, 0]), Ok(PmemRequest::Flush));
        assert_eq!(parse_request(&[0, 0, 0, 0, 9, 9]), Ok(PmemRequest::Flush));
        assert_eq!(
            parse_request(&[1, 0, 0, 0]),
            Err(RequestError::UnknownType(1))
        );
        assert_eq!(
            parse_request(&[0, 0, 0, 0x80]),
            Err(RequestError::UnknownType(0x8000_0000))
        );
        assert_eq!(parse_request(&[0, 0, 0]), Err(RequestError::TooShort(3)));
        assert_eq!(parse_request(&[]), Err(RequestError::TooShort(0)));
    }

    #[test]
    fn config_space_holds_start_and_size_little_endian() {
        let d = PmemDevice::new(0x1_4000_0000, 0x20_0000, FakeFlush::default());
        let mut b = [0u8; 16];
        d.read_config(0, &mut b);
        assert_eq!(
            u64::from_le_bytes(b[..8].try_into().unwrap()),
            0x1_4000_0000
        );
        assert_eq!(u64::from_le_bytes(b[8..].try_into().unwrap()), 0x20_0000);
        let mut w = [0u8; 4];
        d.read_config(12, &mut w);
        assert_eq!(w, [0; 4]);
        d.read_config(14, &mut w);
        assert_eq!(w, [0; 4]);
        let mut hi = [0u8; 4];
        d.read_config(4, &mut hi);
        assert_eq!(u32::from_le_bytes(hi), 1);
        assert_eq!(d.device_id(), 27);
    }

    #[test]
    fn flush_round_trip_reaches_the_backing_file() {
        use crate::config::pmem::PmemConfig;
        use crate::pmem_backing::{inspect, PmemBacking};
        use std::io::{Read, Seek, SeekFrom};
        let path = std::env::temp_dir().join(format!("refvmm-pmem-dev-{}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        let cfg =
            PmemConfig::from_spec(&format!("file={}", path.display()), false, inspect).unwrap();
        let backing = PmemBacking::open(&cfg, 0, false).unwrap();
        let mapping = backing.mapping();
        let mut d = driver(backing, 16);

        // The guest writes to its pmem (the same pages as the host mapping), then flushes.
        let data = b"written by the guest before a flush";
        crate::sys::testing::write_mapping(&mapping, 0x1000, data);
        let (head, answer) = request(&d, 0, REQ_TYPE_FLUSH);
        d.submit(&[head]);

        assert_eq!(d.used_idx(), 1);
        assert_eq!(d.used(0), (u32::from(head), 4));
        assert_eq!(d.word(answer), RESP_OK);
        assert_eq!(d.t.device().flushes(), 1);
        assert_eq!(d.irq.0.load(Ordering::Relaxed), 1);
        assert_eq!(d.rd(reg::INTERRUPT_STATUS), 1);

        let mut f = std::fs::File::open(&path).unwrap();
        f.seek(SeekFrom::Start(0x1000)).unwrap();
        let mut back = vec![0u8; data.len()];
        f.read_exact(&mut back).unwrap();
        assert_eq!(back, data);
        drop(d);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn several_flushes_in_one_notification_share_one_flush() {
        let backing = FakeFlush::default();
        let mut d = driver(backing.clone(), 16);
        let a = request(&d, 0, REQ_TYPE_FLUSH);
        let b = request(&d, 1, REQ_TYPE_FLUSH);
        let c = request(&d, 2, REQ_TYPE_FLUSH);
        d.submit(&[a.0, b.0, c.0]);
        assert_eq!(d.used_idx(), 3);
        assert_eq!(backing.calls.load(Ordering::Relaxed), 1);
        for (i, (head, answer)) in [a, b, c].into_iter().enumerate() {
            assert_eq!(d.used(i as u16), (u32::from(head), 4));
            assert_eq!(d.word(answer), RESP_OK);
        }
        assert_eq!(d.irq.0.load(Ordering::Relaxed), 1);
        // The next notification flushes again.
        let e = request(&d, 3, REQ_TYPE_FLUSH);
        d.submit(&[e.0]);
        assert_eq!(backing.calls.load(Ordering::Relaxed), 2);
        assert_eq!(d.used_idx(), 4);
    }

    #[test]
    fn a_failed_flush_is_answered_eio() {
        let backing = FakeFlush {
            fail: true,
            ..Default::default()
        };
        let mut d = driver(backing, 8);
        let (head, answer) = request(&d, 0, REQ_TYPE_FLUSH);
        d.submit(&[head]);
        assert_eq!(d.used(0), (u32::from(head), 4));
        assert_eq!(d.word(answer), RESP_EIO);
        assert_eq!(d.rd(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn unknown_request_type_is_answered_eio_without_a_flush() {
        let backing = FakeFlush::default();
        let mut d = driver(backing.clone(), 8);
        let (head, answer) = request(&d, 0, 7);
        d.submit(&[head]);
        assert_eq!(d.used(0), (u32::from(head), 4));
        assert_eq!(d.word(answer), RESP_EIO);
        assert_eq!(backing.calls.load(Ordering::Relaxed), 0);
        assert_eq!(d.t.device().failed_requests(), 1);
    }

    #[test]
    fn a_request_split_across_buffers_is_gathered() {
        let backing = FakeFlush::default();
        let mut d = driver(backing.clone(), 8);
        d.mem.write_slice(&[0, 0], GuestAddress(DATA)).unwrap();
        d.mem
            .write_slice(&[0, 0], GuestAddress(DATA + 0x100))
            .unwrap();
        d.desc(0, DATA, 2, F_NEXT, 1);
        d.desc(1, DATA + 0x100, 2, F_NEXT, 2);
        d.desc(2, DATA + 0x200, 8, F_WRITE, 0);
        d.put(DATA + 0x200, 0xffff_ffff);
        d.submit(&[0]);
        assert_eq!(d.word(DATA + 0x200), RESP_OK);
        assert_eq!(backing.calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn malformed_chains_are_answered_or_returned_without_panicking() {
        let backing = FakeFlush::default();
        let mut d = driver(backing.clone(), 16);
        // 0: a 2-byte request.
        d.put(DATA, 0);
        d.desc(0, DATA, 2, F_NEXT, 1);
        d.desc(1, DATA + 8, 4, F_WRITE, 0);
        // 2: no device-writable buffer at all.
        d.put(DATA + 0x20, 0);
        d.desc(2, DATA + 0x20, 4, 0, 0);
        // 3: the answer buffer is too small, then a readable buffer after it.
        d.desc(3, DATA + 0x40, 4, F_NEXT, 4);
        d.desc(4, DATA + 0x48, 2, F_WRITE | F_NEXT, 5);
        d.desc(5, DATA + 0x50, 4, F_WRITE | F_NEXT, 6);
        d.desc(6, DATA + 0x58, 4, F_NEXT, 7);
        d.desc(7, DATA + 0x60, 4, F_WRITE, 0);
        d.put(DATA + 0x40, 0);
        // 8: request outside guest RAM.
        d.desc(8, 0x10_0000_0000, 4, F_NEXT, 9);
        d.desc(9, DATA + 0x70, 4, F_WRITE, 0);
        // 10: a loop: a readable descriptor pointing at itself.
        d.desc(10, DATA + 0x80, 4, F_NEXT, 10);
        // 11: answer buffer outside guest RAM.
        d.put(DATA + 0x90, 0);
        d.desc(11, DATA + 0x90, 4, F_NEXT, 12);
        d.desc(12, 0x10_0000_0000, 4, F_WRITE, 0);
        // 13: next index beyond the table.
        d.desc(13, DATA + 0xa0, 4, F_NEXT, 999);
        d.submit(&[0, 2, 3, 8, 10, 11, 13]);

        assert_eq!(d.used_idx(), 7);
        assert_eq!(d.used(0), (0, 4));
        assert_eq!(d.word(DATA + 8), RESP_EIO, "short request");
        assert_eq!(d.used(1), (2, 0), "no answer buffer");
        assert_eq!(d.used(2), (3, 4));
        assert_eq!(d.word(DATA + 0x50), RESP_EIO, "readable after writable");
        assert_eq!(d.used(3), (8, 4));
        assert_eq!(d.word(DATA + 0x70), RESP_EIO, "unreadable request");
        assert_eq!(d.used(4), (10, 0), "loop without an answer buffer");
        assert_eq!(d.used(5), (11, 0), "answer buffer outside RAM");
        assert_eq!(d.used(6), (13, 0), "chain ends at a bad index");
        // Chains 2 (no answer buffer), 10 (loop) and 11 held valid flush requests.
        assert_eq!(backing.calls.load(Ordering::Relaxed), 1);
        assert_eq!(d.rd(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(d.irq.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_head_index_beyond_the_queue_asks_for_a_reset() {
        let mut d = driver(FakeFlush::default(), 8);
        d.submit(&[200]);
        assert_ne!(d.rd(reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        // The driver resets and sets the device up again on fresh rings; it works.
        d.probe(8);
        let (head, answer) = request(&d, 0, REQ_TYPE_FLUSH);
        d.submit(&[head]);
        assert_eq!(d.word(answer), RESP_OK);
    }

    #[test]
    fn indirect_tables_are_followed() {
        let backing = FakeFlush::default();
        let mut d = driver(backing.clone(), 8);
        let table = DATA + 0x1000;
        let entry = |i: u16, addr: u64, len: u32, flags: u16, next: u16| {
            d.desc_at(table, i, addr, len, flags, next)
        };
        entry(0, DATA, 4, F_NEXT, 1);
        entry(1, DATA + 8, 4, F_WRITE, 0);
        d.put(DATA, 0);
        d.desc(0, table, 32, 4, 0);
        d.submit(&[0]);
        assert_eq!(d.word(DATA + 8), RESP_OK);
        assert_eq!(backing.calls.load(Ordering::Relaxed), 1);
    }
}
