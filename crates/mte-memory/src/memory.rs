//! Guest memory on sealed memfds mapped `MAP_SHARED` (or, where nothing needs to share it,
//! private anonymous memory), and the rules for backing an MTE guest.
//!
//! With a memfd backing ([`RegionBacking::Memfd`], [`RegionBacking::HugetlbMemfd`]) each
//! region is its own memfd ([`crate::memfd::create_sized`]), sized once and sealed against
//! shrinking and growing (and against further seal changes), so another process that receives
//! the fd can map it without the risk of `SIGBUS` from a truncation. The VMM maps it
//! `MAP_SHARED`; KVM accepts such a mapping for an MTE guest because shmem mappings are
//! `VM_MTE_ALLOWED`, unlike regular files or ramfs. [`RegionBacking::Anonymous`] regions have
//! no fd: the fastest choice on hosts whose shmem gets no huge pages (see [`crate::pages`]).
//! Every region is asked for transparent huge pages (`MADV_HUGEPAGE`).

use std::fmt;
use std::fs::File;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionError;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionCollectionError, GuestRegionMmap,
    MmapRegion,
};

use crate::{memfd, sys};

/// `PROT_MTE` from the arm64 uapi (`asm/mman.h`): map with Normal-Tagged memory.
pub const PROT_MTE: i32 = 0x20;
/// Size of a huge page when `hugepages` is requested.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// Filesystem magic numbers from `linux/magic.h`.
const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// The rule KVM and the arm64 kernel apply to memory behind an MTE guest.
pub const MTE_BACKING_RULE: &str = "memory of an MTE guest must be mappable with PROT_MTE \
    (VM_MTE_ALLOWED): anonymous memory, memfd or tmpfs (shmem), or hugetlbfs on kernels that \
    support MTE there; regular files and ramfs are refused";

/// What a guest memory mapping is backed by, as far as MTE is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingKind {
    /// Anonymous memory (`MAP_ANONYMOUS`).
    Anonymous,
    /// A shmem file: a memfd or a file on tmpfs.
    Shmem,
    /// A hugetlbfs file, including a `MFD_HUGETLB` memfd.
    Hugetlb,
    /// A file on ramfs.
    Ramfs,
    /// A file on any other filesystem (e.g. a regular disk file); the filesystem magic.
    OtherFile(u64),
}

impl fmt::Display for BackingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("anonymous memory"),
            Self::Shmem => f.write_str("a memfd or tmpfs file"),
            Self::Hugetlb => f.write_str("a hugetlbfs file"),
            Self::Ramfs => f.write_str("a ramfs file"),
            Self::OtherFile(magic) => write!(f, "a file on filesystem {magic:#x}"),
        }
    }
}

impl BackingKind {
    /// Classifies the backing of `file` from its filesystem.
    pub fn of_file(file: &File) -> std::io::Result<Self> {
        Ok(match sys::fs_magic(file)? {
            TMPFS_MAGIC => Self::Shmem,
            HUGETLBFS_MAGIC => Self::Hugetlb,
            RAMFS_MAGIC => Self::Ramfs,
            other => Self::OtherFile(other),
        })
    }
}

/// Refuses backings that can never hold an MTE guest's memory.
///
/// Hugetlb passes here: whether the running kernel allows MTE on it is only known by trying,
/// which [`SharedGuestMemory::new`] does when `mte_guest` is set.
pub fn check_backing(kind: BackingKind, mte_guest: bool) -> Result<()> {
    match kind {
        _ if !mte_guest => Ok(()),
        BackingKind::Anonymous | BackingKind::Shmem | BackingKind::Hugetlb => Ok(()),
        BackingKind::Ramfs | BackingKind::OtherFile(_) => Err(Error::BackingRefused {
            backing: kind,
            rule: MTE_BACKING_RULE,
        }),
    }
}

