//! The bounded fuzz runs of the test command: every target of `fuzz/` for a few seconds
//! (`cargo fuzz`, installed by set-up; `RUSTC_BOOTSTRAP=1` lets the stable compiler take its
//! sanitizer flags). Without cargo-fuzz they fail: a fuzz run that did not happen never counts
//! as passed. AddressSanitizer is used where the toolchain ships its runtime (rustup's does,
//! Debian's does not); otherwise the targets are built with coverage only and say so.

use crate::util::{workspace_root, Counts, Fail};
use std::process::{Command, Stdio};

/// Seconds each target runs.
const SECONDS: u32 = 15;

fn cargo_fuzz() -> Command {
    let mut c = Command::new("cargo");
    c.arg("fuzz")
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(workspace_root());
    c
}

/// `address` when the host toolchain has the ASan runtime library, else `none`.
fn sanitizer() -> &'static str {
    let rustc = |args: &[&str]| {
        Command::new("rustc")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let sysroot = rustc(&["--print", "sysroot"]);
    let host = rustc(&["-vV"]).and_then(|v| {
        v.lines()
            .find_map(|l| l.strip_prefix("host: ").map(|h| h.trim().to_string()))
    });
    let has_asan = match (sysroot, host) {
        (Some(root), Some(host)) => {
            let lib = std::path::PathBuf::from(root.trim())
                .join("lib/rustlib")
                .join(host)
                .join("lib");
            std::fs::read_dir(lib).is_ok_and(|entries| {
                entries.flatten().any(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("librustc-") && n.ends_with("_rt.asan.a")
                })
            })
        }
        _ => false,
    };
    if has_asan {
        "address"
    } else {
        "none"
    }
}

/// Builds and runs every fuzz target for [`SECONDS`]; one test per target.
pub fn smoke() -> Result<Counts, Fail> {
    let available = cargo_fuzz()
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        println!(
            "test fuzz: cargo-fuzz runs ... FAILED (cargo-fuzz is not installed; `cargo xtask setup` installs it)"
        );
        return Ok(Counts {
            passed: 0,
            failed: 1,
        });
    }
    let sanitizer = sanitizer();
    if sanitizer == "none" {
        eprintln!(
            "xtask: this Rust toolchain ships no AddressSanitizer runtime: fuzzing with coverage and panics only"
        );
    }
    let dir = workspace_root().join("fuzz/fuzz_targets");
    let mut targets: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| Fail::new(format!("cannot list {}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".rs"))
                .map(str::to_string)
        })
        .collect();
    targets.sort();
    eprintln!("xtask: building the fuzz targets");
    let built = cargo_fuzz()
        .args(["build", "--sanitizer", sanitizer])
        .status()
        .map_err(|e| Fail::new(format!("cannot run cargo fuzz: {e}")))?;
    let mut counts = Counts::default();
    if !built.success() {
        println!("test fuzz: the targets build ... FAILED");
        counts.failed += 1;
        return Ok(counts);
    }
    for t in targets {
        let work = workspace_root().join("target/fuzz-work").join(&t);
        std::fs::create_dir_all(&work)
            .map_err(|e| Fail::new(format!("cannot create {}: {e}", work.display())))?;
        let st = cargo_fuzz()
            .args(["run", "--sanitizer", sanitizer, &t])
            .arg(&work)
            .arg(format!("fuzz/corpus/{t}"))
            .args([
                "--",
                &format!("-max_total_time={SECONDS}"),
                "-rss_limit_mb=2048",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| Fail::new(format!("cannot run cargo fuzz: {e}")))?;
        if st.success() {
            println!("test fuzz: {t} for {SECONDS} s without a crash ... ok");
            counts.passed += 1;
        } else {
            println!(
                "test fuzz: {t} for {SECONDS} s without a crash ... FAILED ({st}; the input is in fuzz/artifacts/{t}/)"
            );
            counts.failed += 1;
        }
    }
    Ok(counts)
}
