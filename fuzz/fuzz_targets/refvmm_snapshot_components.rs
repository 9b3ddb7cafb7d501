//! cargo-fuzz target `refvmm_snapshot_components`: the logic is `fuzz_common::run_refvmm_snapshot_components`, which the stable corpus
//! tests in `fuzz/common/tests/corpus.rs` run on every committed input too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::run_refvmm_snapshot_components(data));
