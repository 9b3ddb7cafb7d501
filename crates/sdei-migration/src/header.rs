//! The fixed 32-byte header, readable without decoding (or even reading) the payload.
//!
//! | offset | size | field                                          |
//! |--------|------|------------------------------------------------|
//! | 0      | 8    | magic, `b"SDEISNAP"`                            |
//! | 8      | 2    | format major version (little-endian)           |
//! | 10     | 2    | format minor version                           |
//! | 12     | 4    | flags                                          |
//! | 16     | 8    | payload length in bytes                        |
//! | 24     | 4    | CRC32 (IEEE) of the payload                    |
//! | 28     | 4    | CRC32 (IEEE) of header bytes 0–27              |
//!
//! Magic, major and minor sit at the same offsets in every major version: a reader checks
//! them first, so a snapshot from a newer major whose header grew is reported as
//! [`UnsupportedMajor`](SnapshotError::UnsupportedMajor), not as a checksum mismatch.

use crate::error::{Result, SnapshotError};

/// The first eight bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"SDEISNAP";
/// Size of the header of format major version 1.
pub const HEADER_LEN: usize = 32;
/// The format major version this crate writes and reads.
pub const FORMAT_MAJOR: u16 = 1;
/// The newest format minor version this crate writes and reads.
pub const FORMAT_MINOR: u16 = 0;
/// Header flag: everything this snapshot's minor version adds over minor 0 of its major is in
/// optional sections, which a reader may skip. A reader accepts a newer minor only with it.
pub const FLAG_OPTIONAL_ONLY: u32 = 1 << 0;
/// Flags defined by every minor version this reader knows.
const KNOWN_FLAGS: u32 = FLAG_OPTIONAL_ONLY;
/// Largest payload a reader accepts, checked before anything is allocated for it.
///
/// 16 MiB: the largest state the dispatcher allows (1024 vCPUs, 256 declared private events,
/// 256 bind slots of each kind, every register at its widest) encodes to about 14 MiB; the
/// `largest_configuration_fits_the_payload_cap` test computes it.
pub const MAX_PAYLOAD_LEN: u64 = 16 << 20;

const MAJOR_AT: usize = 8;
const MINOR_AT: usize = 10;
const FLAGS_AT: usize = 12;
const LEN_AT: usize = 16;
const PAYLOAD_CRC_AT: usize = 24;
const HEADER_CRC_AT: usize = 28;

