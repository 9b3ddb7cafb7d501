//! Issue 14's Linux-side scenario: the vCPU features refvmm offers (PMUv3, SVE, pointer
//! authentication, MTE) are what a Linux guest sees — present when asked for, absent when not —
//! judged from the guest's `/proc/cpuinfo`, its kernel log and its perf devices.

use crate::guest::{check, marker, run_guest, Check, GuestRun};
use crate::setup::Testbed;
use crate::util::Fail;
use std::time::Duration;

const GUEST_INIT: &str = r#"echo "@@FEATURES $(grep -m1 Features /proc/cpuinfo)"
echo "@@PERFDEVS $(ls /sys/bus/event_source/devices | tr '\n' ' ')"
echo "@@SVE-VL $(cat /proc/sys/abi/sve_default_vector_length 2>/dev/null || echo none)"
dmesg | grep -E 'perfevents|SVE|authentication|Memory Tagging' | sed 's/^/@@KLOG /'
echo "@@GUEST-DONE"
poweroff -f
"#;

/// Boots the same guest twice: every feature on, then every feature off. Each run's output is
/// tagged with its name so the checks can tell them apart.
const L1_SCRIPT: &str = r#"
run() {
  name=$1; shift
  ./refvmm --kernel Image --initrd guest.cpio --cpus 1 --memory 256M --seccomp enforce \
      --cmdline "console=ttyS0 rdinit=/init quiet" "$@" 2>&1 | sed "s/^/@@RUN-$name /"
}
run on --pmu --sve --pauth --mte
run off
"#;

/// The lines of run `name` (`on` or `off`), without their run tag.
fn run_output(out: &str, name: &str) -> String {
    let tag = format!("@@RUN-{name} ");
    out.lines()
        .filter_map(|l| l.split_once(&tag).map(|(_, rest)| rest))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Evidence of one feature in one run's output.
struct Seen {
    cpuinfo: bool,
    klog: bool,
}

fn seen(run: &str, cpuinfo_flags: &[&str], klog_needle: &str) -> Seen {
    let flags: Vec<&str> = marker(run, "@@FEATURES")
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let klog = run
        .lines()
        .filter_map(|l| l.split_once("@@KLOG ").map(|(_, r)| r))
        .any(|l| l.contains(klog_needle));
    Seen {
        cpuinfo: cpuinfo_flags.iter().all(|f| flags.contains(f)),
        klog,
    }
}

/// PMU evidence: the armv8 PMU driver's log line and its perf device.
fn pmu_seen(run: &str) -> Seen {
    let devs = marker(run, "@@PERFDEVS").unwrap_or_default();
    Seen {
        cpuinfo: devs
            .split_whitespace()
            .any(|d| d.starts_with("armv8_pmuv3")),
        klog: run
            .lines()
            .filter_map(|l| l.split_once("@@KLOG ").map(|(_, r)| r))
            .any(|l| l.contains("hw perfevents: enabled with armv8_pmuv3")),
    }
}

/// A feature: what it is, refvmm's flag, and how to find it in a run's output.
type Feature = (&'static str, &'static str, fn(&str) -> Seen);

/// Runs the scenario and returns its checks.
pub fn features(tb: &Testbed) -> Result<Vec<Check>, Fail> {
    let out = run_guest(
        tb,
        GuestRun {
            name: "features",
            init: GUEST_INIT,
            files: &[],
            l1_script: L1_SCRIPT,
            timeout: Duration::from_secs(900),
            memory_mib: 2048,
        },
    )?;
    let on = run_output(&out, "on");
    let off = run_output(&out, "off");
    let mut checks = Vec::new();
    for (name, run) in [("on", &on), ("off", &off)] {
        checks.push(check(
            &format!("features: the guest with features {name} boots to /init"),
            (!run.contains("@@GUEST-DONE")).then(|| {
                "the guest never reported (see target/xtask-logs/features.log)".to_string()
            }),
        ));
    }
    let table: [Feature; 4] = [
        (
            "PMUv3 (perf device armv8_pmuv3, kernel log)",
            "--pmu",
            pmu_seen,
        ),
        ("SVE (cpuinfo sve, kernel log)", "--sve", |r| {
            seen(r, &["sve"], "SVE: maximum available vector length")
        }),
        (
            "pointer authentication (cpuinfo paca pacg, kernel log)",
            "--pauth",
            |r| seen(r, &["paca", "pacg"], "Address authentication"),
        ),
        ("MTE (cpuinfo mte, kernel log)", "--mte", |r| {
            seen(r, &["mte"], "Memory Tagging Extension")
        }),
    ];
    for (what, flag, look) in &table {
        let s = look(&on);
        checks.push(check(
            &format!("features: with {flag} the guest sees {what}"),
            (!(s.cpuinfo && s.klog)).then(|| {
                format!(
                    "asked for with {flag}: cpuinfo/devices {}, kernel log {}",
                    s.cpuinfo, s.klog
                )
            }),
        ));
        let s = look(&off);
        checks.push(check(
            &format!("features: without {flag} the guest does not see {what}"),
            (s.cpuinfo || s.klog).then(|| {
                format!(
                    "not asked for, yet cpuinfo/devices {}, kernel log {}",
                    s.cpuinfo, s.klog
                )
            }),
        ));
    }
    if let Some(vl) = marker(&on, "@@SVE-VL") {
        println!("xtask: the SVE guest's default vector length: {vl} bytes");
    }
    Ok(checks)
}
