//! Proof that the installed toolchain works end to end, run at the end of every set-up (and
//! alone as `cargo xtask doctor`, which installs nothing).
//!
//! Each check does the smallest real thing a later build does — a static aarch64 link of a C
//! program and of a Rust program, a C++ compile, `qemu-system-aarch64 --version`, the cargo
//! subcommands the test command runs, the shared libraries `pahole` loads — and a failed check
//! names the package that provides it. Every check runs (a few seconds in all), then set-up
//! stops if any failed, before any long build starts.

use crate::setup::{cargo_subcommand_runs, debian_toolchain, qemu_major, CARGO_FUZZ_VERSION};
use crate::util::Fail;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A check that failed: what was tried, what to install, and what the tool said.
#[derive(Debug)]
struct Missing {
    what: &'static str,
    package: String,
    detail: String,
}

/// Runs every check; `Err` names each missing package.
pub fn check_all() -> Result<(), Fail> {
    let dir = std::env::temp_dir().join(format!("refvmm-doctor-{}", std::process::id()));
    fs::create_dir_all(&dir)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", dir.display())))?;
    let missing = run_checks(&dir);
    let _ = fs::remove_dir_all(&dir);
    if missing.is_empty() {
        eprintln!("xtask: toolchain check passed (static aarch64 C and Rust links, C++, QEMU, cpio, make, xz, cargo fmt/clippy/fuzz, pahole's libraries)");
        return Ok(());
    }
    let mut msg = String::from("the toolchain is incomplete; missing:");
    for m in &missing {
        msg.push_str(&format!("\n  {}: {} ({})", m.package, m.what, m.detail));
    }
    msg.push_str("\n  run `cargo xtask setup` as root to install them");
    Err(Fail::new(msg))
}

fn run_checks(dir: &Path) -> Vec<Missing> {
    let arm64 = cfg!(target_arch = "aarch64");
    let mut missing = Vec::new();
    let mut need = |r: Result<(), Missing>| {
        if let Err(m) = r {
            eprintln!("xtask: toolchain check FAILED: {} ({})", m.what, m.package);
            missing.push(m);
        }
    };
    for (tool, package) in [("cpio", "cpio"), ("make", "make"), ("xz", "xz-utils")] {
        need(runs(tool, &["--version"], package));
    }
    if !arm64 {
        need(match qemu_major() {
            Some(v) if v >= 10 => Ok(()),
            Some(v) => Err(missing_pkg(
                "QEMU >= 10 (7.2 has an MTE tag bug)",
                "qemu-system-arm from bookworm-backports",
                format!("qemu-system-aarch64 is version {v}"),
            )),
            None => Err(missing_pkg(
                "qemu-system-aarch64 --version",
                "qemu-system-arm from bookworm-backports",
                "not found".into(),
            )),
        });
    }
    need(c_static_link(dir, arm64));
    need(rust_static_link(dir, arm64));
    need(cxx_compile(dir));
    need(pahole_libraries());
    for (sub, what, deb, component) in [
        ("fmt", "cargo fmt", "rustfmt-web", "rustfmt"),
        ("clippy", "cargo clippy", "rust-web-clippy", "clippy"),
    ] {
        if !cargo_subcommand_runs(sub) {
            let package = if debian_toolchain() {
                deb.to_string()
            } else {
                format!("the rustup component {component}")
            };
            need(Err(missing_pkg(what, &package, "does not run".into())));
        }
    }
    if !cargo_subcommand_runs("fuzz") {
        need(Err(missing_pkg(
            "cargo fuzz",
            &format!("cargo-fuzz {CARGO_FUZZ_VERSION} from the crate registry"),
            "does not run".into(),
        )));
    }
    missing
}

fn missing_pkg(what: &'static str, package: &str, detail: String) -> Missing {
    Missing {
        what,
        package: package.to_string(),
        detail,
    }
}

/// The telling lines of a failed command's diagnostics: the first two that say what could
/// not be found or what failed, else the last two.
fn tail(o: &Output) -> String {
    let text = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let telling: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("cannot find") || l.contains("fatal error") || l.contains("error:"))
        .take(2)
        .collect();
    if telling.is_empty() {
        lines[lines.len().saturating_sub(2)..].join(" / ")
    } else {
        telling.join(" / ")
    }
}

fn runs(tool: &'static str, args: &[&str], package: &str) -> Result<(), Missing> {
    match Command::new(tool).args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(missing_pkg(tool, package, tail(&o))),
        Err(e) => Err(missing_pkg(tool, package, e.to_string())),
    }
}

/// The C compiler that links aarch64 binaries, and the package with its C library.
fn c_toolchain(arm64: bool) -> (&'static str, &'static str, &'static str) {
    if arm64 {
        ("gcc", "gcc", "libc6-dev")
    } else {
        (
            "aarch64-linux-gnu-gcc",
            "gcc-aarch64-linux-gnu",
            "libc6-dev-arm64-cross",
        )
    }
}

fn c_static_link(dir: &Path, arm64: bool) -> Result<(), Missing> {
    const WHAT: &str = "a static aarch64 link of a C program";
    let (cc, cc_pkg, libc_pkg) = c_toolchain(arm64);
    let src = dir.join("hello.c");
    let exe = dir.join("hello-c");
    write(
        &src,
        "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
    );
    let out = Command::new(cc)
        .arg("-static")
        .arg("-pthread")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg("-lm")
        .output();
    match out {
        Err(e) => Err(missing_pkg(WHAT, cc_pkg, format!("{cc}: {e}"))),
        Ok(o) if !o.status.success() => Err(missing_pkg(WHAT, libc_pkg, tail(&o))),
        Ok(_) => static_aarch64_elf(&exe).map_err(|d| missing_pkg(WHAT, libc_pkg, d)),
    }
}

