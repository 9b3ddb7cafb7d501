//! The header in front of every encoded tag snapshot: the workspace's one snapshot-header
//! policy (`header/policy.rs`, the same code as sdei-migration's; specified in
//! `docs/snapshot-format.md`) with this format's magic, version and payload cap in [`FORMAT`].
//!
//! Format 1.1 is the first with a header checksum. Format 1.0 (what this crate wrote before)
//! had the same layout with the flags and the header checksum reserved as zero; [`parse`] still
//! reads it: a 1.0 header is recognised by its version and its zero checksum field, must have
//! zero flags, and has its payload length capped and its payload checked like any other.

mod policy;

pub use policy::{HeaderError, SnapshotFormat, SnapshotHeader, FLAG_OPTIONAL_ONLY, HEADER_LEN};

/// The magic bytes opening an encoded tag snapshot.
pub const MAGIC: [u8; 8] = *b"MTETAGS\0";
/// The format major version this crate writes and reads.
pub const FORMAT_MAJOR: u16 = 1;
/// The newest format minor version this crate writes and reads: 1 (1.0 had no header
/// checksum; this crate reads it too).
pub const FORMAT_MINOR: u16 = 1;
/// The largest payload accepted on load (enough for the tags of a 4 TiB guest).
pub const MAX_PAYLOAD_LEN: u64 = 1 << 37;

/// The tag-snapshot format: magic `MTETAGS\0`, version 1.1, only [`FLAG_OPTIONAL_ONLY`]
/// defined, payloads up to [`MAX_PAYLOAD_LEN`].
pub const FORMAT: SnapshotFormat = SnapshotFormat {
    magic: MAGIC,
    major: FORMAT_MAJOR,
    minor: FORMAT_MINOR,
    flags: FLAG_OPTIONAL_ONLY,
    max_payload_len: MAX_PAYLOAD_LEN,
};

const HEADER_CRC_AT: usize = 28;

/// Reads and checks the header at the start of `bytes`: [`FORMAT`]`.parse`, or a format 1.0
/// header (see the [module documentation](self)).
pub fn parse(bytes: &[u8]) -> Result<SnapshotHeader, HeaderError> {
    match v1_0(bytes) {
        Some(header) => check_v1_0(header),
        None => FORMAT.parse(bytes),
    }
}

/// Checks a whole encoded snapshot: the header ([`parse`]), then exactly the payload it
/// announces and its CRC-32. Returns the header and the payload.
pub fn open(bytes: &[u8]) -> Result<(SnapshotHeader, &[u8]), HeaderError> {
    let header = parse(bytes)?;
    let payload = bytes.get(HEADER_LEN..).unwrap_or_default();
    header.check_payload(payload)?;
    Ok((header, payload))
}

/// The header fields of `bytes` if it starts with a format 1.0 header: the magic, version 1.0
/// and a zero header-checksum field (a 1.1 header has a zero checksum once in 2^32 headers, and
/// then still has minor 1). The flags field is returned for [`check_v1_0`] to refuse.
fn v1_0(bytes: &[u8]) -> Option<SnapshotHeader> {
    let head: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    let field = |at: usize, len: usize| head.get(at..at + len);
    let le16 = |at| Some(u16::from_le_bytes(field(at, 2)?.try_into().ok()?));
    let le32 = |at| Some(u32::from_le_bytes(field(at, 4)?.try_into().ok()?));
    let le64 = |at| Some(u64::from_le_bytes(field(at, 8)?.try_into().ok()?));
    let is_v1_0 = field(0, 8)? == MAGIC
        && le16(8)? == FORMAT_MAJOR
        && le16(10)? == 0
        && le32(HEADER_CRC_AT)? == 0;
    is_v1_0.then_some(SnapshotHeader {
        magic: MAGIC,
        major: FORMAT_MAJOR,
        minor: 0,
        flags: le32(12)?,
        payload_len: le64(16)?,
        payload_crc: le32(24)?,
    })
}

/// Format 1.0's rules: its flags field was reserved as zero; the payload cap is the same.
fn check_v1_0(header: SnapshotHeader) -> Result<SnapshotHeader, HeaderError> {
    if header.flags != 0 {
        return Err(HeaderError::UnknownFlags(header.flags));
    }
    if header.payload_len > MAX_PAYLOAD_LEN {
        return Err(HeaderError::Oversized {
            len: header.payload_len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format 1.0 header, as this crate wrote it before 1.1: no flags, no header checksum.
    fn v1_0_file(payload: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn current_files_are_format_1_1_with_a_header_checksum() {
        let file = FORMAT.seal(b"payload").unwrap();

        let (header, payload) = open(&file).unwrap();

        assert_eq!((header.major, header.minor), (1, 1));
        assert_ne!(file[28..32], [0; 4]);
        assert_eq!(payload, b"payload");
    }

    #[test]
    fn format_1_0_files_still_open() {
        let file = v1_0_file(b"payload");

        let (header, payload) = open(&file).unwrap();

        assert_eq!((header.minor, header.flags), (0, 0));
        assert_eq!(payload, b"payload");
    }

    #[test]
    fn format_1_0_files_are_checked_like_any_other() {
        let mut flags = v1_0_file(b"p");
        flags[12] = 1;
        let mut oversized = v1_0_file(b"p");
        oversized[16..24].copy_from_slice(&(MAX_PAYLOAD_LEN + 1).to_le_bytes());
        let mut damaged = v1_0_file(b"p");
        damaged[HEADER_LEN] ^= 1;
        let mut magic = v1_0_file(b"p");
        magic[0] = b'X';

        assert_eq!(open(&flags), Err(HeaderError::UnknownFlags(1)));
        assert!(matches!(
            open(&oversized),
            Err(HeaderError::Oversized { .. })
        ));
        assert!(matches!(
            open(&damaged),
            Err(HeaderError::PayloadChecksumMismatch { .. })
        ));
        assert!(matches!(open(&magic), Err(HeaderError::BadMagic { .. })));
        let mut trailing = v1_0_file(b"p");
        trailing.extend_from_slice(&[0; 7]);
        assert_eq!(open(&trailing), Err(HeaderError::TrailingBytes(7)));
    }

    #[test]
    fn a_damaged_checksum_field_is_not_taken_for_format_1_0() {
        let mut file = v1_0_file(b"p");
        file[29] = 0x10;

        assert!(matches!(
            open(&file),
            Err(HeaderError::HeaderChecksumMismatch { .. })
        ));
    }
}
