//! The 16550 console: vm-superio's `Serial`, its interrupt through an irqfd, output to a
//! writer (stdout), input queued from the event loop.

use super::MmioDevice;
use std::io::Write;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the UART's interrupt by writing to an eventfd registered as a KVM irqfd.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps an eventfd.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The console device.
pub struct Console<W: Write + Send> {
    serial: Serial<EventFdTrigger, NoEvents, W>,
}

impl<W: Write + Send> Console<W> {
    /// A console raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: W) -> Self {
        Console {
            serial: Serial::new(EventFdTrigger::new(irq), out),
        }
    }

    /// A console restored from a snapshot's registers and input FIFO.
    pub fn from_wire(
        irq: EventFd,
        out: W,
        wire: &crate::snapshot::SerialWire,
    ) -> Result<Self, String> {
        let r = wire.regs;
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: wire.input.clone(),
        };
        // vm-superio raises the interrupt again when the state says one is pending (one
        // signalled just before the snapshot may still have been on its way into the GIC:
        // irqfd injection is asynchronous). So build the console only once the GIC holds its
        // restored state, or the restore of the GIC's pending bits wipes that interrupt, the
        // UART raises no new one while it is marked pending, and the guest's driver waits for
        // ever.
        Serial::from_state(&state, EventFdTrigger::new(irq), NoEvents, out)
            .map(|serial| Console { serial })
            .map_err(|e| format!("invalid console state: {e:?}"))
    }

    /// The registers and input FIFO, for a snapshot.
    pub fn to_wire(&self) -> crate::snapshot::SerialWire {
        let s = self.serial.state();
        crate::snapshot::SerialWire {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            input: s.in_buffer,
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Queues input bytes for the guest; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl<W: Write + Send> MmioDevice for Console<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(&v)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.serial.write(off, v) {
                crate::guest_log!(log::Level::Warn, "console write failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polled_writes_to_the_data_register_reach_the_output() {
        let irq = EventFd::new(0).unwrap();
        let mut c = Console::new(irq, Vec::new());
        for b in b"ok\n" {
            c.write(0, &[*b]);
        }
        assert_eq!(c.serial.writer(), b"ok\n");
    }

    #[test]
    fn console_state_round_trips_and_an_overfull_fifo_is_refused() {
        let mut c = Console::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), Vec::new());
        c.write(3, &[0x80]); // LCR: DLAB
        c.write(0, &[0x0c]); // divisor low
        c.write(3, &[0x03]);
        c.enqueue_input(b"ab");
        let wire = c.to_wire();
        let d = Console::from_wire(EventFd::new(libc::EFD_NONBLOCK).unwrap(), Vec::new(), &wire)
            .unwrap();
        assert_eq!(d.to_wire(), wire);
        let mut bad = wire;
        bad.input = vec![0; 1 << 16];
        assert!(Console::from_wire(EventFd::new(0).unwrap(), Vec::new(), &bad).is_err());
    }

    #[test]
    fn queued_input_is_read_from_the_data_register() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut c = Console::new(irq, Vec::new());
        assert_eq!(c.enqueue_input(b"x"), 1);
        let mut b = [0u8; 1];
        c.read(0, &mut b);
        assert_eq!(b, [b'x']);
    }

    #[test]
    fn restoring_a_pending_interrupt_raises_it_once() {
        let mut c = Console::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), Vec::new());
        c.write(1, &[0x02]); // IER: transmitter-empty interrupt on
        c.write(0, b"x"); // raises it: IIR now says "THR empty" (bit 0 clear)
        let mut wire = c.to_wire();
        assert_eq!(wire.regs[3] & 1, 0);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Console::from_wire(irq.try_clone().unwrap(), Vec::new(), &wire).unwrap();
        assert_eq!(irq.read().unwrap(), 1);

        wire.regs[3] = 1; // no interrupt pending
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Console::from_wire(irq.try_clone().unwrap(), Vec::new(), &wire).unwrap();
        assert!(irq.read().is_err());
    }
}
