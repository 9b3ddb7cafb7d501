//! Seeds for the saved-state targets: `gic.bin`, `vcpus.bin` and `serial.bin` as refvmm writes
//! them, and damaged copies aimed at each check.

use super::decoders::NEWER_DATA;
use super::headers::header_seeds;
use super::Seed;
use crate::header::HEADER_LEN;
use crate::refvmm_state::gic_input;
use refvmm::snapshot::{SERIAL, VCPUS};
use refvmm::vcpu::state::{VcpuState, COUNTERS};

/// The structured part of a `refvmm_gic_state` input: interrupts / 32, vCPUs, damage, where,
/// then values.
fn gic_shape(irqs32: u8, cpus: u8, damage: u8, at: u8) -> Vec<u8> {
    let mut d = vec![irqs32, cpus, damage, at];
    // Values that look like a running GIC: enables, priorities 0xa0, routing to vCPU 0,
    // MPIDRs 0x8000_00xx, PRIbits 5 (ICC_CTLR_EL1 0x0400).
    d.extend_from_slice(&[0x01, 0x00, 0x00, 0x80, 0xa0, 0xa0, 0x00, 0x04, 0xff, 0x00]);
    d
}

/// GIC states: refvmm's own shape (128 interrupts) with one and four vCPUs, the smallest and
/// largest GICv3, each number of priority bits, the golden format 1.0 snapshot's state as
/// this format holds it, the shared header damage, damaged payloads (a count beyond the input,
/// a moved register, a wrong interrupt count, a byte after the state: the target's checksum
/// fix-up makes them reach the decoder) and structured inputs for each kind of damage.
pub fn gic_state_seeds() -> Vec<Seed> {
    const T: &str = "refvmm_gic_state";
    let encoded = |irqs32: u8, cpus: u8, values: &[u8]| {
        let mut d = vec![irqs32, cpus, 0xff, 0];
        d.extend_from_slice(values);
        gic_input(&d).expect("4 bytes or more").state.encode()
    };
    let refvmm_1 = encoded(4, 1, &[0x01, 0x00, 0x04, 0x80, 0xa0, 0x00]);
    let mut seeds = vec![
        Seed::new(T, "refvmm-128-irqs-1-vcpu", refvmm_1.clone()),
        Seed::new(
            T,
            "refvmm-128-irqs-4-vcpus",
            encoded(4, 4, &[0x03, 0x01, 0x05, 0x80, 0xa0, 0x02, 0x00]),
        ),
        Seed::new(
            T,
            "64-irqs-2-vcpus",
            encoded(2, 2, &[0x00, 0x06, 0x80, 0x01]),
        ),
        Seed::new(T, "1024-irqs-1-vcpu", encoded(32, 1, &[0x07, 0x80, 0x11])),
        Seed::new(
            T,
            "96-irqs-3-vcpus-pri-bits-7",
            encoded(3, 3, &[0x06, 0x07]),
        ),
        Seed::new(T, "no-vcpus", encoded(4, 0, &[1])),
        Seed::new(T, "nr-irqs-only", SnapshotFile::gic(&128u32.to_le_bytes())),
    ];
    seeds.extend(header_seeds(T, &refvmm_1, NEWER_DATA));
    // Payload offsets: nr_irqs 0, distributor count 4, first (offset, value) pair 8.
    let mut patch = |name: &str, at: usize, value: &[u8]| {
        let mut d = refvmm_1.clone();
        d[HEADER_LEN + at..HEADER_LEN + at + value.len()].copy_from_slice(value);
        seeds.push(Seed::new(T, name, d));
    };
    patch("96-irqs-with-128-irq-registers", 0, &96u32.to_le_bytes());
    patch("65-irqs", 0, &65u32.to_le_bytes());
    patch("dist-count-beyond-input", 4, &u32::MAX.to_le_bytes());
    patch("moved-dist-register", 8, &0x84u32.to_le_bytes());
    let mut extra = refvmm_1[HEADER_LEN..].to_vec();
    extra.push(0);
    seeds.push(Seed::new(
        T,
        "byte-after-the-state",
        SnapshotFile::gic(&extra),
    ));
    for (damage, name) in [
        "drop-dist",
        "move-dist",
        "extra-spi-level",
        "drop-redist",
        "rewrite-icc-ctlr",
        "swap-dist",
    ]
    .iter()
    .enumerate()
    {
        seeds.push(Seed::new(
            T,
            format!("built-{name}"),
            gic_shape(4, 2, damage as u8, 7),
        ));
    }
    seeds.push(Seed::new(T, "built-valid", gic_shape(4, 2, 0xff, 0)));
    seeds.push(Seed::new(T, "built-124-vcpus", gic_shape(4, 124, 0xff, 0)));
    seeds.push(Seed::new(T, "built-1056-irqs", gic_shape(33, 1, 0xff, 0)));
    seeds
}

