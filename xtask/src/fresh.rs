//! `cargo xtask fresh-check`: the README's two commands in a fresh Debian 12 root.
//!
//! A machine that has run the set-up before keeps every package it installed, so a green run
//! there can hide a package the set-up forgot. This command builds a minimal Debian 12 root
//! with `debootstrap` from the host's configured Debian mirror, installs nothing there but a
//! Rust toolchain from Debian's packages (`rustc-web`, `cargo-web`) and the host's extra trust
//! roots, copies the working tree in (without build output), and runs `cargo xtask boot` and
//! then `cargo xtask test` in it through `chroot`, with `/proc`, `/sys` and `/dev` bound, as
//! root with `CI=true`. It prints each command's exit status, duration and closing
//! `N passed, N failed` line, and fails if either failed. The root is removed afterwards
//! (`--keep` leaves it for a look); the `.deb`s debootstrap fetched are kept in the cache.
//! Slow (about half an hour on two cores) and never part of `test`.

use crate::setup::cache_dir;
use crate::util::{cmd_output, cmd_status, workspace_root, Fail};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const SUITE: &str = "bookworm";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY: &str = "http://deb.debian.org/debian-security";
/// Fresh roots are `<ROOT_PREFIX><pid of the fresh-check that made it>`.
const ROOT_PREFIX: &str = "/var/tmp/refvmm-fresh-root-";
/// Where the checkout goes inside the root.
const CHECKOUT: &str = "/work/checkout";
/// The extra trust roots of these machines (an egress proxy's), copied into the root.
const LOCAL_CAS: &str = "/usr/local/share/ca-certificates";

/// What one of the two commands did.
pub struct Step {
    /// `cargo xtask boot` or `cargo xtask test`.
    pub command: &'static str,
    /// Its exit status (-1 when killed by a signal).
    pub status: i32,
    /// Wall-clock seconds.
    pub seconds: u64,
    /// The last `N passed, N failed` line it printed.
    pub summary: Option<String>,
}

/// Runs both commands in a fresh root; `Ok(steps)` whatever their outcome.
pub fn run(keep: bool) -> Result<Vec<Step>, Fail> {
    require_root()?;
    ensure_debootstrap()?;
    remove_stale_roots();
    let root = PathBuf::from(format!("{ROOT_PREFIX}{}", std::process::id()));
    let log_dir = workspace_root().join("target/xtask-logs");
    fs::create_dir_all(&log_dir)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", log_dir.display())))?;
    let result = (|| {
        build_root(&root)?;
        copy_checkout(&root)?;
        let mounts = Mounts::bind(&root)?;
        let mut steps = Vec::new();
        for command in ["boot", "test"] {
            let step = run_in_root(
                &root,
                command,
                &log_dir.join(format!("fresh-{command}.log")),
            )?;
            steps.push(step);
        }
        drop(mounts);
        Ok(steps)
    })();
    if keep {
        eprintln!("xtask: fresh root kept in {}", root.display());
    } else if Mounts::none_left(&root) {
        let _ = fs::remove_dir_all(&root);
    } else {
        eprintln!(
            "xtask: {} still has mounts; not removing it (umount -R it by hand)",
            root.display()
        );
    }
    result
}

/// Unmounts and removes the roots of earlier fresh-checks that were killed (their process is
/// gone). A root is removed only once nothing is mounted under it: a bound `/dev` must never
/// be deleted through it.
fn remove_stale_roots() {
    let Some(parent) = Path::new(ROOT_PREFIX).parent() else {
        return;
    };
    let prefix = Path::new(ROOT_PREFIX)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for e in fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix) else {
            continue;
        };
        if pid.is_empty() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let root = e.path();
        for m in ["dev", "sys", "proc"] {
            let _ = Command::new("umount").arg("-R").arg(root.join(m)).status();
        }
        if Mounts::none_left(&root) {
            eprintln!("xtask: removing the stale fresh root {}", root.display());
            let _ = fs::remove_dir_all(&root);
        } else {
            eprintln!(
                "xtask: {} is left from a killed run and still has mounts; umount -R it by hand",
                root.display()
            );
        }
    }
}

fn require_root() -> Result<(), Fail> {
    if cmd_output(Command::new("id").arg("-u"))?.trim() != "0" {
        return Err(Fail::new(
            "fresh-check needs root (debootstrap, chroot and bind mounts)",
        ));
    }
    Ok(())
}

