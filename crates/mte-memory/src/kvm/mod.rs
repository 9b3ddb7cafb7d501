//! KVM side of MTE (aarch64, feature `kvm`). The crate never owns the VM: every function
//! borrows the caller's [`VmFd`].
//!
//! - [`enable`] turns `KVM_CAP_ARM_MTE` on for a VM that has no vCPU yet and returns
//!   [`MteEnabled`], the proof that later calls ask for.
//! - [`MemorySlots`] registers guest memory ([`SharedGuestMemory`](crate::SharedGuestMemory))
//!   and other mappings (device memory such as a virtio-pmem region) as memory slots under slot
//!   numbers the caller chooses, for MTE and non-MTE VMs alike, checking the MTE backing rules
//!   first; it keeps the mappings alive and reads dirty logs.
//! - [`KvmTagStore`] reads and writes guest tags with `KVM_ARM_MTE_COPY_TAGS`.
//! - [`probe`] finds out what this kernel and KVM can do, on scratch VMs of its own.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mte_memory::kvm::{self, KvmTagStore, MemorySlots, SlotFlags};
//! use mte_memory::{SharedGuestMemory, SharedMemoryConfig, TagSnapshot};
//! use vm_memory::GuestAddress;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kvm = kvm_ioctls::Kvm::new()?;
//! let vm = kvm.create_vm()?;
//! let mte = kvm::enable(&vm)?; // before any vCPU
//! let memory = Arc::new(SharedGuestMemory::new(SharedMemoryConfig {
//!     regions: vec![(GuestAddress(0x8000_0000), 512 << 20)],
//!     mte_guest: true,
//!     ..Default::default()
//! })?);
//! let mut slots = MemorySlots::new(&vm, Some(mte))?;
//! slots.add_guest_memory(&vm, &[0], &memory, SlotFlags::default())?;
//! let vcpu = vm.create_vcpu(0)?;
//! // ... run the guest, pause it ...
//! let tags = TagSnapshot::capture_full(&KvmTagStore::new(&vm, mte)?, &memory.regions())?;
//! # Ok(())
//! # }
//! ```

mod probe;
mod slots;
mod store;

pub use probe::{probe, MteProbeReport, Outcome};
pub use slots::{MemorySlots, SlotFlags};
pub use store::KvmTagStore;

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use kvm_bindings::{kvm_enable_cap, KVM_CAP_ARM_MTE};
use kvm_ioctls::VmFd;

use crate::sys;

