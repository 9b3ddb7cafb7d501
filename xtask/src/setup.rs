//! Idempotent set-up of the emulated arm64 test bed on a Debian-like host.
//!
//! What it does (each step skipped when already done):
//! 1. adds the `arm64` dpkg architecture and the `bookworm-backports` apt suite;
//! 2. installs the cross toolchain (`rustc-web`, `cargo-web`, `libstd-rust-web-dev:arm64`,
//!    `gcc-aarch64-linux-gnu` with the arm64 C library `libc6-dev-arm64-cross`), the host
//!    tools the builds run (`cpio`, `make`, `g++` for libFuzzer, the libraries the kernel
//!    headers' `pahole` links), and QEMU 10 from backports;
//! 3. with Debian's Rust toolchain, its `rustfmt-web` and `rust-web-clippy`; `cargo-fuzz`
//!    from the crate registry;
//! 4. downloads (never installs) the newest Debian arm64 6.12 kernel image and
//!    `busybox-static:arm64`, checks each `.deb` against the checksum apt's signed indexes
//!    give, unpacks them into the cache directory and checks the unpacked files' formats;
//! 5. proves the toolchain works ([`crate::doctor`]) and stops, naming the package, when a
//!    part is missing — before any long build starts.

use crate::util::{cmd_output, cmd_status, Fail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Packages installed from the default suites on an x86_64 host.
///
/// `--no-install-recommends` is used, so everything a build links or runs is listed here
/// rather than left to a recommendation.
pub(crate) const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    // clippy for the aarch64 lint of the fast tier (Debian's driver has the aarch64 std).
    "rust-web-clippy",
    "libstd-rust-web-dev:arm64",
    "gcc-aarch64-linux-gnu",
    // crt1.o, libc.a, libpthread.a, ... for the static aarch64 links.
    "libc6-dev-arm64-cross",
    "cpio",
    "make",
    // xz: the guest scenarios decompress the kernel's `.ko.xz` modules.
    "xz-utils",
    // libFuzzer (built by libfuzzer-sys for cargo-fuzz) is C++.
    "g++",
    // The libraries the kernel headers' unpacked `pahole` runs with (the BTF step).
    "libdw1",
    "libelf1",
    "libbpf1",
    "zlib1g",
];
/// The same tools on an arm64 host, where the native toolchain builds everything.
pub(crate) const APT_PACKAGES_ARM64: &[&str] = &[
    "cpio", "make", "xz-utils", "g++", "libdw1", "libelf1", "libbpf1", "zlib1g",
];
/// The version of cargo-fuzz installed from the crate registry.
pub(crate) const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// QEMU comes from backports: bookworm's 7.2 has an MTE tag-storage bug.
const QEMU_PACKAGE: &str = "qemu-system-arm";
const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/bookworm-backports.sources";
const BACKPORTS_SOURCE: &str = "Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// Where the fetched artefacts live: outside the clone, shared between runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("REFVMM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/refvmm-testbed"))
}

/// Paths of the unpacked test-bed artefacts.
#[derive(Debug, Clone)]
pub struct Testbed {
    /// The arm64 kernel `Image` for the emulated machine (and for guests).
    pub kernel: PathBuf,
    /// The unpacked kernel package (modules under `lib/modules/<ver>`).
    pub kernel_root: PathBuf,
    /// The kernel version string, e.g. `6.12.73+deb12-arm64`.
    pub kernel_version: String,
    /// A static arm64 busybox.
    pub busybox: PathBuf,
}

/// Returns the test bed if it is already set up (no root or network needed).
pub fn existing() -> Option<Testbed> {
    let cache = cache_dir();
    let version = fs::read_to_string(cache.join("kernel.version")).ok()?;
    let version = version.trim().to_string();
    let kernel_root = cache.join("kernel").join(&version);
    let kernel = kernel_root.join("boot").join(format!("vmlinuz-{version}"));
    let busybox = cache.join("busybox/bin/busybox");
    (kernel.is_file() && busybox.is_file()).then_some(Testbed {
        kernel,
        kernel_root,
        kernel_version: version,
        busybox,
    })
}

