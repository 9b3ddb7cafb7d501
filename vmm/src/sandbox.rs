//! Per-thread seccomp filters.
//!
//! Every refvmm thread belongs to a [`Category`] with its own allow-list, written in
//! `vmm/seccomp/aarch64-unknown-linux-gnu.json` (one comment per rule) and compiled to BPF by
//! `build.rs`. [`Sandbox::spawn`] is the one way refvmm starts a thread: the new thread installs
//! its category's filter before any of its own code runs, and `spawn` returns only once the
//! filter is in place. The main thread seals itself with [`Sandbox::apply`] before the guest
//! starts.
//!
//! Modes ([`SeccompMode`]): `enforce` makes a syscall outside a thread's list raise `SIGSYS`;
//! refvmm's handler names the thread category and the syscall number on stderr and ends the
//! process with [`exit_status::SECCOMP_VIOLATION`](crate::exit_status::SECCOMP_VIOLATION).
//! `log` lets such a syscall through and has the kernel log it (audit record type 1326).
//! `off` installs nothing.
//!
//! Test hook: with `REFVMM_TEST_FORBIDDEN_SYSCALL=<category>` in the environment
//! ([`PROBE_ENV`]), the first thread of that category calls `getppid`, which no list allows,
//! right after its filter is installed. See `docs/seccomp.md`.

use crate::config::SeccompMode;
use seccompiler::sock_filter;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// What `build.rs` derived from the policy: each category's syscalls and the resolved
/// symbolic values.
pub mod policy {
    include!(concat!(env!("OUT_DIR"), "/seccomp_meta.rs"));
}

static ENFORCE_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_enforce.bin"));
static LOG_BPF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp_log.bin"));

/// The environment variable of the forbidden-syscall test hook.
pub const PROBE_ENV: &str = "REFVMM_TEST_FORBIDDEN_SYSCALL";

/// The syscall the test hook makes: harmless, and in no category's list.
pub const PROBE_SYSCALL: &str = "getppid";

/// A kind of refvmm thread, with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// The main thread: set-up, then the event loop (console input, exit notification) and
    /// the API requests the `api` thread hands over (pause, snapshot: the KVM ioctls).
    Vmm,
    /// A vCPU thread: `KVM_RUN`, MMIO to the console, hypercalls and SDEI delivery.
    Vcpu,
    /// The API thread: accepts connections on the API socket, checks the peer, reads the
    /// request and writes the answer; no KVM access and no files.
    Api,
    /// The console writer: guest output from the console's queue to stdout.
    Console,
    /// A virtio-blk device's worker: woken by its queue's ioeventfd, moves data between the
    /// image and guest memory and raises the device's interrupt; no KVM access, no opening.
    Block,
}

impl Category {
    /// Every category.
    pub const ALL: [Category; 5] = [
        Category::Vmm,
        Category::Vcpu,
        Category::Api,
        Category::Console,
        Category::Block,
    ];

    /// The category's name in the policy file.
    pub fn name(self) -> &'static str {
        match self {
            Category::Vmm => "vmm",
            Category::Vcpu => "vcpu",
            Category::Api => "api",
            Category::Console => "console",
            Category::Block => "block",
        }
    }

    /// The category called `name`.
    pub fn from_name(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Errors of the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded filters are damaged (a build problem).
    #[error("The built-in seccomp filters are damaged at byte {0}")]
    Corrupt(usize),
    /// The policy has no filter for a category.
    #[error("The built-in seccomp policy has no filter for the {0} threads")]
    NoFilter(&'static str),
    /// Filters are only built for aarch64.
    #[error("Seccomp filters exist only for aarch64; use --seccomp off on this host")]
    Arch,
    /// The test hook names no category.
    #[error("{PROBE_ENV}={0:?} names no thread category (vmm, vcpu, api, console, block)")]
    Probe(String),
    /// The `SIGSYS` handler could not be installed.
    #[error("Cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    /// The kernel refused a filter.
    #[error("Cannot install the seccomp filter of a {category} thread")]
    Install {
        /// The thread's category.
        category: &'static str,
        /// What went wrong.
        source: seccompiler::Error,
    },
    /// A thread could not be started.
    #[error("Cannot start thread {name}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Result of sandbox operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Reads back what `build.rs` wrote: (category name, program) pairs.
fn decode(blob: &[u8]) -> Result<Vec<(String, Vec<sock_filter>)>> {
    struct Cursor<'a>(&'a [u8], usize);
    impl<'a> Cursor<'a> {
        fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
            let b = self.bytes(N)?;
            b.try_into().map_err(|_| Error::Corrupt(self.1))
        }
        fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
            let (head, rest) = self.0.split_at_checked(n).ok_or(Error::Corrupt(self.1))?;
            self.0 = rest;
            self.1 += n;
            Ok(head)
        }
    }
    let mut c = Cursor(blob, 0);
    let mut out = Vec::new();
    while !c.0.is_empty() {
        let len = usize::from(u16::from_le_bytes(c.take()?));
        let at = c.1;
        let name = std::str::from_utf8(c.bytes(len)?).map_err(|_| Error::Corrupt(at))?;
        let n = u32::from_le_bytes(c.take()?);
        let mut prog = Vec::new();
        for _ in 0..n {
            let i: [u8; 8] = c.take()?;
            prog.push(sock_filter {
                code: u16::from_le_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
            });
        }
        out.push((name.to_string(), prog));
    }
    Ok(out)
}

