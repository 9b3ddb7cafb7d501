//! Issue 11's scenario: snapshot and restore of a Linux guest with MTE tags and SDEI state.

use crate::cross;
use crate::guest::{check, marker, refused_with_status_3, run_guest, Check, GuestRun};
use crate::setup::Testbed;
use crate::util::Fail;
use std::time::Duration;

const SNAP_GUEST_INIT: &str = r#"# Kernel messages stay off the console, where they could split the lines read back.
dmesg -n 1
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
    --memory-backing @A_BACKING@ --api-socket /tmp/a.sock --cmdline "console=ttyS0 rdinit=/init quiet" < /tmp/in ; echo "@@A-EXIT $?" ) 2>&1 |
while IFS= read -r line; do
  echo "$line"
  case "$line" in
    *@@READY*)
      echo 'echo 0x1000000 > /sys/module/sdei_test/parameters/spin_event; echo @SPIN_MS@ > /sys/module/sdei_test/parameters/spin_ms; echo @@SPIN-$((1+1))' >&3 ;;
    *@@SPIN-2*)
      echo "@@BADSNAP $(ctl snapshot /proc/no-such-dir/snap 2>&1)"
      # Destinations that exist, or where nothing can be created: refused, nothing removed,
      # refvmm (under --seccomp enforce) and its guest keep running.
      mkdir -p /tmp/exists /tmp/full/sub /tmp/ro
      echo earlier > /tmp/full/manifest.bin; echo ram > /tmp/full/sub/memory.bin
      mount -t tmpfs -o ro tmpfs /tmp/ro
      echo "@@EXISTING-DIR $(ctl snapshot /tmp/exists 2>&1)"
      echo "@@NONEMPTY-DIR $(ctl snapshot /tmp/full 2>&1)"
      echo "@@READONLY-DIR $(ctl snapshot /tmp/ro/snap 2>&1)"
      echo "@@TREE-AFTER $(find /tmp/exists /tmp/full /tmp/ro | sort | tr '\n' ' ')$(cat /tmp/full/manifest.bin /tmp/full/sub/memory.bin | tr '\n' ' ')"
      echo "@@AFTER-BADSNAP $(ctl status 2>&1)"
      echo "@@RAISE-A $(ctl sdei-signal 0x1000000 1)"
      sleep 2
      echo "@@SNAP $(ctl snapshot /tmp/snap 2>&1)"
      echo "@@QUIT $(ctl quit 2>&1)" ;;
  esac