fn rust_static_link(dir: &Path, arm64: bool) -> Result<(), Missing> {
    const WHAT: &str = "a static aarch64 link of a Rust program";
    let (cc, _, libc_pkg) = c_toolchain(arm64);
    // Debian's compiler is the one with the aarch64 standard library on an x86_64 host.
    let (rustc, rustc_pkg, std_pkg) = if arm64 {
        ("rustc", "a Rust toolchain", "a Rust toolchain")
    } else {
        ("/usr/bin/rustc", "rustc-web", "libstd-rust-web-dev:arm64")
    };
    let src = dir.join("hello.rs");
    let exe = dir.join("hello-rs");
    write(&src, "fn main() { println!(\"hello\"); }\n");
    let out = Command::new(rustc)
        .env_remove("RUSTC_WRAPPER")
        .args(["--edition", "2021", "--target", "aarch64-unknown-linux-gnu"])
        .arg(format!("-Clinker={cc}"))
        .arg("-Ctarget-feature=+crt-static")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output();
    match out {
        Err(e) => Err(missing_pkg(WHAT, rustc_pkg, format!("{rustc}: {e}"))),
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            let pkg = if err.contains("can't find crate for `std`")
                || err.contains("target may not be installed")
            {
                std_pkg
            } else if err.contains("linker `") && err.contains("not found") {
                c_toolchain(arm64).1
            } else {
                libc_pkg
            };
            Err(missing_pkg(WHAT, pkg, tail(&o)))
        }
        Ok(_) => static_aarch64_elf(&exe).map_err(|d| missing_pkg(WHAT, libc_pkg, d)),
    }
}

fn cxx_compile(dir: &Path) -> Result<(), Missing> {
    const WHAT: &str = "a C++ compile for the host (libFuzzer)";
    let src = dir.join("hello.cc");
    let obj = dir.join("hello.o");
    write(
        &src,
        "#include <vector>\nint f() { std::vector<int> v{1}; return v[0]; }\n",
    );
    match Command::new("c++")
        .arg("-c")
        .arg("-o")
        .arg(&obj)
        .arg(&src)
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(missing_pkg(WHAT, "g++", tail(&o))),
        Err(e) => Err(missing_pkg(WHAT, "g++", format!("c++: {e}"))),
    }
}

/// The shared libraries the headers' `pahole` (downloaded, not installed) is linked with.
fn pahole_libraries() -> Result<(), Missing> {
    const WHAT: &str = "a library pahole loads";
    let cache = match Command::new("ldconfig").arg("-p").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => return Err(missing_pkg(WHAT, "libc-bin", format!("ldconfig: {e}"))),
    };
    let mut absent = Vec::new();
    for (lib, pkg) in [
        ("libdw.so.1", "libdw1"),
        ("libelf.so.1", "libelf1"),
        ("libbpf.so.1", "libbpf1"),
        ("libz.so.1", "zlib1g"),
    ] {
        if !cache.lines().any(|l| l.trim_start().starts_with(lib)) {
            absent.push((lib, pkg));
        }
    }
    if absent.is_empty() {
        return Ok(());
    }
    Err(missing_pkg(
        WHAT,
        &absent.iter().map(|(_, p)| *p).collect::<Vec<_>>().join(" "),
        format!(
            "{} not in the dynamic linker's cache",
            absent
                .iter()
                .map(|(l, _)| *l)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

fn write(p: &PathBuf, text: &str) {
    // A failed write shows up as a failed compile of the missing file.
    let _ = fs::write(p, text);
}

/// An aarch64 ELF executable without a program interpreter (statically linked).
fn static_aarch64_elf(p: &Path) -> Result<(), String> {
    let data = fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if data.get(0..5) != Some(b"\x7fELF\x02") || u16_at(18) != Some(183) {
        return Err("the output is not a 64-bit aarch64 ELF".into());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return Err("the output's ELF header is truncated".into());
    };
    let interp = (0..usize::from(phnum)).any(|i| {
        let at = phoff as usize + i * usize::from(phentsize);
        data.get(at..at + 4) == Some(&3u32.to_le_bytes()[..]) // PT_INTERP
    });
    if interp {
        return Err("the output is dynamically linked (+crt-static had no effect)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(interp: bool) -> Vec<u8> {
        let mut d = vec![0u8; 64 + 56];
        d[0..5].copy_from_slice(b"\x7fELF\x02");
        d[18..20].copy_from_slice(&183u16.to_le_bytes());
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&1u16.to_le_bytes());
        let pt: u32 = if interp { 3 } else { 1 };
        d[64..68].copy_from_slice(&pt.to_le_bytes());
        d
    }

    #[test]
    fn only_a_static_aarch64_executable_passes() {
        let dir = std::env::temp_dir().join(format!("doctor-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x");
        fs::write(&p, elf(false)).unwrap();
        assert!(static_aarch64_elf(&p).is_ok());
        fs::write(&p, elf(true)).unwrap();
        assert!(static_aarch64_elf(&p).unwrap_err().contains("dynamically"));
        let mut x86 = elf(false);
        x86[18..20].copy_from_slice(&62u16.to_le_bytes());
        fs::write(&p, x86).unwrap();
        assert!(static_aarch64_elf(&p).unwrap_err().contains("aarch64"));
        fs::write(&p, b"\x7fELF\x02").unwrap();
        assert!(static_aarch64_elf(&p).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
