//! Issue 9's scenario: virtio-pmem in a Linux guest on refvmm. The guest loads Debian's own
//! `virtio_pmem`/`nd_pmem` modules, writes a pattern to each `/dev/pmemN` and flushes it
//! (`dd conv=fsync`: the block layer's flush becomes a virtio-pmem flush request). The L1 side
//! then checks the backing files: after a guest power-off, and after refvmm is killed with
//! SIGKILL right after the flush; the same with `--mte`, a tmpfs file and a memfd (read through
//! `/proc/<pid>/fd` while refvmm runs); whether the guest may use tagged memory on pmem; and
//! that bad specifications and a backing an MTE guest cannot use are refused up front.

use crate::cross;
use crate::guest::{check, marker, refused_with_status_3, run_guest, Check, GuestRun};
use crate::setup::Testbed;
use crate::util::Fail;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The guest modules, in load order (their `depends=` fields), under `kernel/`.
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_mmio",
    "drivers/nvdimm/libnvdimm",
    "drivers/nvdimm/nd_virtio",
    "drivers/nvdimm/virtio_pmem",
    "drivers/nvdimm/nd_btt",
    "drivers/nvdimm/nd_pmem",
];

const GUEST_INIT: &str = r#"for m in virtio_mmio libnvdimm nd_virtio virtio_pmem nd_btt nd_pmem; do insmod /bin/$m.ko || echo "@@INSMOD-FAILED $m"; done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/pmem0 ] && break; sleep 1; done
tag=$(sed -n 's/.*pmemtag=\([^ ]*\).*/\1/p' /proc/cmdline)
mode=$(sed -n 's/.*pmemmode=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "@@PMEM-DEVS $(ls /dev | grep pmem | tr '\n' ' ')"
for d in /dev/pmem*; do
  n=${d#/dev/pmem}
  if printf "PMEM-PATTERN-$tag-$n" | dd of=$d bs=4096 conv=sync,fsync 2>/tmp/dd.err; then
    echo "@@FLUSHED $n"
  else
    echo "@@FLUSH-FAILED-$tag $n $(tail -n 1 /tmp/dd.err)"
  fi
done
grep -qw mte /proc/cpuinfo && /bin/pmem_mte_probe /dev/pmem0
echo "@@GUEST-DONE"
[ "$mode" = hang ] && sleep 1000
poweroff -f
"#;

/// L1 side. Each run's console goes through a reader that reacts to the guest's markers.
const L1_SCRIPT: &str = r#"
boot() {  # boot <tag> <mode> <refvmm options...>
  tag=$1; mode=$2; shift 2
  ( REFVMM_LOG=debug ./refvmm --kernel Image --initrd guest.cpio --cpus 1 --memory 512M \
      --seccomp enforce --cmdline "console=ttyS0 rdinit=/init quiet pmemtag=$tag pmemmode=$mode" "$@" ;
    echo "@@EXIT-$tag $?" ) 2>&1 |
  while IFS= read -r line; do
    case "$line" in
      *"unbacked MMIO"*|*"ignored exit"*) continue ;;
    esac
    echo "$line"
    case "$line" in
      *@@GUEST-DONE*)
        pid=$(pidof refvmm)
        for fd in /proc/$pid/fd/*; do
          case "$(readlink $fd)" in
            *refvmm-pmem*) echo "@@MEMFD-$tag $(head -c 40 $fd | tr -d '\0')" ;;
          esac
        done
        report_threads $pid
        if [ "$mode" = hang ]; then kill -9 $pid; echo "@@KILLED-$tag"; fi ;;
    esac
  done
}
head_of() { head -c 40 "$1" | tr -d '\0'; }
dd if=/dev/zero of=/work/pm-off.img bs=1M count=0 seek=16 2>/dev/null
dd if=/dev/zero of=/work/pm-kill.img bs=1M count=0 seek=16 2>/dev/null
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
dd if=/dev/zero of=/dev/shm/pm-mte.img bs=1M count=0 seek=16 2>/dev/null
echo "@@FS-WORK $(stat -f -c %T /work)"
boot off poweroff --pmem file=/work/pm-off.img
echo "@@FILE-off $(head_of /work/pm-off.img)"
boot kill hang --pmem file=/work/pm-kill.img
echo "@@FILE-kill $(head_of /work/pm-kill.img)"
boot mte hang --mte --pmem file=/dev/shm/pm-mte.img --pmem memfd,size=8M
echo "@@FILE-mte $(head_of /dev/shm/pm-mte.img)"
dd if=/dev/zero of=/work/pm-ro.img bs=1M count=0 seek=16 2>/dev/null
echo "@@RO-BEFORE $(md5sum < /work/pm-ro.img)"
boot ro poweroff --pmem file=/work/pm-ro.img,readonly=on
echo "@@RO-AFTER $(md5sum < /work/pm-ro.img)"
mkdir -p /mnt/ramfs && mount -t ramfs ramfs /mnt/ramfs
dd if=/dev/zero of=/mnt/ramfs/pm.img bs=1M count=0 seek=16 2>/dev/null
try() { key=$1; shift; r=$("$@" 2>&1); st=$?; r=$(echo "$r" | grep -v "^refvmm: guest RAM: "); echo "$key $r status $st"; }
try @@MTE-RAMFS ./refvmm --kernel Image --mte --pmem file=/mnt/ramfs/pm.img
try @@BAD-MISSING ./refvmm --kernel Image --pmem file=/work/none.img
try @@BAD-UNALIGNED ./refvmm --kernel Image --pmem memfd,size=3M
dd if=/dev/zero of=/work/small.img bs=1M count=0 seek=2 2>/dev/null
try @@BAD-SMALL ./refvmm --kernel Image --pmem file=/work/small.img,size=4M
"#;

/// Decompresses the kernel module `rel` (under `kernel/`, without `.ko.xz`) of the
/// test bed's kernel into `out_dir`; returns its path.
fn decompress_module(tb: &Testbed, rel: &str, out_dir: &Path) -> Result<PathBuf, Fail> {
    let modules = tb
        .kernel_root
        .join("lib/modules")
        .join(&tb.kernel_version)
        .join("kernel");
    let src = modules.join(format!("{rel}.ko.xz"));
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let dst = out_dir.join(format!("{name}.ko"));
    let out = Command::new("xz")
        .arg("-dc")
        .arg(&src)
        .output()
        .map_err(|e| Fail::new(format!("cannot run xz ({e}); install xz-utils")))?;
    if !out.status.success() {
        return Err(Fail::new(format!(
            "xz could not decompress {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::write(&dst, out.stdout)
        .map_err(|e| Fail::new(format!("cannot write {}: {e}", dst.display())))?;
    Ok(dst)
}

/// [`run_guest`] with the test bed kernel's `modules` (paths under `kernel/`, without
/// `.ko.xz`, loaded by the guest from `/bin/<name>.ko`) and `extra` files in the guest's `/bin`;
/// `run.files` is replaced by them.
pub(crate) fn run_guest_with_modules(
    tb: &Testbed,
    modules: &[&str],
    extra: &[(&str, &Path)],
    run: GuestRun<'_>,
) -> Result<String, Fail> {
    let work =
        std::env::temp_dir().join(format!("xtask-{}-modules-{}", run.name, std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", work.display())))?;
    let result = (|| {
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for m in modules {
            let p = decompress_module(tb, m, &work)?;
            let name = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, p));
        }
        let mut refs: Vec<(&str, &Path)> = files
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_path()))
            .collect();
        refs.extend_from_slice(extra);
        run_guest(
            tb,
            GuestRun {
                files: &refs,
                ..run
            },
        )
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Runs the scenario and returns its checks.
pub fn pmem(tb: &Testbed) -> Result<Vec<Check>, Fail> {
    let probe = cross::vmm_example("pmem_mte_probe")?;
    let out = run_guest_with_modules(
        tb,
        MODULES,
        &[("pmem_mte_probe", &probe)],
        GuestRun {
            name: "pmem",
            init: GUEST_INIT,
            files: &[],
            l1_script: L1_SCRIPT,
            timeout: Duration::from_secs(900),
            memory_mib: 2048,
        },
    )?;
    let m = |name: &str| marker(&out, name).unwrap_or_default().to_string();
    let mut checks = Vec::new();
    let devs = m("@@PMEM-DEVS");
    checks.push(check(
        "pmem: the guest sees /dev/pmem0 (Debian's virtio_pmem and nd_pmem)",
        (!devs.split_whitespace().any(|d| d == "pmem0") || out.contains("@@INSMOD-FAILED"))
            .then(|| format!("devices {devs:?}; see target/xtask-logs/pmem.log")),
    ));
    let flushes = out
        .lines()
        .filter(|l| l.contains("virtio-pmem: flush") && l.contains("done"))
        .count();
    checks.push(check(
        "pmem: the guest's fsync reaches refvmm as virtio-pmem flush requests",
        (flushes < 4).then(|| format!("{flushes} flushes logged")),
    ));
    for (name, key, want, exit) in [
        (
            "pmem: after the guest powers off, the backing file holds the flushed pattern",
            "@@FILE-off",
            "PMEM-PATTERN-off-0",
            Some("0"),
        ),
        (
            "pmem: after refvmm is killed (SIGKILL) right after the flush, the file holds the pattern",
            "@@FILE-kill",
            "PMEM-PATTERN-kill-0",
            None,
        ),
        (
            "pmem: with --mte, a tmpfs-file pmem holds the flushed pattern after SIGKILL",
            "@@FILE-mte",
            "PMEM-PATTERN-mte-0",
            None,
        ),
        (
            "pmem: with --mte, a memfd pmem holds the pattern (read through /proc/<pid>/fd)",
            "@@MEMFD-mte",
            "PMEM-PATTERN-mte-1",
            None,
        ),
    ] {
        let v = m(key);
        let tag = key.rsplit('-').next().unwrap_or_default();
        let status = m(&format!("@@EXIT-{tag}"));
        let bad_exit = exit.is_some_and(|e| e != status);
        checks.push(check(
            name,
            (v != want || bad_exit)
                .then(|| format!("{key} = {v:?}, refvmm exit {status:?}, expected {want:?}")),
        ));
    }
    let (ro_failed, before, after) = (m("@@FLUSH-FAILED-ro"), m("@@RO-BEFORE"), m("@@RO-AFTER"));
    let dropped = out
        .lines()
        .filter(|l| l.contains("a write to read-only memory at") && l.contains("was dropped"))
        .count();
    checks.push(check(
        "pmem: on a read-only pmem, the guest's dd conv=fsync fails with an I/O error, the file is unchanged, the VM runs on",
        (!ro_failed.starts_with("0 ")
            || !ro_failed.contains("Input/output error")
            || before.is_empty()
            || before != after
            || m("@@EXIT-ro") != "0"
            || dropped == 0
            || out.lines().any(|l| l.starts_with("@@FLUSH-FAILED-") && !l.starts_with("@@FLUSH-FAILED-ro")))
        .then(|| {
            format!(
                "dd {ro_failed:?}, file md5 before {before:?} after {after:?}, exit {:?}, {dropped} dropped-write lines",
                m("@@EXIT-ro")
            )
        }),
    ));
    checks.push(check(
        "pmem: refvmm threads run under seccomp filters with pmem devices (Seccomp: 2)",
        crate::guest::threads_filtered(&out, &["refvmm", "vcpu0"]),
    ));
    let probe_mmap = m("PMEM-MTE mmap");
    let probe_plain = out.contains("PMEM-MTE plain mmap ok");
    checks.push(check(
        "pmem: the guest kernel refuses PROT_MTE on a pmem mapping (documented), plain mapping works",
        (!probe_plain || !probe_mmap.starts_with("refused") || !out.contains("PMEM-MTE mprotect refused"))
            .then(|| format!("mmap {probe_mmap:?}, plain {probe_plain}")),
    ));
    checks.extend(refused_with_status_3(
        &out,
        &[
            (
                "pmem: with --mte, a backing that cannot hold tags (ramfs) is refused up front",
                "@@MTE-RAMFS",
                "cannot hold MTE tags",
            ),
            (
                "pmem: a missing file is refused",
                "@@BAD-MISSING",
                "no such file",
            ),
            (
                "pmem: a size that is not a multiple of 2 MiB is refused",
                "@@BAD-UNALIGNED",
                "multiple of 2 MiB",
            ),
            (
                "pmem: a file smaller than the size asked for is refused",
                "@@BAD-SMALL",
                "fewer than",
            ),
        ],
    ));
    println!(
        "xtask: pmem: /work in the emulated machine is {}",
        m("@@FS-WORK")
    );
    Ok(checks)
}
