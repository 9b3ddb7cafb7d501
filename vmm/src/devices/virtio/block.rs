//! The virtio block device (virtio 1.2, 5.2): one request queue on a [`Disk`].
//!
//! A request is a chain whose device-readable part starts with a 16-byte header (`type: le32`,
//! `reserved: le32`, `sector: le64`) and whose device-writable part ends with a one-byte
//! status. Between them lie the data: device-readable for a write, device-writable for a read
//! or `GET_ID`, and 16-byte segments (`sector: le64`, `num_sectors: le32`, `flags: le32`) for
//! discard and write-zeroes. The chain is read as two byte streams, whatever its descriptors'
//! sizes, so any layout a driver uses works (virtio 1.x has no framing rules).
//!
//! Offered: `BLK_SIZE`, `SEG_MAX`, `FLUSH`, `TOPOLOGY`-free config, and, on a writable disk,
//! `DISCARD` and `WRITE_ZEROES`; `RO` on a read-only disk, which also refuses every write
//! (status `IOERR`) whatever the driver does. Data moves between guest RAM and the disk with
//! one vectored call per request, straight from and into guest memory (no bounce buffer).
//!
//! Everything the driver puts in the queue is checked: a chain without a writable byte for the
//! status is returned with nothing written; a header that is short, a readable buffer after a
//! writable one, data that are not whole sectors or reach past the disk's end, more than
//! [`MAX_SEGMENTS`] descriptors, or a buffer outside guest RAM are answered `IOERR`; a type the
//! device does not know is answered `UNSUPP`. None stops the device. [`split_chain`] and
//! [`parse_header`] are the pure parts, shared with the fuzz target.

use super::{read_config_bytes, QueueError, VirtioDevice};
use std::io;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

/// The virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes in a virtio-blk sector, whatever the disk's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Length of a request header.
pub const HEADER_LEN: u64 = 16;
/// Length of a discard or write-zeroes segment.
pub const SEGMENT_LEN: u64 = 16;
/// Most descriptors with data a request may have (the `seg_max` offered is below it).
pub const MAX_SEGMENTS: usize = 1024;
/// Most discard or write-zeroes segments in one request.
pub const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Longest serial (`GET_ID`).
pub const ID_LEN: usize = 20;

/// Feature bits (virtio 1.2, 5.2.3).
pub mod feature {
    /// `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// The disk is read-only.
    pub const RO: u64 = 1 << 5;
    /// `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// The flush request is supported.
    pub const FLUSH: u64 = 1 << 9;
    /// The discard request is supported.
    pub const DISCARD: u64 = 1 << 13;
    /// The write-zeroes request is supported.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Request types.
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Make every completed write durable.
    pub const FLUSH: u32 = 4;
    /// Read the serial.
    pub const GET_ID: u32 = 8;
    /// Forget sectors' contents.
    pub const DISCARD: u32 = 11;
    /// Make sectors read as zeros.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status bytes.
pub mod status {
    /// Done.
    pub const OK: u8 = 0;
    /// Failed.
    pub const IOERR: u8 = 1;
    /// Not supported.
    pub const UNSUPP: u8 = 2;
}

/// The storage behind a block device. Offsets and lengths are in bytes and already checked
/// against [`Disk::size`].
pub trait Disk: Send {
    /// Length in bytes (a multiple of [`SECTOR_SIZE`]).
    fn size(&self) -> u64;
    /// Fills `bufs`, in order, from `offset` on; all of them or an error.
    fn read_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()>;
    /// Writes `bufs`, in order, at `offset`; all of them or an error.
    fn write_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Lets go of `len` bytes at `offset` (their contents become unspecified).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zeros, freeing their space if `unmap`.
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
}

/// How the device presents its disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockOptions {
    /// Refuse writes and offer `RO`.
    pub readonly: bool,
    /// The block size told to the guest (512, or 4096 for `O_DIRECT`).
    pub block_size: u32,
    /// The serial (`GET_ID`), if any.
    pub serial: Option<String>,
}