/// Errors from the KVM side of MTE.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel does not offer `KVM_CAP_ARM_MTE` (no MTE in hardware, or KVM built without).
    #[error("KVM does not support MTE (KVM_CAP_ARM_MTE is absent)")]
    NotSupported,
    /// Enabling MTE failed; KVM refuses once a vCPU exists (`EINVAL`).
    #[error("Cannot enable MTE on the VM; it must be enabled before any vCPU is created")]
    Enable(#[source] io::Error),
    /// A KVM call failed.
    #[error("KVM call failed")]
    Kvm(#[source] io::Error),
    /// The [`MteEnabled`] proof or the [`MemorySlots`] were made for another VM fd.
    #[error("The MTE proof or memory slots belong to another VM")]
    OtherVm,
    /// The slot number is already registered.
    #[error("Memory slot {0} is already registered")]
    SlotInUse(u32),
    /// No slot with this number is registered here.
    #[error("No memory slot {0} is registered")]
    UnknownSlot(u32),
    /// The number of slot numbers given differs from the number of memory regions.
    #[error("{given} slot numbers given for {regions} memory regions")]
    SlotCount {
        /// Slot numbers given.
        given: usize,
        /// Regions of the memory.
        regions: usize,
    },
    /// The guest base, the size or the host address is not host-page aligned, or the size is
    /// zero.
    #[error(
        "Memory slot {slot} at {guest_base:#x} ({size:#x} bytes) is empty or not aligned to \
         the host page size"
    )]
    Unaligned {
        /// The slot number.
        slot: u32,
        /// Guest-physical base.
        guest_base: u64,
        /// Size in bytes.
        size: u64,
    },
    /// The guest-physical range overlaps a registered slot.
    #[error("Memory slot {slot} overlaps memory slot {other}")]
    Overlap {
        /// The slot being registered.
        slot: u32,
        /// The registered slot it overlaps.
        other: u32,
    },
    /// What backs the mapping could not be found out.
    #[error("Cannot tell what backs memory slot {slot}")]
    Inspect {
        /// The slot number.
        slot: u32,
        /// The `fstatfs` error.
        #[source]
        source: io::Error,
    },
    /// The mapping cannot hold an MTE guest's memory (checked before KVM is asked).
    #[error("Memory slot {slot} cannot be registered with an MTE VM")]
    Backing {
        /// The slot number.
        slot: u32,
        /// The rule that refuses it ([`crate::memory::Error::BackingRefused`]).
        #[source]
        source: crate::memory::Error,
    },
    /// KVM refused a memory slot; for an MTE VM the backing must allow `PROT_MTE`.
    #[error("KVM refused memory slot {slot} at {guest_base:#x}{}", rule_note(*.mte))]
    MemorySlot {
        /// The slot number.
        slot: u32,
        /// Guest-physical base of the slot.
        guest_base: u64,
        /// Whether the VM has MTE (then the message names the backing rule).
        mte: bool,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Dirty pages were asked for a slot registered without dirty logging.
    #[error("Memory slot {0} does not log dirty pages")]
    NoDirtyLog(u32),
    /// The guest memory cannot be used: the probe's scratch memory could not be created, or
    /// a region has no host mapping.
    #[error("Unusable guest memory")]
    Memory(#[source] crate::memory::Error),
}

fn rule_note(mte: bool) -> String {
    if mte {
        format!(" ({})", crate::memory::MTE_BACKING_RULE)
    } else {
        String::new()
    }
}

/// Result type of the KVM MTE operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The `KVM_ARM_MTE_COPY_TAGS` ioctl request number, derived from kvm-bindings'
/// `kvm_arm_copy_mte_tags` and `KVMIO` (for logging and seccomp filters).
pub fn copy_tags_ioctl() -> u64 {
    sys::copy_tags_ioctl_nr()
}

fn kvm_err(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

/// Proof that MTE was enabled on one VM, returned by [`enable`] and asked for by
/// [`MemorySlots::new`] and [`KvmTagStore::new`].
///
/// It records the VM's file descriptor number and is refused ([`Error::OtherVm`]) with any
/// other fd. It is `Copy`: it holds no resource, so store it next to the `VmFd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MteEnabled {
    vm_fd: RawFd,
}

impl MteEnabled {
    /// Whether this proof was made for `vm`.
    pub fn is_for(&self, vm: &VmFd) -> bool {
        self.vm_fd == vm.as_raw_fd()
    }

    fn check(&self, vm: &VmFd) -> Result<()> {
        if self.is_for(vm) {
            Ok(())
        } else {
            Err(Error::OtherVm)
        }
    }
}

/// Enables `KVM_CAP_ARM_MTE` on `vm`, which must not have any vCPU yet (KVM refuses then,
/// [`Error::Enable`]); [`Error::NotSupported`] when KVM has no MTE.
pub fn enable(vm: &VmFd) -> Result<MteEnabled> {
    if vm.check_extension_raw(KVM_CAP_ARM_MTE.into()) <= 0 {
        return Err(Error::NotSupported);
    }
    let cap = kvm_enable_cap {
        cap: KVM_CAP_ARM_MTE,
        ..Default::default()
    };
    sys::enable_cap(vm, &cap).map_err(Error::Enable)?;
    Ok(MteEnabled {
        vm_fd: vm.as_raw_fd(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tags_ioctl_number_matches_the_uapi_encoding() {
        // _IOR(0xAE, 0xb4, 48): read direction (2) << 30 | size 48 << 16 | 0xAE << 8 | 0xb4.
        assert_eq!(
            copy_tags_ioctl(),
            (2 << 30) | (48 << 16) | (0xae << 8) | 0xb4
        );
        assert_eq!(copy_tags_ioctl(), 0x8030_aeb4);
    }

    #[test]
    fn slot_errors_name_the_mte_rule_only_for_mte_vms() {
        let err = |mte| Error::MemorySlot {
            slot: 3,
            guest_base: 0x1_0000_0000,
            mte,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };

        let with = err(true).to_string();
        let without = err(false).to_string();

        assert!(with.starts_with("KVM refused memory slot 3 at 0x100000000 ("));
        assert!(
            with.contains("regular files and ramfs are refused"),
            "{with}"
        );
        assert_eq!(without, "KVM refused memory slot 3 at 0x100000000");
    }
}
