//! [`SoftwareTagStore`]: allocation tags kept in host memory, two tags per byte.
//!
//! For hosts without MTE and for tests: it behaves like the KVM store (same layout, same range
//! rules) but keeps the tags in a packed array instead of in tag memory.

use vm_memory::GuestAddress;

use crate::tags::{
    check_range, check_tag_values, Error, Result, TagStore, GRANULE_SIZE, TAG_PAGE_SIZE,
};

/// Errors building a [`SoftwareTagStore`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// A region starts or ends off a page boundary, or is empty.
    #[error("Region at {base:#x} of {size:#x} bytes is empty or not page aligned")]
    Unaligned {
        /// Guest-physical base of the region.
        base: u64,
        /// Size of the region in bytes.
        size: u64,
    },
    /// A region overlaps another one or wraps around the address space.
    #[error("Region at {base:#x} of {size:#x} bytes overlaps another region or wraps")]
    Overlap {
        /// Guest-physical base of the region.
        base: u64,
        /// Size of the region in bytes.
        size: u64,
    },
    /// The packed tags of a region do not fit in host memory.
    #[error("Region at {base:#x} of {size:#x} bytes is too large for host memory")]
    TooLarge {
        /// Guest-physical base of the region.
        base: u64,
        /// Size of the region in bytes.
        size: u64,
    },
}

#[derive(Debug, Clone)]
struct Region {
    base: u64,
    size: u64,
    /// Two tags per byte: granule `2n` in the low nibble, `2n + 1` in the high nibble.
    packed: Vec<u8>,
}

/// Allocation tags of guest memory held in host memory, packed 4 bits per granule.
#[derive(Debug, Clone)]
pub struct SoftwareTagStore {
    regions: Vec<Region>,
}

impl SoftwareTagStore {
    /// Creates a store with all tags zero for the given `(base, size)` guest regions.
    pub fn new(regions: &[(GuestAddress, u64)]) -> std::result::Result<Self, LayoutError> {
        let mut sorted: Vec<(u64, u64)> = regions.iter().map(|(a, s)| (a.0, *s)).collect();
        sorted.sort_unstable();
        let mut out: Vec<Region> = Vec::with_capacity(sorted.len());
        for (base, size) in sorted {
            if size == 0 || base % TAG_PAGE_SIZE != 0 || size % TAG_PAGE_SIZE != 0 {
                return Err(LayoutError::Unaligned { base, size });
            }
            base.checked_add(size)
                .ok_or(LayoutError::Overlap { base, size })?;
            if out.last().is_some_and(|prev| prev.base + prev.size > base) {
                return Err(LayoutError::Overlap { base, size });
            }
            let bytes = usize::try_from(size / (GRANULE_SIZE * 2))
                .map_err(|_| LayoutError::TooLarge { base, size })?;
            out.push(Region {
                base,
                size,
                packed: vec![0; bytes],
            });
        }
        Ok(Self { regions: out })
    }

    /// The `(base, size)` of each region, in address order.
    pub fn regions(&self) -> Vec<(GuestAddress, u64)> {
        self.regions
            .iter()
            .map(|r| (GuestAddress(r.base), r.size))
            .collect()
    }

    /// Finds the region holding `[addr, addr + len)` and the granule index of `addr` in it.
    fn locate(&self, addr: u64, len: u64) -> Result<usize> {
        let out_of_range = Error::OutOfRange { addr, len };
        let idx = self
            .regions
            .iter()
            .position(|r| addr >= r.base && addr - r.base < r.size)
            .ok_or(out_of_range)?;
        let region = self
            .regions
            .get(idx)
            .ok_or(Error::OutOfRange { addr, len })?;
        if len > region.size - (addr - region.base) {
            return Err(Error::OutOfRange { addr, len });
        }
        Ok(idx)
    }
}

impl TagStore for SoftwareTagStore {
    fn read_tags(&self, addr: GuestAddress, tags: &mut [u8]) -> Result<()> {
        let len = check_range(addr, tags.len())?;
        let idx = self.locate(addr.0, len)?;
        let region = self
            .regions
            .get(idx)
            .ok_or(Error::OutOfRange { addr: addr.0, len })?;
        // Both values are within the region (checked by `locate`), so they fit in usize.
        let first = ((addr.0 - region.base) / (GRANULE_SIZE * 2)) as usize;
        let packed = region
            .packed
            .get(first..first + tags.len() / 2)
            .ok_or(Error::OutOfRange { addr: addr.0, len })?;
        for (pair, byte) in tags.chunks_exact_mut(2).zip(packed) {
            pair[0] = byte & 0xf;
            pair[1] = byte >> 4;
        }
        Ok(())
    }

