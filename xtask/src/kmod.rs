//! Builds the SDEI test kernel module (`vmm/tests/guest/sdei_test_module`) for the Debian arm64
//! kernel of the test bed.
//!
//! The module build needs the kernel's headers and Kbuild tooling. They come from Debian's
//! package registry with `apt-get download` (never installed): the arm64 headers, the
//! architecture-independent common headers, the host's `linux-kbuild` (fixdep, modpost, ...)
//! and the host's `pahole` for the BTF step. Each `.deb` is checked against apt's signed
//! index, unpacked on its own, and merged into one tree under the cache, so that the relative
//! links between the packages resolve. A marker file makes the download a one-time cost.
//! The module itself is built in a temporary copy of its source on every call (about 2 s).

use crate::setup::{cache_dir, download_verified, Testbed};
use crate::util::{cmd_output, cmd_status, workspace_root, Fail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The module's source directory, relative to the workspace root.
const MODULE_SRC: &str = "vmm/tests/guest/sdei_test_module";
/// The module's source files copied into the build directory.
const MODULE_FILES: &[&str] = &["sdei_test.c", "Kbuild"];
/// Written into the headers tree once every package is unpacked.
const MARKER: &str = ".refvmm-complete";

/// Builds `sdei_test.ko` for `tb`'s kernel and returns its path.
pub fn build_sdei_module(tb: &Testbed) -> Result<PathBuf, Fail> {
    let pkg_ver = package_version(&tb.kernel_version)?;
    let root = cache_dir().join("headers").join(&pkg_ver);
    ensure_headers(&pkg_ver, &root)?;
    let tree = root
        .join("usr/src")
        .join(format!("linux-headers-{}", tb.kernel_version));
    let common_makefile = root
        .join("usr/src")
        .join(format!("linux-headers-{pkg_ver}-common"))
        .join("Makefile");
    let pahole = root.join("usr/bin/pahole");
    for p in [&tree, &common_makefile, &pahole] {
        if !p.exists() {
            return Err(Fail::new(format!(
                "{} is missing from the unpacked headers; remove {} and run again",
                p.display(),
                root.display()
            )));
        }
    }
    check_pahole_runs(&pahole)?;

    let build = std::env::temp_dir().join(format!("refvmm-kmod-{}", std::process::id()));
    let result = build_in(&build, &tree, &common_makefile, &pahole, &tb.kernel_version);
    let _ = fs::remove_dir_all(&build);
    result
}

/// `6.12.117+deb12-arm64` → `6.12.117+deb12`: the version the package names carry.
fn package_version(kernel_version: &str) -> Result<String, Fail> {
    kernel_version
        .strip_suffix("-arm64")
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            Fail::new(format!(
                "kernel version {kernel_version} does not end in -arm64: cannot name its \
                 headers packages"
            ))
        })
}

/// The packages whose union is a module build tree for the arm64 kernel `pkg_ver`.
fn header_packages(pkg_ver: &str) -> Vec<String> {
    vec![
        format!("linux-headers-{pkg_ver}-arm64:arm64"),
        format!("linux-headers-{pkg_ver}-common"),
        format!("linux-kbuild-{pkg_ver}"),
        "pahole".to_string(),
    ]
}

/// Downloads and unpacks the headers into `root` unless a previous run completed it.
fn ensure_headers(pkg_ver: &str, root: &Path) -> Result<(), Fail> {
    let packages = header_packages(pkg_ver);
    let want = packages.join("\n");
    if fs::read_to_string(root.join(MARKER)).is_ok_and(|s| s == want) {
        return Ok(());
    }
    let _ = fs::remove_dir_all(root);
    fs::create_dir_all(root)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", root.display())))?;
    // Siblings of `root` (not `with_extension`: the version has dots in it).
    let sibling = |what: &str| {
        let mut name = root.as_os_str().to_os_string();
        name.push(what);
        PathBuf::from(name)
    };
    let staging = sibling(".staging");
    let work = sibling(".download");
    for pkg in &packages {
        download_verified(pkg, &work, &staging)?;
        // `cp -a SRC/. DEST` merges one package's tree into the shared one, keeping links.
        let mut src = staging.clone().into_os_string();
        src.push("/.");
        cmd_status(Command::new("cp").arg("-a").arg(&src).arg(root))?;
    }
    let _ = fs::remove_dir_all(&staging);
    let _ = fs::remove_dir_all(&work);
    fs::write(root.join(MARKER), want)
        .map_err(|e| Fail::new(format!("cannot write to {}: {e}", root.display())))?;
    Ok(())
}

