//! `refvmm`: the reference VMM for arm64 KVM guests.
//!
//! Exit status: 0 guest powered off; 1 refvmm or KVM failed while running; 2 bad command line;
//! 3 a configuration the host cannot run (bad kernel or initrd, too little memory, MTE
//! unavailable, no KVM); 10 guest reset; 11 guest crashed; 31 a thread broke its seccomp
//! filter (`docs/seccomp.md`). See `docs/refvmm.md`.

#![deny(unsafe_code)]

use clap::Parser;
use refvmm::{config, exit_status};
use std::process::ExitCode;

fn main() -> ExitCode {
    refvmm::logger::init();
    if std::env::args().nth(1).as_deref() == Some("ctl") {
        return ctl();
    }
    let cli = config::Cli::parse();
    let launch = match config::Launch::from_cli(cli, &refvmm::files::HostFiles) {
        Ok(l) => l,
        Err(e) => return config_error(&e),
    };
    run(launch)
}

fn config_error(e: &config::Error) -> ExitCode {
    eprintln!("refvmm: {}", refvmm::error_chain(e));
    ExitCode::from(exit_status::CONFIG)
}

#[cfg(target_arch = "aarch64")]
fn run(launch: config::Launch) -> ExitCode {
    use refvmm::vcpu::VcpuStop;
    use refvmm::{snapshot, vm};
    let result = match launch {
        config::Launch::Boot(cfg) => vm::boot(&cfg),
        config::Launch::Restore(request) => {
            // The snapshot is opened once: its manifest gives the configuration, and the same
            // reader restores it.
            let reader = match snapshot::Reader::open(&request.dir) {
                Ok(r) => r,
                Err(source) => {
                    return config_error(&config::Error::Snapshot {
                        dir: request.dir,
                        source,
                    })
                }
            };
            match request.config(&reader.manifest.shape) {
                Ok(cfg) => vm::restore(&cfg, reader),
                Err(e) => return config_error(&e),
            }
        }
    };
    match result {
        Ok(VcpuStop::Poweroff) => ExitCode::from(exit_status::POWEROFF),
        Ok(VcpuStop::Reset) => {
            eprintln!("refvmm: the guest reset the machine");
            ExitCode::from(exit_status::RESET)
        }
        Ok(VcpuStop::Requested) => {
            eprintln!("refvmm: stopped on request");
            ExitCode::from(exit_status::STOPPED)
        }
        Ok(VcpuStop::Crash) => {
            eprintln!("refvmm: the guest crashed");
            ExitCode::from(exit_status::CRASH)
        }
        Err(e) => {
            eprintln!("refvmm: {}", refvmm::error_chain(&e));
            ExitCode::from(if e.is_user_error() {
                exit_status::CONFIG
            } else {
                exit_status::VMM_ERROR
            })
        }
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn run(_launch: config::Launch) -> ExitCode {
    eprintln!("refvmm: runs only on aarch64 hosts with KVM");
    ExitCode::from(exit_status::CONFIG)
}

/// `refvmm ctl --api-socket <path> <request...>`: sends one request to a running refvmm.
fn ctl() -> ExitCode {
    let cli = config::CtlCli::parse_from(std::env::args().skip(1));
    match refvmm::api::client(&cli.api_socket, &cli.request) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("refvmm ctl: {}", refvmm::error_chain(&e));
            ExitCode::from(exit_status::VMM_ERROR)
        }
    }
}