/// One descriptor of a chain, as the device reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// A chain's two byte streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Device-readable bytes (header and write data).
    pub readable: u64,
    /// Device-writable bytes, the status byte included.
    pub writable: u64,
    /// Guest-physical address of the status byte: the last writable byte.
    pub status: u64,
}

/// Why a chain does not hold a usable request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// No device-writable byte: nowhere for the status.
    #[error("no device-writable byte for the status")]
    NoStatus,
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable buffer after a device-writable one")]
    ReadableAfterWritable,
    /// Fewer than 16 readable bytes.
    #[error("header of {0} bytes, fewer than 16")]
    ShortHeader(u64),
    /// More descriptors than [`MAX_SEGMENTS`].
    #[error("more than {MAX_SEGMENTS} descriptors")]
    TooManySegments,
}

/// Splits a chain's descriptors into its readable and writable streams and finds the status
/// byte. With [`ChainError::NoStatus`] there is nothing to answer with; with the other errors
/// the status byte is still where [`status_of`] says.
pub fn split_chain(segs: &[Segment]) -> Result<Split, ChainError> {
    let status = status_of(segs).ok_or(ChainError::NoStatus)?;
    if segs.len() > MAX_SEGMENTS {
        return Err(ChainError::TooManySegments);
    }
    let mut readable = 0u64;
    let mut writable = 0u64;
    for s in segs {
        if s.writable {
            writable += u64::from(s.len);
        } else if writable > 0 {
            return Err(ChainError::ReadableAfterWritable);
        } else {
            readable += u64::from(s.len);
        }
    }
    if readable < HEADER_LEN {
        return Err(ChainError::ShortHeader(readable));
    }
    Ok(Split {
        readable,
        writable,
        status,
    })
}

/// The address of the last device-writable byte of the chain, if it has one.
pub fn status_of(segs: &[Segment]) -> Option<u64> {
    segs.iter()
        .rev()
        .find(|s| s.writable && s.len > 0)
        .map(|s| s.addr.wrapping_add(u64::from(s.len) - 1))
}

/// A request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The type ([`req`]).
    pub kind: u32,
    /// The first sector.
    pub sector: u64,
}

/// Parses a 16-byte header (the reserved word is ignored).
pub fn parse_header(bytes: &[u8; HEADER_LEN as usize]) -> Header {
    let mut kind = [0; 4];
    kind.copy_from_slice(&bytes[..4]);
    let mut sector = [0; 8];
    sector.copy_from_slice(&bytes[8..]);
    Header {
        kind: u32::from_le_bytes(kind),
        sector: u64::from_le_bytes(sector),
    }
}

/// The `(address, length)` pieces of the `len` bytes at `skip` in the readable (or writable)
/// stream of `segs`.
pub fn stream_ranges(
    segs: &[Segment],
    writable: bool,
    mut skip: u64,
    mut len: u64,
) -> impl Iterator<Item = (u64, u64)> + '_ {
    segs.iter()
        .filter(move |s| s.writable == writable)
        .filter_map(move |s| {
            let n = u64::from(s.len);
            if skip >= n {
                skip -= n;
                return None;
            }
            if len == 0 {
                return None;
            }
            let take = (n - skip).min(len);
            let at = s.addr.wrapping_add(skip);
            skip = 0;
            len -= take;
            Some((at, take))
        })
}

/// Why a request failed (logged; the guest sees the status).
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("buffer {addr:#x}+{len:#x} is not in guest RAM")]
    Memory { addr: u64, len: u64 },
    #[error("{0} bytes of data is not a whole number of sectors")]
    Partial(u64),
    #[error("sectors {sector}+{bytes}B reach past the disk's end")]
    OutOfRange { sector: u64, bytes: u64 },
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("segment list of {0} bytes")]
    BadSegments(u64),
    #[error("unsupported flags {0:#x}")]
    Flags(u32),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Flags(_) => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// The virtio block device.