/// Runs the whole set-up; cheap when everything is already in place.
pub fn run() -> Result<Testbed, Fail> {
    let on_arm64 = cfg!(target_arch = "aarch64");
    let mut missing = missing_packages(on_arm64);
    let cache = cache_dir();
    if missing.is_empty() && qemu_ok(on_arm64) && rust_tools_missing().is_empty() {
        if let Some(tb) = existing() {
            eprintln!(
                "xtask: test bed already set up (kernel {} in {})",
                tb.kernel_version,
                tb.kernel_root.display()
            );
            crate::doctor::check_all()?;
            return Ok(tb);
        }
    }
    require_root_and_apt()?;
    let mut need_update = false;
    if !on_arm64 {
        let foreign = cmd_output(Command::new("dpkg").arg("--print-foreign-architectures"))?;
        if !foreign.lines().any(|l| l.trim() == "arm64") {
            eprintln!("xtask: adding the arm64 dpkg architecture");
            cmd_status(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
            need_update = true;
        }
    }
    if !Path::new(BACKPORTS_FILE).exists() && !backports_configured() {
        eprintln!("xtask: adding the bookworm-backports apt suite");
        fs::write(BACKPORTS_FILE, BACKPORTS_SOURCE)
            .map_err(|e| Fail::new(format!("cannot write {BACKPORTS_FILE}: {e}")))?;
        need_update = true;
    }
    if need_update || !missing.is_empty() || !qemu_ok(on_arm64) || existing().is_none() {
        apt_update()?;
    }
    missing = missing_packages(on_arm64);
    if !missing.is_empty() {
        eprintln!("xtask: installing {}", missing.join(" "));
        apt_install(&[], &missing)?;
    }
    if !qemu_ok(on_arm64) {
        eprintln!("xtask: installing QEMU 10 from bookworm-backports");
        apt_install(&["-t", "bookworm-backports"], &[QEMU_PACKAGE.to_string()])?;
        if !qemu_ok(on_arm64) {
            return Err(Fail::new(
                "QEMU >= 10 is still not installed after installing qemu-system-arm from \
                 bookworm-backports; check `apt-cache policy qemu-system-arm`",
            ));
        }
    }
    install_rust_tools()?;
    let tb = fetch_artefacts(&cache)?;
    crate::doctor::check_all()?;
    Ok(tb)
}

/// Host-side Rust tools the test command runs that are not there yet.
fn rust_tools_missing() -> Vec<&'static str> {
    let mut v = Vec::new();
    for (sub, name) in [
        ("fmt", "rustfmt"),
        ("clippy", "clippy"),
        ("fuzz", "cargo-fuzz"),
    ] {
        if !cargo_subcommand_runs(sub) {
            v.push(name);
        }
    }
    v
}