fn ensure_debootstrap() -> Result<(), Fail> {
    let found = Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Ok(());
    }
    eprintln!("xtask: installing debootstrap");
    cmd_status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "-q",
                "-y",
                "--no-install-recommends",
                "install",
                "debootstrap",
            ]),
    )
}

/// The host's Debian mirror for `suite` (the first apt source naming it), or `default`.
fn configured_mirror(suite: &str, default: &str) -> String {
    let mut texts = Vec::new();
    for dir in ["/etc/apt/sources.list.d", "/etc/apt"] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.extension().is_some_and(|x| x == "list" || x == "sources") {
                if let Ok(s) = fs::read_to_string(&p) {
                    texts.push(s);
                }
            }
        }
    }
    texts
        .iter()
        .find_map(|t| mirror_in(t, suite))
        .unwrap_or_else(|| default.to_string())
}

/// The URI given for `suite` in one apt sources file (one-line or deb822 format).
fn mirror_in(text: &str, suite: &str) -> Option<String> {
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("deb ") {
            let rest = rest.trim_start();
            // Options in brackets may hold spaces: `[arch=amd64 signed-by=...]`.
            let rest = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']').map_or("", |(_, after)| after),
                None => rest,
            };
            let rest: Vec<&str> = rest.split_whitespace().collect();
            if rest.len() >= 2 && rest[1] == suite {
                return Some(rest[0].trim_end_matches('/').to_string());
            }
        }
    }
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let l = l.trim();
                (!l.starts_with('#'))
                    .then(|| l.strip_prefix(name))
                    .flatten()
                    .map(|v| v.trim().to_string())
            })
        };
        let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
            continue;
        };
        if suites.split_whitespace().any(|s| s == suite) {
            return uris
                .split_whitespace()
                .next()
                .map(|u| u.trim_end_matches('/').to_string());
        }
    }
    None
}

fn in_root(root: &Path, script: &str) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root)
        .args(["/usr/bin/env", "-i"])
        .args([
            "HOME=/root",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8",
            "TERM=dumb",
            "CI=true",
            "DEBIAN_FRONTEND=noninteractive",
        ])
        .args(["/bin/sh", "-ec", script]);
    c
}

fn build_root(root: &Path) -> Result<(), Fail> {
    let mirror = configured_mirror(SUITE, DEFAULT_MIRROR);
    let security = configured_mirror(&format!("{SUITE}-security"), DEFAULT_SECURITY);
    let debs = cache_dir().join("debootstrap");
    fs::create_dir_all(&debs)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", debs.display())))?;
    let _ = fs::remove_dir_all(root);
    let start = Instant::now();
    eprintln!(
        "xtask: debootstrap {SUITE} into {} from {mirror}",
        root.display()
    );
    cmd_status(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include=ca-certificates"])
            .arg(format!("--cache-dir={}", debs.display()))
            .arg(SUITE)
            .arg(root)
            .arg(&mirror),
    )?;
    let sources = format!(
        "Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
         Types: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    );
    let write = |rel: &str, text: &str| {
        let p = root.join(rel);
        fs::write(&p, text).map_err(|e| Fail::new(format!("cannot write {}: {e}", p.display())))
    };
    let _ = fs::remove_file(root.join("etc/apt/sources.list"));
    write("etc/apt/sources.list.d/debian.sources", &sources)?;
    if let Ok(resolv) = fs::read_to_string("/etc/resolv.conf") {
        let _ = fs::remove_file(root.join("etc/resolv.conf"));
        write("etc/resolv.conf", &resolv)?;
    }
    let cas = root.join(LOCAL_CAS.trim_start_matches('/'));
    fs::create_dir_all(&cas)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", cas.display())))?;
    for e in fs::read_dir(LOCAL_CAS).into_iter().flatten().flatten() {
        let _ = fs::copy(e.path(), cas.join(e.file_name()));
    }
    cmd_status(&mut in_root(
        root,
        "update-ca-certificates >/dev/null\n\
         apt-get -q update\n\
         apt-get -q -y --no-install-recommends install rustc-web cargo-web\n\
         cargo --version; rustc --version",
    ))?;
    eprintln!(
        "xtask: fresh root ready in {} s (Debian {SUITE} minbase + rustc-web, cargo-web)",
        start.elapsed().as_secs()
    );
    Ok(())
}