pub struct BlockDevice<D> {
    disk: D,
    opts: BlockOptions,
    config: [u8; 60],
    segs: Vec<Segment>,
    failed: super::FailedRequests,
    reads: u64,
    writes: u64,
    flushes: u64,
}

impl<D: Disk> BlockDevice<D> {
    /// A device on `disk`.
    pub fn new(disk: D, opts: BlockOptions) -> Self {
        let mut config = [0u8; 60];
        config[..8].copy_from_slice(&(disk.size() / SECTOR_SIZE).to_le_bytes());
        // seg_max: what a chain of the queue's size holds besides header and status.
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        config[20..24].copy_from_slice(&opts.block_size.max(512).to_le_bytes());
        // num_queues (only meaningful with MQ, which is not offered).
        config[34..36].copy_from_slice(&1u16.to_le_bytes());
        // max_discard_sectors, max_discard_seg, discard_sector_alignment (4 KiB).
        config[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        config[40..44].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
        config[44..48].copy_from_slice(&8u32.to_le_bytes());
        // max_write_zeroes_sectors, max_write_zeroes_seg, write_zeroes_may_unmap.
        config[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
        config[52..56].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
        config[56] = 1;
        BlockDevice {
            disk,
            opts,
            config,
            segs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            failed: super::FailedRequests::default(),
            reads: 0,
            writes: 0,
            flushes: 0,
        }
    }

    /// The disk.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// Requests answered with an error.
    pub fn failed_requests(&self) -> u64 {
        self.failed.count()
    }

    /// Completed reads, writes and flushes.
    pub fn counts(&self) -> (u64, u64, u64) {
        (self.reads, self.writes, self.flushes)
    }

    fn slices<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
        writable: bool,
        skip: u64,
        len: u64,
    ) -> Result<Vec<VolatileSlice<'m>>, RequestError> {
        stream_ranges(&self.segs, writable, skip, len)
            .map(|(addr, len)| {
                usize::try_from(len)
                    .ok()
                    .and_then(|n| mem.get_slice(GuestAddress(addr), n).ok())
                    .ok_or(RequestError::Memory { addr, len })
            })
            .collect()
    }

    fn check_range(&self, sector: u64, bytes: u64) -> Result<u64, RequestError> {
        if bytes % SECTOR_SIZE != 0 {
            return Err(RequestError::Partial(bytes));
        }
        sector
            .checked_mul(SECTOR_SIZE)
            .filter(|off| {
                off.checked_add(bytes)
                    .is_some_and(|end| end <= self.disk.size())
            })
            .ok_or(RequestError::OutOfRange { sector, bytes })
    }

