//! Target `virtio_pmem`: refvmm's virtio-pmem request parser and the device's whole queue path
//! behind the virtio-mmio transport, on guest memory the input fills.
//!
//! Input layout (all little endian):
//!
//! | bytes | meaning |
//! |---|---|
//! | 0–1 | the queue size the driver writes to `QueueNum` |
//! | 2 | control bits: 0–1 extra notifications after the first (0–3); 2 offer no `VIRTIO_F_VERSION_1` (the device must refuse `FEATURES_OK` and never run); 3 the backing's flush fails; 4 reset the device and set it up again before the extra notifications; 5 also notify before `DRIVER_OK` (must be ignored) |
//! | 3–4, 5–6, 7–8 | offsets in guest RAM of the descriptor table, the available ring and the used ring |
//! | 9– | guest RAM contents from its start (at most [`RAM_SIZE`] bytes; the rest is zero) |
//!
//! Every input also goes through [`parse_request`] as a whole. Inputs shorter than the header
//! only do that.
//!
//! Checks: the parser agrees with the format; the transport accepts the queue exactly when
//! its size and ring addresses are valid and in RAM, and `FEATURES_OK` exactly when
//! `VERSION_1` was offered; nothing is consumed before `DRIVER_OK`. After the first
//! notification, a reference walk of the available ring and of every descriptor chain
//! (written here from the virtio split-ring rules) predicts what the
//! device must have done: asked for a reset (available index too far ahead, a head outside
//! the queue) or else flushed once if and only if some chain held a flush request, returned
//! every chain in order with 4 bytes written exactly when it had a writable buffer of 4 bytes
//! in RAM, answered 0 only for flush requests whose flush succeeded, and raised the queue
//! interrupt exactly when it returned chains.

use std::sync::atomic::Ordering;

use refvmm::devices::virtio::mmio::reg;
use refvmm::devices::virtio::pmem::{
    parse_request, read_chain, ChainError, ParsedChain, PmemDevice, PmemRequest, RequestError,
    MESSAGE_LEN, QUEUE_SIZE, REQ_TYPE_FLUSH, RESP_EIO, RESP_OK,
};
use refvmm::devices::virtio::{interrupt, status, MmioTransport, VIRTIO_F_VERSION_1};
use refvmm::devices::MmioDevice;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest-physical address of the fuzzed guest RAM.
pub const RAM_BASE: u64 = 0x4000_0000;
/// Size of the fuzzed guest RAM.
pub const RAM_SIZE: u64 = 0x1_0000;
/// Length of the input header.
pub const HEADER_LEN: usize = 9;
/// Guest-physical address of the pmem region the device reports (not backed here).
pub const PMEM_START: u64 = 0x1_0000_0000;

/// Control bits (byte 2).
pub mod ctrl {
    /// Mask of the number of extra notifications.
    pub const EXTRA_NOTIFIES: u8 = 0b11;
    /// Offer no `VIRTIO_F_VERSION_1`.
    pub const NO_VERSION_1: u8 = 1 << 2;
    /// The flush fails.
    pub const FLUSH_FAILS: u8 = 1 << 3;
    /// Reset and set up again before the extra notifications.
    pub const RESET_AGAIN: u8 = 1 << 4;
    /// Notify before `DRIVER_OK` too.
    pub const EARLY_NOTIFY: u8 = 1 << 5;
}

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

pub(crate) use refvmm::devices::virtio::testing::{
    CountingFlush as FakeFlush, CountingInterrupt as Counter,
};

/// What one input made the device do (for the seed tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// The queue was accepted and the device reached `DRIVER_OK`.
    pub running: bool,
    /// Chains returned at the first notification.
    pub returned: u16,
    /// Flushes of the backing at the first notification.
    pub flushes: u64,
    /// Chains answered 0 at the first notification (where the reference could check them).
    pub answered_ok: u16,
    /// Chains answered 1 at the first notification (where the reference could check them).
    pub answered_eio: u16,
    /// The device asked for a reset at the first notification.
    pub needs_reset: bool,
}

