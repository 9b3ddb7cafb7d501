//! Tag snapshots: the allocation tags of guest memory, saved compactly for migration.
//!
//! A page whose tags are all zero costs one bit (or nothing, when no page of its region is
//! tagged); any other page costs its tags packed 4 bits per granule (128 bytes per 4 KiB page).
//! A full snapshot covers every page of every region; an incremental one covers only the pages
//! in a dirty bitmap and is restored on top of the snapshots before it, in order.
//!
//! The encoding starts with the fixed 32-byte [`header`] every snapshot format of the arm64-vmm
//! workspace shares (magic, format version, flags, payload length, payload and header CRC-32;
//! specified in `docs/snapshot-format.md`), validated before the payload is decoded; the
//! payload is validated as untrusted input, with every size checked against the bytes actually
//! present before anything is allocated. Files of format 1.0, which had no header checksum,
//! still load.

mod bitmap;
mod codec;
pub mod header;

pub use bitmap::PageBitmap;

use vm_memory::GuestAddress;

use crate::tags::{self, TagStore, TAGS_PER_PAGE, TAG_PAGE_SIZE};

/// Bytes of packed tags per tagged page.
pub const PACKED_PAGE_LEN: usize = TAGS_PER_PAGE / 2;
/// Pages read or written per call to the tag store.
const CHUNK_PAGES: usize = 64;

/// Errors capturing, restoring, encoding or decoding a tag snapshot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Refused by the snapshot-header policy: truncated, not a tag snapshot, a damaged header,
    /// an unsupported version, undefined flags, an oversized payload, a damaged payload, or
    /// bytes after it.
    #[error(transparent)]
    Header(#[from] header::HeaderError),
    /// The payload (which passed its checksum) ends before the data its own fields announce.
    #[error("Tag snapshot payload is truncated: {needed} bytes needed, {available} left")]
    PayloadTruncated {
        /// Bytes the payload needs at this point.
        needed: u64,
        /// Bytes left in the payload.
        available: u64,
    },
    /// A region count or size in the payload exceeds the format's caps.
    #[error("Tag snapshot size {len} exceeds the limit of {max}")]
    Oversized {
        /// The size found.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The snapshot's fields contradict each other.
    #[error("Tag snapshot is inconsistent: {0}")]
    Inconsistent(&'static str),
    /// A region given for capture is empty, unaligned or wraps.
    #[error("Region at {base:#x} of {size:#x} bytes is empty or not page aligned")]
    BadRegion {
        /// Guest-physical base of the region.
        base: u64,
        /// Size of the region in bytes.
        size: u64,
    },
    /// The dirty bitmaps do not match the regions (count or page count).
    #[error("Dirty bitmaps do not match the regions being saved")]
    DirtyBitmapMismatch,
    /// The tag store failed.
    #[error("Tag store access failed")]
    Store(#[source] tags::Error),
}

/// Result type of tag-snapshot operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Whether a snapshot covers whole regions or only pages dirtied since the previous save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Every page of every region.
    Full,
    /// Only the pages listed as present; restore it after the snapshot it follows.
    Incremental,
}

/// A set of pages of one region that avoids storing a bitmap when it is empty or full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageSet {
    /// No page.
    Empty,
    /// Every page of the region.
    All,
    /// The pages in the bitmap.
    Some(PageBitmap),
}

impl PageSet {
    fn from_bitmap(bitmap: PageBitmap) -> Self {
        match bitmap.count() {
            0 => Self::Empty,
            n if n == bitmap.pages() => Self::All,
            _ => Self::Some(bitmap),
        }
    }

    /// Whether `page` is in the set.
    pub fn contains(&self, page: u64) -> bool {
        match self {
            Self::Empty => false,
            Self::All => true,
            Self::Some(b) => b.contains(page),
        }
    }

    /// Number of pages in the set, for a region of `pages` pages.
    pub fn count(&self, pages: u64) -> u64 {
        match self {
            Self::Empty => 0,
            Self::All => pages,
            Self::Some(b) => b.count(),
        }
    }
}

/// The saved tags of one guest-physical region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTags {
    base: GuestAddress,
    pages: u64,
    present: PageSet,
    tagged: PageSet,
    packed: Vec<u8>,
}

impl RegionTags {
    /// Guest-physical base of the region.
    pub fn base(&self) -> GuestAddress {
        self.base
    }

    /// Size of the region in pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The pages this snapshot carries (all of them for a full snapshot).
    pub fn present(&self) -> &PageSet {
        &self.present
    }

    /// The present pages that have at least one non-zero tag.
    pub fn tagged(&self) -> &PageSet {
        &self.tagged
    }

    fn page_addr(&self, page: u64) -> GuestAddress {
        GuestAddress(self.base.0 + page * TAG_PAGE_SIZE)
    }
}

/// Saved allocation tags of guest memory; see the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSnapshot {
    kind: SnapshotKind,
    regions: Vec<RegionTags>,
}

fn region_pages(base: GuestAddress, size: u64) -> Result<u64> {
    let bad = Error::BadRegion { base: base.0, size };
    if size == 0 || base.0 % TAG_PAGE_SIZE != 0 || size % TAG_PAGE_SIZE != 0 {
        return Err(bad);
    }
    base.0.checked_add(size).ok_or(bad)?;
    Ok(size / TAG_PAGE_SIZE)
}

