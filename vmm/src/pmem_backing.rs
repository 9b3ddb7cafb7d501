//! virtio-pmem backings: the host file or memfd behind a validated [`PmemConfig`], mapped
//! `MAP_SHARED` so that guest writes land in the file's page cache (or in the memfd, which
//! another process can map through `/proc/<pid>/fd/<n>`), and [`PmemBacking::flush`], which
//! makes them durable: `msync(MS_SYNC)` over the whole mapping, then `fsync` of the file.
//!
//! [`inspect`] is the I/O half of validating a `--pmem` specification
//! ([`crate::config::pmem`]): what a named file is. A memfd backing comes from mte-memory's
//! [`memfd::create_sized`] (sealed against resizing).

use mte_memory::{memfd, BackingKind};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, MmapRegion};

use crate::config::pmem::{FileFacts, PmemConfig, PmemSource, SpecError};

/// What the file at `path` is, for [`crate::config::pmem`]'s rules: it must exist, be a
/// regular file and be readable.
pub fn inspect(path: &Path) -> Result<FileFacts, SpecError> {
    let access = |action: &'static str| {
        move |e: std::io::Error| SpecError::Access {
            path: path.to_path_buf(),
            action,
            source: std::sync::Arc::new(e),
        }
    };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SpecError::MissingFile {
            path: path.to_path_buf(),
        },
        _ => access("inspect it")(e),
    })?;
    if !meta.is_file() {
        return Err(SpecError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let file = File::open(path).map_err(access("open it for reading"))?;
    let len = file.metadata().map_err(access("inspect it"))?.len();
    let backing = BackingKind::of_file(&file).map_err(access("tell its filesystem"))?;
    Ok(FileFacts { len, backing })
}

/// Errors opening or mapping a backing when the VM is built, or flushing it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be opened (it changed since the configuration was checked?).
    #[error("pmem {}: cannot open the file", path.display())]
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
    /// Creating, sizing or sealing the memfd failed.
    #[error("pmem memfd: cannot create a {size}-byte memfd")]
    Memfd {
        /// The region size.
        size: u64,
        /// What failed.
        source: memfd::Error,
    },
    /// The region is larger than this host's address space.
    #[error("pmem: {size} bytes do not fit in the address space")]
    TooLarge {
        /// The region size.
        size: u64,
    },
    /// `mmap` failed.
    #[error("pmem {what}: cannot map {size} bytes")]
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
        "pmem {what}: the kernel cannot map this backing with MTE tags; with --mte use memfd or \
         a file on tmpfs (/dev/shm)"
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
    #[error("pmem {what}: flush failed")]
    Flush {
        /// The path or `memfd`.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

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
            PmemSource::Memfd => {
                memfd::create_sized(&format!("refvmm-pmem{index}"), cfg.size, false).map_err(
                    |source| Error::Memfd {
                        size: cfg.size,
                        source,
                    },
                )?
            }
        };
        let file = Arc::new(file);
        let len = usize::try_from(cfg.size).map_err(|_| Error::TooLarge { size: cfg.size })?;
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
            drop(
                map(prot | mte_memory::memory::PROT_MTE).map_err(|source| Error::MteRefused {
                    what: what.clone(),
                    source,
                })?,
            );
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
        crate::sys::msync(&self.mapping).map_err(err)?;
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
    if let Err(e) = crate::sys::flock(std::os::fd::AsFd::as_fd(&file), op) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    const MIB: u64 = 1 << 20;

    /// Validates `spec` as refvmm does, inspecting its file for real.
    fn from_spec(spec: &str, mte: bool) -> Result<PmemConfig, SpecError> {
        PmemConfig::from_spec(spec, mte, inspect)
    }

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
    fn file_spec_takes_the_file_length_when_no_size_is_given() {
        let f = Scratch::new(&std::env::temp_dir(), 6 * MIB);
        let c = from_spec(&f.spec(""), false).unwrap();
        assert_eq!(c.size, 6 * MIB);
        assert_eq!(c.source, PmemSource::File(f.0.clone()));
        let c = from_spec(&f.spec(",size=2M,readonly=off"), false).unwrap();
        assert_eq!(c.size, 2 * MIB);
        assert!(!c.readonly);
    }

    #[test]
    fn inspect_reports_the_length_and_the_filesystem() {
        let f = Scratch::new(Path::new("/dev/shm"), 4 * MIB);

        let facts = inspect(&f.0).unwrap();

        assert_eq!(
            facts,
            FileFacts {
                len: 4 * MIB,
                backing: BackingKind::Shmem
            }
        );
    }

    #[test]
    fn missing_file_is_named() {
        let e = from_spec("file=/nonexistent/pmem.img,size=2M", false).unwrap_err();
        assert_eq!(e.to_string(), "pmem /nonexistent/pmem.img: no such file");
    }

    #[test]
    fn directory_is_not_a_backing() {
        let e = from_spec("file=/", false).unwrap_err();
        assert_eq!(e.to_string(), "pmem /: not a regular file");
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
        assert!(from_spec(&f.spec(""), false).is_ok());
        let e = from_spec(&f.spec(""), true).unwrap_err();
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
        assert_eq!(from_spec(&f.spec(""), true).unwrap().size, 2 * MIB);
        assert!(from_spec("memfd,size=2M", true).is_ok());
    }

    #[test]
    fn file_backing_is_shared_with_the_file_and_flush_makes_it_durable() {
        let f = Scratch::new(&std::env::temp_dir(), 4 * MIB);
        let cfg = from_spec(&f.spec(",size=2M"), false).unwrap();
        let b = PmemBacking::open(&cfg, 0, false).unwrap();
        assert_eq!(b.size(), 2 * MIB);
        let msg = b"persistent hello";
        crate::sys::testing::write_mapping(&b.mapping(), 4096, msg);
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
        let cfg = from_spec(&f.spec(""), false).unwrap();
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
        let cfg = from_spec(&f.spec(",readonly=on"), false).unwrap();
        let b = PmemBacking::open(&cfg, 0, false).unwrap();
        assert!(b.readonly());
        assert_eq!(b.mapping().prot(), libc::PROT_READ);
        let head = crate::sys::testing::read_mapping(&b.mapping(), 0, 4);
        assert_eq!(head, b"seed");
        assert!(matches!(b.flush(), Err(Error::ReadOnly { .. })));
        // Two readers may share the file.
        assert!(PmemBacking::open(&cfg, 1, false).is_ok());
    }

    #[test]
    fn memfd_backing_is_sized_sealed_and_zeroed() {
        let cfg = from_spec("memfd,size=2M", false).unwrap();
        let b = PmemBacking::open(&cfg, 3, false).unwrap();
        assert_eq!(b.file().metadata().unwrap().len(), 2 * MIB);
        assert!(b.file().set_len(MIB).is_err(), "sealed against shrinking");
        assert_eq!(memfd::seals(b.file()).unwrap(), memfd::FIXED_SIZE);
        assert_eq!(BackingKind::of_file(b.file()).unwrap(), BackingKind::Shmem);
        let page = crate::sys::testing::read_mapping(&b.mapping(), 0, 4096);
        assert!(page.iter().all(|&x| x == 0));
        b.flush().unwrap();
    }
}
