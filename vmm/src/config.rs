//! The command line, validated into one [`VmConfig`] (to boot) or a [`RestoreRequest`] (to
//! restore a snapshot); [`pmem`] holds the `--pmem` specification's rules.
//!
//! Nothing here does I/O: what the checks need to know of the host's files comes from the
//! caller through [`Files`] ([`crate::files::HostFiles`] asks the operating system), and a
//! restore's configuration is derived from the manifest the caller has read
//! ([`RestoreRequest::config`]), so the snapshot is opened once, by the code that restores it.

pub mod disk;
pub mod pmem;

use clap::{Parser, ValueEnum};
use std::path::{Path, PathBuf};

/// Smallest guest RAM refvmm accepts: room for a kernel, its initrd and the device tree.
pub const MIN_MEMORY: u64 = 64 << 20;
/// Largest guest RAM: what fits below the 40-bit IPA space above the RAM base.
pub const MAX_MEMORY: u64 = 256 << 30;
/// Most vCPUs: what one GICv3 redistributor region in the memory map holds.
pub const MAX_VCPUS: u8 = crate::layout::MAX_VCPUS;

/// What backs guest RAM (`--memory-backing`); refvmm's `memory::choose` (aarch64) decides `Auto`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum MemoryBacking {
    /// The fastest backing on this host that gives every enabled feature what it needs: a
    /// memfd where the host gives shmem huge pages (or a feature needs the memory shared),
    /// else private anonymous memory where that gets huge pages.
    #[default]
    Auto,
    /// A sealed memfd mapped shared (another process can map it).
    Memfd,
    /// Private anonymous memory (nothing else can map it).
    Anonymous,
    /// A sealed hugetlb memfd mapped shared: 2 MiB pages reserved from the host's pool.
    Hugetlb,
}

/// How the seccomp filters are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    /// Kill the process on a syscall outside a thread's list.
    Enforce,
    /// Log such syscalls (audit) and allow them.
    Log,
    /// No filters.
    Off,
}

/// refvmm: a thin, sandboxed reference VMM for arm64 KVM guests.
///
/// Boots an arm64 Linux `Image` (or a raw binary payload) with its initrd and command line on
/// KVM, with a 16550 console on stdin/stdout. Exit status: 0 when the guest powers off; see
/// `docs/refvmm.md` for the others.
#[derive(Debug, Parser)]
#[command(name = "refvmm", version, about, long_about = None)]
pub struct Cli {
    /// The kernel: an arm64 Linux `Image` (detected by its header), or else a raw binary
    /// loaded at RAM base + 0x80000 and entered at its first byte (x0 = device tree).
    #[arg(long, value_name = "PATH", required_unless_present = "restore")]
    pub kernel: Option<PathBuf>,