    /// Carries out the request described by `self.segs`; returns the status and the number of
    /// data bytes written to the guest (before the status byte).
    fn execute(&mut self, split: &Split, mem: &GuestMemoryMmap) -> Result<(u8, u64), RequestError> {
        let mut head = [0u8; HEADER_LEN as usize];
        let mut got = 0usize;
        for (addr, len) in stream_ranges(&self.segs, false, 0, HEADER_LEN) {
            let n = len as usize; // at most 16
            mem.read_slice(&mut head[got..got + n], GuestAddress(addr))
                .map_err(|_| RequestError::Memory { addr, len })?;
            got += n;
        }
        let header = parse_header(&head);
        let data_in = split.writable - 1;
        let data_out = split.readable - HEADER_LEN;
        match header.kind {
            req::IN => {
                let offset = self.check_range(header.sector, data_in)?;
                let bufs = self.slices(mem, true, 0, data_in)?;
                self.disk.read_at(&bufs, offset)?;
                self.reads += 1;
                Ok((status::OK, data_in))
            }
            req::OUT => {
                if self.opts.readonly {
                    return Err(RequestError::ReadOnly);
                }
                let offset = self.check_range(header.sector, data_out)?;
                let bufs = self.slices(mem, false, HEADER_LEN, data_out)?;
                self.disk.write_at(&bufs, offset)?;
                self.writes += 1;
                Ok((status::OK, 0))
            }
            req::FLUSH => {
                if !self.opts.readonly {
                    self.disk.flush()?;
                }
                self.flushes += 1;
                Ok((status::OK, 0))
            }
            req::GET_ID => {
                let Some(serial) = &self.opts.serial else {
                    return Ok((status::UNSUPP, 0));
                };
                let mut id = [0u8; ID_LEN];
                let s = serial.as_bytes();
                let n = s.len().min(ID_LEN);
                id[..n].copy_from_slice(&s[..n]);
                let len = data_in.min(ID_LEN as u64);
                let mut at = 0usize;
                for (addr, piece) in stream_ranges(&self.segs, true, 0, len) {
                    let p = piece as usize; // at most 20
                    mem.write_slice(&id[at..at + p], GuestAddress(addr))
                        .map_err(|_| RequestError::Memory { addr, len: piece })?;
                    at += p;
                }
                Ok((status::OK, len))
            }
            kind @ (req::DISCARD | req::WRITE_ZEROES) => {
                if self.opts.readonly {
                    return Err(RequestError::ReadOnly);
                }
                if data_out == 0
                    || data_out % SEGMENT_LEN != 0
                    || data_out / SEGMENT_LEN > u64::from(MAX_DISCARD_SEGMENTS)
                {
                    return Err(RequestError::BadSegments(data_out));
                }
                let mut list = [0u8; (SEGMENT_LEN as usize) * MAX_DISCARD_SEGMENTS as usize];
                let mut got = 0usize;
                for (addr, len) in stream_ranges(&self.segs, false, HEADER_LEN, data_out) {
                    let n = len as usize; // at most the list's size
                    mem.read_slice(&mut list[got..got + n], GuestAddress(addr))
                        .map_err(|_| RequestError::Memory { addr, len })?;
                    got += n;
                }
                for seg in list[..got].chunks_exact(SEGMENT_LEN as usize) {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&seg[..8]);
                    let sector = u64::from_le_bytes(w);
                    let mut v = [0u8; 4];
                    v.copy_from_slice(&seg[8..12]);
                    let sectors = u32::from_le_bytes(v);
                    v.copy_from_slice(&seg[12..16]);
                    let flags = u32::from_le_bytes(v);
                    let unmap = flags & 1 != 0;
                    // Discard takes no flags; write-zeroes takes unmap only.
                    if (kind == req::DISCARD && flags != 0) || flags & !1 != 0 {
                        return Err(RequestError::Flags(flags));
                    }
                    let bytes = u64::from(sectors) * SECTOR_SIZE;
                    let offset = self.check_range(sector, bytes)?;
                    if kind == req::DISCARD {
                        self.disk.discard(offset, bytes)?;
                    } else {
                        self.disk.write_zeroes(offset, bytes, unmap)?;
                    }
                }
                Ok((status::OK, 0))
            }
            _ => Ok((status::UNSUPP, 0)),
        }
    }

    /// Handles one chain; returns the used length.
    fn handle(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        let head = chain.head_index();
        self.segs.clear();
        let mut too_many = false;
        let mut last_writable = None;
        for d in chain {
            let seg = Segment {
                addr: d.addr().0,
                len: d.len(),
                writable: d.is_write_only(),
            };
            if seg.writable && seg.len > 0 {
                last_writable = Some(seg);
            }
            if self.segs.len() < MAX_SEGMENTS {
                self.segs.push(seg);
            } else {
                too_many = true;
            }
        }
        if too_many {
            // Keep the true status byte as the last writable descriptor.
            if let Some(s) = last_writable {
                self.segs.push(s);
            }
        }
        let split = split_chain(&self.segs);
        let status_addr = match (&split, status_of(&self.segs)) {
            (Err(ChainError::NoStatus), _) | (_, None) => {
                self.failed.note("virtio-blk", head, &ChainError::NoStatus);
                return 0;
            }
            (_, Some(a)) => a,
        };
        let outcome = split
            .map_err(RequestError::from)
            .and_then(|s| self.execute(&s, mem));
        let (code, written) = match outcome {
            Ok(done) => done,
            Err(e) => {
                self.failed.note("virtio-blk", head, &e);
                (e.status(), 0)
            }
        };
        if mem.write_obj(code, GuestAddress(status_addr)).is_err() {
            self.failed.note(
                "virtio-blk",
                head,
                &format!("status byte {status_addr:#x} is not in guest RAM"),
            );
            return 0;
        }
        // The writable stream is at most 256 descriptors of u32 lengths; the used length is
        // what was written, which a u32 holds for any real request.
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }
}