thread_local! {
    /// The category whose filter this thread installed, for the SIGSYS report.
    static THREAD_CATEGORY: Cell<Option<Category>> = const { Cell::new(None) };
}

/// Writes `parts` to stderr without allocating (signal context).
fn write_stderr(parts: &[&[u8]]) {
    for p in parts {
        crate::sys::write_stderr(p);
    }
}

/// Formats `v` in decimal into `buf`, returning the digits.
fn decimal(v: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// The SIGSYS report (signal context: no allocation, no locks): which thread category made
/// which forbidden system call; then the process ends.
fn report_violation(nr: u32) -> ! {
    let cat = THREAD_CATEGORY
        .with(Cell::get)
        .map_or("unfiltered", Category::name);
    let mut buf = [0u8; 10];
    write_stderr(&[
        b"refvmm: seccomp: a ",
        cat.as_bytes(),
        b" thread made syscall ",
        decimal(nr, &mut buf),
        b", which its filter forbids; stopping\n",
    ]);
    crate::sys::exit_now(i32::from(crate::exit_status::SECCOMP_VIOLATION))
}

/// The filters of one mode, ready to install.
pub struct Sandbox {
    mode: SeccompMode,
    filters: Vec<(Category, Vec<sock_filter>)>,
    probe: Option<Category>,
    probed: AtomicBool,
}

impl Sandbox {
    /// The filters for `mode`, with the test hook read from [`PROBE_ENV`]. In `enforce`, also
    /// installs the process's `SIGSYS` handler.
    pub fn new(mode: SeccompMode) -> Result<Self> {
        let probe = match std::env::var(PROBE_ENV) {
            Ok(name) => Some(Category::from_name(&name).ok_or(Error::Probe(name))?),
            Err(_) => None,
        };
        Self::with_probe(mode, probe)
    }

    /// The filters for `mode`; `probe` is the test hook's category, if any.
    pub fn with_probe(mode: SeccompMode, probe: Option<Category>) -> Result<Self> {
        let blob = match mode {
            SeccompMode::Off => {
                return Ok(Sandbox {
                    mode,
                    filters: Vec::new(),
                    probe,
                    probed: AtomicBool::new(false),
                })
            }
            _ if !cfg!(target_arch = "aarch64") => return Err(Error::Arch),
            SeccompMode::Enforce => ENFORCE_BPF,
            SeccompMode::Log => LOG_BPF,
        };
        let mut all = decode(blob)?;
        let mut filters = Vec::new();
        for c in Category::ALL {
            let i = all
                .iter()
                .position(|(n, _)| n == c.name())
                .ok_or(Error::NoFilter(c.name()))?;
            filters.push((c, all.swap_remove(i).1));
        }
        if mode == SeccompMode::Enforce {
            crate::sys::install_sigsys_handler(report_violation).map_err(Error::Handler)?;
        }
        Ok(Sandbox {
            mode,
            filters,
            probe,
            probed: AtomicBool::new(false),
        })
    }

    /// The mode.
    pub fn mode(&self) -> SeccompMode {
        self.mode
    }

    fn program(&self, category: Category) -> Option<&[sock_filter]> {
        self.filters
            .iter()
            .find(|(c, _)| *c == category)
            .map(|(_, p)| p.as_slice())
    }

    /// Whether the next thread of `category` runs the test hook (only the first one does).
    fn take_probe(&self, category: Category) -> bool {
        self.probe == Some(category) && !self.probed.swap(true, Ordering::Relaxed)
    }

    /// Installs `category`'s filter on the calling thread (nothing in `off` mode).
    pub fn apply(&self, category: Category) -> Result<()> {
        install(self.program(category), category)?;
        if self.take_probe(category) {
            probe(category);
        }
        Ok(())
    }

    /// Starts thread `name`, which installs `category`'s filter and only then runs `f`.
    /// Returns once the filter is in place, or the reason it could not be installed.
    pub fn spawn<F>(&self, category: Category, name: String, f: F) -> Result<JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        let program = self.program(category).map(<[sock_filter]>::to_vec);
        let run_probe = self.take_probe(category);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<()>>(1);
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let installed = install(program.as_deref(), category);
                let ok = installed.is_ok();
                let _ = tx.send(installed);
                if ok {
                    if run_probe {
                        probe(category);
                    }
                    f();
                }
            })
            .map_err(|source| Error::Spawn {
                name: name.clone(),
                source,
            })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Spawn {
                name,
                source: std::io::Error::other("the thread ended before installing its filter"),
            }),
        }
    }
}

