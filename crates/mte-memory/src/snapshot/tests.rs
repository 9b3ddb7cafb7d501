use proptest::prelude::*;

use super::header::{HeaderError, FORMAT, HEADER_LEN, MAX_PAYLOAD_LEN};
use super::*;
use crate::software::SoftwareTagStore;

const BASE: u64 = 0x4000_0000;
const PAGES: u64 = 130;

fn layout() -> Vec<(GuestAddress, u64)> {
    vec![
        (GuestAddress(0), 8 * TAG_PAGE_SIZE),
        (GuestAddress(BASE), PAGES * TAG_PAGE_SIZE),
    ]
}

fn page_tags(seed: u8) -> Vec<u8> {
    (0..TAGS_PER_PAGE)
        .map(|i| ((i as u8) ^ seed) & 0xf | 1)
        .collect()
}

fn store_with_tagged(pages: &[u64]) -> SoftwareTagStore {
    let mut store = SoftwareTagStore::new(&layout()).unwrap();
    for &p in pages {
        store
            .write_tags(GuestAddress(BASE + p * TAG_PAGE_SIZE), &page_tags(p as u8))
            .unwrap();
    }
    store
}

fn all_tags(store: &SoftwareTagStore) -> Vec<u8> {
    let mut out = Vec::new();
    for (base, size) in layout() {
        let mut buf = vec![0u8; (size / 16) as usize];
        store.read_tags(base, &mut buf).unwrap();
        out.extend(buf);
    }
    out
}

/// Replaces the payload of an encoded snapshot and fixes the header so the checksum passes.
fn reseal(bytes: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut payload = bytes[HEADER_LEN..].to_vec();
    edit(&mut payload);
    FORMAT.seal(&payload).unwrap()
}

#[test]
fn full_snapshot_restores_identical_tags() {
    let source = store_with_tagged(&[0, 3, 64, 129]);
    let snap = TagSnapshot::capture_full(&source, &layout()).unwrap();

    let decoded = TagSnapshot::decode(&snap.encode()).unwrap();
    let mut target = SoftwareTagStore::new(&layout()).unwrap();
    decoded.restore(&mut target).unwrap();

    assert_eq!(decoded, snap);
    assert_eq!(all_tags(&target), all_tags(&source));
    assert_eq!(snap.tagged_pages(), 4);
}

#[test]
fn full_restore_clears_tags_of_untagged_pages() {
    let snap = TagSnapshot::capture_full(&store_with_tagged(&[]), &layout()).unwrap();
    let mut target = store_with_tagged(&[5, 6]);

    snap.restore(&mut target).unwrap();

    assert!(all_tags(&target).iter().all(|&t| t == 0));
}

#[test]
fn untagged_memory_costs_only_headers() {
    let snap = TagSnapshot::capture_full(&store_with_tagged(&[]), &layout()).unwrap();

    let bytes = snap.encode();

    // Header, payload preamble and two region headers; no bitmaps, no tags.
    assert_eq!(bytes.len(), HEADER_LEN + 8 + 2 * 24);
}

#[test]
fn tagged_page_costs_packed_tags_plus_bitmap() {
    let snap = TagSnapshot::capture_full(&store_with_tagged(&[7]), &layout()).unwrap();

    let bytes = snap.encode();

    let bitmap = PAGES.div_ceil(64) as usize * 8;
    assert_eq!(
        bytes.len(),
        HEADER_LEN + 8 + 2 * 24 + bitmap + PACKED_PAGE_LEN
    );
}

#[test]
fn incremental_snapshot_carries_only_dirty_pages() {
    let mut store = store_with_tagged(&[1, 2]);
    let full = TagSnapshot::capture_full(&store, &layout()).unwrap();
    store
        .write_tags(
            GuestAddress(BASE + 2 * TAG_PAGE_SIZE),
            &vec![0; TAGS_PER_PAGE],
        )
        .unwrap();
    store
        .write_tags(GuestAddress(BASE + 70 * TAG_PAGE_SIZE), &page_tags(9))
        .unwrap();
    let mut dirty = PageBitmap::new(PAGES);
    dirty.insert(2);
    dirty.insert(70);

    let incr = TagSnapshot::capture_dirty(&store, &layout(), &[PageBitmap::new(8), dirty]).unwrap();
    let mut target = SoftwareTagStore::new(&layout()).unwrap();
    TagSnapshot::decode(&full.encode())
        .unwrap()
        .restore(&mut target)
        .unwrap();
    TagSnapshot::decode(&incr.encode())
        .unwrap()
        .restore(&mut target)
        .unwrap();

    assert_eq!(incr.kind(), SnapshotKind::Incremental);
    assert_eq!(incr.tagged_pages(), 1);
    assert_eq!(incr.regions()[0].present(), &PageSet::Empty);
    assert_eq!(all_tags(&target), all_tags(&store));
}

#[test]
fn dirty_bitmap_count_must_match_regions() {
    let store = store_with_tagged(&[]);

    let result = TagSnapshot::capture_dirty(&store, &layout(), &[PageBitmap::new(8)]);

    assert!(matches!(result, Err(Error::DirtyBitmapMismatch)));
}

