//! Test vectors of the arm64-vmm workspace's snapshot-header policy (`docs/snapshot-format.md`):
//! the same corruption cases, run against each snapshot format through its own decoder.
//!
//! This file is identical in `crates/sdei-migration/tests/header_vectors/mod.rs` and
//! `crates/mte-memory/tests/header_vectors/mod.rs` (neither crate may depend on the other);
//! refvmm's `tests/snapshot_headers.rs` checks that the two copies are the same and runs the
//! vectors against refvmm's own formats. Change both copies together.
#![allow(dead_code)]

/// Size of the header.
pub const HEADER_LEN: usize = 32;
/// Header flag: everything a newer minor adds is optional.
pub const FLAG_OPTIONAL_ONLY: u32 = 1;

/// One snapshot format, as its own decoder sees it.
pub struct Subject<'a> {
    /// A valid file as the current writer writes it.
    pub valid: Vec<u8>,
    /// Bytes a newer minor could append to the payload as optional data.
    pub optional_tail: Vec<u8>,
    /// The largest payload the format accepts.
    pub max_payload_len: u64,
    /// Decodes a whole file: `Ok(())` if it is accepted; otherwise the name of the
    /// `HeaderError` variant it was refused with ([`variant`] of its `Debug` text), or any
    /// other text for a refusal of the payload's contents.
    pub decode: &'a dyn Fn(&[u8]) -> Result<(), String>,
}

/// The variant name at the start of an error's `Debug` text: `BadMagic` of `BadMagic { .. }`.
pub fn variant(debug: &str) -> String {
    debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

/// Recomputes the header checksum of `bytes` (its first 32 bytes).
pub fn reseal_header(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[..28]);
    put(bytes, 28, &crc.to_le_bytes());
}

/// `file`'s header in front of `payload`, with the payload length and checksum made to match,
/// then `edit` applied to the header, then the header checksum recomputed.
pub fn rebuild(file: &[u8], payload: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut out = file[..HEADER_LEN].to_vec();
    put(&mut out, 16, &(payload.len() as u64).to_le_bytes());
    put(&mut out, 24, &crc32fast::hash(payload).to_le_bytes());
    edit(&mut out);
    reseal_header(&mut out);
    out.extend_from_slice(payload);
    out
}

/// `file` with its header edited by `edit` and the header checksum recomputed.
fn header_edit(file: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut out = file.to_vec();
    edit(&mut out);
    reseal_header(&mut out);
    out
}

