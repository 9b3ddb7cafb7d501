//! The 16550 console: vm-superio's `Serial`, its interrupt through an irqfd, output to a
//! writer (stdout), input queued from the event loop.

use super::MmioDevice;
use crate::persist::{Persist, Stored};
use crate::snapshot::StateFile;
use sdei_migration::header::{SnapshotFormat, FLAG_OPTIONAL_ONLY};
use serde::{Deserialize, Serialize};
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

/// The console's saved registers and input FIFO (`serial.bin`, [`STATE_FILE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub regs: [u8; 9],
    /// Bytes waiting in the receive FIFO.
    pub input: Vec<u8>,
}

/// `serial.bin`: the shared header, then a postcard [`ConsoleState`].
pub const STATE_FILE: StateFile = StateFile {
    what: "console state",
    name: "serial.bin",
    format: SnapshotFormat {
        magic: *b"REFVMCON",
        major: 1,
        minor: 0,
        flags: FLAG_OPTIONAL_ONLY,
        // Nine registers and at most the 16550's 64-byte FIFO take 74 bytes.
        max_payload_len: 1 << 10,
    },
};

impl Stored for ConsoleState {
    const FILE: &'static str = STATE_FILE.name;

    fn encode(&self) -> crate::snapshot::Result<Vec<u8>> {
        STATE_FILE.encode(self)
    }

    fn decode(bytes: &[u8]) -> crate::snapshot::Result<Self> {
        STATE_FILE.decode(bytes)
    }
}

/// Why a console state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// More input than the 16550's FIFO holds.
    #[error("the console state holds {len} bytes of input, more than the FIFO holds")]
    FullFifo {
        /// Bytes of input in the state.
        len: usize,
    },
    /// The pending interrupt could not be raised again, or the interrupt eventfd could not
    /// be duplicated for the restored console.
    #[error("cannot raise the restored console's interrupt")]
    Interrupt(#[source] std::io::Error),
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

    /// A console raising `irq` and writing to `out`, with the registers and input FIFO of
    /// `state`.
    ///
    /// vm-superio raises the interrupt again when the state says one is pending (one
    /// signalled just before the snapshot may still have been on its way into the GIC: irqfd
    /// injection is asynchronous). So restore the console only once the GIC holds its
    /// restored state, or the restore of the GIC's pending bits wipes that interrupt, the UART
    /// raises no new one while it is marked pending, and the guest's driver waits for ever.
    pub fn from_state(irq: EventFd, out: W, state: &ConsoleState) -> Result<Self, StateError> {
        let r = state.regs;
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
            in_buffer: state.input.clone(),
        };
        Serial::from_state(&state, EventFdTrigger::new(irq), NoEvents, out)
            .map(|serial| Console { serial })
            .map_err(|e| match e {
                vm_superio::serial::Error::FullFifo => StateError::FullFifo {
                    len: state.in_buffer.len(),
                },
                vm_superio::serial::Error::Trigger(e) | vm_superio::serial::Error::IOError(e) => {
                    StateError::Interrupt(e)
                }
            })
    }

    /// The registers and input FIFO, for a snapshot.
    pub fn state(&self) -> ConsoleState {
        let s = self.serial.state();
        ConsoleState {
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

impl<W: Write + Send> Persist for Console<W> {
    type State = ConsoleState;
    type Error = StateError;

    fn save(&self) -> Result<ConsoleState, StateError> {
        Ok(self.state())
    }

    /// Keeps the console's interrupt and output; see [`Console::from_state`] for when to
    /// call it.
    fn restore(self, state: &ConsoleState) -> Result<Self, StateError> {
        let irq = self
            .serial
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(StateError::Interrupt)?;
        Console::from_state(irq, self.serial.into_writer(), state)
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
        let wire = c.save().unwrap();
        let d = Console::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), b"kept".to_vec())
            .restore(&wire)
            .unwrap();
        assert_eq!(d.state(), wire);
        assert_eq!(
            d.serial.writer(),
            b"kept",
            "the restored console keeps its output"
        );
        let mut bad = wire;
        bad.input = vec![0; 1 << 16];
        let Err(e) = Console::from_state(EventFd::new(0).unwrap(), Vec::new(), &bad) else {
            panic!("an overfull FIFO was restored");
        };
        assert!(matches!(e, StateError::FullFifo { len: 65536 }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the console state holds 65536 bytes of input, more than the FIFO holds"
        );
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
        let mut wire = c.state();
        assert_eq!(wire.regs[3] & 1, 0);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Console::from_state(irq.try_clone().unwrap(), Vec::new(), &wire).unwrap();
        assert_eq!(irq.read().unwrap(), 1);

        wire.regs[3] = 1; // no interrupt pending
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Console::from_state(irq.try_clone().unwrap(), Vec::new(), &wire).unwrap();
        assert!(irq.read().is_err());
    }
}