#[test]
fn dirty_bitmap_size_must_match_region() {
    let store = store_with_tagged(&[]);

    let result =
        TagSnapshot::capture_dirty(&store, &layout(), &[PageBitmap::new(8), PageBitmap::new(9)]);

    assert!(matches!(result, Err(Error::DirtyBitmapMismatch)));
}

#[test]
fn unaligned_capture_region_is_refused() {
    let store = store_with_tagged(&[]);

    let result = TagSnapshot::capture_full(&store, &[(GuestAddress(0x800), TAG_PAGE_SIZE)]);

    assert!(matches!(result, Err(Error::BadRegion { base: 0x800, .. })));
}

#[test]
fn restore_into_smaller_store_reports_store_error() {
    let snap = TagSnapshot::capture_full(&store_with_tagged(&[129]), &layout()).unwrap();
    let mut small = SoftwareTagStore::new(&[(GuestAddress(0), 8 * TAG_PAGE_SIZE)]).unwrap();

    let result = snap.restore(&mut small);

    assert!(matches!(
        result,
        Err(Error::Store(tags::Error::OutOfRange { .. }))
    ));
}

#[test]
fn truncated_snapshot_is_truncated() {
    let bytes = TagSnapshot::capture_full(&store_with_tagged(&[1]), &layout())
        .unwrap()
        .encode();

    let result = TagSnapshot::decode(&bytes[..bytes.len() - 1]);

    assert!(matches!(
        result,
        Err(Error::Header(HeaderError::Truncated { .. }))
    ));
}

#[test]
fn corrupted_tag_byte_is_bad_checksum() {
    let mut bytes = TagSnapshot::capture_full(&store_with_tagged(&[1]), &layout())
        .unwrap()
        .encode();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;

    assert!(matches!(
        TagSnapshot::decode(&bytes),
        Err(Error::Header(HeaderError::PayloadChecksumMismatch { .. }))
    ));
}

#[test]
fn foreign_file_is_bad_magic() {
    let bytes = b"\x7fELF\x02\x01\x01\0 not a tag snapshot at all, just bytes".to_vec();

    assert!(matches!(
        TagSnapshot::decode(&bytes),
        Err(Error::Header(HeaderError::BadMagic { .. }))
    ));
}

#[test]
fn newer_versions_are_refused_with_distinct_errors() {
    let bytes = TagSnapshot::capture_full(&store_with_tagged(&[]), &layout())
        .unwrap()
        .encode();
    let reseal = |at: usize| {
        let mut b = bytes.clone();
        b[at] += 1;
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    };

    assert!(matches!(
        TagSnapshot::decode(&reseal(8)),
        Err(Error::Header(HeaderError::UnsupportedMajor { .. }))
    ));
    assert!(matches!(
        TagSnapshot::decode(&reseal(10)),
        Err(Error::Header(HeaderError::UnsupportedMinor { .. }))
    ));
}

#[test]
fn oversized_payload_length_is_refused_before_allocation() {
    let mut bytes = TagSnapshot::capture_full(&store_with_tagged(&[]), &layout())
        .unwrap()
        .encode();
    bytes[16..24].copy_from_slice(&(MAX_PAYLOAD_LEN * 2).to_le_bytes());
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());

    assert!(matches!(
        TagSnapshot::decode(&bytes[..HEADER_LEN]),
        Err(Error::Header(HeaderError::Oversized { .. }))
    ));
}

#[test]
fn too_many_regions_is_oversized() {
    let bytes = TagSnapshot::capture_full(&store_with_tagged(&[]), &layout())
        .unwrap()
        .encode();

    let crafted = reseal(&bytes, |p| p[4..8].copy_from_slice(&u32::MAX.to_le_bytes()));

    assert!(matches!(
        TagSnapshot::decode(&crafted),
        Err(Error::Oversized { .. })
    ));
}

#[test]
fn huge_region_is_oversized() {
    let bytes = TagSnapshot::capture_full(&store_with_tagged(&[]), &layout())
        .unwrap()
        .encode();

    // Pages of the first region sit at payload offset 8 + 8.
    let crafted = reseal(&bytes, |p| {
        p[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes())
    });

    assert!(matches!(
        TagSnapshot::decode(&crafted),
        Err(Error::Oversized { .. })
    ));
}

#[test]
fn bitmap_larger_than_input_is_truncated_not_allocated() {
    let bytes = TagSnapshot::capture_full(&store_with_tagged(&[]), &layout())
        .unwrap()
        .encode();

    // Make the first region incremental-style with a bitmap it does not carry.
    let crafted = reseal(&bytes, |p| {
        p[0] = 1;
        p[16..24].copy_from_slice(&(1u64 << 30).to_le_bytes());
        p[24] = 2;
    });

    assert!(matches!(
        TagSnapshot::decode(&crafted),
        Err(Error::PayloadTruncated { .. })
    ));
}