    fn write_tags(&mut self, addr: GuestAddress, tags: &[u8]) -> Result<()> {
        let len = check_range(addr, tags.len())?;
        check_tag_values(tags)?;
        let idx = self.locate(addr.0, len)?;
        let region = self
            .regions
            .get_mut(idx)
            .ok_or(Error::OutOfRange { addr: addr.0, len })?;
        let first = ((addr.0 - region.base) / (GRANULE_SIZE * 2)) as usize;
        let packed = region
            .packed
            .get_mut(first..first + tags.len() / 2)
            .ok_or(Error::OutOfRange { addr: addr.0, len })?;
        for (pair, byte) in tags.chunks_exact(2).zip(packed) {
            *byte = pair[0] | (pair[1] << 4);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::tags::TAGS_PER_PAGE;

    fn store() -> SoftwareTagStore {
        SoftwareTagStore::new(&[
            (GuestAddress(0x10_0000), 0x4000),
            (GuestAddress(0x4000_0000), 0x2000),
        ])
        .unwrap()
    }

    #[test]
    fn new_store_reads_zero_tags() {
        let store = store();
        let mut buf = vec![9u8; TAGS_PER_PAGE * 4];

        store.read_tags(GuestAddress(0x10_0000), &mut buf).unwrap();

        assert!(buf.iter().all(|&t| t == 0));
    }

    #[test]
    fn written_tags_read_back_in_low_nibble() {
        let mut store = store();
        let tags: Vec<u8> = (0..TAGS_PER_PAGE * 2).map(|i| (i % 16) as u8).collect();

        store.write_tags(GuestAddress(0x10_1000), &tags).unwrap();
        let mut back = vec![0u8; tags.len()];
        store.read_tags(GuestAddress(0x10_1000), &mut back).unwrap();

        assert_eq!(back, tags);
    }

    #[test]
    fn write_leaves_neighbouring_pages_alone() {
        let mut store = store();

        store
            .write_tags(GuestAddress(0x10_1000), &vec![0xa; TAGS_PER_PAGE])
            .unwrap();
        let mut all = vec![0u8; TAGS_PER_PAGE * 4];
        store.read_tags(GuestAddress(0x10_0000), &mut all).unwrap();

        assert!(all[..TAGS_PER_PAGE].iter().all(|&t| t == 0));
        assert!(all[TAGS_PER_PAGE..2 * TAGS_PER_PAGE]
            .iter()
            .all(|&t| t == 0xa));
        assert!(all[2 * TAGS_PER_PAGE..].iter().all(|&t| t == 0));
    }

    #[test]
    fn range_crossing_region_end_is_out_of_range() {
        let store = store();
        let mut buf = vec![0u8; TAGS_PER_PAGE * 2];

        let result = store.read_tags(GuestAddress(0x10_3000), &mut buf);

        assert!(matches!(
            result,
            Err(Error::OutOfRange {
                addr: 0x10_3000,
                ..
            })
        ));
    }

    #[test]
    fn range_in_hole_is_out_of_range() {
        let mut store = store();

        let result = store.write_tags(GuestAddress(0x20_0000), &vec![0; TAGS_PER_PAGE]);

        assert!(matches!(result, Err(Error::OutOfRange { .. })));
    }

    #[test]
    fn wide_tag_is_refused_without_writing() {
        let mut store = store();
        let mut tags = vec![1u8; TAGS_PER_PAGE];
        tags[5] = 0x11;

        let result = store.write_tags(GuestAddress(0x10_0000), &tags);
        let mut back = vec![0u8; TAGS_PER_PAGE];
        store.read_tags(GuestAddress(0x10_0000), &mut back).unwrap();

        assert!(matches!(
            result,
            Err(Error::TagOutOfRange {
                index: 5,
                value: 0x11
            })
        ));
        assert!(back.iter().all(|&t| t == 0));
    }

    #[test]
    fn unaligned_access_is_refused() {
        let store = store();
        let mut buf = vec![0u8; TAGS_PER_PAGE];

        let result = store.read_tags(GuestAddress(0x10_0800), &mut buf);

        assert!(matches!(result, Err(Error::Unaligned { .. })));
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let result =
            SoftwareTagStore::new(&[(GuestAddress(0x0), 0x2000), (GuestAddress(0x1000), 0x1000)]);

        assert_eq!(
            result.unwrap_err(),
            LayoutError::Overlap {
                base: 0x1000,
                size: 0x1000
            }
        );
    }

    #[test]
    fn unaligned_region_is_refused() {
        let result = SoftwareTagStore::new(&[(GuestAddress(0x0), 0x1800)]);

        assert!(matches!(result, Err(LayoutError::Unaligned { .. })));
    }

    #[test]
    fn regions_are_reported_in_address_order() {
        let store =
            SoftwareTagStore::new(&[(GuestAddress(0x8000), 0x1000), (GuestAddress(0x0), 0x1000)])
                .unwrap();

        assert_eq!(
            store.regions(),
            vec![(GuestAddress(0), 0x1000), (GuestAddress(0x8000), 0x1000)]
        );
    }

    proptest! {
        #[test]
        fn any_tags_round_trip(page in 0u64..4, pages in 1usize..4, seed in any::<u64>()) {
            let mut store = store();
            let pages = pages.min(4 - page as usize);
            let tags: Vec<u8> = (0..pages * TAGS_PER_PAGE)
                .map(|i| ((seed >> (i % 61)) as u8 ^ i as u8) & 0xf)
                .collect();
            let addr = GuestAddress(0x10_0000 + page * TAG_PAGE_SIZE);

            store.write_tags(addr, &tags).unwrap();
            let mut back = vec![0u8; tags.len()];
            store.read_tags(addr, &mut back).unwrap();

            prop_assert_eq!(back, tags);
        }
    }
}
