//! The [`TagStore`] trait: reading and writing the allocation tags of guest memory.
//!
//! Tags are exchanged in the layout of KVM's `KVM_ARM_MTE_COPY_TAGS`: one byte per 16-byte
//! granule, the 4-bit tag in the low nibble, upper nibble zero. Ranges are guest-physical,
//! start on a [`TAG_PAGE_SIZE`] boundary and cover whole pages, so a buffer holds a multiple of
//! [`TAGS_PER_PAGE`] bytes.

use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;

/// Bytes covered by one allocation tag (an MTE granule).
pub const GRANULE_SIZE: u64 = 16;
/// The page size tag ranges are aligned to.
pub const TAG_PAGE_SIZE: u64 = 4096;
/// Tags (granules) in one page.
pub const TAGS_PER_PAGE: usize = (TAG_PAGE_SIZE / GRANULE_SIZE) as usize;
/// The largest value an allocation tag can take.
pub const MAX_TAG: u8 = 0xf;

/// Errors from a [`TagStore`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not on a page boundary or the buffer does not cover whole pages.
    #[error("Tag range at {addr:#x} with {tags} tags is not page aligned")]
    Unaligned {
        /// Guest-physical start of the range.
        addr: u64,
        /// Number of tags (granules) requested.
        tags: usize,
    },
    /// Part of the range is not guest memory known to the store.
    #[error("Tag range at {addr:#x} of {len:#x} bytes is outside guest memory")]
    OutOfRange {
        /// Guest-physical start of the range.
        addr: u64,
        /// Length of the range in bytes.
        len: u64,
    },
    /// A tag byte uses bits above the low nibble.
    #[error("Tag value {value:#x} at index {index} does not fit in 4 bits")]
    TagOutOfRange {
        /// Index of the offending byte in the buffer.
        index: usize,
        /// The offending byte.
        value: u8,
    },
    /// KVM refuses to write tags while dirty-page logging is enabled on the memory slot.
    #[error("Tags cannot be written while dirty logging is enabled (EBUSY)")]
    DirtyLogging,
    /// The store does not support writing non-zero tags (memory without MTE).
    #[error("Guest memory has no allocation tags")]
    Untagged,
    /// The host refused the operation.
    #[error("Tag copy failed: {0}")]
    Os(std::io::Error),
}

/// Result type of tag-store operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Reads and writes the allocation tags of guest-physical memory.
///
/// `tags.len()` tags cover `tags.len() * 16` bytes from `addr`; `addr` must be page aligned
/// and `tags.len()` a multiple of [`TAGS_PER_PAGE`].
pub trait TagStore {
    /// Reads the tags of the range starting at `addr` into `tags` (one tag per byte).
    fn read_tags(&self, addr: GuestAddress, tags: &mut [u8]) -> Result<()>;
    /// Writes `tags` (one tag per byte, each at most [`MAX_TAG`]) to the range at `addr`.
    fn write_tags(&mut self, addr: GuestAddress, tags: &[u8]) -> Result<()>;
}

/// Checks that `addr` is page aligned and `tags` covers whole pages; returns the length in
/// bytes of the range.
pub fn check_range(addr: GuestAddress, tags: usize) -> Result<u64> {
    let unaligned = Error::Unaligned { addr: addr.0, tags };
    if addr.0 % TAG_PAGE_SIZE != 0 || tags % TAGS_PER_PAGE != 0 {
        return Err(unaligned);
    }
    let len = (tags as u64)
        .checked_mul(GRANULE_SIZE)
        .ok_or(Error::OutOfRange {
            addr: addr.0,
            len: u64::MAX,
        })?;
    addr.0
        .checked_add(len)
        .ok_or(Error::OutOfRange { addr: addr.0, len })?;
    Ok(len)
}

