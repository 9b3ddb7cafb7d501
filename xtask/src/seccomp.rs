//! Issue 10's scenario: a syscall outside a thread's list kills refvmm under `enforce` and is
//! logged under `log`.

use crate::guest::{check, marker, run_guest, Check, GuestRun};
use crate::setup::Testbed;
use crate::util::Fail;
use std::time::Duration;

const SECCOMP_GUEST_INIT: &str = r#"echo "@@GUEST-INIT"
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
    let out = run_guest(
        tb,
        GuestRun {
            name: "seccomp",
            init: SECCOMP_GUEST_INIT,
            files: &[],
            l1_script: SECCOMP_L1_SCRIPT,
            timeout: Duration::from_secs(1200),
            memory_mib: 2048,
        },
    )?;
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