/// The unpacked `pahole` runs with the host's libraries (libdw, libelf, libbpf, zlib).
fn check_pahole_runs(pahole: &Path) -> Result<(), Fail> {
    cmd_output(Command::new(pahole).arg("--version"))
        .map(drop)
        .map_err(|e| {
            Fail::new(format!(
                "{e}\n  pahole needs the host libraries libdw1, libelf1, libbpf1 and zlib1g, \
                 which `cargo xtask setup` installs (as root)"
            ))
        })
}

/// Copies the module source into `build`, runs Kbuild there and returns the module's path.
fn build_in(
    build: &Path,
    tree: &Path,
    common_makefile: &Path,
    pahole: &Path,
    kernel_version: &str,
) -> Result<PathBuf, Fail> {
    let src = workspace_root().join(MODULE_SRC);
    let _ = fs::remove_dir_all(build);
    fs::create_dir_all(build)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", build.display())))?;
    for f in MODULE_FILES {
        fs::copy(src.join(f), build.join(f)).map_err(|e| {
            Fail::new(format!(
                "cannot copy {} to {}: {e}",
                src.join(f).display(),
                build.display()
            ))
        })?;
    }
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(tree)
        .arg("-f")
        .arg(common_makefile)
        .arg(format!("M={}", build.display()))
        .arg(format!("PAHOLE={}", pahole.display()))
        .arg("ARCH=arm64");
    if !cfg!(target_arch = "aarch64") {
        make.arg("CROSS_COMPILE=aarch64-linux-gnu-");
    }
    // Kbuild's progress goes to stderr: stdout carries only the module's path.
    make.arg("modules").stdout(std::io::stderr());
    eprintln!("xtask: building the SDEI test module for {kernel_version}");
    cmd_status(&mut make)?;
    let built = build.join("sdei_test.ko");
    check_module(&built)?;
    let out_dir = workspace_root()
        .join("target")
        .join("kmod")
        .join(kernel_version);
    fs::create_dir_all(&out_dir)
        .map_err(|e| Fail::new(format!("cannot create {}: {e}", out_dir.display())))?;
    let out = out_dir.join("sdei_test.ko");
    fs::copy(&built, &out).map_err(|e| {
        Fail::new(format!(
            "cannot copy {} to {}: {e}",
            built.display(),
            out.display()
        ))
    })?;
    Ok(out)
}

/// A relocatable (ET_REL) 64-bit little-endian ELF for EM_AARCH64 (183).
fn check_module(p: &Path) -> Result<(), Fail> {
    let data = fs::read(p).map_err(|e| Fail::new(format!("cannot read {}: {e}", p.display())))?;
    let ok = data.get(0..4) == Some(b"\x7fELF")
        && data.get(4) == Some(&2)
        && data.get(5) == Some(&1)
        && data.get(16..18) == Some(&1u16.to_le_bytes()[..])
        && data.get(18..20) == Some(&183u16.to_le_bytes()[..]);
    if !ok {
        return Err(Fail::new(format!(
            "{} is not an aarch64 kernel module (relocatable ELF)",
            p.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_version_drops_the_flavour_suffix() {
        let v = package_version("6.12.117+deb12-arm64").expect("an arm64 version");
        assert_eq!(v, "6.12.117+deb12");
        assert_eq!(
            header_packages(&v),
            [
                "linux-headers-6.12.117+deb12-arm64:arm64",
                "linux-headers-6.12.117+deb12-common",
                "linux-kbuild-6.12.117+deb12",
                "pahole",
            ]
        );
    }

    #[test]
    fn package_version_rejects_other_flavours() {
        assert!(package_version("6.12.117+deb12-amd64").is_err());
        assert!(package_version("-arm64").is_err());
    }

    #[test]
    fn check_module_accepts_only_an_aarch64_relocatable_elf() {
        let dir = std::env::temp_dir().join(format!("kmod-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("x.ko");
        let mut elf = vec![0u8; 64];
        elf[0..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18..20].copy_from_slice(&183u16.to_le_bytes());
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        fs::write(&p, &elf).expect("write");
        assert!(check_module(&p).is_err());
        elf[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        fs::write(&p, &elf).expect("write");
        assert!(check_module(&p).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }
}