/// Runs one input; panics when a check fails.
pub fn run_virtio_pmem(data: &[u8]) {
    check_parser(data);
    if data.len() >= HEADER_LEN {
        run_device(data);
    }
}

/// The driver side: register accesses, counted.
struct Driver {
    t: MmioTransport<PmemDevice<FakeFlush>>,
    writes: u32,
}

impl Driver {
    fn wr(&mut self, off: u64, v: u32) {
        self.writes += 1;
        self.t.write(off, &v.to_le_bytes());
    }

    fn rd(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Resets the device, negotiates and sets queue 0 up as Linux does; checks the answers
    /// and returns (FEATURES_OK accepted, queue ready).
    fn setup(&mut self, h: &Header) -> (bool, bool) {
        self.wr(reg::STATUS, 0);
        assert_eq!(self.rd(reg::STATUS), 0, "reset did not clear the status");
        self.wr(reg::STATUS, status::ACKNOWLEDGE);
        self.wr(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let version = if h.control & ctrl::NO_VERSION_1 != 0 {
            0
        } else {
            1 << (VIRTIO_F_VERSION_1 - 32)
        };
        self.wr(reg::DRIVER_FEATURES_SEL, 1);
        self.wr(reg::DRIVER_FEATURES, version);
        self.wr(reg::DRIVER_FEATURES_SEL, 0);
        self.wr(reg::DRIVER_FEATURES, 0);
        self.wr(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        let features_ok = self.rd(reg::STATUS) & status::FEATURES_OK != 0;
        assert_eq!(
            features_ok,
            h.control & ctrl::NO_VERSION_1 == 0,
            "FEATURES_OK must be accepted exactly when VERSION_1 is offered"
        );
        self.wr(reg::QUEUE_SEL, 0);
        assert_eq!(self.rd(reg::QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
        self.wr(reg::QUEUE_NUM, u32::from(h.queue_size));
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, h.desc),
            (reg::QUEUE_DRIVER_LOW, h.avail),
            (reg::QUEUE_DEVICE_LOW, h.used),
        ] {
            self.wr(low, addr as u32);
            self.wr(low + 4, (addr >> 32) as u32);
        }
        self.wr(reg::QUEUE_READY, 1);
        let ready = self.rd(reg::QUEUE_READY) == 1;
        assert_eq!(
            ready,
            queue_valid(h.queue_size, h.desc, h.avail, h.used),
            "queue of {} at {:#x}/{:#x}/{:#x}: accepted {ready}",
            h.queue_size,
            h.desc,
            h.avail,
            h.used
        );
        assert_eq!(
            self.rd(reg::STATUS) & status::DEVICE_NEEDS_RESET == 0,
            ready,
            "a refused queue (and only that) asks for a reset at set-up"
        );
        (features_ok, ready)
    }

    fn driver_ok(&mut self) -> u32 {
        let s = self.rd(reg::STATUS);
        self.wr(reg::STATUS, s | status::DRIVER_OK);
        self.rd(reg::STATUS)
    }
}

/// The decoded input header.
struct Header {
    queue_size: u16,
    control: u8,
    desc: u64,
    avail: u64,
    used: u64,
}

/// [`run_virtio_pmem`]'s device part, returning what happened.
///
/// # Panics
///
/// When a check fails, or the input is shorter than [`HEADER_LEN`].
pub fn run_device(data: &[u8]) -> Report {
    let le16 = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]);
    let h = Header {
        queue_size: le16(0),
        control: data[2],
        desc: RAM_BASE + u64::from(le16(3)),
        avail: RAM_BASE + u64::from(le16(5)),
        used: RAM_BASE + u64::from(le16(7)),
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), RAM_SIZE as usize)])
        .expect("64 KiB of guest memory");
    let image = &data[HEADER_LEN..];
    let image = &image[..image.len().min(RAM_SIZE as usize)];
    mem.write_slice(image, GuestAddress(RAM_BASE))
        .expect("the image fits");

    let irq = Counter::default();
    let backing = FakeFlush {
        fail: h.control & ctrl::FLUSH_FAILS != 0,
        ..Default::default()
    };
    let device = PmemDevice::new(PMEM_START, 2 << 20, backing.clone());
    let mut d = Driver {
        t: MmioTransport::new(device, mem.clone(), Box::new(irq.clone()))
            .expect("the pmem queue size is valid"),
        writes: 0,
    };

    let (features_ok, ready) = d.setup(&h);
    let used_before: u16 = mem.read_obj(GuestAddress(h.used)).unwrap_or(0);
    if h.control & ctrl::EARLY_NOTIFY != 0 {
        d.wr(reg::QUEUE_NOTIFY, 0);
        assert_eq!(backing.calls.load(Ordering::Relaxed), 0);
        assert_eq!(irq.0.load(Ordering::Relaxed), 0);
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(h.used)).unwrap_or(0),
            used_before
        );
    }
    let s = d.driver_ok();
    assert_eq!(
        s & status::DRIVER_OK != 0,
        features_ok,
        "DRIVER_OK needs FEATURES_OK"
    );
    let running = features_ok && ready;
    let expected = running.then(|| Expected::predict(&mem, h.queue_size, h.desc, h.avail));

    d.wr(reg::QUEUE_NOTIFY, 0);
    let mut report = Report {
        running,
        flushes: backing.calls.load(Ordering::Relaxed),
        ..Default::default()
    };
    match expected {
        None => {
            assert_eq!(report.flushes, 0, "a device that is not running flushed");
            assert_eq!(d.rd(reg::INTERRUPT_STATUS) & interrupt::VRING, 0);
        }
        Some(exp) => exp.check(
            &mut report,
            &d.t,
            &mem,
            h.used,
            h.control & ctrl::FLUSH_FAILS != 0,
        ),
    }
    let s = d.rd(reg::STATUS);
    assert!(
        s & status::DRIVER_OK == 0 || s & status::FEATURES_OK != 0,
        "status {s:#x}"
    );

    if h.control & ctrl::RESET_AGAIN != 0 {
        d.setup(&h);
        d.driver_ok();
    }
    for _ in 0..(h.control & ctrl::EXTRA_NOTIFIES) {
        let before = backing.calls.load(Ordering::Relaxed);
        d.wr(reg::QUEUE_NOTIFY, 0);
        assert!(backing.calls.load(Ordering::Relaxed) <= before + 1);
    }
    d.wr(reg::QUEUE_NOTIFY, 1);
    d.wr(reg::QUEUE_NOTIFY, u32::MAX);
    assert!(
        irq.0.load(Ordering::Relaxed) <= d.writes,
        "more interrupts than register writes"
    );
    report
}