/// What backs each region of a [`SharedGuestMemory`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RegionBacking {
    /// A sealed memfd mapped `MAP_SHARED`: shareable with another process by its fd (device
    /// back-ends, a local migration target). Transparent huge pages where the host's
    /// `shmem_enabled` allows them.
    #[default]
    Memfd,
    /// A sealed `MFD_HUGETLB` memfd mapped `MAP_SHARED`: 2 MiB pages from the host's hugetlb
    /// pool, reserved when the memory is created (creation fails if the pool is too small).
    HugetlbMemfd,
    /// Private anonymous memory: no fd, nothing else can map it. Transparent huge pages where
    /// the host's THP `enabled` setting allows them (`always` on stock kernels).
    Anonymous,
}

impl RegionBacking {
    /// Whether the regions have an fd another process can map.
    pub fn is_shareable(self) -> bool {
        !matches!(self, Self::Anonymous)
    }

    /// The classification MTE's rules apply to.
    pub fn kind(self) -> BackingKind {
        match self {
            Self::Memfd => BackingKind::Shmem,
            Self::HugetlbMemfd => BackingKind::Hugetlb,
            Self::Anonymous => BackingKind::Anonymous,
        }
    }

    /// The page size regions must be aligned to.
    pub fn alignment(self) -> u64 {
        match self {
            Self::HugetlbMemfd => HUGE_PAGE_SIZE,
            Self::Memfd | Self::Anonymous => sys::page_size(),
        }
    }
}

impl fmt::Display for RegionBacking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Memfd => "a memfd mapped shared",
            Self::HugetlbMemfd => "a hugetlb memfd mapped shared",
            Self::Anonymous => "private anonymous memory",
        })
    }
}

/// Errors creating shared guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("Invalid shared memory configuration: {0}")]
    Config(&'static str),
    /// Creating, sizing or sealing the region's memfd failed.
    #[error("Cannot create the memfd for region at {base:#x}")]
    Memfd {
        /// Guest base of the region.
        base: u64,
        /// What failed.
        #[source]
        source: memfd::Error,
    },
    /// Mapping the memfd failed.
    #[error("Cannot map region at {base:#x}")]
    Mmap {
        /// Guest base of the region.
        base: u64,
        /// The mapping error.
        #[source]
        source: MmapRegionError,
    },
    /// The regions do not form a valid guest memory.
    #[error("Cannot assemble guest memory")]
    Collection(#[source] GuestRegionCollectionError),
    /// The backing cannot hold an MTE guest's memory.
    #[error("{backing} cannot back an MTE guest: {rule}")]
    BackingRefused {
        /// The refused backing.
        backing: BackingKind,
        /// The rule that refuses it.
        rule: &'static str,
    },
    /// The kernel refused a `PROT_MTE` mapping of the region (on hugetlb: the kernel does not
    /// support MTE on huge pages; elsewhere: the host has no MTE).
    #[error("Kernel refused PROT_MTE on {backing} for region at {base:#x} ({rule})")]
    MteMappingRefused {
        /// Guest base of the region.
        base: u64,
        /// The backing that was tried.
        backing: BackingKind,
        /// The rule involved.
        rule: &'static str,
        /// The OS error from `mmap`.
        #[source]
        source: MmapRegionError,
    },
    /// MTE was requested on an architecture without it.
    #[error("MTE guest memory needs an arm64 host")]
    MteUnsupportedArch,
}

/// Result type of shared-memory operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Configuration of [`SharedGuestMemory`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedMemoryConfig {
    /// `(guest base, size)` of each region; sizes page aligned (huge-page aligned with
    /// [`RegionBacking::HugetlbMemfd`]), regions not overlapping.
    pub regions: Vec<(GuestAddress, u64)>,
    /// What backs the regions.
    pub backing: RegionBacking,
    /// The memory will back an MTE guest: check at creation that the kernel allows
    /// `PROT_MTE` on it (fails early, with the rule, instead of at `KVM_SET_USER_MEMORY_REGION`).
    pub mte_guest: bool,
    /// Map the VMM's own view with `PROT_MTE` too. KVM does not need it; it lets the VMM
    /// access guest memory with tag checks or read tags with `LDG`. Requires `mte_guest`.
    pub vmm_prot_mte: bool,
}