impl<D: Disk> VirtioDevice for BlockDevice<D> {
    fn device_id(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let base = feature::SEG_MAX | feature::BLK_SIZE | feature::FLUSH;
        if self.opts.readonly {
            base | feature::RO
        } else {
            base | feature::DISCARD | feature::WRITE_ZEROES
        }
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
        super::serve_available(index, queue, mem, |chain| self.handle(chain, mem))
    }
}

/// A disk in memory, for tests and the fuzz target.
#[cfg(any(test, feature = "test-utils"))]
pub mod memdisk {
    use super::*;

    /// A disk whose bytes are a vector; fails every operation when `broken`.
    #[derive(Debug, Default, Clone)]
    pub struct MemDisk {
        /// The contents.
        pub bytes: Vec<u8>,
        /// Every operation fails with EIO.
        pub broken: bool,
        /// Flushes so far.
        pub flushes: u64,
        /// Discarded ranges, `(offset, len)`.
        pub discarded: Vec<(u64, u64)>,
    }

    impl MemDisk {
        /// A zeroed disk of `len` bytes.
        pub fn new(len: usize) -> Self {
            MemDisk {
                bytes: vec![0; len],
                ..Default::default()
            }
        }

        fn check(&self) -> io::Result<()> {
            if self.broken {
                Err(io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        }

        fn range(&mut self, offset: u64, len: u64) -> &mut [u8] {
            &mut self.bytes[offset as usize..(offset + len) as usize]
        }
    }

    impl Disk for MemDisk {
        fn size(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn read_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
            self.check()?;
            let mut at = offset as usize;
            for b in bufs {
                b.copy_from(&self.bytes[at..at + b.len()]);
                at += b.len();
            }
            Ok(())
        }
        fn write_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
            self.check()?;
            let mut at = offset as usize;
            for b in bufs {
                b.copy_to(&mut self.bytes[at..at + b.len()]);
                at += b.len();
            }
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.check()?;
            self.flushes += 1;
            Ok(())
        }
        fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
            self.check()?;
            self.discarded.push((offset, len));
            Ok(())
        }
        fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
            self.check()?;
            self.range(offset, len).fill(0);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memdisk::MemDisk;
    use super::*;
    use crate::devices::virtio::mmio::reg;
    use crate::devices::virtio::status as dev_status;
    use crate::devices::virtio::testing::{Driver, DATA, F_NEXT, F_WRITE};

    const HDR: u64 = DATA;
    const BUF: u64 = DATA + 0x1000;
    const ST: u64 = DATA + 0x800;

    fn device(len: usize, opts: BlockOptions) -> Driver<BlockDevice<MemDisk>> {
        let mut disk = MemDisk::new(len);
        for (i, b) in disk.bytes.iter_mut().enumerate() {
            *b = (i / 512) as u8 ^ (i as u8);
        }
        Driver::new(BlockDevice::new(disk, opts), 16)
    }

