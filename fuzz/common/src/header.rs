//! The workspace's one snapshot header (`docs/snapshot-format.md`), as the fuzz targets of
//! every snapshot format see it: its field offsets, and the checksum fix-up that lets random
//! payloads reach each format's payload decoder.

/// Size of the header.
pub const HEADER_LEN: usize = 32;
/// Offset of the format minor version.
pub const MINOR_AT: usize = 10;
/// Offset of the flags.
pub const FLAGS_AT: usize = 12;
/// Offset of the payload length.
pub const LEN_AT: usize = 16;
/// Offset of the payload CRC-32.
pub const PAYLOAD_CRC_AT: usize = 24;
/// Offset of the header CRC-32 (of the bytes before it).
pub const HEADER_CRC_AT: usize = 28;

/// Recomputes the header checksum of `bytes` (which must hold a whole header).
pub fn reseal_header(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[..HEADER_CRC_AT]);
    bytes[HEADER_CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// `data` with the header's payload length, payload CRC and header CRC made to match what
/// follows, or `None` if it is shorter than a header. Random bytes almost never carry valid
/// checksums, so every snapshot target decodes its input as given and like this.
pub fn with_valid_checksums(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < HEADER_LEN {
        return None;
    }
    let mut fixed = data.to_vec();
    let (head, payload) = fixed.split_at_mut(HEADER_LEN);
    head[LEN_AT..LEN_AT + 8].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    head[PAYLOAD_CRC_AT..PAYLOAD_CRC_AT + 4]
        .copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    reseal_header(head);
    Some(fixed)
}

/// The format minor version and flags of a file whose header has been accepted.
pub fn minor_and_flags(data: &[u8]) -> (u16, u32) {
    let minor = u16::from_le_bytes([data[MINOR_AT], data[MINOR_AT + 1]]);
    let flags = u32::from_le_bytes(data[FLAGS_AT..FLAGS_AT + 4].try_into().expect("four bytes"));
    (minor, flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixing_checksums_keeps_a_valid_file_unchanged() {
        let files = [
            sdei_migration::FORMAT.seal(b"sdei").unwrap(),
            mte_memory::snapshot::header::FORMAT.seal(b"tags").unwrap(),
            refvmm::snapshot::SERIAL
                .encode(&refvmm::devices::serial::ConsoleState {
                    regs: [0; 9],
                    input: vec![],
                })
                .unwrap(),
        ];

        for file in files {
            assert_eq!(with_valid_checksums(&file), Some(file));
        }
    }

    #[test]
    fn fixed_checksums_pass_the_header_checks() {
        let mut file = sdei_migration::FORMAT.seal(b"payload").unwrap();
        file.push(1);
        file[HEADER_LEN] ^= 0xff;

        let fixed = with_valid_checksums(&file).unwrap();

        assert!(sdei_migration::FORMAT.open(&fixed).is_ok());
    }

    #[test]
    fn short_input_has_no_header_to_fix() {
        assert!(with_valid_checksums(&[0; HEADER_LEN - 1]).is_none());
    }
}
