//! Versioned, validated snapshots of an [`sdei_dispatch::Dispatcher`] for live migration.
//!
//! A [`Snapshot`] holds the dispatcher's complete state: configuration, shared events,
//! every vCPU's private events, masks, pending events, running handlers of both priorities
//! with their saved contexts, and bind slots. [`Snapshot::encode`] writes it in a stable
//! binary format: the fixed 32-byte [`SnapshotHeader`] every snapshot format of the arm64-vmm
//! workspace shares (magic, format major and minor version, flags, payload length, payload and
//! header CRC32), which [`FORMAT.parse`](SnapshotFormat::parse) reads without touching the
//! payload, then a postcard payload of wire types this crate owns. [`Snapshot::decode`]
//! refuses damaged, truncated, foreign, oversized and too-new input with a distinct error
//! ([`SnapshotError::Header`] for everything the header rules refuse); [`Snapshot::restore`]
//! refuses a snapshot of a VM configured differently, and a state the dispatcher's state
//! machine could never reach.
//!
//! Versioning: another major version is refused; a newer minor version only if its header
//! flags say it adds nothing but optional sections; every older minor loads. These are the
//! workspace's snapshot-header rules, specified once in `docs/snapshot-format.md`; the
//! [`header`] module holds their code (the same as mte-memory's), which a VMM can use for
//! snapshot files of its own. The crate README has this format's payload.
//!
//! # Example
//!
//! ```
//! use sdei_dispatch::abi::Function;
//! use sdei_dispatch::{Dispatcher, DispatcherConfig, InMemoryRegisters};
//! use sdei_migration::{Snapshot, SnapshotError};
//!
//! // Source: vCPU 1 runs the handler of event 0.
//! let mut source = Dispatcher::new(DispatcherConfig::new(2))?;
//! let mut regs = InMemoryRegisters::default();
//! for (function, args) in [
//!     (Function::EventRegister, &[0, 0x8000, 0, 0, 0][..]),
//!     (Function::EventEnable, &[0][..]),
//!     (Function::PeUnmask, &[][..]),
//! ] {
//!     regs.load_call(function.id(), args);
//!     source.handle_call(1, &mut regs)?;
//! }
//! source.raise(0, Some(1))?;
//! regs.pc = 0x4444;
//! source.dispatch_pending(1, &mut regs)?;
//!
//! // Save, and restore on a destination VM with the same configuration.
//! let bytes = Snapshot::capture(&source).encode()?;
//! let mut destination = Snapshot::decode(&bytes)?.restore(DispatcherConfig::new(2))?;
//! regs.load_call(Function::EventComplete.id(), &[0]);
//! destination.handle_call(1, &mut regs)?;
//! assert_eq!(regs.pc, 0x4444);
//!
//! // A VM with another vCPU count is refused, naming the difference.
//! let err = Snapshot::decode(&bytes)?.restore(DispatcherConfig::new(4)).unwrap_err();
//! assert!(matches!(err, SnapshotError::ConfigMismatch(_)));
//! assert_eq!(err.to_string(), "Snapshot does not fit this VM: snapshot has 2 vCPUs, this VM has 4");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod error;
pub mod header;
mod mismatch;
mod snapshot;
mod wire;

pub use error::{Result, SnapshotError};
pub use header::{
    HeaderError, SnapshotFormat, SnapshotHeader, FLAG_OPTIONAL_ONLY, FORMAT, FORMAT_MAJOR,
    FORMAT_MINOR, HEADER_LEN, MAGIC, MAX_PAYLOAD_LEN,
};
pub use mismatch::ConfigMismatch;
pub use snapshot::Snapshot;

use sdei_dispatch::{Dispatcher, DispatcherConfig};

/// Captures and encodes `dispatcher`: `Snapshot::capture(dispatcher).encode()`.
pub fn save(dispatcher: &Dispatcher) -> Result<Vec<u8>> {
    Snapshot::capture(dispatcher).encode()
}

/// Decodes `bytes` and restores them for a VM configured as `config`:
/// `Snapshot::decode(bytes)?.restore(config)`.
pub fn load(bytes: &[u8], config: DispatcherConfig) -> Result<Dispatcher> {
    Snapshot::decode(bytes)?.restore(config)
}

/// The decoder's fuzzing entry point, shared by the cargo-fuzz target and the corpus tests.
///
/// Decodes `data`; if that succeeds, restores the snapshot under its own configuration, and
/// checks that a successfully decoded snapshot survives re-encoding and that a restored one
/// captures back to the same state. Returns the first error met.
///
/// # Panics
///
/// Only if one of those checks fails, which is a bug in this crate: arbitrary `data` never
/// panics otherwise.
#[cfg(feature = "test-utils")]
pub fn fuzz_decode(data: &[u8]) -> Result<()> {
    let snapshot = Snapshot::decode(data)?;
    let again = Snapshot::decode(&snapshot.encode()?);
    assert_eq!(
        again.as_ref().ok(),
        Some(&snapshot),
        "re-encoded snapshot differs"
    );
    let dispatcher = Dispatcher::try_from(snapshot.clone())?;
    assert_eq!(
        Snapshot::capture(&dispatcher),
        snapshot,
        "restored dispatcher holds another state"
    );
    Ok(())
}

/// Runs the README's examples as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