    /// Restore the VM saved in this snapshot directory instead of booting a kernel (the VM's
    /// shape comes from the snapshot; only --seccomp, the --api-* options and the --max-*
    /// limits apply).
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "kernel", "initrd", "cmdline", "cpus", "memory", "mte", "sdei", "pmu", "sve", "pauth", "its",
        "pmem", "disk", "rng"
    ])]
    pub restore: Option<PathBuf>,

    /// With --restore: the most guest RAM a snapshot may ask for (K, M, G suffixes); a
    /// snapshot of a larger VM is refused before anything is allocated.
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,

    /// With --restore: the most vCPUs a snapshot may ask for.
    #[arg(long, value_name = "N")]
    pub max_cpus: Option<u8>,

    /// An initramfs to hand to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// The kernel command line.
    #[arg(long, value_name = "STRING", default_value = "console=ttyS0")]
    pub cmdline: String,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u8,

    /// Guest RAM size: a number of bytes with an optional K, M or G suffix (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "512M")]
    pub memory: String,

    /// What backs guest RAM (also with --restore); refvmm says at start which backing and
    /// page size guest RAM got, and why.
    #[arg(long, value_enum, value_name = "KIND", default_value_t = MemoryBacking::Auto)]
    pub memory_backing: MemoryBacking,

    /// Enable the Memory Tagging Extension for the guest (fails if KVM cannot).
    #[arg(long)]
    pub mte: bool,

    /// Offer SDEI (Software Delegated Exception Interface) to the guest.
    #[arg(long)]
    pub sdei: bool,

    /// Give the vCPUs a PMUv3 (overflow interrupt PPI 7, described in the device tree).
    #[arg(long)]
    pub pmu: bool,

    /// Give the vCPUs SVE, with every vector length KVM offers.
    #[arg(long)]
    pub sve: bool,

    /// Give the vCPUs pointer authentication (address and generic).
    #[arg(long)]
    pub pauth: bool,

    /// Add a GICv3 ITS (MSI controller) to the interrupt controller.
    #[arg(long)]
    pub its: bool,

    /// A virtio-pmem device (repeatable): `file=PATH[,size=SIZE][,readonly=on]` or
    /// `memfd,size=SIZE`; SIZE a multiple of 2 MiB (K, M, G suffixes). With --mte a file must
    /// be on tmpfs or hugetlbfs.
    #[arg(long, value_name = "SPEC")]
    pub pmem: Vec<String>,

    /// A virtio-blk device (repeatable): `path=PATH[,readonly=on][,direct=on][,serial=ID]`,
    /// PATH a raw image file or a block device (see docs/refvmm.md).
    #[arg(long, value_name = "SPEC")]
    pub disk: Vec<String>,

    /// A virtio-rng device: the guest's /dev/hwrng reads the host's getrandom(2).
    #[arg(long)]
    pub rng: bool,

    /// Seccomp filters for refvmm's threads.
    #[arg(long, value_enum, default_value_t = SeccompMode::Enforce)]
    pub seccomp: SeccompMode,

    /// A Unix socket on which refvmm accepts control requests.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,

    /// Permission bits of the API socket file, in octal (default 600: refvmm's user only).
    #[arg(long, value_name = "OCTAL", requires = "api_socket", value_parser = parse_mode)]
    pub api_socket_mode: Option<u32>,

    /// A user id, besides refvmm's own, whose API connections are served (repeatable); every
    /// other peer is refused (checked with SO_PEERCRED).
    #[arg(long, value_name = "UID", requires = "api_socket")]
    pub api_allow_uid: Vec<u32>,
}

/// An octal file mode such as `600` or `0660`.
fn parse_mode(s: &str) -> std::result::Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8).map_err(|_| format!("{s:?} is not an octal mode such as 600"))
}

/// `refvmm ctl`: send a request to a running refvmm's API socket.
///
/// Requests: `status`; `sdei-signal <event> [<vcpu>]` (event numbers in docs/refvmm.md).
#[derive(Debug, Parser)]
#[command(name = "refvmm ctl")]
pub struct CtlCli {
    /// The running refvmm's API socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: PathBuf,

    /// The request and its arguments.
    #[arg(required = true, num_args = 1.., value_name = "REQUEST")]
    pub request: Vec<String>,
}

/// Why a kernel or initrd file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path names nothing.
    #[error("no such file")]
    NotFound,
    /// The path names a directory, device, socket ...
    #[error("not a regular file")]
    NotAFile,
    /// The file has no bytes.
    #[error("empty file")]
    Empty,
    /// The path cannot be looked up (other than not existing).
    #[error("cannot inspect it")]
    Inspect(#[source] std::io::Error),
    /// The file cannot be opened for reading.
    #[error("cannot open it for reading")]
    Open(#[source] std::io::Error),
}

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kernel was given (and nothing to restore).
    #[error("--kernel is required (or --restore)")]
    NoKernel,
    /// The kernel file cannot be used.
    #[error("Kernel {path}")]
    Kernel {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        problem: FileError,
    },
    /// The initrd file cannot be used.
    #[error("Initrd {path}")]
    Initrd {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        problem: FileError,
    },
    /// The memory size is not understood or out of range.
    #[error("Memory size {0:?}: {1}")]
    Memory(String, String),
    /// More virtio devices than virtio-mmio slots.
    #[error(
        "{given} virtio devices asked for (--pmem, --disk and --rng), but there are {max} virtio-mmio \
         slots"
    )]
    TooManyVirtio {
        /// Devices asked for.
        given: usize,
        /// Slots there are.
        max: usize,
    },
    /// The vCPU count is out of range.
    #[error("Number of vCPUs must be between 1 and {max}, got {0}", max = MAX_VCPUS)]
    Cpus(u8),
    /// `--max-memory` or `--max-cpus` without `--restore`.
    #[error("--max-memory and --max-cpus limit what a snapshot may ask for: they need --restore")]
    LimitsWithoutRestore,
    /// The snapshot asks for more than `--max-cpus` or `--max-memory` allow.
    #[error(
        "Cannot restore: the snapshot asks for {cpus} vCPUs and {} MiB of RAM, more than the \
         limits (--max-cpus {max_cpus}, --max-memory {} MiB)",
        memory >> 20,
        max_memory >> 20
    )]
    OverLimits {
        /// vCPUs in the snapshot.
        cpus: u8,
        /// RAM bytes in the snapshot.
        memory: u64,
        /// The vCPU limit.
        max_cpus: u8,
        /// The RAM limit, bytes.
        max_memory: u64,
    },
    /// The snapshot's manifest describes a VM refvmm cannot build.
    #[error("Cannot restore {}: the snapshot describes an invalid VM ({problem})", dir.display())]
    InvalidShape {
        /// The snapshot directory given.
        dir: PathBuf,
        /// What is wrong with it.
        problem: ShapeProblem,
    },
    /// The snapshot to restore cannot be read.
    #[error("Cannot restore {}", dir.display())]
    Snapshot {
        /// The snapshot directory given.
        dir: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: crate::snapshot::Error,
    },
    /// The command line cannot be passed to the kernel.
    #[error("Kernel command line: {0}")]
    Cmdline(String),
    /// A `--pmem` device cannot be used.
    #[error(transparent)]
    Pmem(#[from] pmem::SpecError),
    /// A `--disk` specification.
    #[error(transparent)]
    Disk(#[from] disk::SpecError),
    /// The API socket options are inconsistent.
    #[error("API socket: {0}")]
    ApiSocket(String),
}

/// What is wrong with a snapshot's VM shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShapeProblem {
    /// A vCPU count outside 1..=MAX_VCPUS.
    #[error("{0} vCPUs")]
    Cpus(u8),
    /// A RAM size outside the limits or not a multiple of 2 MiB.
    #[error("{0} bytes of memory")]
    Memory(u64),
}

