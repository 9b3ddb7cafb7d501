//! Target `refvmm_mmio_sequences`: register-level access sequences on refvmm's MMIO bus with the
//! 16550 console and a virtio-mmio transport (holding a virtio-pmem device) mapped where refvmm
//! maps them.
//!
//! Input: a sequence of operations (at most [`MAX_OPS`]), each one op byte and its operands:
//!
//! | op byte | operation |
//! |---|---|
//! | bits 0–1 | access size: 1, 2, 4 or 8 bytes |
//! | bit 2 | write (then `size` value bytes follow, little-endian) or read |
//! | bits 3–5 | where (with bits 6–7 not both set): 0–2 the console (next byte: offset 0–255), 3–5 the virtio window (next byte: bit 7 an unaligned offset, bits 0–6 the offset / 4), 6 the last 8 bytes of a window or the 8 bytes after it (next byte), 7 any address (8 bytes) |
//! | bits 6–7 = 3 | instead of an access: bit 0 clear queues console input (next byte: its length, then the bytes), set makes Linux's driver set-up of the virtio device (status, features, queue 0 in guest RAM, `DRIVER_OK`) |
//!
//! Checks, after every access: an access not wholly inside one window reads as zeros and is
//! counted as unbacked; the console behaves as a reference 16550 model (divisor latch behind
//! DLAB, IER's four bits, LCR/MCR/SCR read back, receive FIFO of 64 bytes and LSR's data-ready
//! bit, LSR's transmitter-empty bits, IIR's FIFO bits and consistency with the FIFO, MSR in
//! loopback, output exactly the bytes written to THR outside loopback, nothing but the first
//! byte of a wider access); the virtio-mmio magic, version, device and vendor ID registers read
//! their constants whatever was written, other registers read zero unless 32-bit and aligned,
//! `QueueNumMax` is the queue's size for queue 0 and zero otherwise, `DRIVER_OK` is never set
//! without `FEATURES_OK` nor `FEATURES_OK` without `VERSION_1`, the configuration space is the
//! pmem region's start and size; reads raise no interrupt, the console raises at most two per
//! write and one per input, the transport at most one per write.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use refvmm::devices::serial::Console;
use refvmm::devices::virtio::mmio::{reg, MAGIC, VENDOR_ID, VERSION};
use refvmm::devices::virtio::pmem::{Flush, PmemDevice, QUEUE_SIZE, VIRTIO_ID_PMEM};
use refvmm::devices::virtio::{status, MmioTransport, VIRTIO_F_VERSION_1};
use refvmm::devices::MmioBus;
use refvmm::layout::{UART_BASE, UART_SIZE, VIRTIO_BASE, VIRTIO_SIZE};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Most operations one input runs.
pub const MAX_OPS: usize = 512;
/// Guest RAM of the virtio transport (where the set-up operation puts queue 0).
pub const RAM_BASE: u64 = 0x4000_0000;
/// The pmem region the device reports.
pub const PMEM_START: u64 = 0x1_0000_0000;
/// Its size.
pub const PMEM_SIZE: u64 = 2 << 20;

/// The console's output, shared with the harness.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("output lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

use crate::virtio_pmem::Counter;

struct NoFlush;

impl Flush for NoFlush {
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

type Pmem = MmioTransport<PmemDevice<NoFlush>>;

/// The reference 16550: what the guest may observe of the console.
struct Uart {
    dll: u8,
    dlm: u8,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    msr: u8,
    fifo: VecDeque<u8>,
    output: Vec<u8>,
    input_read: usize,
}

const FIFO: usize = 64;
const DLAB: u8 = 0x80;
const LOOP: u8 = 0x10;

impl Uart {
    fn loopback(&self) -> bool {
        self.mcr & LOOP != 0
    }

    fn write(&mut self, offset: u64, v: u8) {
        let dlab = self.lcr & DLAB != 0;
        match offset {
            0 if dlab => self.dll = v,
            1 if dlab => self.dlm = v,
            // In loopback the byte goes to the receive FIFO, or is lost when it is full.
            0 if self.loopback() && self.fifo.len() < FIFO => self.fifo.push_back(v),
            0 if self.loopback() => {}
            0 => self.output.push(v),
            1 => self.ier = v & 0x0f,
            3 => self.lcr = v,
            4 => self.mcr = v,
            7 => self.scr = v,
            _ => {}
        }
    }