    fn header(d: &mut Driver<BlockDevice<MemDisk>>, kind: u32, sector: u64) {
        d.put(HDR, kind);
        d.put(HDR + 4, 0);
        d.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }

    fn status_byte(d: &Driver<BlockDevice<MemDisk>>) -> u8 {
        d.mem.read_obj(GuestAddress(ST)).unwrap()
    }

    fn read_guest(d: &Driver<BlockDevice<MemDisk>>, addr: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        d.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// A three-descriptor request: header, data (`len` bytes at BUF, `write` for the device),
    /// status.
    fn request(
        d: &mut Driver<BlockDevice<MemDisk>>,
        kind: u32,
        sector: u64,
        len: u32,
        write: bool,
    ) {
        header(d, kind, sector);
        d.mem.write_obj(0xffu8, GuestAddress(ST)).unwrap();
        d.desc(0, HDR, 16, F_NEXT, 1);
        d.desc(1, BUF, len, F_NEXT | if write { F_WRITE } else { 0 }, 2);
        d.desc(2, ST, 1, F_WRITE, 0);
        d.submit(&[0]);
    }

    #[test]
    fn config_space_and_features_describe_the_disk() {
        let d = device(1 << 20, BlockOptions::default());
        let dev = d.t.device();
        assert_eq!(dev.device_id(), 2);
        let mut cap = [0u8; 8];
        dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 2048);
        let mut w = [0u8; 4];
        dev.read_config(20, &mut w);
        assert_eq!(u32::from_le_bytes(w), 512);
        dev.read_config(12, &mut w);
        assert_eq!(u32::from_le_bytes(w), 254);
        let f = dev.features();
        assert_ne!(f & feature::FLUSH, 0);
        assert_ne!(f & feature::DISCARD, 0);
        assert_eq!(f & feature::RO, 0);

        let ro = device(
            4096,
            BlockOptions {
                readonly: true,
                block_size: 4096,
                serial: None,
            },
        );
        let f = ro.t.device().features();
        assert_ne!(f & feature::RO, 0);
        assert_eq!(f & (feature::DISCARD | feature::WRITE_ZEROES), 0);
        ro.t.device().read_config(20, &mut w);
        assert_eq!(u32::from_le_bytes(w), 4096);
    }

    #[test]
    fn a_read_copies_sectors_into_the_guest_and_counts_data_plus_status() {
        let mut d = device(1 << 20, BlockOptions::default());
        request(&mut d, req::IN, 3, 1024, true);
        assert_eq!(status_byte(&d), status::OK);
        assert_eq!(d.used(0), (0, 1025));
        let want = d.t.device().disk().bytes[3 * 512..5 * 512].to_vec();
        assert_eq!(read_guest(&d, BUF, 1024), want);
        assert_eq!(d.irq.count(), 1);
    }

    #[test]
    fn a_write_lands_on_the_disk_whatever_the_descriptor_layout() {
        let mut d = device(1 << 20, BlockOptions::default());
        // Header split over two descriptors, data over two, status in the data's last byte's
        // own descriptor.
        header(&mut d, req::OUT, 8);
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        d.mem.write_slice(&data, GuestAddress(BUF)).unwrap();
        d.desc(0, HDR, 5, F_NEXT, 1);
        d.desc(1, HDR + 5, 11, F_NEXT, 2);
        d.desc(2, BUF, 100, F_NEXT, 3);
        d.desc(3, BUF + 100, 924, F_NEXT, 4);
        d.desc(4, ST, 1, F_WRITE, 0);
        d.submit(&[0]);
        assert_eq!(status_byte(&d), status::OK);
        assert_eq!(d.used(0), (0, 1));
        assert_eq!(
            &d.t.device().disk().bytes[8 * 512..8 * 512 + 1024],
            &data[..]
        );
        assert_eq!(d.t.device().counts(), (0, 1, 0));
    }