/// Result of configuration checks.
pub type Result<T> = std::result::Result<T, Error>;

/// Optional vCPU features (MTE is [`VmConfig::mte`]: it is a VM-wide capability).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// PMUv3.
    pub pmu: bool,
    /// SVE.
    pub sve: bool,
    /// Pointer authentication, address and generic keys.
    pub pauth: bool,
}

/// A validated VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image path (an existing, readable, non-empty file).
    pub kernel: PathBuf,
    /// Initrd path, if any (an existing, readable file).
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPU count, 1..=MAX_VCPUS.
    pub cpus: u8,
    /// Guest RAM in bytes, a multiple of 2 MiB within MIN_MEMORY..=MAX_MEMORY.
    pub memory: u64,
    /// What backs guest RAM, as asked for.
    pub memory_backing: MemoryBacking,
    /// MTE requested.
    pub mte: bool,
    /// SDEI requested.
    pub sdei: bool,
    /// vCPU features beyond the base architecture.
    pub features: CpuFeatures,
    /// Add a GICv3 ITS.
    pub its: bool,
    /// virtio-pmem devices, in command-line order (regions placed by
    /// [`crate::layout::pmem_bases`]).
    pub pmem: Vec<pmem::PmemConfig>,
    /// virtio-blk devices, in command-line order (in the virtio-mmio slots after the pmem
    /// devices).
    pub disks: Vec<disk::DiskConfig>,
    /// A virtio-rng device (in the virtio-mmio slot after the disks).
    pub rng: bool,
    /// Seccomp mode.
    pub seccomp: SeccompMode,
    /// The API socket and who may use it.
    pub api_socket: Option<crate::api::ApiSocket>,
}

/// What the configuration checks need to know of the host's files. Config asks this of its
/// caller and does no I/O itself; [`crate::files::HostFiles`] asks the operating system, a
/// fuzzer or a test can answer from a table.
pub trait Files {
    /// The length of the kernel or initrd at `path`, which must be a regular file that can be
    /// opened for reading.
    fn image(&self, path: &Path) -> std::result::Result<u64, FileError>;
    /// What the `--pmem file=` backing at `path` is.
    fn pmem(&self, path: &Path) -> std::result::Result<pmem::FileFacts, pmem::SpecError>;
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Boot a kernel.
    Boot(VmConfig),
    /// Restore a snapshot.
    Restore(RestoreRequest),
}

