//! Target `sdei_snapshot_decode`: the SDEI snapshot decoder of `sdei-migration`.
//!
//! Random bytes almost never carry valid CRC32s, so each input is decoded twice: as given,
//! and with its header's payload length and both checksums recomputed, which lets the fuzzer
//! reach the payload decoder and the state validation behind it.

use sdei_migration::fuzz_decode;

use crate::header::with_valid_checksums;

/// Runs [`sdei_migration::fuzz_decode`] on `data` and on `data` with valid checksums; it
/// panics only if a decoded snapshot fails to re-encode to itself or to restore to the
/// state it holds.
pub fn run_sdei_snapshot_decode(data: &[u8]) {
    // Errors are the expected answer to bad input; only a panic is a finding.
    let _ = fuzz_decode(data);
    if let Some(fixed) = with_valid_checksums(data) {
        let _ = fuzz_decode(&fixed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdei_dispatch::{Dispatcher, DispatcherConfig};

    #[test]
    fn fixing_checksums_keeps_a_valid_snapshot_unchanged() {
        let dispatcher = Dispatcher::new(DispatcherConfig::new(2)).unwrap();
        let bytes = sdei_migration::save(&dispatcher).unwrap();

        let fixed = with_valid_checksums(&bytes).unwrap();

        assert_eq!(fixed, bytes);
    }

    #[test]
    fn fixing_checksums_makes_a_damaged_payload_reach_the_decoder() {
        let dispatcher = Dispatcher::new(DispatcherConfig::new(2)).unwrap();
        let mut bytes = sdei_migration::save(&dispatcher).unwrap();
        bytes.truncate(bytes.len() - 1);

        let as_given = fuzz_decode(&bytes).unwrap_err();
        let fixed = fuzz_decode(&with_valid_checksums(&bytes).unwrap()).unwrap_err();

        assert!(matches!(
            as_given,
            sdei_migration::SnapshotError::Header(sdei_migration::HeaderError::Truncated { .. })
        ));
        assert!(
            !matches!(fixed, sdei_migration::SnapshotError::Header(_)),
            "{fixed:?}"
        );
    }
}
