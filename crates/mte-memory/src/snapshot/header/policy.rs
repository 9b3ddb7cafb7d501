//! The snapshot-header policy of the arm64-vmm workspace, as code: the fixed 32-byte header
//! every snapshot format starts with, the order of its checks, and the checks of a payload
//! against it. The specification is `docs/snapshot-format.md` in the workspace.
//!
//! This file is kept identical in `sdei-migration` (`src/header/policy.rs`) and `mte-memory`
//! (`src/snapshot/header/policy.rs`): each of those crates must stay usable alone, so neither
//! can take it from the other. refvmm's tests fail when the two copies differ, and both crates
//! run the same test vectors (`tests/header_vectors/mod.rs`) against their formats. Change both
//! copies together.
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 8    | magic: which format                                |
//! | 8      | 2    | format major version (all integers little-endian)  |
//! | 10     | 2    | format minor version                               |
//! | 12     | 4    | flags: bit 0 [`FLAG_OPTIONAL_ONLY`]                |
//! | 16     | 8    | payload length in bytes                            |
//! | 24     | 4    | CRC-32 (IEEE) of the payload                       |
//! | 28     | 4    | CRC-32 (IEEE) of header bytes 0–27                 |

/// Size of the header.
pub const HEADER_LEN: usize = 32;
/// Header flag: everything this snapshot's minor version adds over the minors before it is
/// optional, and comes after all they define, so a reader of an older minor may skip it. A
/// reader accepts a newer minor only with this flag.
pub const FLAG_OPTIONAL_ONLY: u32 = 1 << 0;

const MAJOR_AT: usize = 8;
const MINOR_AT: usize = 10;
const FLAGS_AT: usize = 12;
const LEN_AT: usize = 16;
const PAYLOAD_CRC_AT: usize = 24;
const HEADER_CRC_AT: usize = 28;

/// What one snapshot format fixes: its magic, the version this code writes and reads, the
/// flags those versions define, and the largest payload a reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotFormat {
    /// The first eight bytes of every file of the format.
    pub magic: [u8; 8],
    /// The format major version this code writes and reads; no other major is read.
    pub major: u16,
    /// The newest minor version this code knows; it writes this one and reads every older one.
    pub minor: u16,
    /// The flags defined by the minors this code knows ([`FLAG_OPTIONAL_ONLY`] included).
    pub flags: u32,
    /// Largest payload a reader accepts, checked before anything is allocated for it.
    pub max_payload_len: u64,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The magic.
    pub magic: [u8; 8],
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Flags.
    pub flags: u32,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// CRC-32 of the payload.
    pub payload_crc: u32,
}

/// Why a file was refused by the header policy: its header, or its payload's length and
/// checksum against the header. (What the payload holds is each format's own business.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The input ends before the header, or before the payload the header announces.
    #[error("Snapshot is truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes needed: the header's, or the header's and the payload's.
        needed: u64,
        /// Bytes the input holds.
        available: u64,
    },
    /// The first eight bytes are not the format's magic: this is not a file of the format.
    #[error(
        "Input has bad magic \"{}\" (expected \"{}\")",
        .found.escape_ascii(),
        .expected.escape_ascii()
    )]
    BadMagic {
        /// The format's magic.
        expected: [u8; 8],
        /// The eight bytes found.
        found: [u8; 8],
    },
    /// The header's own checksum does not match its bytes.
    #[error("Snapshot header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksumMismatch {
        /// CRC-32 stored in the header.
        stored: u32,
        /// CRC-32 of the header bytes as read.
        computed: u32,
    },
    /// A format major version this reader does not read (newer, older, or 0).
    #[error(
        "Snapshot format major version {found} is not supported (this reader reads {supported})"
    )]
    UnsupportedMajor {
        /// Major version in the header.
        found: u16,
        /// The major version this reader reads.
        supported: u16,
    },
    /// A newer minor version whose header does not say it only adds optional data.
    #[error(
        "Snapshot format {major}.{found} adds required data this reader ({major}.{supported}) \
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
    /// Header flags with bits that no minor this reader knows defines (the bits are given).
    #[error("Snapshot header flags {0:#x} are undefined in this format version")]
    UnknownFlags(u32),
    /// The header announces a payload larger than the format allows; nothing was allocated
    /// for it (or, when writing, nothing was written).
    #[error("Snapshot payload of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Payload length in the header.
        len: u64,
        /// The format's limit.
        max: u64,
    },
    /// The payload's CRC-32 does not match the header.
    #[error(
        "Snapshot payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
    )]
    PayloadChecksumMismatch {
        /// CRC-32 stored in the header.
        stored: u32,
        /// CRC-32 of the payload as read.
        computed: u32,
    },
    /// Bytes follow the payload the header announces.
    #[error("{0} unexpected bytes follow the snapshot payload")]
    TrailingBytes(u64),
}

fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    array_at(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    array_at(bytes, at).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    array_at(bytes, at).map(u64::from_le_bytes)
}

impl SnapshotFormat {
    /// The header this code writes for `payload`: the newest version, no flags.
    pub fn header_for(&self, payload: &[u8]) -> SnapshotHeader {
        SnapshotHeader {
            magic: self.magic,
            major: self.major,
            minor: self.minor,
            flags: 0,
            payload_len: payload.len() as u64,
            payload_crc: crc32fast::hash(payload),
        }
    }

    /// The whole file for `payload`: header, then payload. A payload over the format's limit is
    /// refused ([`HeaderError::Oversized`]): no reader would accept the file.
    pub fn seal(&self, payload: &[u8]) -> Result<Vec<u8>, HeaderError> {
        if payload.len() as u64 > self.max_payload_len {
            return Err(HeaderError::Oversized {
                len: payload.len() as u64,
                max: self.max_payload_len,
            });
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&self.header_for(payload).to_bytes());
        out.extend_from_slice(payload);
        Ok(out)
    }

    /// Reads and checks the header at the start of `bytes`, which may hold only the header.
    ///
    /// In order: the magic ([`BadMagic`](HeaderError::BadMagic)), the major version
    /// ([`UnsupportedMajor`](HeaderError::UnsupportedMajor)), the header checksum
    /// ([`HeaderChecksumMismatch`](HeaderError::HeaderChecksumMismatch)), the minor version
    /// and flags ([`UnsupportedMinor`](HeaderError::UnsupportedMinor),
    /// [`UnknownFlags`](HeaderError::UnknownFlags)) and the payload length
    /// ([`Oversized`](HeaderError::Oversized)); input too short for the field being read is
    /// [`Truncated`](HeaderError::Truncated). Magic and major come before the checksum because
    /// they keep their offsets in every major version, while the rest of a newer major's header
    /// may be laid out differently: a file of another format or another major is reported as
    /// such, not as damage. Nothing else is trusted before the checksum has passed. The payload
    /// is neither read nor checked.
    pub fn parse(&self, bytes: &[u8]) -> Result<SnapshotHeader, HeaderError> {
        let truncated = || HeaderError::Truncated {
            needed: HEADER_LEN as u64,
            available: bytes.len() as u64,
        };
        let magic: [u8; 8] = array_at(bytes, 0).ok_or_else(truncated)?;
        if magic != self.magic {
            return Err(HeaderError::BadMagic {
                expected: self.magic,
                found: magic,
            });
        }
        let major = u16_at(bytes, MAJOR_AT).ok_or_else(truncated)?;
        if major != self.major {
            return Err(HeaderError::UnsupportedMajor {
                found: major,
                supported: self.major,
            });
        }
        let head = bytes.get(..HEADER_LEN).ok_or_else(truncated)?;
        let (Some(minor), Some(flags), Some(payload_len), Some(payload_crc), Some(stored)) = (
            u16_at(head, MINOR_AT),
            u32_at(head, FLAGS_AT),
            u64_at(head, LEN_AT),
            u32_at(head, PAYLOAD_CRC_AT),
            u32_at(head, HEADER_CRC_AT),
        ) else {
            return Err(truncated());
        };
        let computed = crc32fast::hash(head.get(..HEADER_CRC_AT).unwrap_or_default());
        if stored != computed {
            return Err(HeaderError::HeaderChecksumMismatch { stored, computed });
        }
        if minor > self.minor {
            if flags & FLAG_OPTIONAL_ONLY == 0 {
                return Err(HeaderError::UnsupportedMinor {
                    major,
                    found: minor,
                    supported: self.minor,
                });
            }
            // The other flags belong to the newer minor: like everything it adds, they
            // describe optional data, which this reader skips.
        } else if flags & !self.flags != 0 {
            return Err(HeaderError::UnknownFlags(flags & !self.flags));
        }
        if payload_len > self.max_payload_len {
            return Err(HeaderError::Oversized {
                len: payload_len,
                max: self.max_payload_len,
            });
        }
        Ok(SnapshotHeader {
            magic,
            major,
            minor,
            flags,
            payload_len,
            payload_crc,
        })
    }

