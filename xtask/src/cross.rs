//! Cross builds of the workspace for aarch64 with Debian's Rust toolchain.

use crate::util::{workspace_root, Fail};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The aarch64 target triple.
pub const TARGET: &str = "aarch64-unknown-linux-gnu";

/// A cargo for the aarch64 target: Debian's `cargo-web`/`rustc-web` on an x86 host (the rustup
/// toolchain has no aarch64 standard library), the normal one on an arm64 host.
pub(crate) fn cargo() -> Command {
    let debian = std::path::Path::new("/usr/bin/rustc").exists()
        && std::path::Path::new("/usr/bin/cargo").exists()
        && !cfg!(target_arch = "aarch64");
    let mut c = if debian {
        let mut c = Command::new("/usr/bin/cargo");
        c.env("RUSTC", "/usr/bin/rustc");
        c.env_remove("RUSTC_WRAPPER");
        // `cargo clippy` runs the first `cargo-clippy` on PATH: Debian's, whose driver has
        // the aarch64 standard library.
        let mut path = std::ffi::OsString::from("/usr/bin:");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        c.env("PATH", path);
        c
    } else {
        Command::new("cargo")
    };
    c.current_dir(workspace_root());
    c.env("CARGO_TARGET_DIR", target_dir());
    // Line tables only: backtraces keep file and line, and the test executables stay small
    // enough for the emulated machine's initramfs.
    c.env("CARGO_PROFILE_DEV_DEBUG", "line-tables-only");
    c.env("CARGO_PROFILE_TEST_DEBUG", "line-tables-only");
    c
}

/// Where aarch64 artefacts go (apart from host builds: another compiler version).
pub fn target_dir() -> PathBuf {
    workspace_root().join("target").join("arm64")
}

/// Features enabling the KVM parts of the library crates, where they exist.
fn kvm_features() -> Vec<String> {
    // Named, not discovered: a crate that lost its `kvm` feature fails the build loudly.
    ["hypercall-router", "sdei-dispatch", "mte-memory"]
        .iter()
        .map(|c| format!("{c}/kvm"))
        .collect()
}

fn run_json(mut c: Command, test_only: bool) -> Result<Vec<(String, PathBuf)>, Fail> {
    c.args(["--message-format", "json-render-diagnostics"]);
    c.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = c
        .spawn()
        .map_err(|e| Fail::new(format!("cannot run cargo for {TARGET}: {e}")))?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| Fail::new("no cargo stdout"))?;
    let mut found = Vec::new();
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        // Test executables, plus the package binaries integration tests run (refvmm).
        let is_bin = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|x| x == "bin"));
        let wanted = v["profile"]["test"] == true || !test_only || is_bin;
        if let (Some(exe), true) = (v["executable"].as_str(), wanted) {
            let name = v["target"]["name"].as_str().unwrap_or("bin").to_string();
            found.push((name, PathBuf::from(exe)));
        }
    }
    let st = child
        .wait()
        .map_err(|e| Fail::new(format!("cargo did not finish: {e}")))?;
    if !st.success() {
        return Err(Fail::new(format!(
            "the aarch64 build failed ({st}); is the test bed set up (`cargo xtask setup`)?"
        )));
    }
    Ok(found)
}

/// Builds every workspace test executable (static, aarch64) and returns (name, path) pairs.
/// `packages` limits the build to those packages (all but xtask when empty).
pub fn test_executables(packages: &[String]) -> Result<Vec<(String, PathBuf)>, Fail> {
    let mut c = cargo();
    c.args(["test", "--no-run", "--target", TARGET]);
    if packages.is_empty() {
        c.args(["--workspace", "--exclude", "xtask"]);
    } else {
        for p in packages {
            c.args(["-p", p]);
        }
    }
    let feats: Vec<String> = kvm_features()
        .into_iter()
        .filter(|f| packages.is_empty() || packages.iter().any(|p| f.starts_with(&format!("{p}/"))))
        .collect();
    if !feats.is_empty() {
        c.args(["--features", &feats.join(",")]);
    }
    eprintln!("xtask: building aarch64 test executables");
    run_json(c, true)
}

/// Builds an example of the `refvmm` package (release, static aarch64): a guest-side program.
pub fn vmm_example(name: &str) -> Result<PathBuf, Fail> {
    example("refvmm", name, &[])
}

/// Builds example `name` of `package` (release, static aarch64) with `features`.
pub fn example(package: &str, name: &str, features: &[&str]) -> Result<PathBuf, Fail> {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "-p",
        package,
        "--example",
        name,
        "--target",
        TARGET,
    ]);
    if !features.is_empty() {
        c.args(["--features", &features.join(",")]);
    }
    eprintln!("xtask: building {package}'s example {name} for aarch64");
    run_json(c, false)?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
        .ok_or_else(|| Fail::new(format!("cargo built no {name} executable")))
}

/// Builds the aarch64 `refvmm` binary (release) and returns its path.
pub fn refvmm() -> Result<PathBuf, Fail> {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "-p",
        "refvmm",
        "--bins",
        "--target",
        TARGET,
    ]);
    eprintln!("xtask: building refvmm for aarch64");
    run_json(c, false)?
        .into_iter()
        .find(|(n, _)| n == "refvmm")
        .map(|(_, p)| p)
        .ok_or_else(|| Fail::new("cargo built no refvmm executable"))
}

/// Source of the freestanding raw-binary test payload, relative to the workspace root.
pub(crate) const RAW_PAYLOAD_SRC: &str = "vmm/tests/guest/raw_payload";

/// The raw payload's manifest, relative to the workspace root.
pub(crate) const RAW_PAYLOAD_MANIFEST: &str = "vmm/tests/guest/raw_payload/Cargo.toml";

/// Where the raw payload's artefacts go.
fn raw_payload_dir() -> PathBuf {
    target_dir().join("raw-payload")
}

/// An aarch64 cargo in the raw payload's directory, with the flags it is built with.
pub(crate) fn raw_payload_cargo() -> Command {
    let mut c = cargo();
    c.current_dir(workspace_root().join(RAW_PAYLOAD_SRC));
    c.env("CARGO_TARGET_DIR", raw_payload_dir());
    // With the MMU off all data accesses are Device memory, where unaligned accesses fault;
    // the payload is linked at a fixed address (link.ld).
    c.env(
        "RUSTFLAGS",
        "-C target-feature=+strict-align -C relocation-model=static",
    );
    c
}

/// Builds the freestanding aarch64 test payload (`vmm/tests/guest/raw_payload`) and turns it
/// into the flat binary refvmm loads as a raw kernel; returns the binary's path.
pub fn raw_payload() -> Result<PathBuf, Fail> {
    let dir = raw_payload_dir();
    let mut c = raw_payload_cargo();
    c.args(["build", "--release", "--target", TARGET]);
    eprintln!("xtask: building the raw test payload for aarch64");
    let elf = run_json(c, false)?
        .into_iter()
        .find(|(n, _)| n == "raw-payload")
        .map(|(_, p)| p)
        .ok_or_else(|| Fail::new("cargo built no raw-payload executable"))?;
    let bin = dir.join("raw-payload.bin");
    let st = Command::new("aarch64-linux-gnu-objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin)
        .status()
        .map_err(|e| {
            Fail::new(format!(
                "cannot run aarch64-linux-gnu-objcopy ({e}); install binutils-aarch64-linux-gnu \
                 (`cargo xtask setup` does)"
            ))
        })?;
    if !st.success() {
        return Err(Fail::new(format!(
            "aarch64-linux-gnu-objcopy failed ({st})"
        )));
    }
    Ok(bin)
}