/// Runs every vector against `subject`; returns how many ran.
///
/// # Panics
///
/// When the decoder gives another answer than the policy's for a vector (naming it), or
/// panics itself.
pub fn run(subject: &Subject) -> usize {
    let valid = &subject.valid;
    assert!(valid.len() > HEADER_LEN, "the valid file has a payload");
    let payload = &valid[HEADER_LEN..];
    let major = u16::from_le_bytes([valid[8], valid[9]]);
    let minor = u16::from_le_bytes([valid[10], valid[11]]);
    let mut ran = 0;
    let mut check = |name: &str, input: &[u8], want: Result<(), &str>| {
        let got = (subject.decode)(input);
        assert_eq!(got, want.map_err(str::to_owned), "vector: {name}");
        ran += 1;
    };

    check("the valid file", valid, Ok(()));

    for len in 0..valid.len() {
        check(
            &format!("truncated to {len} bytes"),
            &valid[..len],
            Err("Truncated"),
        );
    }
    let lying = rebuild(valid, payload, |h| {
        put(h, 16, &(payload.len() as u64 + 1).to_le_bytes())
    });
    check("length one more than the payload", &lying, Err("Truncated"));
    let at_cap = rebuild(valid, payload, |h| {
        put(h, 16, &subject.max_payload_len.to_le_bytes())
    });
    check(
        "length at the cap, payload absent",
        &at_cap,
        Err("Truncated"),
    );

    for at in 0..8 {
        let mut bytes = valid.clone();
        bytes[at] ^= 0x20;
        check(&format!("magic byte {at} changed"), &bytes, Err("BadMagic"));
        check(
            &format!("magic byte {at} changed, 8 bytes"),
            &bytes[..8],
            Err("BadMagic"),
        );
    }

    for at in 10..HEADER_LEN {
        for flip in [0x01, 0x80] {
            let mut bytes = valid.clone();
            bytes[at] ^= flip;
            check(
                &format!("header byte {at} ^ {flip:#x}, checksum not fixed"),
                &bytes,
                Err("HeaderChecksumMismatch"),
            );
        }
    }

    for other in [major.wrapping_add(1), major.wrapping_sub(1), 0, u16::MAX] {
        if other == major {
            continue;
        }
        let sealed = header_edit(valid, |h| put(h, 8, &other.to_le_bytes()));
        check(&format!("major {other}"), &sealed, Err("UnsupportedMajor"));
        let mut unsealed = valid.clone();
        put(&mut unsealed, 8, &other.to_le_bytes());
        check(
            &format!("major {other}, header of another layout"),
            &unsealed,
            Err("UnsupportedMajor"),
        );
        check(
            &format!("major {other}, 10 bytes"),
            &unsealed[..10],
            Err("UnsupportedMajor"),
        );
    }

    for newer in [minor + 1, u16::MAX] {
        let required = header_edit(valid, |h| put(h, 10, &newer.to_le_bytes()));
        check(
            &format!("minor {newer} without the optional flag"),
            &required,
            Err("UnsupportedMinor"),
        );
        let with_undefined = header_edit(valid, |h| {
            put(h, 10, &newer.to_le_bytes());
            put(h, 12, &(1u32 << 31).to_le_bytes());
        });
        check(
            &format!("minor {newer} with an undefined flag but not the optional one"),
            &with_undefined,
            Err("UnsupportedMinor"),
        );
        let optional = header_edit(valid, |h| {
            put(h, 10, &newer.to_le_bytes());
            put(h, 12, &FLAG_OPTIONAL_ONLY.to_le_bytes());
        });
        check(
            &format!("minor {newer} with the optional flag"),
            &optional,
            Ok(()),
        );
        let newer_flags = header_edit(valid, |h| {
            put(h, 10, &newer.to_le_bytes());
            put(
                h,
                12,
                &(FLAG_OPTIONAL_ONLY | 1 << 7 | 1 << 31).to_le_bytes(),
            );
        });
        check(
            &format!("minor {newer} with the optional flag and flags of its own"),
            &newer_flags,
            Ok(()),
        );
        let mut extended = payload.to_vec();
        extended.extend_from_slice(&subject.optional_tail);
        let tail = rebuild(valid, &extended, |h| {
            put(h, 10, &newer.to_le_bytes());
            put(h, 12, &FLAG_OPTIONAL_ONLY.to_le_bytes());
        });
        check(
            &format!("minor {newer} with the optional flag and optional data"),
            &tail,
            Ok(()),
        );
    }

    for known in [0, minor] {
        for bit in 1..32 {
            let flagged = header_edit(valid, |h| {
                put(h, 10, &known.to_le_bytes());
                put(h, 12, &(1u32 << bit).to_le_bytes());
            });
            check(
                &format!("minor {known}, undefined flag bit {bit}"),
                &flagged,
                Err("UnknownFlags"),
            );
        }
    }

    for len in [subject.max_payload_len + 1, u64::MAX / 2, u64::MAX] {
        let sealed = header_edit(valid, |h| put(h, 16, &len.to_le_bytes()));
        check(
            &format!("payload length {len}, header alone"),
            &sealed[..HEADER_LEN],
            Err("Oversized"),
        );
        check(
            &format!("payload length {len}, payload present"),
            &sealed,
            Err("Oversized"),
        );
    }

    for at in [0, payload.len() / 2, payload.len() - 1] {
        let mut bytes = valid.clone();
        bytes[HEADER_LEN + at] ^= 0x04;
        check(
            &format!("payload byte {at} changed"),
            &bytes,
            Err("PayloadChecksumMismatch"),
        );
    }
    let wrong_crc = header_edit(valid, |h| h[24] ^= 1);
    check(
        "stored payload checksum changed",
        &wrong_crc,
        Err("PayloadChecksumMismatch"),
    );

    let mut trailing = valid.clone();
    trailing.push(0);
    check("a byte after the payload", &trailing, Err("TrailingBytes"));
    let short = rebuild(valid, &payload[..payload.len() - 1], |_| {});
    let mut short = short;
    short.push(*payload.last().unwrap_or(&0));
    check(
        "length one less than the payload",
        &short,
        Err("TrailingBytes"),
    );

    ran
}