/// `cargo SUB --version` exits 0.
pub(crate) fn cargo_subcommand_runs(sub: &str) -> bool {
    Command::new("cargo")
        .args([sub, "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True when the cargo running this tool is Debian's (`/usr/bin/cargo`), not rustup's.
pub(crate) fn debian_toolchain() -> bool {
    std::env::var_os("CARGO").is_some_and(|c| Path::new(&c).starts_with("/usr/bin"))
}

/// rustfmt and clippy (Debian's packages for Debian's toolchain, rustup components for
/// rustup's) and cargo-fuzz (from the crate registry).
fn install_rust_tools() -> Result<(), Fail> {
    let missing = rust_tools_missing();
    let needs = |t: &str| missing.contains(&t);
    let mut debs = Vec::new();
    let mut components = Vec::new();
    for (tool, deb) in [("rustfmt", "rustfmt-web"), ("clippy", "rust-web-clippy")] {
        if needs(tool) {
            if debian_toolchain() {
                debs.push(deb.to_string());
            } else {
                components.push(tool);
            }
        }
    }
    if !debs.is_empty() {
        eprintln!("xtask: installing {}", debs.join(" "));
        apt_install(&[], &debs)?;
    }
    if !components.is_empty() {
        eprintln!("xtask: rustup component add {}", components.join(" "));
        cmd_status(
            Command::new("rustup")
                .arg("component")
                .arg("add")
                .args(&components),
        )
        .map_err(|e| {
            Fail::new(format!(
                "{e}\n  the test command needs {} for the Rust toolchain in use",
                components.join(" and ")
            ))
        })?;
    }
    if needs("cargo-fuzz") {
        eprintln!("xtask: cargo install cargo-fuzz {CARGO_FUZZ_VERSION} (from the crate registry)");
        cmd_status(Command::new("cargo").args([
            "install",
            "--locked",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))
        .map_err(|e| {
            Fail::new(format!(
                "{e}\n  the crate registry must be reachable to install cargo-fuzz"
            ))
        })?;
    }
    Ok(())
}

fn require_root_and_apt() -> Result<(), Fail> {
    let uid = cmd_output(Command::new("id").arg("-u"))?;
    if uid.trim() != "0" {
        return Err(Fail::new(
            "set-up of the arm64 test bed needs root (it adds an apt suite and installs \
             packages); run it as root, e.g. `sudo -E cargo xtask setup`",
        ));
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        return Err(Fail::new(
            "apt-get is not available: the test bed needs a Debian-like host with apt \
             (Debian 12 'bookworm' is what it is tested on)",
        ));
    }
    Ok(())
}

fn backports_configured() -> bool {
    let mut found = false;
    for dir in ["/etc/apt/sources.list.d", "/etc/apt"] {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                let is_src = p.extension().is_some_and(|x| x == "list" || x == "sources");
                if is_src {
                    if let Ok(s) = fs::read_to_string(&p) {
                        found |= s.lines().any(|l| {
                            !l.trim_start().starts_with('#') && l.contains("bookworm-backports")
                        });
                    }
                }
            }
        }
    }
    found
}

fn apt_update() -> Result<(), Fail> {
    eprintln!("xtask: apt-get update");
    cmd_status(Command::new("apt-get").args(["-q", "update"])).map_err(|e| {
        Fail::new(format!(
            "{e}\n  the Debian package registry must be reachable (deb.debian.org or its mirror)"
        ))
    })
}

fn apt_install(extra: &[&str], pkgs: &[String]) -> Result<(), Fail> {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-q", "-y", "--no-install-recommends", "install"])
        .args(extra)
        .args(pkgs);
    cmd_status(&mut c)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn missing_packages(on_arm64: bool) -> Vec<String> {
    let list = if on_arm64 {
        APT_PACKAGES_ARM64
    } else {
        APT_PACKAGES
    };
    list.iter()
        .filter(|p| !installed(p))
        .map(|p| p.to_string())
        .collect()
}

/// QEMU's major version, if `qemu-system-aarch64` runs.
pub fn qemu_major() -> Option<u32> {
    let out = Command::new("qemu-system-aarch64")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ver = text.split("version ").nth(1)?;
    ver.split('.').next()?.trim().parse().ok()
}

fn qemu_ok(on_arm64: bool) -> bool {
    on_arm64 || qemu_major().is_some_and(|v| v >= 10)
}

/// Picks the newest `linux-image-6.12.N+deb12-arm64` that apt knows of.
fn newest_kernel_package() -> Result<(String, String), Fail> {
    let names = cmd_output(Command::new("apt-cache").args(["pkgnames", "linux-image-6.12."]))?;
    let mut best: Option<(u32, String)> = None;
    for name in names.lines().map(str::trim) {
        let Some(rest) = name.strip_prefix("linux-image-6.12.") else {
            continue;
        };
        let Some(patch) = rest.strip_suffix("+deb12-arm64") else {
            continue;
        };
        let Ok(n) = patch.parse::<u32>() else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, name.to_string()));
        }
    }
    let (_, pkg) = best.ok_or_else(|| {
        Fail::new(
            "apt knows no linux-image-6.12.*+deb12-arm64 package: the arm64 architecture \
             and bookworm-updates/security must be in apt's sources (run as root to set up)",
        )
    })?;
    let version = pkg.trim_start_matches("linux-image-").to_string();
    Ok((format!("{pkg}:arm64"), version))
}

