//! Issue 20's block scenario. A Linux guest on refvmm with `--disk` loads Debian's own
//! `virtio_blk` and ext4 modules, makes an ext2 file system on a blank image, writes files and
//! `sync`s; refvmm is then SIGKILLed. A second refvmm boots the same image and finds every
//! synced file intact (md5), reads the serial the command line gave, and gets a read-only
//! second disk: writes to it fail in the guest, its bytes read back as on the host, and the
//! host file is unchanged. Around that: a missing image and an image another refvmm holds are
//! refused before the guest runs (exit 3), a snapshot of a VM with a disk is refused, and every
//! refvmm thread, the `blk0` worker included, runs under its seccomp filter.

use crate::guest::{check, marker, threads_filtered, Check, GuestRun};
use crate::pmem::run_guest_with_modules;
use crate::setup::Testbed;
use crate::util::Fail;
use std::time::Duration;

/// The guest modules, in load order (their `depends=` fields), under `kernel/`.
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_mmio",
    "drivers/block/virtio_blk",
    "fs/jbd2/jbd2",
    "fs/mbcache",
    "lib/crc16",
    "crypto/crc32c_generic",
    "fs/ext4/ext4",
];

const GUEST_INIT: &str = r#"for m in virtio_mmio virtio_blk jbd2 mbcache crc16 crc32c_generic ext4; do insmod /bin/$m.ko || echo "@@INSMOD-FAILED $m"; done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
mkdir -p /mnt
sums() { (cd /mnt && md5sum big small | tr -s ' \n' '  '); }
if mount -t ext2 /dev/vda /mnt 2>/dev/null; then
  echo "@@FILES-AFTER $(sums)"
  echo "@@SERIAL $(cat /sys/block/vda/serial 2>&1)"
  echo "@@RO-FLAG $(cat /sys/block/vdb/ro 2>&1)"
  dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null; echo "@@RO-WRITE $?"
  echo "@@RO-READ $(md5sum < /dev/vdb | cut -d' ' -f1)"
  dd if=/dev/urandom of=/mnt/more bs=1M count=2 2>/dev/null && sync && echo 3 > /proc/sys/vm/drop_caches
  echo "@@MORE $(wc -c < /mnt/more)"
  umount /mnt && echo "@@UMOUNT ok"
  poweroff -f
fi
mke2fs /dev/vda >/dev/null 2>&1 || echo "@@MKFS-FAILED"
mount -t ext2 /dev/vda /mnt || { echo "@@MOUNT-FAILED"; poweroff -f; }
dd if=/dev/urandom of=/mnt/big bs=1M count=8 2>/dev/null
echo "refvmm virtio-blk" > /mnt/small
sync
echo "@@FILES-BEFORE $(sums)"
echo "@@SYNCED"
sleep 600
"#;

const L1_SCRIPT: &str = r#"
ctl() { ./refvmm ctl --api-socket /tmp/vm.sock "$@"; }
vm() { ./refvmm --kernel Image --initrd guest.cpio --cpus 2 --memory 256M --seccomp enforce \
    --cmdline "console=ttyS0 rdinit=/init quiet" "$@"; }
dd if=/dev/zero of=/tmp/disk.img bs=1M count=64 2>/dev/null
dd if=/dev/urandom of=/tmp/ro.img bs=1M count=4 2>/dev/null
echo "@@RO-HOST-BEFORE $(md5sum < /tmp/ro.img | cut -d' ' -f1)"
o=$(./refvmm --kernel Image --disk path=/tmp/missing.img 2>&1); rc=$?
echo "@@MISSING $rc $(echo "$o" | grep -o 'no such file')"
( vm --disk path=/tmp/disk.img,serial=refvmm-disk0 --api-socket /tmp/vm.sock; echo "@@REFVMM1-EXIT $?" ) 2>&1 |
while IFS= read -r line; do
  echo "$line"
  case "$line" in
    *@@SYNCED*)
      report_threads $(pidof refvmm)
      echo "@@SNAPSHOT $(ctl snapshot /tmp/snap 2>&1)"
      o=$(./refvmm --kernel Image --disk path=/tmp/disk.img 2>&1); rc=$?
      echo "@@LOCKED $rc $(echo "$o" | grep -o 'in use by another process')"
      kill -9 $(pidof refvmm) ;;
  esac
