//! Runs the decoder's fuzz entry point on seed inputs, and on the cargo-fuzz corpus when one
//! exists (`fuzz/corpus/sdei_snapshot_decode/`), as an ordinary test on the stable toolchain.

mod common;

use std::path::Path;

use common::*;
use sdei_migration::{fuzz_decode, save, HeaderError, SnapshotError, HEADER_LEN};

fn golden() -> Vec<u8> {
    // Embedded at build time: the test binary also runs where there is no source tree.
    include_bytes!("golden/sdei-v1.0.bin").to_vec()
}

#[test]
fn fuzz_entry_point_accepts_valid_snapshots() {
    let vm = build(2, &nest_on(1));

    assert!(fuzz_decode(&golden()).is_ok());
    assert!(fuzz_decode(&save(&vm.sdei).unwrap()).is_ok());
}

#[test]
fn fuzz_entry_point_reports_damaged_seeds() {
    let golden = golden();
    let mut flipped = golden.clone();
    flipped[HEADER_LEN + 3] ^= 0x10;

    let truncated = fuzz_decode(&golden[..golden.len() / 2]);
    let empty = fuzz_decode(&[]);
    let damaged = fuzz_decode(&flipped);

    assert!(matches!(
        truncated,
        Err(SnapshotError::Header(HeaderError::Truncated { .. }))
    ));
    assert!(matches!(
        empty,
        Err(SnapshotError::Header(HeaderError::Truncated { .. }))
    ));
    assert!(matches!(
        damaged,
        Err(SnapshotError::Header(
            HeaderError::PayloadChecksumMismatch { .. }
        ))
    ));
}

#[test]
fn fuzz_corpus_inputs_never_panic() {
    // The source tree's corpus, or a copy named by REFVMM_FUZZ_CORPUS (the emulated arm64
    // machine has no source tree; its runner ships the corpora there).
    let corpora = std::env::var_os("REFVMM_FUZZ_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus"));
    let corpus = corpora.join("sdei_snapshot_decode");
    let entries = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", corpus.display()));
    let mut ran = 0;
    for entry in entries.flatten() {
        let data = std::fs::read(entry.path()).expect("a corpus file reads");
        let _ = fuzz_decode(&data);
        ran += 1;
    }
    assert!(ran > 0, "the corpus {} is empty", corpus.display());
    println!("ran {ran} corpus inputs from {}", corpus.display());
}

#[test]
fn every_single_byte_corruption_of_the_golden_file_is_detected() {
    // CRC32 catches every single-byte error; magic and major are checked before it.
    let golden = golden();

    for at in 0..golden.len() {
        for flip in [0x01, 0x80, 0xFF] {
            let mut bytes = golden.clone();
            bytes[at] ^= flip;

            let err = fuzz_decode(&bytes).unwrap_err();

            let expected = match at {
                0..8 => matches!(err, SnapshotError::Header(HeaderError::BadMagic { .. })),
                8..10 => matches!(
                    err,
                    SnapshotError::Header(HeaderError::UnsupportedMajor { .. })
                ),
                10..HEADER_LEN => matches!(
                    err,
                    SnapshotError::Header(HeaderError::HeaderChecksumMismatch { .. })
                ),
                _ => matches!(
                    err,
                    SnapshotError::Header(HeaderError::PayloadChecksumMismatch { .. })
                ),
            };
            assert!(expected, "byte {at} ^ {flip:#x}: {err:?}");
        }
    }
}
