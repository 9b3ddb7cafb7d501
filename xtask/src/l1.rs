//! Runs a job inside the emulated arm64 machine ("L1"): QEMU with EL2 and MTE, Debian's arm64
//! kernel, a busybox initramfs holding the job's files. On an arm64 host with a usable
//! `/dev/kvm` the same job runs natively instead.

use crate::cpio::Cpio;
use crate::setup::Testbed;
use crate::util::{Counts, Fail};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Printed by the emulated machine's init after the job, with the job's exit status.
const EXIT_MARKER: &str = "@@XTASK-EXIT ";

/// One run in the emulated machine.
pub struct Job {
    /// Files and directories copied into `/work` inside the machine: (name there, host path).
    pub files: Vec<(String, PathBuf)>,
    /// Shell script run by busybox `sh` in `/work`; its exit status is the job's.
    pub script: String,
    /// Wall-clock limit for the whole machine run.
    pub timeout: Duration,
    /// Memory of the emulated machine in MiB.
    pub memory_mib: u32,
    /// Whether to echo the console to our standard output as it arrives.
    pub echo: bool,
}

/// What a job produced.
pub struct JobResult {
    /// The job script's exit status.
    pub exit: i32,
    /// libtest pass/fail counts seen in the output.
    pub counts: Counts,
    /// Everything the job printed.
    pub output: String,
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo 1 > /proc/sys/kernel/printk_ratelimit 2>/dev/null
cd /work
echo "@@XTASK-BEGIN"
sh /work/.job.sh
echo "@@XTASK-EXIT $?"
sync
poweroff -f
"#;

fn add_tree(c: &mut Cpio, dest: &str, src: &Path) -> Result<(), Fail> {
    let meta =
        fs::metadata(src).map_err(|e| Fail::new(format!("cannot read {}: {e}", src.display())))?;
    if meta.is_dir() {
        c.dir(dest);
        let mut entries: Vec<_> = fs::read_dir(src)
            .map_err(|e| Fail::new(format!("cannot read {}: {e}", src.display())))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if fs::symlink_metadata(&p)
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false)
            {
                if let Ok(t) = fs::read_link(&p) {
                    if p.exists() && !t.is_absolute() {
                        c.symlink(&format!("{dest}/{name}"), &t.to_string_lossy());
                    }
                }
                continue;
            }
            add_tree(c, &format!("{dest}/{name}"), &p)?;
        }
    } else {
        use std::os::unix::fs::PermissionsExt;
        let data =
            fs::read(src).map_err(|e| Fail::new(format!("cannot read {}: {e}", src.display())))?;
        c.file(dest, meta.permissions().mode() | 0o444, &data);
    }
    Ok(())
}

fn build_initramfs(tb: &Testbed, job: &Job, out: &Path) -> Result<(), Fail> {
    let mut c = Cpio::default();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "proc", "sys", "dev", "tmp", "run", "work", "mnt",
    ] {
        c.dir(d);
    }
    let bb = fs::read(&tb.busybox).map_err(|e| Fail::new(format!("cannot read busybox: {e}")))?;
    c.file("bin/busybox", 0o755, &bb);
    c.symlink("bin/sh", "busybox");
    c.file("init", 0o755, INIT.as_bytes());
    c.file("work/.job.sh", 0o755, job.script.as_bytes());
    let mut made = std::collections::BTreeSet::new();
    for (name, path) in &job.files {
        let mut parent = String::from("work");
        for part in name
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|x| x.1)
            .unwrap_or(&[])
        {
            parent = format!("{parent}/{part}");
            if made.insert(parent.clone()) {
                c.dir(&parent);
            }
        }
        add_tree(&mut c, &format!("work/{name}"), path)?;
    }
    let mut f = fs::File::create(out)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", out.display())))?;
    c.finish(&mut f)
        .and_then(|_| f.flush())
        .map_err(|e| Fail::new(format!("cannot write {}: {e}", out.display())))
}

/// True when this host can run arm64 KVM code directly.
pub fn native_kvm() -> bool {
    cfg!(target_arch = "aarch64") && Path::new("/dev/kvm").exists()
}

