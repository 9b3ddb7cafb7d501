//! Guests for refvmm ("L2"): a busybox initramfs with an init script and extra programs, and
//! the main job that boots Debian's arm64 kernel on refvmm inside the emulated machine.

use crate::cpio::Cpio;
use crate::cross;
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

/// One guest scenario's run in the emulated machine: `/work` holds refvmm, the kernel `Image`
/// and `guest.cpio` (busybox, `/init` from `init`, `files` in `/bin`), and `l1_script` runs
/// there. Returns the console output, also kept in `target/xtask-logs/<name>.log`.
pub(crate) struct GuestRun<'a> {
    /// The scenario's name (log file, scratch directory).
    pub name: &'static str,
    /// The guest's `/init`, after [`GUEST_INIT_PRELUDE`].
    pub init: &'a str,
    /// Extra guest files: (name in `/bin`, host path).
    pub files: &'a [(&'a str, &'a Path)],
    /// The script run in `/work` of the emulated machine.
    pub l1_script: &'a str,
    /// Deadline for the whole run.
    pub timeout: Duration,
    /// Memory of the emulated machine.
    pub memory_mib: u32,
}

/// The start of every scenario guest's `/init`: busybox's applets, `/proc`, `/sys`, `/dev`.
pub(crate) const GUEST_INIT_PRELUDE: &str = "#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
";

