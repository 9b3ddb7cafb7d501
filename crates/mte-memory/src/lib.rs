//! MTE-ready guest memory for arm64 KVM VMMs.
//!
//! - [`tags`]: the [`TagStore`] trait (read/write allocation tags of a guest-physical range in
//!   KVM's one-tag-per-byte layout) and a store for memory without MTE.
//! - [`software`]: [`SoftwareTagStore`], tags held in host memory packed 4 bits per granule.
//! - [`snapshot`]: [`TagSnapshot`], a compact, checksummed, versioned save of guest tags with
//!   full and incremental (dirty-page) saves.
//! - [`memory`]: [`SharedGuestMemory`], guest memory on sealed memfds mapped `MAP_SHARED`
//!   (or private anonymous memory, [`RegionBacking`]), which KVM accepts for an MTE guest,
//!   and the backing rules ([`memory::check_backing`]).
//! - [`pages`]: which page size each backing gets from the host's THP and hugetlb settings.
//! - [`memfd`]: memfd creation and sealing (`create`, `create_sized`, `add_seals`, `seals`).
//! - `kvm` (aarch64, feature `kvm`), borrowing the caller's `VmFd` throughout: `enable`
//!   (MTE before any vCPU exists, returning the `MteEnabled` proof), `MemorySlots` (memory
//!   slots under the caller's slot numbers, for MTE and non-MTE VMs, with the MTE backing
//!   checks), `KvmTagStore` over `KVM_ARM_MTE_COPY_TAGS`, and a capability probe.
//!
//! # Example
//!
//! ```
//! use mte_memory::{SoftwareTagStore, TagSnapshot, TagStore, TAGS_PER_PAGE};
//! use vm_memory::GuestAddress;
//!
//! let layout = [(GuestAddress(0x8000_0000), 16 * 4096)];
//! let mut source = SoftwareTagStore::new(&layout).unwrap();
//! source.write_tags(GuestAddress(0x8000_2000), &[0x5; TAGS_PER_PAGE]).unwrap();
//!
//! let bytes = TagSnapshot::capture_full(&source, &layout).unwrap().encode();
//! let mut target = SoftwareTagStore::new(&layout).unwrap();
//! TagSnapshot::decode(&bytes).unwrap().restore(&mut target).unwrap();
//!
//! let mut tags = [0u8; TAGS_PER_PAGE];
//! target.read_tags(GuestAddress(0x8000_2000), &mut tags).unwrap();
//! assert!(tags.iter().all(|&t| t == 0x5));
//! ```
#![deny(unsafe_code)]

#[cfg(all(target_arch = "aarch64", feature = "kvm"))]
pub mod kvm;
pub mod memfd;
pub mod memory;
pub mod pages;
pub mod snapshot;
pub mod software;
mod sys;
pub mod tags;

pub use memory::{BackingKind, RegionBacking, SharedGuestMemory, SharedMemoryConfig};
pub use snapshot::{PageBitmap, SnapshotKind, TagSnapshot};
pub use software::SoftwareTagStore;
pub use tags::{NoTags, TagStore, GRANULE_SIZE, TAGS_PER_PAGE, TAG_PAGE_SIZE};
