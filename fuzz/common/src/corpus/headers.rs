//! Seeds that damage the shared snapshot header, the same for every snapshot format: one per
//! rule of `docs/snapshot-format.md`.

use super::Seed;
use crate::header::{reseal_header, FLAGS_AT, HEADER_LEN, LEN_AT, MINOR_AT};

/// Header damage to `valid`, a file of `target`'s format as its writer writes it: empty,
/// header only, a short header, bad magic, another major (newer, zero), a newer minor without
/// and with the optional-only flag (and optional data after the payload), undefined flags,
/// an oversized length, a damaged header, a damaged payload, truncated, a trailing byte.
/// `optional_tail` is what a newer minor of the format could append as optional data.
pub fn header_seeds(target: &'static str, valid: &[u8], optional_tail: &[u8]) -> Vec<Seed> {
    let sealed = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut d = valid.to_vec();
        edit(&mut d);
        reseal_header(&mut d);
        d
    };
    let put = |d: &mut Vec<u8>, at: usize, value: &[u8]| {
        d[at..at + value.len()].copy_from_slice(value);
    };
    let minor = u16::from_le_bytes([valid[MINOR_AT], valid[MINOR_AT + 1]]);
    let newer = (minor + 1).to_le_bytes();
    let mut optional_data = sealed(&|d| {
        put(d, MINOR_AT, &newer);
        put(d, FLAGS_AT, &1u32.to_le_bytes());
    });
    optional_data.extend_from_slice(optional_tail);
    let optional_data = crate::header::with_valid_checksums(&optional_data).expect("a header");
    let mut bad_magic = valid.to_vec();
    bad_magic[0] ^= 0x20;
    let mut damaged_header = valid.to_vec();
    damaged_header[LEN_AT + 5] ^= 0x01;
    let mut damaged_payload = valid.to_vec();
    if let Some(b) = damaged_payload.get_mut(HEADER_LEN) {
        *b ^= 0x10;
    }
    let mut trailing = valid.to_vec();
    trailing.push(0);
    vec![
        Seed::new(target, "empty", Vec::new()),
        Seed::new(target, "header-only", valid[..HEADER_LEN].to_vec()),
        Seed::new(target, "short-header", valid[..12].to_vec()),
        Seed::new(target, "bad-magic", bad_magic),
        Seed::new(target, "newer-major", sealed(&|d| d[8] += 1)),
        Seed::new(target, "major-zero", sealed(&|d| put(d, 8, &[0, 0]))),
        Seed::new(target, "newer-minor", sealed(&|d| put(d, MINOR_AT, &newer))),
        Seed::new(target, "newer-minor-optional-only", optional_data),
        Seed::new(
            target,
            "unknown-flags",
            sealed(&|d| put(d, FLAGS_AT, &0x8000_0000u32.to_le_bytes())),
        ),
        Seed::new(
            target,
            "oversized-payload",
            sealed(&|d| put(d, LEN_AT, &(1u64 << 40).to_le_bytes())),
        ),
        Seed::new(target, "header-checksum", damaged_header),
        Seed::new(target, "payload-bit-flip", damaged_payload),
        Seed::new(target, "truncated", valid[..valid.len() - 1].to_vec()),
        Seed::new(target, "trailing-byte", trailing),
    ]
}