const REG_ARM64: u64 = 0x6000_0000_0000_0000;
const CORE: u64 = 0x0010 << 16;
const FW: u64 = 0x0014 << 16;
const SVE: u64 = 0x0015 << 16;
const SYSREG: u64 = 0x0013 << 16;

/// A register id with the given size field (log2 of bytes).
fn id(size_log2: u64, rest: u64) -> u64 {
    REG_ARM64 | size_log2 << 52 | rest
}

fn sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    id(
        3,
        SYSREG | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2,
    )
}

/// A vCPU state shaped like one KVM lists: the core registers (x0–x30, SP, PC, PSTATE, the
/// 128-bit V registers, FPSR/FPCR), a few system registers, both counters, the firmware
/// pseudo-registers, and with `sve` the 2048-bit Z and 256-bit P registers.
fn vcpu(index: u64, counter: u64, mp_state: u32, sve: bool) -> VcpuState {
    let value = |n: usize, seed: u64| -> Vec<u8> {
        (0..n)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64) & 0xff) as u8)
            .collect()
    };
    let mut regs = Vec::new();
    for i in 0..34u64 {
        regs.push((id(3, CORE | ((i * 8) / 4)), value(8, i + index)));
    }
    for i in 0..32u64 {
        regs.push((id(4, CORE | ((336 + i * 16) / 4)), value(16, i)));
    }
    regs.push((id(2, CORE | (848 / 4)), value(4, 1)));
    regs.push((id(2, CORE | (852 / 4)), value(4, 2)));
    regs.push((
        sysreg(3, 0, 0, 0, 5),
        (0x8000_0000 | index).to_le_bytes().to_vec(),
    ));
    regs.push((sysreg(3, 0, 1, 0, 0), 0x30d0_1805u64.to_le_bytes().to_vec()));
    regs.push((COUNTERS[0], counter.to_le_bytes().to_vec()));
    regs.push((COUNTERS[1], (counter + 1000).to_le_bytes().to_vec()));
    for i in 0..3 {
        regs.push((id(3, FW | i), value(8, i)));
    }
    if sve {
        for i in 0..32u64 {
            regs.push((id(8, SVE | i << 5), value(256, i)));
        }
        for i in 0..16u64 {
            regs.push((id(5, SVE | 0x400 | i << 5), value(32, i)));
        }
    }
    VcpuState { mp_state, regs }
}

/// vCPU state lists: one vCPU, two whose counters differ (the second powered off), four with
/// SVE registers, one with SVE alone, and damaged ones (a register of the wrong size, an unknown MP state, a register saved
/// twice, an impossible size field, truncated, trailing bytes, an empty list).
pub fn vcpu_state_seeds() -> Vec<Seed> {
    const T: &str = "refvmm_vcpu_state";
    let enc = |states: &[VcpuState]| VCPUS.encode(states).expect("encodes");
    let one = vec![vcpu(0, 5_000_000, 0, false)];
    let two = vec![vcpu(0, 7_000_000, 0, false), vcpu(1, 6_999_000, 1, false)];
    let four: Vec<_> = (0..4)
        .map(|i| vcpu(i, 9_000_000 - i * 10, 0, true))
        .collect();
    let mut short = one.clone();
    short[0].regs[33].1.pop();
    let mut mp = two.clone();
    mp[1].mp_state = 11;
    let mut twice = two.clone();
    let counter = twice[1]
        .regs
        .iter()
        .position(|r| r.0 == COUNTERS[0])
        .unwrap();
    twice[1]
        .regs
        .push((COUNTERS[0], 1u64.to_le_bytes().to_vec()));
    let last = twice[1].regs.len() - 1;
    twice[1].regs.swap(counter, last);
    let mut huge = one.clone();
    huge[0].regs.push((id(15, CORE), vec![0; 4]));
    let one_enc = enc(&one);
    let mut extra = one_enc[HEADER_LEN..].to_vec();
    extra.extend_from_slice(b"extra");
    let mut seeds = vec![
        Seed::new(T, "one-vcpu", one_enc.clone()),
        Seed::new(T, "two-vcpus-counters-differ", enc(&two)),
        Seed::new(T, "four-vcpus", enc(&four)),
        Seed::new(T, "one-vcpu-sve", enc(&[vcpu(0, 1 << 40, 0, true)])),
        Seed::new(T, "short-register", enc(&short)),
        Seed::new(T, "mp-state-11", enc(&mp)),
        Seed::new(T, "counter-saved-twice", enc(&twice)),
        Seed::new(T, "size-field-32k", enc(&huge)),
        Seed::new(T, "no-vcpus", enc(&[])),
        Seed::new(T, "half", one_enc[..one_enc.len() / 2].to_vec()),
        Seed::new(T, "bytes-after-the-states", SnapshotFile::vcpus(&extra)),
    ];
    seeds.extend(header_seeds(T, &one_enc, NEWER_DATA));
    seeds
}

