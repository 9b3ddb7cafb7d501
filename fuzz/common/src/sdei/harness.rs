//! The VM the sequences run on: three vCPUs, the architected event 0, one VMM event of each
//! kind and priority, and one bind slot of each kind.

use sdei_dispatch::config::{EVENT_0, PRIVATE_BIND_BASE, SHARED_BIND_BASE, VMM_EVENT_FIRST};
use sdei_dispatch::{BindSlots, DispatcherConfig, EventDecl, EventKind, Priority};

/// vCPUs of the harness VM.
pub const VCPUS: usize = 3;
/// Private, normal-priority VMM event.
pub const PRIV_NORMAL: u32 = VMM_EVENT_FIRST;
/// Private, critical-priority VMM event.
pub const PRIV_CRITICAL: u32 = VMM_EVENT_FIRST + 1;
/// Shared, normal-priority VMM event.
pub const SHARED_NORMAL: u32 = VMM_EVENT_FIRST + 2;
/// Shared, critical-priority VMM event.
pub const SHARED_CRITICAL: u32 = VMM_EVENT_FIRST + 3;
/// Every event of the harness: event 0, the four VMM events, and both bind slots.
pub const EVENTS: [u32; 7] = [
    EVENT_0,
    PRIV_NORMAL,
    PRIV_CRITICAL,
    SHARED_NORMAL,
    SHARED_CRITICAL,
    PRIVATE_BIND_BASE,
    SHARED_BIND_BASE,
];
/// INTIDs the VMM raises: two bindable PPIs, two bindable SPIs and one unbindable SPI.
pub const INTIDS: [u32; 5] = [23, 24, 40, 41, 99];
/// Handler address the seeds register.
pub const HANDLER: u64 = 0x4000_8000;

/// The harness dispatcher configuration.
pub fn config() -> DispatcherConfig {
    let mut config = DispatcherConfig::new(VCPUS);
    let decl = |number, kind, priority| EventDecl {
        number,
        kind,
        priority,
    };
    config.events = vec![
        decl(PRIV_NORMAL, EventKind::Private, Priority::Normal),
        decl(PRIV_CRITICAL, EventKind::Private, Priority::Critical),
        decl(SHARED_NORMAL, EventKind::Shared, Priority::Normal),
        decl(SHARED_CRITICAL, EventKind::Shared, Priority::Critical),
    ];
    config.bindable_interrupts = INTIDS[..4].to_vec();
    config.bind_slots = BindSlots {
        private: 1,
        shared: 1,
    };
    config.mte_tco = true;
    config.vendor_id = 0x4655_5A5A;
    config
}