/// Whether virtio-queue and the transport must accept this queue in the fuzzed RAM.
fn queue_valid(size: u16, desc: u64, avail: u64, used: u64) -> bool {
    let n = u64::from(size);
    let end = RAM_BASE + RAM_SIZE;
    size.is_power_of_two()
        && size <= QUEUE_SIZE
        && desc % 16 == 0
        && avail % 2 == 0
        && used % 4 == 0
        && desc + 16 * n <= end
        && avail + 6 + 2 * n <= end
        && used + 6 + 8 * n <= end
}

/// The reference prediction of the first notification.
struct Expected {
    /// `None`: the device must ask for a reset.
    chains: Option<Vec<(u16, ParsedChain)>>,
    size: u16,
}

impl Expected {
    fn predict(mem: &GuestMemoryMmap, size: u16, desc: u64, avail: u64) -> Self {
        let idx: u16 = mem
            .read_obj(GuestAddress(avail + 2))
            .expect("the available ring is in RAM");
        if idx > size {
            return Expected { chains: None, size };
        }
        let mut chains = Vec::new();
        for i in 0..idx {
            let head: u16 = mem
                .read_obj(GuestAddress(avail + 4 + 2 * u64::from(i % size)))
                .expect("the available ring is in RAM");
            chains.push((head, reference_chain(mem, desc, size, head)));
        }
        if chains.iter().any(|(h, _)| *h >= size) {
            return Expected { chains: None, size };
        }
        // The device's own chain reader must agree with the reference on the same memory.
        let mut q = <Queue as QueueT>::new(QUEUE_SIZE).expect("valid size");
        q.try_set_size(size).expect("valid size");
        q.try_set_desc_table_address(GuestAddress(desc))
            .expect("aligned");
        q.try_set_avail_ring_address(GuestAddress(avail))
            .expect("aligned");
        q.set_ready(true);
        let read: Vec<(u16, ParsedChain)> = q
            .iter(mem)
            .expect("the queue is valid")
            .map(|c| (c.head_index(), read_chain(c, mem)))
            .collect();
        assert_eq!(read, chains, "read_chain against the reference");
        Expected {
            chains: Some(chains),
            size,
        }
    }

