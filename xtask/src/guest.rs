//! Guests for refvmm ("L2"): a busybox initramfs with an init script and extra programs, and
//! the main job that boots Debian's arm64 kernel on refvmm inside the emulated machine.

use crate::build;
use crate::cpio::Cpio;
use crate::l1::{self, Job};
use crate::setup::Testbed;
use crate::util::Fail;
use std::path::Path;
use std::time::Duration;

/// Builds a guest initramfs: busybox, `/init` from `init_script`, and `files` in `/bin`.
pub fn initramfs(
    tb: &Testbed,
    init_script: &str,
    files: &[(&str, &Path)],
    out: &Path,
) -> Result<(), Fail> {
    let mut c = Cpio::default();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "proc", "sys", "dev", "tmp", "mnt",
    ] {
        c.dir(d);
    }
    let bb =
        std::fs::read(&tb.busybox).map_err(|e| Fail::new(format!("cannot read busybox: {e}")))?;
    c.file("bin/busybox", 0o755, &bb);
    c.symlink("bin/sh", "busybox");
    c.file("init", 0o755, init_script.as_bytes());
    for (name, path) in files {
        let data = std::fs::read(path)
            .map_err(|e| Fail::new(format!("cannot read {}: {e}", path.display())))?;
        c.file(&format!("bin/{name}"), 0o755, &data);
    }
    let mut f = std::fs::File::create(out)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", out.display())))?;
    c.finish(&mut f)
        .map_err(|e| Fail::new(format!("cannot write {}: {e}", out.display())))
}

const BOOT_GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "@@GUEST-INIT"
echo "@@GUEST-CPUS $(nproc)"
echo "@@GUEST-FEATURES $(grep -m1 Features /proc/cpuinfo)"
/bin/mte_check
echo "@@GUEST-MTE-CHECK $?"
poweroff -f
"#;

/// The L1 side: start refvmm, note L1's uptime when the guest's init speaks, sample
/// refvmm's memory while the guest runs, report refvmm's exit status.
const BOOT_L1_SCRIPT: &str = r#"
echo "@@L1-UPTIME-AT-JOB $(cut -d' ' -f1 /proc/uptime)"
echo "@@T-START $(cut -d' ' -f1 /proc/uptime)"
( ./refvmm --kernel Image --initrd guest.cpio --cpus 2 --memory 512M --mte \
    --cmdline "console=ttyS0 rdinit=/init quiet" ; echo "@@REFVMM-EXIT $?" ) 2>&1 |
while IFS= read -r line; do
  case "$line" in
    *@@GUEST-INIT*)
      echo "@@T-INIT $(cut -d' ' -f1 /proc/uptime)"
      pid=$(pidof refvmm)
      grep -E '^(VmRSS|RssAnon|RssFile|RssShmem)' /proc/$pid/status | tr -s ' \t' ' ' | sed 's/^/@@MEM /'
      ;;
  esac
  echo "$line"
done
"#;

fn marker<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.split_once(name).map(|(_, rest)| rest.trim()))
}

fn mem_kib(out: &str, field: &str) -> Option<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("@@MEM "))
        .find_map(|l| l.strip_prefix(&format!("{field}: ")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// One checked fact of a guest scenario.
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

fn check(name: &str, failure: Option<String>) -> Check {
    Check {
        name: name.to_string(),
        failure,
    }
}

/// The main job: Debian's arm64 kernel on refvmm with 2 vCPUs and MTE, to an init that
/// reports what the guest sees and runs the MTE check, then powers off.
pub fn boot(tb: &Testbed) -> Result<Vec<Check>, Fail> {
    let refvmm = build::refvmm()?;
    let mte_check = build::vmm_example("mte_check")?;
    let work = std::env::temp_dir().join(format!("xtask-boot-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", work.display())))?;
    let cpio = work.join("guest.cpio");
    initramfs(tb, BOOT_GUEST_INIT, &[("mte_check", &mte_check)], &cpio)?;
    let job = Job {
        files: vec![
            ("refvmm".into(), refvmm),
            ("Image".into(), tb.kernel.clone()),
            ("guest.cpio".into(), cpio.clone()),
        ],
        script: BOOT_L1_SCRIPT.into(),
        timeout: Duration::from_secs(900),
        memory_mib: 2048,
        echo: true,
    };
    let res = l1::run(Some(tb), &job);
    let _ = std::fs::remove_dir_all(&work);
    let res = res?;
    let out = &res.output;
    let mut checks = vec![check(
        "boot: the guest reaches /init",
        marker(out, "@@GUEST-INIT")
            .is_none()
            .then(|| "the guest never reached /init".to_string()),
    )];
    checks.push(check(
        "boot: the guest brings up 2 vCPUs",
        match marker(out, "@@GUEST-CPUS") {
            Some("2") => None,
            other => Some(format!("the guest sees {other:?} CPUs, expected 2")),
        },
    ));
    let features = marker(out, "@@GUEST-FEATURES").unwrap_or_default();
    checks.push(check(
        "boot: the guest's cpuinfo shows mte",
        (!features.split_whitespace().any(|f| f == "mte"))
            .then(|| "the guest's /proc/cpuinfo does not show mte".to_string()),
    ));
    checks.push(check(
        "boot: tagged memory in the guest (match ok, mismatch faults)",
        (marker(out, "@@GUEST-MTE-CHECK") != Some("0") || !out.contains("MTE-CHECK PASS"))
            .then(|| "the guest's MTE check failed".to_string()),
    ));
    checks.push(check(
        "boot: guest poweroff gives refvmm exit status 0",
        match marker(out, "@@REFVMM-EXIT") {
            Some("0") => None,
            other => Some(format!(
                "refvmm exited with {other:?}, expected 0 (guest poweroff)"
            )),
        },
    ));
    let t = |m| marker(out, m).and_then(|v| v.parse::<f64>().ok());
    if let (Some(l1_boot), Some(start), Some(init)) =
        (t("@@L1-UPTIME-AT-JOB"), t("@@T-START"), t("@@T-INIT"))
    {
        let l2 = init - start;
        println!(
            "xtask: refvmm start -> guest /init: {l2:.2} s; the emulated machine's own boot to its /init (QEMU TCG): {l1_boot:.2} s; ratio {:.2}",
            l2 / l1_boot
        );
    }
    if let (Some(rss), Some(shmem)) = (mem_kib(out, "VmRSS"), mem_kib(out, "RssShmem")) {
        println!(
            "xtask: refvmm RSS {rss} KiB, of which guest RAM (shared memfd) {shmem} KiB; refvmm's own memory {} KiB (anon {:?} KiB, file {:?} KiB)",
            rss.saturating_sub(shmem),
            mem_kib(out, "RssAnon"),
            mem_kib(out, "RssFile")
        );
    }
    Ok(checks)
}

/// Prints each check in libtest's style and returns the counts.
pub fn report(checks: &[Check]) -> crate::util::Counts {
    let mut c = crate::util::Counts::default();
    for ch in checks {
        match &ch.failure {
            None => {
                println!("test {} ... ok", ch.name);
                c.passed += 1;
            }
            Some(why) => {
                println!("test {} ... FAILED: {why}", ch.name);
                c.failed += 1;
            }
        }
    }
    c
}
