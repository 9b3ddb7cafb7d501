//! Issue 20's entropy scenario: a Linux guest on refvmm with `--rng` loads Debian's own
//! `virtio_mmio` and `virtio-rng` modules and reads `/dev/hwrng`; refvmm runs under its seccomp
//! filters, refuses a snapshot of the VM (not supported yet) and exits 0 when the guest powers
//! off.

use crate::guest::{check, marker, threads_filtered, Check, GuestRun};
use crate::pmem::run_guest_with_modules;
use crate::setup::Testbed;
use crate::util::Fail;
use std::time::Duration;

/// The guest modules, in load order, under `kernel/`.
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_mmio",
    "drivers/char/hw_random/virtio-rng",
];

const GUEST_INIT: &str = r#"for m in virtio_mmio virtio-rng; do insmod /bin/$m.ko || echo "@@INSMOD-FAILED $m"; done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -c /dev/hwrng ] && break; sleep 1; done
echo "@@RNG-CURRENT $(cat /sys/class/misc/hw_random/rng_current 2>&1)"
sleep 2
a=$(dd if=/dev/hwrng bs=4096 count=16 2>/dev/null | md5sum | cut -d' ' -f1)
n=$(dd if=/dev/hwrng bs=4096 count=16 2>/dev/null | wc -c)
b=$(dd if=/dev/hwrng bs=4096 count=16 2>/dev/null | md5sum | cut -d' ' -f1)
echo "@@RNG-READ $a $b $n"
poweroff -f
"#;

const L1_SCRIPT: &str = r#"
ctl() { ./refvmm ctl --api-socket /tmp/vm.sock "$@"; }
( ./refvmm --kernel Image --initrd guest.cpio --cpus 1 --memory 256M --rng --seccomp enforce \
    --api-socket /tmp/vm.sock --cmdline "console=ttyS0 rdinit=/init quiet" ; echo "@@REFVMM-EXIT $?" ) 2>&1 |
while IFS= read -r line; do
  echo "$line"
  case "$line" in
    *@@RNG-CURRENT*)
      report_threads $(pidof refvmm)
      echo "@@SNAPSHOT $(ctl snapshot /tmp/snap 2>&1)" ;;
  esac
done
"#;

/// md5 of 64 KiB of zeros: what a device that wrote nothing would give.
const ZEROS_MD5: &str = "fcd6bcb56c1689fcef28b57c22475bad";

/// Runs the scenario and returns its checks.
pub fn rng(tb: &Testbed) -> Result<Vec<Check>, Fail> {
    let out = run_guest_with_modules(
        tb,
        MODULES,
        &[],
        GuestRun {
            name: "rng",
            init: GUEST_INIT,
            files: &[],
            l1_script: L1_SCRIPT,
            timeout: Duration::from_secs(600),
            memory_mib: 1024,
        },
    )?;
    let m = |name: &str| marker(&out, name).unwrap_or_default().to_string();
    let mut checks = Vec::new();
    let current = m("@@RNG-CURRENT");
    checks.push(check(
        "rng: the guest's hardware RNG is virtio_rng (Debian's module on refvmm's device)",
        (!current.starts_with("virtio_rng") || out.contains("@@INSMOD-FAILED"))
            .then(|| format!("rng_current {current:?}; see target/xtask-logs/rng.log")),
    ));
    let read = m("@@RNG-READ");
    let f: Vec<&str> = read.split_whitespace().collect();
    checks.push(check(
        "rng: /dev/hwrng gives 64 KiB per read, different each time and not zeros",
        (!(f.len() == 3 && f[2] == "65536" && f[0] != f[1] && !f[..2].contains(&ZEROS_MD5)))
            .then(|| format!("reads: {read:?}")),
    ));
    let snap = m("@@SNAPSHOT");
    checks.push(check(
        "rng: a snapshot of a VM with virtio-rng is refused, and the guest keeps running",
        (!snap.contains("virtio-rng device are not supported yet") || f.len() != 3)
            .then(|| format!("snapshot answer {snap:?}")),
    ));
    checks.push(check(
        "rng: every refvmm thread runs under a seccomp filter (Seccomp: 2)",
        threads_filtered(&out, &["refvmm", "vcpu0"]),
    ));
    checks.push(check(
        "rng: the guest powers off (refvmm exit 0)",
        (m("@@REFVMM-EXIT") != "0").then(|| format!("exit {:?}", m("@@REFVMM-EXIT"))),
    ));
    Ok(checks)
}
