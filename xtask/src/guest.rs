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

/// Keeps a scenario's console output in `target/xtask-logs/<name>.log` for post-mortems.
fn save_log(name: &str, out: &str) {
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
taskset -c 1 sh -c 'echo 4000 > /proc/sdei_test_irqoff' &
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
# Phase 4: hundreds of events; wait until deliveries stop growing.
echo "@@STEP4"
last=-1; same=0
while [ $same -lt 3 ]; do
  sleep 2
  n=$(grep -c '^sdei_test: event=' /proc/sdei_test)
  if [ "$n" = "$last" ]; then same=$((same+1)); else same=0; fi
  last=$n
done
dump 4
echo "@@GUEST-ALIVE $(echo ok)"
poweroff -f
"#;

const SDEI_L1_SCRIPT: &str = r#"
ctl() { ./refvmm ctl --api-socket /tmp/vm.sock "$@"; }
( ./refvmm --kernel Image --initrd guest.cpio --cpus 2 --memory 512M --sdei \
    --api-socket /tmp/vm.sock --cmdline "console=ttyS0 rdinit=/init quiet" ; echo "@@REFVMM-EXIT $?" ) 2>&1 |
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
      echo "@@L1-PENDING $p" ;;
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
