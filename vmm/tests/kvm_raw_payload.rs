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

/// SDEI events (and UART interrupts) raised while the payload makes back-to-back MMIO reads:
/// most arrive while the vCPU is out of the guest with a read still to complete. Each event
/// must enter the handler at its first instruction (the payload checks) and print `S`; the
/// guest must keep running and power off cleanly afterwards.
#[test]
fn sdei_events_raised_during_mmio_exits_enter_the_handler_at_its_entry_point() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc::channel;

    let sock = std::env::temp_dir().join(format!("raw-payload-sdei-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new(refvmm_bin())
        .arg("--kernel")
        .arg(payload())
        .args(["--memory", "64M", "--cpus", "1", "--sdei", "--api-socket"])
        .arg(&sock)
        .args(["--cmdline", "payload.cpus=1 payload.latency=2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start refvmm");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = channel::<u8>();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while matches!(stdout.read(&mut b), Ok(1)) {
            if tx.send(b[0]).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &[u8], seen: &mut Vec<u8>| -> Result<(), String> {
        let start = seen.len();
        loop {
            if seen[start..].windows(needle.len()).any(|w| w == needle) {
                return Ok(());
            }
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(b) => seen.push(b),
                Err(_) => {
                    return Err(format!(
                        "no {:?} within 30 s; output so far:\n{}",
                        String::from_utf8_lossy(needle),
                        String::from_utf8_lossy(seen)
                    ))
                }
            }
        }
    };
    let mut outcome = wait_for(b"latency ready\n", &mut seen);
    for round in 0..200 {
        if outcome.is_err() {
            break;
        }
        let mut api = UnixStream::connect(&sock).expect("connect to the API socket");
        api.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        api.write_all(b"sdei-signal 0x1000000 0\n").unwrap();
        let mut answer = String::new();
        BufReader::new(api).read_line(&mut answer).unwrap();
        assert_eq!(answer, "ok pending\n", "round {round}");
        outcome = wait_for(b"S", &mut seen).map_err(|e| format!("round {round}, SDEI: {e}"));
        if outcome.is_ok() && round % 4 == 0 {
            stdin.write_all(b"x").unwrap();
            outcome = wait_for(b"I", &mut seen).map_err(|e| format!("round {round}, SPI: {e}"));
        }
    }
    if outcome.is_ok() {
        stdin.write_all(b"q").unwrap();
        outcome = wait_for(b"raw-payload: PASS\n", &mut seen);
    }
    if outcome.is_err() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait for refvmm");
    let _ = std::fs::remove_file(&sock);
    let text = String::from_utf8_lossy(&seen);
    if let Err(e) = outcome {
        panic!("{e}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(!text.contains("FAIL"), "{text}");
    let marks = text
        .split_once("latency ready\n")
        .and_then(|(_, rest)| rest.split_once("\nraw-payload: PASS"))
        .map(|(marks, _)| marks)
        .unwrap_or_default();
    assert_eq!(marks.matches('S').count(), 200, "{text}");
    assert_eq!(marks.matches('I').count(), 50, "{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
}