impl TagSnapshot {
    /// Saves the tags of every page of `regions` (`(base, size)` pairs) from `store`.
    pub fn capture_full<S: TagStore + ?Sized>(
        store: &S,
        regions: &[(GuestAddress, u64)],
    ) -> Result<Self> {
        let regions = regions
            .iter()
            .map(|&(base, size)| capture_region(store, base, region_pages(base, size)?, None))
            .collect::<Result<_>>()?;
        Ok(Self {
            kind: SnapshotKind::Full,
            regions,
        })
    }

    /// Saves the tags of the pages set in `dirty` (one bitmap per region, in the same order,
    /// each over the region's pages) from `store`.
    pub fn capture_dirty<S: TagStore + ?Sized>(
        store: &S,
        regions: &[(GuestAddress, u64)],
        dirty: &[PageBitmap],
    ) -> Result<Self> {
        if regions.len() != dirty.len() {
            return Err(Error::DirtyBitmapMismatch);
        }
        let regions = regions
            .iter()
            .zip(dirty)
            .map(|(&(base, size), bits)| {
                let pages = region_pages(base, size)?;
                if bits.pages() != pages {
                    return Err(Error::DirtyBitmapMismatch);
                }
                capture_region(store, base, pages, Some(bits))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            kind: SnapshotKind::Incremental,
            regions,
        })
    }

    /// Whether this is a full or an incremental snapshot.
    pub fn kind(&self) -> SnapshotKind {
        self.kind
    }

    /// The saved regions, in the order given at capture.
    pub fn regions(&self) -> &[RegionTags] {
        &self.regions
    }

    /// Number of saved pages with at least one non-zero tag.
    pub fn tagged_pages(&self) -> u64 {
        self.regions.iter().map(|r| r.tagged.count(r.pages)).sum()
    }

    /// Writes the saved tags of every present page into `store`; present pages that were not
    /// tagged get zero tags, pages not present are left alone.
    pub fn restore<S: TagStore + ?Sized>(&self, store: &mut S) -> Result<()> {
        let mut buf = vec![0u8; CHUNK_PAGES * TAGS_PER_PAGE];
        for region in &self.regions {
            let mut packed = region.packed.chunks_exact(PACKED_PAGE_LEN);
            let mut page = 0u64;
            while page < region.pages {
                if !region.present.contains(page) {
                    page += 1;
                    continue;
                }
                let start = page;
                let mut filled = 0usize;
                while page < region.pages && filled < CHUNK_PAGES && region.present.contains(page) {
                    let out = buf
                        .get_mut(filled * TAGS_PER_PAGE..(filled + 1) * TAGS_PER_PAGE)
                        .ok_or(Error::Inconsistent("restore buffer overrun"))?;
                    if region.tagged.contains(page) {
                        let src = packed
                            .next()
                            .ok_or(Error::Inconsistent("fewer packed pages than tagged pages"))?;
                        unpack_page(src, out);
                    } else {
                        out.fill(0);
                    }
                    filled += 1;
                    page += 1;
                }
                let chunk = buf.get(..filled * TAGS_PER_PAGE).unwrap_or_default();
                store
                    .write_tags(region.page_addr(start), chunk)
                    .map_err(Error::Store)?;
            }
        }
        Ok(())
    }
}

fn capture_region<S: TagStore + ?Sized>(
    store: &S,
    base: GuestAddress,
    pages: u64,
    dirty: Option<&PageBitmap>,
) -> Result<RegionTags> {
    let mut tagged = PageBitmap::new(pages);
    let mut packed = Vec::new();
    let mut buf = vec![0u8; CHUNK_PAGES * TAGS_PER_PAGE];
    let mut page = 0u64;
    while page < pages {
        if dirty.is_some_and(|d| !d.contains(page)) {
            page += 1;
            continue;
        }
        let start = page;
        let mut run = 0usize;
        while page < pages && run < CHUNK_PAGES && dirty.is_none_or(|d| d.contains(page)) {
            run += 1;
            page += 1;
        }
        let chunk = buf
            .get_mut(..run * TAGS_PER_PAGE)
            .ok_or(Error::Inconsistent("capture buffer overrun"))?;
        store
            .read_tags(GuestAddress(base.0 + start * TAG_PAGE_SIZE), chunk)
            .map_err(Error::Store)?;
        for (i, page_tags) in chunk.chunks_exact(TAGS_PER_PAGE).enumerate() {
            if page_tags.iter().any(|&t| t != 0) {
                tagged.insert(start + i as u64);
                pack_page(page_tags, &mut packed);
            }
        }
    }
    let present = match dirty {
        None => PageSet::All,
        Some(d) => PageSet::from_bitmap(d.clone()),
    };
    Ok(RegionTags {
        base,
        pages,
        present,
        tagged: PageSet::from_bitmap(tagged),
        packed,
    })
}

fn pack_page(tags: &[u8], out: &mut Vec<u8>) {
    out.extend(tags.chunks_exact(2).map(|p| (p[0] & 0xf) | (p[1] << 4)));
}

fn unpack_page(packed: &[u8], out: &mut [u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(packed) {
        pair[0] = byte & 0xf;
        pair[1] = byte >> 4;
    }
}

#[cfg(test)]
mod tests;
