//! The fixed header in front of every encoded tag snapshot.
//!
//! Layout (32 bytes, little-endian): magic `b"MTETAGS\0"`, format major `u16`, format minor
//! `u16`, reserved `u32` (zero), payload length `u64`, CRC-32 of the payload `u32`, reserved
//! `u32` (zero). The header can be read and checked without decoding the payload.

use super::{Error, Result};

/// The magic bytes opening an encoded tag snapshot.
pub const MAGIC: [u8; 8] = *b"MTETAGS\0";
/// The format major version this crate writes; a newer major is refused.
pub const FORMAT_MAJOR: u16 = 1;
/// The format minor version this crate writes; a newer minor is refused as well.
pub const FORMAT_MINOR: u16 = 0;
/// Encoded size of [`Header`].
pub const HEADER_LEN: usize = 32;
/// The largest payload accepted on load (enough for the tags of a 4 TiB guest).
pub const MAX_PAYLOAD_LEN: u64 = 1 << 37;

/// The readable header of an encoded snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Length in bytes of the payload that follows the header.
    pub payload_len: u64,
    /// CRC-32 (IEEE) of the payload.
    pub checksum: u32,
}

impl Header {
    /// A header of the current format for `payload`.
    pub fn for_payload(payload: &[u8]) -> Self {
        Self {
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR,
            payload_len: payload.len() as u64,
            checksum: crc32fast::hash(payload),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.major.to_le_bytes());
        out[10..12].copy_from_slice(&self.minor.to_le_bytes());
        out[16..24].copy_from_slice(&self.payload_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    /// Decodes and validates the header at the start of `bytes` (magic, version, reserved
    /// fields, payload length cap). The checksum is checked by [`Header::check_payload`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let head: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Error::Truncated {
                needed: HEADER_LEN as u64,
                available: bytes.len() as u64,
            })?;
        let [m0, m1, m2, m3, m4, m5, m6, m7, a0, a1, i0, i1, r0, r1, r2, r3, l0, l1, l2, l3, l4, l5, l6, l7, c0, c1, c2, c3, s0, s1, s2, s3] =
            *head;
        if [m0, m1, m2, m3, m4, m5, m6, m7] != MAGIC {
            return Err(Error::BadMagic);
        }
        let major = u16::from_le_bytes([a0, a1]);
        let minor = u16::from_le_bytes([i0, i1]);
        if major > FORMAT_MAJOR {
            return Err(Error::NewerMajor {
                found: major,
                supported: FORMAT_MAJOR,
            });
        }
        if major == FORMAT_MAJOR && minor > FORMAT_MINOR {
            return Err(Error::NewerMinor {
                found: minor,
                supported: FORMAT_MINOR,
            });
        }
        if major < FORMAT_MAJOR {
            return Err(Error::Inconsistent(
                "format major version 0 was never written",
            ));
        }
        if u32::from_le_bytes([r0, r1, r2, r3]) != 0 || u32::from_le_bytes([s0, s1, s2, s3]) != 0 {
            return Err(Error::Inconsistent("reserved header fields are not zero"));
        }
        let payload_len = u64::from_le_bytes([l0, l1, l2, l3, l4, l5, l6, l7]);
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(Error::Oversized {
                len: payload_len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        Ok(Self {
            major,
            minor,
            payload_len,
            checksum: u32::from_le_bytes([c0, c1, c2, c3]),
        })
    }

    /// Returns the payload following the header in `bytes` after checking its length and
    /// checksum. Bytes after the payload are refused.
    pub fn check_payload<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8]> {
        let rest = bytes.get(HEADER_LEN..).unwrap_or_default();
        let available = rest.len() as u64;
        if available < self.payload_len {
            return Err(Error::Truncated {
                needed: self.payload_len,
                available,
            });
        }
        if available > self.payload_len {
            return Err(Error::Inconsistent("bytes follow the payload"));
        }
        let actual = crc32fast::hash(rest);
        if actual != self.checksum {
            return Err(Error::BadChecksum {
                expected: self.checksum,
                actual,
            });
        }
        Ok(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(payload: &[u8]) -> Vec<u8> {
        let mut out = Header::for_payload(payload).encode().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn header_round_trips() {
        let bytes = encoded(b"payload");

        let header = Header::decode(&bytes).unwrap();

        assert_eq!(header, Header::for_payload(b"payload"));
        assert_eq!(header.check_payload(&bytes).unwrap(), b"payload");
    }

    #[test]
    fn short_input_is_truncated() {
        let bytes = encoded(b"payload");

        let result = Header::decode(&bytes[..HEADER_LEN - 1]);

        assert!(matches!(
            result,
            Err(Error::Truncated {
                needed: 32,
                available: 31
            })
        ));
    }

    #[test]
    fn wrong_magic_is_bad_magic() {
        let mut bytes = encoded(b"p");
        bytes[0] ^= 0xff;

        assert!(matches!(Header::decode(&bytes), Err(Error::BadMagic)));
    }

    #[test]
    fn newer_major_is_refused() {
        let mut bytes = encoded(b"p");
        bytes[8..10].copy_from_slice(&(FORMAT_MAJOR + 1).to_le_bytes());

        assert!(matches!(
            Header::decode(&bytes),
            Err(Error::NewerMajor { found, supported: FORMAT_MAJOR }) if found == FORMAT_MAJOR + 1
        ));
    }

    #[test]
    fn newer_minor_is_refused() {
        let mut bytes = encoded(b"p");
        bytes[10..12].copy_from_slice(&(FORMAT_MINOR + 1).to_le_bytes());

        assert!(matches!(
            Header::decode(&bytes),
            Err(Error::NewerMinor { found, supported: FORMAT_MINOR }) if found == FORMAT_MINOR + 1
        ));
    }

    #[test]
    fn huge_payload_length_is_oversized_before_reading_it() {
        let mut bytes = encoded(b"p");
        bytes[16..24].copy_from_slice(&(MAX_PAYLOAD_LEN + 1).to_le_bytes());

        assert!(matches!(
            Header::decode(&bytes),
            Err(Error::Oversized { .. })
        ));
    }

    #[test]
    fn non_zero_reserved_field_is_inconsistent() {
        let mut bytes = encoded(b"p");
        bytes[12] = 1;

        assert!(matches!(
            Header::decode(&bytes),
            Err(Error::Inconsistent(_))
        ));
    }

    #[test]
    fn missing_payload_bytes_are_truncated() {
        let bytes = encoded(b"payload");
        let header = Header::decode(&bytes).unwrap();

        let result = header.check_payload(&bytes[..bytes.len() - 2]);

        assert!(matches!(
            result,
            Err(Error::Truncated {
                needed: 7,
                available: 5
            })
        ));
    }

    #[test]
    fn flipped_payload_bit_is_bad_checksum() {
        let mut bytes = encoded(b"payload");
        let header = Header::decode(&bytes).unwrap();
        bytes[HEADER_LEN] ^= 1;

        assert!(matches!(
            header.check_payload(&bytes),
            Err(Error::BadChecksum { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_inconsistent() {
        let mut bytes = encoded(b"payload");
        bytes.push(0);
        let header = Header::decode(&bytes).unwrap();

        assert!(matches!(
            header.check_payload(&bytes),
            Err(Error::Inconsistent(_))
        ));
    }
}
