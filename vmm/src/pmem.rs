//! virtio-pmem backings: the `--pmem` specification, its validation, and the shared mapping
//! that the guest sees as persistent memory.
//!
//! A backing is a host file or an anonymous memfd, mapped `MAP_SHARED` so that guest writes
//! land in the file's page cache (or in the memfd, which another process can map through
//! `/proc/<pid>/fd/<n>`). [`PmemBacking::flush`] makes them durable: `msync(MS_SYNC)` over the
//! whole mapping, then `fsync` of the file.
//!
//! Specification syntax (`--pmem`, repeatable):
//!
//! ```text
//! file=PATH[,size=SIZE][,readonly=on|off]
//! memfd,size=SIZE[,readonly=on|off]
//! ```
//!
//! `SIZE` takes the K/M/G suffixes of `--memory` and must be a non-zero multiple of 2 MiB. A
//! file must exist and hold at least `SIZE` bytes; without `size=` the whole file is used and
//! its length must be such a multiple. Paths cannot contain commas.
//!
//! With `--mte`, a file must be on tmpfs (shmem) or hugetlbfs: KVM maps a memory slot into an
//! MTE guest only if the kernel can keep allocation tags for its pages (`VM_MTE_ALLOWED`),
//! which regular disk filesystems cannot.

use mte_memory::BackingKind;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, MmapRegion};

use crate::config::parse_size;
use crate::layout::PMEM_ALIGN;

/// Where a pmem region's contents live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PmemSource {
    /// A host file, mapped from its start.
    File(PathBuf),
    /// A new anonymous memfd, zero-filled.
    Memfd,
}

/// A validated `--pmem` device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmemConfig {
    /// The backing.
    pub source: PmemSource,
    /// Size of the region in bytes: a non-zero multiple of 2 MiB, at most the file's length.
    pub size: u64,
    /// Map read-only and register the KVM memory slot read-only.
    pub readonly: bool,
}

/// A `--pmem` specification that cannot be used (found before anything is built).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The text does not follow the syntax.
    #[error(
        "--pmem {spec:?}: {reason} (use file=PATH[,size=SIZE][,readonly=on] or memfd,size=SIZE)"
    )]
    Syntax {
        /// The specification given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The size is not understood, zero, or not a multiple of 2 MiB.
    #[error("--pmem {spec:?}: size {size:?}: {reason}")]
    Size {
        /// The specification given.
        spec: String,
        /// The size given (or the file's length, when no size was given).
        size: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file does not exist.
    #[error("pmem {}: no such file", path.display())]
    MissingFile {
        /// The path given.
        path: PathBuf,
    },
    /// The path exists but is not a regular file.
    #[error("pmem {}: not a regular file", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// The file cannot be opened or inspected.
    #[error("pmem {}: {reason}", path.display())]
    Access {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The file is shorter than the size asked for.
    #[error("pmem {}: the file has {len} bytes, fewer than size={size} asks for", path.display())]
    FileTooSmall {
        /// The path given.
        path: PathBuf,
        /// The file's length.
        len: u64,
        /// The size asked for.
        size: u64,
    },
    /// The file cannot back pmem of an MTE guest.
    #[error(
        "pmem {}: a file on {fs} cannot hold MTE tags; with --mte use memfd or a file on tmpfs \
         (/dev/shm)",
        path.display()
    )]
    MteBacking {
        /// The path given.
        path: PathBuf,
        /// The filesystem the file is on.
        fs: String,
    },
    /// More devices than virtio-mmio slots.
    #[error("at most {max} --pmem devices, got {given}")]
    TooMany {
        /// The number of slots.
        max: usize,
        /// The number of devices given.
        given: usize,
    },
    /// The regions do not fit in the guest-physical address space.
    #[error(
        "--pmem: the regions ({total} bytes) do not fit between the end of RAM and the 40-bit \
         guest-physical address limit"
    )]
    DoesNotFit {
        /// Total size of the regions.
        total: u128,
    },
}

/// The syntax of one specification, before any file is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    source: PmemSource,
    size: Option<(String, u64)>,
    readonly: bool,
}

