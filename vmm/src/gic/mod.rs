//! The in-kernel GICv3: its creation (`device`, aarch64), its saved state ([`regs`], the
//! register tables; [`state`], the plain `GicState`, its encoding and checks; both
//! host-buildable and fuzzed) and its save and restore through KVM's device attributes
//! (`persist`, aarch64: [`crate::persist::Persist`] for `Gic`).

pub mod regs;
pub mod state;

#[cfg(target_arch = "aarch64")]
mod device;
#[cfg(target_arch = "aarch64")]
pub mod persist;

#[cfg(target_arch = "aarch64")]
pub use device::*;