/// Runs the job: natively on an arm64 KVM host, otherwise in the emulated machine.
pub fn run(tb: Option<&Testbed>, job: &Job) -> Result<JobResult, Fail> {
    if native_kvm() {
        return run_native(job);
    }
    let tb = tb.ok_or_else(|| {
        Fail::new("the arm64 test bed is not set up: run `cargo xtask setup` as root")
    })?;
    let dir = std::env::temp_dir().join(format!("xtask-l1-{}", std::process::id()));
    fs::create_dir_all(&dir)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", dir.display())))?;
    let initrd = dir.join("initrd.cpio");
    build_initramfs(tb, job, &initrd)?;
    let mut child = Command::new("qemu-system-aarch64")
        .args([
            "-M",
            "virt,virtualization=on,mte=on,gic-version=3",
            "-cpu",
            "max",
            "-smp",
            "2",
        ])
        .args(["-m", &job.memory_mib.to_string()])
        .args(["-nographic", "-nic", "none", "-audio", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&tb.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyAMA0 rdinit=/init quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Fail::new(format!("cannot start qemu-system-aarch64: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Fail::new("no QEMU stdout"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while r
            .read_until(b'\n', &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let line = String::from_utf8_lossy(&buf).replace('\r', "");
            if tx.send(line).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let deadline = Instant::now() + job.timeout;
    // Everything the machine prints also goes to target/xtask-logs/l1-console.log, so that a
    // run that times out can still be read.
    let log_dir = crate::util::workspace_root().join("target/xtask-logs");
    let _ = fs::create_dir_all(&log_dir);
    let mut console_log = fs::File::create(log_dir.join("l1-console.log")).ok();
    let mut output = String::new();
    let mut counts = Counts::default();
    let mut exit = None;
    let mut in_job = false;
    // The scenario's own markers ("@@NAME ...", not the bulk "@@REC" records) with the time
    // each arrived, so that a run that times out says where the time went.
    let started = Instant::now();
    let mut progress: Vec<(u64, String)> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_dir_all(&dir);
            return Err(Fail::new(format!(
                "the emulated arm64 machine did not finish within {} s (killed); its last \
                 markers, at seconds since start: {}",
                job.timeout.as_secs(),
                last_markers(&progress)
            )));
        }
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(line) => {
                if let Some(f) = console_log.as_mut() {
                    let _ = f.write_all(line.as_bytes());
                }
                if job.echo {
                    print!("{line}");
                    let _ = std::io::stdout().flush();
                }
                if line.starts_with("@@XTASK-BEGIN") {
                    in_job = true;
                    continue;
                }
                if let Some(rc) = line.trim().strip_prefix(EXIT_MARKER.trim_end()) {
                    exit = rc.trim().parse::<i32>().ok();
                    in_job = false;
                    continue;
                }
                if line.starts_with("@@") && !line.starts_with("@@REC") {
                    progress.push((started.elapsed().as_secs(), line.trim_end().to_string()));
                }
                if in_job {
                    counts.add_libtest_line(&line);
                    output.push_str(&line);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.wait();
    let _ = reader.join();
    let _ = fs::remove_dir_all(&dir);
    let exit = exit.ok_or_else(|| {
        Fail::new("the emulated arm64 machine stopped without reporting the job's exit status (kernel panic or crash?)")
    })?;
    Ok(JobResult {
        exit,
        counts,
        output,
    })
}

/// The last few progress markers as "T: LINE; ...", each line cut short.
fn last_markers(progress: &[(u64, String)]) -> String {
    if progress.is_empty() {
        return "none".to_string();
    }
    progress[progress.len().saturating_sub(8)..]
        .iter()
        .map(|(t, l)| format!("{t}: {}", l.chars().take(100).collect::<String>()))
        .collect::<Vec<_>>()
        .join("; ")
}

fn run_native(job: &Job) -> Result<JobResult, Fail> {
    let dir = std::env::temp_dir().join(format!("xtask-native-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", dir.display())))?;
    for (name, src) in &job.files {
        if let Some(parent) = dir.join(name).parent() {
            let _ = fs::create_dir_all(parent);
        }
        let st = Command::new("cp")
            .arg("-a")
            .arg(src)
            .arg(dir.join(name))
            .status();
        if !st.map(|s| s.success()).unwrap_or(false) {
            return Err(Fail::new(format!("cannot copy {}", src.display())));
        }
    }
    fs::write(dir.join(".job.sh"), &job.script)
        .map_err(|e| Fail::new(format!("cannot write job: {e}")))?;
    let out = Command::new("timeout")
        .arg(job.timeout.as_secs().to_string())
        .args(["sh", ".job.sh"])
        .current_dir(&dir)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Fail::new(format!("cannot run the job: {e}")))?;
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    if job.echo {
        print!("{output}");
    }
    let mut counts = Counts::default();
    for l in output.lines() {
        counts.add_libtest_line(l);
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(JobResult {
        exit: out.status.code().unwrap_or(128),
        counts,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::last_markers;

    #[test]
    fn a_timeout_names_the_last_markers_and_when_they_came() {
        assert_eq!(last_markers(&[]), "none");
        let p: Vec<(u64, String)> = (0..10).map(|i| (i * 10, format!("@@STEP{i}"))).collect();
        let s = last_markers(&p);
        assert!(s.starts_with("20: @@STEP2; "), "{s}");
        assert!(s.ends_with("90: @@STEP9"), "{s}");
        let long = [(5, "@@X ".to_string() + &"y".repeat(300))];
        assert_eq!(last_markers(&long).len(), "5: ".len() + 100);
    }
}
