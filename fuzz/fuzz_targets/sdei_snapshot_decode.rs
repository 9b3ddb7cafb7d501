//! Fuzzes the SDEI snapshot decoder: arbitrary bytes through header parsing, checksum,
//! payload decoding, the wire-to-state conversion and `Dispatcher::restore`.
//!
//! Needs, in fuzz/Cargo.toml: `libfuzzer-sys`, `sdei-migration = { path = "../crates/sdei-migration" }`
//! and a `[[bin]] name = "sdei_snapshot_decode"` entry. Seed the corpus with
//! `crates/sdei-migration/tests/golden/sdei-v1.0.bin`. The same entry point runs the corpus as
//! an ordinary test in `crates/sdei-migration/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Errors are expected; a panic (including the round-trip checks inside) is a bug.
    let _ = sdei_migration::fuzz_decode(data);
});
