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
if grep -m1 Features /proc/cpuinfo | grep -qw mte; then /bin/mte_check; echo "@@MTE-CHECK $?"; fi
echo "@@GUEST-DONE"
poweroff -f
"#;

/// Boots the same guest with every feature on, then every feature off, then on each guest RAM
/// backing (on the test bed's stock page settings, then hugetlb again with a reserved pool).
/// Each run's output is tagged with its name so the checks can tell them apart.
const L1_SCRIPT: &str = r#"
run() {
  name=$1; shift
  ( ./refvmm --kernel Image --initrd guest.cpio --cpus 1 --memory 256M --seccomp enforce \
      --cmdline "console=ttyS0 rdinit=/init quiet" "$@"; echo "@@STATUS $?" ) 2>&1 |
    sed "s/^/@@RUN-$name /"
}
run on --pmu --sve --pauth --mte
run off
run memfd-mte --mte --memory-backing memfd
run anonymous --memory-backing anonymous
run hugetlb-stock --memory-backing hugetlb
echo 130 > /proc/sys/vm/nr_hugepages
echo "@@HUGETLB-POOL $(cat /proc/sys/vm/nr_hugepages)"
run hugetlb --memory-backing hugetlb
run hugetlb-mte --memory-backing hugetlb --mte
echo 0 > /proc/sys/vm/nr_hugepages
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
    let mte_check = crate::cross::vmm_example("mte_check")?;
    let out = run_guest(
        tb,
        GuestRun {
            name: "features",
            init: GUEST_INIT,
            files: &[("mte_check", &mte_check)],
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
    checks.extend(backings(&out));
    if let Some(vl) = marker(&on, "@@SVE-VL") {
        println!("xtask: the SVE guest's default vector length: {vl} bytes");
    }
    Ok(checks)
}

/// The guest RAM backings: what refvmm says each gets on the test bed's stock settings (THP
/// `always`, shmem `never`, no hugetlb pool), that a guest runs on each (MTE on a memfd), and
/// the refusals: hugetlb without a pool, and (Linux before 6.13) MTE on hugetlb.
fn backings(out: &str) -> Vec<Check> {
    let said = |run: &str| {
        marker(run, "refvmm: guest RAM:")
            .unwrap_or_default()
            .to_string()
    };
    let mut checks = Vec::new();
    let runs = [
        (
            "memfd-mte",
            "--memory-backing memfd --mte",
            "256 MiB of a memfd mapped shared on 4 KiB pages (transparent_hugepage/shmem_enabled is never; advise or always there would give huge pages)",
        ),
        (
            "anonymous",
            "--memory-backing anonymous",
            "256 MiB of private anonymous memory on 2 MiB pages (transparent_hugepage/enabled is always)",
        ),
        (
            "hugetlb",
            "--memory-backing hugetlb with 130 pages reserved",
            "256 MiB of a hugetlb memfd mapped shared on 2 MiB pages (130 free in the 2 MiB hugetlb pool, 128 needed)",
        ),
    ];
    for (name, how, want) in runs {
        let run = run_output(out, name);
        let mte_ok = !name.ends_with("-mte") || marker(&run, "@@MTE-CHECK") == Some("0");
        checks.push(check(
            &format!(
                "features: with {how} refvmm reports the backing and page size, and the guest runs"
            ),
            (!(said(&run).starts_with(want)
                && run.contains("@@GUEST-DONE")
                && mte_ok
                && marker(&run, "@@STATUS") == Some("0")))
            .then(|| {
                format!(
                    "refvmm said {:?}, status {:?}, MTE check {:?} (pool {:?})",
                    said(&run),
                    marker(&run, "@@STATUS"),
                    marker(&run, "@@MTE-CHECK"),
                    marker(out, "@@HUGETLB-POOL")
                )
            }),
        ));
    }
    let refused = [
        (
            "hugetlb-stock",
            "features: --memory-backing hugetlb without a reserved pool is refused before the guest runs, naming the pool",
            "Cannot back guest RAM with hugetlb pages: 0 free in the 2 MiB hugetlb pool, 128 needed: reserve them with /proc/sys/vm/nr_hugepages",
        ),
        (
            "hugetlb-mte",
            "features: --memory-backing hugetlb --mte is refused by this kernel (MTE on hugetlb needs Linux 6.13), naming the rule",
            "Kernel refused PROT_MTE on a hugetlbfs file",
        ),
    ];
    for (name, what, want) in refused {
        let run = run_output(out, name);
        checks.push(check(
            what,
            (!(run.contains(want)
                && marker(&run, "@@STATUS") == Some("3")
                && !run.contains("@@GUEST-DONE")))
            .then(|| format!("run output: {run:?}")),
        ));
    }
    checks
}
