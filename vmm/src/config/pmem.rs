//! The `--pmem` specification and its rules, validated into [`PmemConfig`]. No I/O: what
//! the checks need to know of a file ([`FileFacts`]) comes from the caller's inspection
//! (`crate::pmem_backing::inspect` for refvmm; a stand-in in tests).
//!
//! Syntax (`--pmem`, repeatable):
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
use std::path::{Path, PathBuf};

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
#[derive(Debug, Clone, thiserror::Error)]
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
    #[error("pmem {}: cannot {action}", path.display())]
    Access {
        /// The path given.
        path: PathBuf,
        /// What was being done ("open it", "tell its filesystem" ...).
        action: &'static str,
        /// The OS error (shared, so that the error stays `Clone`).
        source: std::sync::Arc<std::io::Error>,
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

/// What the rules need to know of a backing file, found by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFacts {
    /// The file's length in bytes.
    pub len: u64,
    /// What the file is on.
    pub backing: BackingKind,
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
    /// Validates one `--pmem` specification; `mte` is whether the guest has MTE; `inspect`
    /// tells what a named file is (or why it cannot be used), and is only called for
    /// `file=` backings.
    pub fn from_spec<F>(spec: &str, mte: bool, inspect: F) -> Result<Self, SpecError>
    where
        F: Fn(&Path) -> Result<FileFacts, SpecError>,
    {
        let parsed = parse_spec(spec)?;
        if let Some((text, bytes)) = &parsed.size {
            check_granule(spec, text, *bytes)?;
        }
        let size = match &parsed.source {
            PmemSource::Memfd => parsed.size.map(|(_, b)| b).unwrap_or(0),
            PmemSource::File(path) => {
                let facts = inspect(path)?;
                let size = match &parsed.size {
                    Some((_, bytes)) => *bytes,
                    None => {
                        let text = format!("{} (the file's length)", facts.len);
                        check_granule(spec, &text, facts.len)?;
                        facts.len
                    }
                };
                if facts.len < size {
                    return Err(SpecError::FileTooSmall {
                        path: path.clone(),
                        len: facts.len,
                        size,
                    });
                }
                if mte {
                    check_mte_file(path, facts.backing)?;
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

/// Refuses a file the kernel cannot map into an MTE guest.
fn check_mte_file(path: &Path, backing: BackingKind) -> Result<(), SpecError> {
    match backing {
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

/// Validates every `--pmem` specification (files described by `inspect`, see
/// [`PmemConfig::from_spec`]) and checks that the regions fit above `memory` bytes of RAM.
pub fn validate_all<F>(
    specs: &[String],
    memory: u64,
    mte: bool,
    inspect: F,
) -> Result<Vec<PmemConfig>, SpecError>
where
    F: Fn(&Path) -> Result<FileFacts, SpecError>,
{
    let max = crate::layout::VIRTIO_SLOTS as usize;
    if specs.len() > max {
        return Err(SpecError::TooMany {
            max,
            given: specs.len(),
        });
    }
    let configs = specs
        .iter()
        .map(|s| PmemConfig::from_spec(s, mte, &inspect))
        .collect::<Result<Vec<_>, _>>()?;
    let sizes: Vec<u64> = configs.iter().map(|c| c.size).collect();
    if crate::layout::pmem_bases(memory, &sizes).is_none() {
        return Err(SpecError::DoesNotFit {
            total: sizes.iter().map(|&s| u128::from(s)).sum(),
        });
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Every file is `len` bytes on `backing`.
    fn files(len: u64, backing: BackingKind) -> impl Fn(&Path) -> Result<FileFacts, SpecError> {
        move |_| Ok(FileFacts { len, backing })
    }

    fn tmpfs(len: u64) -> impl Fn(&Path) -> Result<FileFacts, SpecError> {
        files(len, BackingKind::Shmem)
    }

    fn no_files(path: &Path) -> Result<FileFacts, SpecError> {
        panic!("{} inspected for a spec without a file", path.display())
    }

    #[test]
    fn memfd_spec_needs_a_size_and_gets_it() {
        let c = PmemConfig::from_spec("memfd,size=4M", false, no_files).unwrap();
        assert_eq!(
            c,
            PmemConfig {
                source: PmemSource::Memfd,
                size: 4 * MIB,
                readonly: false
            }
        );
        let e = PmemConfig::from_spec("memfd", false, no_files).unwrap_err();
        assert!(e.to_string().contains("memfd needs size=SIZE"), "{e}");
        let c = PmemConfig::from_spec("size=2M,readonly=on,memfd", true, no_files).unwrap();
        assert!(c.readonly);
    }

    #[test]
    fn file_spec_takes_the_file_length_when_no_size_is_given() {
        let c = PmemConfig::from_spec("file=/pm.img", false, tmpfs(6 * MIB)).unwrap();
        assert_eq!(c.size, 6 * MIB);
        assert_eq!(c.source, PmemSource::File("/pm.img".into()));
        let spec = "file=/pm.img,size=2M,readonly=off";
        let c = PmemConfig::from_spec(spec, false, tmpfs(6 * MIB)).unwrap();
        assert_eq!(c.size, 2 * MIB);
        assert!(!c.readonly);
        assert_eq!(c.describe(), "/pm.img");
    }

    #[test]
    fn the_inspections_refusal_is_the_specs() {
        let missing = |p: &Path| {
            Err(SpecError::MissingFile {
                path: p.to_path_buf(),
            })
        };
        let e = PmemConfig::from_spec("file=/x.img,size=2M", false, missing).unwrap_err();
        assert_eq!(e.to_string(), "pmem /x.img: no such file");
    }

    #[test]
    fn unaligned_and_zero_sizes_are_refused() {
        let e = PmemConfig::from_spec("memfd,size=3M", false, no_files).unwrap_err();
        assert!(e.to_string().contains("must be a multiple of 2 MiB"), "{e}");
        let e = PmemConfig::from_spec("memfd,size=0", false, no_files).unwrap_err();
        assert!(e.to_string().contains("must not be zero"), "{e}");
        let e = PmemConfig::from_spec("memfd,size=lots", false, no_files).unwrap_err();
        assert!(e.to_string().contains("size \"lots\""), "{e}");
        // Without size=, the file's own length must be a whole number of 2 MiB granules.
        let e = PmemConfig::from_spec("file=/pm.img", false, tmpfs(3 * MIB)).unwrap_err();
        assert!(e.to_string().contains("the file's length"), "{e}");
        assert!(e.to_string().contains("multiple of 2 MiB"), "{e}");
        let e = PmemConfig::from_spec("file=/pm.img", false, tmpfs(0)).unwrap_err();
        assert!(e.to_string().contains("must not be zero"), "{e}");
    }

    #[test]
    fn file_smaller_than_size_is_refused() {
        let spec = "file=/pm.img,size=4M";
        let e = PmemConfig::from_spec(spec, false, tmpfs(2 * MIB)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pmem /pm.img: the file has 2097152 bytes, fewer than size=4194304 asks for"
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
            let e = PmemConfig::from_spec(spec, false, no_files).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, SpecError::Syntax { .. }), "{spec}: {text}");
            assert!(text.contains(want), "{spec}: {text}");
            assert!(text.contains("file=PATH"), "{spec}: {text}");
        }
    }

    #[test]
    fn mte_refuses_files_that_cannot_hold_tags_and_says_what_to_use() {
        let ext4 = files(2 * MIB, BackingKind::OtherFile(0xef53));
        let ramfs = files(2 * MIB, BackingKind::Ramfs);

        assert!(PmemConfig::from_spec("file=/pm.img", false, &ext4).is_ok());
        let on_ext4 = PmemConfig::from_spec("file=/pm.img", true, &ext4).unwrap_err();
        let on_ramfs = PmemConfig::from_spec("file=/pm.img", true, &ramfs).unwrap_err();

        assert!(matches!(on_ext4, SpecError::MteBacking { .. }), "{on_ext4}");
        assert_eq!(
            on_ext4.to_string(),
            "pmem /pm.img: a file on ext2/ext3/ext4 cannot hold MTE tags; with --mte use memfd \
             or a file on tmpfs (/dev/shm)"
        );
        assert!(
            on_ramfs
                .to_string()
                .contains("a file on ramfs cannot hold MTE tags"),
            "{on_ramfs}"
        );
    }

    #[test]
    fn mte_accepts_tmpfs_and_hugetlbfs_files_and_memfds() {
        let hugetlb = files(2 * MIB, BackingKind::Hugetlb);
        assert_eq!(
            PmemConfig::from_spec("file=/pm.img", true, tmpfs(2 * MIB))
                .unwrap()
                .size,
            2 * MIB
        );
        assert!(PmemConfig::from_spec("file=/pm.img", true, hugetlb).is_ok());
        assert!(PmemConfig::from_spec("memfd,size=2M", true, no_files).is_ok());
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
        let e = validate_all(&specs, 512 * MIB, false, no_files).unwrap_err();
        assert!(matches!(e, SpecError::TooMany { given: 33, .. }), "{e}");
        let e = validate_all(&["memfd,size=1022G".into()], 512 * MIB, false, no_files).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
        let two = ["memfd,size=2M".into(), "file=/pm.img,size=4M".into()];
        assert_eq!(
            validate_all(&two, 512 * MIB, false, tmpfs(4 * MIB))
                .unwrap()
                .len(),
            2
        );
    }
}