    /// Checks a whole file, `bytes`: the header ([`parse`](Self::parse)), then exactly the
    /// payload it announces ([`SnapshotHeader::check_payload`]). Returns the header and the
    /// payload, which the format's own decoder may now read.
    pub fn open<'a>(&self, bytes: &'a [u8]) -> Result<(SnapshotHeader, &'a [u8]), HeaderError> {
        let header = self.parse(bytes)?;
        let payload = bytes.get(HEADER_LEN..).unwrap_or_default();
        header.check_payload(payload)?;
        Ok((header, payload))
    }

    /// Whether `header` is of a newer minor version than this code knows (and, having passed
    /// [`parse`](Self::parse), says that everything new is optional): its decoder then skips
    /// whatever follows the data it knows.
    pub fn is_newer(&self, header: &SnapshotHeader) -> bool {
        header.minor > self.minor
    }
}

impl SnapshotHeader {
    /// Encodes the header, computing its own checksum.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let fields: [(usize, &[u8]); 6] = [
            (0, &self.magic),
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

    /// Checks `payload` (everything after the header) against the header: exactly the
    /// announced length ([`Truncated`](HeaderError::Truncated) counting the header's bytes
    /// too, or [`TrailingBytes`](HeaderError::TrailingBytes)), then the CRC-32
    /// ([`PayloadChecksumMismatch`](HeaderError::PayloadChecksumMismatch)).
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), HeaderError> {
        let available = payload.len() as u64;
        if available < self.payload_len {
            return Err(HeaderError::Truncated {
                needed: self.payload_len.saturating_add(HEADER_LEN as u64),
                available: available.saturating_add(HEADER_LEN as u64),
            });
        }
        if available > self.payload_len {
            return Err(HeaderError::TrailingBytes(available - self.payload_len));
        }
        let computed = crc32fast::hash(payload);
        if computed != self.payload_crc {
            return Err(HeaderError::PayloadChecksumMismatch {
                stored: self.payload_crc,
                computed,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: SnapshotFormat = SnapshotFormat {
        magic: *b"TESTSNAP",
        major: 3,
        minor: 2,
        flags: FLAG_OPTIONAL_ONLY | 1 << 1,
        max_payload_len: 64,
    };

    fn header(minor: u16, flags: u32, payload_len: u64) -> SnapshotHeader {
        SnapshotHeader {
            minor,
            flags,
            payload_len,
            payload_crc: 0x1234_5678,
            ..TEST.header_for(&[])
        }
    }

    #[test]
    fn header_round_trips_through_bytes() {
        let original = header(1, FLAG_OPTIONAL_ONLY, 17);

        assert_eq!(TEST.parse(&original.to_bytes()), Ok(original));
    }

    #[test]
    fn header_fields_sit_at_documented_offsets() {
        let bytes = header(0x0102, 0x0a0b_0c0d, 0x0102_0304).to_bytes();

        assert_eq!(&bytes[..8], b"TESTSNAP");
        assert_eq!(bytes[8..10], [3, 0]);
        assert_eq!(bytes[10..12], [2, 1]);
        assert_eq!(bytes[12..16], [0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(bytes[16..24], [4, 3, 2, 1, 0, 0, 0, 0]);
        assert_eq!(bytes[24..28], 0x1234_5678u32.to_le_bytes());
        assert_eq!(bytes[28..32], crc32fast::hash(&bytes[..28]).to_le_bytes());
    }

    #[test]
    fn sealed_file_opens_to_its_payload() {
        let file = TEST.seal(b"payload").unwrap();

        let (header, payload) = TEST.open(&file).unwrap();

        assert_eq!(payload, b"payload");
        assert_eq!((header.major, header.minor, header.flags), (3, 2, 0));
        assert!(!TEST.is_newer(&header));
    }

    #[test]
    fn short_input_is_truncated() {
        let bytes = header(0, 0, 0).to_bytes();

        for len in [0, 7, 8, 9, 10, 12, 31] {
            assert_eq!(
                TEST.parse(&bytes[..len]),
                Err(HeaderError::Truncated {
                    needed: 32,
                    available: len as u64
                }),
                "{len}"
            );
        }
    }

    #[test]
    fn magic_is_checked_before_anything_else() {
        let mut bytes = header(0, 0, 0).to_bytes();
        bytes[0] = b'X';

        let err = TEST.parse(&bytes[..8]).unwrap_err();

        assert_eq!(
            err,
            HeaderError::BadMagic {
                expected: *b"TESTSNAP",
                found: *b"XESTSNAP"
            }
        );
        assert!(err.to_string().contains("bad magic \"XESTSNAP\""), "{err}");
    }

    #[test]
    fn another_major_is_refused_before_the_checksum_and_whatever_its_layout() {
        let mut bytes = header(0, 0, 0).to_bytes();
        bytes[8] = 4; // Not resealed: a major-4 header may be shaped differently.

        for major in [&bytes[..10], &bytes[..]] {
            assert_eq!(
                TEST.parse(major),
                Err(HeaderError::UnsupportedMajor {
                    found: 4,
                    supported: 3
                })
            );
        }
        let mut older = header(0, 0, 0);
        older.major = 2;
        assert!(matches!(
            TEST.parse(&older.to_bytes()),
            Err(HeaderError::UnsupportedMajor { found: 2, .. })
        ));
    }

    #[test]
    fn any_damage_after_the_major_fails_the_header_checksum() {
        let good = header(1, 0, 10).to_bytes();

        for at in 10..HEADER_LEN {
            let mut bytes = good;
            bytes[at] ^= 0x40;
            assert!(
                matches!(
                    TEST.parse(&bytes),
                    Err(HeaderError::HeaderChecksumMismatch { .. })
                ),
                "byte {at}"
            );
        }
    }

    #[test]
    fn newer_minor_needs_the_optional_only_flag() {
        let refused = TEST.parse(&header(3, 0, 0).to_bytes());
        let accepted = TEST.parse(&header(3, FLAG_OPTIONAL_ONLY | 1 << 9, 0).to_bytes());

        assert_eq!(
            refused,
            Err(HeaderError::UnsupportedMinor {
                major: 3,
                found: 3,
                supported: 2
            })
        );
        assert!(TEST.is_newer(&accepted.unwrap()));
    }

    #[test]
    fn flags_undefined_in_a_known_minor_are_refused() {
        for minor in [0, 2] {
            assert_eq!(
                TEST.parse(&header(minor, 0b1110_0011, 0).to_bytes()),
                Err(HeaderError::UnknownFlags(0b1110_0000))
            );
        }
        assert!(TEST.parse(&header(2, 0b11, 0).to_bytes()).is_ok());
    }

    #[test]
    fn payload_length_over_the_cap_is_refused() {
        assert!(TEST.parse(&header(0, 0, 64).to_bytes()).is_ok());
        for len in [65, u64::MAX] {
            assert_eq!(
                TEST.parse(&header(0, 0, len).to_bytes()),
                Err(HeaderError::Oversized { len, max: 64 })
            );
        }
        assert_eq!(
            TEST.seal(&[0; 65]),
            Err(HeaderError::Oversized { len: 65, max: 64 })
        );
    }

    #[test]
    fn payload_is_checked_for_length_then_checksum() {
        let file = TEST.seal(b"payload").unwrap();
        let mut longer = file.clone();
        longer.push(0);
        let mut flipped = file.clone();
        flipped[HEADER_LEN] ^= 1;

        assert_eq!(
            TEST.open(&file[..file.len() - 2]),
            Err(HeaderError::Truncated {
                needed: 39,
                available: 37
            })
        );
        assert_eq!(TEST.open(&longer), Err(HeaderError::TrailingBytes(1)));
        assert!(matches!(
            TEST.open(&flipped),
            Err(HeaderError::PayloadChecksumMismatch { .. })
        ));
    }
}
