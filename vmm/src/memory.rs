//! Guest RAM: one memfd region mapped `MAP_SHARED` (from mte-memory), registered with KVM —
//! through the MTE typestate when the guest has MTE.

use crate::layout;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use mte_memory::kvm::{MteEnabledVm, MteVm};
use mte_memory::{SharedGuestMemory, SharedMemoryConfig};
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MmapRegion};

/// Errors creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared memory could not be created.
    #[error("Cannot create guest memory: {0}")]
    Create(#[source] mte_memory::memory::Error),
    /// MTE could not be enabled, or KVM refused the memory of an MTE guest.
    #[error("MTE: {0}")]
    Mte(#[source] mte_memory::kvm::Error),
    /// KVM refused a memory slot.
    #[error("KVM refused guest memory slot {slot}: {source}")]
    Slot {
        /// The slot.
        slot: u32,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
    /// Creating the VM failed.
    #[error("Cannot create a VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
}

/// Result of memory set-up.
pub type Result<T> = std::result::Result<T, Error>;

/// The VM fd, with MTE enabled (typestate) or not.
pub enum VmHandle {
    /// A VM without MTE, the RAM it maps, and its other mappings (pmem regions), which it
    /// keeps alive.
    Plain(VmFd, Arc<SharedGuestMemory>, Vec<Arc<MmapRegion>>),
    /// A VM with MTE enabled (it owns the memory it maps).
    Mte(MteEnabledVm),
}

impl VmHandle {
    /// The VM fd.
    pub fn vm(&self) -> &VmFd {
        match self {
            VmHandle::Plain(vm, ..) => vm,
            VmHandle::Mte(m) => m.vm(),
        }
    }

    /// Creates vCPU `id` (for MTE VMs only possible after MTE was enabled, by type).
    pub fn create_vcpu(&self, id: u64) -> std::result::Result<kvm_ioctls::VcpuFd, String> {
        match self {
            VmHandle::Plain(vm, ..) => vm.create_vcpu(id).map_err(|e| e.to_string()),
            VmHandle::Mte(m) => m.create_vcpu(id).map_err(|e| e.to_string()),
        }
    }

    /// Registers `mapping` (not RAM: a pmem region) as the next memory slot at `guest_base`,
    /// read-only for the guest with `readonly`; the VM keeps the mapping alive. Returns the
    /// slot.
    pub fn add_mapping(
        &mut self,
        guest_base: GuestAddress,
        mapping: Arc<MmapRegion>,
        readonly: bool,
    ) -> Result<u32> {
        match self {
            VmHandle::Mte(vm) => vm
                .register_mapping(guest_base, mapping, readonly)
                .map_err(Error::Mte),
            VmHandle::Plain(vm, ram, extra) => {
                let slot = (ram.memory().num_regions() + extra.len()) as u32;
                let desc = kvm_userspace_memory_region {
                    slot,
                    flags: if readonly { KVM_MEM_READONLY } else { 0 },
                    guest_phys_addr: guest_base.0,
                    memory_size: mapping.size() as u64,
                    userspace_addr: mapping.as_ptr() as u64,
                };
                // SAFETY: `mapping` is a live mapping of `memory_size` bytes; pushing it into
                // this handle keeps it alive for as long as the VM (and so the slot) exists.
                unsafe { vm.set_user_memory_region(desc) }
                    .map_err(|source| Error::Slot { slot, source })?;
                extra.push(mapping);
                Ok(slot)
            }
        }
    }
}

/// Creates guest RAM of `size` bytes at [`layout::RAM_BASE`] and a VM that maps it.
pub fn create(
    kvm: &kvm_ioctls::Kvm,
    size: u64,
    mte: bool,
) -> Result<(VmHandle, Arc<SharedGuestMemory>)> {
    let mem = Arc::new(
        SharedGuestMemory::new(SharedMemoryConfig {
            regions: vec![(GuestAddress(layout::RAM_BASE), size)],
            hugepages: false,
            mte_guest: mte,
            vmm_prot_mte: false,
        })
        .map_err(Error::Create)?,
    );
    if mte {
        let mut vm = MteVm::create(kvm)
            .and_then(MteVm::enable)
            .map_err(Error::Mte)?;
        vm.register_memory(mem.clone(), false).map_err(Error::Mte)?;
        return Ok((VmHandle::Mte(vm), mem));
    }
    let vm = kvm.create_vm().map_err(Error::CreateVm)?;
    for (slot, region) in mem.memory().iter().enumerate() {
        let slot = slot as u32;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| {
                Error::Create(mte_memory::memory::Error::Config(
                    "region has no host mapping",
                ))
            })?;
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`, which the
        // returned handle keeps alive for as long as the VM exists.
        unsafe { vm.set_user_memory_region(desc) }
            .map_err(|source| Error::Slot { slot, source })?;
    }
    Ok((VmHandle::Plain(vm, mem.clone(), Vec::new()), mem))
}
