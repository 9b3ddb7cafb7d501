//! Encoding and validating decoding of [`TagSnapshot`] payloads.
//!
//! Payload layout (little-endian, the same in formats 1.0 and 1.1): kind `u8` (0 full, 1 incremental), 3 reserved zero bytes,
//! region count `u32`; then per region: base `u64`, pages `u64`, present-set mode `u8`,
//! tagged-set mode `u8` (0 empty, 1 all, 2 bitmap), 6 reserved zero bytes, the present bitmap
//! and the tagged bitmap when their mode is 2 (`ceil(pages / 64)` words each), then 128 bytes
//! of packed tags per tagged page in address order.

use vm_memory::GuestAddress;

use super::header::{self, HEADER_LEN};
use super::{
    Error, PageBitmap, PageSet, RegionTags, Result, SnapshotKind, TagSnapshot, PACKED_PAGE_LEN,
};
use crate::tags::TAG_PAGE_SIZE;

/// Most regions a snapshot may hold.
pub const MAX_REGIONS: u32 = 1024;
/// Most pages one region may hold (4 TiB of 4 KiB pages).
pub const MAX_REGION_PAGES: u64 = 1 << 30;

const MODE_EMPTY: u8 = 0;
const MODE_ALL: u8 = 1;
const MODE_BITMAP: u8 = 2;

fn put_set(out: &mut Vec<u8>, set: &PageSet) {
    if let PageSet::Some(bits) = set {
        for w in bits.words() {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
}

fn mode(set: &PageSet) -> u8 {
    match set {
        PageSet::Empty => MODE_EMPTY,
        PageSet::All => MODE_ALL,
        PageSet::Some(_) => MODE_BITMAP,
    }
}

impl TagSnapshot {
    /// Encodes the snapshot: header followed by payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(self.encoded_payload_hint());
        payload.push(match self.kind {
            SnapshotKind::Full => 0,
            SnapshotKind::Incremental => 1,
        });
        payload.extend_from_slice(&[0; 3]);
        payload.extend_from_slice(&(self.regions.len() as u32).to_le_bytes());
        for r in &self.regions {
            payload.extend_from_slice(&r.base.0.to_le_bytes());
            payload.extend_from_slice(&r.pages.to_le_bytes());
            payload.push(mode(&r.present));
            payload.push(mode(&r.tagged));
            payload.extend_from_slice(&[0; 6]);
            put_set(&mut payload, &r.present);
            put_set(&mut payload, &r.tagged);
            payload.extend_from_slice(&r.packed);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&header::FORMAT.header_for(&payload).to_bytes());
        out.extend_from_slice(&payload);
        out
    }

    fn encoded_payload_hint(&self) -> usize {
        self.regions
            .iter()
            .map(|r| 24 + r.packed.len() + 2 * (r.pages as usize).div_ceil(8))
            .sum::<usize>()
            + 8
    }

    /// Decodes and validates an encoded snapshot.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (header, payload) = header::open(bytes)?;
        let mut rd = Reader { buf: payload };
        let kind = match rd.u8()? {
            0 => SnapshotKind::Full,
            1 => SnapshotKind::Incremental,
            _ => return Err(Error::Inconsistent("unknown snapshot kind")),
        };
        if rd.take(3)? != [0; 3] {
            return Err(Error::Inconsistent("reserved payload bytes are not zero"));
        }
        let count = rd.u32()?;
        if count > MAX_REGIONS {
            return Err(Error::Oversized {
                len: count.into(),
                max: MAX_REGIONS.into(),
            });
        }
        let mut regions: Vec<RegionTags> = Vec::new();
        for _ in 0..count {
            let region = read_region(&mut rd, kind)?;
            if let Some(prev) = regions.last() {
                if prev.base.0 + prev.pages * TAG_PAGE_SIZE > region.base.0 {
                    return Err(Error::Inconsistent("regions overlap or are out of order"));
                }
            }
            regions.push(region);
        }
        // A newer minor (which the header says adds only optional data) puts what it adds
        // after the last region, where this reader stops.
        if !rd.buf.is_empty() && !header::FORMAT.is_newer(&header) {
            return Err(Error::Inconsistent("bytes follow the last region"));
        }
        Ok(Self { kind, regions })
    }
}

fn read_region(rd: &mut Reader<'_>, kind: SnapshotKind) -> Result<RegionTags> {
    let base = rd.u64()?;
    let pages = rd.u64()?;
    if pages == 0 || base % TAG_PAGE_SIZE != 0 {
        return Err(Error::Inconsistent("region is empty or not page aligned"));
    }
    if pages > MAX_REGION_PAGES {
        return Err(Error::Oversized {
            len: pages,
            max: MAX_REGION_PAGES,
        });
    }
    if base.checked_add(pages * TAG_PAGE_SIZE).is_none() {
        return Err(Error::Inconsistent("region wraps around the address space"));
    }
    let present_mode = rd.u8()?;
    let tagged_mode = rd.u8()?;
    if rd.take(6)? != [0; 6] {
        return Err(Error::Inconsistent("reserved region bytes are not zero"));
    }
    let present = read_set(rd, present_mode, pages)?;
    let tagged = read_set(rd, tagged_mode, pages)?;
    if kind == SnapshotKind::Full && present != PageSet::All {
        return Err(Error::Inconsistent(
            "full snapshot does not cover a whole region",
        ));
    }
    let tagged_within_present = match (&tagged, &present) {
        (PageSet::Empty, _) | (_, PageSet::All) => true,
        (_, PageSet::Empty) => false,
        (PageSet::All, PageSet::Some(_)) => false,
        (PageSet::Some(t), PageSet::Some(p)) => t.is_subset_of(p),
    };
    if !tagged_within_present {
        return Err(Error::Inconsistent("tagged pages are not all present"));
    }
    // `pages <= MAX_REGION_PAGES`, so this cannot overflow.
    let packed_len = tagged.count(pages) * PACKED_PAGE_LEN as u64;
    let packed = rd.take_u64(packed_len)?.to_vec();
    Ok(RegionTags {
        base: GuestAddress(base),
        pages,
        present,
        tagged,
        packed,
    })
}

fn read_set(rd: &mut Reader<'_>, mode: u8, pages: u64) -> Result<PageSet> {
    match mode {
        MODE_EMPTY => Ok(PageSet::Empty),
        MODE_ALL => Ok(PageSet::All),
        MODE_BITMAP => {
            let words = pages.div_ceil(64);
            let raw = rd.take_u64(words * 8)?;
            let words: Vec<u64> = raw
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            PageBitmap::from_words_exact(words, pages)
                .map(PageSet::Some)
                .ok_or(Error::Inconsistent(
                    "bitmap has bits past the end of its region",
                ))
        }
        _ => Err(Error::Inconsistent("unknown page-set mode")),
    }
}

/// A bounds-checked cursor over the payload.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Error::PayloadTruncated {
                needed: n as u64,
                available: self.buf.len() as u64,
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn take_u64(&mut self, n: u64) -> Result<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| Error::PayloadTruncated {
            needed: n,
            available: self.buf.len() as u64,
        })?;
        self.take(n)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
}
