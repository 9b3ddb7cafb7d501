//! The one error type of this crate: every way a snapshot can fail to save, load or restore.

use sdei_dispatch::RestoreError;

use crate::header::HeaderError;
use crate::mismatch::ConfigMismatch;

/// Why a snapshot could not be written, read or restored.
///
/// Each variant names one distinct failure, so that a VMM can tell a file that is not a
/// snapshot ([`HeaderError::BadMagic`]) from one written by a newer VMM
/// ([`HeaderError::UnsupportedMajor`]), a damaged one
/// ([`HeaderError::PayloadChecksumMismatch`]) or one taken on a different VM
/// ([`ConfigMismatch`](SnapshotError::ConfigMismatch)).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Refused by the snapshot-header policy: truncated, not an SDEI snapshot, a damaged
    /// header, an unsupported version, undefined flags, oversized, a damaged payload, or bytes
    /// after it.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The payload passed its checksum but is not a valid encoding of the format.
    #[error("Payload does not decode")]
    Decode(#[source] postcard::Error),
    /// An optional section whose tag this reader should know, but does not.
    #[error("Payload holds an optional section with unknown tag {0:#06x}")]
    UnknownSection(u16),
    /// A decoded field holds a value no writer produces.
    #[error("Payload field {0} holds an impossible value")]
    Malformed(&'static str),
    /// The snapshot was taken on a VM configured differently from the one restoring it.
    #[error("Snapshot does not fit this VM: {0}")]
    ConfigMismatch(ConfigMismatch),
    /// The dispatcher refused the decoded state: the state machine could never reach it.
    #[error("Snapshot holds a dispatcher state that cannot be restored")]
    Invalid(#[source] RestoreError),
    /// Encoding the payload failed.
    #[error("Payload does not encode")]
    Encode(#[source] postcard::Error),
    /// Reading or writing a stream failed.
    #[error("Snapshot I/O failed")]
    Io(#[source] std::io::Error),
}

/// Shorthand for results of this crate.
pub type Result<T> = core::result::Result<T, SnapshotError>;
