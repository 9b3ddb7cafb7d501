//! The SDEI snapshot's header: the workspace's one snapshot-header policy (`header/policy.rs`,
//! the same code as mte-memory's; specified in `docs/snapshot-format.md`) with this format's
//! magic, version and payload cap in [`FORMAT`].
//!
//! The policy's types are public here so that a VMM holding this crate can give its own
//! snapshot files the same header and rules (refvmm does, for its manifest and its vCPU, GIC
//! and console state files).

mod policy;

pub use policy::{HeaderError, SnapshotFormat, SnapshotHeader, FLAG_OPTIONAL_ONLY, HEADER_LEN};

/// The first eight bytes of every SDEI snapshot.
pub const MAGIC: [u8; 8] = *b"SDEISNAP";
/// The format major version this crate writes and reads.
pub const FORMAT_MAJOR: u16 = 1;
/// The newest format minor version this crate writes and reads.
pub const FORMAT_MINOR: u16 = 0;
/// Largest payload a reader accepts, checked before anything is allocated for it.
///
/// 16 MiB: the largest state the dispatcher allows (1024 vCPUs, 256 declared private events,
/// 256 bind slots of each kind, every register at its widest) encodes to about 14 MiB; the
/// `largest_configuration_fits_the_payload_cap` test computes it.
pub const MAX_PAYLOAD_LEN: u64 = 16 << 20;

/// The SDEI snapshot format: magic `SDEISNAP`, version 1.0, only [`FLAG_OPTIONAL_ONLY`]
/// defined, payloads up to [`MAX_PAYLOAD_LEN`].
pub const FORMAT: SnapshotFormat = SnapshotFormat {
    magic: MAGIC,
    major: FORMAT_MAJOR,
    minor: FORMAT_MINOR,
    flags: FLAG_OPTIONAL_ONLY,
    max_payload_len: MAX_PAYLOAD_LEN,
};