/// Shell functions every scenario's L1 script may call. `report_threads PID` prints one
/// `@@THREAD <name> Seccomp: <mode>` line per thread of refvmm process PID (read back by
/// [`threads_filtered`]); a thread that exits while it is read (refvmm's vCPU threads return
/// once the VM stops) is left out, not reported with an empty mode.
const L1_PRELUDE: &str = r#"
report_threads() {
  for t in /proc/$1/task/*; do
    c=$(cat $t/comm 2>/dev/null) && s=$(grep '^Seccomp:' $t/status 2>/dev/null) \
      && echo "@@THREAD $c $(echo "$s" | tr -s ' \t' ' ')"
  done
}
"#;

/// Builds the initramfs and refvmm, runs the job (see [`GuestRun`]), returns the output.
pub(crate) fn run_guest(tb: &Testbed, run: GuestRun<'_>) -> Result<String, Fail> {
    let refvmm = cross::refvmm()?;
    let work = std::env::temp_dir().join(format!("xtask-{}-{}", run.name, std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", work.display())))?;
    let result = (|| {
        let cpio = work.join("guest.cpio");
        initramfs(
            tb,
            &format!("{GUEST_INIT_PRELUDE}{}", run.init),
            run.files,
            &cpio,
        )?;
        let job = Job {
            files: vec![
                ("refvmm".into(), refvmm),
                ("Image".into(), tb.kernel.clone()),
                ("guest.cpio".into(), cpio),
            ],
            script: format!("{L1_PRELUDE}{}", run.l1_script),
            timeout: run.timeout,
            memory_mib: run.memory_mib,
            echo: true,
        };
        l1::run(Some(tb), &job)
    })();
    let _ = std::fs::remove_dir_all(&work);
    let out = result?.output;
    save_log(run.name, &out);
    Ok(out)
}

const BOOT_GUEST_INIT: &str = r#"echo "@@GUEST-INIT"
echo "@@GUEST-CPUS $(nproc)"
echo "@@GUEST-FEATURES $(grep -m1 Features /proc/cpuinfo)"
/bin/mte_check
echo "@@GUEST-MTE-CHECK $?"
poweroff -f
"#;

/// The L1 side: start refvmm, note L1's uptime when the guest's init speaks, sample
/// refvmm's memory and each thread's seccomp mode while the guest runs, report refvmm's exit
/// status.
const BOOT_L1_SCRIPT: &str = r#"
echo "@@L1-UPTIME-AT-JOB $(cut -d' ' -f1 /proc/uptime)"
echo "@@L1-THP enabled: $(cat /sys/kernel/mm/transparent_hugepage/enabled); shmem_enabled: $(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled)"
echo "@@T-START $(cut -d' ' -f1 /proc/uptime)"
( ./refvmm --kernel Image --initrd guest.cpio --cpus 2 --memory 512M --mte --seccomp enforce \
    --cmdline "console=ttyS0 rdinit=/init quiet" ; echo "@@REFVMM-EXIT $?" ) 2>&1 |
while IFS= read -r line; do
  case "$line" in
    *@@GUEST-INIT*)
      echo "@@T-INIT $(cut -d' ' -f1 /proc/uptime)"
      pid=$(pidof refvmm)
      grep -E '^(VmRSS|RssAnon|RssFile|RssShmem)' /proc/$pid/status | tr -s ' \t' ' ' | sed 's/^/@@MEM /'
      # Guest RAM is the one 512 MiB mapping (anonymous mappings have no name on Debian's
      # kernel, which lacks CONFIG_ANON_VMA_NAME).
      va=$(while read -r range rest; do s=${range%-*}; e=${range#*-}
        [ $((0x$e - 0x$s)) = 536870912 ] && { echo $s; break; }; done < /proc/$pid/maps)
      echo "@@MEM GuestMapping: $(grep "^$va-" /proc/$pid/maps)"
      guest_smaps() { awk -v va="$va-" -v f="$1" 'index($0, va) == 1 {m=1; next} /^[0-9a-f]+-[0-9a-f]+ / {m=0} m && $1 == f {s+=$2} END {print s+0}' /proc/$pid/smaps; }
      echo "@@MEM GuestRss: $(guest_smaps Rss:) kB"
      echo "@@MEM GuestHuge: $(($(guest_smaps AnonHugePages:) + $(guest_smaps ShmemPmdMapped:))) kB"
      report_threads $pid
      ;;
  esac
  echo "$line"
done
"#;

/// One check per `(name, marker, wanted text)`: the line after the marker (a refvmm answer
/// followed by ` status <code>`) contains the wanted text and ends with `status 3`.
pub(crate) fn refused_with_status_3(out: &str, cases: &[(&'static str, &str, &str)]) -> Vec<Check> {
    cases
        .iter()
        .map(|&(name, key, want)| {
            let v = marker(out, key).unwrap_or_default();
            check(
                name,
                (!(v.contains(want) && v.ends_with("status 3"))).then(|| format!("{v:?}")),
            )
        })
        .collect()
}

pub(crate) fn marker<'a>(out: &'a str, name: &str) -> Option<&'a str> {
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

pub(crate) fn check(name: &str, failure: Option<String>) -> Check {
    Check {
        name: name.to_string(),
        failure,
    }
}

/// The main job: Debian's arm64 kernel on refvmm with 2 vCPUs and MTE, to an init that
/// reports what the guest sees and runs the MTE check, then powers off.
pub fn boot(tb: &Testbed) -> Result<Vec<Check>, Fail> {
    let mte_check = cross::vmm_example("mte_check")?;
    let out = &run_guest(
        tb,
        GuestRun {
            name: "boot",
            init: BOOT_GUEST_INIT,
            files: &[("mte_check", &mte_check)],
            l1_script: BOOT_L1_SCRIPT,
            timeout: Duration::from_secs(900),
            memory_mib: 2048,
        },
    )?;
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
    // The test bed runs Debian's stock kernel settings (THP enabled=always,
    // shmem_enabled=never): the default backing must be anonymous memory on huge pages.
    let said = marker(out, "refvmm: guest RAM:").unwrap_or_default();
    let huge = mem_kib(out, "GuestHuge");
    checks.push(check(
        "boot: by default guest RAM is on 2 MiB pages on a stock host, and refvmm says which backing and why",
        (!(said.starts_with("512 MiB of private anonymous memory on 2 MiB pages")
            && said.contains("a memfd would get 4 KiB pages")
            && huge.is_some_and(|k| k >= 2048)))
        .then(|| {
            format!(
                "refvmm said {said:?}; huge-page-mapped guest RAM {huge:?} KiB; host {:?}",
                marker(out, "@@L1-THP")
            )
        }),
    ));
    checks.push(check(
        "boot: every refvmm thread runs under a seccomp filter (Seccomp: 2)",
        threads_filtered(out, &["refvmm", "vcpu0", "vcpu1"]),
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
    if let (Some(rss), Some(guest)) = (mem_kib(out, "VmRSS"), mem_kib(out, "GuestRss")) {
        println!(
            "xtask: refvmm RSS {rss} KiB, of which guest RAM {guest} KiB ({:?} KiB on huge pages); refvmm's own memory {} KiB (anon {:?} KiB, shmem incl. the binary on the initramfs {:?} KiB)",
            huge,
            rss.saturating_sub(guest),
            mem_kib(out, "RssAnon"),
            mem_kib(out, "RssShmem")
        );
    }
    Ok(checks)
}

/// Checks the `@@THREAD <name> Seccomp: <mode>` lines: the `expected` threads are all there
/// and every thread is in filter mode.
pub(crate) fn threads_filtered(out: &str, expected: &[&str]) -> Option<String> {
    let threads: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once("@@THREAD ")?.1.split_once(' '))
        .collect();
    let missing: Vec<&&str> = expected
        .iter()
        .filter(|e| !threads.iter().any(|(n, _)| n == *e))
        .collect();
    let unfiltered: Vec<&(&str, &str)> = threads
        .iter()
        .filter(|(_, mode)| mode.trim() != "Seccomp: 2")
        .collect();
    (!missing.is_empty() || !unfiltered.is_empty()).then(|| {
        format!("threads {threads:?}: missing {missing:?}, not in filter mode {unfiltered:?}")
    })
}

/// Keeps a scenario's console output in `target/xtask-logs/<name>.log` for post-mortems.
pub(crate) fn save_log(name: &str, out: &str) {
    let dir = crate::util::workspace_root().join("target/xtask-logs");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{name}.log")), out);
    }
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
