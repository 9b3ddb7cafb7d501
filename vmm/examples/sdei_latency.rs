//! Ratio benchmark (run by `cargo xtask bench` in the emulated arm64 machine): how long refvmm
//! takes from raising an SDEI event to the guest's handler, against injecting an SPI to the
//! guest's IRQ handler, measured in the same run.
//!
//! Usage: `sdei_latency <refvmm> <raw-payload.bin> [rounds]`
//!
//! It boots the raw test payload in its latency mode (`payload.latency=1`) on refvmm with
//! `--sdei` and an API socket. The payload's IRQ handler prints `I` for each byte the UART
//! receives, and its SDEI handler prints `S`. Alternating, it then
//! - writes one byte to refvmm's stdin (refvmm's console raises the UART's SPI) and times until
//!   `I` appears on refvmm's stdout;
//! - connects to the API socket, then times from sending `sdei-signal 0x1000000 0` (refvmm
//!   raises its private event on vCPU 0, kicks it out of `KVM_RUN` and rewrites its registers)
//!   until `S` appears.
//!
//! Both paths start with the same kind of work on refvmm's main thread (an epoll wake-up and a
//! read) and end with the same UART write by the guest, so their ratio compares the delivery
//! mechanisms. The guest idles in WFI between rounds. Prints the medians and their ratio.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(v: &[Duration], p: usize) -> Duration {
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Waits for byte `want` among refvmm's output bytes (forwarded by a reader thread).
fn wait_for_byte(out: &Receiver<u8>, want: u8, what: &str) -> std::io::Result<()> {
    loop {
        match out.recv_timeout(Duration::from_secs(20)) {
            Ok(b) if b == want => return Ok(()),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                return Err(std::io::Error::other(format!(
                    "{what}: the guest did not answer within 20 s"
                )))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(std::io::Error::other("refvmm's stdout closed"))
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: sdei_latency <refvmm> <raw-payload.bin> [rounds]");
        return std::process::ExitCode::from(2);
    }
    let rounds: usize = args
        .get(3)
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(200);
    match run(&args[1], &args[2], rounds) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sdei_latency: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(refvmm: &str, payload: &str, rounds: usize) -> std::io::Result<()> {
    let sock = std::env::temp_dir().join(format!("sdei-latency-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new(refvmm)
        .args([
            "--kernel", payload, "--cpus", "1", "--memory", "64M", "--sdei",
        ])
        .args(["--cmdline", "payload.cpus=1 payload.latency=1"])
        .arg("--api-socket")
        .arg(&sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or(std::io::Error::other("no stdin"))?;
    let mut out = BufReader::new(
        child
            .stdout
            .take()
            .ok_or(std::io::Error::other("no stdout"))?,
    );
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("the payload never became ready"));
        }
        if line.contains("raw-payload: latency ready") {
            break;
        }
        if line.contains("FAIL") {
            return Err(std::io::Error::other(line.trim().to_string()));
        }
    }
    // From here on a reader thread forwards refvmm's output byte by byte, so that every wait
    // has a deadline.
    let (tx, bytes) = channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while matches!(out.read(&mut b), Ok(1)) {
            if tx.send(b[0]).is_err() {
                break;
            }
        }
    });
    let result = measure(&mut stdin, &bytes, &sock, rounds);
    if result.is_err() {
        let _ = child.kill();
    }
    let (mut spi, mut sdei) = result?;
    stdin.write_all(b"q")?;
    let st = child.wait()?;
    let _ = std::fs::remove_file(&sock);
    let (ms, mi) = (median(&mut sdei), median(&mut spi));
    println!(
        "sdei_latency: {rounds} rounds; SPI inject -> IRQ handler: median {} us (p10 {} us, p90 {} us)",
        mi.as_micros(),
        percentile(&spi, 10).as_micros(),
        percentile(&spi, 90).as_micros()
    );
    println!(
        "sdei_latency: SDEI raise -> SDEI handler: median {} us (p10 {} us, p90 {} us)",
        ms.as_micros(),
        percentile(&sdei, 10).as_micros(),
        percentile(&sdei, 90).as_micros()
    );
    println!(
        "sdei_latency: ratio SDEI/SPI (medians) {:.2}",
        ms.as_secs_f64() / mi.as_secs_f64()
    );
    if !st.success() {
        return Err(std::io::Error::other(format!("refvmm exited with {st}")));
    }
    Ok(())
}

/// Times `rounds` alternating SPI and SDEI deliveries.
fn measure(
    stdin: &mut impl Write,
    bytes: &Receiver<u8>,
    sock: &std::path::Path,
    rounds: usize,
) -> std::io::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut spi = Vec::with_capacity(rounds);
    let mut sdei = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let t = Instant::now();
        stdin.write_all(b"x")?;
        stdin.flush()?;
        wait_for_byte(bytes, b'I', &format!("round {round}, SPI"))?;
        spi.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(2));

        // Connect first: refvmm accepts and waits for the request line, so the timed part
        // starts, like the SPI's, with refvmm's main thread woken by a write.
        let mut api = UnixStream::connect(sock)?;
        api.set_read_timeout(Some(Duration::from_secs(20)))?;
        std::thread::sleep(Duration::from_millis(2));
        let t = Instant::now();
        api.write_all(b"sdei-signal 0x1000000 0\n")?;
        wait_for_byte(bytes, b'S', &format!("round {round}, SDEI"))?;
        sdei.push(t.elapsed());
        let mut answer = String::new();
        BufReader::new(api).read_line(&mut answer)?;
        if !answer.starts_with("ok pending") {
            return Err(std::io::Error::other(format!(
                "refvmm answered {answer:?} to sdei-signal"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok((spi, sdei))
}