/// A `--restore`: the snapshot directory and the limits on what it may ask for, plus the
/// options that belong to this process rather than to the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// The most guest RAM the snapshot may ask for, bytes.
    pub max_memory: u64,
    /// The most vCPUs the snapshot may ask for.
    pub max_cpus: u8,
    /// What backs the restored guest's RAM.
    pub memory_backing: MemoryBacking,
    /// Seccomp mode.
    pub seccomp: SeccompMode,
    /// The API socket and who may use it.
    pub api_socket: Option<crate::api::ApiSocket>,
}

impl RestoreRequest {
    /// The configuration of the VM the snapshot (whose manifest records `shape`) was taken
    /// of, checked against refvmm's bounds and this request's limits before anything is
    /// built.
    pub fn config(&self, shape: &crate::snapshot::VmShape) -> Result<VmConfig> {
        let invalid = |problem| Error::InvalidShape {
            dir: self.dir.clone(),
            problem,
        };
        if shape.cpus == 0 || shape.cpus > MAX_VCPUS {
            return Err(invalid(ShapeProblem::Cpus(shape.cpus)));
        }
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&shape.memory) || shape.memory % (2 << 20) != 0 {
            return Err(invalid(ShapeProblem::Memory(shape.memory)));
        }
        if shape.memory > self.max_memory || shape.cpus > self.max_cpus {
            return Err(Error::OverLimits {
                cpus: shape.cpus,
                memory: shape.memory,
                max_cpus: self.max_cpus,
                max_memory: self.max_memory,
            });
        }
        Ok(VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: shape.cmdline.clone(),
            cpus: shape.cpus,
            memory: shape.memory,
            memory_backing: self.memory_backing,
            mte: shape.mte,
            sdei: shape.sdei,
            features: CpuFeatures {
                pmu: shape.pmu,
                sve: shape.sve,
                pauth: shape.pauth,
            },
            its: false,
            pmem: Vec::new(),
            disks: Vec::new(),
            rng: false,
            seccomp: self.seccomp,
            api_socket: self.api_socket.clone(),
        })
    }
}

/// Parses `512M`, `1G`, `1048576`, `64m` ... into bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                _ => return Err(format!("unknown suffix {c:?} (use K, M or G)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| "not a number with an optional K, M or G suffix".to_string())?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "too large".to_string())
}

