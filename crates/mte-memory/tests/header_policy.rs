//! The workspace's shared snapshot-header vectors (`header_vectors/mod.rs`, the same file as
//! sdei-migration's) against the tag snapshot, and the golden files of format 1.0 (written by
//! this crate before format 1.1 added the header checksum), which must keep loading.

mod header_vectors;

use header_vectors::{run, variant, Subject};
use mte_memory::snapshot::header::{self, MAX_PAYLOAD_LEN};
use mte_memory::snapshot::Error;
use mte_memory::{
    PageBitmap, SnapshotKind, SoftwareTagStore, TagSnapshot, TagStore, TAGS_PER_PAGE, TAG_PAGE_SIZE,
};
use vm_memory::GuestAddress;

/// The golden files' layout: two regions of 8 and 70 pages.
fn layout() -> Vec<(GuestAddress, u64)> {
    vec![
        (GuestAddress(0x4000_0000), 8 * TAG_PAGE_SIZE),
        (GuestAddress(0x8000_0000), 70 * TAG_PAGE_SIZE),
    ]
}

fn tags(seed: u8) -> Vec<u8> {
    (0..TAGS_PER_PAGE)
        .map(|i| ((i as u8) ^ seed) & 0xf)
        .collect()
}

/// The store the golden files were captured from: page 1 of the first region, pages 0 and 65
/// of the second tagged (frozen: the files hold these tags).
fn golden_store() -> SoftwareTagStore {
    let mut store = SoftwareTagStore::new(&layout()).unwrap();
    for (base, page, seed) in [
        (0x4000_0000u64, 1u64, 3u8),
        (0x8000_0000, 0, 7),
        (0x8000_0000, 65, 9),
    ] {
        store
            .write_tags(GuestAddress(base + page * TAG_PAGE_SIZE), &tags(seed))
            .unwrap();
    }
    store
}

/// The pages of the golden incremental snapshot: pages 0, 1 and 65 of the second region.
fn golden_dirty() -> Vec<PageBitmap> {
    let mut dirty = PageBitmap::new(70);
    for page in [0, 1, 65] {
        dirty.insert(page);
    }
    vec![PageBitmap::new(8), dirty]
}

const GOLDEN_V1_0_FULL: &[u8] = include_bytes!("golden/mte-tags-v1.0-full.bin");
const GOLDEN_V1_0_INCREMENTAL: &[u8] = include_bytes!("golden/mte-tags-v1.0-incremental.bin");

fn all_tags(store: &SoftwareTagStore) -> Vec<u8> {
    let mut out = Vec::new();
    for (base, size) in layout() {
        let mut buf = vec![0u8; (size / TAG_PAGE_SIZE) as usize * TAGS_PER_PAGE];
        store.read_tags(base, &mut buf).unwrap();
        out.extend(buf);
    }
    out
}

fn decode(bytes: &[u8]) -> Result<(), String> {
    TagSnapshot::decode(bytes).map(drop).map_err(|e| match e {
        Error::Header(h) => variant(&format!("{h:?}")),
        other => format!("payload: {other}"),
    })
}

#[test]
fn tag_snapshots_follow_the_shared_header_vectors() {
    let store = golden_store();
    let subjects = [
        TagSnapshot::capture_full(&store, &layout())
            .unwrap()
            .encode(),
        TagSnapshot::capture_dirty(&store, &layout(), &golden_dirty())
            .unwrap()
            .encode(),
    ];

    for valid in subjects {
        let ran = run(&Subject {
            valid,
            // A newer minor's optional data follows the last region; any bytes will do.
            optional_tail: b"tags of a newer minor".to_vec(),
            max_payload_len: MAX_PAYLOAD_LEN,
            decode: &decode,
        });

        assert!(ran > 200, "{ran} vectors");
    }
}

#[test]
fn golden_v1_0_files_have_the_reserved_zero_fields_of_format_1_0() {
    for golden in [GOLDEN_V1_0_FULL, GOLDEN_V1_0_INCREMENTAL] {
        let (h, _) = header::open(golden).unwrap();

        assert_eq!((h.major, h.minor, h.flags), (1, 0, 0));
        assert_eq!(golden[12..16], [0; 4]);
        assert_eq!(golden[28..32], [0; 4], "no header checksum in 1.0");
    }
}