/// A state file around a payload of any bytes, with a header that matches them.
struct SnapshotFile;

impl SnapshotFile {
    fn gic(payload: &[u8]) -> Vec<u8> {
        refvmm::gic::state::FORMAT.seal(payload).expect("small")
    }
    fn vcpus(payload: &[u8]) -> Vec<u8> {
        VCPUS.format.seal(payload).expect("small")
    }
    fn serial(payload: &[u8]) -> Vec<u8> {
        SERIAL.format.seal(payload).expect("small")
    }
}

/// Console states: saved from consoles driven through the states a guest leaves them in (fresh,
/// Linux's 8250 set-up, input waiting, a pending transmitter-empty or received-data interrupt,
/// loopback, the divisor latch open, a full FIFO), refused ones (65 bytes of input, a byte
/// after the state) and the shared header damage.
pub fn console_state_seeds() -> Vec<Seed> {
    use refvmm::devices::serial::Console;
    use refvmm::devices::MmioDevice;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const T: &str = "refvmm_console_state";
    let saved = |writes: &[(u64, u8)], input: &[u8]| {
        let mut c = Console::new(EventFd::new(EFD_NONBLOCK).expect("an eventfd"), Vec::new());
        for &(off, v) in writes {
            c.write(off, &[v]);
        }
        c.enqueue_input(input);
        SERIAL.encode(&c.state()).expect("encodes")
    };
    let linux = [
        (3, 0x80),
        (0, 0x01),
        (1, 0x00),
        (3, 0x03),
        (2, 0xc7),
        (4, 0x0b),
    ];
    let with = |extra: &[(u64, u8)]| [&linux[..], extra].concat();
    let full = saved(&linux, &[b'z'; 64]);
    let mut overfull_wire: refvmm::devices::serial::ConsoleState =
        SERIAL.decode(&full).expect("decodes");
    overfull_wire.input.push(b'!');
    let overfull = SERIAL.encode(&overfull_wire).expect("encodes");
    let mut extra = full[HEADER_LEN..].to_vec();
    extra.push(0);
    let mut seeds = vec![
        Seed::new(T, "fresh", saved(&[], b"")),
        Seed::new(T, "linux-8250", saved(&linux, b"")),
        Seed::new(T, "input-waiting", saved(&linux, b"ls -l\n")),
        Seed::new(
            T,
            "thr-interrupt-pending",
            saved(&with(&[(1, 0x02), (0, b'x')]), b""),
        ),
        Seed::new(T, "rda-interrupt-pending", saved(&with(&[(1, 0x01)]), b"y")),
        Seed::new(
            T,
            "both-interrupts",
            saved(&with(&[(1, 0x03), (0, b'x')]), b"q"),
        ),
        Seed::new(T, "loopback", saved(&[(4, 0x1f), (0, b'L')], b"")),
        Seed::new(
            T,
            "dlab-open",
            saved(&[(3, 0x83), (0, 0x0c), (1, 0x02)], b""),
        ),
        Seed::new(T, "fifo-full", full.clone()),
        Seed::new(T, "fifo-65-bytes", overfull),
        Seed::new(T, "byte-after-the-state", SnapshotFile::serial(&extra)),
    ];
    seeds.extend(header_seeds(T, &full, NEWER_DATA));
    seeds
}
