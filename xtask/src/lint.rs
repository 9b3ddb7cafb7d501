//! The fast tier of the test command: formatting, lints and documentation of everything the
//! project builds — the main workspace on the host and for aarch64 (a fifth of the code is
//! aarch64-only), the fuzz workspace, the raw test payload and the two no_std checks. Each
//! check always runs: a manifest that has gone missing fails its check, never skips it.

use crate::cross;
use crate::util::{workspace_root, Fail};
use std::process::{Command, Stdio};

/// The separate Cargo workspaces besides the main one, linted on the host.
const HOST_MANIFESTS: [&str; 3] = [
    "fuzz/Cargo.toml",
    "crates/hypercall-router/no-std-check/Cargo.toml",
    "crates/sdei-dispatch/no-std-check/Cargo.toml",
];

/// One check: a name for the report and the command.
struct Check {
    name: String,
    cmd: Command,
}

fn host(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new("cargo");
    c.args(args).current_dir(workspace_root());
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

/// Where a separate workspace's host artefacts go (the fuzz one shares the fuzz corpora
/// tests' directory).
fn target_dir_for(manifest: &str) -> String {
    if manifest.starts_with("fuzz/") {
        "target/fuzz-common".into()
    } else {
        "target/no-std".into()
    }
}

fn checks() -> Vec<Check> {
    let mut v = vec![Check {
        name: "cargo fmt --check (workspace)".into(),
        cmd: host(&["fmt", "--all", "--check"], &[]),
    }];
    let separate = HOST_MANIFESTS
        .iter()
        .copied()
        .chain([cross::RAW_PAYLOAD_MANIFEST]);
    for manifest in separate {
        v.push(Check {
            name: format!("cargo fmt --check ({manifest})"),
            cmd: host(
                &["fmt", "--all", "--check", "--manifest-path", manifest],
                &[],
            ),
        });
    }
    v.push(Check {
        name: "cargo clippy (workspace, host)".into(),
        cmd: host(
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        ),
    });
    for manifest in HOST_MANIFESTS {
        // A no_std check crate has its own panic handler: its test target (which links std)
        // cannot build, so only the library is linted there.
        let targets = if manifest.starts_with("fuzz/") {
            "--all-targets"
        } else {
            "--lib"
        };
        v.push(Check {
            name: format!("cargo clippy ({manifest})"),
            cmd: host(
                &[
                    "clippy",
                    "--manifest-path",
                    manifest,
                    "--workspace",
                    targets,
                    "--",
                    "-D",
                    "warnings",
                ],
                &[("CARGO_TARGET_DIR", &target_dir_for(manifest))],
            ),
        });
    }
    let mut arm = cross::cargo();
    arm.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--target",
        cross::TARGET,
        "--",
        "-D",
        "warnings",
    ]);
    v.push(Check {
        name: "cargo clippy (workspace, aarch64)".into(),
        cmd: arm,
    });
    let mut payload = cross::raw_payload_cargo();
    payload.current_dir(workspace_root());
    payload.args([
        "clippy",
        "--manifest-path",
        cross::RAW_PAYLOAD_MANIFEST,
        "--release",
        "--target",
        cross::TARGET,
        "--",
        "-D",
        "warnings",
    ]);
    v.push(Check {
        name: "cargo clippy (raw payload, aarch64)".into(),
        cmd: payload,
    });
    let mut arm_doc = cross::cargo();
    arm_doc
        .args([
            "doc",
            "--workspace",
            "--no-deps",
            "--all-features",
            "--target",
            cross::TARGET,
        ])
        .env("RUSTDOCFLAGS", "-D warnings");
    v.push(Check {
        name: "cargo doc (workspace, aarch64, warnings denied)".into(),
        cmd: arm_doc,
    });
    v.push(Check {
        name: "cargo doc (workspace, warnings denied)".into(),
        cmd: host(
            &["doc", "--workspace", "--no-deps", "--all-features"],
            &[
                ("RUSTDOCFLAGS", "-D warnings"),
                ("CARGO_TARGET_DIR", "target/doc-check"),
            ],
        ),
    });
    v
}

/// Runs every check; returns the names of those that failed (each one's output went to the
/// terminal). A manifest that does not exist fails its check.
pub fn run() -> Result<Vec<String>, Fail> {
    let mut failed = Vec::new();
    for mut check in checks() {
        let missing = check
            .cmd
            .get_args()
            .skip_while(|a| *a != "--manifest-path")
            .nth(1)
            .map(|m| workspace_root().join(m))
            .filter(|m| !m.exists());
        if let Some(m) = missing {
            println!(
                "lint {} ... FAILED ({} is missing)",
                check.name,
                m.display()
            );
            failed.push(check.name);
            continue;
        }
        eprintln!("xtask: {}", check.name);
        let ok = check
            .cmd
            .stdin(Stdio::null())
            .status()
            .map_err(|e| Fail::new(format!("cannot run {}: {e}", check.name)))?
            .success();
        println!(
            "lint {} ... {}",
            check.name,
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            failed.push(check.name);
        }
    }
    Ok(failed)
}
