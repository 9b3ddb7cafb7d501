//! Target `refvmm_cli`: refvmm's command-line parsing (clap) and its validation into a
//! `Launch` (a `VmConfig` to boot, or a restore request), and the `refvmm ctl` command line.
//!
//! Input: arguments separated by newlines (bytes decoded lossily as UTF-8). If the first
//! argument is `ctl`, the rest is parsed as a `refvmm ctl` command line. In any argument,
//! the placeholders `@kernel`, `@empty`, `@dir`, `@missing` and `@pmem` stand for a readable
//! non-empty file, an empty file, a directory, a path that does not exist and a 2 MiB
//! (sparse) file; they are created once per process under the system temporary directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::Parser;
use refvmm::config::pmem::PmemSource;
use refvmm::config::{
    parse_size, Cli, CtlCli, Launch, RestoreRequest, VmConfig, MAX_MEMORY, MAX_VCPUS, MIN_MEMORY,
};
use refvmm::files::HostFiles;
use refvmm::layout::{pmem_bases, CMDLINE_MAX, PMEM_ALIGN, VIRTIO_SLOTS};

/// Most arguments taken from one input.
pub const MAX_ARGS: usize = 64;

struct Paths {
    kernel: PathBuf,
    empty: PathBuf,
    dir: PathBuf,
    missing: PathBuf,
    pmem: PathBuf,
}

fn paths() -> &'static Paths {
    static PATHS: OnceLock<Paths> = OnceLock::new();
    PATHS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("refvmm-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
        let kernel = dir.join("Image");
        let empty = dir.join("empty");
        std::fs::write(&kernel, b"not really a kernel").expect("temporary file");
        std::fs::write(&empty, b"").expect("temporary file");
        let pmem = dir.join("pmem");
        std::fs::File::create(&pmem)
            .and_then(|f| f.set_len(2 << 20))
            .expect("temporary file");
        Paths {
            kernel,
            empty,
            missing: dir.join("missing"),
            pmem,
            dir,
        }
    })
}

fn expand(arg: &str) -> String {
    let p = paths();
    let show = |path: &Path| path.display().to_string();
    arg.replace("@kernel", &show(&p.kernel))
        .replace("@empty", &show(&p.empty))
        .replace("@dir", &show(&p.dir))
        .replace("@missing", &show(&p.missing))
        .replace("@pmem", &show(&p.pmem))
}

/// The arguments an input stands for (placeholders expanded, program name not included).
pub fn arguments(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data)
        .split('\n')
        .take(MAX_ARGS)
        .map(expand)
        .collect()
}

/// Checks what `Launch::from_cli` promises of a restore request it accepts.
fn check_restore(request: &RestoreRequest) {
    assert!(
        !request.dir.as_os_str().is_empty(),
        "accepted an empty snapshot path"
    );
    assert!(
        request.max_cpus <= MAX_VCPUS,
        "accepted a vCPU limit of {}",
        request.max_cpus
    );
}

/// Checks what `Launch::from_cli` promises of a configuration to boot it accepts.
fn check_config(cli_memory: &str, config: &VmConfig) {
    assert!(
        (MIN_MEMORY..=MAX_MEMORY).contains(&config.memory) && config.memory % (2 << 20) == 0,
        "accepted memory size {}",
        config.memory
    );
    assert_eq!(parse_size(cli_memory), Ok(config.memory), "memory size");
    assert!(
        (1..=MAX_VCPUS).contains(&config.cpus),
        "accepted {} vCPUs",
        config.cpus
    );
    assert!(
        config.cmdline.len() < CMDLINE_MAX,
        "accepted a too long command line"
    );
    assert!(
        !config.cmdline.contains('\0'),
        "accepted a NUL in the command line"
    );
    let kernel = std::fs::metadata(&config.kernel).expect("an accepted kernel exists");
    assert!(
        kernel.is_file() && kernel.len() > 0,
        "accepted kernel is not a file"
    );
    if let Some(initrd) = &config.initrd {
        assert!(initrd.is_file(), "accepted initrd is not a file");
    }
    let sizes: Vec<u64> = config.pmem.iter().map(|p| p.size).collect();
    assert!(
        sizes.len() <= VIRTIO_SLOTS as usize,
        "{} pmem devices",
        sizes.len()
    );
    assert!(
        sizes.iter().all(|&s| s != 0 && s % PMEM_ALIGN == 0),
        "accepted pmem sizes {sizes:?}"
    );
    assert!(
        pmem_bases(config.memory, &sizes).is_some(),
        "accepted pmem regions that do not fit"
    );
    for p in &config.pmem {
        if let PmemSource::File(path) = &p.source {
            let meta = std::fs::metadata(path).expect("an accepted pmem file exists");
            assert!(
                meta.is_file() && meta.len() >= p.size,
                "accepted pmem file {} for {} bytes",
                path.display(),
                p.size
            );
        }
    }
}

/// Parses the input as a refvmm (or `refvmm ctl`) command line and validates it.
///
/// # Panics
///
/// If clap or the validation panics, or an accepted configuration breaks its documented
/// bounds.
pub fn run_refvmm_cli(data: &[u8]) {
    let args = arguments(data);
    if args.first().map(String::as_str) == Some("ctl") {
        if let Ok(ctl) = CtlCli::try_parse_from(
            std::iter::once("refvmm ctl".to_string()).chain(args.into_iter().skip(1)),
        ) {
            assert!(!ctl.request.is_empty(), "ctl accepted no request");
        }
        return;
    }
    let Ok(cli) = Cli::try_parse_from(std::iter::once("refvmm".to_string()).chain(args)) else {
        return;
    };
    let memory = cli.memory.clone();
    match Launch::from_cli(cli, &HostFiles) {
        Ok(Launch::Boot(config)) => check_config(&memory, &config),
        Ok(Launch::Restore(request)) => check_restore(&request),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand_to_the_prepared_paths() {
        let args = arguments(b"--kernel\n@kernel\n--initrd=@empty");

        assert_eq!(args[0], "--kernel");
        assert!(Path::new(&args[1]).is_file());
        assert!(args[2].starts_with("--initrd=") && args[2].ends_with("empty"));
    }

    #[test]
    fn a_minimal_command_line_is_accepted() {
        let cli = Cli::try_parse_from(
            std::iter::once("refvmm".to_string()).chain(arguments(b"--kernel\n@kernel")),
        )
        .unwrap();

        let Launch::Boot(config) = Launch::from_cli(cli, &HostFiles).unwrap() else {
            panic!("a boot");
        };

        assert_eq!(config.memory, 512 << 20);
    }

    #[test]
    fn arguments_are_capped() {
        let data = "x\n".repeat(MAX_ARGS * 2);

        assert_eq!(arguments(data.as_bytes()).len(), MAX_ARGS);
    }
}
