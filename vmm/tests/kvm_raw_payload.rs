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
    // vCPUs 1 to 3 are off (asleep in KVM_RUN) when vCPU 0 powers the VM off: the end of the
    // VM must wake them and see them return.
    assert!(!r.stderr.contains("still busy"), "{ctx}");
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
    let wait_for = |needle: &[u8], seen: &mut Vec<u8>| -> Result<(), String> {
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

/// A refvmm running the payload, its console bytes collected by a reader thread.
struct Running {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    rx: std::sync::mpsc::Receiver<u8>,
    seen: Vec<u8>,
}

/// An empty scratch directory for one test.
fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("raw-payload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Running {
    /// The payload on `cpus` vCPUs with 64 MiB, SDEI on and the API at `sock`; `args` are
    /// payload options after `payload.cpus=N`.
    fn with_api(cpus: u32, sock: &std::path::Path, args: &str) -> Running {
        Running::start(&[
            "--kernel",
            payload().to_str().unwrap(),
            "--memory",
            "64M",
            "--cpus",
            &cpus.to_string(),
            "--sdei",
            "--api-socket",
            sock.to_str().unwrap(),
            "--cmdline",
            &format!("payload.cpus={cpus} {args}"),
        ])
    }

    fn start(args: &[&str]) -> Running {
        use std::io::Read;
        let mut child = Command::new(refvmm_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start refvmm");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<u8>();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            while matches!(stdout.read(&mut b), Ok(1)) {
                if tx.send(b[0]).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            stdin,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits (30 s at most) for `needle` in what arrives from now on.
    fn wait_for(&mut self, needle: &[u8]) {
        let start = self.seen.len();
        while !self.seen[start..]
            .windows(needle.len())
            .any(|w| w == needle)
        {
            match self.rx.recv_timeout(Duration::from_secs(30)) {
                Ok(b) => self.seen.push(b),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no {:?} within 30 s; output:\n{}",
                        String::from_utf8_lossy(needle),
                        String::from_utf8_lossy(&self.seen)
                    );
                }
            }
        }
    }

    /// Everything that has arrived so far, without waiting.
    fn drain(&mut self) -> String {
        while let Ok(b) = self.rx.try_recv() {
            self.seen.push(b);
        }
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Waits for the payload's PASS line and a clean power-off (exit status 0), then removes
    /// the test's scratch directory `tmp`.
    fn expect_pass(mut self, tmp: &std::path::Path) {
        self.wait_for(b"raw-payload: PASS\n");
        let status = self.child.wait().unwrap().code();
        let _ = std::fs::remove_dir_all(tmp);
        assert_eq!(status, Some(0), "{}", self.drain());
    }

    fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stdin
            .write_all(bytes)
            .expect("write to refvmm's stdin");
    }
}

fn api(sock: &std::path::Path, request: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    answer.trim_end().to_string()
}

/// A snapshot taken while the guest's SDEI handler runs: the handler finishes on the restored
/// side, later events and UART interrupts are delivered, and the guest powers off cleanly.
#[test]
fn a_snapshot_taken_inside_an_sdei_handler_completes_after_restore() {
    let tmp = scratch_dir("snap");
    let (sock_a, sock_b, dir) = (tmp.join("a.sock"), tmp.join("b.sock"), tmp.join("snap"));
    let mut a = Running::with_api(1, &sock_a, "payload.latency=1 payload.sdeispin=8000");
    a.wait_for(b"latency ready\n");
    assert_eq!(api(&sock_a, "sdei-signal 0x1000000 0"), "ok pending");
    a.wait_for(b"s");
    let snap = api(&sock_a, &format!("snapshot {}", dir.display()));
    assert!(snap.starts_with("ok snapshot"), "{snap}");
    let out = a.drain();
    assert!(
        !out.ends_with('S'),
        "the handler finished before the snapshot; the test proves nothing: {out}"
    );
    assert_eq!(api(&sock_a, "quit"), "ok quitting");
    assert_eq!(a.child.wait().unwrap().code(), Some(12));

    let mut b = Running::start(&[
        "--restore",
        dir.to_str().unwrap(),
        "--api-socket",
        sock_b.to_str().unwrap(),
    ]);
    // The handler interrupted by the snapshot finishes its spin and completes.
    b.wait_for(b"S");
    // A new event, and a UART interrupt, are delivered on the restored side.
    assert_eq!(api(&sock_b, "sdei-signal 0x1000000 0"), "ok pending");
    b.wait_for(b"S");
    b.send(b"x");
    b.wait_for(b"I");
    b.send(b"q");
    b.expect_pass(&tmp);
}

/// A client that sends half a request and then nothing holds only the API thread: console
/// input still reaches the guest while that client waits for its answer, which comes when its
/// request deadline passes; the API then serves the next client.
#[test]
fn a_slow_api_client_does_not_hold_the_main_loop() {
    use std::io::{BufRead, BufReader, Read, Write};
    let tmp = scratch_dir("slow-client");
    let sock = tmp.join("vm.sock");
    let mut vm = Running::with_api(1, &sock, "payload.latency=1");
    vm.wait_for(b"latency ready\n");
    let mut slow = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    slow.write_all(b"sta").unwrap();
    // The API thread is now waiting for the rest of the line.
    std::thread::sleep(Duration::from_millis(200));
    vm.send(b"x");
    vm.wait_for(b"I");
    slow.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 128];
    let early = slow.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the slow client was answered before console input got through: {early:?}"
    );
    slow.set_nonblocking(false).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    BufReader::new(&slow).read_line(&mut answer).unwrap();
    assert!(
        answer.starts_with("error Bad request: the request did not arrive within"),
        "{answer:?}"
    );
    assert_eq!(api(&sock, "status"), "ok running");
    vm.send(b"q");
    vm.expect_pass(&tmp);
}