    fn check(
        self,
        report: &mut Report,
        t: &MmioTransport<PmemDevice<FakeFlush>>,
        mem: &GuestMemoryMmap,
        used: u64,
        flush_fails: bool,
    ) {
        let needs_reset = t.status() & status::DEVICE_NEEDS_RESET != 0;
        report.needs_reset = needs_reset;
        let Some(chains) = self.chains else {
            assert!(needs_reset, "the device must ask for a reset");
            return;
        };
        assert!(!needs_reset, "unexpected reset request");
        let any_flush = chains
            .iter()
            .any(|(_, c)| c.request == Ok(PmemRequest::Flush));
        assert_eq!(report.flushes, u64::from(any_flush), "flushes");
        let n = chains.len() as u16;
        report.returned = n;
        let used_idx: u16 = mem.read_obj(GuestAddress(used + 2)).expect("in RAM");
        let ring = (used, used + 4 + 8 * u64::from(self.size));
        let answers: Vec<Option<u64>> = chains
            .iter()
            .map(|(_, c)| c.response.map(|a| a.0))
            .collect();
        // Answers can only be checked where nothing written later lands on them.
        // (Answer addresses are the guest's: anywhere up to u64::MAX.)
        let span = |a: u64| (a, a.saturating_add(MESSAGE_LEN as u64));
        let clobbered = |i: usize, a: u64| {
            overlaps(span(a), ring)
                || answers
                    .iter()
                    .enumerate()
                    .any(|(j, b)| j != i && b.is_some_and(|b| overlaps(span(a), span(b))))
        };
        let checkable = answers
            .iter()
            .enumerate()
            .all(|(i, a)| a.is_none_or(|a| !clobbered(i, a)));
        assert_eq!(
            t.interrupt_status() & interrupt::VRING != 0,
            n > 0,
            "queue interrupt"
        );
        if !checkable {
            return;
        }
        if n > 0 {
            // The device counts from 0 after a reset; with nothing returned it writes nothing.
            assert_eq!(used_idx, n, "used index");
        }
        for (i, (head, chain)) in chains.iter().enumerate() {
            let at = used + 4 + 8 * u64::from(i as u16 % self.size);
            let id: u32 = mem.read_obj(GuestAddress(at)).expect("in RAM");
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("in RAM");
            assert_eq!(id, u32::from(*head), "used element {i}");
            let writable = chain
                .response
                .filter(|a| mem.read_slice(&mut [0u8; 4], *a).is_ok());
            assert_eq!(
                len,
                if writable.is_some() {
                    MESSAGE_LEN as u32
                } else {
                    0
                },
                "used length of element {i}"
            );
            let Some(addr) = writable else {
                continue;
            };
            let answer: u32 = mem.read_obj(addr).expect("in RAM");
            let want = match chain.request {
                Ok(PmemRequest::Flush) if !flush_fails => RESP_OK,
                _ => RESP_EIO,
            };
            assert_eq!(u32::from_le(answer), want, "answer of chain {head}");
            if want == RESP_OK {
                report.answered_ok += 1;
            } else {
                report.answered_eio += 1;
            }
        }
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Reads the chain at `head` by the split-ring rules, independently of virtio-queue: at most
/// `size` descriptors, following `next` while `NEXT` is set and the index is in the table,
/// ending when the byte count would pass 4 GiB. A descriptor with `INDIRECT` switches to the
/// table it points to (a whole number of 16-byte entries, not itself inside an indirect
/// table), which then holds the rest of the chain.
fn reference_chain(mem: &GuestMemoryMmap, desc: u64, size: u16, head: u16) -> ParsedChain {
    let mut table = desc;
    let mut entries = u32::from(size);
    let mut index = u32::from(head);
    let mut budget = entries;
    let mut indirect = false;
    let mut total: u32 = 0;
    let mut request = Vec::with_capacity(MESSAGE_LEN);
    let mut fault = None;
    let mut response = None;
    let mut writable_seen = false;
    while budget > 0 && index < entries {
        let mut raw = [0u8; 16];
        let Some(at) = table.checked_add(16 * u64::from(index)) else {
            break;
        };
        if mem.read_slice(&mut raw, GuestAddress(at)).is_err() {
            break;
        }
        let addr = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & F_INDIRECT != 0 {
            if indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                break;
            }
            indirect = true;
            table = addr;
            entries = len / 16;
            index = 0;
            budget = entries;
            continue;
        }
        let Some(t) = total.checked_add(len) else {
            break;
        };
        total = t;
        if flags & F_WRITE != 0 {
            writable_seen = true;
            if response.is_none() && len as usize >= MESSAGE_LEN {
                response = Some(GuestAddress(addr));
            }
        } else if writable_seen {
            fault.get_or_insert(ChainError::ReadableAfterWritable);
        } else if fault.is_none() && request.len() < MESSAGE_LEN && len > 0 {
            let take = (MESSAGE_LEN - request.len()).min(len as usize);
            let mut buf = vec![0u8; take];
            match mem.read_slice(&mut buf, GuestAddress(addr)) {
                Ok(()) => request.extend_from_slice(&buf),
                Err(_) => fault = Some(ChainError::Unreadable(addr)),
            }
        }
        if flags & F_NEXT == 0 {
            break;
        }
        index = u32::from(next);
        budget -= 1;
    }
    let request = match fault {
        Some(f) => Err(f),
        None => parse_request(&request).map_err(Into::into),
    };
    ParsedChain { request, response }
}

/// The parser must agree with the format: a little-endian type in the first 4 bytes, 0 for
/// flush, anything after it ignored.
fn check_parser(data: &[u8]) {
    let got = parse_request(data);
    match data.get(..MESSAGE_LEN) {
        None => assert_eq!(got, Err(RequestError::TooShort(data.len()))),
        Some(head) => {
            let kind = u32::from_le_bytes(head.try_into().expect("4 bytes"));
            let want = if kind == REQ_TYPE_FLUSH {
                Ok(PmemRequest::Flush)
            } else {
                Err(RequestError::UnknownType(kind))
            };
            assert_eq!(got, want);
        }
    }
}

/// Builds inputs: the header, then guest RAM with a descriptor table, rings and buffers
/// placed by the caller (for the seed corpus and tests).
#[derive(Debug, Clone)]
pub struct InputBuilder {
    header: [u8; HEADER_LEN],
    ram: Vec<u8>,
    avail_count: u16,
}

impl InputBuilder {
    /// Descriptor table offset used by [`InputBuilder::standard`].
    pub const DESC: u16 = 0x0000;
    /// Available ring offset used by [`InputBuilder::standard`].
    pub const AVAIL: u16 = 0x1000;
    /// Used ring offset used by [`InputBuilder::standard`].
    pub const USED: u16 = 0x2000;
    /// Start of the data buffers used by the seeds.
    pub const DATA: u16 = 0x3000;

