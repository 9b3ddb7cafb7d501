//! The `refvmm` binary's command line: every bad input gives a clear message and a documented
//! non-zero status, never a panic. (Runs on any host: these errors come before KVM.)

use std::process::{Command, Output};

/// The binary under test: `REFVMM_BIN` when set (the emulated machine, where the build tree's
/// path does not exist), else the one cargo built for this test.
fn binary() -> std::path::PathBuf {
    std::env::var_os("REFVMM_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_refvmm").into())
}

fn refvmm(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run refvmm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output, status: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(status), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "refvmm panicked: {err}");
}

/// A non-empty stand-in kernel. Each call gets its own file: tests run in parallel threads of one
/// process, and rewriting a shared file (truncate, then write) let another test's refvmm read it
/// empty in between.
fn kernel_stub() -> TempFile {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("refvmm-cli-kernel-{}-{n}", std::process::id()));
    std::fs::write(&p, b"stub").unwrap();
    TempFile(p)
}

/// A file removed when the test that made it ends.
struct TempFile(std::path::PathBuf);

impl std::ops::Deref for TempFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn help_is_available_and_names_every_option() {
    let o = refvmm(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    for opt in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--cpus",
        "--memory",
        "--mte",
        "--sdei",
        "--seccomp",
        "--api-socket",
        "--pmem",
    ] {
        assert!(out.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn missing_kernel_option_is_a_usage_error() {
    assert_clean_failure(&refvmm(&[]), 2, "--kernel");
}

#[test]
fn unknown_option_is_a_usage_error() {
    assert_clean_failure(
        &refvmm(&["--kernel", "x", "--frobnicate"]),
        2,
        "--frobnicate",
    );
}

#[test]
fn nonexistent_kernel_is_a_configuration_error() {
    assert_clean_failure(
        &refvmm(&["--kernel", "/nonexistent/Image"]),
        3,
        "Kernel /nonexistent/Image: no such file",
    );
}

#[test]
fn too_little_memory_is_a_configuration_error() {
    let k = kernel_stub();
    assert_clean_failure(
        &refvmm(&["--kernel", k.to_str().unwrap(), "--memory", "8M"]),
        3,
        "too little memory",
    );
}

#[test]
fn malformed_memory_size_is_a_configuration_error() {
    let k = kernel_stub();
    assert_clean_failure(
        &refvmm(&["--kernel", k.to_str().unwrap(), "--memory", "12Q"]),
        3,
        "unknown suffix",
    );
}

#[test]
fn zero_cpus_is_a_configuration_error() {
    let k = kernel_stub();
    assert_clean_failure(
        &refvmm(&["--kernel", k.to_str().unwrap(), "--cpus", "0"]),
        3,
        "Number of vCPUs",
    );
}

#[test]
fn non_numeric_cpus_is_a_usage_error() {
    assert_clean_failure(&refvmm(&["--kernel", "x", "--cpus", "many"]), 2, "--cpus");
}

#[test]
fn missing_initrd_is_a_configuration_error() {
    let k = kernel_stub();
    assert_clean_failure(
        &refvmm(&["--kernel", k.to_str().unwrap(), "--initrd", "/nope.cpio"]),
        3,
        "Initrd /nope.cpio",
    );
}

#[test]
fn bad_seccomp_mode_is_a_usage_error() {
    assert_clean_failure(
        &refvmm(&["--kernel", "x", "--seccomp", "strict"]),
        2,
        "--seccomp",
    );
}

#[test]
fn missing_pmem_file_is_a_configuration_error() {
    let k = kernel_stub();
    assert_clean_failure(
        &refvmm(&[
            "--kernel",
            k.to_str().unwrap(),
            "--pmem",
            "file=/nonexistent/pmem.img",
        ]),
        3,
        "pmem /nonexistent/pmem.img: no such file",
    );
}

#[test]
fn unaligned_pmem_size_is_a_configuration_error() {
    let k = kernel_stub();
    assert_clean_failure(
        &refvmm(&["--kernel", k.to_str().unwrap(), "--pmem", "memfd,size=3M"]),
        3,
        "must be a multiple of 2 MiB",
    );
}

#[test]
fn pmem_with_restore_is_a_usage_error() {
    assert_clean_failure(
        &refvmm(&["--restore", "/snap", "--pmem", "memfd,size=2M"]),
        2,
        "--pmem",
    );
}

#[test]
fn mte_with_a_pmem_file_on_disk_is_refused_before_kvm() {
    // Cargo's scratch directory for integration tests lives in target/, on the disk the
    // checkout is on. (The emulated arm64 machine has no disk: its runner leaves this test out.)
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("refvmm-cli-pmem-{}", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(2 << 20).unwrap();
    let kind = mte_memory::BackingKind::of_file(&f).unwrap();
    if !matches!(kind, mte_memory::BackingKind::OtherFile(_)) {
        let _ = std::fs::remove_file(&p);
        panic!(
            "this test needs a disk filesystem, but {} is on {kind}",
            p.display()
        );
    }
    let k = kernel_stub();
    let spec = format!("file={}", p.display());
    let o = refvmm(&["--kernel", k.to_str().unwrap(), "--mte", "--pmem", &spec]);
    let _ = std::fs::remove_file(&p);
    assert_clean_failure(&o, 3, "cannot hold MTE tags; with --mte use memfd");
}

#[cfg(target_arch = "aarch64")]
#[test]
fn an_initrd_too_large_for_the_memory_is_refused_clearly() {
    let mut img = vec![0u8; 4096];
    img[56..60].copy_from_slice(b"ARM\x64");
    let k = std::env::temp_dir().join(format!("refvmm-cli-image-{}", std::process::id()));
    std::fs::write(&k, &img).unwrap();
    let i = std::env::temp_dir().join(format!("refvmm-cli-initrd-{}", std::process::id()));
    std::fs::write(&i, vec![0u8; 63 << 20]).unwrap();
    let o = refvmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        i.to_str().unwrap(),
        "--memory",
        "64M",
        "--seccomp",
        "off",
    ]);
    let _ = std::fs::remove_file(&i);
    assert_clean_failure(&o, 3, "does not fit in guest RAM");
}

#[test]
fn ctl_without_a_running_vmm_fails_clearly() {
    let o = refvmm(&["ctl", "--api-socket", "/nonexistent.sock", "status"]);
    assert_clean_failure(&o, 1, "API socket /nonexistent.sock");
}

#[test]
fn ctl_refuses_an_unknown_request_before_connecting() {
    let o = refvmm(&["ctl", "--api-socket", "/nonexistent.sock", "reboot"]);
    assert_clean_failure(&o, 1, "unknown request");
}

/// A cause several levels down (config error → file problem → OS error) is printed once, after
/// the message that says what failed.
#[test]
fn a_kernel_path_below_a_file_names_the_os_error_exactly_once() {
    let k = kernel_stub();
    let below = format!("{}/Image", k.display());
    let o = refvmm(&["--kernel", &below]);
    let expected =
        format!("refvmm: Kernel {below}: cannot inspect it: Not a directory (os error 20)");
    assert_clean_failure(&o, 3, &expected);
    let err = stderr(&o);
    assert_eq!(err.matches("Not a directory").count(), 1, "{err}");
}

#[test]
fn a_pmem_path_below_a_file_names_the_os_error_exactly_once() {
    let k = kernel_stub();
    let spec = format!("file={}/pmem.img", k.display());
    let o = refvmm(&["--kernel", k.to_str().unwrap(), "--pmem", &spec]);
    assert_clean_failure(
        &o,
        3,
        "/pmem.img: cannot inspect it: Not a directory (os error 20)",
    );
    let err = stderr(&o);
    assert_eq!(err.matches("Not a directory").count(), 1, "{err}");
}

#[test]
fn ctl_connection_failure_names_the_os_error_exactly_once() {
    let o = refvmm(&["ctl", "--api-socket", "/nonexistent.sock", "status"]);
    assert_clean_failure(
        &o,
        1,
        "refvmm ctl: API socket /nonexistent.sock: cannot connect to it: No such file or directory",
    );
    let err = stderr(&o);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