impl SharedMemoryConfig {
    /// Checks alignment, overlap and flag combinations.
    pub fn validate(&self) -> Result<()> {
        if self.regions.is_empty() {
            return Err(Error::Config("no regions"));
        }
        if self.vmm_prot_mte && !self.mte_guest {
            return Err(Error::Config("vmm_prot_mte requires mte_guest"));
        }
        let align = self.backing.alignment();
        let mut sorted = self.regions.clone();
        sorted.sort_unstable();
        let mut prev_end = 0u64;
        for (i, (base, size)) in sorted.iter().enumerate() {
            if *size == 0 || base.0 % align != 0 || size % align != 0 {
                return Err(Error::Config(
                    "region base or size not aligned to the page size",
                ));
            }
            if usize::try_from(*size).is_err() {
                return Err(Error::Config("region larger than the address space"));
            }
            let end = base
                .0
                .checked_add(*size)
                .ok_or(Error::Config("region wraps"))?;
            if i > 0 && base.0 < prev_end {
                return Err(Error::Config("regions overlap"));
            }
            prev_end = end;
        }
        Ok(())
    }
}

/// Guest memory whose regions are sealed memfds mapped `MAP_SHARED`, or private anonymous
/// memory (see [`RegionBacking`]).
#[derive(Debug)]
pub struct SharedGuestMemory {
    memory: GuestMemoryMmap,
    /// Each region's base, size and memfd (`None` for anonymous memory).
    files: Vec<(GuestAddress, u64, Option<Arc<File>>)>,
    config: SharedMemoryConfig,
}

impl SharedGuestMemory {
    /// Creates and maps each region (for a memfd backing: creates, sizes and seals one memfd
    /// per region), asking for transparent huge pages.
    pub fn new(config: SharedMemoryConfig) -> Result<Self> {
        config.validate()?;
        if config.mte_guest && !cfg!(target_arch = "aarch64") {
            return Err(Error::MteUnsupportedArch);
        }
        let backing = config.backing;
        check_backing(backing.kind(), config.mte_guest)?;
        let mut regions = Vec::with_capacity(config.regions.len());
        let mut files = Vec::with_capacity(config.regions.len());
        for &(base, size) in &config.regions {
            let file = match backing {
                RegionBacking::Anonymous => None,
                RegionBacking::Memfd | RegionBacking::HugetlbMemfd => Some(Arc::new(
                    create_region_file(base, size, backing == RegionBacking::HugetlbMemfd)?,
                )),
            };
            if config.mte_guest && !config.vmm_prot_mte {
                // Fail early, naming the rule, where the kernel will not allow MTE.
                drop(map_region(file.as_ref(), base, size, true, backing)?);
            }
            let mapping = map_region(file.as_ref(), base, size, config.vmm_prot_mte, backing)?;
            // Only a hint: THP off (or no THP in the kernel) leaves base pages.
            let _ = sys::madvise_hugepage(mapping.as_ptr(), mapping.size());
            if backing == RegionBacking::Anonymous {
                // Names the mapping `[anon:guest-mem-<base>]` in /proc/<pid>/maps, as a memfd
                // region is `memfd:guest-mem-<base>`; kernels without anonymous VMA names
                // refuse, which changes nothing else.
                let _ = sys::name_anonymous(mapping.as_ptr(), mapping.size(), &region_name(base));
            }
            let region = GuestRegionMmap::new(mapping, base)
                .ok_or(Error::Config("region wraps the guest address space"))?;
            regions.push(region);
            files.push((base, size, file));
        }
        let memory = GuestMemoryMmap::from_regions(regions).map_err(Error::Collection)?;
        Ok(Self {
            memory,
            files,
            config,
        })
    }

    /// The guest memory, for use with vm-memory's `Bytes` and friends.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The configuration the memory was built from.
    pub fn config(&self) -> &SharedMemoryConfig {
        &self.config
    }

