//! Seeds for `refvmm_mmio_sequences`: what Linux's 8250 and virtio-mmio drivers do to the
//! devices (probe, divisor set-up, loopback test, output, input, interrupt handling, the
//! virtio probe and set-up), and accesses of every width at and across window edges.

use super::Seed;
use refvmm::devices::virtio::mmio::reg;

/// Builds an operation sequence in the target's input format.
#[derive(Default)]
struct Ops(Vec<u8>);

const SIZES: [usize; 4] = [1, 2, 4, 8];

fn size_bits(len: usize) -> u8 {
    SIZES.iter().position(|&s| s == len).expect("1, 2, 4 or 8") as u8
}

impl Ops {
    fn uart_w(mut self, off: u8, v: u8) -> Self {
        self.0.extend_from_slice(&[4, off, v]);
        self
    }
    fn uart_r(mut self, off: u8) -> Self {
        self.0.extend_from_slice(&[0, off]);
        self
    }
    fn uart_wide(mut self, off: u8, len: usize, write: bool) -> Self {
        self.0.push(size_bits(len) | u8::from(write) << 2);
        self.0.push(off);
        if write {
            self.0.extend(std::iter::repeat_n(0x41, len));
        }
        self
    }
    /// A 32-bit access to a virtio register (offset a multiple of 4 below 0x200).
    fn virtio_w(mut self, off: u64, v: u32) -> Self {
        self.0.extend_from_slice(&[3 << 3 | 4 | 2, (off / 4) as u8]);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn virtio_r(mut self, off: u64, len: usize, unaligned: bool) -> Self {
        self.0.push(3 << 3 | size_bits(len));
        self.0.push((off / 4) as u8 | u8::from(unaligned) << 7);
        self
    }
    /// An access around the end of the console (`virtio` false) or virtio window.
    fn edge(mut self, virtio: bool, past: u8, len: usize, write: bool) -> Self {
        self.0.push(6 << 3 | size_bits(len) | u8::from(write) << 2);
        self.0.push(u8::from(virtio) << 7 | past);
        if write {
            self.0.extend(std::iter::repeat_n(0xff, len));
        }
        self
    }
    fn anywhere(mut self, addr: u64, len: usize, write: bool) -> Self {
        self.0.push(7 << 3 | size_bits(len) | u8::from(write) << 2);
        self.0.extend_from_slice(&addr.to_le_bytes());
        if write {
            self.0.extend(std::iter::repeat_n(0x5a, len));
        }
        self
    }
    fn input(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(&[0xc0, bytes.len() as u8]);
        self.0.extend_from_slice(bytes);
        self
    }
    fn virtio_setup(mut self) -> Self {
        self.0.push(0xc1);
        self
    }
    fn print(self, text: &[u8]) -> Self {
        text.iter().fold(self, |o, &b| o.uart_r(5).uart_w(0, b))
    }
}

/// Linux's 8250 probe and console set-up: scratch test, loopback test, 8N1 at 115200 baud
/// (divisor 1 behind DLAB), FIFO control, interrupts on.
fn linux_8250_setup() -> Ops {
    Ops::default()
        .uart_w(7, 0xa5)
        .uart_r(7)
        .uart_w(7, 0x5a)
        .uart_r(7)
        .uart_w(4, 0x10 | 0x0a)
        .uart_r(6)
        .uart_w(4, 0x08)
        .uart_w(3, 0x80)
        .uart_w(0, 0x01)
        .uart_w(1, 0x00)
        .uart_r(0)
        .uart_r(1)
        .uart_w(3, 0x03)
        .uart_w(2, 0xc7)
        .uart_r(2)
        .uart_w(1, 0x05)
        .uart_r(2)
}

/// Every seed of the target.
pub fn mmio_sequence_seeds() -> Vec<Seed> {
    const T: &str = "refvmm_mmio_sequences";
    let mut seeds = Vec::new();
    let mut add = |name: &str, ops: Ops| seeds.push(Seed::new(T, name, ops.0));

    add("linux-8250-setup", linux_8250_setup());
    add(
        "console-output",
        linux_8250_setup().print(b"Booting Linux on physical CPU 0x0\n"),
    );
    add(
        "console-input-interrupt",
        linux_8250_setup()
            .input(b"root\n")
            .uart_r(2)
            .uart_r(5)
            .uart_r(0)
            .uart_r(5)
            .uart_r(0)
            .uart_r(0)
            .uart_r(0)
            .uart_r(0)
            .uart_r(5)
            .uart_r(2),
    );
    add(
        "console-fifo-overflow",
        Ops::default()
            .input(&[b'x'; 60])
            .input(&[b'y'; 10])
            .uart_r(5)
            .uart_w(1, 0x01)
            .uart_r(2)
            .uart_r(0)
            .uart_r(0)
            .uart_r(0)
            .uart_r(0)
            .uart_r(0)
            .uart_r(5),
    );
    add(
        "console-loopback",
        Ops::default()
            .uart_w(4, 0x1f)
            .uart_w(1, 0x01)
            .uart_w(0, b'L')
            .uart_w(0, b'B')
            .uart_r(6)
            .uart_r(5)
            .uart_r(2)
            .uart_r(0)
            .input(b"ignored in loopback")
            .uart_r(0)
            .uart_r(5)
            .uart_w(4, 0x00)
            .uart_r(6),
    );
    add(
        "console-thr-interrupt",
        Ops::default()
            .uart_w(1, 0x02)
            .uart_r(2)
            .uart_r(2)
            .uart_w(0, b'a')
            .uart_r(2)
            .uart_w(1, 0x0f)
            .uart_r(1),
    );
    add(
        "console-wide-and-high-offsets",
        Ops::default()
            .uart_wide(7, 8, true)
            .uart_wide(7, 4, false)
            .uart_wide(0, 2, true)
            .uart_wide(5, 8, false)
            .uart_w(0xff, 1)
            .uart_r(0xff)
            .uart_r(8),
    );
    let probe = Ops::default()
        .virtio_r(reg::MAGIC_VALUE, 4, false)
        .virtio_r(reg::VERSION, 4, false)
        .virtio_r(reg::DEVICE_ID, 4, false)
        .virtio_r(reg::VENDOR_ID, 4, false);
    add(
        "virtio-probe-and-setup",
        probe
            .virtio_setup()
            .virtio_r(reg::STATUS, 4, false)
            .virtio_r(reg::QUEUE_NUM_MAX, 4, false)
            .virtio_r(0x100, 8, false)
            .virtio_r(0x108, 8, false)
            .virtio_w(reg::QUEUE_NOTIFY, 0)
            .virtio_r(reg::INTERRUPT_STATUS, 4, false),
    );
    add(
        "virtio-identity-after-writes",
        Ops::default()
            .virtio_w(reg::MAGIC_VALUE, 0)
            .virtio_w(reg::VERSION, 1)
            .virtio_w(reg::DEVICE_ID, 0xffff_ffff)
            .virtio_w(reg::VENDOR_ID, 7)
            .virtio_r(reg::MAGIC_VALUE, 4, false)
            .virtio_r(reg::VERSION, 4, false)
            .virtio_r(reg::DEVICE_ID, 4, false)
            .virtio_r(reg::VENDOR_ID, 4, false),
    );
    add(
        "virtio-driver-ok-without-features",
        Ops::default()
            .virtio_w(reg::STATUS, 1)
            .virtio_w(reg::STATUS, 3)
            .virtio_w(reg::STATUS, 7)
            .virtio_r(reg::STATUS, 4, false)
            .virtio_w(reg::DRIVER_FEATURES, 0xffff_ffff)
            .virtio_w(reg::STATUS, 0xb)
            .virtio_r(reg::STATUS, 4, false)
            .virtio_w(reg::QUEUE_SEL, 1)
            .virtio_r(reg::QUEUE_NUM_MAX, 4, false)
            .virtio_w(reg::STATUS, 0)
            .virtio_r(reg::QUEUE_NUM_MAX, 4, false),
    );
    add(
        "virtio-odd-widths",
        Ops::default()
            .virtio_r(reg::MAGIC_VALUE, 1, false)
            .virtio_r(reg::MAGIC_VALUE, 2, false)
            .virtio_r(reg::MAGIC_VALUE, 8, false)
            .virtio_r(reg::VERSION, 4, true)
            .virtio_r(0x1fc, 4, true)
            .virtio_r(0x10c, 8, false),
    );
    add(
        "window-edges",
        Ops::default()
            .edge(false, 7, 1, false)
            .edge(false, 7, 2, false)
            .edge(false, 4, 4, true)
            .edge(false, 0, 8, false)
            .edge(false, 8, 1, true)
            .edge(true, 4, 4, false)
            .edge(true, 5, 4, false)
            .edge(true, 0, 8, true)
            .edge(true, 9, 2, false),
    );
    add(
        "unbacked-addresses",
        Ops::default()
            .anywhere(0, 4, false)
            .anywhere(0x0900_1000, 1, true)
            .anywhere(0x08ff_ffff, 2, false)
            .anywhere(0x0a00_0200, 4, false)
            .anywhere(u64::MAX - 3, 8, false)
            .anywhere(u64::MAX, 1, true)
            .anywhere(0x0900_0005, 1, false),
    );
    add("empty", Ops::default());
    seeds
}