done
# Damaged snapshots must be refused with clear errors.
# A damaged copy: hard links to every component (symbolic links are refused), then one file
# replaced by a damaged copy.
damaged() { mkdir "$1"; for f in /tmp/snap/*; do ln "$f" "$1/$(basename $f)"; done; rm "$1/$2"; cp "/tmp/snap/$2" "$1/$2"; }
damaged /tmp/bad1 manifest.bin && printf 'X' | dd of=/tmp/bad1/manifest.bin bs=1 seek=0 conv=notrunc 2>/dev/null
try() { key=$1; shift; r=$("$@" 2>&1); st=$?; r=$(echo "$r" | grep -v "^refvmm: guest RAM: "); echo "$key $r status $st"; }
try @@BAD-MAGIC ./refvmm --restore /tmp/bad1
damaged /tmp/bad2 vcpus.bin && printf 'Z' | dd of=/tmp/bad2/vcpus.bin bs=1 seek=100 conv=notrunc 2>/dev/null
try @@BAD-CRC ./refvmm --restore /tmp/bad2 --seccomp off
damaged /tmp/bad3 gic.bin && head -c 1000 /tmp/snap/gic.bin > /tmp/bad3/gic.bin
try @@BAD-TRUNC ./refvmm --restore /tmp/bad3 --seccomp off
mkdir /tmp/fifo && mkfifo /tmp/fifo/manifest.bin
try @@FIFO-MANIFEST timeout 20 ./refvmm --restore /tmp/fifo --seccomp off
mkdir /tmp/link && for f in /tmp/snap/*; do ln -s "$f" "/tmp/link/$(basename $f)"; done
try @@SYMLINK-MANIFEST ./refvmm --restore /tmp/link --seccomp off
rm -rf /tmp/bad1 /tmp/bad2 /tmp/bad3 /tmp/fifo /tmp/link
SOCK=/tmp/b.sock
phase=0
( REFVMM_LOG=info ./refvmm --restore /tmp/snap --seccomp enforce --api-socket /tmp/b.sock < /tmp/in ; echo "@@B-EXIT $?" ) 2>&1 |
while IFS= read -r line; do
  echo "$line"
  case "$line" in
    *"MTE-LOOP ok"*)
      phase=$((phase+1))
      if [ $phase = 1 ]; then
        report_threads $(pidof refvmm)
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
      echo 'sleep 3; sed "s/^/@@REC /" /proc/sdei_test; echo "@@STA""LLS $(dmesg | grep -c -i -E "lockup|stall")"; poweroff -f' >&3 ;;
  esac
done
"#;

/// When the snapshot is taken, relative to the SDEI event raised just before it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// The handler has completed (`cargo xtask scenario snapshot`).
    AfterHandler,
    /// The handler is still busy-waiting on vCPU 1 (`cargo xtask scenario snapshot-in-handler`).
    InHandler,
}

/// Issue 11's scenario: snapshot with MTE tags and SDEI state, restore in a new refvmm.
pub fn snapshot(tb: &Testbed, moment: Moment) -> Result<Vec<Check>, Fail> {
    let in_handler = moment == Moment::InHandler;
    // After the handler: A's RAM on a memfd (MTE on shared memory), restored into B's default
    // backing (anonymous memory on the test bed); in the handler: the default both times.
    let a_backing = if in_handler { "auto" } else { "memfd" };
    let script = SNAP_L1_SCRIPT
        .replace("@SPIN_MS@", if in_handler { "6000" } else { "0" })
        .replace("@A_BACKING@", a_backing);
    let module = crate::kmod::build_sdei_module(tb)?;
    let mte_loop = cross::vmm_example("mte_loop")?;
    let out = run_guest(
        tb,
        GuestRun {
            name: if in_handler {
                "snapshot-in-handler"
            } else {
                "snapshot"
            },
            init: SNAP_GUEST_INIT,
            files: &[("sdei_test.ko", &module), ("mte_loop", &mte_loop)],
            l1_script: &script,
            timeout: Duration::from_secs(1500),
            memory_mib: 3072,
        },
    )?;
    let m = |name| marker(&out, name).unwrap_or_default().to_string();
    let mut checks = Vec::new();
    let said: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("refvmm: guest RAM: "))
        .collect();
    let a_want = if in_handler {
        "512 MiB of private anonymous memory"
    } else {
        "512 MiB of a memfd mapped shared"
    };
    checks.push(check(
        &format!(
            "snapshot: A runs with --memory-backing {a_backing}, B restores onto the default backing"
        ),
        (!(said.len() == 2
            && said[0].starts_with(a_want)
            && said[1].starts_with("512 MiB of private anonymous memory")))
        .then(|| format!("refvmm said {said:?}")),
    ));
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
    for (name, key, want) in [
        (
            "snapshot: into an existing empty directory is refused",
            "@@EXISTING-DIR",
            "already exists",
        ),
        (
            "snapshot: into an existing non-empty directory is refused",
            "@@NONEMPTY-DIR",
            "already exists",
        ),
        (
            "snapshot: into a read-only file system is refused",
            "@@READONLY-DIR",
            "Read-only file system",
        ),
    ] {
        let v = m(key);
        checks.push(check(
            name,
            (!(v.contains("refvmm refused:") && v.contains(want))).then(|| format!("{v:?}")),
        ));
    }
    let want_tree = "/tmp/exists /tmp/full /tmp/full/manifest.bin /tmp/full/sub \
                     /tmp/full/sub/memory.bin /tmp/ro earlier ram";
    checks.push(check(
        "snapshot: refused snapshots leave the existing trees exactly as they were",
        (m("@@TREE-AFTER") != want_tree).then(|| format!("{:?}", m("@@TREE-AFTER"))),
    ));
    checks.extend(refused_with_status_3(
        &out,
        &[
            (
                "snapshot: a FIFO manifest is refused at once",
                "@@FIFO-MANIFEST",
                "is a FIFO, not a regular file",
            ),
            (
                "snapshot: a manifest behind a symbolic link is refused",
                "@@SYMLINK-MANIFEST",
                "is a symbolic link, not a regular file",
            ),
        ],
    ));
    let snap = m("@@SNAP");
    checks.push(check(
        if in_handler {
            "snapshot: taken while an SDEI handler runs (MTE tags included)"
        } else {
            "snapshot: taken after an SDEI delivery, handlers registered (MTE tags included)"
        },
        (!(snap.starts_with("snapshot /tmp/snap") && snap.contains("tags-bytes"))
            || m("@@RAISE-A") != "pending")
            .then(|| format!("snapshot answer {snap:?}, raise {:?}", m("@@RAISE-A"))),
    ));
    checks.push(check(
        "snapshot: the first refvmm exits on request (status 12)",
        (m("@@A-EXIT") != "12").then(|| format!("exit {:?}", m("@@A-EXIT"))),
    ));
    checks.extend(refused_with_status_3(
        &out,
        &[
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
        ],
    ));
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
        if in_handler {
            "snapshot: the handler running at snapshot time completes after restore, and new events are delivered"
        } else {
            "snapshot: SDEI events raised after restore are delivered to the registered handlers"
        },
        (!(m("@@RAISE-B").starts_with("pending pending")
            && delivered("0x1000000", "1") >= 2
            && delivered("0x1000001", "0") >= 1))
            .then(|| format!("raise answers {:?}, records {recs:?}", m("@@RAISE-B"))),
    ));
    checks.push(check(
        "snapshot: every thread of the restored refvmm runs under a seccomp filter (Seccomp: 2)",
        crate::guest::threads_filtered(&out, &["refvmm", "vcpu0", "vcpu1"]),
    ));
    checks.push(check(
        "snapshot: the guest reports no lockup or RCU stall across the snapshot",
        (m("@@STALLS") != "0").then(|| {
            format!(
                "{:?} kernel log lines name a lockup or stall",
                m("@@STALLS")
            )
        }),
    ));
    checks.push(check(
        "snapshot: the restored guest powers off (refvmm exit 0)",
        (m("@@B-EXIT") != "0").then(|| format!("exit {:?}", m("@@B-EXIT"))),
    ));
    Ok(checks)
}