    #[test]
    fn flush_reaches_the_disk_and_get_id_gives_the_serial() {
        let mut d = device(
            4096,
            BlockOptions {
                serial: Some("disk-7".into()),
                ..Default::default()
            },
        );
        header(&mut d, req::FLUSH, 0);
        d.desc(0, HDR, 16, F_NEXT, 1);
        d.desc(1, ST, 1, F_WRITE, 0);
        d.submit(&[0]);
        assert_eq!(status_byte(&d), status::OK);
        assert_eq!(d.t.device().disk().flushes, 1);

        request(&mut d, req::GET_ID, 0, 20, true);
        assert_eq!(status_byte(&d), status::OK);
        assert_eq!(d.used(1), (0, 21));
        let mut want = b"disk-7".to_vec();
        want.resize(20, 0);
        assert_eq!(read_guest(&d, BUF, 20), want);

        // Without a serial: unsupported.
        let mut d = device(4096, BlockOptions::default());
        request(&mut d, req::GET_ID, 0, 20, true);
        assert_eq!(status_byte(&d), status::UNSUPP);
    }

    #[test]
    fn a_read_only_disk_refuses_every_write_and_keeps_its_bytes() {
        let opts = BlockOptions {
            readonly: true,
            ..Default::default()
        };
        let mut d = device(1 << 20, opts);
        let before = d.t.device().disk().bytes.clone();
        d.mem.write_slice(&[0xaa; 512], GuestAddress(BUF)).unwrap();
        request(&mut d, req::OUT, 0, 512, false);
        assert_eq!(status_byte(&d), status::IOERR);
        request(&mut d, req::WRITE_ZEROES, 0, 16, false);
        assert_eq!(status_byte(&d), status::IOERR);
        request(&mut d, req::IN, 0, 512, true);
        assert_eq!(status_byte(&d), status::OK, "reads still work");
        assert_eq!(d.t.device().disk().bytes, before);
        assert_eq!(d.t.device().disk().flushes, 0);
    }

    #[test]
    fn discard_and_write_zeroes_take_segments() {
        let mut d = device(1 << 20, BlockOptions::default());
        // Two write-zeroes segments: sectors 2..4 and 10..11.
        let mut segs = Vec::new();
        for (sector, n, flags) in [(2u64, 2u32, 0u32), (10, 1, 1)] {
            segs.extend_from_slice(&sector.to_le_bytes());
            segs.extend_from_slice(&n.to_le_bytes());
            segs.extend_from_slice(&flags.to_le_bytes());
        }
        d.mem.write_slice(&segs, GuestAddress(BUF)).unwrap();
        request(&mut d, req::WRITE_ZEROES, 0, 32, false);
        assert_eq!(status_byte(&d), status::OK);
        let disk = &d.t.device().disk().bytes;
        assert!(disk[1024..2048].iter().all(|&b| b == 0));
        assert!(disk[5120..5632].iter().all(|&b| b == 0));
        assert_ne!(disk[2048..2560].iter().filter(|&&b| b != 0).count(), 0);

        d.mem.write_slice(&segs[..16], GuestAddress(BUF)).unwrap();
        request(&mut d, req::DISCARD, 0, 16, false);
        assert_eq!(status_byte(&d), status::OK);
        assert_eq!(d.t.device().disk().discarded, [(1024, 1024)]);
        // Discard with the unmap flag: unsupported.
        d.mem.write_slice(&segs[16..], GuestAddress(BUF)).unwrap();
        request(&mut d, req::DISCARD, 0, 16, false);
        assert_eq!(status_byte(&d), status::UNSUPP);
        // Not a whole segment.
        request(&mut d, req::DISCARD, 0, 15, false);
        assert_eq!(status_byte(&d), status::IOERR);
    }