/// Copies the working tree (committed or not, without build output) to [`CHECKOUT`].
fn copy_checkout(root: &Path) -> Result<(), Fail> {
    let dest = root.join(CHECKOUT.trim_start_matches('/'));
    fs::create_dir_all(&dest)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", dest.display())))?;
    let script = format!(
        "tar -C {src} --exclude=./target --exclude=./fuzz/target --exclude=./fuzz/artifacts \
         --exclude=./fuzz/corpus-work -cf - . | tar -C {dest} -xf -",
        src = shell(&workspace_root()),
        dest = shell(&dest)
    );
    cmd_status(Command::new("sh").args(["-ec", &script]))
}

fn shell(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// The bind mounts of the root; unmounted (recursively) when dropped.
struct Mounts {
    targets: Vec<PathBuf>,
}

impl Mounts {
    fn bind(root: &Path) -> Result<Mounts, Fail> {
        let mut m = Mounts {
            targets: Vec::new(),
        };
        for (what, kind) in [("proc", "proc"), ("sys", "sysfs")] {
            let t = root.join(what);
            cmd_status(Command::new("mount").args(["-t", kind, kind]).arg(&t))?;
            m.targets.push(t);
        }
        let dev = root.join("dev");
        cmd_status(Command::new("mount").args(["--rbind", "/dev"]).arg(&dev))?;
        m.targets.push(dev.clone());
        cmd_status(Command::new("mount").arg("--make-rslave").arg(&dev))?;
        Ok(m)
    }

    /// No mount of the host's table lies under `root`.
    fn none_left(root: &Path) -> bool {
        let table = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = root.display().to_string();
        let below = format!("{root}/");
        !table
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|m| m == root || m.starts_with(&below))
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for t in self.targets.iter().rev() {
            let _ = Command::new("umount").arg("-R").arg(t).status();
        }
    }
}

fn run_in_root(root: &Path, command: &'static str, log: &Path) -> Result<Step, Fail> {
    let label = match command {
        "boot" => "cargo xtask boot",
        _ => "cargo xtask test",
    };
    eprintln!("xtask: fresh root: {label} (log {})", log.display());
    let mut file = fs::File::create(log)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", log.display())))?;
    let start = Instant::now();
    let mut child = in_root(
        root,
        &format!("cd {CHECKOUT}\nexec cargo xtask {command} 2>&1"),
    )
    .stdout(Stdio::piped())
    .spawn()
    .map_err(|e| Fail::new(format!("cannot run chroot: {e}")))?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| Fail::new("no chroot stdout"))?;
    let mut summary = None;
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        println!("{line}");
        let _ = writeln!(file, "{line}");
        if is_summary(&line) {
            summary = Some(line);
        }
    }
    let st = child
        .wait()
        .map_err(|e| Fail::new(format!("chroot did not finish: {e}")))?;
    Ok(Step {
        command: label,
        status: st.code().unwrap_or(-1),
        seconds: start.elapsed().as_secs(),
        summary,
    })
}

/// `N passed, N failed` exactly.
fn is_summary(line: &str) -> bool {
    let w: Vec<&str> = line.split_whitespace().collect();
    w.len() == 4
        && w[0].parse::<u64>().is_ok()
        && w[1] == "passed,"
        && w[2].parse::<u64>().is_ok()
        && w[3] == "failed"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_are_read_from_both_source_formats() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n\
                      Suites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_in(deb822, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            mirror_in(deb822, "bookworm-security").as_deref(),
            Some("http://mirror.example/debian-security")
        );
        let list = "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n";
        assert_eq!(
            mirror_in(list, "bookworm").as_deref(),
            Some("http://one.example/debian")
        );
        assert_eq!(mirror_in(list, "bookworm-security"), None);
        assert_eq!(mirror_in("", "bookworm"), None);
    }

    #[test]
    fn only_the_closing_count_line_is_a_summary() {
        assert!(is_summary("1019 passed, 0 failed"));
        assert!(!is_summary("host tests: 531 passed, 0 failed"));
        assert!(!is_summary("test result: ok. 3 passed; 0 failed"));
    }
}
