//! The workspace's shared snapshot-header vectors (`header_vectors/mod.rs`, the same file as
//! mte-memory's) against the SDEI snapshot: every header rule refuses with the same error
//! kind as in every other format, and nothing panics.

mod common;
mod header_vectors;

use common::*;
use header_vectors::{run, variant, Subject};
use sdei_migration::{fuzz_decode, save, SnapshotError, MAX_PAYLOAD_LEN};

fn decode(bytes: &[u8]) -> Result<(), String> {
    // The fuzz entry point: decode, restore under the snapshot's own configuration, and check
    // that re-encoding and re-capturing agree.
    fuzz_decode(bytes).map_err(|e| match e {
        SnapshotError::Header(h) => variant(&format!("{h:?}")),
        other => format!("payload: {other}"),
    })
}

#[test]
fn sdei_snapshot_follows_the_shared_header_vectors() {
    // Optional data of a newer minor: one optional section (tag 7, 3 bytes).
    let optional_tail = vec![7, 0, 3, 0, 0, 0, b'n', b'e', b'w'];
    let subjects = [
        save(&golden_vm().sdei).unwrap(),
        include_bytes!("golden/sdei-v1.0.bin").to_vec(),
    ];

    for valid in subjects {
        let ran = run(&Subject {
            valid,
            optional_tail: optional_tail.clone(),
            max_payload_len: MAX_PAYLOAD_LEN,
            decode: &decode,
        });

        assert!(ran > 200, "{ran} vectors");
    }
}
