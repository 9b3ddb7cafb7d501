//! cargo-fuzz target `virtio_blk`: the logic is `fuzz_common::run_virtio_blk`, which the stable corpus
//! tests in `fuzz/common/tests/corpus.rs` run on every committed input too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_common::run_virtio_blk(data));
