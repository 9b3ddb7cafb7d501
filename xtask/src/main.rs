//! `cargo xtask`: the project's developer tool.
//!
//! ```text
//! cargo xtask setup                 set up the emulated arm64 test bed (root, idempotent)
//! cargo xtask doctor                check the toolchain works, naming what is missing (no installs)
//! cargo xtask fresh-check [--keep]  both README commands in a fresh Debian 12 root (root, slow)
//! cargo xtask test                  every test: the fast tier, then emulated-arm64 tests and
//!                                   guest scenarios (not run when the fast tier fails)
//! cargo xtask check                 the fast tier only: fmt, clippy (host, aarch64, fuzz,
//!                                   payload, no_std), cargo doc, minimal dependency
//!                                   versions, host tests
//! cargo xtask minimal-versions      the library crates against their oldest dependencies
//! cargo xtask boot                  the main job: boot a real arm64 guest on refvmm
//! cargo xtask fuzz                  every fuzz target for a few seconds (needs cargo-fuzz)
//! cargo xtask bench [--rounds N] [--peer NAME=PATH]...
//!                                   ratio benchmarks in the emulated machine (docs/measurements.md)
//! cargo xtask scenario NAME         one guest scenario: boot, sdei, seccomp, snapshot,
//!                                   snapshot-in-handler, features, pmem, example (the
//!                                   minimal VMM of sdei-dispatch's examples)
//! cargo xtask arm64 test [-p PKG]... [FILTER]
//!                                   only the aarch64 test executables, in the emulated machine
//! cargo xtask arm64 run [OPTIONS] -- CMD...
//!                                   run CMD inside the emulated machine
//!     --file PATH | --file NAME=PATH   copy a file or directory into /work (repeatable)
//!     --refvmm                         copy the aarch64 refvmm binary into /work/refvmm
//!     --timeout SECS                   default 300
//!     --memory MIB                     default 2048
//! ```
//!
//! Exit status: 0 on success; 1 when a test or the command inside failed (the command's own
//! status is printed); 2 for a usage error; 3 when set-up or a build failed.

mod bench;
mod blk;
mod cpio;
mod cross;
mod doctor;
mod example;
mod features;
mod fresh;
mod fuzz;
mod guest;
mod kmod;
mod l1;
mod lint;
mod minver;
mod pmem;
mod rng;
mod sdei;
mod seccomp;
mod setup;
mod snapshot;
mod util;

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use util::{workspace_root, Counts, Fail};

const USAGE: &str = "usage: cargo xtask <setup | doctor | fresh-check [--keep] | test | boot | bench [--rounds N] [--peer NAME=PATH]... | arm64 test [-p PKG]... [FILTER] | arm64 run [--file [NAME=]PATH]... [--refvmm] [--timeout SECS] [--memory MIB] -- CMD...>";

