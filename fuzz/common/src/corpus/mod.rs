//! The seed corpora, generated from code: [`seeds`] lists every seed of every target and
//! [`write_all`] writes them to `<dir>/<target>/<name>`.
//!
//! Seeds are valid, realistic inputs (real router calls, SDEI sequences that register,
//! enable, raise, dispatch and complete handlers, snapshots of live dispatchers and tag
//! stores, accepted command lines and requests, virtio-pmem queues holding flush requests) and
//! a few damaged ones, so that the fuzzer starts deep inside each decoder.

mod components;
mod decoders;
mod headers;
mod mmio;
mod parsers;
mod sequences;
mod state;
mod virtio;

use std::path::{Path, PathBuf};

/// One seed input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The target it seeds (its directory under the corpus root).
    pub target: &'static str,
    /// File name.
    pub name: String,
    /// Contents.
    pub data: Vec<u8>,
}

impl Seed {
    fn new(target: &'static str, name: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Seed {
            target,
            name: name.into(),
            data: data.into(),
        }
    }
}

/// The committed corpus root: `fuzz/corpus`.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus")
}

/// The regression-input root: `fuzz/regressions` (inputs that once failed, kept forever).
pub fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../regressions")
}

/// Every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let mut all = Vec::new();
    all.extend(decoders::router_seeds());
    all.extend(sequences::sdei_sequence_seeds());
    all.extend(decoders::sdei_snapshot_seeds());
    all.extend(decoders::mte_snapshot_seeds());
    all.extend(parsers::cli_seeds());
    all.extend(parsers::api_seeds());
    all.extend(virtio::virtio_pmem_seeds());
    all.extend(virtio::virtio_rng_seeds());
    all.extend(virtio::virtio_blk_seeds());
    all.extend(decoders::refvmm_manifest_seeds());
    all.extend(parsers::api_framing_seeds());
    all.extend(state::gic_state_seeds());
    all.extend(state::vcpu_state_seeds());
    all.extend(mmio::mmio_sequence_seeds());
    all.extend(state::console_state_seeds());
    all.extend(components::component_seeds());
    all
}

/// Writes every seed under `root`, creating the target directories and removing files in
/// them that are no longer seeds; returns how many seeds were written.
pub fn write_all(root: &Path) -> std::io::Result<usize> {
    let seeds = seeds();
    for (target, _) in crate::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let stale = !seeds
                .iter()
                .any(|s| s.target == target && *name == *s.name.as_str());
            if stale && entry.path().is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    for seed in &seeds {
        let dir = root.join(seed.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&seed.name), &seed.data)?;
    }
    Ok(seeds.len())
}
