//! The 16550 UART: polled output, and the receive side the hotplug and latency modes use.

use core::ptr::{read_volatile, write_volatile};

use crate::fdt::Bytes;

/// The UART's base in refvmm's memory map (docs/refvmm.md).
const UART: usize = 0x0900_0000;
/// The UART's receive interrupt in refvmm's memory map (an SPI).
pub const UART_INTID: usize = 33;

pub fn putc(c: u8) {
    // SAFETY: the UART's registers are MMIO in refvmm's memory map; LSR is at offset 5 and
    // bit 5 says the transmit holding register is empty.
    unsafe {
        while read_volatile((UART + 5) as *const u8) & 0x20 == 0 {}
        write_volatile(UART as *mut u8, c);
    }
}

pub fn puts(s: &str) {
    for &b in s.as_bytes() {
        putc(b);
    }
}

pub fn put_bytes(b: Bytes) {
    for i in 0..b.len {
        putc(b.at(i));
    }
}

/// Prints `v` in base 10 or 16 (digits only).
fn put_num(mut v: u64, base: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b"0123456789abcdef"[(v % base) as usize];
        n += 1;
        v /= base;
        if v == 0 {
            break;
        }
    }
    while n > 0 {
        n -= 1;
        putc(digits[n]);
    }
}

pub fn put_hex(v: u64) {
    puts("0x");
    put_num(v, 16);
}

pub fn put_dec(v: u64) {
    put_num(v, 10);
}

/// Whether a received byte waits in RBR (LSR bit 0).
pub fn rx_ready() -> bool {
    // SAFETY: the UART's line status register, a byte register of refvmm's memory map;
    // reading it has no side effects.
    unsafe { read_volatile((UART + 5) as *const u8) & 1 != 0 }
}

/// Takes the received byte from RBR (the one `rx_ready` announced).
pub fn getc() -> u8 {
    // SAFETY: the UART's receive buffer register, a byte register of refvmm's memory map;
    // reading it consumes the byte.
    unsafe { read_volatile(UART as *const u8) }
}

/// Turns the received-data interrupt on (and OUT2, which gates the line on a PC 16550).
pub fn enable_rx_interrupt() {
    // SAFETY: UART registers of refvmm's memory map (MCR at offset 4, IER at offset 1).
    unsafe {
        write_volatile((UART + 4) as *mut u8, 0x08);
        write_volatile((UART + 1) as *mut u8, 0x01);
    }
}
