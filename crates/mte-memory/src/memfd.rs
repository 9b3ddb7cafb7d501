//! memfd creation and sealing, for guest memory and for anything else a VMM backs with a
//! memfd (a virtio-pmem region, say).
//!
//! A memfd made here is close-on-exec and allows sealing. [`create_sized`] is the usual
//! entry point: it creates the memfd, sizes it and adds [`FIXED_SIZE`], so that a process that
//! receives the fd and maps it can never be made to fault (`SIGBUS`) by a truncation, and
//! nobody can change the seals afterwards.
//!
//! ```
//! use mte_memory::memfd;
//!
//! let file = memfd::create_sized("example", 2 << 20, false).unwrap();
//! assert_eq!(file.metadata().unwrap().len(), 2 << 20);
//! assert!(file.set_len(4096).is_err(), "sealed against shrinking");
//! assert_eq!(memfd::seals(&file).unwrap() & memfd::FIXED_SIZE, memfd::FIXED_SIZE);
//! ```

use std::ffi::CString;
use std::fs::File;
use std::io;

use crate::sys;

/// Seals that fix a memfd's size and freeze its set of seals:
/// `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`.
pub const FIXED_SIZE: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Errors creating, sizing or sealing a memfd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name contains a NUL byte.
    #[error("memfd name {0:?} contains a NUL byte")]
    Name(String),
    /// `memfd_create` failed.
    #[error("Cannot create memfd {name:?}")]
    Create {
        /// The name asked for.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Setting the size failed.
    #[error("Cannot size memfd to {size} bytes")]
    Size {
        /// The size asked for.
        size: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `F_ADD_SEALS` or `F_GET_SEALS` failed.
    #[error("Cannot seal memfd or read its seals")]
    Seal(#[source] io::Error),
}

/// Result type of the memfd helpers.
pub type Result<T> = std::result::Result<T, Error>;

/// Creates an empty memfd named `name` (shown as `memfd:<name>` in `/proc/<pid>/maps` and
/// `fd/`), close-on-exec and sealable; backed by huge pages (`MFD_HUGETLB`) with `hugetlb`.
pub fn create(name: &str, hugetlb: bool) -> Result<File> {
    let cname = CString::new(name).map_err(|_| Error::Name(name.to_string()))?;
    sys::memfd_create(&cname, hugetlb).map_err(|source| Error::Create {
        name: name.to_string(),
        source,
    })
}

/// Adds `seals` (`libc::F_SEAL_*`, e.g. [`FIXED_SIZE`]) to a memfd.
pub fn add_seals(file: &File, seals: libc::c_int) -> Result<()> {
    sys::add_seals(file, seals).map_err(Error::Seal)
}

/// The seals (`libc::F_SEAL_*`) a memfd has.
pub fn seals(file: &File) -> Result<libc::c_int> {
    sys::get_seals(file).map_err(Error::Seal)
}

/// Creates a memfd of `size` bytes (zero-filled) and seals it with [`FIXED_SIZE`].
pub fn create_sized(name: &str, size: u64, hugetlb: bool) -> Result<File> {
    let file = create(name, hugetlb)?;
    file.set_len(size)
        .map_err(|source| Error::Size { size, source })?;
    add_seals(&file, FIXED_SIZE)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackingKind;

    #[test]
    fn sized_memfd_has_the_size_and_cannot_change_it_or_its_seals() {
        let file = create_sized("mte-memory-test", 0x4000, false).unwrap();

        let shrink = file.set_len(0x1000);
        let grow = file.set_len(0x8000);
        let more_seals = add_seals(&file, libc::F_SEAL_WRITE);

        assert!(shrink.is_err());
        assert!(grow.is_err());
        assert!(matches!(more_seals, Err(Error::Seal(_))), "{more_seals:?}");
        assert_eq!(seals(&file).unwrap(), FIXED_SIZE);
        assert_eq!(file.metadata().unwrap().len(), 0x4000);
        assert_eq!(BackingKind::of_file(&file).unwrap(), BackingKind::Shmem);
    }

    #[test]
    fn unsealed_memfd_can_be_resized_until_sealed() {
        let file = create("mte-memory-test", false).unwrap();
        assert_eq!(seals(&file).unwrap(), 0);

        file.set_len(0x2000).unwrap();
        add_seals(&file, libc::F_SEAL_GROW).unwrap();

        assert!(file.set_len(0x1000).is_ok(), "shrinking is still allowed");
        assert!(file.set_len(0x4000).is_err());
        assert_eq!(seals(&file).unwrap(), libc::F_SEAL_GROW);
    }

    #[test]
    fn name_with_nul_is_refused() {
        let e = create("a\0b", false).unwrap_err();

        assert!(matches!(e, Error::Name(_)), "{e}");
        assert!(e.to_string().contains("NUL"), "{e}");
    }
}
