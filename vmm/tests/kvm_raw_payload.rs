//! refvmm runs bare-metal payloads: the freestanding test payload of
//! `vmm/tests/guest/raw_payload` (built by `cargo xtask`, passed in `REFVMM_RAW_PAYLOAD`) boots
//! as a raw binary on 4 vCPUs under real KVM, starts the secondaries with PSCI CPU_ON, prints
//! through the UART, reads its command line and initrd from the device tree, reads an unbacked
//! MMIO address, and powers off — or reports a failed expectation through the UART.
#![cfg(target_arch = "aarch64")]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn refvmm_bin() -> PathBuf {
    std::env::var_os("REFVMM_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_refvmm").into())
}

fn payload() -> PathBuf {
    let p: PathBuf = std::env::var_os("REFVMM_RAW_PAYLOAD")
        .expect("REFVMM_RAW_PAYLOAD names the raw test payload (cargo xtask arm64 test sets it)")
        .into();
    assert!(p.exists(), "{} does not exist", p.display());
    p
}

struct Run {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs refvmm with the payload; kills it after two minutes (a hung guest fails the test).
fn run(extra: &[&str], cmdline: &str) -> Run {
    let payload = payload();
    let mut child = Command::new(refvmm_bin())
        .arg("--kernel")
        .arg(&payload)
        .args(["--memory", "64M", "--cmdline", cmdline])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start refvmm");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait for refvmm").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect refvmm output");
    Run {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn payload_brings_up_four_vcpus_reads_its_command_line_and_powers_off() {
    // Quotes, several spaces and a non-ASCII character must arrive byte for byte.
    let cmdline = "payload.cpus=4 payload.mem=64  note=\"a b\" caf\u{e9}";
    let r = run(&["--cpus", "4"], cmdline);
    let ctx = format!("stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(r.status, Some(0), "{ctx}");
    assert!(
        r.stdout
            .contains(&format!("raw-payload: bootargs [{cmdline}]\n")),
        "{ctx}"
    );
    assert!(
        r.stdout.contains("raw-payload: 4 cpus in the device tree"),
        "{ctx}"
    );
    assert!(
        r.stdout
            .contains("raw-payload: memory 0x80000000 size 0x4000000"),
        "{ctx}"
    );
    for cpu in 1..4 {
        assert!(
            r.stdout
                .contains(&format!("raw-payload: cpu {cpu} up, mpidr {cpu:#x}\n")),
            "{ctx}"
        );
        assert!(
            r.stdout
                .contains(&format!("raw-payload: cpu {cpu} is off again\n")),
            "{ctx}"
        );
    }
    assert!(r.stdout.contains("raw-payload: no initrd"), "{ctx}");
    assert!(r.stdout.ends_with("raw-payload: PASS\n"), "{ctx}");
    assert!(!r.stdout.contains("FAIL"), "{ctx}");
}

#[test]
fn unbacked_mmio_reads_zero_in_the_guest() {
    let r = run(&["--cpus", "1"], "payload.cpus=1");
    let ctx = format!("stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(r.status, Some(0), "{ctx}");
    assert!(
        r.stdout
            .contains("raw-payload: unbacked MMIO at 0x4000000 reads 0x0, and 0x0 after a write"),
        "{ctx}"
    );
}

#[test]
fn initrd_is_placed_and_described_in_chosen() {
    let initrd = std::env::temp_dir().join(format!("raw-payload-initrd-{}", std::process::id()));
    std::fs::write(&initrd, b"RAWINITRD-0123456789abcdef").expect("write the initrd");
    let r = run(
        &[
            "--cpus",
            "2",
            "--initrd",
            initrd.to_str().expect("utf-8 path"),
        ],
        "payload.cpus=2",
    );
    let _ = std::fs::remove_file(&initrd);
    let ctx = format!("stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(r.status, Some(0), "{ctx}");
    assert!(r.stdout.contains(" begins [RAWINITRD-012345]\n"), "{ctx}");
}

#[test]
fn a_wrong_expectation_is_reported_through_the_uart() {
    // The payload is told to expect 3 CPUs and gets 4.
    let r = run(&["--cpus", "4"], "payload.cpus=3");
    let ctx = format!("stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("raw-payload: FAIL: the device tree does not have payload.cpus= CPUs"),
        "{ctx}"
    );
    assert!(!r.stdout.contains("PASS"), "{ctx}");
    // The payload asks for a reset when it fails: refvmm's status for a guest reset.
    assert_eq!(r.status, Some(10), "{ctx}");
}