    #[test]
    fn requests_past_the_end_or_of_partial_sectors_fail() {
        let mut d = device(4096, BlockOptions::default());
        request(&mut d, req::IN, 7, 512, true);
        assert_eq!(status_byte(&d), status::OK, "the last sector");
        request(&mut d, req::IN, 7, 1024, true);
        assert_eq!(status_byte(&d), status::IOERR);
        request(&mut d, req::IN, u64::MAX / 256, 512, true);
        assert_eq!(status_byte(&d), status::IOERR, "offset overflow");
        request(&mut d, req::OUT, 0, 100, false);
        assert_eq!(status_byte(&d), status::IOERR);
        request(&mut d, 0x77, 0, 512, true);
        assert_eq!(status_byte(&d), status::UNSUPP);
        assert_eq!(d.t.device().failed_requests(), 3);
        assert_eq!(d.rd(reg::STATUS) & dev_status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn broken_chains_are_answered_without_stopping_the_device() {
        let mut d = device(1 << 20, BlockOptions::default());
        // No writable byte: returned with nothing written.
        header(&mut d, req::IN, 0);
        d.desc(0, HDR, 16, 0, 0);
        d.submit(&[0]);
        assert_eq!(d.used(0), (0, 0));
        // Short header.
        d.mem.write_obj(0xffu8, GuestAddress(ST)).unwrap();
        d.desc(0, HDR, 8, F_NEXT, 1);
        d.desc(1, ST, 1, F_WRITE, 0);
        d.submit(&[0]);
        assert_eq!(status_byte(&d), status::IOERR);
        // Readable after writable.
        d.desc(0, HDR, 16, F_NEXT, 1);
        d.desc(1, BUF, 512, F_NEXT | F_WRITE, 2);
        d.desc(2, BUF + 512, 512, F_NEXT, 3);
        d.desc(3, ST, 1, F_WRITE, 0);
        d.submit(&[0]);
        assert_eq!(status_byte(&d), status::IOERR);
        // Data outside guest RAM.
        header(&mut d, req::IN, 0);
        d.desc(0, HDR, 16, F_NEXT, 1);
        d.desc(1, 0x10, 512, F_NEXT | F_WRITE, 2);
        d.desc(2, ST, 1, F_WRITE, 0);
        d.submit(&[0]);
        assert_eq!(status_byte(&d), status::IOERR);
        // A failing disk.
        let mut d = device(1 << 20, BlockOptions::default());
        d.t.device_mut().disk.broken = true;
        request(&mut d, req::IN, 0, 512, true);
        assert_eq!(status_byte(&d), status::IOERR);
        assert_eq!(d.rd(reg::STATUS) & dev_status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn split_and_ranges_follow_the_two_streams() {
        let s = |addr, len, writable| Segment {
            addr,
            len,
            writable,
        };
        let segs = [
            s(0x100, 10, false),
            s(0x200, 10, false),
            s(0x300, 8, true),
            s(0x400, 4, true),
        ];
        assert_eq!(
            split_chain(&segs),
            Ok(Split {
                readable: 20,
                writable: 12,
                status: 0x403,
            })
        );
        let r: Vec<_> = stream_ranges(&segs, false, 16, 4).collect();
        assert_eq!(r, [(0x206, 4)]);
        let r: Vec<_> = stream_ranges(&segs, true, 0, 11).collect();
        assert_eq!(r, [(0x300, 8), (0x400, 3)]);
        assert_eq!(split_chain(&segs[..2]), Err(ChainError::NoStatus));
        assert_eq!(
            split_chain(&[s(0, 8, false), s(8, 1, true)]),
            Err(ChainError::ShortHeader(8))
        );
        assert_eq!(
            status_of(&[s(0, 16, false), s(0x10, 1, true), s(0x20, 0, true)]),
            Some(0x10)
        );
        let mut h = [0u8; 16];
        h[0] = 1;
        h[8] = 9;
        assert_eq!(parse_header(&h), Header { kind: 1, sector: 9 });
    }
}
