//! The library crates build against the oldest versions their `Cargo.toml`s allow: each
//! group is copied into its own workspace under `target/minimal-versions/`, resolved with
//! `-Z direct-minimal-versions` (every direct dependency at its lowest allowed version; the
//! flag needs `RUSTC_BOOTSTRAP=1` on a stable cargo) and checked on the host and for aarch64,
//! where the KVM code is. A VMM pinned to older rust-vmm releases (kvm-ioctls 0.25.0,
//! kvm-bindings 0.14.1) can then use the crates.

use crate::cross;
use crate::util::{workspace_root, Fail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates checked together (a group shares one resolution).
const GROUPS: [(&str, &[&str]); 1] = [(
    "libraries",
    &[
        "crates/hypercall-router",
        "crates/sdei-dispatch",
        "crates/sdei-migration",
        "crates/mte-memory",
    ],
)];

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" || name == "Cargo.lock" {
            continue;
        }
        let dest = to.join(&name);
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// Writes the group's workspace: the root manifest with only the group as members, and the
/// crates' sources.
fn prepare(name: &str, members: &[&str]) -> Result<PathBuf, Fail> {
    let root = workspace_root();
    let dir = root.join("target").join("minimal-versions").join(name);
    let io = |e: std::io::Error| Fail::new(format!("minimal versions, {name}: {e}"));
    let _ = fs::remove_dir_all(dir.join("crates"));
    for m in members {
        copy_dir(&root.join(m), &dir.join(m)).map_err(io)?;
    }
    let manifest = fs::read_to_string(root.join("Cargo.toml")).map_err(io)?;
    let list = members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = String::new();
    let mut skipping = false;
    for line in manifest.lines() {
        if skipping {
            skipping = !line.trim_start().starts_with(']');
            continue;
        }
        if line.starts_with("members = [") || line.starts_with("default-members = [") {
            let key = line.split(" = ").next().unwrap_or("members");
            out.push_str(&format!("{key} = [{list}]\n"));
            skipping = !line.trim_end().ends_with(']');
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    fs::write(dir.join("Cargo.toml"), out).map_err(io)?;
    Ok(dir)
}

fn status(what: &str, c: &mut Command) -> Result<bool, Fail> {
    eprintln!("xtask: minimal versions: {what}");
    Ok(c.status()
        .map_err(|e| Fail::new(format!("cannot run cargo for {what}: {e}")))?
        .success())
}

/// Checks each group; returns the failures.
pub fn run() -> Result<Vec<String>, Fail> {
    let mut failed = Vec::new();
    for (name, members) in GROUPS {
        let dir = prepare(name, members)?;
        let mut resolve = Command::new("cargo");
        resolve
            .args(["update", "-Z", "direct-minimal-versions"])
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&dir);
        let mut host = Command::new("cargo");
        host.args([
            "check",
            "--locked",
            "--workspace",
            "--all-features",
            "--lib",
        ])
        .current_dir(&dir);
        let mut arm = cross::cargo();
        arm.args([
            "check",
            "--locked",
            "--workspace",
            "--all-features",
            "--lib",
            "--target",
            cross::TARGET,
        ])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("target-aarch64"));
        let ok = status(&format!("{name}: resolve"), &mut resolve)?
            && status(&format!("{name}: host check"), &mut host)?
            && status(&format!("{name}: aarch64 check"), &mut arm)?;
        println!(
            "lint minimal dependency versions ({}) ... {}",
            members.join(", "),
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            failed.push(format!("minimal dependency versions ({name})"));
        }
    }
    Ok(failed)
}
