//! The command line, validated into one [`VmConfig`]; [`pmem`] holds the `--pmem`
//! specification's rules.

pub mod pmem;

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// Smallest guest RAM refvmm accepts: room for a kernel, its initrd and the device tree.
pub const MIN_MEMORY: u64 = 64 << 20;
/// Largest guest RAM: what fits below the 40-bit IPA space above the RAM base.
pub const MAX_MEMORY: u64 = 256 << 30;
/// Most vCPUs: what one GICv3 redistributor region in the memory map holds.
pub const MAX_VCPUS: u8 = crate::layout::MAX_VCPUS;

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
        "pmem"
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
    /// The vCPU count is out of range.
    #[error("Number of vCPUs must be between 1 and {max}, got {0}", max = MAX_VCPUS)]
    Cpus(u8),
    /// The restore options are inconsistent or the snapshot exceeds the limits.
    #[error("Cannot restore: {0}")]
    Restore(String),
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
    /// The API socket options are inconsistent.
    #[error("API socket: {0}")]
    ApiSocket(String),
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
    /// Seccomp mode.
    pub seccomp: SeccompMode,
    /// The API socket and who may use it.
    pub api_socket: Option<crate::api::ApiSocket>,
    /// Restore from this snapshot directory instead of booting.
    pub restore: Option<PathBuf>,
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

fn check_file(path: &PathBuf) -> std::result::Result<u64, FileError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => FileError::NotFound,
        _ => FileError::Inspect(e),
    })?;
    if !meta.is_file() {
        return Err(FileError::NotAFile);
    }
    std::fs::File::open(path).map_err(FileError::Open)?;
    Ok(meta.len())
}

impl TryFrom<Cli> for VmConfig {
    type Error = Error;

    fn try_from(cli: Cli) -> Result<Self> {
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
            return Err(Error::Restore(
                "--max-memory and --max-cpus limit what a snapshot may ask for: they need --restore".into(),
            ));
        }
        if let Some(dir) = cli.restore {
            let max_memory = match &cli.max_memory {
                Some(s) => parse_size(s).map_err(|e| Error::Memory(s.clone(), e))?,
                None => MAX_MEMORY,
            };
            let max_cpus = cli.max_cpus.unwrap_or(MAX_VCPUS);
            let cfg = crate::snapshot::Reader::open(&dir)
                .and_then(|r| r.manifest.shape.to_config(&dir, cli.seccomp, api_socket))
                .map_err(|source| Error::Snapshot {
                    dir: dir.clone(),
                    source,
                })?;
            if cfg.memory > max_memory || cfg.cpus > max_cpus {
                return Err(Error::Restore(format!(
                    "the snapshot asks for {} vCPUs and {} MiB of RAM, more than the limits \
                     (--max-cpus {max_cpus}, --max-memory {} MiB)",
                    cfg.cpus,
                    cfg.memory >> 20,
                    max_memory >> 20
                )));
            }
            return Ok(cfg);
        }
        let kernel = cli.kernel.ok_or(Error::NoKernel)?;
        let klen = check_file(&kernel).map_err(|problem| Error::Kernel {
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
            check_file(p).map_err(|problem| Error::Initrd {
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
        let pmem = pmem::validate_all(&cli.pmem, memory, cli.mte, crate::pmem_backing::inspect)?;
        Ok(VmConfig {
            kernel,
            initrd: cli.initrd,
            cmdline: cli.cmdline,
            cpus: cli.cpus,
            memory,
            mte: cli.mte,
            sdei: cli.sdei,
            features: CpuFeatures {
                pmu: cli.pmu,
                sve: cli.sve,
                pauth: cli.pauth,
            },
            its: cli.its,
            pmem,
            seccomp: cli.seccomp,
            api_socket,
            restore: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_file() -> tempfile_lite::TempFile {
        tempfile_lite::TempFile::with_contents(b"not really a kernel")
    }

    fn cli(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("refvmm").chain(args.iter().copied()))
    }

    fn config(args: &[&str]) -> Result<VmConfig> {
        VmConfig::try_from(cli(args).expect("clap accepts"))
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
        let k = kernel_file();
        let below_a_file = format!("{}/Image", k.path_str());
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

    #[test]
    fn restore_limits_refuse_a_larger_snapshot_before_anything_is_built() {
        let dir = std::env::temp_dir().join(format!("refvmm-cfg-restore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let shape = crate::snapshot::VmShape {
            cpus: 2,
            memory: 512 << 20,
            mte: false,
            sdei: false,
            pmu: false,
            sve: false,
            pauth: false,
            cmdline: String::new(),
        };
        let w = crate::snapshot::Writer::create(&dir).unwrap();
        w.finish(shape, vec![0x8000_0000, 0x8000_0001]).unwrap();
        let d = dir.to_str().unwrap();
        let ok = config(&["--restore", d, "--max-memory", "512M", "--max-cpus", "2"]).unwrap();
        assert_eq!((ok.cpus, ok.memory), (2, 512 << 20));
        for args in [["--max-memory", "256M"], ["--max-cpus", "1"]] {
            let e = config(&["--restore", d, args[0], args[1]]).unwrap_err();
            assert!(e.to_string().contains("more than the limits"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
        let k = kernel_file();
        let e = config(&["--kernel", k.path_str(), "--max-cpus", "1"]).unwrap_err();
        assert!(e.to_string().contains("they need --restore"), "{e}");
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
        let small = tempfile_lite::TempFile::with_contents(&[0; 4096]);
        let spec = format!("file={},size=2M", small.path_str());
        let e = config(&["--kernel", k.path_str(), "--pmem", &spec]).unwrap_err();
        assert!(e.to_string().contains("fewer than size=2097152"), "{e}");
    }

    #[test]
    fn pmem_conflicts_with_restore() {
        let e = cli(&["--restore", "/snap", "--pmem", "memfd,size=2M"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    /// A tiny self-deleting temporary file, to avoid a dependency for tests.
    mod tempfile_lite {
        use std::path::PathBuf;

        pub struct TempFile(PathBuf, String);

        impl TempFile {
            pub fn with_contents(data: &[u8]) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "refvmm-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, data).unwrap();
                let s = p.to_string_lossy().into_owned();
                TempFile(p, s)
            }

            pub fn path_str(&self) -> &str {
                &self.1
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
}
