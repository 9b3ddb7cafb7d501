//! Issue 8's scenario: Linux's own SDEI driver and the test module in a 2-vCPU guest.

use crate::guest::{check, marker, run_guest, Check, GuestRun};
use crate::setup::Testbed;
use crate::util::Fail;
use std::time::Duration;

const SDEI_GUEST_INIT: &str = r#"# Kernel messages stay off the console, where they could split the lines read back.
dmesg -n 1
# A dump shows the records since the previous one (and a few before it: a record still being
# written when that one was read is shown now), then the module's totals.
last=0
dump() {
  cat /proc/sdei_test > /tmp/rec
  awk -v p="$1" -v from=$((last - 32)) '$2 ~ /^event=/ { for (i = 3; i <= NF; i++) if ($i ~ /^seq=/ && substr($i, 5) + 0 < from) next } { print "@@REC" p " " $0 }' /tmp/rec
  last=$(sed -n 's/^sdei_test: total records=\([0-9]*\).*/\1/p' /tmp/rec)
}
echo "@@GUEST-SDEI-PROBE $(dmesg | grep -m1 'sdei: SDEIv')"
echo "@@GUEST-CPUS $(nproc)"
insmod /bin/sdei_test.ko events=0x1000000,0x1000001,0x1000002,0x1000003
dmesg | grep 'sdei_test: \(registered\|enabled\)' | sed 's/^/@@GUEST-REG /'
# Phase 1: private events to each vCPU, one shared event.
echo "@@STEP1"
sleep 3
dump 1
# Phase 2: an event for CPU 1 while CPU 1 has interrupts masked.
# The console may need CPU 1 for its interrupts, so nothing is printed while the window is
# open: the VMM side raises the event a few seconds after this line.
echo "@@STEP2"
sleep 1
taskset -c 1 sh -c 'echo 30000 > /proc/sdei_test_irqoff' &
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
# Phases 5-8: CPU 1 goes offline (5, 7) and comes back (6, 8) while the VMM side raises events;
# it answers on the console after each step.
p=5
for round in 1 2; do
  echo 0 > /sys/devices/system/cpu/cpu1/online
  echo "@@STEP5OFF $round online=$(cat /sys/devices/system/cpu/online)"
  read -r ack
  sleep 2
  dump $p
  p=$((p+1))
  echo 1 > /sys/devices/system/cpu/cpu1/online
  echo "@@STEP5ON $round online=$(cat /sys/devices/system/cpu/online)"
  read -r ack
  sleep 2
  dump $p
  p=$((p+1))
done
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
      report_threads $(pidof refvmm)
      echo "@@CTL1 $(ctl sdei-signal 0x1000000 1) $(ctl sdei-signal 0x1000000 0) $(ctl sdei-signal 0x1000002)" ;;
    *@@STEP2*)
      sleep 5
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
    *@@STEP5OFF*)
      a=$(ctl sdei-signal 0x1000000 1); b=$(ctl sdei-signal 0x1000000 0)
      s=""
      for i in 1 2 3 4 5; do s="$s $(ctl sdei-signal 0x1000002)"; sleep 1; done
      echo "@@CTL5OFF $a $b$s"
      echo "go" >&3 ;;
    *@@STEP5ON*)
      sleep 1
      a=$(ctl sdei-signal 0x1000000 1); sleep 1; b=$(ctl sdei-signal 0x1000002)
      echo "@@CTL5ON $a $b"
      echo "go" >&3 ;;
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
    let module = crate::kmod::build_sdei_module(tb)?;
    let out = run_guest(
        tb,
        GuestRun {
            name: "sdei",
            init: SDEI_GUEST_INIT,
            files: &[("sdei_test.ko", &module)],
            l1_script: SDEI_L1_SCRIPT,
            timeout: Duration::from_secs(1500),
            memory_mib: 2048,
        },
    )?;
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
    checks.extend(hotplug_checks(&out, &d));
    checks.push(check(
        "sdei: every refvmm thread runs under a seccomp filter (Seccomp: 2)",
        crate::guest::threads_filtered(&out, &["refvmm", "vcpu0", "vcpu1", "api"]),
    ));
    checks.push(check(
        "sdei: the guest powers off (refvmm exit 0)",
        (marker(&out, "@@REFVMM-EXIT") != Some("0"))
            .then(|| format!("{:?}", marker(&out, "@@REFVMM-EXIT"))),
    ));
    Ok(checks)
}

/// Phases 5-8: CPU 1 offline (5, 7) and online again (6, 8), twice.
fn hotplug_checks(out: &str, d: &[Delivery]) -> Vec<Check> {
    const PRIV_N: u32 = 0x0100_0000;
    let lines = |tag: &str| -> Vec<&str> {
        out.lines()
            .filter_map(|l| l.strip_prefix(tag))
            .map(str::trim)
            .collect()
    };
    let (off, on) = (lines("@@STEP5OFF"), lines("@@STEP5ON"));
    let mut checks = vec![check(
        "sdei hotplug: the guest takes CPU 1 offline and online again, twice",
        (off != ["1 online=0", "2 online=0"] || on != ["1 online=0-1", "2 online=0-1"])
            .then(|| format!("offline steps {off:?}, online steps {on:?}")),
    )];
    let ctl_off = lines("@@CTL5OFF");
    checks.push(check(
        "sdei hotplug: while CPU 1 is off its private event finds nothing registered, CPU 0's and the shared one are accepted",
        (ctl_off.len() != 2
            || ctl_off
                .iter()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    != ["not-registered", "pending", "pending", "pending", "pending", "pending", "pending"]))
        .then(|| format!("answers {ctl_off:?}")),
    ));
    // A dump lists the module's recent records, so one can first show a delivery from an
    // earlier phase (when that phase's line was split on the console): a phase's own
    // deliveries are those numbered from the record count the previous dump reported.
    let records_at = |phase: u32| -> Option<u64> {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("@@REC{phase} sdei_test: total records=")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let newer_than_earlier = |x: &&Delivery| {
        let first = records_at(x.phase - 1).unwrap_or_else(|| {
            d.iter()
                .filter(|y| y.phase < x.phase)
                .map(|y| y.seq + 1)
                .max()
                .unwrap_or(0)
        });
        x.seq >= first
    };
    let off_phase: Vec<&Delivery> = d
        .iter()
        .filter(|x| x.phase == 5 || x.phase == 7)
        .filter(newer_than_earlier)
        .collect();
    let off_shared = off_phase.iter().filter(|x| x.event == 0x0100_0002).count();
    checks.push(check(
        "sdei hotplug: no event reaches CPU 1 while it is offline; events keep reaching CPU 0",
        (off_phase.iter().any(|x| x.cpu == 1)
            || off_shared != 10
            || !off_phase.iter().any(|x| x.event == PRIV_N && x.cpu == 0))
        .then(|| format!("deliveries while CPU 1 was off: {off_phase:?}")),
    ));
    let ctl_on = lines("@@CTL5ON");
    let back: Vec<&Delivery> = d.iter().filter(|x| x.phase == 6 || x.phase == 8).collect();
    checks.push(check(
        "sdei hotplug: once back online, CPU 1 takes its private event again (each round)",
        (ctl_on != ["pending pending", "pending pending"]
            || ![6, 8].iter().all(|p| {
                back.iter()
                    .any(|x| x.phase == *p && x.event == PRIV_N && x.cpu == 1)
            }))
        .then(|| format!("answers {ctl_on:?}, deliveries {back:?}")),
    ));
    checks
}
