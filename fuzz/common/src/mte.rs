//! Target `mte_tag_snapshot_decode`: the MTE tag-snapshot decoder of `mte-memory`.
//!
//! Each input is decoded as given and with its header's payload length and both CRC32s
//! recomputed (random bytes rarely carry valid checksums). A decoded snapshot must re-encode
//! to the same payload (every field of the format is checked, so the encoding is canonical),
//! to the exact input bytes if its header is the current version's, and to a snapshot that
//! decodes to it in any case (format 1.0, newer minors).
//! A small one is also restored into a [`SoftwareTagStore`]: pages it does not tag must read
//! back as zero tags, and capturing the restored pages and restoring that capture elsewhere
//! must give the same tags.

use crate::header::{minor_and_flags, with_valid_checksums, HEADER_LEN};
use mte_memory::snapshot::header::FORMAT_MINOR;
use mte_memory::{PageBitmap, SnapshotKind, SoftwareTagStore, TagSnapshot, TagStore};
use mte_memory::{TAGS_PER_PAGE, TAG_PAGE_SIZE};
use vm_memory::GuestAddress;

/// Largest snapshot (in pages over all regions) that is restored into a store.
pub const MAX_RESTORED_PAGES: u64 = 1024;

fn regions_of(snapshot: &TagSnapshot) -> Vec<(GuestAddress, u64)> {
    snapshot
        .regions()
        .iter()
        .map(|r| (r.base(), r.pages() * TAG_PAGE_SIZE))
        .collect()
}

fn all_tags(store: &SoftwareTagStore, regions: &[(GuestAddress, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(base, size) in regions {
        let mut tags = vec![0u8; (size / TAG_PAGE_SIZE) as usize * TAGS_PER_PAGE];
        store
            .read_tags(base, &mut tags)
            .expect("a store reads back its own regions");
        out.extend_from_slice(&tags);
    }
    out
}

/// Restores `snapshot` into a fresh store and checks it against a capture of that store.
fn check_restore(snapshot: &TagSnapshot) {
    let regions = regions_of(snapshot);
    let mut store = SoftwareTagStore::new(&regions).expect("decoded regions form a valid layout");
    snapshot
        .restore(&mut store)
        .expect("a decoded snapshot restores into a store of its own layout");
    for (region, &(base, _)) in snapshot.regions().iter().zip(&regions) {
        let mut tags = vec![0u8; TAGS_PER_PAGE];
        for page in (0..region.pages()).filter(|p| !region.tagged().contains(*p)) {
            store
                .read_tags(GuestAddress(base.0 + page * TAG_PAGE_SIZE), &mut tags)
                .expect("a store reads back its own regions");
            assert!(
                tags.iter().all(|t| *t == 0),
                "untagged page {page} has tags"
            );
        }
    }
    let again = match snapshot.kind() {
        SnapshotKind::Full => TagSnapshot::capture_full(&store, &regions),
        SnapshotKind::Incremental => {
            let dirty: Vec<PageBitmap> = snapshot
                .regions()
                .iter()
                .map(|r| {
                    let mut bits = PageBitmap::new(r.pages());
                    (0..r.pages())
                        .filter(|p| r.present().contains(*p))
                        .for_each(|p| bits.insert(p));
                    bits
                })
                .collect();
            TagSnapshot::capture_dirty(&store, &regions, &dirty)
        }
    }
    .expect("capturing a store's own regions succeeds");
    let mut other = SoftwareTagStore::new(&regions).expect("same layout");
    again.restore(&mut other).expect("a capture restores");
    assert_eq!(
        all_tags(&store, &regions),
        all_tags(&other, &regions),
        "capture of a restored snapshot restores different tags"
    );
}

fn check(data: &[u8]) {
    let Ok(snapshot) = TagSnapshot::decode(data) else {
        return;
    };
    let again = snapshot.encode();
    let (minor, flags) = minor_and_flags(data);
    if minor <= FORMAT_MINOR {
        // Every payload field is checked, so the payload's encoding is canonical (a 1.0 file
        // gets a 1.1 header; a flag of a known minor is dropped).
        assert_eq!(
            again[HEADER_LEN..],
            data[HEADER_LEN..],
            "a decoded snapshot re-encodes to another payload"
        );
    }
    if minor == FORMAT_MINOR && flags == 0 {
        assert_eq!(again, data, "a decoded snapshot re-encodes differently");
    }
    assert_eq!(
        TagSnapshot::decode(&again).ok().as_ref(),
        Some(&snapshot),
        "a re-encoded snapshot decodes to another"
    );
    let pages: u64 = snapshot.regions().iter().map(|r| r.pages()).sum();
    if pages <= MAX_RESTORED_PAGES {
        check_restore(&snapshot);
    }
}

/// Decodes `data` as given and with a valid checksum, checking every snapshot that decodes.
///
/// # Panics
///
/// If a decoded snapshot re-encodes differently or restores inconsistently.
pub fn run_mte_tag_snapshot_decode(data: &[u8]) {
    check(data);
    if let Some(fixed) = with_valid_checksums(data) {
        check(&fixed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixing_the_checksum_keeps_a_valid_snapshot_unchanged() {
        let regions = [(GuestAddress(0x4000_0000), 4 * TAG_PAGE_SIZE)];
        let store = SoftwareTagStore::new(&regions).unwrap();
        let bytes = TagSnapshot::capture_full(&store, &regions)
            .unwrap()
            .encode();

        let fixed = with_valid_checksums(&bytes).unwrap();

        assert_eq!(fixed, bytes);
    }

    #[test]
    fn a_damaged_payload_with_a_fixed_checksum_decodes_past_the_header() {
        let regions = [(GuestAddress(0x4000_0000), 4 * TAG_PAGE_SIZE)];
        let store = SoftwareTagStore::new(&regions).unwrap();
        let mut bytes = TagSnapshot::capture_full(&store, &regions)
            .unwrap()
            .encode();
        bytes[HEADER_LEN] = 7; // Unknown snapshot kind.

        let as_given = TagSnapshot::decode(&bytes).unwrap_err();
        let fixed = TagSnapshot::decode(&with_valid_checksums(&bytes).unwrap()).unwrap_err();

        assert!(as_given.to_string().contains("checksum"), "{as_given}");
        assert!(fixed.to_string().contains("kind"), "{fixed}");
    }
}
