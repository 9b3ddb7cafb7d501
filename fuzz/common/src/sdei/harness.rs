//! The VM the sequences run on: the shared test VM of `sdei_dispatch::testing` (event 0, one
//! VMM event of each kind and priority, one bind slot of each kind) with three vCPUs and MTE.

use sdei_dispatch::testing::BINDABLE_INTERRUPTS;
use sdei_dispatch::DispatcherConfig;

pub use sdei_dispatch::testing::{
    EVENTS, HANDLER, PRIV_CRITICAL, PRIV_NORMAL, SHARED_CRITICAL, SHARED_NORMAL,
};

/// vCPUs of the harness VM.
pub const VCPUS: usize = 3;
/// INTIDs the VMM raises: two bindable PPIs, two bindable SPIs and one unbindable SPI.
pub const INTIDS: [u32; 5] = [
    BINDABLE_INTERRUPTS[0],
    BINDABLE_INTERRUPTS[1],
    BINDABLE_INTERRUPTS[2],
    BINDABLE_INTERRUPTS[3],
    99,
];

/// The harness dispatcher configuration.
pub fn config() -> DispatcherConfig {
    let mut config = sdei_dispatch::testing::config(VCPUS);
    config.mte_tco = true;
    config.vendor_id = 0x4655_5A5A;
    config
}