enum Outcome {
    Ok,
    Failed(String),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match argv.as_slice() {
        ["setup"] => setup::run().map(|_| Outcome::Ok),
        ["doctor"] => doctor::check_all().map(|()| Outcome::Ok),
        ["fresh-check"] => cmd_fresh_check(false),
        ["fresh-check", "--keep"] => cmd_fresh_check(true),
        ["kmod"] => setup::run()
            .and_then(|tb| kmod::build_sdei_module(&tb))
            .map(|ko| {
                println!("{}", ko.display());
                Outcome::Ok
            }),
        ["test"] => cmd_test(),
        ["check"] => cmd_check(),
        ["minimal-versions"] => match minver::run() {
            Ok(failed) if failed.is_empty() => Ok(Outcome::Ok),
            Ok(failed) => Ok(Outcome::Failed(failed.join("; "))),
            Err(e) => Err(e),
        },
        ["boot"] => cmd_boot(),
        ["bench", rest @ ..] => match bench::parse(rest) {
            Ok(r) => bench::run(&r),
            Err(e) => {
                eprintln!("xtask: {e}\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        ["fuzz"] => fuzz::smoke().map(|c| verdict("fuzz", c)),
        ["scenario", name] => cmd_scenario(name),
        ["arm64", "test", rest @ ..] => {
            let mut packages = Vec::new();
            let mut filter = None;
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match (*a, it.clone().next()) {
                    ("-p", Some(p)) => {
                        packages.push(p.to_string());
                        it.next();
                    }
                    (f, _) if filter.is_none() && !f.starts_with('-') => filter = Some(f),
                    _ => {
                        eprintln!("{USAGE}");
                        return ExitCode::from(2);
                    }
                }
            }
            cmd_arm64_test(&packages, filter).map(|c| verdict("arm64", c))
        }
        ["arm64", "run", rest @ ..] => match parse_run(rest) {
            Ok(r) => cmd_arm64_run(r),
            Err(e) => {
                eprintln!("xtask: {e}\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        ["help"] | ["--help"] | ["-h"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed(why)) => {
            eprintln!("xtask: FAILED: {why}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::from(3)
        }
    }
}

fn verdict(what: &str, c: Counts) -> Outcome {
    if c.failed == 0 && c.passed > 0 {
        Outcome::Ok
    } else if c.passed == 0 && c.failed == 0 {
        Outcome::Failed(format!("{what}: no tests ran"))
    } else {
        Outcome::Failed(format!("{what}: {} failed", c.failed))
    }
}

/// Runs a host cargo command, streaming its output and counting libtest results.
fn host_cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<(bool, Counts), Fail> {
    use std::io::{BufRead, BufReader};
    let mut c = Command::new("cargo");
    c.args(args)
        .current_dir(workspace_root())
        .stdout(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child = c
        .spawn()
        .map_err(|e| Fail::new(format!("cannot run cargo: {e}")))?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| Fail::new("no cargo stdout"))?;
    let mut counts = Counts::default();
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        println!("{line}");
        counts.add_libtest_line(&line);
    }
    let st = child
        .wait()
        .map_err(|e| Fail::new(format!("cargo did not finish: {e}")))?;
    Ok((st.success(), counts))
}

/// The fast tier: every format, lint and doc check, then the host tests (with the loom model,
/// the no_std builds and the fuzz corpora). Returns the host counts and the problems found.
fn fast_tier() -> Result<(Counts, Vec<String>), Fail> {
    let mut problems = lint::run()?;
    problems.extend(minver::run()?);
    let (ok, mut host) = host_cargo(&["test", "--workspace", "--all-features"], &[])?;
    if !ok && host.failed == 0 {
        host.failed += 1;
        problems.push("cargo test (build or a test binary failed)".to_string());
    }
    for extra in extra_host_checks() {
        let (ok, c) = host_cargo(&extra.args, &extra.envs)?;
        host = host.plus(c);
        if !ok {
            if c.failed == 0 {
                host.failed += 1;
            }
            problems.push(extra.name.to_string());
        }
    }
    Ok((host, problems))
}

/// `cargo xtask check`: the fast tier alone.
fn cmd_check() -> Result<Outcome, Fail> {
    setup::run()?;
    let (host, problems) = fast_tier()?;
    println!("host tests: {} passed, {} failed", host.passed, host.failed);
    println!("{} passed, {} failed", host.passed, host.failed);
    if problems.is_empty() {
        Ok(Outcome::Ok)
    } else {
        Ok(Outcome::Failed(problems.join("; ")))
    }
}

fn cmd_test() -> Result<Outcome, Fail> {
    let start = Instant::now();
    let tb = setup::run()?;
    let (mut host, mut problems) = fast_tier()?;
    if !problems.is_empty() {
        // Stop before the long emulated runs: the fast tier's failures come first.
        println!("host tests: {} passed, {} failed", host.passed, host.failed);
        println!(
            "fast tier failed; emulated tests not run ({} s)",
            start.elapsed().as_secs()
        );
        println!("{} passed, {} failed", host.passed, host.failed.max(1));
        return Ok(Outcome::Failed(problems.join("; ")));
    }
    let fuzzed = fuzz::smoke()?;
    if fuzzed.failed > 0 {
        problems.push("bounded fuzz runs".to_string());
    }
    host = host.plus(fuzzed);
    println!("host tests: {} passed, {} failed", host.passed, host.failed);
    let mut arm = cmd_arm64_test_with(Some(&tb), &[], None)?;
    println!(
        "emulated arm64 tests: {} passed, {} failed",
        arm.passed, arm.failed
    );
    let mut scenarios = example::minimal_vmm(&tb)?;
    scenarios.extend(guest::boot(&tb)?);
    scenarios.extend(sdei::sdei(&tb)?);
    scenarios.extend(features::features(&tb)?);
    scenarios.extend(pmem::pmem(&tb)?);
    scenarios.extend(rng::rng(&tb)?);
    scenarios.extend(blk::blk(&tb)?);
    scenarios.extend(snapshot::snapshot(&tb, snapshot::Moment::AfterHandler)?);
    scenarios.extend(snapshot::snapshot(&tb, snapshot::Moment::InHandler)?);
    scenarios.extend(seccomp::seccomp(&tb)?);
    let guests = guest::report(&scenarios);
    println!(
        "emulated guest scenarios: {} passed, {} failed",
        guests.passed, guests.failed
    );
    arm = arm.plus(guests);
    let all = host.plus(arm);
    println!("test command took {} s", start.elapsed().as_secs());
    println!("{} passed, {} failed", all.passed, all.failed);
    if arm.passed == 0 {
        problems.push("no emulated arm64 test ran".to_string());
    }
    if all.failed > 0 {
        problems.push(format!("{} tests failed", all.failed));
    }
    if problems.is_empty() {
        Ok(Outcome::Ok)
    } else {
        Ok(Outcome::Failed(problems.join("; ")))
    }
}

struct Extra {
    name: &'static str,
    args: Vec<&'static str>,
    envs: Vec<(&'static str, &'static str)>,
}

/// Checks beyond `cargo test`: the loom model, the no_std builds, the fuzz corpora. Each one
/// always runs: a manifest that has gone missing fails its check instead of skipping it.
fn extra_host_checks() -> Vec<Extra> {
    let mut v = Vec::new();
    for (name, manifest) in [
        (
            "no_std build of hypercall-router",
            "crates/hypercall-router/no-std-check/Cargo.toml",
        ),
        (
            "no_std build of sdei-dispatch",
            "crates/sdei-dispatch/no-std-check/Cargo.toml",
        ),
    ] {
        v.push(Extra {
            name,
            args: vec!["build", "--manifest-path", manifest],
            envs: vec![],
        });
    }
    v.push(Extra {
        name: "sdei-dispatch without default features",
        args: vec!["test", "-p", "sdei-dispatch", "--no-default-features"],
        envs: vec![("CARGO_TARGET_DIR", "target/no-std")],
    });
    v.push(Extra {
        name: "hypercall-router without default features",
        args: vec!["test", "-p", "hypercall-router", "--no-default-features"],
        envs: vec![("CARGO_TARGET_DIR", "target/no-std")],
    });
    v.push(Extra {
        name: "fuzz corpora as regression tests",
        args: vec![
            "test",
            "--manifest-path",
            "fuzz/Cargo.toml",
            "-p",
            "fuzz-common",
        ],
        envs: vec![("CARGO_TARGET_DIR", "target/fuzz-common")],
    });
    v.push(Extra {
        name: "loom model of MTE tag initialisation",
        args: vec![
            "test",
            "-p",
            "mte-memory",
            "--test",
            "loom_tag_init",
            "--release",
        ],
        envs: vec![
            ("RUSTFLAGS", "--cfg loom"),
            ("CARGO_TARGET_DIR", "target/loom"),
        ],
    });
    v
}

fn cmd_arm64_test(packages: &[String], filter: Option<&str>) -> Result<Counts, Fail> {
    let tb = if l1::native_kvm() {
        None
    } else {
        Some(setup::run()?)
    };
    cmd_arm64_test_with(tb.as_ref(), packages, filter)
}

/// Tests that need a file on a disk filesystem (ext4, xfs, ...), which the emulated machine
/// does not have (its files live in tmpfs). They run on the host, where they fail rather than
/// skip when no such directory exists; in the emulated machine they are left out by name, so
/// they are counted neither as passed nor as failed, and the run says so.
const NEED_A_DISK_FILESYSTEM: &[&str] = &[
    "mte_with_a_pmem_file_on_disk_is_refused_before_kvm",
    "mte_refuses_a_disk_file_and_says_what_to_use",
];

fn cmd_arm64_test_with(
    tb: Option<&setup::Testbed>,
    packages: &[String],
    filter: Option<&str>,
) -> Result<Counts, Fail> {
    let exes = cross::test_executables(packages)?;
    let mut files = Vec::new();
    let mut script = String::from(
        "export RUST_BACKTRACE=1 PROPTEST_CASES=32\nfail=0\ncd /work/t 2>/dev/null || cd t\n",
    );
    let mut seen = std::collections::BTreeSet::new();
    for (name, path) in exes {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or(name);
        if !seen.insert(file.clone()) {
            continue;
        }
        if file == "refvmm" {
            // The binary the CLI tests run (not a test executable itself).
            files.push(("bin/refvmm".to_string(), path));
            script.insert_str(0, "export REFVMM_BIN=\"$(pwd)/bin/refvmm\"\n");
            continue;
        }
        files.push((format!("t/{file}"), path));
        let mut filt = filter.map(|f| format!(" {f}")).unwrap_or_default();
        if !l1::native_kvm() {
            for t in NEED_A_DISK_FILESYSTEM {
                filt.push_str(&format!(" --skip {t}"));
            }
        }
        script.push_str(&format!(
            "echo \"@@TEST {file}\"\n./{file} --test-threads=2{filt}\nrc=$?\necho \"@@TESTRC {file} $rc\"\n[ $rc = 0 ] || fail=1\n"
        ));
    }
    // The fuzz corpora, for the tests that replay them (there is no source tree in L1).
    files.push(("corpus".to_string(), workspace_root().join("fuzz/corpus")));
    script.insert_str(0, "export REFVMM_FUZZ_CORPUS=\"$(pwd)/corpus\"\n");
    if packages.is_empty() || packages.iter().any(|p| p == "refvmm") {
        // The freestanding payload the raw-binary boot tests run on refvmm.
        files.push(("bin/raw-payload.bin".to_string(), cross::raw_payload()?));
        script.insert_str(
            0,
            "export REFVMM_RAW_PAYLOAD=\"$(pwd)/bin/raw-payload.bin\"\n",
        );
    }
    if !l1::native_kvm() {
        println!(
            "xtask: not run in the emulated machine (no disk filesystem there; they ran on the host): {}",
            NEED_A_DISK_FILESYSTEM.join(", ")
        );
    }
    script.push_str("exit $fail\n");
    if files.is_empty() {
        return Err(Fail::new("no aarch64 test executables were built"));
    }
    let job = l1::Job {
        files,
        script,
        timeout: Duration::from_secs(1200),
        // The test executables live in the initramfs (tmpfs: half of RAM).
        memory_mib: 4096,
        echo: true,
    };
    let res = l1::run(tb, &job)?;
    Ok(count_per_binary(&res.output, res.counts))
}

/// A test binary that died without a libtest summary still counts as a failure.
fn count_per_binary(output: &str, mut counts: Counts) -> Counts {
    let mut summarised = false;
    for line in output.lines() {
        if line.starts_with("@@TEST ") {
            summarised = false;
        } else if line.trim_start().starts_with("test result: ") {
            summarised = true;
        } else if let Some(rest) = line.strip_prefix("@@TESTRC ") {
            let rc = rest
                .rsplit(' ')
                .next()
                .and_then(|r| r.trim().parse::<i32>().ok());
            if rc != Some(0) && !summarised {
                println!("xtask: {rest}: test binary died without a summary");
                counts.failed += 1;
            }
        }
    }
    counts
}

struct RunArgs {
    files: Vec<(String, PathBuf)>,
    refvmm: bool,
    timeout: u64,
    memory: u32,
    cmd: Vec<String>,
}

fn parse_run(args: &[&str]) -> Result<RunArgs, String> {
    let mut r = RunArgs {
        files: Vec::new(),
        refvmm: false,
        timeout: 300,
        memory: 2048,
        cmd: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--" => {
                r.cmd = it.map(|s| s.to_string()).collect();
                break;
            }
            "--refvmm" => r.refvmm = true,
            "--file" => {
                let v = it.next().ok_or("--file needs a path")?;
                let (name, path) = match v.split_once('=') {
                    Some((n, p)) => (n.to_string(), PathBuf::from(p)),
                    None => {
                        let p = PathBuf::from(v);
                        let n = p
                            .file_name()
                            .ok_or_else(|| format!("--file {v}: no file name"))?
                            .to_string_lossy()
                            .into_owned();
                        (n, p)
                    }
                };
                if !path.exists() {
                    return Err(format!("--file {v}: {} does not exist", path.display()));
                }
                r.files.push((name, path));
            }
            "--timeout" => {
                r.timeout = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--timeout needs a number of seconds")?
            }
            "--memory" => {
                r.memory = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--memory needs a number of MiB")?
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if r.cmd.is_empty() {
        return Err("no command given after --".into());
    }
    Ok(r)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn cmd_arm64_run(mut r: RunArgs) -> Result<Outcome, Fail> {
    let tb = if l1::native_kvm() {
        None
    } else {
        Some(setup::run()?)
    };
    if r.refvmm {
        r.files.push(("refvmm".into(), cross::refvmm()?));
    }
    let script = r
        .cmd
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
        + "\n";
    let job = l1::Job {
        files: r.files,
        script,
        timeout: Duration::from_secs(r.timeout),
        memory_mib: r.memory,
        echo: true,
    };
    let res = l1::run(tb.as_ref(), &job)?;
    println!(
        "xtask: command exited with status {} inside the emulated machine",
        res.exit
    );
    if res.exit == 0 {
        Ok(Outcome::Ok)
    } else {
        Ok(Outcome::Failed(format!(
            "the command exited with status {}",
            res.exit
        )))
    }
}

/// One guest scenario on its own (see the module's usage).
fn cmd_scenario(name: &str) -> Result<Outcome, Fail> {
    let tb = setup::run()?;
    let checks = match name {
        "boot" => guest::boot(&tb)?,
        "sdei" => sdei::sdei(&tb)?,
        "snapshot" => snapshot::snapshot(&tb, snapshot::Moment::AfterHandler)?,
        "snapshot-in-handler" => snapshot::snapshot(&tb, snapshot::Moment::InHandler)?,
        "seccomp" => seccomp::seccomp(&tb)?,
        "features" => features::features(&tb)?,
        "pmem" => pmem::pmem(&tb)?,
        "rng" => rng::rng(&tb)?,
        "blk" => blk::blk(&tb)?,
        "example" => example::minimal_vmm(&tb)?,
        other => {
            return Err(Fail::new(format!(
                "unknown scenario {other:?} (boot, sdei, seccomp, snapshot, snapshot-in-handler, features, pmem, rng, blk, example)"
            )))
        }
    };
    let c = guest::report(&checks);
    println!("{} passed, {} failed", c.passed, c.failed);
    Ok(verdict(name, c))
}

/// Both README commands in a fresh Debian 12 root (see `fresh.rs`).
fn cmd_fresh_check(keep: bool) -> Result<Outcome, Fail> {
    let steps = fresh::run(keep)?;
    println!("xtask: fresh-check results:");
    let mut failed = Vec::new();
    for s in &steps {
        println!(
            "  {}: exit status {}, {} s, closing line: {}",
            s.command,
            s.status,
            s.seconds,
            s.summary.as_deref().unwrap_or("(none)")
        );
        if s.status != 0 {
            failed.push(format!("{} exited with status {}", s.command, s.status));
        }
    }
    if failed.is_empty() {
        Ok(Outcome::Ok)
    } else {
        Ok(Outcome::Failed(failed.join("; ")))
    }
}

/// The main job: boot Debian's arm64 kernel on refvmm (2 vCPUs, MTE) in the emulated machine.
fn cmd_boot() -> Result<Outcome, Fail> {
    let tb = setup::run()?;
    let c = guest::report(&guest::boot(&tb)?);
    println!("{} passed, {} failed", c.passed, c.failed);
    Ok(verdict("guest boot on refvmm", c))
}