#[test]
fn full_snapshot_with_partial_region_is_inconsistent() {
    let bytes = TagSnapshot::capture_full(&store_with_tagged(&[]), &layout())
        .unwrap()
        .encode();

    let crafted = reseal(&bytes, |p| p[24] = 0);

    assert!(matches!(
        TagSnapshot::decode(&crafted),
        Err(Error::Inconsistent(_))
    ));
}

#[test]
fn tagged_page_outside_present_set_is_inconsistent() {
    let store = store_with_tagged(&[]);
    let bytes = TagSnapshot::capture_dirty(
        &store,
        &layout(),
        &[PageBitmap::new(8), PageBitmap::new(PAGES)],
    )
    .unwrap()
    .encode();

    // First region: present empty, tagged all, with 8 packed pages supplied.
    let crafted = reseal(&bytes, |p| {
        p[25] = 1;
        let at = 8 + 24;
        p.splice(at..at, vec![0u8; 8 * PACKED_PAGE_LEN]);
    });

    assert!(matches!(
        TagSnapshot::decode(&crafted),
        Err(Error::Inconsistent(_))
    ));
}

#[test]
fn overlapping_regions_are_inconsistent() {
    let bytes = TagSnapshot::capture_full(&store_with_tagged(&[]), &layout())
        .unwrap()
        .encode();

    // Move the second region's base into the first region.
    let crafted = reseal(&bytes, |p| {
        p[32..40].copy_from_slice(&0x1000u64.to_le_bytes())
    });

    assert!(matches!(
        TagSnapshot::decode(&crafted),
        Err(Error::Inconsistent(_))
    ));
}

#[test]
fn unknown_kind_and_trailing_bytes_are_inconsistent() {
    let bytes = TagSnapshot::capture_full(&store_with_tagged(&[]), &layout())
        .unwrap()
        .encode();

    let bad_kind = reseal(&bytes, |p| p[0] = 7);
    let trailing = reseal(&bytes, |p| p.push(0));
    let bad_mode = reseal(&bytes, |p| p[25] = 9);

    assert!(matches!(
        TagSnapshot::decode(&bad_kind),
        Err(Error::Inconsistent(_))
    ));
    assert!(matches!(
        TagSnapshot::decode(&trailing),
        Err(Error::Inconsistent(_))
    ));
    assert!(matches!(
        TagSnapshot::decode(&bad_mode),
        Err(Error::Inconsistent(_))
    ));
}

proptest! {
    #[test]
    fn any_tags_survive_full_save_and_restore(
        tagged in proptest::collection::btree_set(0u64..PAGES, 0..20),
        seed in any::<u8>(),
    ) {
        let mut source = SoftwareTagStore::new(&layout()).unwrap();
        for &p in &tagged {
            source
                .write_tags(GuestAddress(BASE + p * TAG_PAGE_SIZE), &page_tags(seed ^ p as u8))
                .unwrap();
        }

        let snap = TagSnapshot::decode(&TagSnapshot::capture_full(&source, &layout()).unwrap().encode()).unwrap();
        let mut target = SoftwareTagStore::new(&layout()).unwrap();
        snap.restore(&mut target).unwrap();

        prop_assert_eq!(all_tags(&target), all_tags(&source));
        prop_assert_eq!(snap.tagged_pages(), tagged.len() as u64);
    }

    #[test]
    fn full_then_incremental_equals_final_state(
        first in proptest::collection::btree_set(0u64..PAGES, 0..10),
        dirtied in proptest::collection::btree_map(0u64..PAGES, any::<bool>(), 0..10),
    ) {
        let mut source = SoftwareTagStore::new(&layout()).unwrap();
        for &p in &first {
            source.write_tags(GuestAddress(BASE + p * TAG_PAGE_SIZE), &page_tags(p as u8)).unwrap();
        }
        let full = TagSnapshot::capture_full(&source, &layout()).unwrap().encode();
        let mut dirty = PageBitmap::new(PAGES);
        for (&p, &tag) in &dirtied {
            let tags = if tag { page_tags(!(p as u8)) } else { vec![0; TAGS_PER_PAGE] };
            source.write_tags(GuestAddress(BASE + p * TAG_PAGE_SIZE), &tags).unwrap();
            dirty.insert(p);
        }
        let incr = TagSnapshot::capture_dirty(&source, &layout(), &[PageBitmap::new(8), dirty])
            .unwrap()
            .encode();

        let mut target = SoftwareTagStore::new(&layout()).unwrap();
        TagSnapshot::decode(&full).unwrap().restore(&mut target).unwrap();
        TagSnapshot::decode(&incr).unwrap().restore(&mut target).unwrap();

        prop_assert_eq!(all_tags(&target), all_tags(&source));
    }

    #[test]
    fn arbitrary_bytes_never_panic_decode(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = TagSnapshot::decode(&bytes);
    }

    #[test]
    fn arbitrary_payload_behind_valid_header_never_panics(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let bytes = FORMAT.seal(&payload).unwrap();

        if let Ok(snap) = TagSnapshot::decode(&bytes) {
            prop_assert_eq!(TagSnapshot::decode(&snap.encode()).unwrap(), snap);
        }
    }
}