    /// Checks a read of `offset` that returned `v`, and applies its side effects.
    fn read(&mut self, offset: u64, v: u8) {
        let dlab = self.lcr & DLAB != 0;
        let expected = match offset {
            0 if dlab => self.dll,
            1 if dlab => self.dlm,
            0 => match self.fifo.pop_front() {
                Some(b) => {
                    self.input_read += 1;
                    b
                }
                None => 0,
            },
            1 => self.ier,
            2 => {
                assert_eq!(v & 0xf0, 0xc0, "IIR {v:#x}: FIFOs enabled, bits 5-4 clear");
                assert_eq!(v & 0x08, 0, "IIR {v:#x}: no character timeout");
                let pending = v & 0x06 != 0;
                assert_eq!(v & 1 == 0, pending, "IIR {v:#x}: bit 0 clear iff a cause");
                if v & 0x04 != 0 {
                    assert!(!self.fifo.is_empty(), "IIR {v:#x}: data ready but none");
                }
                return;
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => 0x60 | u8::from(!self.fifo.is_empty()),
            6 if self.loopback() => {
                let m = self.mcr;
                let bit = |from: u8, to: u8| if m & from != 0 { to } else { 0 };
                (self.msr & 0x0f) | bit(2, 0x10) | bit(1, 0x20) | bit(4, 0x40) | bit(8, 0x80)
            }
            6 => self.msr,
            7 => self.scr,
            _ => 0,
        };
        assert_eq!(v, expected, "console register {offset} read {v:#x}");
    }
}

/// The transport registers whose values the harness knows.
struct Virtio {
    queue_sel: u32,
}

struct Rig {
    bus: MmioBus,
    console: Arc<Mutex<Console<Output>>>,
    console_irq: EventFd,
    console_irqs: u64,
    transport: Arc<Mutex<Pmem>>,
    virtio_irqs: Counter,
    output: Output,
    uart: Uart,
    virtio: Virtio,
    uart_writes: u64,
    uart_inputs: u64,
    virtio_writes: u64,
    unbacked: u64,
}

/// Where an access lands.
enum Target {
    Console(u64),
    Virtio(u64),
    Unbacked,
}

fn locate(addr: u64, len: usize) -> Target {
    let inside = |base: u64, size: u64| {
        addr.checked_sub(base)
            .filter(|off| off.checked_add(len as u64).is_some_and(|end| end <= size))
    };
    if let Some(off) = inside(UART_BASE, UART_SIZE) {
        Target::Console(off)
    } else if let Some(off) = inside(VIRTIO_BASE, VIRTIO_SIZE) {
        Target::Virtio(off)
    } else {
        Target::Unbacked
    }
}

impl Rig {
    fn new() -> Self {
        let output = Output::default();
        let console_irq = EventFd::new(EFD_NONBLOCK).expect("an eventfd");
        let console = Arc::new(Mutex::new(Console::new(
            console_irq.try_clone().expect("a second eventfd handle"),
            output.clone(),
        )));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 0x1_0000)])
            .expect("64 KiB of guest memory");
        let virtio_irqs = Counter::default();
        let transport = Arc::new(Mutex::new(
            MmioTransport::new(
                PmemDevice::new(PMEM_START, PMEM_SIZE, NoFlush),
                mem,
                Box::new(virtio_irqs.clone()),
            )
            .expect("the pmem queue size is valid"),
        ));
        let mut bus = MmioBus::default();
        bus.insert(UART_BASE, UART_SIZE, console.clone())
            .expect("the console window");
        bus.insert(VIRTIO_BASE, VIRTIO_SIZE, transport.clone())
            .expect("the virtio window");
        Rig {
            bus,
            console,
            console_irq,
            console_irqs: 0,
            transport,
            virtio_irqs,
            output,
            uart: Uart {
                dll: 0x0c,
                dlm: 0,
                ier: 0,
                lcr: 0x03,
                mcr: 0x08,
                scr: 0,
                msr: 0xb0,
                fifo: VecDeque::new(),
                output: Vec::new(),
                input_read: 0,
            },
            virtio: Virtio { queue_sel: 0 },
            uart_writes: 0,
            uart_inputs: 0,
            virtio_writes: 0,
            unbacked: 0,
        }
    }

    fn interrupts(&mut self) -> (u64, u32) {
        self.console_irqs += self.console_irq.read().unwrap_or(0);
        (
            self.console_irqs,
            self.virtio_irqs.0.load(Ordering::Relaxed),
        )
    }

    fn read(&mut self, addr: u64, len: usize) {
        let before = self.interrupts();
        let mut data = vec![0xa5u8; len];
        self.bus.read(addr, &mut data);
        assert_eq!(self.interrupts(), before, "a read raised an interrupt");
        match locate(addr, len) {
            Target::Unbacked => {
                assert!(data.iter().all(|&b| b == 0), "unbacked read {data:x?}");
                self.unbacked += 1;
            }
            Target::Console(off) => {
                assert!(
                    data[1..].iter().all(|&b| b == 0),
                    "wide console read {data:x?}"
                );
                self.uart.read(off, data[0]);
            }
            Target::Virtio(off) => self.check_virtio_read(off, &data),
        }
        assert_eq!(self.bus.unbacked_accesses(), self.unbacked);
    }

    fn check_virtio_read(&mut self, off: u64, data: &[u8]) {
        if off >= 0x100 {
            let mut config = [0u8; 16];
            config[..8].copy_from_slice(&PMEM_START.to_le_bytes());
            config[8..].copy_from_slice(&PMEM_SIZE.to_le_bytes());
            for (i, &b) in data.iter().enumerate() {
                let at = off as usize - 0x100 + i;
                assert_eq!(b, config.get(at).copied().unwrap_or(0), "config byte {at}");
            }
            return;
        }
        if data.len() != 4 || off % 4 != 0 {
            assert!(
                data.iter().all(|&b| b == 0),
                "{}-byte read at {off:#x}",
                data.len()
            );
            return;
        }
        let v = u32::from_le_bytes(data.try_into().expect("4 bytes"));
        let expected = match off {
            reg::MAGIC_VALUE => Some(MAGIC),
            reg::VERSION => Some(VERSION),
            reg::DEVICE_ID => Some(VIRTIO_ID_PMEM),
            reg::VENDOR_ID => Some(VENDOR_ID),
            reg::QUEUE_NUM_MAX => Some(if self.virtio.queue_sel == 0 {
                u32::from(QUEUE_SIZE)
            } else {
                0
            }),
            reg::INTERRUPT_STATUS => {
                assert_eq!(v & !3, 0, "interrupt status {v:#x}");
                None
            }
            _ => None,
        };
        if let Some(e) = expected {
            assert_eq!(v, e, "virtio register {off:#x}");
        }
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        let before = self.interrupts();
        self.bus.write(addr, data);
        let after = self.interrupts();
        match locate(addr, data.len()) {
            Target::Unbacked => {
                assert_eq!(after, before, "an unbacked write raised an interrupt");
                self.unbacked += 1;
            }
            Target::Console(off) => {
                self.uart_writes += 1;
                assert_eq!(
                    after.1, before.1,
                    "a console write raised the virtio interrupt"
                );
                self.uart.write(off, data[0]);
            }
            Target::Virtio(off) => {
                self.virtio_writes += 1;
                assert_eq!(
                    after.0, before.0,
                    "a virtio write raised the console interrupt"
                );
                if data.len() == 4 && off % 4 == 0 {
                    let v = u32::from_le_bytes(data.try_into().expect("4 bytes"));
                    match off {
                        reg::QUEUE_SEL => self.virtio.queue_sel = v,
                        reg::STATUS if v == 0 => self.virtio.queue_sel = 0,
                        _ => {}
                    }
                }
            }
        }
        assert_eq!(self.bus.unbacked_accesses(), self.unbacked);
    }

    fn input(&mut self, bytes: &[u8]) {
        let before = self.interrupts();
        let taken = self
            .console
            .lock()
            .expect("console lock")
            .enqueue_input(bytes);
        let room = if self.uart.loopback() {
            0
        } else {
            FIFO - self.uart.fifo.len()
        };
        assert_eq!(taken, bytes.len().min(room), "console input taken");
        self.uart.fifo.extend(&bytes[..taken]);
        self.uart_inputs += 1;
        assert!(self.interrupts().0 <= before.0 + 1);
    }

    /// Linux's virtio-mmio probe and virtio-pmem set-up, through the bus.
    fn virtio_setup(&mut self) {
        let w = |r: &mut Self, off: u64, v: u32| r.write(VIRTIO_BASE + off, &v.to_le_bytes());
        w(self, reg::STATUS, 0);
        w(self, reg::STATUS, status::ACKNOWLEDGE);
        w(self, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(self, reg::DRIVER_FEATURES_SEL, 1);
        w(self, reg::DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
        w(self, reg::DRIVER_FEATURES_SEL, 0);
        w(self, reg::DRIVER_FEATURES, 0);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(self, reg::STATUS, s);
        w(self, reg::QUEUE_SEL, 0);
        w(self, reg::QUEUE_NUM, u32::from(QUEUE_SIZE));
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, RAM_BASE),
            (reg::QUEUE_DRIVER_LOW, RAM_BASE + 0x1000),
            (reg::QUEUE_DEVICE_LOW, RAM_BASE + 0x2000),
        ] {
            w(self, low, addr as u32);
            w(self, low + 4, (addr >> 32) as u32);
        }
        w(self, reg::QUEUE_READY, 1);
        w(self, reg::STATUS, s | status::DRIVER_OK);
        let t = self.transport.lock().expect("transport lock");
        assert_eq!(
            t.status(),
            s | status::DRIVER_OK,
            "Linux's set-up is accepted"
        );
    }

    fn check_state(&mut self) {
        let (console, virtio) = self.interrupts();
        assert!(console <= 2 * self.uart_writes + self.uart_inputs);
        assert!(u64::from(virtio) <= self.virtio_writes);
        assert_eq!(
            *self.output.0.lock().expect("output lock"),
            self.uart.output
        );
        let t = self.transport.lock().expect("transport lock");
        let s = t.status();
        if s & status::DRIVER_OK != 0 {
            assert!(
                s & status::FEATURES_OK != 0,
                "DRIVER_OK without FEATURES_OK"
            );
        }
        if s & status::FEATURES_OK != 0 {
            let f = t.driver_features();
            assert!(
                f & (1 << VIRTIO_F_VERSION_1) != 0,
                "FEATURES_OK without VERSION_1"
            );
            assert_eq!(
                f & !t.device_features(),
                0,
                "FEATURES_OK with unoffered features"
            );
        }
        assert_eq!(t.interrupt_status() & !3, 0);
    }
}