/// Checks that every byte of `tags` is a 4-bit tag.
pub fn check_tag_values(tags: &[u8]) -> Result<()> {
    match tags.iter().position(|&t| t > MAX_TAG) {
        Some(index) => Err(Error::TagOutOfRange {
            index,
            value: tags.get(index).copied().unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

/// A store for memory without MTE: every tag reads as zero and only zero tags can be written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NoTags;

impl TagStore for NoTags {
    fn read_tags(&self, addr: GuestAddress, tags: &mut [u8]) -> Result<()> {
        check_range(addr, tags.len())?;
        tags.fill(0);
        Ok(())
    }

    fn write_tags(&mut self, addr: GuestAddress, tags: &[u8]) -> Result<()> {
        check_range(addr, tags.len())?;
        check_tag_values(tags)?;
        if tags.iter().any(|&t| t != 0) {
            return Err(Error::Untagged);
        }
        Ok(())
    }
}

impl<T: TagStore + ?Sized> TagStore for &mut T {
    fn read_tags(&self, addr: GuestAddress, tags: &mut [u8]) -> Result<()> {
        (**self).read_tags(addr, tags)
    }

    fn write_tags(&mut self, addr: GuestAddress, tags: &[u8]) -> Result<()> {
        (**self).write_tags(addr, tags)
    }
}

impl<T: TagStore + ?Sized> TagStore for Box<T> {
    fn read_tags(&self, addr: GuestAddress, tags: &mut [u8]) -> Result<()> {
        (**self).read_tags(addr, tags)
    }

    fn write_tags(&mut self, addr: GuestAddress, tags: &[u8]) -> Result<()> {
        (**self).write_tags(addr, tags)
    }
}

impl<T: TagStore + ?Sized> TagStore for Arc<Mutex<T>> {
    fn read_tags(&self, addr: GuestAddress, tags: &mut [u8]) -> Result<()> {
        // A poisoned lock still holds consistent tags: each call writes a whole buffer.
        let guard = self.lock().unwrap_or_else(|e| e.into_inner());
        guard.read_tags(addr, tags)
    }

    fn write_tags(&mut self, addr: GuestAddress, tags: &[u8]) -> Result<()> {
        let mut guard = self.lock().unwrap_or_else(|e| e.into_inner());
        guard.write_tags(addr, tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_range_refuses_unaligned_address() {
        let result = check_range(GuestAddress(0x1010), TAGS_PER_PAGE);

        assert!(matches!(result, Err(Error::Unaligned { addr: 0x1010, .. })));
    }

    #[test]
    fn check_range_refuses_partial_page() {
        let result = check_range(GuestAddress(0x1000), TAGS_PER_PAGE + 1);

        assert!(matches!(result, Err(Error::Unaligned { .. })));
    }

    #[test]
    fn check_range_refuses_wrapping_range() {
        let result = check_range(GuestAddress(u64::MAX - 0xfff), TAGS_PER_PAGE * 2);

        assert!(matches!(result, Err(Error::OutOfRange { .. })));
    }

    #[test]
    fn check_range_returns_length_in_bytes() {
        assert_eq!(
            check_range(GuestAddress(0x2000), TAGS_PER_PAGE * 3).unwrap(),
            3 * 4096
        );
    }

    #[test]
    fn check_tag_values_names_first_wide_byte() {
        let result = check_tag_values(&[1, 2, 0x10, 0x20]);

        assert!(matches!(
            result,
            Err(Error::TagOutOfRange {
                index: 2,
                value: 0x10
            })
        ));
    }

    #[test]
    fn no_tags_reads_zero_and_refuses_non_zero_writes() {
        let mut store = NoTags;
        let mut buf = vec![7u8; TAGS_PER_PAGE];

        store.read_tags(GuestAddress(0), &mut buf).unwrap();
        let zero_write = store.write_tags(GuestAddress(0), &vec![0; TAGS_PER_PAGE]);
        let tagged_write = store.write_tags(GuestAddress(0), &vec![3; TAGS_PER_PAGE]);

        assert!(buf.iter().all(|&t| t == 0));
        assert!(zero_write.is_ok());
        assert!(matches!(tagged_write, Err(Error::Untagged)));
    }

    #[test]
    fn shared_store_forwards_to_inner_store() {
        let mut shared: Arc<Mutex<Box<dyn TagStore + Send>>> =
            Arc::new(Mutex::new(Box::new(NoTags)));
        let mut buf = vec![1u8; TAGS_PER_PAGE];

        shared.read_tags(GuestAddress(0), &mut buf).unwrap();
        let write = shared.write_tags(GuestAddress(0), &vec![1; TAGS_PER_PAGE]);

        assert!(buf.iter().all(|&t| t == 0));
        assert!(matches!(write, Err(Error::Untagged)));
    }
}
