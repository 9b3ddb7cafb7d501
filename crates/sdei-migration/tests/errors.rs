//! Every way a snapshot can be refused gets its own clear error, and no input panics.

mod common;

use std::io::Read;

use common::*;
use proptest::prelude::*;
use sdei_dispatch::{Dispatcher, DispatcherConfig, RestoreError};
use sdei_migration::{
    fuzz_decode, load, save, ConfigMismatch, HeaderError, Snapshot, SnapshotError, SnapshotHeader,
    FLAG_OPTIONAL_ONLY, FORMAT, FORMAT_MINOR, HEADER_LEN, MAX_PAYLOAD_LEN,
};

fn valid() -> Vec<u8> {
    save(&golden_vm().sdei).unwrap()
}

/// Rebuilds a snapshot around `payload` with a header that matches it.
fn with_payload(header: SnapshotHeader, payload: &[u8]) -> Vec<u8> {
    let header = SnapshotHeader {
        payload_len: payload.len() as u64,
        payload_crc: crc32fast::hash(payload),
        ..header
    };
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn header_of(bytes: &[u8]) -> SnapshotHeader {
    FORMAT.parse(bytes).unwrap()
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let bytes = valid();

    for len in 0..bytes.len() {
        let err = Snapshot::decode(&bytes[..len]).unwrap_err();
        let needed = if len < HEADER_LEN {
            HEADER_LEN
        } else {
            bytes.len()
        } as u64;
        assert!(
            matches!(err, SnapshotError::Header(HeaderError::Truncated { needed: n, available }) if n == needed && available == len as u64),
            "{len}: {err}"
        );
    }
}

#[test]
fn wrong_magic_is_reported_as_not_a_snapshot() {
    let mut bytes = valid();
    bytes[..8].copy_from_slice(b"QEMU\0\0\0\0");

    let err = Snapshot::decode(&bytes).unwrap_err();

    assert!(
        matches!(err, SnapshotError::Header(HeaderError::BadMagic { found, expected: sdei_migration::MAGIC }) if &found == b"QEMU\0\0\0\0")
    );
    assert_eq!(
        err.to_string(),
        "Input has bad magic \"QEMU\\x00\\x00\\x00\\x00\" (expected \"SDEISNAP\")"
    );
}

#[test]
fn damaged_payload_fails_its_checksum() {
    let mut bytes = valid();
    bytes[HEADER_LEN + 40] ^= 0x01;

    let err = Snapshot::decode(&bytes).unwrap_err();

    assert!(
        matches!(err, SnapshotError::Header(HeaderError::PayloadChecksumMismatch { stored, computed }) if stored != computed)
    );
}

#[test]
fn damaged_header_fails_its_checksum() {
    let mut bytes = valid();
    bytes[24] ^= 0x80; // The stored payload CRC.

    let err = Snapshot::decode(&bytes).unwrap_err();

    assert!(matches!(
        err,
        SnapshotError::Header(HeaderError::HeaderChecksumMismatch { .. })
    ));
}

#[test]
fn oversized_payload_is_refused_before_reading_it() {
    let header = SnapshotHeader {
        payload_len: MAX_PAYLOAD_LEN + 1,
        ..header_of(&valid())
    };
    // An endless stream behind the header: reading the payload would never end.
    let stream = std::io::Cursor::new(header.to_bytes()).chain(std::io::repeat(0));

    let from_bytes = Snapshot::decode(&header.to_bytes()).unwrap_err();
    let from_stream = Snapshot::read_from(stream).unwrap_err();

    for err in [from_bytes, from_stream] {
        assert!(
            matches!(err, SnapshotError::Header(HeaderError::Oversized { len, max: MAX_PAYLOAD_LEN }) if len == MAX_PAYLOAD_LEN + 1)
        );
    }
}

#[test]
fn newer_major_is_refused() {
    let mut header = header_of(&valid());
    header.major = 2;

    let err = Snapshot::decode(&header.to_bytes()).unwrap_err();

    assert_eq!(
        err.to_string(),
        "Snapshot format major version 2 is not supported (this reader reads 1)"
    );
}

#[test]
fn newer_minor_with_required_data_is_refused() {
    let bytes = valid();
    let header = SnapshotHeader {
        minor: FORMAT_MINOR + 1,
        ..header_of(&bytes)
    };

    let err = Snapshot::decode(&with_payload(header, &bytes[HEADER_LEN..])).unwrap_err();

    assert!(
        matches!(err, SnapshotError::Header(HeaderError::UnsupportedMinor { major: 1, found, supported: FORMAT_MINOR }) if found == FORMAT_MINOR + 1)
    );
}

#[test]
fn newer_minor_adding_only_optional_sections_loads() {
    let bytes = valid();
    let mut payload = bytes[HEADER_LEN..].to_vec();
    for (tag, data) in [(7u16, &b"future"[..]), (0x0100, &[][..])] {
        payload.extend_from_slice(&tag.to_le_bytes());
        payload.extend_from_slice(&(data.len() as u32).to_le_bytes());
        payload.extend_from_slice(data);
    }
    let header = SnapshotHeader {
        minor: FORMAT_MINOR + 3,
        flags: FLAG_OPTIONAL_ONLY | 1 << 4,
        ..header_of(&bytes)
    };

    let restored = load(&with_payload(header, &payload), config(3)).unwrap();

    assert_eq!(restored.state(), golden_vm().sdei.state());
}

#[test]
fn optional_section_running_past_the_payload_is_malformed() {
    let bytes = valid();
    let mut payload = bytes[HEADER_LEN..].to_vec();
    payload.extend_from_slice(&[7, 0, 10, 0, 0, 0, 1, 2]); // Announces 10 bytes, holds 2.
    let header = SnapshotHeader {
        minor: FORMAT_MINOR + 1,
        flags: FLAG_OPTIONAL_ONLY,
        ..header_of(&bytes)
    };

    let err = Snapshot::decode(&with_payload(header, &payload)).unwrap_err();

    assert!(matches!(
        err,
        SnapshotError::Malformed("optional section length")
    ));
}

#[test]
fn section_in_a_snapshot_of_a_known_minor_is_refused() {
    let bytes = valid();
    let mut payload = bytes[HEADER_LEN..].to_vec();
    payload.extend_from_slice(&[9, 0, 0, 0, 0, 0]);

    let err = Snapshot::decode(&with_payload(header_of(&bytes), &payload)).unwrap_err();

    assert!(matches!(err, SnapshotError::UnknownSection(9)));
}

#[test]
fn bytes_after_the_payload_are_refused() {
    let mut bytes = valid();
    bytes.extend_from_slice(&[0, 0, 0]);

    let err = Snapshot::decode(&bytes).unwrap_err();

    assert!(matches!(
        err,
        SnapshotError::Header(HeaderError::TrailingBytes(3))
    ));
}

#[test]
fn payload_that_is_not_the_format_fails_to_decode() {
    // Passes the checksum, but a vCPU count varint that never ends is no postcard encoding.
    let payload = [0xFF; 12];

    let err = Snapshot::decode(&with_payload(header_of(&valid()), &payload)).unwrap_err();

    assert!(matches!(err, SnapshotError::Decode(_)), "{err:?}");
}

#[test]
fn unreachable_state_is_refused_by_the_dispatcher() {
    let mut state = golden_vm().sdei.state();
    state.vcpus[0].critical = None; // PRIV_CRITICAL runs on vCPU 0 without a saved frame.
    let bytes = Snapshot::from_state(state).encode().unwrap();

    let err = load(&bytes, config(3)).unwrap_err();

    assert!(
        matches!(
            err,
            SnapshotError::Invalid(RestoreError::Frames { vcpu: 0 })
        ),
        "{err:?}"
    );
}

#[test]
fn invalid_configuration_in_the_snapshot_is_refused() {
    let mut state = Dispatcher::new(DispatcherConfig::new(1)).unwrap().state();
    state.config.vcpus = 0;
    state.vcpus.clear();
    let bytes = Snapshot::from_state(state).encode().unwrap();

    let err = Dispatcher::try_from(Snapshot::decode(&bytes).unwrap()).unwrap_err();

    assert!(
        matches!(err, SnapshotError::Invalid(RestoreError::Config(_))),
        "{err:?}"
    );
}

#[test]
fn restoring_into_another_vm_names_the_difference() {
    let bytes = valid();
    let mut other_events = config(3);
    other_events.events.swap(0, 1);
    let mut other_slots = config(3);
    other_slots.bind_slots.private = 2;

    let cases = [
        (config(2), "snapshot has 3 vCPUs, this VM has 2"),
        (
            other_events,
            "declared event 0 is 0x1000000 (private, normal) in the snapshot, \
             0x1000001 (private, critical) in this VM",
        ),
        (
            other_slots,
            "snapshot has 1 private and 1 shared bind slots, this VM has 2 and 1",
        ),
    ];
    for (vm, message) in cases {
        let err = load(&bytes, vm).unwrap_err();
        assert!(matches!(err, SnapshotError::ConfigMismatch(_)));
        assert_eq!(
            err.to_string(),
            format!("Snapshot does not fit this VM: {message}")
        );
    }
}

#[test]
fn another_spelling_of_the_same_vm_restores() {
    let mut explicit = config(3);
    explicit.mpidrs = Some(vec![0, 1, 2]);
    explicit.bindable_interrupts.reverse();

    let restored = load(&valid(), explicit.clone()).unwrap();

    assert_eq!(restored.config(), &explicit);
    assert_eq!(ConfigMismatch::find(&config(3), &explicit), None);
}

#[test]
fn stream_round_trip_reads_exactly_one_snapshot() {
    let snapshot = Snapshot::capture(&golden_vm().sdei);
    let mut stream = Vec::new();
    snapshot.write_to(&mut stream).unwrap();
    stream.extend_from_slice(b"next");
    let mut reader = std::io::Cursor::new(stream);

    let read = Snapshot::read_from(&mut reader).unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();

    assert_eq!(read, snapshot);
    assert_eq!(rest, b"next");
}

#[test]
fn truncated_stream_is_reported_as_truncated() {
    let bytes = valid();

    let err = Snapshot::read_from(&bytes[..bytes.len() - 5]).unwrap_err();

    assert!(
        matches!(err, SnapshotError::Header(HeaderError::Truncated { needed, available }) if needed == bytes.len() as u64 && available == needed - 5)
    );
}

#[test]
fn each_failure_has_its_own_message() {
    let bytes = valid();
    let mut bad_magic = bytes.clone();
    bad_magic[0] = 0;
    let mut bad_crc = bytes.clone();
    bad_crc[HEADER_LEN] ^= 1;
    let mut bad_header = bytes.clone();
    bad_header[20] = 1;
    let newer = |major, minor| {
        SnapshotHeader {
            major,
            minor,
            ..header_of(&bytes)
        }
        .to_bytes()
        .to_vec()
    };
    let oversized = SnapshotHeader {
        payload_len: u64::MAX,
        ..header_of(&bytes)
    };
    let mut trailing = bytes.clone();
    trailing.push(0);
    let decode = with_payload(header_of(&bytes), &[0xFF; 12]);

    let inputs = [
        bytes[..10].to_vec(),
        bad_magic,
        bad_header,
        newer(2, 0),
        newer(1, FORMAT_MINOR + 1),
        oversized.to_bytes().to_vec(),
        bad_crc,
        trailing,
        decode,
    ];
    let mut variants: Vec<String> = inputs
        .iter()
        .map(|input| {
            let err = format!("{:?}", Snapshot::decode(input).unwrap_err());
            // The header's refusals are told apart by their `HeaderError` variant.
            err.strip_prefix("Header(")
                .unwrap_or(&err)
                .split([' ', '(', '{'])
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    let total = variants.len();
    variants.sort();
    variants.dedup();

    assert_eq!(variants.len(), total, "{variants:?}");
}

#[test]
fn largest_configuration_fits_the_payload_cap() {
    use sdei_dispatch::config::{MAX_BIND_SLOTS, MAX_DECLARED_EVENTS, MAX_VCPUS, VMM_EVENT_LAST};
    use sdei_dispatch::state::{HandlerFrame, Routing, SavedContext};
    use sdei_dispatch::{BindSlots, EventDecl, EventKind, HandlerState, Priority};

    // Every count at the dispatcher's maximum, every value at its widest encoding.
    let mut config = DispatcherConfig::new(MAX_VCPUS);
    config.mpidrs = Some((0..MAX_VCPUS as u64).map(|i| 0xFF_0000_0000 | i).collect());
    config.events = (0..MAX_DECLARED_EVENTS as u32)
        .map(|i| EventDecl {
            number: VMM_EVENT_LAST - i,
            kind: EventKind::Private,
            priority: Priority::Critical,
        })
        .collect();
    config.bindable_interrupts = (16..=1019).collect();
    config.bind_slots = BindSlots {
        private: MAX_BIND_SLOTS,
        shared: MAX_BIND_SLOTS,
    };
    config.vendor_id = u32::MAX;
    let mut state = Dispatcher::new(config).unwrap().state();
    let wide = |e: &mut sdei_dispatch::state::EventEntry| {
        e.state = HandlerState::new(true, true, true);
        e.entry_point = u64::MAX;
        e.argument = u64::MAX;
        e.pending = true;
    };
    let frame = HandlerFrame {
        event: VMM_EVENT_LAST,
        context: SavedContext {
            x: [u64::MAX; 18],
            pc: u64::MAX,
            pstate: u64::MAX,
        },
    };
    for vcpu in &mut state.vcpus {
        vcpu.private_events.iter_mut().for_each(wide);
        (vcpu.normal, vcpu.critical) = (Some(frame), Some(frame));
    }
    for shared in &mut state.shared_events {
        wide(&mut shared.entry);
        shared.routing = Routing::Pe(0xFF_0000_0000 | (MAX_VCPUS as u64 - 1));
        shared.running_on = Some(MAX_VCPUS - 1);
    }
    state
        .private_bindings
        .iter_mut()
        .for_each(|b| *b = Some(1019));
    state
        .shared_bindings
        .iter_mut()
        .for_each(|b| *b = Some(1019));

    let bytes = Snapshot::from_state(state).encode().unwrap();

    let payload = bytes.len() - HEADER_LEN;
    println!("largest payload: {payload} bytes, cap {MAX_PAYLOAD_LEN}");
    assert!(payload as u64 <= MAX_PAYLOAD_LEN);
    assert!(
        payload as u64 > MAX_PAYLOAD_LEN / 2,
        "the cap is not wildly loose"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = fuzz_decode(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(
        payload in prop::collection::vec(any::<u8>(), 0..600),
        minor in 0..3u16,
        flags in 0..4u32,
    ) {
        let header = SnapshotHeader { minor, flags, ..header_of(&valid()) };
        let _ = fuzz_decode(&with_payload(header, &payload));
    }

    #[test]
    fn mutated_snapshots_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        fix_checksums in any::<bool>(),
    ) {
        let bytes = valid();
        let mut payload = bytes[HEADER_LEN..].to_vec();
        let mut whole = bytes.clone();
        for (at, value) in &edits {
            if fix_checksums {
                let i = at.index(payload.len());
                payload[i] = *value;
            } else {
                let i = at.index(whole.len());
                whole[i] = *value;
            }
        }
        let input = if fix_checksums { with_payload(header_of(&bytes), &payload) } else { whole };

        let result = fuzz_decode(&input);

        if !fix_checksums && input != bytes {
            prop_assert!(result.is_err(), "a mutation without fixed checksums is caught");
        }
    }
}
