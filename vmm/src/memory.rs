//! The VM and its memory: guest RAM on one memfd region mapped `MAP_SHARED` (mte-memory's
//! `SharedGuestMemory`), MTE enabled on the VM before any vCPU exists when the guest has MTE,
//! and every memory slot (RAM and the pmem regions) registered through mte-memory's
//! `MemorySlots` under the slot numbers of [`crate::layout`], with or without MTE.

use crate::layout;
use kvm_ioctls::VmFd;
use mte_memory::kvm::{self, KvmTagStore, MemorySlots, MteEnabled, SlotFlags};
use mte_memory::{SharedGuestMemory, SharedMemoryConfig};
use std::sync::Arc;
use vm_memory::{GuestAddress, MmapRegion};

/// Errors creating the VM or registering its memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared memory could not be created.
    #[error("Cannot create guest memory")]
    Create(#[source] mte_memory::memory::Error),
    /// Creating the VM failed.
    #[error("Cannot create a VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// MTE could not be enabled.
    #[error("Cannot set up MTE for the guest")]
    Mte(#[source] kvm::Error),
    /// A memory slot could not be registered (for an MTE VM the error names the backing rule).
    #[error("Cannot register guest memory")]
    Slot(#[source] kvm::Error),
    /// More pmem devices than memory slots set aside for them.
    #[error("No memory slot for pmem device {0}")]
    NoPmemSlot(usize),
}

impl Error {
    /// Whether the error is the user's to fix: memory that cannot be had, MTE that this KVM
    /// cannot give, or a backing that cannot hold an MTE guest's memory.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Create(_) | Error::Mte(_) => true,
            Error::Slot(e) => matches!(
                e,
                kvm::Error::Backing { .. } | kvm::Error::MemorySlot { mte: true, .. }
            ),
            Error::CreateVm(_) | Error::NoPmemSlot(_) => false,
        }
    }
}

/// Result of memory set-up.
pub type Result<T> = std::result::Result<T, Error>;

/// The VM fd and its memory slots (which keep the slots' mappings alive, and know whether
/// the VM has MTE).
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    slots: MemorySlots,
}

impl Vm {
    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The proof that the VM has MTE, if it has.
    pub fn mte(&self) -> Option<MteEnabled> {
        self.slots.mte()
    }

    /// A store for the guest's MTE tags, if the VM has MTE.
    pub fn tag_store(&self) -> Option<KvmTagStore<'_>> {
        // The proof was made for this very fd, so `new` cannot refuse it.
        self.mte()
            .and_then(|mte| KvmTagStore::new(&self.fd, mte).ok())
    }

    /// Registers `mapping`, the region of pmem device `index`, as its memory slot
    /// ([`layout::pmem_slot`]) at `guest_base`, read-only for the guest with `readonly`; the
    /// slot keeps the mapping alive. Returns the slot.
    pub fn add_pmem(
        &mut self,
        index: usize,
        guest_base: GuestAddress,
        mapping: Arc<MmapRegion>,
        readonly: bool,
    ) -> Result<u32> {
        let slot = layout::pmem_slot(index).ok_or(Error::NoPmemSlot(index))?;
        let flags = SlotFlags {
            readonly,
            ..Default::default()
        };
        self.slots
            .add_mapping(&self.fd, slot, guest_base, mapping, flags)
            .map_err(Error::Slot)?;
        Ok(slot)
    }
}

/// Creates guest RAM of `size` bytes at [`layout::RAM_BASE`] and a VM (with MTE enabled if
/// `mte`) that maps it as memory slot [`layout::RAM_SLOT`].
pub fn create(kvm: &kvm_ioctls::Kvm, size: u64, mte: bool) -> Result<(Vm, Arc<SharedGuestMemory>)> {
    let mem = Arc::new(
        SharedGuestMemory::new(SharedMemoryConfig {
            regions: vec![(GuestAddress(layout::RAM_BASE), size)],
            hugepages: false,
            mte_guest: mte,
            vmm_prot_mte: false,
        })
        .map_err(Error::Create)?,
    );
    let fd = kvm.create_vm().map_err(Error::CreateVm)?;
    let proof = if mte {
        Some(kvm::enable(&fd).map_err(Error::Mte)?)
    } else {
        None
    };
    let mut slots = MemorySlots::new(&fd, proof).map_err(Error::Mte)?;
    slots
        .add_guest_memory(&fd, &[layout::RAM_SLOT], &mem, SlotFlags::default())
        .map_err(Error::Slot)?;
    Ok((Vm { fd, slots }, mem))
}
