//! The VM and its memory: guest RAM in one region of mte-memory's `SharedGuestMemory` (a
//! memfd mapped `MAP_SHARED`, a hugetlb memfd or private anonymous memory, as [`choose`]
//! picks for `--memory-backing`), MTE enabled on the VM before any vCPU exists when the guest has MTE,
//! and every memory slot (RAM and the pmem regions) registered through mte-memory's
//! `MemorySlots` under the slot numbers of [`crate::layout`], with or without MTE.
//!
//! Its saved state: the MTE tags through [`Persist`] for [`Tags`] (`mte-tags.bin`), and guest
//! RAM, too large for a value, streamed by [`save_ram`] and [`restore_ram`] (`memory.bin`).

use crate::config::MemoryBacking;
use crate::layout;
use crate::persist::{Persist, Stored};
use crate::snapshot;
use kvm_ioctls::VmFd;
use mte_memory::kvm::{self, KvmTagStore, MemorySlots, MteEnabled, SlotFlags};
use mte_memory::pages::{HostPolicy, PagePlan};
use mte_memory::{RegionBacking, SharedGuestMemory, SharedMemoryConfig, TagSnapshot};
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
    /// `--memory-backing hugetlb` with too few free huge pages.
    #[error("Cannot back guest RAM with hugetlb pages: {0}")]
    HugetlbPool(String),
}

impl Error {
    /// Whether the error is the user's to fix: memory that cannot be had, MTE that this KVM
    /// cannot give, or a backing that cannot hold an MTE guest's memory.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Create(_) | Error::Mte(_) | Error::HugetlbPool(_) => true,
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

/// The backing guest RAM gets, with the page size the host will give it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The backing.
    pub backing: RegionBacking,
    /// Its page size on this host, and the host setting that decides it.
    pub plan: PagePlan,
    /// Why this backing: asked for, or how `auto` decided.
    pub why: String,
}

impl Choice {
    /// Refuses a choice that cannot be had (a hugetlb pool too small), before anything is
    /// mapped.
    pub fn check(&self) -> Result<()> {
        if self.plan.will_fail {
            return Err(Error::HugetlbPool(self.plan.reason.clone()));
        }
        Ok(())
    }
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}; {}", self.backing, self.plan, self.why)
    }
}

/// Picks guest RAM's backing for `asked` on a host with `host`'s page settings, for `size`
/// bytes; `shared_by` names a feature that needs the memory mappable by another process, if
/// one does.
///
/// `auto` takes a memfd when something needs sharing or when the host gives shmem huge pages
/// (it is then as fast as anonymous memory); otherwise anonymous memory if that gets huge
/// pages (a stock Debian host: THP `always`, shmem `never`); otherwise a memfd (base pages
/// either way, and the memory stays shareable).
pub fn choose(
    asked: MemoryBacking,
    host: &HostPolicy,
    size: u64,
    shared_by: Option<&str>,
) -> Choice {
    let pick = |backing: RegionBacking, why: String| Choice {
        backing,
        plan: host.plan(backing, size),
        why,
    };
    match asked {
        MemoryBacking::Memfd => pick(RegionBacking::Memfd, "--memory-backing memfd".into()),
        MemoryBacking::Anonymous => pick(
            RegionBacking::Anonymous,
            "--memory-backing anonymous".into(),
        ),
        MemoryBacking::Hugetlb => pick(
            RegionBacking::HugetlbMemfd,
            "--memory-backing hugetlb".into(),
        ),
        MemoryBacking::Auto => match shared_by {
            Some(feature) => pick(
                RegionBacking::Memfd,
                format!("auto: {feature} needs guest RAM shared"),
            ),
            None if host.shmem_huge() => pick(
                RegionBacking::Memfd,
                "auto: a memfd gets huge pages on this host".into(),
            ),
            None if host.anonymous_huge() => pick(
                RegionBacking::Anonymous,
                format!(
                    "auto: nothing needs guest RAM shared, and a memfd would get {}",
                    host.plan(RegionBacking::Memfd, size)
                ),
            ),
            None => pick(
                RegionBacking::Memfd,
                "auto: no backing gets huge pages on this host, so the shareable one".into(),
            ),
        },
    }
}

