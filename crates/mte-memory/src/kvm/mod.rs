//! KVM side of MTE (aarch64, feature `kvm`): enabling MTE before any vCPU exists, the
//! `KVM_ARM_MTE_COPY_TAGS` tag store, and a capability probe.

mod probe;
mod store;

pub use probe::{probe, MteProbeReport, Outcome};
pub use store::KvmTagStore;

use std::io;
use std::sync::Arc;

use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_ARM_MTE, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MmapRegion};

use crate::memory::SharedGuestMemory;
use crate::snapshot::PageBitmap;
use crate::sys;
use crate::tags::TAG_PAGE_SIZE;

/// Errors from the KVM side of MTE.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel does not offer `KVM_CAP_ARM_MTE` (no MTE in hardware, or KVM built without).
    #[error("KVM does not support MTE (KVM_CAP_ARM_MTE is absent)")]
    NotSupported,
    /// Enabling MTE failed; KVM refuses once a vCPU exists (`EINVAL`).
    #[error("Cannot enable MTE on the VM; it must be enabled before any vCPU is created")]
    Enable(#[source] io::Error),
    /// Creating a VM or vCPU failed.
    #[error("KVM call failed")]
    Kvm(#[source] io::Error),
    /// KVM refused a memory slot; for an MTE VM the backing must allow `PROT_MTE`.
    #[error("KVM refused memory slot {slot} at {guest_base:#x} ({rule})")]
    MemorySlot {
        /// The slot number.
        slot: u32,
        /// Guest-physical base of the slot.
        guest_base: u64,
        /// The rule KVM applies to MTE guests' memory.
        rule: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Too many memory slots.
    #[error("No memory slot number left")]
    SlotsExhausted,
    /// Creating the probe's scratch memory failed.
    #[error("Cannot create scratch guest memory")]
    Memory(#[source] crate::memory::Error),
    /// No registered memory region starts at this guest address.
    #[error("No registered memory region at {0:#x}")]
    UnknownRegion(u64),
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

/// A VM on which MTE has not been enabled yet. It offers no way to create vCPUs: the only
/// way forward is [`MteVm::enable`].
#[derive(Debug)]
pub struct MteVm {
    vm: VmFd,
}

impl MteVm {
    /// Creates a new VM (which has no vCPUs by construction).
    pub fn create(kvm: &Kvm) -> Result<Self> {
        if kvm.check_extension_raw(KVM_CAP_ARM_MTE.into()) <= 0 {
            return Err(Error::NotSupported);
        }
        let vm = kvm.create_vm().map_err(|e| Error::Kvm(kvm_err(e)))?;
        Ok(Self { vm })
    }

    /// Wraps an existing VM. If it already has vCPUs, [`MteVm::enable`] fails: KVM itself
    /// refuses to enable MTE then.
    pub fn from_vm(vm: VmFd) -> Self {
        Self { vm }
    }

    /// Enables `KVM_CAP_ARM_MTE`.
    pub fn enable(self) -> Result<MteEnabledVm> {
        let cap = kvm_enable_cap {
            cap: KVM_CAP_ARM_MTE,
            ..Default::default()
        };
        self.vm
            .enable_cap(&cap)
            .map_err(|e| Error::Enable(kvm_err(e)))?;
        Ok(MteEnabledVm {
            vm: self.vm,
            memory: Vec::new(),
            mappings: Vec::new(),
            next_slot: 0,
        })
    }
}

/// A VM with MTE enabled: the only type here that creates vCPUs.
#[derive(Debug)]
pub struct MteEnabledVm {
    // Declared before `memory` and `mappings` so the VM (and its slots) goes away before the
    // mappings.
    vm: VmFd,
    memory: Vec<Arc<SharedGuestMemory>>,
    mappings: Vec<Arc<MmapRegion>>,
    next_slot: u32,
}

impl MteEnabledVm {
    /// Creates vCPU `id`.
    pub fn create_vcpu(&self, id: u64) -> Result<VcpuFd> {
        self.vm.create_vcpu(id).map_err(|e| Error::Kvm(kvm_err(e)))
    }

    /// The VM, for the calls this type does not wrap (vCPU init, devices, IRQs).
    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// Registers every region of `memory` as a memory slot (slots numbered in order) and
    /// keeps the mapping alive as long as the VM; returns the slot of each region. With
    /// `dirty_log`, slots log dirty pages (and then KVM refuses tag writes with `EBUSY`).
    pub fn register_memory(
        &mut self,
        memory: Arc<SharedGuestMemory>,
        dirty_log: bool,
    ) -> Result<Vec<u32>> {
        let mut slots = Vec::new();
        for region in memory.memory().iter() {
            let slot = self.next_slot;
            let guest_base = region.start_addr().0;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| Error::UnknownRegion(guest_base))?;
            let desc = kvm_userspace_memory_region {
                slot,
                flags: if dirty_log {
                    KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
                guest_phys_addr: guest_base,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            sys::set_memory_region(&self.vm, desc).map_err(|source| Error::MemorySlot {
                slot,
                guest_base,
                rule: crate::memory::MTE_BACKING_RULE,
                source,
            })?;
            self.next_slot = slot.checked_add(1).ok_or(Error::SlotsExhausted)?;
            slots.push(slot);
        }
        self.memory.push(memory);
        Ok(slots)
    }

    /// Registers one mapping that is not guest RAM (device memory such as a virtio-pmem
    /// region) as the next memory slot at `guest_base`, read-only for the guest with
    /// `readonly`, and keeps the mapping alive as long as the VM; returns the slot.
    ///
    /// The mapping must be one KVM accepts for an MTE guest (shmem or hugetlbfs, see
    /// [`crate::memory::check_backing`]); otherwise KVM refuses the slot and the error names
    /// the rule.
    pub fn register_mapping(
        &mut self,
        guest_base: GuestAddress,
        mapping: Arc<MmapRegion>,
        readonly: bool,
    ) -> Result<u32> {
        let slot = self.next_slot;
        let desc = kvm_userspace_memory_region {
            slot,
            flags: if readonly { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: guest_base.0,
            memory_size: mapping.size() as u64,
            userspace_addr: mapping.as_ptr() as u64,
        };
        sys::set_memory_region(&self.vm, desc).map_err(|source| Error::MemorySlot {
            slot,
            guest_base: guest_base.0,
            rule: crate::memory::MTE_BACKING_RULE,
            source,
        })?;
        self.next_slot = slot.checked_add(1).ok_or(Error::SlotsExhausted)?;
        self.mappings.push(mapping);
        Ok(slot)
    }

    /// A tag store reading and writing this VM's guest tags.
    pub fn tag_store(&self) -> KvmTagStore<'_> {
        KvmTagStore::new(&self.vm)
    }

    /// The dirty-page bitmap of `slot` (`KVM_GET_DIRTY_LOG`, which also resets it) for the
    /// region at `guest_base`, in 4 KiB pages as [`TagSnapshot::capture_dirty`] expects.
    ///
    /// [`TagSnapshot::capture_dirty`]: crate::TagSnapshot::capture_dirty
    pub fn dirty_pages(&self, slot: u32, guest_base: GuestAddress) -> Result<PageBitmap> {
        let size = self
            .memory
            .iter()
            .find_map(|m| m.regions().into_iter().find(|(b, _)| *b == guest_base))
            .map(|(_, s)| s)
            .ok_or(Error::UnknownRegion(guest_base.0))?;
        let len = usize::try_from(size).map_err(|_| Error::UnknownRegion(guest_base.0))?;
        let words = self
            .vm
            .get_dirty_log(slot, len)
            .map_err(|e| Error::Kvm(kvm_err(e)))?;
        let host_page = sys::page_size();
        let host_bits = PageBitmap::from_words(words, size / host_page);
        if host_page == TAG_PAGE_SIZE {
            return Ok(host_bits);
        }
        let ratio = host_page / TAG_PAGE_SIZE;
        let mut out = PageBitmap::new(size / TAG_PAGE_SIZE);
        for page in (0..host_bits.pages()).filter(|&p| host_bits.contains(p)) {
            for sub in 0..ratio {
                out.insert(page * ratio + sub);
            }
        }
        Ok(out)
    }
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
}