#[test]
fn golden_v1_0_full_snapshot_restores_its_tags() {
    let snap = TagSnapshot::decode(GOLDEN_V1_0_FULL).unwrap();
    let mut target = SoftwareTagStore::new(&layout()).unwrap();
    target
        .write_tags(GuestAddress(0x4000_0000 + 5 * TAG_PAGE_SIZE), &tags(1))
        .unwrap();

    snap.restore(&mut target).unwrap();

    assert_eq!(snap.kind(), SnapshotKind::Full);
    assert_eq!(snap.tagged_pages(), 3);
    assert_eq!(all_tags(&target), all_tags(&golden_store()));
}

#[test]
fn golden_v1_0_incremental_snapshot_restores_its_pages_only() {
    let snap = TagSnapshot::decode(GOLDEN_V1_0_INCREMENTAL).unwrap();
    let mut target = SoftwareTagStore::new(&layout()).unwrap();
    let first_region_page = GuestAddress(0x4000_0000 + TAG_PAGE_SIZE);
    target.write_tags(first_region_page, &tags(11)).unwrap();

    snap.restore(&mut target).unwrap();

    let mut kept = vec![0u8; TAGS_PER_PAGE];
    target.read_tags(first_region_page, &mut kept).unwrap();
    assert_eq!(snap.kind(), SnapshotKind::Incremental);
    assert_eq!(kept, tags(11), "a page outside the snapshot is left alone");
    for (page, seed) in [(0u64, Some(7u8)), (1, None), (65, Some(9))] {
        let mut got = vec![0u8; TAGS_PER_PAGE];
        target
            .read_tags(GuestAddress(0x8000_0000 + page * TAG_PAGE_SIZE), &mut got)
            .unwrap();
        assert_eq!(
            got,
            seed.map_or(vec![0; TAGS_PER_PAGE], tags),
            "page {page}"
        );
    }
}

#[test]
fn golden_v1_0_snapshots_re_encode_as_1_1_with_the_same_payload() {
    for golden in [GOLDEN_V1_0_FULL, GOLDEN_V1_0_INCREMENTAL] {
        let again = TagSnapshot::decode(golden).unwrap().encode();

        assert_eq!(
            again[HEADER..],
            golden[HEADER..],
            "the payload is unchanged"
        );
        assert_eq!(again[10..12], [1, 0], "written as 1.1");
        assert_eq!(again[28..32], crc32fast::hash(&again[..28]).to_le_bytes());
        assert_eq!(
            TagSnapshot::decode(&again).unwrap(),
            TagSnapshot::decode(golden).unwrap()
        );
    }
}

const HEADER: usize = header::HEADER_LEN;

#[test]
fn golden_v1_0_files_refuse_every_single_byte_corruption() {
    // Without a header checksum, 1.0 relies on its magic, version, reserved fields, length and
    // payload checksum: each single-byte change still fails one of them.
    for golden in [GOLDEN_V1_0_FULL, GOLDEN_V1_0_INCREMENTAL] {
        for at in 0..golden.len() {
            let mut bytes = golden.to_vec();
            bytes[at] ^= 0x01;

            let err = TagSnapshot::decode(&bytes).unwrap_err();

            let expected = match at {
                0..8 => "BadMagic",
                8..10 => "UnsupportedMajor",
                // Read as a 1.1 header, whose checksum field (zero) fails.
                10..12 => "HeaderChecksumMismatch",
                12..16 => "UnknownFlags",
                16..24 => "", // Truncated, trailing bytes or oversized, by the bit.
                24..28 => "PayloadChecksumMismatch",
                28..32 => "HeaderChecksumMismatch",
                _ => "PayloadChecksumMismatch",
            };
            let got = match err {
                Error::Header(h) => variant(&format!("{h:?}")),
                other => format!("{other:?}"),
            };
            if !expected.is_empty() {
                assert_eq!(got, expected, "byte {at}");
            }
        }
    }
}