impl Launch {
    /// Validates the command line; `files` answers what the checks need to know of the
    /// files it names.
    pub fn from_cli(cli: Cli, files: &impl Files) -> Result<Self> {
        let api_socket = match cli.api_socket {
            Some(path) => Some(
                crate::api::ApiSocket::new(
                    path,
                    cli.api_socket_mode.unwrap_or(crate::api::DEFAULT_MODE),
                    cli.api_allow_uid,
                )
                .map_err(Error::ApiSocket)?,
            ),
            None => None,
        };
        if cli.restore.is_none() && (cli.max_memory.is_some() || cli.max_cpus.is_some()) {
            return Err(Error::LimitsWithoutRestore);
        }
        if let Some(dir) = cli.restore {
            let max_memory = match &cli.max_memory {
                Some(s) => parse_size(s).map_err(|e| Error::Memory(s.clone(), e))?,
                None => MAX_MEMORY,
            };
            return Ok(Launch::Restore(RestoreRequest {
                dir,
                max_memory,
                max_cpus: cli.max_cpus.unwrap_or(MAX_VCPUS),
                memory_backing: cli.memory_backing,
                seccomp: cli.seccomp,
                api_socket,
            }));
        }
        let kernel = cli.kernel.ok_or(Error::NoKernel)?;
        let klen = files.image(&kernel).map_err(|problem| Error::Kernel {
            path: kernel.clone(),
            problem,
        })?;
        if klen == 0 {
            return Err(Error::Kernel {
                path: kernel,
                problem: FileError::Empty,
            });
        }
        if let Some(p) = &cli.initrd {
            files.image(p).map_err(|problem| Error::Initrd {
                path: p.clone(),
                problem,
            })?;
        }
        let memory = parse_size(&cli.memory).map_err(|e| Error::Memory(cli.memory.clone(), e))?;
        if memory < MIN_MEMORY {
            return Err(Error::Memory(
                cli.memory,
                format!("too little memory: at least {} MiB", MIN_MEMORY >> 20),
            ));
        }
        if memory > MAX_MEMORY {
            return Err(Error::Memory(
                cli.memory,
                format!("too much memory: at most {} GiB", MAX_MEMORY >> 30),
            ));
        }
        if memory % (2 << 20) != 0 {
            return Err(Error::Memory(
                cli.memory,
                "must be a multiple of 2 MiB".into(),
            ));
        }
        if cli.cpus == 0 || cli.cpus > MAX_VCPUS {
            return Err(Error::Cpus(cli.cpus));
        }
        if cli.cmdline.len() >= crate::layout::CMDLINE_MAX {
            return Err(Error::Cmdline(format!(
                "longer than {} bytes",
                crate::layout::CMDLINE_MAX - 1
            )));
        }
        if cli.cmdline.contains('\0') {
            return Err(Error::Cmdline("contains a NUL byte".into()));
        }
        let pmem = pmem::validate_all(&cli.pmem, memory, cli.mte, |p| files.pmem(p))?;
        let disks = cli
            .disk
            .iter()
            .map(|spec| disk::DiskConfig::from_spec(spec))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let virtio = pmem.len() + disks.len() + usize::from(cli.rng);
        let slots = crate::layout::VIRTIO_SLOTS as usize;
        if virtio > slots {
            return Err(Error::TooManyVirtio {
                given: virtio,
                max: slots,
            });
        }
        Ok(Launch::Boot(VmConfig {
            kernel,
            initrd: cli.initrd,
            cmdline: cli.cmdline,
            cpus: cli.cpus,
            memory,
            memory_backing: cli.memory_backing,
            mte: cli.mte,
            sdei: cli.sdei,
            features: CpuFeatures {
                pmu: cli.pmu,
                sve: cli.sve,
                pauth: cli.pauth,
            },
            its: cli.its,
            pmem,
            disks,
            rng: cli.rng,
            seccomp: cli.seccomp,
            api_socket,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's files as the tests see them: a kernel at [`KERNEL`], a 4 KiB pmem file at
    /// [`SMALL`], a directory at `/`; every other path names nothing.
    struct Table;

    const KERNEL: &str = "/img/Image";
    const SMALL: &str = "/img/small";

    impl Files for Table {
        fn image(&self, path: &Path) -> std::result::Result<u64, FileError> {
            match path.to_str() {
                Some(KERNEL) => Ok(19),
                Some("/img/empty") => Ok(0),
                Some("/") => Err(FileError::NotAFile),
                Some(p) if p.starts_with("/img/Image/") => Err(FileError::Inspect(
                    std::io::Error::from_raw_os_error(libc::ENOTDIR),
                )),
                _ => Err(FileError::NotFound),
            }
        }

        fn pmem(&self, path: &Path) -> std::result::Result<pmem::FileFacts, pmem::SpecError> {
            match path.to_str() {
                Some(SMALL) => Ok(pmem::FileFacts {
                    len: 4096,
                    backing: mte_memory::BackingKind::Shmem,
                }),
                _ => Err(pmem::SpecError::MissingFile {
                    path: path.to_path_buf(),
                }),
            }
        }
    }

    /// A stand-in for the kernel file the options name.
    struct Kernel;

    impl Kernel {
        fn path_str(&self) -> &'static str {
            KERNEL
        }
    }

    fn kernel_file() -> Kernel {
        Kernel
    }

    fn cli(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("refvmm").chain(args.iter().copied()))
    }

    fn launch(args: &[&str]) -> Result<Launch> {
        Launch::from_cli(cli(args).expect("clap accepts"), &Table)
    }

    fn config(args: &[&str]) -> Result<VmConfig> {
        match launch(args)? {
            Launch::Boot(c) => Ok(c),
            Launch::Restore(r) => panic!("a restore, not a boot: {r:?}"),
        }
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").unwrap_err().contains("unknown suffix"));
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1M").is_err());
        assert_eq!(parse_size("99999999999999G"), Err("too large".into()));
    }

    #[test]
    fn defaults_give_a_bootable_config() {
        let k = kernel_file();
        let c = config(&["--kernel", k.path_str()]).unwrap();
        assert_eq!(c.cpus, 1);
        assert_eq!(c.memory, 512 << 20);
        assert_eq!(c.cmdline, "console=ttyS0");
        assert_eq!(c.seccomp, SeccompMode::Enforce);
        assert!(!c.mte && !c.sdei);
    }

    #[test]
    fn missing_kernel_is_a_clear_error() {
        let e = config(&["--kernel", "/nonexistent/Image"]).unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            "Kernel /nonexistent/Image: no such file"
        );
    }

    #[test]
    fn an_unreadable_kernel_path_names_the_os_error_once() {
        let below_a_file = format!("{KERNEL}/Image");
        let e = config(&["--kernel", &below_a_file]).unwrap_err();
        assert!(matches!(
            &e,
            Error::Kernel {
                problem: FileError::Inspect(_),
                ..
            }
        ));
        let text = crate::error_chain(&e);
        assert_eq!(
            text,
            format!("Kernel {below_a_file}: cannot inspect it: Not a directory (os error 20)")
        );
    }

    #[test]
    fn an_empty_kernel_is_refused() {
        let e = config(&["--kernel", "/img/empty"]).unwrap_err();
        assert_eq!(crate::error_chain(&e), "Kernel /img/empty: empty file");
    }

    #[test]
    fn api_socket_access_options_are_validated() {
        let k = kernel_file();
        let kp = k.path_str().to_string();
        let c = config(&["--kernel", &kp, "--api-socket", "/run/a.sock"]).unwrap();
        let s = c.api_socket.unwrap();
        assert_eq!((s.mode, s.allowed_uids), (0o600, vec![]));
        let c = config(&[
            "--kernel",
            &kp,
            "--api-socket",
            "/run/a.sock",
            "--api-socket-mode",
            "0660",
            "--api-allow-uid",
            "1000",
            "--api-allow-uid",
            "1001",
        ])
        .unwrap();
        let s = c.api_socket.unwrap();
        assert_eq!((s.mode, s.allowed_uids), (0o660, vec![1000, 1001]));
        let e = config(&[
            "--kernel",
            &kp,
            "--api-socket",
            "/a",
            "--api-socket-mode",
            "444",
        ])
        .unwrap_err();
        assert!(
            e.to_string().contains("the owner needs read and write"),
            "{e}"
        );
        let e = cli(&[
            "--kernel",
            &kp,
            "--api-socket",
            "/a",
            "--api-socket-mode",
            "9",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("not an octal mode"), "{e}");
        let e = cli(&["--kernel", &kp, "--api-allow-uid", "5"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    fn shape(cpus: u8, memory: u64) -> crate::snapshot::VmShape {
        crate::snapshot::VmShape {
            cpus,
            memory,
            mte: true,
            sdei: true,
            pmu: false,
            sve: false,
            pauth: true,
            cmdline: "console=ttyS0".into(),
        }
    }

    fn restore_request(args: &[&str]) -> RestoreRequest {
        match launch(args).unwrap() {
            Launch::Restore(r) => r,
            Launch::Boot(c) => panic!("a boot, not a restore: {c:?}"),
        }
    }

    #[test]
    fn a_restore_opens_nothing_and_takes_the_vm_from_the_snapshot() {
        let r = restore_request(&["--restore", "/no/such/snapshot", "--seccomp", "log"]);
        assert_eq!(r.dir, PathBuf::from("/no/such/snapshot"));
        assert_eq!((r.max_cpus, r.max_memory), (MAX_VCPUS, MAX_MEMORY));
        let c = r.config(&shape(2, 512 << 20)).unwrap();
        assert_eq!(
            (c.cpus, c.memory, c.mte, c.sdei),
            (2, 512 << 20, true, true)
        );
        assert!(c.features.pauth && !c.features.pmu);
        assert_eq!(c.seccomp, SeccompMode::Log);
        assert_eq!(c.cmdline, "console=ttyS0");
        assert!(c.pmem.is_empty() && !c.its);
        assert_eq!(c.memory_backing, MemoryBacking::Auto);
    }

    #[test]
    fn the_memory_backing_is_chosen_on_the_command_line_for_a_boot_or_a_restore() {
        let c = config(&["--kernel", KERNEL]).unwrap();
        assert_eq!(c.memory_backing, MemoryBacking::Auto);
        for (word, kind) in [
            ("auto", MemoryBacking::Auto),
            ("memfd", MemoryBacking::Memfd),
            ("anonymous", MemoryBacking::Anonymous),
            ("hugetlb", MemoryBacking::Hugetlb),
        ] {
            let c = config(&["--kernel", KERNEL, "--memory-backing", word]).unwrap();
            assert_eq!(c.memory_backing, kind);
            let r = restore_request(&["--restore", "/s", "--memory-backing", word]);
            assert_eq!(r.config(&shape(1, 512 << 20)).unwrap().memory_backing, kind);
        }
        let e = cli(&["--kernel", KERNEL, "--memory-backing", "thp"]).unwrap_err();
        assert!(e.to_string().contains("possible values"), "{e}");
    }

    #[test]
    fn rng_is_one_more_virtio_device_within_the_slots() {
        assert!(config(&["--kernel", KERNEL, "--rng"]).unwrap().rng);
        assert!(!config(&["--kernel", KERNEL]).unwrap().rng);
        let mut args = vec!["--kernel", KERNEL];
        for _ in 0..crate::layout::VIRTIO_SLOTS {
            args.extend(["--pmem", "memfd,size=2M"]);
        }
        assert_eq!(config(&args).unwrap().pmem.len(), 32);
        args.push("--rng");
        let e = config(&args).unwrap_err();
        assert!(
            matches!(e, Error::TooManyVirtio { given: 33, max: 32 }),
            "{e:?}"
        );
        assert!(e.to_string().contains("33 virtio devices"), "{e}");
        assert!(
            cli(&["--restore", "/s", "--rng"]).is_err(),
            "a snapshot brings its own devices"
        );
    }

    #[test]
    fn disks_are_kept_in_order_and_count_against_the_virtio_slots() {
        let c = config(&[
            "--kernel",
            KERNEL,
            "--disk",
            "path=/a.img",
            "--disk",
            "path=/b.img,readonly=on",
        ])
        .unwrap();
        let paths: Vec<_> = c.disks.iter().map(|d| d.path.clone()).collect();
        assert_eq!(paths, [PathBuf::from("/a.img"), PathBuf::from("/b.img")]);
        assert!(!c.disks[0].readonly && c.disks[1].readonly);
        let e = config(&["--kernel", KERNEL, "--disk", "file=/a.img"]).unwrap_err();
        assert!(matches!(e, Error::Disk(_)), "{e:?}");
        assert!(e.to_string().contains("unknown key \"file\""), "{e}");
        let mut args = vec!["--kernel", KERNEL, "--rng"];
        for _ in 0..crate::layout::VIRTIO_SLOTS {
            args.extend(["--disk", "path=/a.img"]);
        }
        let e = config(&args).unwrap_err();
        assert!(
            matches!(e, Error::TooManyVirtio { given: 33, max: 32 }),
            "{e:?}"
        );
        assert!(cli(&["--restore", "/s", "--disk", "path=/a.img"]).is_err());
    }

    #[test]
    fn restore_limits_refuse_a_larger_snapshot_before_anything_is_built() {
        let args = ["--restore", "/s", "--max-memory", "512M", "--max-cpus", "2"];
        let ok = restore_request(&args).config(&shape(2, 512 << 20)).unwrap();
        assert_eq!((ok.cpus, ok.memory), (2, 512 << 20));
        for args in [["--max-memory", "256M"], ["--max-cpus", "1"]] {
            let e = restore_request(&["--restore", "/s", args[0], args[1]])
                .config(&shape(2, 512 << 20))
                .unwrap_err();
            assert!(matches!(e, Error::OverLimits { cpus: 2, .. }), "{e:?}");
            assert!(e.to_string().contains("more than the limits"), "{e}");
        }
        let e = launch(&["--restore", "/s", "--max-memory", "lots"]).unwrap_err();
        assert!(matches!(e, Error::Memory(..)), "{e:?}");
        let e = config(&["--kernel", KERNEL, "--max-cpus", "1"]).unwrap_err();
        assert!(matches!(e, Error::LimitsWithoutRestore), "{e:?}");
        assert!(e.to_string().contains("they need --restore"), "{e}");
    }

    #[test]
    fn an_impossible_snapshot_shape_is_refused() {
        let r = restore_request(&["--restore", "/s"]);
        for (bad, problem) in [
            (shape(0, 512 << 20), ShapeProblem::Cpus(0)),
            (
                shape(MAX_VCPUS + 1, 512 << 20),
                ShapeProblem::Cpus(MAX_VCPUS + 1),
            ),
            (
                shape(1, MIN_MEMORY - (2 << 20)),
                ShapeProblem::Memory(MIN_MEMORY - (2 << 20)),
            ),
            (
                shape(1, MAX_MEMORY + (2 << 20)),
                ShapeProblem::Memory(MAX_MEMORY + (2 << 20)),
            ),
            (
                shape(1, (512 << 20) + 4096),
                ShapeProblem::Memory((512 << 20) + 4096),
            ),
        ] {
            let e = r.config(&bad).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidShape { problem: p, .. } if *p == problem),
                "{e:?}"
            );
        }
        assert_eq!(
            r.config(&shape(0, 512 << 20)).unwrap_err().to_string(),
            "Cannot restore /s: the snapshot describes an invalid VM (0 vCPUs)"
        );
    }

    #[test]
    fn kernel_option_is_required() {
        let e = cli(&[]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn directory_as_kernel_is_refused() {
        let e = config(&["--kernel", "/"]).unwrap_err();
        assert_eq!(crate::error_chain(&e), "Kernel /: not a regular file");
    }

    #[test]
    fn missing_initrd_is_a_clear_error() {
        let k = kernel_file();
        let e = config(&["--kernel", k.path_str(), "--initrd", "/nope"]).unwrap_err();
        assert_eq!(crate::error_chain(&e), "Initrd /nope: no such file");
    }

    #[test]
    fn too_little_memory_is_refused() {
        let k = kernel_file();
        let e = config(&["--kernel", k.path_str(), "--memory", "16M"]).unwrap_err();
        assert!(e.to_string().contains("too little memory"), "{e}");
    }

    #[test]
    fn unaligned_memory_is_refused() {
        let k = kernel_file();
        let e = config(&["--kernel", k.path_str(), "--memory", "65537K"]).unwrap_err();
        assert!(e.to_string().contains("multiple of 2 MiB"), "{e}");
    }

    #[test]
    fn garbage_memory_is_refused() {
        let k = kernel_file();
        let e = config(&["--kernel", k.path_str(), "--memory", "lots"]).unwrap_err();
        assert!(e.to_string().starts_with("Memory size \"lots\""), "{e}");
    }

    #[test]
    fn vcpu_count_is_bounded() {
        let k = kernel_file();
        assert!(matches!(
            config(&["--kernel", k.path_str(), "--cpus", "0"]),
            Err(Error::Cpus(0))
        ));
        let too_many = (MAX_VCPUS as u16 + 1).to_string();
        assert!(
            cli(&["--kernel", k.path_str(), "--cpus", &too_many]).is_err() || {
                config(&["--kernel", k.path_str(), "--cpus", &too_many]).is_err()
            }
        );
        assert!(cli(&["--kernel", k.path_str(), "--cpus", "two"]).is_err());
    }

    #[test]
    fn overlong_cmdline_is_refused() {
        let k = kernel_file();
        let long = "x".repeat(crate::layout::CMDLINE_MAX);
        let e = config(&["--kernel", k.path_str(), "--cmdline", &long]).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
    }

    #[test]
    fn unknown_seccomp_mode_is_refused_by_the_parser() {
        let k = kernel_file();
        let e = cli(&["--kernel", k.path_str(), "--seccomp", "maybe"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn pmem_devices_are_validated_in_order() {
        let k = kernel_file();
        let c = config(&[
            "--kernel",
            k.path_str(),
            "--pmem",
            "memfd,size=4M",
            "--pmem=memfd,size=2M,readonly=on",
        ])
        .unwrap();
        assert_eq!(c.pmem.len(), 2);
        assert_eq!(c.pmem[0].size, 4 << 20);
        assert!(c.pmem[1].readonly);
        assert!(config(&["--kernel", k.path_str()]).unwrap().pmem.is_empty());
    }

    #[test]
    fn pmem_errors_reach_the_config() {
        let k = kernel_file();
        let e = config(&["--kernel", k.path_str(), "--pmem", "file=/nonexistent/pm"]).unwrap_err();
        assert_eq!(e.to_string(), "pmem /nonexistent/pm: no such file");
        let e = config(&["--kernel", k.path_str(), "--pmem", "memfd,size=1M"]).unwrap_err();
        assert!(e.to_string().contains("multiple of 2 MiB"), "{e}");
        let e = config(&["--kernel", k.path_str(), "--pmem", "memfd,size=0"]).unwrap_err();
        assert!(e.to_string().contains("must not be zero"), "{e}");
        let e = config(&["--kernel", k.path_str(), "--pmem", "disk=/x"]).unwrap_err();
        assert!(e.to_string().contains("unknown key"), "{e}");
        let spec = format!("file={SMALL},size=2M");
        let e = config(&["--kernel", k.path_str(), "--pmem", &spec]).unwrap_err();
        assert!(e.to_string().contains("fewer than size=2097152"), "{e}");
    }

    #[test]
    fn pmem_conflicts_with_restore() {
        let e = cli(&["--restore", "/snap", "--pmem", "memfd,size=2M"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