/// Downloads `pkg` with apt into `dir`, checks its SHA256 against apt's index, unpacks it.
pub(crate) fn download_verified(pkg: &str, work: &Path, dest: &Path) -> Result<(), Fail> {
    fs::create_dir_all(work)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", work.display())))?;
    for old in fs::read_dir(work).into_iter().flatten().flatten() {
        let _ = fs::remove_file(old.path());
    }
    eprintln!("xtask: downloading {pkg}");
    cmd_status(
        Command::new("apt-get")
            .current_dir(work)
            .args(["-q", "download", pkg]),
    )?;
    let deb = fs::read_dir(work)
        .map_err(|e| Fail::new(format!("cannot read {}: {e}", work.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| Fail::new(format!("apt-get download {pkg} produced no .deb")))?;
    let show = cmd_output(Command::new("apt-cache").args(["show", "--no-all-versions", pkg]))?;
    let want = show
        .lines()
        .find_map(|l| l.strip_prefix("SHA256: "))
        .ok_or_else(|| Fail::new(format!("apt-cache show {pkg} gives no SHA256")))?
        .trim()
        .to_string();
    let got = cmd_output(Command::new("sha256sum").arg(&deb))?;
    let got = got.split_whitespace().next().unwrap_or_default();
    if got != want {
        return Err(Fail::new(format!(
            "checksum mismatch for {}: apt index says {want}, file has {got}",
            deb.display()
        )));
    }
    let _ = fs::remove_dir_all(dest);
    fs::create_dir_all(dest)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", dest.display())))?;
    cmd_status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dest))?;
    let _ = fs::remove_file(&deb);
    Ok(())
}

fn fetch_artefacts(cache: &Path) -> Result<Testbed, Fail> {
    fs::create_dir_all(cache)
        .map_err(|e| Fail::new(format!("cannot create cache {}: {e}", cache.display())))?;
    let (kpkg, kver) = newest_kernel_package()?;
    let kroot = cache.join("kernel").join(&kver);
    let kernel = kroot.join("boot").join(format!("vmlinuz-{kver}"));
    if !kernel.is_file() {
        download_verified(&kpkg, &cache.join("download"), &kroot)?;
    }
    check_arm64_image(&kernel)?;
    let bb_root = cache.join("busybox");
    let busybox = bb_root.join("bin/busybox");
    if !busybox.is_file() {
        download_verified("busybox-static:arm64", &cache.join("download"), &bb_root)?;
    }
    check_aarch64_elf(&busybox)?;
    fs::write(cache.join("kernel.version"), &kver)
        .map_err(|e| Fail::new(format!("cannot write to the cache: {e}")))?;
    eprintln!(
        "xtask: test bed ready (kernel {kver}, cache {})",
        cache.display()
    );
    Ok(Testbed {
        kernel,
        kernel_root: kroot,
        kernel_version: kver,
        busybox,
    })
}

/// An arm64 Linux `Image` carries the magic "ARM\x64" at offset 56.
fn check_arm64_image(p: &Path) -> Result<(), Fail> {
    let data = fs::read(p).map_err(|e| Fail::new(format!("cannot read {}: {e}", p.display())))?;
    if data.get(56..60) != Some(b"ARM\x64") {
        return Err(Fail::new(format!("{} is not an arm64 Image", p.display())));
    }
    Ok(())
}

/// ELF, 64-bit, machine EM_AARCH64 (183).
fn check_aarch64_elf(p: &Path) -> Result<(), Fail> {
    let data = fs::read(p).map_err(|e| Fail::new(format!("cannot read {}: {e}", p.display())))?;
    let ok = data.get(0..4) == Some(b"\x7fELF")
        && data.get(4) == Some(&2)
        && data.get(18..20) == Some(&183u16.to_le_bytes()[..]);
    if !ok {
        return Err(Fail::new(format!(
            "{} is not an aarch64 ELF binary",
            p.display()
        )));
    }
    Ok(())
}