/// The decoded header of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Flags ([`FLAG_OPTIONAL_ONLY`]).
    pub flags: u32,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// CRC32 of the payload.
    pub payload_crc: u32,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let raw = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(raw.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let raw = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

fn truncated(needed: usize, available: usize) -> SnapshotError {
    SnapshotError::Truncated {
        needed: needed as u64,
        available: available as u64,
    }
}

impl SnapshotHeader {
    /// The header this crate writes for a payload.
    pub fn for_payload(payload: &[u8]) -> SnapshotHeader {
        SnapshotHeader {
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR,
            flags: 0,
            payload_len: payload.len() as u64,
            payload_crc: crc32fast::hash(payload),
        }
    }

    /// Encodes the header, computing its own checksum.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let fields: [(usize, &[u8]); 6] = [
            (0, &MAGIC),
            (MAJOR_AT, &self.major.to_le_bytes()),
            (MINOR_AT, &self.minor.to_le_bytes()),
            (FLAGS_AT, &self.flags.to_le_bytes()),
            (LEN_AT, &self.payload_len.to_le_bytes()),
            (PAYLOAD_CRC_AT, &self.payload_crc.to_le_bytes()),
        ];
        for (at, bytes) in fields {
            if let Some(slot) = out.get_mut(at..at + bytes.len()) {
                slot.copy_from_slice(bytes);
            }
        }
        let crc = crc32fast::hash(out.get(..HEADER_CRC_AT).unwrap_or_default());
        if let Some(slot) = out.get_mut(HEADER_CRC_AT..) {
            slot.copy_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// Reads and checks the header at the start of `bytes` (which may hold only the header).
    ///
    /// Checks, in order: the magic, the major version, the header checksum, the minor version
    /// and flags against the versioning policy, and the payload length against
    /// [`MAX_PAYLOAD_LEN`]. The payload itself is neither read nor checked.
    pub fn parse(bytes: &[u8]) -> Result<SnapshotHeader> {
        let magic = bytes
            .get(..MAGIC.len())
            .ok_or_else(|| truncated(HEADER_LEN, bytes.len()))?;
        if magic != MAGIC {
            let mut found = [0u8; 8];
            found.copy_from_slice(magic);
            return Err(SnapshotError::BadMagic { found });
        }
        let major = u16_at(bytes, MAJOR_AT).ok_or_else(|| truncated(HEADER_LEN, bytes.len()))?;
        if major != FORMAT_MAJOR {
            return Err(SnapshotError::UnsupportedMajor {
                found: major,
                supported: FORMAT_MAJOR,
            });
        }
        let (Some(minor), Some(flags), Some(payload_len), Some(payload_crc), Some(stored)) = (
            u16_at(bytes, MINOR_AT),
            u32_at(bytes, FLAGS_AT),
            u64_at(bytes, LEN_AT),
            u32_at(bytes, PAYLOAD_CRC_AT),
            u32_at(bytes, HEADER_CRC_AT),
        ) else {
            return Err(truncated(HEADER_LEN, bytes.len()));
        };
        let computed = crc32fast::hash(bytes.get(..HEADER_CRC_AT).unwrap_or_default());
        if stored != computed {
            return Err(SnapshotError::HeaderChecksumMismatch { stored, computed });
        }
        if minor > FORMAT_MINOR {
            if flags & FLAG_OPTIONAL_ONLY == 0 {
                return Err(SnapshotError::UnsupportedMinor {
                    major,
                    found: minor,
                    supported: FORMAT_MINOR,
                });
            }
            // Other flags belong to the newer minor: they describe data this reader skips.
        } else if flags & !KNOWN_FLAGS != 0 {
            return Err(SnapshotError::UnknownFlags(flags));
        }
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(SnapshotError::Oversized {
                len: payload_len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        Ok(SnapshotHeader {
            major,
            minor,
            flags,
            payload_len,
            payload_crc,
        })
    }

    /// Whether this snapshot comes from a newer minor version than this reader knows.
    pub fn is_newer_minor(&self) -> bool {
        self.minor > FORMAT_MINOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(minor: u16, flags: u32, payload_len: u64) -> SnapshotHeader {
        SnapshotHeader {
            major: FORMAT_MAJOR,
            minor,
            flags,
            payload_len,
            payload_crc: 0x1234_5678,
        }
    }

    #[test]
    fn header_round_trips_through_bytes() {
        let original = header(0, FLAG_OPTIONAL_ONLY, 77);

        let parsed = SnapshotHeader::parse(&original.to_bytes()).unwrap();

        assert_eq!(parsed, original);
    }

    #[test]
    fn header_fields_sit_at_documented_offsets() {
        let bytes = header(3, FLAG_OPTIONAL_ONLY, 0x0102_0304).to_bytes();

        assert_eq!(&bytes[..8], b"SDEISNAP");
        assert_eq!(bytes[8..10], [1, 0]);
        assert_eq!(bytes[10..12], [3, 0]);
        assert_eq!(bytes[12..16], [1, 0, 0, 0]);
        assert_eq!(bytes[16..24], [4, 3, 2, 1, 0, 0, 0, 0]);
        assert_eq!(bytes[24..28], 0x1234_5678u32.to_le_bytes());
        assert_eq!(bytes[28..32], crc32fast::hash(&bytes[..28]).to_le_bytes());
    }

    #[test]
    fn short_input_is_truncated() {
        let bytes = header(0, 0, 0).to_bytes();

        for len in [0, 7, 8, 11, 12, 31] {
            let err = SnapshotHeader::parse(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, SnapshotError::Truncated { needed: 32, available } if available == len as u64),
                "{len}: {err:?}"
            );
        }
    }

    #[test]
    fn wrong_magic_is_refused_before_anything_else() {
        let mut bytes = header(0, 0, 0).to_bytes();
        bytes[0] = b'X';

        let err = SnapshotHeader::parse(&bytes[..9]).unwrap_err();

        assert!(matches!(err, SnapshotError::BadMagic { found } if &found == b"XDEISNAP"));
    }

    #[test]
    fn newer_major_is_refused_even_with_a_different_header_layout() {
        let mut bytes = header(0, 0, 0).to_bytes().to_vec();
        bytes[8] = 2;
        bytes.truncate(12); // A v2 header may be shaped differently: nothing past the major.

        let err = SnapshotHeader::parse(&bytes).unwrap_err();

        assert!(matches!(
            err,
            SnapshotError::UnsupportedMajor {
                found: 2,
                supported: 1
            }
        ));
    }

    #[test]
    fn major_zero_is_refused() {
        let mut h = header(0, 0, 0);
        h.major = 0;

        let err = SnapshotHeader::parse(&h.to_bytes()).unwrap_err();

        assert!(matches!(
            err,
            SnapshotError::UnsupportedMajor { found: 0, .. }
        ));
    }

    #[test]
    fn corrupted_header_fails_its_checksum() {
        let mut bytes = header(0, 0, 10).to_bytes();
        bytes[17] ^= 0x40;

        let err = SnapshotHeader::parse(&bytes).unwrap_err();

        assert!(matches!(err, SnapshotError::HeaderChecksumMismatch { .. }));
    }

    #[test]
    fn newer_minor_needs_the_optional_only_flag() {
        let refused = SnapshotHeader::parse(&header(FORMAT_MINOR + 1, 0, 0).to_bytes());
        let accepted = SnapshotHeader::parse(
            &header(FORMAT_MINOR + 1, FLAG_OPTIONAL_ONLY | 1 << 9, 0).to_bytes(),
        );

        assert!(matches!(
            refused,
            Err(SnapshotError::UnsupportedMinor {
                major: 1,
                found: 1,
                supported: 0
            })
        ));
        assert!(accepted.unwrap().is_newer_minor());
    }

    #[test]
    fn undefined_flags_of_a_known_minor_are_refused() {
        let err = SnapshotHeader::parse(&header(FORMAT_MINOR, 1 << 5, 0).to_bytes()).unwrap_err();

        assert!(matches!(err, SnapshotError::UnknownFlags(0x20)));
    }

    #[test]
    fn payload_length_over_the_cap_is_refused() {
        let at_cap = SnapshotHeader::parse(&header(0, 0, MAX_PAYLOAD_LEN).to_bytes());
        let over = SnapshotHeader::parse(&header(0, 0, MAX_PAYLOAD_LEN + 1).to_bytes());

        assert!(at_cap.is_ok());
        assert!(matches!(
            over,
            Err(SnapshotError::Oversized { len, max: MAX_PAYLOAD_LEN }) if len == MAX_PAYLOAD_LEN + 1
        ));
    }
}
