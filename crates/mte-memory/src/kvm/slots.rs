//! [`MemorySlots`]: a VM's memory slots, under the caller's slot numbers.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress, MmapRegion,
};

use super::{kvm_err, Error, MteEnabled, Result};
use crate::memory::{check_backing, BackingKind, SharedGuestMemory};
use crate::snapshot::PageBitmap;
use crate::sys;
use crate::tags::TAG_PAGE_SIZE;

/// How a memory slot is registered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotFlags {
    /// `KVM_MEM_READONLY`: the guest may read the slot; its writes exit to the VMM.
    pub readonly: bool,
    /// `KVM_MEM_LOG_DIRTY_PAGES`: KVM logs the pages the guest writes, read with
    /// [`MemorySlots::dirty_pages`]. While any slot logs, KVM refuses tag writes (`EBUSY`).
    pub dirty_log: bool,
}

impl SlotFlags {
    fn bits(self) -> u32 {
        let mut bits = 0;
        if self.readonly {
            bits |= KVM_MEM_READONLY;
        }
        if self.dirty_log {
            bits |= KVM_MEM_LOG_DIRTY_PAGES;
        }
        bits
    }
}

/// What keeps a slot's host memory mapped.
#[derive(Debug)]
enum Backing {
    Guest(Arc<SharedGuestMemory>),
    Mapping(Arc<MmapRegion>),
}

#[derive(Debug)]
struct Slot {
    number: u32,
    guest_base: u64,
    size: u64,
    flags: SlotFlags,
    backing: Backing,
}

/// The memory slots of one VM (MTE or not), each under a slot number the caller chooses.
///
/// It borrows the VM for every call and owns only what keeps each slot's host memory
/// mapped. Before KVM is asked, a slot is checked: the number is free, the guest range is
/// host-page aligned and overlaps no other slot, and for an MTE VM the mapping's backing can
/// hold tags ([`check_backing`]: shmem, memfd, hugetlbfs or anonymous memory; not ramfs or
/// regular files).
///
/// KVM uses a slot's memory until the slot is removed, which may be after this value is gone
/// (a vCPU fd keeps the VM alive): dropping `MemorySlots` therefore never unmaps the memory of
/// a slot still registered, it leaks it. [`MemorySlots::remove`] a slot to release its
/// memory; a VMM that keeps its VM until it exits needs nothing more.
#[derive(Debug)]
pub struct MemorySlots {
    vm_fd: RawFd,
    mte: Option<MteEnabled>,
    slots: Vec<Slot>,
}

impl MemorySlots {
    /// No slots yet, for `vm`; `mte` is the proof from [`super::enable`] for an MTE VM, `None`
    /// for a VM without MTE.
    pub fn new(vm: &VmFd, mte: Option<MteEnabled>) -> Result<Self> {
        if let Some(proof) = &mte {
            proof.check(vm)?;
        }
        Ok(Self {
            vm_fd: vm.as_raw_fd(),
            mte,
            slots: Vec::new(),
        })
    }

    /// The MTE proof given to [`MemorySlots::new`].
    pub fn mte(&self) -> Option<MteEnabled> {
        self.mte
    }

    /// Registers region `i` of `memory` (configuration order) as slot `slots[i]`, one slot
    /// number per region, and keeps `memory` mapped while any of them exists. Stops at the
    /// first region that fails; the regions before it stay registered.
    pub fn add_guest_memory(
        &mut self,
        vm: &VmFd,
        slots: &[u32],
        memory: &Arc<SharedGuestMemory>,
        flags: SlotFlags,
    ) -> Result<()> {
        let regions = memory.regions();
        if slots.len() != regions.len() {
            return Err(Error::SlotCount {
                given: slots.len(),
                regions: regions.len(),
            });
        }
        for (&number, &(base, size)) in slots.iter().zip(&regions) {
            let region = memory
                .memory()
                .find_region(base)
                .filter(|r| r.start_addr() == base && r.len() == size);
            let host = region
                .and_then(|r| r.get_host_address(MemoryRegionAddress(0)).ok())
                .ok_or(Error::Memory(crate::memory::Error::Config(
                    "region has no host mapping",
                )))?;
            let backing = memory.config().backing.kind();
            self.add(
                vm,
                Slot {
                    number,
                    guest_base: base.0,
                    size,
                    flags,
                    backing: Backing::Guest(Arc::clone(memory)),
                },
                host as u64,
                backing,
            )?;
        }
        Ok(())
    }

    /// Registers `mapping` (not guest RAM: device memory such as a virtio-pmem region) as slot
    /// `slot` at `guest_base`, and keeps it mapped while the slot exists.
    pub fn add_mapping(
        &mut self,
        vm: &VmFd,
        slot: u32,
        guest_base: GuestAddress,
        mapping: Arc<MmapRegion>,
        flags: SlotFlags,
    ) -> Result<()> {
        let backing = match mapping.file_offset() {
            None => BackingKind::Anonymous,
            Some(f) => {
                BackingKind::of_file(f.file()).map_err(|source| Error::Inspect { slot, source })?
            }
        };
        let host = mapping.as_ptr() as u64;
        let size = mapping.size() as u64;
        self.add(
            vm,
            Slot {
                number: slot,
                guest_base: guest_base.0,
                size,
                flags,
                backing: Backing::Mapping(mapping),
            },
            host,
            backing,
        )
    }

