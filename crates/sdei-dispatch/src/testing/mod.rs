//! Test harness for code that drives a [`Dispatcher`](crate::Dispatcher) (feature
//! `test-utils`, off by default; not part of the stable API).
//!
//! One copy of the scaffolding that this crate's integration tests, the `sdei-migration` tests
//! and the `sdei_sequences` fuzz target share:
//! - the test VM: a small event [`config`] and its event numbers ([`EVENTS`] and friends);
//! - [`Vm`]: a dispatcher with one in-memory [`InMemoryRegisters`](crate::InMemoryRegisters) per vCPU,
//!   and helpers that load an SDEI call into the registers and run it;
//! - [`Op`]: one step of a generated sequence (a call, a VMM raise, a dispatch, a reset, ...),
//!   which [`Vm::step`] runs as it is and [`Model::step`] runs with its invariants checked.
//!
//! Generators of sequences (proptest strategies, fuzzer input decoders) stay with their users.
//! The module builds without `std`, like the rest of the crate.
//!
//! ```toml
//! [dev-dependencies]
//! sdei-dispatch = { version = "0.1", features = ["test-utils"] }
//! ```

mod model;
mod op;
mod vm;

pub use model::Model;
pub use op::{Call, Op};
pub use vm::Vm;

use crate::config::{EVENT_0, PRIVATE_BIND_BASE, SHARED_BIND_BASE, VMM_EVENT_FIRST};
use crate::{BindSlots, DispatcherConfig, EventDecl, EventKind, Priority};

/// Private, normal-priority VMM event.
pub const PRIV_NORMAL: u32 = VMM_EVENT_FIRST;
/// Private, critical-priority VMM event.
pub const PRIV_CRITICAL: u32 = VMM_EVENT_FIRST + 1;
/// Shared, normal-priority VMM event.
pub const SHARED_NORMAL: u32 = VMM_EVENT_FIRST + 2;
/// Shared, critical-priority VMM event.
pub const SHARED_CRITICAL: u32 = VMM_EVENT_FIRST + 3;
/// The (only) private bind slot.
pub const PRIV_SLOT0: u32 = PRIVATE_BIND_BASE;
/// The (only) shared bind slot.
pub const SHARED_SLOT0: u32 = SHARED_BIND_BASE;
/// Every event of the test VM: event 0, the four VMM events, and both bind slots. [`Op`]s
/// name events by their index here.
pub const EVENTS: [u32; 7] = [
    EVENT_0,
    PRIV_NORMAL,
    PRIV_CRITICAL,
    SHARED_NORMAL,
    SHARED_CRITICAL,
    PRIV_SLOT0,
    SHARED_SLOT0,
];
/// The INTIDs the guest may bind: two PPIs, then two SPIs.
pub const BINDABLE_INTERRUPTS: [u32; 4] = [BINDABLE_PPI, 24, BINDABLE_SPI, 41];
/// A bindable PPI.
pub const BINDABLE_PPI: u32 = 23;
/// A bindable SPI.
pub const BINDABLE_SPI: u32 = 40;
/// The handler entry point the helpers and [`Op::Ready`] register.
pub const HANDLER: u64 = 0x4000_8000;

/// The test VM's configuration for `vcpus` vCPUs: the four VMM events, the
/// [`BINDABLE_INTERRUPTS`], one bind slot of each kind, no MTE. Users adjust the fields they
/// need (`mte_tco`, `vendor_id`) on the returned value.
pub fn config(vcpus: usize) -> DispatcherConfig {
    let decl = |number, kind, priority| EventDecl {
        number,
        kind,
        priority,
    };
    let mut config = DispatcherConfig::new(vcpus);
    config.events = alloc::vec![
        decl(PRIV_NORMAL, EventKind::Private, Priority::Normal),
        decl(PRIV_CRITICAL, EventKind::Private, Priority::Critical),
        decl(SHARED_NORMAL, EventKind::Shared, Priority::Normal),
        decl(SHARED_CRITICAL, EventKind::Shared, Priority::Critical),
    ];
    config.bindable_interrupts = BINDABLE_INTERRUPTS.to_vec();
    config.bind_slots = BindSlots {
        private: 1,
        shared: 1,
    };
    config.vendor_id = 0x5644_4D00;
    config
}
