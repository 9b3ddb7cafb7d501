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
                log::warn!("console write failed: {e:?}");
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
    fn queued_input_is_read_from_the_data_register() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut c = Console::new(irq, Vec::new());
        assert_eq!(c.enqueue_input(b"x"), 1);
        let mut b = [0u8; 1];
        c.read(0, &mut b);
        assert_eq!(b, [b'x']);
    }
}
