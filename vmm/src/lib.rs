//! refvmm as a library: the modules the `refvmm` binary composes. One module per concern:
//! [`config`] (command line → validated config), [`layout`] (the memory map), [`fdt`],
//! [`devices`] (MMIO bus, console, virtio-mmio and its devices), [`disk_image`] (the images
//! behind virtio-blk devices), [`pmem_backing`] (the files and memfds behind virtio-pmem devices), [`sandbox`] (per-thread seccomp filters), and on
//! aarch64
//! `memory`, `boot`, `vcpu`, `gic`, `eventloop` and `vm`, which talk to KVM.

#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod devices;
pub mod disk_image;
pub mod fdt;
pub mod files;
pub mod layout;
pub mod logger;
pub mod persist;
pub mod pmem_backing;
pub mod psci;
pub mod sandbox;

#[cfg(target_arch = "aarch64")]
pub mod boot;
#[cfg(target_arch = "aarch64")]
pub mod eventloop;
pub mod gic;
pub mod kvm_abi;
#[cfg(target_arch = "aarch64")]
pub mod memory;
#[cfg(target_arch = "aarch64")]
pub mod regs;
#[cfg(target_arch = "aarch64")]
pub mod sdei;
pub mod snapshot;
#[allow(unsafe_code)]
pub mod sys;
pub mod vcpu;
#[cfg(target_arch = "aarch64")]
pub mod vm;

/// An error and each of its causes ([`std::error::Error::source`]) in turn, separated by `: `.
///
/// Every refvmm error's message says what failed and leaves the cause to its source, so each
/// cause appears exactly once in the result: this is how the `refvmm` binary prints errors.
///
/// ```
/// let e = refvmm::config::Error::Cpus(0);
/// assert_eq!(refvmm::error_chain(&e), e.to_string());
/// ```
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("Cannot start")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the file")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn error_chain_prints_every_cause_once_in_order() {
        let e = Outer(Middle(std::io::Error::from_raw_os_error(libc::ENOENT)));
        let text = error_chain(&e);
        assert!(
            text.starts_with("Cannot start: cannot open the file: No such file or directory"),
            "{text}"
        );
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn error_chain_does_not_drop_a_cause_whose_text_repeats() {
        // The old printer skipped a cause whose text the message already contained.
        #[derive(Debug, thiserror::Error)]
        #[error("timed out")]
        struct Inner;
        #[derive(Debug, thiserror::Error)]
        #[error("request timed out")]
        struct Wrap(#[source] Inner);
        assert_eq!(error_chain(&Wrap(Inner)), "request timed out: timed out");
    }
}