/// Creates guest RAM of `size` bytes at [`layout::RAM_BASE`] on `backing` and a VM (with MTE
/// enabled if `mte`) that maps it as memory slot [`layout::RAM_SLOT`].
pub fn create(
    kvm: &kvm_ioctls::Kvm,
    size: u64,
    mte: bool,
    backing: &Choice,
) -> Result<(Vm, Arc<SharedGuestMemory>)> {
    backing.check()?;
    let mem = Arc::new(
        SharedGuestMemory::new(SharedMemoryConfig {
            regions: vec![(GuestAddress(layout::RAM_BASE), size)],
            backing: backing.backing,
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

/// The guest's MTE tags: the part of its memory [`Persist`] saves and restores (RAM itself
/// streams, see [`save_ram`]).
pub struct Tags<'a> {
    vm: &'a Vm,
    mem: &'a SharedGuestMemory,
}

impl<'a> Tags<'a> {
    /// The tags of `mem`, the guest RAM of `vm`; `None` if the VM has no MTE.
    pub fn of(vm: &'a Vm, mem: &'a SharedGuestMemory) -> Option<Self> {
        vm.mte().map(|_| Tags { vm, mem })
    }

    fn store(&self) -> std::result::Result<KvmTagStore<'a>, StateError> {
        self.vm.tag_store().ok_or(StateError::NoMte)
    }
}

/// Saved MTE tags (`mte-tags.bin`: mte-memory's `TagSnapshot`, behind its own header).
#[derive(Debug, Clone)]
pub struct MteTags(pub TagSnapshot);

impl Stored for MteTags {
    const FILE: &'static str = "mte-tags.bin";

    fn encode(&self) -> snapshot::Result<Vec<u8>> {
        Ok(self.0.encode())
    }

    fn decode(bytes: &[u8]) -> snapshot::Result<Self> {
        TagSnapshot::decode(bytes)
            .map(MteTags)
            .map_err(|e| snapshot::Error::Part {
                what: "MTE tags",
                source: Box::new(e),
            })
    }
}

/// Why guest memory or its tags cannot be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// mte-memory refused to capture or put back the tags.
    #[error("Cannot move the MTE tags")]
    Tags(#[source] mte_memory::snapshot::Error),
    /// The tags describe other memory regions than this VM's.
    #[error("The MTE tags describe other memory regions than this VM's")]
    Regions,
    /// The VM has no MTE (a refvmm bug: [`Tags::of`] hands out none then).
    #[error("The VM has no MTE")]
    NoMte,
    /// The snapshot has MTE tags but the VM has no MTE.
    #[error("The snapshot has MTE tags but the VM has no MTE")]
    UnexpectedTags,
    /// `memory.bin` is not as large as guest RAM.
    #[error("memory.bin has {file} bytes for {ram} bytes of guest RAM")]
    RamSize {
        /// Bytes in the file.
        file: u64,
        /// Bytes of guest RAM.
        ram: u64,
    },
    /// Reading or writing a snapshot file.
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
}

impl Persist for Tags<'_> {
    type State = MteTags;
    type Error = StateError;

    /// The VM is paused.
    fn save(&self) -> std::result::Result<MteTags, StateError> {
        TagSnapshot::capture_full(&self.store()?, &self.mem.regions())
            .map(MteTags)
            .map_err(StateError::Tags)
    }

    /// Call after [`restore_ram`] (writing RAM through the mapping does not keep tags).
    fn restore(self, state: &MteTags) -> std::result::Result<Self, StateError> {
        let theirs = state.0.regions().iter().map(|r| r.base());
        let ours = self.mem.regions();
        if !theirs.eq(ours.iter().map(|r| r.0)) {
            return Err(StateError::Regions);
        }
        state
            .0
            .restore(&mut self.store()?)
            .map_err(StateError::Tags)?;
        Ok(self)
    }
}

/// The guest RAM's file in a snapshot.
pub const RAM_FILE: &str = "memory.bin";

/// Writes guest RAM into the snapshot as [`RAM_FILE`] (the VM is paused).
pub fn save_ram(mem: &Arc<SharedGuestMemory>, w: &mut snapshot::Writer) -> snapshot::Result<()> {
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
    let mem = mem.clone();
    w.put_with(RAM_FILE, move |out| {
        // Through vm-memory's volatile accessors into a bounce buffer: the memfd is shared
        // with other processes, so no Rust reference to guest RAM is ever formed.
        let mut buf = vec![0u8; 1 << 20];
        for region in mem.memory().iter() {
            let len = region.len();
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(buf.len() as u64) as usize;
                region
                    .read_slice(&mut buf[..n], vm_memory::MemoryRegionAddress(off))
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                out.write_all(&buf[..n])?;
                off += n as u64;
            }
        }
        Ok(())
    })
}