    /// `(guest base, size)` of each region, in configuration order.
    pub fn regions(&self) -> Vec<(GuestAddress, u64)> {
        self.files.iter().map(|(b, s, _)| (*b, *s)).collect()
    }

    /// The memfd of region `index` (configuration order), to hand to another process; `None`
    /// for anonymous memory.
    pub fn region_fd(&self, index: usize) -> Option<&Arc<File>> {
        self.files.get(index).and_then(|(_, _, f)| f.as_ref())
    }

    /// Maps region `index` a second time, as another process receiving its fd would; with
    /// `prot_mte` the new view is Normal-Tagged.
    pub fn map_region_again(&self, index: usize, prot_mte: bool) -> Result<MmapRegion> {
        let (base, size, file) = self
            .files
            .get(index)
            .ok_or(Error::Config("no region with that index"))?;
        let file = file
            .as_ref()
            .ok_or(Error::Config("anonymous memory cannot be mapped again"))?;
        map_region(Some(file), *base, *size, prot_mte, self.config.backing)
    }
}

/// The name of the region at `base` (`guest-mem-0x80000000`).
fn region_name(base: GuestAddress) -> String {
    format!("guest-mem-{:#x}", base.0)
}

/// One memfd per region, sized and sealed with [`memfd::FIXED_SIZE`].
fn create_region_file(base: GuestAddress, size: u64, hugepages: bool) -> Result<File> {
    memfd::create_sized(&region_name(base), size, hugepages).map_err(|source| Error::Memfd {
        base: base.0,
        source,
    })
}