fn parse_spec(spec: &str) -> Result<Spec, SpecError> {
    let syntax = |reason: &str| SpecError::Syntax {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let mut source = None;
    let mut size = None;
    let mut readonly = None;
    for item in spec.split(',') {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        match (key, value) {
            ("memfd", None) if source.is_none() => source = Some(PmemSource::Memfd),
            ("file", Some(path)) if source.is_none() => {
                if path.is_empty() {
                    return Err(syntax("file= needs a path"));
                }
                source = Some(PmemSource::File(PathBuf::from(path)));
            }
            ("memfd" | "file", _) if source.is_some() => {
                return Err(syntax("give one backing, file=PATH or memfd"))
            }
            ("size", Some(text)) if size.is_none() => {
                let bytes = parse_size(text).map_err(|reason| SpecError::Size {
                    spec: spec.to_string(),
                    size: text.to_string(),
                    reason,
                })?;
                size = Some((text.to_string(), bytes));
            }
            ("readonly", Some(v)) if readonly.is_none() => {
                readonly = Some(match v {
                    "on" | "true" | "yes" => true,
                    "off" | "false" | "no" => false,
                    _ => return Err(syntax("readonly takes on or off")),
                });
            }
            ("size" | "readonly", Some(_)) => return Err(syntax(&format!("{key} given twice"))),
            ("", _) => return Err(syntax("empty item")),
            ("file" | "size" | "readonly", None) => {
                return Err(syntax(&format!("{key} needs a value ({key}=...)")))
            }
            ("memfd", Some(_)) => return Err(syntax("memfd takes no value")),
            (other, _) => return Err(syntax(&format!("unknown key {other:?}"))),
        }
    }
    let source = source.ok_or_else(|| syntax("no backing: give file=PATH or memfd"))?;
    if source == PmemSource::Memfd && size.is_none() {
        return Err(syntax("memfd needs size=SIZE"));
    }
    Ok(Spec {
        source,
        size,
        readonly: readonly.unwrap_or(false),
    })
}

fn check_granule(spec: &str, text: &str, bytes: u64) -> Result<(), SpecError> {
    let err = |reason: &str| SpecError::Size {
        spec: spec.to_string(),
        size: text.to_string(),
        reason: reason.to_string(),
    };
    if bytes == 0 {
        return Err(err("must not be zero"));
    }
    if bytes % PMEM_ALIGN != 0 {
        return Err(err("must be a multiple of 2 MiB"));
    }
    Ok(())
}

/// A name for the filesystem with magic number `magic` (`statfs`'s `f_type`), for messages.
pub fn filesystem_name(magic: u64) -> String {
    let name = match magic {
        0xef53 => "ext2/ext3/ext4",
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0xf2f5_2010 => "f2fs",
        0x2fc1_2fc1 => "zfs",
        0x794c_7630 => "overlayfs",
        0x6969 => "nfs",
        0xff53_4d42 | 0xfe53_4d42 => "cifs/smb",
        0x0102_1997 => "9p",
        0x6573_5546 => "fuse",
        0x8584_58f6 => "ramfs",
        0x4d44 => "vfat",
        0x5346_544e => "ntfs",
        _ => return format!("the filesystem with magic {magic:#x}"),
    };
    name.to_string()
}

impl PmemConfig {
    /// Validates one `--pmem` specification; `mte` is whether the guest has MTE.
    pub fn from_spec(spec: &str, mte: bool) -> Result<Self, SpecError> {
        let parsed = parse_spec(spec)?;
        if let Some((text, bytes)) = &parsed.size {
            check_granule(spec, text, *bytes)?;
        }
        let size = match &parsed.source {
            PmemSource::Memfd => parsed.size.map(|(_, b)| b).unwrap_or(0),
            PmemSource::File(path) => {
                let file = open_checked(path)?;
                let access = |e: std::io::Error| SpecError::Access {
                    path: path.clone(),
                    reason: e.to_string(),
                };
                let len = file.metadata().map_err(access)?.len();
                let size = match &parsed.size {
                    Some((_, bytes)) => *bytes,
                    None => {
                        check_granule(spec, &format!("{len} (the file's length)"), len)?;
                        len
                    }
                };
                if len < size {
                    return Err(SpecError::FileTooSmall {
                        path: path.clone(),
                        len,
                        size,
                    });
                }
                if mte {
                    check_mte_file(path, &file)?;
                }
                size
            }
        };
        Ok(PmemConfig {
            source: parsed.source,
            size,
            readonly: parsed.readonly,
        })
    }

    /// A short description for logs: the path, or `memfd`.
    pub fn describe(&self) -> String {
        match &self.source {
            PmemSource::File(p) => p.display().to_string(),
            PmemSource::Memfd => "memfd".to_string(),
        }
    }
}

fn open_checked(path: &Path) -> Result<File, SpecError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SpecError::MissingFile {
            path: path.to_path_buf(),
        },
        _ => SpecError::Access {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    if !meta.is_file() {
        return Err(SpecError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    File::open(path).map_err(|e| SpecError::Access {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Refuses a file the kernel cannot map into an MTE guest.
fn check_mte_file(path: &Path, file: &File) -> Result<(), SpecError> {
    let kind = BackingKind::of_file(file).map_err(|e| SpecError::Access {
        path: path.to_path_buf(),
        reason: format!("cannot tell its filesystem: {e}"),
    })?;
    match kind {
        BackingKind::Shmem | BackingKind::Hugetlb | BackingKind::Anonymous => Ok(()),
        BackingKind::Ramfs => Err(SpecError::MteBacking {
            path: path.to_path_buf(),
            fs: "ramfs".into(),
        }),
        BackingKind::OtherFile(magic) => Err(SpecError::MteBacking {
            path: path.to_path_buf(),
            fs: filesystem_name(magic),
        }),
    }
}

/// Validates every `--pmem` specification and checks that the regions fit above `memory`
/// bytes of RAM.
pub fn validate_all(
    specs: &[String],
    memory: u64,
    mte: bool,
) -> Result<Vec<PmemConfig>, SpecError> {
    let max = crate::layout::VIRTIO_SLOTS as usize;
    if specs.len() > max {
        return Err(SpecError::TooMany {
            max,
            given: specs.len(),
        });
    }
    let configs = specs
        .iter()
        .map(|s| PmemConfig::from_spec(s, mte))
        .collect::<Result<Vec<_>, _>>()?;
    let sizes: Vec<u64> = configs.iter().map(|c| c.size).collect();
    if crate::layout::pmem_bases(memory, &sizes).is_none() {
        return Err(SpecError::DoesNotFit {
            total: sizes.iter().map(|&s| u128::from(s)).sum(),
        });
    }
    Ok(configs)
}

/// Errors opening or mapping a backing when the VM is built, or flushing it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be opened (it changed since the configuration was checked?).
    #[error("pmem {}: cannot open: {source}", path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds a lock on the file.
    #[error("pmem {}: the file is in use by another process (it holds a lock on it)", path.display())]
    Locked {
        /// The path.
        path: PathBuf,
    },
    /// The file shrank below the region size since the configuration was checked.
    #[error("pmem {}: the file has {len} bytes, fewer than the {size} the region needs", path.display())]
    Shrunk {
        /// The path.
        path: PathBuf,
        /// The file's length now.
        len: u64,
        /// The region size.
        size: u64,
    },
    /// Creating or sizing the memfd failed.
    #[error("pmem memfd: cannot create a {size}-byte memfd: {source}")]
    Memfd {
        /// The region size.
        size: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// `mmap` failed.
    #[error("pmem {what}: cannot map {size} bytes: {source}")]
    Map {
        /// The path or `memfd`.
        what: String,
        /// The region size.
        size: u64,
        /// The mapping error.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The kernel refused a tagged (`PROT_MTE`) mapping of the backing.
    #[error(
        "pmem {what}: the kernel cannot map this backing with MTE tags ({source}); with --mte \
         use memfd or a file on tmpfs (/dev/shm)"
    )]
    MteRefused {
        /// The path or `memfd`.
        what: String,
        /// The mapping error.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// A flush of a read-only device: KVM drops the guest's writes to a read-only memory
    /// slot, so nothing the guest wrote can be made durable, and success would be a lie.
    #[error(
        "pmem {what}: flush refused: the device is read-only, the guest's writes are not stored"
    )]
    ReadOnly {
        /// The path or `memfd`.
        what: String,
    },
    /// `msync` or `fsync` failed.
    #[error("pmem {what}: flush failed: {source}")]
    Flush {
        /// The path or `memfd`.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// `PROT_MTE` from the arm64 uapi.
#[cfg(target_arch = "aarch64")]
const PROT_MTE: i32 = 0x20;

/// An open, mapped pmem backing.
#[derive(Debug)]
pub struct PmemBacking {
    what: String,
    file: Arc<File>,
    mapping: Arc<MmapRegion>,
    readonly: bool,
}

impl PmemBacking {
    /// Opens (or, for memfd, creates) and maps the backing of `cfg`; `index` names the memfd;
    /// with `mte` the backing is first test-mapped with `PROT_MTE` (aarch64) so that a backing
    /// the kernel cannot tag is refused here rather than by KVM.
    pub fn open(cfg: &PmemConfig, index: usize, mte: bool) -> Result<Self, Error> {
        let what = cfg.describe();
        let file = match &cfg.source {
            PmemSource::File(path) => open_file(path, cfg)?,
            PmemSource::Memfd => create_memfd(index, cfg.size)?,
        };
        let file = Arc::new(file);
        let len = usize::try_from(cfg.size).map_err(|_| Error::Memfd {
            size: cfg.size,
            source: std::io::Error::from_raw_os_error(libc::EFBIG),
        })?;
        let hugetlb = matches!(BackingKind::of_file(&file), Ok(BackingKind::Hugetlb));
        let mut prot = libc::PROT_READ;
        if !cfg.readonly {
            prot |= libc::PROT_WRITE;
        }
        let map = |prot: i32| {
            MmapRegionBuilder::new(len)
                .with_file_offset(FileOffset::from_arc(Arc::clone(&file), 0))
                .with_mmap_prot(prot)
                .with_mmap_flags(libc::MAP_SHARED)
                .with_hugetlbfs(hugetlb)
                .build()
        };
        #[cfg(target_arch = "aarch64")]
        if mte {
            drop(map(prot | PROT_MTE).map_err(|source| Error::MteRefused {
                what: what.clone(),
                source,
            })?);
        }
        #[cfg(not(target_arch = "aarch64"))]
        let _ = mte;
        let mapping = map(prot).map_err(|source| Error::Map {
            what: what.clone(),
            size: cfg.size,
            source,
        })?;
        Ok(PmemBacking {
            what,
            file,
            mapping: Arc::new(mapping),
            readonly: cfg.readonly,
        })
    }

    /// The mapping, to register as a KVM memory slot (which keeps it alive).
    pub fn mapping(&self) -> Arc<MmapRegion> {
        Arc::clone(&self.mapping)
    }

    /// The backing's file (the memfd for memfd backings), e.g. to hand to another process.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Size of the region in bytes.
    pub fn size(&self) -> u64 {
        self.mapping.size() as u64
    }

    /// Whether the guest sees the region read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The path, or `memfd`.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// Makes everything written through the mapping durable: `msync(MS_SYNC)` over the whole
    /// mapping, then `fsync` of the file. On a read-only backing it fails (the guest gets an
    /// I/O error): the writes it wants flushed were dropped by KVM.
    pub fn flush(&self) -> Result<(), Error> {
        if self.readonly {
            return Err(Error::ReadOnly {
                what: self.what.clone(),
            });
        }
        let err = |source| Error::Flush {
            what: self.what.clone(),
            source,
        };
        // SAFETY: the range is exactly the live mapping `self.mapping` owns (start and length
        // as mmap returned them); msync only writes back its pages and touches no Rust memory.
        let ret = unsafe {
            libc::msync(
                self.mapping.as_ptr().cast(),
                self.mapping.size(),
                libc::MS_SYNC,
            )
        };
        if ret != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        self.file.sync_all().map_err(err)
    }
}

fn open_file(path: &Path, cfg: &PmemConfig) -> Result<File, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(!cfg.readonly)
        .open(path)
        .map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
    // A writer excludes everyone; readers exclude writers. Advisory, like every flock.
    let op = if cfg.readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a descriptor `file` keeps open; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Error::Locked {
                path: path.to_path_buf(),
            }
        } else {
            Error::Open {
                path: path.to_path_buf(),
                source: e,
            }
        });
    }
    let len = file
        .metadata()
        .map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len < cfg.size {
        return Err(Error::Shrunk {
            path: path.to_path_buf(),
            len,
            size: cfg.size,
        });
    }
    Ok(file)
}

/// Seals of a pmem memfd: its size is fixed (another process that maps it cannot make the
/// guest's accesses fault by truncating it), and the seals themselves are frozen.
const MEMFD_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

fn create_memfd(index: usize, size: u64) -> Result<File, Error> {
    let err = |source| Error::Memfd { size, source };
    let name = CString::new(format!("refvmm-pmem{index}"))
        .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the kernel does
    // not keep the pointer.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create; nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(err)?;
    // SAFETY: F_ADD_SEALS takes an integer and changes only the memfd's kernel state.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, MEMFD_SEALS) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    const MIB: u64 = 1 << 20;

    /// A file that removes itself, in `dir`.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(dir: &Path, len: u64) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = dir.join(format!(
                "refvmm-pmem-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let f = File::create(&p).unwrap();
            f.set_len(len).unwrap();
            Scratch(p)
        }

        fn spec(&self, rest: &str) -> String {
            format!("file={}{rest}", self.0.display())
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A directory for files that should be on a disk filesystem (not tmpfs): under the
    /// build's target directory, if it can be created here (the emulated machine has no
    /// build tree).
    fn disk_dir() -> Option<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pmem-tests");
        std::fs::create_dir_all(&dir).ok().map(|()| dir)
    }

    fn fs_kind(dir: &Path) -> BackingKind {
        let s = Scratch::new(dir, 0);
        BackingKind::of_file(&File::open(&s.0).unwrap()).unwrap()
    }

    #[test]
    fn memfd_spec_needs_a_size_and_gets_it() {
        let c = PmemConfig::from_spec("memfd,size=4M", false).unwrap();
        assert_eq!(
            c,
            PmemConfig {
                source: PmemSource::Memfd,
                size: 4 * MIB,
                readonly: false
            }
        );
        let e = PmemConfig::from_spec("memfd", false).unwrap_err();
        assert!(e.to_string().contains("memfd needs size=SIZE"), "{e}");
        let c = PmemConfig::from_spec("size=2M,readonly=on,memfd", true).unwrap();
        assert!(c.readonly);
    }

    #[test]
    fn file_spec_takes_the_file_length_when_no_size_is_given() {
        let f = Scratch::new(&std::env::temp_dir(), 6 * MIB);
        let c = PmemConfig::from_spec(&f.spec(""), false).unwrap();
        assert_eq!(c.size, 6 * MIB);
        assert_eq!(c.source, PmemSource::File(f.0.clone()));
        let c = PmemConfig::from_spec(&f.spec(",size=2M,readonly=off"), false).unwrap();
        assert_eq!(c.size, 2 * MIB);
        assert!(!c.readonly);
    }

    #[test]
    fn missing_file_is_named() {
        let e = PmemConfig::from_spec("file=/nonexistent/pmem.img,size=2M", false).unwrap_err();
        assert_eq!(e.to_string(), "pmem /nonexistent/pmem.img: no such file");
    }

    #[test]
    fn directory_is_not_a_backing() {
        let e = PmemConfig::from_spec("file=/", false).unwrap_err();
        assert_eq!(e.to_string(), "pmem /: not a regular file");
    }

    #[test]
    fn unaligned_and_zero_sizes_are_refused() {
        let e = PmemConfig::from_spec("memfd,size=3M", false).unwrap_err();
        assert!(e.to_string().contains("must be a multiple of 2 MiB"), "{e}");
        let e = PmemConfig::from_spec("memfd,size=0", false).unwrap_err();
        assert!(e.to_string().contains("must not be zero"), "{e}");
        let e = PmemConfig::from_spec("memfd,size=lots", false).unwrap_err();
        assert!(e.to_string().contains("size \"lots\""), "{e}");
        // Without size=, the file's own length must be a whole number of 2 MiB granules.
        let f = Scratch::new(&std::env::temp_dir(), 3 * MIB);
        let e = PmemConfig::from_spec(&f.spec(""), false).unwrap_err();
        assert!(e.to_string().contains("the file's length"), "{e}");
        assert!(e.to_string().contains("multiple of 2 MiB"), "{e}");
        let f = Scratch::new(&std::env::temp_dir(), 0);
        let e = PmemConfig::from_spec(&f.spec(""), false).unwrap_err();
        assert!(e.to_string().contains("must not be zero"), "{e}");
    }

    #[test]
    fn file_smaller_than_size_is_refused() {
        let f = Scratch::new(&std::env::temp_dir(), 2 * MIB);
        let e = PmemConfig::from_spec(&f.spec(",size=4M"), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "pmem {}: the file has 2097152 bytes, fewer than size=4194304 asks for",
                f.0.display()
            )
        );
    }

    #[test]
    fn bad_syntax_is_refused_with_the_reason() {
        let cases = [
            ("", "empty item"),
            ("size=2M", "no backing"),
            ("file=", "file= needs a path"),
            ("file", "file needs a value"),
            ("memfd=yes,size=2M", "memfd takes no value"),
            ("memfd,file=/x,size=2M", "give one backing"),
            ("memfd,size=2M,size=4M", "size given twice"),
            ("memfd,size=2M,readonly=maybe", "readonly takes on or off"),
            ("memfd,size=2M,,", "empty item"),
            ("memfd,size=2M,discard=on", "unknown key \"discard\""),
        ];
        for (spec, want) in cases {
            let e = PmemConfig::from_spec(spec, false).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, SpecError::Syntax { .. }), "{spec}: {text}");
            assert!(text.contains(want), "{spec}: {text}");
            assert!(text.contains("file=PATH"), "{spec}: {text}");
        }
    }

    #[test]
    fn mte_refuses_a_disk_file_and_says_what_to_use() {
        // target/ is on the disk the checkout is on. (The emulated arm64 machine has no disk:
        // its runner leaves this test out.)
        let dir = disk_dir().expect("target/pmem-tests can be created");
        let kind = fs_kind(&dir);
        assert!(
            matches!(kind, BackingKind::OtherFile(_)),
            "this test needs a disk filesystem, but {} is on {kind}",
            dir.display()
        );
        let f = Scratch::new(&dir, 2 * MIB);
        assert!(PmemConfig::from_spec(&f.spec(""), false).is_ok());
        let e = PmemConfig::from_spec(&f.spec(""), true).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, SpecError::MteBacking { .. }), "{text}");
        assert!(
            text.starts_with(&format!("pmem {}: a file on ", f.0.display())),
            "{text}"
        );
        assert!(
            text.ends_with(
                "cannot hold MTE tags; with --mte use memfd or a file on tmpfs (/dev/shm)"
            ),
            "{text}"
        );
    }

    #[test]
    fn mte_accepts_a_tmpfs_file_and_a_memfd() {
        let shm = Path::new("/dev/shm");
        assert!(
            shm.is_dir() && fs_kind(shm) == BackingKind::Shmem,
            "this test needs a tmpfs at /dev/shm"
        );
        let f = Scratch::new(shm, 2 * MIB);
        assert_eq!(
            PmemConfig::from_spec(&f.spec(""), true).unwrap().size,
            2 * MIB
        );
        assert!(PmemConfig::from_spec("memfd,size=2M", true).is_ok());
    }

    #[test]
    fn filesystem_names_cover_the_usual_disks() {
        assert_eq!(filesystem_name(0xef53), "ext2/ext3/ext4");
        assert_eq!(filesystem_name(0x5846_5342), "xfs");
        assert_eq!(filesystem_name(0x1234), "the filesystem with magic 0x1234");
    }

    #[test]
    fn too_many_or_too_large_regions_are_refused() {
        let specs: Vec<String> = (0..=crate::layout::VIRTIO_SLOTS)
            .map(|_| "memfd,size=2M".to_string())
            .collect();
        let e = validate_all(&specs, 512 * MIB, false).unwrap_err();
        assert!(matches!(e, SpecError::TooMany { given: 33, .. }), "{e}");
        let e = validate_all(&["memfd,size=1022G".into()], 512 * MIB, false).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
        assert_eq!(
            validate_all(
                &["memfd,size=2M".into(), "memfd,size=4M".into()],
                512 * MIB,
                false
            )
            .unwrap()
            .len(),
            2
        );
    }

    #[test]
    fn file_backing_is_shared_with_the_file_and_flush_makes_it_durable() {
        let f = Scratch::new(&std::env::temp_dir(), 4 * MIB);
        let cfg = PmemConfig::from_spec(&f.spec(",size=2M"), false).unwrap();
        let b = PmemBacking::open(&cfg, 0, false).unwrap();
        assert_eq!(b.size(), 2 * MIB);
        let msg = b"persistent hello";
        // SAFETY: the mapping is 2 MiB, writable, and alive while `b` is.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), b.mapping().as_ptr().add(4096), msg.len())
        };
        b.flush().unwrap();
        let mut other = File::open(&f.0).unwrap();
        other.seek(SeekFrom::Start(4096)).unwrap();
        let mut got = [0u8; 16];
        other.read_exact(&mut got).unwrap();
        assert_eq!(&got, msg);
    }

    #[test]
    fn a_writable_backing_is_locked_against_a_second_user() {
        let f = Scratch::new(&std::env::temp_dir(), 2 * MIB);
        let cfg = PmemConfig::from_spec(&f.spec(""), false).unwrap();
        let first = PmemBacking::open(&cfg, 0, false).unwrap();
        let e = PmemBacking::open(&cfg, 1, false).unwrap_err();
        assert!(e.to_string().contains("in use by another process"), "{e}");
        drop(first);
        assert!(PmemBacking::open(&cfg, 1, false).is_ok());
    }

    #[test]
    fn readonly_backing_maps_read_only() {
        let f = Scratch::new(&std::env::temp_dir(), 2 * MIB);
        {
            let mut w = std::fs::OpenOptions::new().write(true).open(&f.0).unwrap();
            w.write_all(b"seed").unwrap();
        }
        let cfg = PmemConfig::from_spec(&f.spec(",readonly=on"), false).unwrap();
        let b = PmemBacking::open(&cfg, 0, false).unwrap();
        assert!(b.readonly());
        assert_eq!(b.mapping().prot(), libc::PROT_READ);
        // SAFETY: reading the first bytes of a live 2 MiB mapping.
        let head = unsafe { std::slice::from_raw_parts(b.mapping().as_ptr(), 4) };
        assert_eq!(head, b"seed");
        assert!(matches!(b.flush(), Err(Error::ReadOnly { .. })));
        // Two readers may share the file.
        assert!(PmemBacking::open(&cfg, 1, false).is_ok());
    }

    #[test]
    fn memfd_backing_is_sized_sealed_and_zeroed() {
        let cfg = PmemConfig::from_spec("memfd,size=2M", false).unwrap();
        let b = PmemBacking::open(&cfg, 3, false).unwrap();
        assert_eq!(b.file().metadata().unwrap().len(), 2 * MIB);
        assert!(b.file().set_len(MIB).is_err(), "sealed against shrinking");
        assert_eq!(BackingKind::of_file(b.file()).unwrap(), BackingKind::Shmem);
        // SAFETY: reading the first page of a live 2 MiB mapping.
        let page = unsafe { std::slice::from_raw_parts(b.mapping().as_ptr(), 4096) };
        assert!(page.iter().all(|&x| x == 0));
        b.flush().unwrap();
    }
}
