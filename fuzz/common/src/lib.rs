//! The logic of the arm64-vmm fuzz targets, as plain functions that build and run on the
//! stable toolchain.
//!
//! Each cargo-fuzz target in `fuzz/fuzz_targets/` is a one-line call to a `run_<target>`
//! function here; `tests/corpus.rs` runs the same functions on every committed corpus and
//! regression input, and [`corpus`] generates the seed corpora from code. A `run_` function
//! returns normally on any input the code under test handles correctly (errors included) and
//! panics when an invariant is broken: that is what the fuzzer looks for.
#![forbid(unsafe_code)]

pub mod corpus;
pub mod header;
pub mod migration;
pub mod mte;
pub mod refvmm_api;
pub mod refvmm_cli;
pub mod refvmm_components;
pub mod refvmm_mmio;
pub mod refvmm_snapshot;
pub mod refvmm_state;
pub mod router;
pub mod sdei;
pub mod virtio_blk;
pub mod virtio_pmem;
pub mod virtio_rng;

pub use migration::run_sdei_snapshot_decode;
pub use mte::run_mte_tag_snapshot_decode;
pub use refvmm_api::run_refvmm_api;
pub use refvmm_cli::run_refvmm_cli;
pub use refvmm_components::run_refvmm_snapshot_components;
pub use refvmm_mmio::run_refvmm_mmio_sequences;
pub use refvmm_snapshot::{run_refvmm_api_framing, run_refvmm_snapshot_manifest};
pub use refvmm_state::{run_refvmm_console_state, run_refvmm_gic_state, run_refvmm_vcpu_state};
pub use router::run_smccc_dispatch;
pub use sdei::run_sdei_sequences;
pub use virtio_blk::run_virtio_blk;
pub use virtio_pmem::run_virtio_pmem;
pub use virtio_rng::run_virtio_rng;

/// A fuzz target: its cargo-fuzz name and the function it runs.
pub type Target = (&'static str, fn(&[u8]));

/// Every fuzz target, by its cargo-fuzz name (the directory name under `fuzz/corpus/`).
pub const TARGETS: [Target; 16] = [
    ("smccc_dispatch", run_smccc_dispatch),
    ("sdei_sequences", run_sdei_sequences),
    ("sdei_snapshot_decode", run_sdei_snapshot_decode),
    ("mte_tag_snapshot_decode", run_mte_tag_snapshot_decode),
    ("refvmm_cli", run_refvmm_cli),
    ("refvmm_api", run_refvmm_api),
    ("virtio_pmem", run_virtio_pmem),
    ("refvmm_snapshot_manifest", run_refvmm_snapshot_manifest),
    ("refvmm_api_framing", run_refvmm_api_framing),
    ("refvmm_gic_state", run_refvmm_gic_state),
    ("refvmm_vcpu_state", run_refvmm_vcpu_state),
    ("refvmm_mmio_sequences", run_refvmm_mmio_sequences),
    ("refvmm_console_state", run_refvmm_console_state),
    ("refvmm_snapshot_components", run_refvmm_snapshot_components),
    ("virtio_blk", run_virtio_blk),
    ("virtio_rng", run_virtio_rng),
];