/// Maps `file` shared (or, without one, private anonymous memory) for the region at `base`.
fn map_region(
    file: Option<&Arc<File>>,
    base: GuestAddress,
    size: u64,
    prot_mte: bool,
    region_backing: RegionBacking,
) -> Result<MmapRegion> {
    let backing = region_backing.kind();
    let hugetlb = region_backing == RegionBacking::HugetlbMemfd;
    let mut prot = libc::PROT_READ | libc::PROT_WRITE;
    if prot_mte {
        prot |= PROT_MTE;
    }
    // `validate` checked that size fits usize.
    let len =
        usize::try_from(size).map_err(|_| Error::Config("region larger than the address space"))?;
    // hugetlb pages are reserved at mmap (no MAP_NORESERVE): a pool too small fails here
    // with ENOMEM instead of with SIGBUS when the guest first touches the page.
    let noreserve = if hugetlb { 0 } else { libc::MAP_NORESERVE };
    let builder = vm_memory::mmap::MmapRegionBuilder::new(len).with_mmap_prot(prot);
    let builder = match file {
        Some(file) => builder
            .with_file_offset(FileOffset::from_arc(Arc::clone(file), 0))
            .with_mmap_flags(libc::MAP_SHARED | noreserve),
        None => builder.with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | noreserve),
    };
    builder.with_hugetlbfs(hugetlb).build().map_err(|source| {
        if prot_mte {
            Error::MteMappingRefused {
                base: base.0,
                backing,
                rule: MTE_BACKING_RULE,
                source,
            }
        } else {
            Error::Mmap {
                base: base.0,
                source,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};

    use vm_memory::{Bytes, GuestMemoryBackend, VolatileMemory};

    use super::*;

    fn config(regions: &[(u64, u64)]) -> SharedMemoryConfig {
        SharedMemoryConfig {
            regions: regions.iter().map(|&(b, s)| (GuestAddress(b), s)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn guest_writes_are_visible_through_the_region_fd() {
        let mem = SharedGuestMemory::new(config(&[(0x8000_0000, 0x10000)])).unwrap();

        mem.memory()
            .write_obj(0xdead_beef_u32, GuestAddress(0x8000_1000))
            .unwrap();
        let mut file = mem.region_fd(0).unwrap().as_ref();
        file.seek(SeekFrom::Start(0x1000)).unwrap();
        let mut word = [0u8; 4];
        file.read_exact(&mut word).unwrap();

        assert_eq!(u32::from_le_bytes(word), 0xdead_beef);
    }

    #[test]
    fn second_mapping_shares_the_same_pages() {
        let mem = SharedGuestMemory::new(config(&[(0, 0x4000), (0x10_0000, 0x4000)])).unwrap();
        let other = mem.map_region_again(1, false).unwrap();

        mem.memory()
            .write_obj(0x55aa_u16, GuestAddress(0x10_0010))
            .unwrap();
        let seen: u16 = other.get_ref(0x10).unwrap().load();

        assert_eq!(seen, 0x55aa);
        assert_eq!(mem.memory().num_regions(), 2);
    }

    #[test]
    fn region_fd_is_sealed_against_resizing() {
        let mem = SharedGuestMemory::new(config(&[(0, 0x4000)])).unwrap();
        let file = mem.region_fd(0).unwrap();

        let shrink = file.set_len(0x1000);
        let grow = file.set_len(0x8000);
        let seals = memfd::seals(file).unwrap();

        assert!(shrink.is_err());
        assert!(grow.is_err());
        assert_eq!(seals & memfd::FIXED_SIZE, memfd::FIXED_SIZE);
        assert_eq!(file.metadata().unwrap().len(), 0x4000);
    }

    #[test]
    fn region_fd_is_shmem_backed() {
        let mem = SharedGuestMemory::new(config(&[(0, 0x4000)])).unwrap();

        let kind = BackingKind::of_file(mem.region_fd(0).unwrap()).unwrap();

        assert_eq!(kind, BackingKind::Shmem);
    }

    #[test]
    fn file_in_the_working_directory_is_judged_by_its_filesystem() {
        // In a disk checkout this is a regular file and must be refused, naming the rule; a
        // working directory on tmpfs or ramfs (the emulated machine's initramfs) is judged by
        // those rules instead.
        let dir = std::env::current_dir().unwrap();
        let mut tmp = vmm_sys_util::tempfile::TempFile::new_in(&dir)
            .unwrap()
            .into_file();
        tmp.write_all(&[0; 16]).unwrap();
        let kind = BackingKind::of_file(&tmp).unwrap();

        let result = check_backing(kind, true);

        match kind {
            BackingKind::OtherFile(_) | BackingKind::Ramfs => {
                let msg = result.unwrap_err().to_string();
                assert!(msg.contains("cannot back an MTE guest"), "{msg}");
                assert!(msg.contains("regular files and ramfs are refused"), "{msg}");
            }
            BackingKind::Shmem => assert!(result.is_ok()),
            other => panic!("unexpected backing {other} for a file in the source tree"),
        }
    }

    #[test]
    fn ramfs_and_other_files_are_refused_only_for_mte_guests() {
        assert!(check_backing(BackingKind::Ramfs, true).is_err());
        assert!(check_backing(BackingKind::OtherFile(0xef53), true).is_err());
        assert!(check_backing(BackingKind::Ramfs, false).is_ok());
        assert!(check_backing(BackingKind::Shmem, true).is_ok());
        assert!(check_backing(BackingKind::Anonymous, true).is_ok());
    }

    /// The kB of `field` in the smaps entry of the mapping that starts at `addr` (every entry
    /// lists every field, so the first one after the entry's header line is its own).
    fn smaps_field(addr: usize, field: &str) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let entry = smaps.split_once(&format!("\n{addr:x}-")).map(|(_, e)| e)?;
        entry.lines().find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
    }

    #[test]
    fn anonymous_memory_has_no_fd_and_gets_huge_pages_where_the_host_allows() {
        let size = 16 << 20;
        let mut cfg = config(&[(0x8000_0000, size)]);
        cfg.backing = RegionBacking::Anonymous;
        let mem = SharedGuestMemory::new(cfg).unwrap();
        assert!(mem.region_fd(0).is_none());
        assert!(!RegionBacking::Anonymous.is_shareable());
        assert!(mem.map_region_again(0, false).is_err());
        // Touch every page.
        let page = vec![0x5a_u8; 4096];
        for off in (0..size).step_by(4096) {
            mem.memory()
                .write_slice(&page, GuestAddress(0x8000_0000 + off))
                .unwrap();
        }
        let v: u8 = mem
            .memory()
            .read_obj(GuestAddress(0x8000_0000 + size - 1))
            .unwrap();
        assert_eq!(v, 0x5a);
        let host = mem
            .memory()
            .get_host_address(GuestAddress(0x8000_0000))
            .unwrap() as usize;
        let huge = smaps_field(host, "AnonHugePages:").expect("the mapping is in smaps");
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.starts_with(&format!("{host:x}-")))
            .unwrap();
        if crate::pages::HostPolicy::read().anonymous_huge() {
            assert!(huge >= 2048, "{huge} kB on huge pages; {line}");
        } else {
            assert_eq!(huge, 0, "{line}");
        }
        // Kernels with anonymous VMA names show the region's name.
        assert!(
            line.ends_with("[anon:guest-mem-0x80000000]") || !line.contains("[anon:"),
            "{line}"
        );
    }

    #[test]
    fn memfd_regions_are_named_and_follow_the_shmem_setting() {
        let size = 8 << 20;
        let mem = SharedGuestMemory::new(config(&[(0x4000_0000, size)])).unwrap();
        mem.memory()
            .write_slice(&vec![1u8; size as usize], GuestAddress(0x4000_0000))
            .unwrap();
        let host = mem
            .memory()
            .get_host_address(GuestAddress(0x4000_0000))
            .unwrap() as usize;
        let pmd = smaps_field(host, "ShmemPmdMapped:").unwrap_or(0);
        if !crate::pages::HostPolicy::read().shmem_huge() {
            assert_eq!(pmd, 0);
        }
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(maps
            .lines()
            .any(|l| l.starts_with(&format!("{host:x}-"))
                && l.contains("/memfd:guest-mem-0x40000000")));
    }

    #[test]
    fn a_hugetlb_pool_too_small_fails_at_creation_not_at_first_touch() {
        let free = crate::pages::HostPolicy::read().hugetlb_free.unwrap_or(0);
        let size = (free + 1) * HUGE_PAGE_SIZE;
        let mut cfg = config(&[(0, size)]);
        cfg.backing = RegionBacking::HugetlbMemfd;
        let e = SharedGuestMemory::new(cfg).unwrap_err();
        assert!(matches!(e, Error::Mmap { .. } | Error::Memfd { .. }), "{e}");
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let result = config(&[(0, 0x4000), (0x2000, 0x4000)]).validate();

        assert!(matches!(result, Err(Error::Config("regions overlap"))));
    }

    #[test]
    fn unaligned_region_is_refused() {
        assert!(matches!(
            config(&[(0x800, 0x1000)]).validate(),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn hugepage_regions_must_be_huge_page_aligned() {
        let mut cfg = config(&[(0, 0x10_0000)]);
        cfg.backing = RegionBacking::HugetlbMemfd;

        assert!(matches!(cfg.validate(), Err(Error::Config(_))));
    }

    #[test]
    fn vmm_prot_mte_without_mte_guest_is_refused() {
        let mut cfg = config(&[(0, 0x1000)]);
        cfg.vmm_prot_mte = true;

        assert!(matches!(cfg.validate(), Err(Error::Config(_))));
    }

    #[test]
    fn empty_config_is_refused() {
        assert!(matches!(
            config(&[]).validate(),
            Err(Error::Config("no regions"))
        ));
    }

    #[cfg(not(target_arch = "aarch64"))]
    #[test]
    fn mte_guest_on_non_arm64_host_is_refused() {
        let mut cfg = config(&[(0, 0x1000)]);
        cfg.mte_guest = true;

        assert!(matches!(
            SharedGuestMemory::new(cfg),
            Err(Error::MteUnsupportedArch)
        ));
    }
}
