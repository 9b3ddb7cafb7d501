//! refvmm as a library: the modules the `refvmm` binary composes. One module per concern:
//! [`config`] (command line → validated config), [`layout`] (the memory map), [`fdt`],
//! [`devices`] (MMIO bus, console, virtio-mmio and virtio-pmem), [`pmem_backing`] (the files
//! and memfds behind virtio-pmem devices), [`sandbox`] (per-thread seccomp filters), and on
//! aarch64
//! `memory`, `boot`, `vcpu`, `gic`, `eventloop` and `vm`, which talk to KVM.

pub mod api;
pub mod config;
pub mod devices;
pub mod fdt;
pub mod layout;
pub mod logger;
pub mod pmem_backing;
pub mod psci;
pub mod sandbox;

#[cfg(target_arch = "aarch64")]
pub mod boot;
#[cfg(target_arch = "aarch64")]
pub mod eventloop;
#[cfg(target_arch = "aarch64")]
pub mod gic;
#[cfg(target_arch = "aarch64")]
pub mod memory;
#[cfg(target_arch = "aarch64")]
pub mod regs;
#[cfg(target_arch = "aarch64")]
pub mod sdei;
pub mod snapshot;
#[cfg(target_arch = "aarch64")]
pub mod vcpu;
#[cfg(target_arch = "aarch64")]
pub mod vm;

/// Exit statuses, documented in `docs/refvmm.md`.
pub mod exit_status {
    /// The guest powered off.
    pub const POWEROFF: u8 = 0;
    /// refvmm or KVM failed while running the guest.
    pub const VMM_ERROR: u8 = 1;
    /// The command line could not be parsed (clap's own status).
    pub const USAGE: u8 = 2;
    /// The configuration cannot be run on this host.
    pub const CONFIG: u8 = 3;
    /// The guest asked for a reset.
    pub const RESET: u8 = 10;
    /// The guest crashed.
    pub const CRASH: u8 = 11;
    /// The operator stopped the VM (API `quit`).
    pub const STOPPED: u8 = 12;
    /// A thread made a syscall its seccomp filter forbids (`--seccomp enforce`).
    /// (31 is `SIGSYS`'s number.)
    pub const SECCOMP_VIOLATION: u8 = 31;
}