done
( vm --disk path=/tmp/disk.img,serial=refvmm-disk0 --disk path=/tmp/ro.img,readonly=on; echo "@@REFVMM2-EXIT $?" ) 2>&1
echo "@@RO-HOST-AFTER $(md5sum < /tmp/ro.img | cut -d' ' -f1)"
"#;

/// Runs the scenario and returns its checks.
pub fn blk(tb: &Testbed) -> Result<Vec<Check>, Fail> {
    let out = run_guest_with_modules(
        tb,
        MODULES,
        &[],
        GuestRun {
            name: "blk",
            init: GUEST_INIT,
            files: &[],
            l1_script: L1_SCRIPT,
            timeout: Duration::from_secs(900),
            memory_mib: 1024,
        },
    )?;
    let m = |name: &str| marker(&out, name).unwrap_or_default().to_string();
    let mut checks = Vec::new();
    let before = m("@@FILES-BEFORE");
    let fields = before.split_whitespace().count();
    checks.push(check(
        "blk: the guest makes an ext2 file system on /dev/vda (Debian's virtio_blk and ext4) and writes 8 MiB",
        (fields != 4
            || out.contains("@@INSMOD-FAILED")
            || out.contains("@@MKFS-FAILED")
            || out.contains("@@MOUNT-FAILED"))
        .then(|| format!("files {before:?}; see target/xtask-logs/blk.log")),
    ));
    checks.push(check(
        "blk: refvmm is SIGKILLed after the guest's sync",
        (m("@@REFVMM1-EXIT") != "137")
            .then(|| format!("first refvmm exit {:?}", m("@@REFVMM1-EXIT"))),
    ));
    let after = m("@@FILES-AFTER");
    checks.push(check(
        "blk: a second boot finds every synced file intact (md5 of each)",
        (fields != 4 || after != before).then(|| format!("before {before:?}, after {after:?}")),
    ));
    checks.push(check(
        "blk: the guest reads the serial given on the command line",
        (m("@@SERIAL") != "refvmm-disk0").then(|| format!("serial {:?}", m("@@SERIAL"))),
    ));
    let host_before = m("@@RO-HOST-BEFORE");
    checks.push(check(
        "blk: a readonly=on disk is read-only in the guest, writes to it fail, its bytes read as on the host, and the host file is unchanged",
        (m("@@RO-FLAG") != "1"
            || m("@@RO-WRITE") == "0"
            || m("@@RO-WRITE").is_empty()
            || m("@@RO-READ") != host_before
            || m("@@RO-HOST-AFTER") != host_before
            || host_before.len() != 32)
            .then(|| {
                format!(
                    "ro flag {:?}, write status {:?}, guest md5 {:?}, host md5 {host_before:?} then {:?}",
                    m("@@RO-FLAG"),
                    m("@@RO-WRITE"),
                    m("@@RO-READ"),
                    m("@@RO-HOST-AFTER")
                )
            }),
    ));
    checks.push(check(
        "blk: after the restart the guest writes more, syncs, reads it back and unmounts cleanly",
        (m("@@MORE") != "2097152" || m("@@UMOUNT") != "ok")
            .then(|| format!("more {:?}, umount {:?}", m("@@MORE"), m("@@UMOUNT"))),
    ));
    checks.push(check(
        "blk: a missing image is refused before the guest runs (exit 3, 'no such file')",
        (m("@@MISSING") != "3 no such file").then(|| format!("{:?}", m("@@MISSING"))),
    ));
    checks.push(check(
        "blk: an image another refvmm has open is refused (exit 3, 'in use by another process')",
        (m("@@LOCKED") != "3 in use by another process").then(|| format!("{:?}", m("@@LOCKED"))),
    ));
    let snap = m("@@SNAPSHOT");
    checks.push(check(
        "blk: a snapshot of a VM with virtio-blk is refused",
        (!snap.contains("virtio-blk devices are not supported yet"))
            .then(|| format!("snapshot answer {snap:?}")),
    ));
    checks.push(check(
        "blk: every refvmm thread, the blk0 worker included, runs under a seccomp filter (Seccomp: 2)",
        threads_filtered(&out, &["refvmm", "vcpu0", "vcpu1", "blk0"]),
    ));
    checks.push(check(
        "blk: the second guest powers off (refvmm exit 0)",
        (m("@@REFVMM2-EXIT") != "0").then(|| format!("exit {:?}", m("@@REFVMM2-EXIT"))),
    ));
    Ok(checks)
}
