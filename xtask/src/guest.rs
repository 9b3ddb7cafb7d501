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
/// refvmm's memory and each thread's seccomp mode while the guest runs, report refvmm's exit
/// status.
const BOOT_L1_SCRIPT: &str = r#"
echo "@@L1-UPTIME-AT-JOB $(cut -d' ' -f1 /proc/uptime)"
echo "@@T-START $(cut -d' ' -f1 /proc/uptime)"
( ./refvmm --kernel Image --initrd guest.cpio --cpus 2 --memory 512M --mte --seccomp enforce \
    --cmdline "console=ttyS0 rdinit=/init quiet" ; echo "@@REFVMM-EXIT $?" ) 2>&1 |
while IFS= read -r line; do
  case "$line" in
    *@@GUEST-INIT*)
      echo "@@T-INIT $(cut -d' ' -f1 /proc/uptime)"
      pid=$(pidof refvmm)
      grep -E '^(VmRSS|RssAnon|RssFile|RssShmem)' /proc/$pid/status | tr -s ' \t' ' ' | sed 's/^/@@MEM /'
      echo "@@MEM GuestRss: $(awk '/memfd:guest-mem/ {m=1; next} /^[0-9a-f]+-[0-9a-f]+ / {m=0} m && /^Rss:/ {s+=$2} END {print s+0}' /proc/$pid/smaps) kB"
      for t in /proc/$pid/task/*; do
        echo "@@THREAD $(cat $t/comm) $(grep '^Seccomp:' $t/status | tr -s ' \t' ' ')"
      done
      ;;
  esac
  echo "$line"
done
"#;

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
    save_log("boot", &res.output);
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
            "xtask: refvmm RSS {rss} KiB, of which guest RAM (the memfd mapping) {guest} KiB; refvmm's own memory {} KiB (anon {:?} KiB, shmem incl. guest RAM and the binary on the initramfs {:?} KiB)",
            rss.saturating_sub(guest),
            mem_kib(out, "RssAnon"),
            mem_kib(out, "RssShmem")
        );
    }
    Ok(checks)
}

/// Checks the `@@THREAD <name> Seccomp: <mode>` lines: the `expected` threads are all there
/// and every thread is in filter mode.
fn threads_filtered(out: &str, expected: &[&str]) -> Option<String> {
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

const SDEI_GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
dump() { sed "s/^/@@REC$1 /" /proc/sdei_test; }
echo "@@GUEST-SDEI-PROBE $(dmesg | grep -m1 'sdei: SDEIv')"
echo "@@GUEST-CPUS $(nproc)"
insmod /bin/sdei_test.ko events=0x1000000,0x1000001,0x1000002,0x1000003
dmesg | grep 'sdei_test: \(registered\|enabled\)' | sed 's/^/@@GUEST-REG /'
# Phase 1: private events to each vCPU, one shared event.
echo "@@STEP1"
sleep 3
dump 1
# Phase 2: an event for CPU 1 while CPU 1 has interrupts masked.
taskset -c 1 sh -c 'echo 30000 > /proc/sdei_test_irqoff' &
sleep 1
echo "@@STEP2"
wait
cat /proc/sdei_test_irqoff | sed 's/^/@@IRQOFF /'
dump 2
# Phase 3: a critical event while a normal handler spins on CPU 1.
echo 0x1000000 > /sys/module/sdei_test/parameters/spin_event
echo 6000 > /sys/module/sdei_test/parameters/spin_ms
echo "@@STEP3"
sleep 8
echo 0 > /sys/module/sdei_test/parameters/spin_ms
dump 3
# Phase 4: hundreds of events; the VMM side says on the console when it is done.
echo "@@STEP4"
read -r done_line
sleep 3
dump 4
echo "@@GUEST-ALIVE $(echo ok)"
poweroff -f
"#;

const SDEI_L1_SCRIPT: &str = r#"
ctl() { ./refvmm ctl --api-socket /tmp/vm.sock "$@"; }
mkfifo /tmp/in
exec 3<>/tmp/in
( ./refvmm --kernel Image --initrd guest.cpio --cpus 2 --memory 512M --sdei --seccomp enforce \
    --api-socket /tmp/vm.sock --cmdline "console=ttyS0 rdinit=/init quiet" < /tmp/in ; echo "@@REFVMM-EXIT $?" ) 2>&1 |
while IFS= read -r line; do
  echo "$line"
  case "$line" in
    *@@STEP1*)
      echo "@@CTL1 $(ctl sdei-signal 0x1000000 1) $(ctl sdei-signal 0x1000000 0) $(ctl sdei-signal 0x1000002)" ;;
    *@@STEP2*)
      echo "@@CTL2 $(ctl sdei-signal 0x1000000 1)" ;;
    *@@STEP3*)
      a=$(ctl sdei-signal 0x1000000 1); sleep 2; b=$(ctl sdei-signal 0x1000001 1)
      echo "@@CTL3 $a $b" ;;
    *@@STEP4*)
      p=0
      for i in $(seq 1 100); do
        for r in "0x1000000 0" "0x1000000 1" "0x1000002" "0x1000003"; do
          case "$(ctl sdei-signal $r)" in pending) p=$((p+1));; esac
        done
      done
      echo "@@L1-PENDING $p"
      echo "done" >&3 ;;
  esac
done
"#;

/// A delivery record printed by the test module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivery {
    phase: u32,
    event: u32,
    cpu: u32,
    nested: bool,
    irqoff: bool,
    seq: u64,
}

fn field(line: &str, name: &str) -> Option<u64> {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))?;
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

fn deliveries(out: &str) -> Vec<Delivery> {
    let mut seen = std::collections::BTreeSet::new();
    let mut v = Vec::new();
    for l in out.lines() {
        let Some(rest) = l.strip_prefix("@@REC") else {
            continue;
        };
        let Some((phase, rec)) = rest.split_once(' ') else {
            continue;
        };
        if !rec.starts_with("sdei_test: event=") || rec.contains("injected=1") {
            continue;
        }
        let (Some(seq), Some(event), Some(cpu)) =
            (field(rec, "seq"), field(rec, "event"), field(rec, "cpu"))
        else {
            continue;
        };
        if !seen.insert(seq) {
            continue;
        }
        v.push(Delivery {
            phase: phase.parse().unwrap_or(0),
            event: event as u32,
            cpu: cpu as u32,
            nested: field(rec, "nested") == Some(1),
            irqoff: field(rec, "irqoff") == Some(1),
            seq,
        });
    }
    v
}

/// Issue 8's scenario: Linux's own SDEI driver and the test module in a 2-vCPU guest.
pub fn sdei(tb: &Testbed) -> Result<Vec<Check>, Fail> {
    let refvmm = build::refvmm()?;
    let module = crate::kmod::build_sdei_module(tb)?;
    let work = std::env::temp_dir().join(format!("xtask-sdei-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", work.display())))?;
    let cpio = work.join("guest.cpio");
    initramfs(tb, SDEI_GUEST_INIT, &[("sdei_test.ko", &module)], &cpio)?;
    let job = Job {
        files: vec![
            ("refvmm".into(), refvmm),
            ("Image".into(), tb.kernel.clone()),
            ("guest.cpio".into(), cpio.clone()),
        ],
        script: SDEI_L1_SCRIPT.into(),
        timeout: Duration::from_secs(1500),
        memory_mib: 2048,
        echo: true,
    };
    let res = l1::run(Some(tb), &job);
    let _ = std::fs::remove_dir_all(&work);
    let out = res?.output;
    save_log("sdei", &out);
    let d = deliveries(&out);
    const PRIV_N: u32 = 0x0100_0000;
    const PRIV_C: u32 = 0x0100_0001;
    const SHARED_N: u32 = 0x0100_0002;
    let in_phase = |p: u32| d.iter().filter(move |x| x.phase == p);
    let mut checks = Vec::new();
    let probe = marker(&out, "@@GUEST-SDEI-PROBE").unwrap_or_default();
    checks.push(check(
        "sdei: Linux detects SDEI v1.1 in firmware",
        (!(probe.contains("SDEIv1.1") && probe.contains("detected in firmware")))
            .then(|| format!("guest log: {probe:?}")),
    ));
    let regs: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("@@GUEST-REG"))
        .collect();
    checks.push(check(
        "sdei: the test module registers and enables all four events",
        (regs.len() != 8 || regs.iter().any(|l| !l.ends_with("err=0")))
            .then(|| format!("{regs:?}")),
    ));
    let p1: Vec<_> = in_phase(1).collect();
    checks.push(check(
        "sdei: a private event raised for vCPU 1 runs on CPU 1 (and for vCPU 0 on CPU 0: all vCPUs unmasked)",
        (!(p1.iter().any(|x| x.event == PRIV_N && x.cpu == 1) && p1.iter().any(|x| x.event == PRIV_N && x.cpu == 0)))
            .then(|| format!("phase 1 deliveries: {p1:?}")),
    ));
    let shared = p1.iter().filter(|x| x.event == SHARED_N).count();
    checks.push(check(
        "sdei: a shared event is handled exactly once",
        (shared != 1).then(|| format!("{shared} deliveries of the shared event")),
    ));
    let p2: Vec<_> = in_phase(2).collect();
    checks.push(check(
        "sdei: an event for a CPU with interrupts masked is still delivered (NMI-like)",
        (!p2.iter()
            .any(|x| x.event == PRIV_N && x.cpu == 1 && x.irqoff))
        .then(|| format!("phase 2 deliveries: {p2:?}; {:?}", marker(&out, "@@IRQOFF"))),
    ));
    let p3: Vec<_> = in_phase(3).collect();
    checks.push(check(
        "sdei: a critical event pre-empts a running normal handler",
        (!p3.iter()
            .any(|x| x.event == PRIV_C && x.cpu == 1 && x.nested))
        .then(|| {
            format!(
                "phase 3 deliveries: {p3:?}; ctl {:?}",
                marker(&out, "@@CTL3")
            )
        }),
    ));
    // The module's own per-event totals, taken after phases 3 and 4.
    let total = |phase: u32| -> u64 {
        out.lines()
            .filter_map(|l| l.strip_prefix(&format!("@@REC{phase} sdei_test: total event=")))
            .filter_map(|l| field(l, "deliveries"))
            .sum()
    };
    let p4 = total(4).saturating_sub(total(3)) as usize;
    let pending: Option<usize> = marker(&out, "@@L1-PENDING").and_then(|v| v.parse().ok());
    checks.push(check(
        "sdei: hundreds of events, each accepted raise delivered once, guest keeps working",
        match pending {
            Some(p) if p >= 100 && p == p4 && marker(&out, "@@GUEST-ALIVE") == Some("ok") => None,
            other => Some(format!(
                "{other:?} raises accepted, {p4} delivered ({} records seen), alive {:?}",
                in_phase(4).count(),
                marker(&out, "@@GUEST-ALIVE")
            )),
        },
    ));
    checks.push(check(
        "sdei: the guest powers off (refvmm exit 0)",
        (marker(&out, "@@REFVMM-EXIT") != Some("0"))
            .then(|| format!("{:?}", marker(&out, "@@REFVMM-EXIT"))),
    ));
    Ok(checks)
}

const SECCOMP_GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
echo "@@GUEST-INIT"
poweroff -f
"#;

/// Runs refvmm twice with the forbidden-syscall test hook on vCPU 0, under `enforce` and
/// under `log`, with L1's kernel log cleared before and read after each run.
const SECCOMP_L1_SCRIPT: &str = r#"
run() {
  dmesg -c > /dev/null
  ( REFVMM_TEST_FORBIDDEN_SYSCALL=vcpu ./refvmm --kernel Image --initrd guest.cpio --cpus 2 \
      --memory 512M --seccomp $1 --cmdline "console=ttyS0 rdinit=/init quiet" ; \
    echo "@@EXIT-$1 $?" ) 2>&1 | sed "s/^/[$1] /"
  sleep 2
  dmesg | grep 'type=1326' | sed "s/^/@@AUDIT-$1 /"
  echo "@@DONE-$1"
}
run enforce
run log
"#;

/// `getppid` on aarch64, the syscall of refvmm's test hook.
const GETPPID: u32 = 173;

/// Issue 10's scenario: a syscall outside the vCPU threads' list kills refvmm under
/// `--seccomp enforce` and is only logged under `--seccomp log`.
pub fn seccomp(tb: &Testbed) -> Result<Vec<Check>, Fail> {
    let refvmm = build::refvmm()?;
    let work = std::env::temp_dir().join(format!("xtask-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", work.display())))?;
    let cpio = work.join("guest.cpio");
    initramfs(tb, SECCOMP_GUEST_INIT, &[], &cpio)?;
    let job = Job {
        files: vec![
            ("refvmm".into(), refvmm),
            ("Image".into(), tb.kernel.clone()),
            ("guest.cpio".into(), cpio.clone()),
        ],
        script: SECCOMP_L1_SCRIPT.into(),
        timeout: Duration::from_secs(1200),
        memory_mib: 2048,
        echo: true,
    };
    let res = l1::run(Some(tb), &job);
    let _ = std::fs::remove_dir_all(&work);
    let out = res?.output;
    save_log("seccomp", &out);
    let run_lines = |mode: &str| -> Vec<&str> {
        let tag = format!("[{mode}] ");
        out.lines()
            .filter_map(|l| l.split_once(tag.as_str()).map(|(_, r)| r))
            .collect()
    };
    let audits = |mode: &str| -> Vec<&str> {
        let tag = format!("@@AUDIT-{mode} ");
        out.lines()
            .filter_map(|l| l.split_once(tag.as_str()).map(|(_, r)| r))
            .collect()
    };
    let enforce = run_lines("enforce");
    let log = run_lines("log");
    let report = format!("a vcpu thread made syscall {GETPPID}");
    let mut checks = vec![check(
        "seccomp: enforce: a forbidden syscall on a vCPU thread stops refvmm with status 31",
        match marker(&out, "@@EXIT-enforce") {
            Some("31")
                if enforce.iter().any(|l| l.contains(&report))
                    && !enforce.iter().any(|l| l.contains("@@GUEST-INIT")) =>
            {
                None
            }
            other => Some(format!("exit {other:?}; refvmm said {enforce:?}")),
        },
    )];
    checks.push(check(
        "seccomp: log: the guest boots to /init and powers off (exit 0)",
        (marker(&out, "@@EXIT-log") != Some("0")
            || !log.iter().any(|l| l.contains("@@GUEST-INIT")))
        .then(|| format!("exit {:?}; output {log:?}", marker(&out, "@@EXIT-log"))),
    ));
    let logged = audits("log");
    let probe = format!("syscall={GETPPID} ");
    checks.push(check(
        "seccomp: log: the kernel logs the vCPU thread's forbidden syscall (type=1326, RET_LOG)",
        (!logged.iter().any(|l| {
            l.contains(&probe) && l.contains("code=0x7ffc0000") && l.contains("comm=\"vcpu0\"")
        }))
        .then(|| format!("audit records: {logged:?}")),
    ));
    let others: Vec<&&str> = logged.iter().filter(|l| !l.contains(&probe)).collect();
    checks.push(check(
        "seccomp: log: no other syscall of a whole boot falls outside the lists",
        (!others.is_empty() || marker(&out, "@@DONE-log").is_none())
            .then(|| format!("other audit records: {others:?}")),
    ));
    Ok(checks)
}

const SNAP_GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
insmod /bin/sdei_test.ko events=0x1000000,0x1000001,0x1000002,0x1000003
/bin/mte_loop &
sleep 2
echo "@@READY"
while read -r cmd; do eval "$cmd"; done
"#;

/// L1 side: boot A, make a handler spin on CPU 1, snapshot mid-handler, quit A; check a
/// failed snapshot leaves A running and damaged snapshots are refused; restore into B; check
/// tags, a mismatch fault and SDEI delivery after restore.
const SNAP_L1_SCRIPT: &str = r#"
ctl() { ./refvmm ctl --api-socket "$SOCK" "$@"; }
mkfifo /tmp/in
exec 3<>/tmp/in
SOCK=/tmp/a.sock
( ./refvmm --kernel Image --initrd guest.cpio --cpus 2 --memory 512M --mte --sdei --seccomp enforce \
    --api-socket /tmp/a.sock --cmdline "console=ttyS0 rdinit=/init quiet" < /tmp/in ; echo "@@A-EXIT $?" ) 2>&1 |
while IFS= read -r line; do
  echo "$line"
  case "$line" in
    *@@READY*)
      echo 'echo 0x1000000 > /sys/module/sdei_test/parameters/spin_event; echo 8000 > /sys/module/sdei_test/parameters/spin_ms; echo @@SPIN-$((1+1))' >&3 ;;
    *@@SPIN-2*)
      echo "@@BADSNAP $(ctl snapshot /proc/no-such-dir/snap 2>&1)"
      echo "@@AFTER-BADSNAP $(ctl status 2>&1)"
      echo "@@RAISE-A $(ctl sdei-signal 0x1000000 1)"
      sleep 2
      echo "@@SNAP $(ctl snapshot /tmp/snap 2>&1)"
      echo "@@QUIT $(ctl quit 2>&1)" ;;
  esac
done
# Damaged snapshots must be refused with clear errors.
# A damaged copy: symlinks to every component, then one file replaced by a damaged copy.
damaged() { mkdir "$1"; for f in /tmp/snap/*; do ln -s "$f" "$1/$(basename $f)"; done; rm "$1/$2"; cp "/tmp/snap/$2" "$1/$2"; }
damaged /tmp/bad1 manifest.bin && printf 'X' | dd of=/tmp/bad1/manifest.bin bs=1 seek=0 conv=notrunc 2>/dev/null
try() { key=$1; shift; r=$("$@" 2>&1); echo "$key $r status $?"; }
try @@BAD-MAGIC ./refvmm --restore /tmp/bad1
damaged /tmp/bad2 vcpus.bin && printf 'Z' | dd of=/tmp/bad2/vcpus.bin bs=1 seek=100 conv=notrunc 2>/dev/null
try @@BAD-CRC ./refvmm --restore /tmp/bad2 --seccomp off
damaged /tmp/bad3 gic.bin && head -c 1000 /tmp/snap/gic.bin > /tmp/bad3/gic.bin
try @@BAD-TRUNC ./refvmm --restore /tmp/bad3 --seccomp off
rm -rf /tmp/bad1 /tmp/bad2 /tmp/bad3
SOCK=/tmp/b.sock
phase=0
( REFVMM_LOG=info ./refvmm --restore /tmp/snap --seccomp enforce --api-socket /tmp/b.sock < /tmp/in ; echo "@@B-EXIT $?" ) 2>&1 |
while IFS= read -r line; do
  echo "$line"
  case "$line" in
    *"MTE-LOOP ok"*)
      phase=$((phase+1))
      if [ $phase = 1 ]; then
        # Later deliveries need not spin: the one interrupted by the snapshot is the test.
        echo 'echo 0 > /sys/module/sdei_test/parameters/spin_ms' >&3
      fi
      if [ $phase = 2 ]; then
        echo 'echo @@RESTORED-SAW-OK' >&3
        echo 'kill -USR1 $(pidof mte_loop)' >&3
      fi ;;
    *"MTE-LOOP mismatch"*)
      sleep 8
      echo "@@RAISE-B $(ctl sdei-signal 0x1000000 1) $(ctl sdei-signal 0x1000001 0)"
      echo 'sleep 3; sed "s/^/@@REC /" /proc/sdei_test; poweroff -f' >&3 ;;
  esac
done
"#;

/// Issue 11's scenario: snapshot with MTE tags and a running SDEI handler, restore in a new
/// refvmm.
pub fn snapshot(tb: &Testbed) -> Result<Vec<Check>, Fail> {
    let refvmm = build::refvmm()?;
    let module = crate::kmod::build_sdei_module(tb)?;
    let mte_loop = build::vmm_example("mte_loop")?;
    let work = std::env::temp_dir().join(format!("xtask-snap-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", work.display())))?;
    let cpio = work.join("guest.cpio");
    initramfs(
        tb,
        SNAP_GUEST_INIT,
        &[("sdei_test.ko", &module), ("mte_loop", &mte_loop)],
        &cpio,
    )?;
    let job = Job {
        files: vec![
            ("refvmm".into(), refvmm),
            ("Image".into(), tb.kernel.clone()),
            ("guest.cpio".into(), cpio.clone()),
        ],
        script: SNAP_L1_SCRIPT.into(),
        timeout: Duration::from_secs(1500),
        memory_mib: 3072,
        echo: true,
    };
    let res = l1::run(Some(tb), &job);
    let _ = std::fs::remove_dir_all(&work);
    let out = res?.output;
    save_log("snapshot", &out);
    let m = |name| marker(&out, name).unwrap_or_default().to_string();
    let mut checks = Vec::new();
    let bad = m("@@BADSNAP");
    checks.push(check(
        "snapshot: a failed snapshot is refused and leaves the VM running",
        (!(bad.contains("refused") || bad.contains("error") || bad.contains("Snapshot file"))
            || m("@@AFTER-BADSNAP") != "running")
            .then(|| {
                format!(
                    "bad snapshot answer {bad:?}, status after {:?}",
                    m("@@AFTER-BADSNAP")
                )
            }),
    ));
    let snap = m("@@SNAP");
    checks.push(check(
        "snapshot: taken while an SDEI handler runs (MTE tags included)",
        (!(snap.starts_with("snapshot /tmp/snap") && snap.contains("tags-bytes"))
            || m("@@RAISE-A") != "pending")
            .then(|| format!("snapshot answer {snap:?}, raise {:?}", m("@@RAISE-A"))),
    ));
    checks.push(check(
        "snapshot: the first refvmm exits on request (status 12)",
        (m("@@A-EXIT") != "12").then(|| format!("exit {:?}", m("@@A-EXIT"))),
    ));
    for (name, key, want) in [
        (
            "snapshot: a manifest with a bad magic is refused",
            "@@BAD-MAGIC",
            "bad magic",
        ),
        (
            "snapshot: a corrupted component is refused",
            "@@BAD-CRC",
            "checksum",
        ),
        (
            "snapshot: a truncated component is refused",
            "@@BAD-TRUNC",
            "bytes, the manifest says",
        ),
    ] {
        let v = m(key);
        checks.push(check(
            name,
            (!(v.contains(want) && v.ends_with("status 3"))).then(|| format!("{v:?}")),
        ));
    }
    let after: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("@@A-EXIT"))
        .collect();
    let oks = after.iter().filter(|l| l.contains("MTE-LOOP ok")).count();
    checks.push(check(
        "snapshot: after restore the guest continues and its tags still match",
        (oks < 2 || after.iter().any(|l| l.contains("MTE-LOOP BAD")))
            .then(|| format!("{oks} MTE-LOOP ok lines after restore")),
    ));
    checks.push(check(
        "snapshot: after restore a mismatched tag still faults",
        (!after
            .iter()
            .any(|l| l.contains("MTE-LOOP mismatch faulted")))
        .then(|| "no 'mismatch faulted' after restore".to_string()),
    ));
    let recs: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("@@REC "))
        .collect();
    let delivered = |ev: &str, cpu: &str| {
        recs.iter()
            .filter(|r| r.starts_with(&format!("sdei_test: event={ev} cpu={cpu} ")))
            .count()
    };
    checks.push(check(
        "snapshot: the handler running at snapshot time completes after restore, and new events are delivered",
        (!(m("@@RAISE-B").starts_with("pending pending")
            && delivered("0x1000000", "1") >= 2
            && delivered("0x1000001", "0") >= 1))
            .then(|| format!("raise answers {:?}, records {recs:?}", m("@@RAISE-B"))),
    ));
    checks.push(check(
        "snapshot: the restored guest powers off (refvmm exit 0)",
        (m("@@B-EXIT") != "0").then(|| format!("exit {:?}", m("@@B-EXIT"))),
    ));
    Ok(checks)
}