/// Fills guest RAM from the snapshot's [`RAM_FILE`], whose length must be the RAM's; then,
/// if the VM has MTE, puts back the tags. A snapshot with tags for a VM without MTE is
/// refused.
pub fn restore_ram(
    r: &snapshot::Reader,
    vm: &Vm,
    mem: &SharedGuestMemory,
) -> std::result::Result<(), StateError> {
    use vm_memory::Bytes;
    let ram: u64 = mem.regions().iter().map(|r| r.1).sum();
    let file = r.len_of(RAM_FILE)?;
    if file != ram {
        return Err(StateError::RamSize { file, ram });
    }
    r.stream(RAM_FILE, |off, chunk| {
        mem.memory()
            .write_slice(chunk, GuestAddress(layout::RAM_BASE + off))
            .map_err(|e| snapshot::Error::Part {
                what: "guest memory",
                source: Box::new(e),
            })
    })?;
    match Tags::of(vm, mem) {
        Some(tags) => {
            tags.restore(&r.state::<MteTags>()?)?;
        }
        None if r.has(MteTags::FILE) => return Err(StateError::UnexpectedTags),
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB512: u64 = 512 << 20;

    fn host(thp: &str, shmem: &str) -> HostPolicy {
        HostPolicy {
            thp_enabled: Some(thp.into()),
            shmem_enabled: Some(shmem.into()),
            hugetlb_free: Some(0),
            ..HostPolicy::default()
        }
    }

    /// A stock Debian kernel's settings (the test bed's).
    fn debian() -> HostPolicy {
        host(
            "[always] madvise never",
            "always within_size advise [never] deny force",
        )
    }

    #[test]
    fn auto_takes_huge_anonymous_memory_on_a_stock_debian_host_and_says_why() {
        let c = choose(MemoryBacking::Auto, &debian(), MIB512, None);
        assert_eq!(c.backing, RegionBacking::Anonymous);
        assert_eq!(c.plan.page_size, 2 << 20);
        let said = c.to_string();
        assert!(
            said.starts_with("private anonymous memory on 2 MiB pages"),
            "{said}"
        );
        assert!(said.contains("enabled is always"), "{said}");
        assert!(said.contains("a memfd would get 4 KiB pages"), "{said}");
        assert!(said.contains("shmem_enabled is never"), "{said}");
    }

    #[test]
    fn auto_takes_a_memfd_when_it_gets_huge_pages_or_something_needs_sharing() {
        let advise = host(
            "[always] madvise never",
            "always within_size [advise] never",
        );
        let c = choose(MemoryBacking::Auto, &advise, MIB512, None);
        assert_eq!(
            (c.backing, c.plan.page_size),
            (RegionBacking::Memfd, 2 << 20)
        );
        let c = choose(MemoryBacking::Auto, &debian(), MIB512, Some("vhost-user"));
        assert_eq!((c.backing, c.plan.page_size), (RegionBacking::Memfd, 4096));
        assert!(c.why.contains("vhost-user needs guest RAM shared"), "{c}");
        let none = host("always madvise [never]", "[never]");
        let c = choose(MemoryBacking::Auto, &none, MIB512, None);
        assert_eq!((c.backing, c.plan.page_size), (RegionBacking::Memfd, 4096));
    }

    #[test]
    fn an_explicit_backing_is_taken_as_asked_with_its_page_size() {
        let h = debian();
        for (asked, backing, page) in [
            (MemoryBacking::Memfd, RegionBacking::Memfd, 4096),
            (MemoryBacking::Anonymous, RegionBacking::Anonymous, 2 << 20),
            (MemoryBacking::Hugetlb, RegionBacking::HugetlbMemfd, 2 << 20),
        ] {
            let c = choose(asked, &h, MIB512, None);
            assert_eq!((c.backing, c.plan.page_size), (backing, page), "{c}");
            assert!(c.why.starts_with("--memory-backing "), "{c}");
        }
        assert!(
            choose(MemoryBacking::Hugetlb, &h, MIB512, None)
                .plan
                .will_fail
        );
    }

    #[test]
    fn an_empty_hugetlb_pool_is_refused_before_anything_is_mapped() {
        let e = choose(MemoryBacking::Hugetlb, &debian(), MIB512, None)
            .check()
            .unwrap_err();
        assert!(matches!(e, Error::HugetlbPool(_)), "{e:?}");
        assert!(e.is_user_error());
        let said = e.to_string();
        assert!(
            said.contains("0 free in the 2 MiB hugetlb pool, 256 needed"),
            "{said}"
        );
        assert!(choose(MemoryBacking::Anonymous, &debian(), MIB512, None)
            .check()
            .is_ok());
    }
}
