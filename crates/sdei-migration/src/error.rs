//! The one error type of this crate: every way a snapshot can fail to save, load or restore.

use sdei_dispatch::RestoreError;

use crate::mismatch::ConfigMismatch;

/// Why a snapshot could not be written, read or restored.
///
/// Each variant names one distinct failure, so that a VMM can tell a file that is not a
/// snapshot ([`BadMagic`](SnapshotError::BadMagic)) from one written by a newer VMM
/// ([`UnsupportedMajor`](SnapshotError::UnsupportedMajor)), a damaged one
/// ([`ChecksumMismatch`](SnapshotError::ChecksumMismatch)) or one taken on a different VM
/// ([`ConfigMismatch`](SnapshotError::ConfigMismatch)).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The input ends before the header, or before the payload the header announces.
    #[error("snapshot is truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes needed to read the header or the whole snapshot.
        needed: u64,
        /// Bytes the input holds.
        available: u64,
    },
    /// The first eight bytes are not [`MAGIC`](crate::MAGIC).
    #[error("input is not an SDEI snapshot (magic bytes {found:02x?})")]
    BadMagic {
        /// The eight bytes found.
        found: [u8; 8],
    },
    /// The header's own checksum does not match its bytes.
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksumMismatch {
        /// CRC32 stored in the header.
        stored: u32,
        /// CRC32 of the header bytes as read.
        computed: u32,
    },
    /// A format major version this reader does not read (newer, or 0).
    #[error(
        "snapshot format major version {found} is not supported (this reader reads {supported})"
    )]
    UnsupportedMajor {
        /// Major version in the header.
        found: u16,
        /// The major version this reader reads.
        supported: u16,
    },
    /// A newer minor version whose header does not say it only adds optional data.
    #[error(
        "snapshot format {major}.{found} adds required data this reader ({major}.{supported}) \
         does not know"
    )]
    UnsupportedMinor {
        /// Major version in the header.
        major: u16,
        /// Minor version in the header.
        found: u16,
        /// The newest minor version this reader knows.
        supported: u16,
    },
    /// Header flags with bits the snapshot's own format version does not define.
    #[error("header flags {0:#x} hold bits undefined in this format version")]
    UnknownFlags(u32),
    /// The header announces a payload larger than [`MAX_PAYLOAD_LEN`](crate::MAX_PAYLOAD_LEN);
    /// nothing was allocated for it.
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Payload length in the header.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The payload's CRC32 does not match the header.
    #[error("payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// CRC32 stored in the header.
        stored: u32,
        /// CRC32 of the payload as read.
        computed: u32,
    },
    /// Bytes follow the payload the header announces.
    #[error("{0} unexpected bytes follow the payload")]
    TrailingBytes(u64),
    /// The payload passed its checksum but is not a valid encoding of the format.
    #[error("payload does not decode")]
    Decode(#[source] postcard::Error),
    /// An optional section whose tag this reader should know, but does not.
    #[error("payload holds an optional section with unknown tag {0:#06x}")]
    UnknownSection(u16),
    /// A decoded field holds a value no writer produces.
    #[error("payload field {0} holds an impossible value")]
    Malformed(&'static str),
    /// The snapshot was taken on a VM configured differently from the one restoring it.
    #[error("snapshot does not fit this VM: {0}")]
    ConfigMismatch(ConfigMismatch),
    /// The dispatcher refused the decoded state: the state machine could never reach it.
    #[error("snapshot holds a dispatcher state that cannot be restored")]
    Invalid(#[source] RestoreError),
    /// Encoding the payload failed.
    #[error("payload does not encode")]
    Encode(#[source] postcard::Error),
    /// Reading or writing a stream failed.
    #[error("snapshot I/O failed")]
    Io(#[source] std::io::Error),
}

/// Shorthand for results of this crate.
pub type Result<T> = core::result::Result<T, SnapshotError>;