    /// A queue of `size` entries at the standard offsets, `control` bits, empty RAM.
    pub fn standard(size: u16, control: u8) -> Self {
        Self::at(size, control, Self::DESC, Self::AVAIL, Self::USED)
    }

    /// A queue of `size` entries at the given offsets.
    pub fn at(size: u16, control: u8, desc: u16, avail: u16, used: u16) -> Self {
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&size.to_le_bytes());
        header[2] = control;
        header[3..5].copy_from_slice(&desc.to_le_bytes());
        header[5..7].copy_from_slice(&avail.to_le_bytes());
        header[7..9].copy_from_slice(&used.to_le_bytes());
        InputBuilder {
            header,
            ram: Vec::new(),
            avail_count: 0,
        }
    }

    fn desc_off(&self) -> u64 {
        u64::from(u16::from_le_bytes([self.header[3], self.header[4]]))
    }

    fn avail_off(&self) -> u64 {
        u64::from(u16::from_le_bytes([self.header[5], self.header[6]]))
    }

    fn size(&self) -> u16 {
        u16::from_le_bytes([self.header[0], self.header[1]])
    }

    /// Writes `bytes` at RAM offset `off`.
    pub fn put(&mut self, off: u64, bytes: &[u8]) -> &mut Self {
        let off = off as usize;
        if self.ram.len() < off + bytes.len() {
            self.ram.resize(off + bytes.len(), 0);
        }
        self.ram[off..off + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// Writes descriptor `index` of the table (address given as a RAM offset).
    pub fn desc(&mut self, index: u16, off: u64, len: u32, flags: u16, next: u16) -> &mut Self {
        self.raw_desc(index, RAM_BASE + off, len, flags, next)
    }

    /// Writes descriptor `index` with a raw guest-physical address.
    pub fn raw_desc(
        &mut self,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> &mut Self {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let at = self.desc_off() + 16 * u64::from(index);
        self.put(at, &raw)
    }

    /// Makes the chain at `head` available (the available index follows).
    pub fn avail(&mut self, head: u16) -> &mut Self {
        let slot = u64::from(self.avail_count % self.size().max(1));
        let at = self.avail_off() + 4 + 2 * slot;
        self.put(at, &head.to_le_bytes());
        self.avail_count = self.avail_count.wrapping_add(1);
        let idx = self.avail_count;
        self.set_avail_idx(idx)
    }

    /// Overwrites the available index.
    pub fn set_avail_idx(&mut self, idx: u16) -> &mut Self {
        let at = self.avail_off() + 2;
        self.put(at, &idx.to_le_bytes())
    }

    /// A two-buffer request of `kind` in slot `slot` (descriptors `2 * slot` and
    /// `2 * slot + 1`, buffers at `DATA + 16 * slot`), made available.
    pub fn request(&mut self, slot: u16, kind: u32) -> &mut Self {
        let buf = u64::from(Self::DATA) + 16 * u64::from(slot);
        self.put(buf, &kind.to_le_bytes())
            .put(buf + 8, &0xdead_beef_u32.to_le_bytes())
            .desc(2 * slot, buf, 4, F_NEXT, 2 * slot + 1)
            .desc(2 * slot + 1, buf + 8, 4, F_WRITE, 0)
            .avail(2 * slot)
    }

    /// The input bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut out = self.header.to_vec();
        out.extend_from_slice(&self.ram);
        out
    }
}

/// Descriptor flags for seed builders.
pub mod flags {
    /// The chain goes on at `next`.
    pub const NEXT: u16 = super::F_NEXT;
    /// Device-writable buffer.
    pub const WRITE: u16 = super::F_WRITE;
    /// The buffer is an indirect descriptor table.
    pub const INDIRECT: u16 = super::F_INDIRECT;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flush_is_answered_ok() {
        let input = InputBuilder::standard(16, 0)
            .request(0, REQ_TYPE_FLUSH)
            .build();
        let r = run_device(&input);
        assert!(r.running);
        assert_eq!((r.returned, r.flushes, r.answered_ok), (1, 1, 1));
    }

    #[test]
    fn a_failing_flush_is_answered_eio() {
        let input = InputBuilder::standard(16, ctrl::FLUSH_FAILS)
            .request(0, REQ_TYPE_FLUSH)
            .build();
        let r = run_device(&input);
        assert_eq!((r.flushes, r.answered_ok, r.answered_eio), (1, 0, 1));
    }

    #[test]
    fn a_head_outside_the_queue_asks_for_a_reset() {
        let input = InputBuilder::standard(8, 0).avail(9).build();
        assert!(run_device(&input).needs_reset);
    }

    #[test]
    fn short_inputs_only_reach_the_parser() {
        run_virtio_pmem(&[]);
        run_virtio_pmem(&[0, 0, 0, 0]);
        run_virtio_pmem(&[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
