//! The bounded fuzz runs of the test command: every target of `fuzz/` for a few seconds, where
//! the fuzzing toolchain works (`cargo fuzz` installed; `RUSTC_BOOTSTRAP=1` lets the stable
//! compiler take its sanitizer flags). Elsewhere they are skipped with a note saying how to get
//! them; the corpora still run as ordinary tests either way.

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
            "xtask: bounded fuzz runs skipped: cargo-fuzz is not installed (`cargo install cargo-fuzz`)"
        );
        return Ok(Counts::default());
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
        .arg("build")
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
            .args(["run", &t])
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