fn install(program: Option<&[sock_filter]>, category: Category) -> Result<()> {
    let Some(program) = program else {
        return Ok(());
    };
    seccompiler::apply_filter(program).map_err(|source| Error::Install {
        category: category.name(),
        source,
    })?;
    THREAD_CATEGORY.with(|c| c.set(Some(category)));
    Ok(())
}

/// The test hook: a syscall outside every list.
fn probe(category: Category) {
    log::warn!(
        "test hook {PROBE_ENV}: this {} thread now calls {PROBE_SYSCALL}, which its filter forbids",
        category.name()
    );
    let parent = std::os::unix::process::parent_id();
    log::warn!(
        "test hook {PROBE_ENV}: {PROBE_SYSCALL} returned {parent}: the filter let it through"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `BPF_RET | BPF_K`.
    const RET: u16 = 0x06;
    const RET_TRAP: u32 = 0x0003_0000;
    const RET_LOG: u32 = 0x7ffc_0000;

    /// Any integer as `u64` (the types of libc's constants differ between targets).
    fn num<T: TryInto<u64>>(v: T) -> u64 {
        v.try_into().unwrap_or(u64::MAX)
    }

    fn returns(prog: &[sock_filter], action: u32) -> bool {
        prog.iter().any(|i| i.code == RET && i.k == action)
    }

    #[test]
    fn embedded_filters_cover_every_category_in_both_modes() {
        for (blob, wanted, unwanted) in [
            (ENFORCE_BPF, RET_TRAP, RET_LOG),
            (LOG_BPF, RET_LOG, RET_TRAP),
        ] {
            let filters = decode(blob).unwrap();
            let names: Vec<&str> = filters.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["api", "block", "console", "vcpu", "vmm"]);
            for (name, prog) in &filters {
                assert!(returns(prog, wanted), "{name} never returns {wanted:#x}");
                assert!(!returns(prog, unwanted), "{name} returns {unwanted:#x}");
            }
        }
    }

    #[test]
    fn damaged_filters_are_refused() {
        let cut = &ENFORCE_BPF[..ENFORCE_BPF.len() - 3];
        assert!(matches!(decode(cut), Err(Error::Corrupt(_))));
        assert!(matches!(decode(&[5, 0, b'v']), Err(Error::Corrupt(2))));
    }

    #[test]
    fn policy_categories_are_exactly_the_thread_categories() {
        let mut in_policy: Vec<&str> = policy::CATEGORY_SYSCALLS.iter().map(|(c, _)| *c).collect();
        let mut known: Vec<&str> = Category::ALL.iter().map(|c| c.name()).collect();
        in_policy.sort_unstable();
        known.sort_unstable();
        assert_eq!(in_policy, known);
        for c in Category::ALL {
            assert_eq!(Category::from_name(c.name()), Some(c));
        }
        assert_eq!(Category::from_name("gpu"), None);
    }

    #[test]
    fn probe_syscall_is_outside_every_list() {
        for (cat, list) in policy::CATEGORY_SYSCALLS {
            assert!(
                !list.contains(&PROBE_SYSCALL),
                "{cat} allows {PROBE_SYSCALL}"
            );
        }
    }

    #[test]
    fn symbolic_values_match_this_target() {
        let sym = |name: &str| {
            policy::SYMBOLS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .unwrap()
        };
        assert_eq!(sym("TCGETS"), num(libc::TCGETS));
        assert_eq!(sym("TCSETS"), num(libc::TCSETS));
        assert_eq!(sym("FIONBIO"), num(libc::FIONBIO));
        assert_eq!(sym("SOL_SOCKET"), num(libc::SOL_SOCKET));
        assert_eq!(sym("SO_RCVTIMEO"), num(libc::SO_RCVTIMEO));
        assert_eq!(sym("MSG_NOSIGNAL"), num(libc::MSG_NOSIGNAL));
        assert_eq!(sym("SOCK_CLOEXEC"), num(libc::SOCK_CLOEXEC));
        assert_eq!(sym("SIGABRT"), num(libc::SIGABRT));
        assert_eq!(sym("SIGRTMIN"), num(vmm_sys_util::signal::SIGRTMIN()));
        #[cfg(target_arch = "aarch64")]
        {
            use kvm_bindings::{
                kvm_arm_copy_mte_tags, kvm_device_attr, kvm_mp_state, kvm_one_reg, kvm_reg_list,
                kvm_vcpu_init,
            };
            vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);
            vmm_sys_util::ioctl_iow_nr!(KVM_GET_ONE_REG, kvm_bindings::KVMIO, 0xab, kvm_one_reg);
            vmm_sys_util::ioctl_iow_nr!(KVM_SET_ONE_REG, kvm_bindings::KVMIO, 0xac, kvm_one_reg);
            assert_eq!(sym("KVM_RUN"), num(KVM_RUN()));
            assert_eq!(sym("KVM_GET_ONE_REG"), num(KVM_GET_ONE_REG()));
            assert_eq!(sym("KVM_SET_ONE_REG"), num(KVM_SET_ONE_REG()));
            vmm_sys_util::ioctl_iowr_nr!(KVM_GET_REG_LIST, kvm_bindings::KVMIO, 0xb0, kvm_reg_list);
            vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, kvm_bindings::KVMIO, 0x98, kvm_mp_state);
            vmm_sys_util::ioctl_iow_nr!(
                KVM_GET_DEVICE_ATTR,
                kvm_bindings::KVMIO,
                0xe2,
                kvm_device_attr
            );
            vmm_sys_util::ioctl_ior_nr!(
                KVM_ARM_MTE_COPY_TAGS,
                kvm_bindings::KVMIO,
                0xb4,
                kvm_arm_copy_mte_tags
            );
            assert_eq!(sym("KVM_GET_REG_LIST"), num(KVM_GET_REG_LIST()));
            assert_eq!(sym("KVM_GET_MP_STATE"), num(KVM_GET_MP_STATE()));
            assert_eq!(sym("KVM_GET_DEVICE_ATTR"), num(KVM_GET_DEVICE_ATTR()));
            assert_eq!(sym("KVM_ARM_MTE_COPY_TAGS"), num(KVM_ARM_MTE_COPY_TAGS()));
            vmm_sys_util::ioctl_iow_nr!(KVM_SET_MP_STATE, kvm_bindings::KVMIO, 0x99, kvm_mp_state);
            vmm_sys_util::ioctl_iow_nr!(
                KVM_ARM_VCPU_INIT,
                kvm_bindings::KVMIO,
                0xae,
                kvm_vcpu_init
            );
            assert_eq!(sym("KVM_SET_MP_STATE"), num(KVM_SET_MP_STATE()));
            assert_eq!(sym("KVM_ARM_VCPU_INIT"), num(KVM_ARM_VCPU_INIT()));
        }
    }

    /// The policy's numeric argument values (flags, operations) are this target's constants.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn numeric_policy_values_are_the_targets_constants() {
        use libc::*;
        assert_eq!(0x22, MAP_PRIVATE | MAP_ANONYMOUS);
        assert_eq!(0x4022, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
        assert_eq!(4, PROT_EXEC);
        assert_eq!(4, MADV_DONTNEED);
        assert_eq!(4, MS_SYNC);
        assert_eq!(
            0x880C1,
            O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        );
        assert_eq!(0x84000, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_eq!(
            0xFFFD_FFFFu32,
            !(0o400000u32),
            "the mask leaves out O_LARGEFILE"
        );
        assert_eq!(
            [0, 1, 128, 129, 137],
            [
                FUTEX_WAIT,
                FUTEX_WAKE,
                FUTEX_WAIT | FUTEX_PRIVATE_FLAG,
                FUTEX_WAKE | FUTEX_PRIVATE_FLAG,
                FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG
            ]
        );
    }

    #[test]
    fn docs_table_matches_the_policy() {
        let doc = include_str!("../../docs/seccomp.md");
        for (cat, list) in policy::CATEGORY_SYSCALLS {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{cat}` |")))
                .unwrap_or_else(|| panic!("docs/seccomp.md has no row for {cat}"));
            let count: usize = row.split('|').nth(3).unwrap().trim().parse().unwrap();
            assert_eq!(count, list.len(), "docs/seccomp.md: {row}");
        }
    }

    #[test]
    fn off_mode_spawns_without_a_filter() {
        let sb = Sandbox::with_probe(SeccompMode::Off, None).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = sb
            .spawn(Category::Vcpu, "t".into(), move || tx.send(7).unwrap())
            .unwrap();
        h.join().unwrap();
        assert_eq!(rx.recv(), Ok(7));
    }

    #[cfg(not(target_arch = "aarch64"))]
    #[test]
    fn filters_are_refused_off_aarch64() {
        assert!(matches!(
            Sandbox::with_probe(SeccompMode::Enforce, None),
            Err(Error::Arch)
        ));
        assert!(matches!(
            Sandbox::with_probe(SeccompMode::Log, None),
            Err(Error::Arch)
        ));
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn spawned_thread_runs_under_its_filter() {
        let sb = Sandbox::with_probe(SeccompMode::Enforce, None).unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let h = sb
            .spawn(Category::Vcpu, "filtered".into(), move || {
                let tid = crate::sys::gettid();
                tid_tx.send(tid).unwrap();
                let _ = go_rx.recv();
            })
            .unwrap();
        let tid = tid_rx.recv().unwrap();
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        go_tx.send(()).unwrap();
        h.join().unwrap();
        assert!(status.contains("Seccomp:\t2"), "{status}");
        let own = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert!(
            !own.contains("Seccomp:\t2"),
            "the spawning thread got a filter"
        );
    }

    /// Runs this test binary's `forbidden_syscall_child` with `mode`.
    #[cfg(target_arch = "aarch64")]
    fn run_child(mode: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "sandbox::tests::forbidden_syscall_child",
                "--nocapture",
            ])
            .env("REFVMM_SANDBOX_CHILD", mode)
            .output()
            .unwrap()
    }

    /// Not a test on its own: the child process of the two tests below.
    #[cfg(target_arch = "aarch64")]
    #[test]
    #[ignore = "run by forbidden_syscall_* in a child process"]
    fn forbidden_syscall_child() {
        let mode = match std::env::var("REFVMM_SANDBOX_CHILD").as_deref() {
            Ok("enforce") => SeccompMode::Enforce,
            Ok("log") => SeccompMode::Log,
            _ => panic!("run only as a child of forbidden_syscall_*"),
        };
        let sb = Sandbox::with_probe(mode, Some(Category::Vcpu)).unwrap();
        sb.spawn(Category::Vcpu, "probe".into(), || {
            println!("@@after-probe");
        })
        .unwrap()
        .join()
        .unwrap();
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn forbidden_syscall_ends_the_process_under_enforce() {
        let out = run_child("enforce");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(i32::from(crate::exit_status::SECCOMP_VIOLATION)),
            "{stderr}"
        );
        let want = format!("a vcpu thread made syscall {}", libc::SYS_getppid);
        assert!(stderr.contains(&want), "{stderr}");
        assert!(!stdout.contains("@@after-probe"), "{stdout}");
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn forbidden_syscall_is_let_through_under_log() {
        let out = run_child("log");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("@@after-probe"), "{stdout}");
    }
}