/// What one input made the devices do (for the seed tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Bytes the console wrote out.
    pub output: usize,
    /// Input bytes the guest read from the console's FIFO.
    pub input_read: usize,
    /// Console interrupts raised.
    pub console_irqs: u64,
    /// Accesses that hit no device.
    pub unbacked: u64,
    /// The virtio device ended with `DRIVER_OK`.
    pub driver_ok: bool,
}

/// Runs one input; panics when a check fails.
pub fn run_refvmm_mmio_sequences(data: &[u8]) {
    run_mmio(data);
}

/// Runs one input and reports what happened; panics when a check fails.
pub fn run_mmio(data: &[u8]) -> Report {
    let mut rig = Rig::new();
    let mut bytes = data.iter().copied();
    let mut next = || bytes.next();
    for _ in 0..MAX_OPS {
        let Some(op) = next() else { break };
        if op >> 6 == 3 {
            if op & 1 == 0 {
                let n = usize::from(next().unwrap_or(0) % 80);
                let input: Vec<u8> = (0..n).map_while(|_| next()).collect();
                rig.input(&input);
            } else {
                rig.virtio_setup();
            }
            rig.check_state();
            continue;
        }
        let len = 1usize << (op & 3);
        let write = op & 4 != 0;
        let addr = match (op >> 3) & 7 {
            0..=2 => UART_BASE + u64::from(next().unwrap_or(0)),
            3..=5 => {
                let b = next().unwrap_or(0);
                VIRTIO_BASE + u64::from(b & 0x7f) * 4 + u64::from(b >> 7)
            }
            6 => {
                let b = next().unwrap_or(0);
                let base = if b & 0x80 != 0 {
                    VIRTIO_BASE
                } else {
                    UART_BASE
                };
                let size = if b & 0x80 != 0 {
                    VIRTIO_SIZE
                } else {
                    UART_SIZE
                };
                (base + size - 8).wrapping_add(u64::from(b & 0x0f))
            }
            _ => {
                let mut a = [0u8; 8];
                a.iter_mut().for_each(|b| *b = next().unwrap_or(0));
                u64::from_le_bytes(a)
            }
        };
        if write {
            let value: Vec<u8> = (0..len).map(|_| next().unwrap_or(0)).collect();
            rig.write(addr, &value);
        } else {
            rig.read(addr, len);
        }
        rig.check_state();
    }
    let driver_ok = rig.transport.lock().expect("transport lock").status() & status::DRIVER_OK;
    Report {
        output: rig.uart.output.len(),
        input_read: rig.uart.input_read,
        console_irqs: rig.interrupts().0,
        unbacked: rig.unbacked,
        driver_ok: driver_ok != 0,
    }
}
