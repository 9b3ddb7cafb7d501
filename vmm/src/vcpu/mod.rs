//! vCPUs: creation, boot registers and the run loop (`run`, aarch64), and their saved state:
//! [`state`] (the plain `VcpuState`, its file and checks; host-buildable, fuzzed) and its
//! save and restore through KVM (`persist`, aarch64: [`crate::persist::Persist`] for `Vcpu`).

pub mod state;

#[cfg(target_arch = "aarch64")]
mod persist;
#[cfg(target_arch = "aarch64")]
mod run;

#[cfg(target_arch = "aarch64")]
pub use run::*;