    /// Removes slot `slot` from the VM, then releases its memory.
    pub fn remove(&mut self, vm: &VmFd, slot: u32) -> Result<()> {
        self.check_vm(vm)?;
        let index = self.index(slot)?;
        let guest_base = self.slots[index].guest_base;
        // A slot of size 0 deletes the slot.
        set_slot(vm, slot, guest_base, 0, 0, SlotFlags::default()).map_err(|source| {
            Error::MemorySlot {
                slot,
                guest_base,
                mte: self.mte.is_some(),
                source,
            }
        })?;
        // KVM no longer uses the memory: it may be unmapped now.
        drop(self.slots.swap_remove(index));
        Ok(())
    }

    /// The dirty-page bitmap of `slot` (`KVM_GET_DIRTY_LOG`, which also resets it), in 4 KiB
    /// pages as [`TagSnapshot::capture_dirty`] expects. The slot must have been registered
    /// with [`SlotFlags::dirty_log`].
    ///
    /// [`TagSnapshot::capture_dirty`]: crate::TagSnapshot::capture_dirty
    pub fn dirty_pages(&self, vm: &VmFd, slot: u32) -> Result<PageBitmap> {
        self.check_vm(vm)?;
        let entry = &self.slots[self.index(slot)?];
        if !entry.flags.dirty_log {
            return Err(Error::NoDirtyLog(slot));
        }
        let size = entry.size;
        // `add` checked that the size fits in the address space.
        let len = usize::try_from(size).map_err(|_| Error::UnknownSlot(slot))?;
        let words = vm
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

    fn check_vm(&self, vm: &VmFd) -> Result<()> {
        if vm.as_raw_fd() == self.vm_fd {
            Ok(())
        } else {
            Err(Error::OtherVm)
        }
    }

    fn index(&self, slot: u32) -> Result<usize> {
        self.slots
            .iter()
            .position(|s| s.number == slot)
            .ok_or(Error::UnknownSlot(slot))
    }

    /// Checks `slot` and registers it with KVM; `host` is where its memory is mapped.
    fn add(&mut self, vm: &VmFd, slot: Slot, host: u64, backing: BackingKind) -> Result<()> {
        self.check_vm(vm)?;
        let number = slot.number;
        if self.slots.iter().any(|s| s.number == number) {
            return Err(Error::SlotInUse(number));
        }
        let page = sys::page_size();
        let end = slot.guest_base.checked_add(slot.size);
        if slot.size == 0
            || end.is_none()
            || usize::try_from(slot.size).is_err()
            || slot.guest_base % page != 0
            || slot.size % page != 0
            || host % page != 0
        {
            return Err(Error::Unaligned {
                slot: number,
                guest_base: slot.guest_base,
                size: slot.size,
            });
        }
        let end = end.unwrap_or(u64::MAX);
        if let Some(other) = self
            .slots
            .iter()
            .find(|s| slot.guest_base < s.guest_base + s.size && s.guest_base < end)
        {
            return Err(Error::Overlap {
                slot: number,
                other: other.number,
            });
        }
        if self.mte.is_some() {
            check_backing(backing, true).map_err(|source| Error::Backing {
                slot: number,
                source,
            })?;
        }
        set_slot(vm, number, slot.guest_base, slot.size, host, slot.flags).map_err(|source| {
            Error::MemorySlot {
                slot: number,
                guest_base: slot.guest_base,
                mte: self.mte.is_some(),
                source,
            }
        })?;
        self.slots.push(slot);
        Ok(())
    }
}

impl Drop for MemorySlots {
    fn drop(&mut self) {
        // KVM may still use the memory of every slot left (the VM can outlive this value):
        // never unmap it.
        for slot in self.slots.drain(..) {
            match slot.backing {
                Backing::Guest(memory) => std::mem::forget(memory),
                Backing::Mapping(mapping) => std::mem::forget(mapping),
            }
        }
    }
}

/// `KVM_SET_USER_MEMORY_REGION` for slot `slot`: `size` bytes at `guest_base` backed by the
/// host mapping at `host` (size 0 deletes the slot).
///
/// The mapping must stay valid until the slot is deleted or the VM is gone: [`MemorySlots`]
/// keeps it (or leaks it); the probe drops its scratch VM, which has no vCPU, first.
pub(super) fn set_slot(
    vm: &VmFd,
    slot: u32,
    guest_base: u64,
    size: u64,
    host: u64,
    flags: SlotFlags,
) -> std::io::Result<()> {
    sys::set_memory_region(
        vm,
        kvm_userspace_memory_region {
            slot,
            flags: flags.bits(),
            guest_phys_addr: guest_base,
            memory_size: size,
            userspace_addr: host,
        },
    )
}