/// PSCI power transitions reach the SDEI dispatcher: cpu 1 turns itself off inside its event
/// handler (registered, enabled, handler running); while it is off an event raised for it
/// finds nothing registered; after `CPU_ON` it starts masked with nothing registered, and once
/// it registers again it takes the next event.
#[test]
fn cpu_off_and_cpu_on_reset_the_sdei_state_of_a_vcpu() {
    let tmp = scratch_dir("hotplug");
    let sock = tmp.join("vm.sock");
    let mut vm = Running::with_api(2, &sock, "payload.hotplug=1");
    vm.wait_for(b"cpu 1 armed, round 1\n");
    assert_eq!(api(&sock, "sdei-signal 0x1000000 1"), "ok pending");
    vm.wait_for(b"cpu 1 is off, its handler unfinished\n");
    assert_eq!(
        api(&sock, "sdei-signal 0x1000000 1"),
        "ok not-registered",
        "an event raised for a vCPU that is off must not wait for it"
    );
    vm.send(b"g");
    vm.wait_for(b"cpu 1 armed, round 2\n");
    assert_eq!(api(&sock, "sdei-signal 0x1000000 1"), "ok pending");
    vm.expect_pass(&tmp);
}

/// The virtual timer keeps interrupting across snapshot and restore, also when the snapshot
/// finds its interrupt active (the payload's tick handler stays half of each period).
#[test]
fn the_virtual_timer_keeps_ticking_across_snapshots() {
    let tmp = scratch_dir("tick");
    let sock = tmp.join("0.sock");
    let mut vm = Running::with_api(1, &sock, "payload.latency=1 payload.tick=10");
    vm.wait_for(b"tt");
    let mut sock = sock;
    for round in 1..=4 {
        let dir = tmp.join(format!("snap{round}"));
        let snap = api(&sock, &format!("snapshot {}", dir.display()));
        assert!(snap.starts_with("ok snapshot"), "{snap}");
        assert_eq!(api(&sock, "quit"), "ok quitting");
        assert_eq!(vm.child.wait().unwrap().code(), Some(12));
        sock = tmp.join(format!("{round}.sock"));
        vm = Running::start(&[
            "--restore",
            dir.to_str().unwrap(),
            "--api-socket",
            sock.to_str().unwrap(),
        ]);
        // Two more `t`: 100 more timer interrupts after restore.
        vm.wait_for(b"tt");
    }
    vm.send(b"q");
    vm.expect_pass(&tmp);
}

/// A snapshot whose components do not fit its manifest's VM (each one intact, with a correct
/// checksum, but taken from a VM of another shape) is refused with a clear error, status 3.
#[test]
fn a_snapshot_with_components_of_another_vm_is_refused() {
    use refvmm::snapshot::{Reader, Writer};
    let tmp = scratch_dir("mismatch");
    let take = |cpus: u32| {
        let sock = tmp.join(format!("{cpus}.sock"));
        let dir = tmp.join(format!("snap{cpus}"));
        let mut vm = Running::with_api(cpus, &sock, "payload.latency=1");
        vm.wait_for(b"latency ready\n");
        let snap = api(&sock, &format!("snapshot {}", dir.display()));
        assert!(snap.starts_with("ok snapshot"), "{snap}");
        assert_eq!(api(&sock, "quit"), "ok quitting");
        assert_eq!(vm.child.wait().unwrap().code(), Some(12));
        Reader::open(&dir).expect("read back the snapshot")
    };
    let (two, one) = (take(2), take(1));
    for (foreign, want) in [
        ("vcpus.bin", "1 vCPU states for 2 vCPUs"),
        ("gic.bin", "GIC state"),
    ] {
        // The two-vCPU snapshot with one component from the one-vCPU VM, manifest rewritten.
        let dir = tmp.join(format!("mixed-{foreign}"));
        let mut w = Writer::create(&dir).unwrap();
        for name in [
            "vcpus.bin",
            "gic.bin",
            "memory.bin",
            "sdei.bin",
            "serial.bin",
        ] {
            let from = if name == foreign { &one } else { &two };
            w.put(name, &from.read(name).unwrap()).unwrap();
        }
        w.finish(two.manifest.shape.clone(), two.manifest.mpidrs.clone())
            .unwrap();
        let out = Command::new(refvmm_bin())
            .arg("--restore")
            .arg(&dir)
            .output()
            .expect("run refvmm");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{foreign}: {err}");
        assert!(err.contains(want), "{foreign}: expected {want:?} in {err}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
