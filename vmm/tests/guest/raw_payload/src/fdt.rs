//! The device-tree parser (the few facts the payload checks) and the command-line lookup.
//!
//! With the MMU off the device tree is Device memory: every read is one byte ([`Bytes`]).

use core::ptr::read_volatile;

use crate::sys::fail;
use crate::MAX_CPUS;

/// Bytes in guest memory, read one at a time (Device memory: no unaligned accesses).
#[derive(Clone, Copy)]
pub struct Bytes {
    pub addr: usize,
    pub len: usize,
}

impl Bytes {
    pub fn at(&self, i: usize) -> u8 {
        // SAFETY: callers stay below `len`, inside the device tree refvmm placed in RAM.
        unsafe { read_volatile((self.addr + i) as *const u8) }
    }

    fn eq(&self, s: &[u8]) -> bool {
        self.len == s.len() && (0..s.len()).all(|i| self.at(i) == s[i])
    }

    fn starts_with(&self, s: &[u8]) -> bool {
        self.len >= s.len() && (0..s.len()).all(|i| self.at(i) == s[i])
    }

    fn be(&self, off: usize, n: usize) -> u64 {
        (0..n).fold(0u64, |v, i| (v << 8) | u64::from(self.at(off + i)))
    }

    pub fn sub(&self, off: usize, len: usize) -> Bytes {
        Bytes {
            addr: self.addr + off,
            len,
        }
    }
}

/// What the payload needs from the device tree.
pub struct Facts {
    /// `/chosen/bootargs`, without its terminating NUL.
    pub bootargs: Option<Bytes>,
    /// The `reg` of each `/cpus/cpu@*` node, in device-tree order.
    pub mpidrs: [u64; MAX_CPUS],
    /// How many of `mpidrs` are filled in.
    pub cpus: usize,
    /// Base and size from a memory node's `reg` (the last one, if there are several).
    pub memory: Option<(u64, u64)>,
    /// `/chosen/linux,initrd-start` and `linux,initrd-end`.
    pub initrd_start: Option<u64>,
    pub initrd_end: Option<u64>,
}

const FDT_BEGIN_NODE: u64 = 1;
const FDT_END_NODE: u64 = 2;
const FDT_PROP: u64 = 3;
const FDT_NOP: u64 = 4;
const FDT_END: u64 = 9;

/// Walks the flattened device tree at `addr`; fails the run on a malformed one.
pub fn parse(addr: usize) -> Facts {
    let hdr = Bytes { addr, len: 40 };
    if hdr.be(0, 4) != 0xd00d_feed {
        fail("no device tree magic at x0");
    }
    let total = hdr.be(4, 4) as usize;
    let fdt = Bytes { addr, len: total };
    let structs = hdr.be(8, 4) as usize;
    let strings = hdr.be(12, 4) as usize;
    let mut f = Facts {
        bootargs: None,
        mpidrs: [0; MAX_CPUS],
        cpus: 0,
        memory: None,
        initrd_start: None,
        initrd_end: None,
    };
    // Names of the nodes at depth 1 and 2 of the current path.
    let mut depth = 0usize;
    let mut top = Bytes { addr, len: 0 };
    let mut second = Bytes { addr, len: 0 };
    let mut off = structs;
    loop {
        if off + 4 > total {
            fail("device tree structure runs past its end");
        }
        let token = fdt.be(off, 4);
        off += 4;
        match token {
            FDT_BEGIN_NODE => {
                let mut n = 0;
                while off + n < total && fdt.at(off + n) != 0 {
                    n += 1;
                }
                let name = fdt.sub(off, n);
                depth += 1;
                if depth == 2 {
                    top = name;
                } else if depth == 3 {
                    second = name;
                }
                off = (off + n + 1 + 3) & !3;
            }
            FDT_END_NODE => depth = depth.saturating_sub(1),
            FDT_PROP => {
                let len = fdt.be(off, 4) as usize;
                let nameoff = fdt.be(off + 4, 4) as usize;
                let val = fdt.sub(off + 8, len);
                off = (off + 8 + len + 3) & !3;
                let mut n = 0;
                while strings + nameoff + n < total && fdt.at(strings + nameoff + n) != 0 {
                    n += 1;
                }
                let name = fdt.sub(strings + nameoff, n);
                prop(&mut f, depth, top, second, name, val);
            }
            FDT_NOP => {}
            FDT_END => break,
            _ => fail("unknown device tree token"),
        }
    }
    f
}

fn prop(f: &mut Facts, depth: usize, top: Bytes, second: Bytes, name: Bytes, val: Bytes) {
    if depth == 2 && top.eq(b"chosen") {
        if name.eq(b"bootargs") {
            // The string without its terminating NUL.
            f.bootargs = Some(val.sub(0, val.len.saturating_sub(1)));
        } else if name.eq(b"linux,initrd-start") {
            f.initrd_start = Some(val.be(0, val.len.min(8)));
        } else if name.eq(b"linux,initrd-end") {
            f.initrd_end = Some(val.be(0, val.len.min(8)));
        }
    } else if depth == 2 && top.starts_with(b"memory") && name.eq(b"reg") && val.len >= 16 {
        f.memory = Some((val.be(0, 8), val.be(8, 8)));
    } else if depth == 3 && top.eq(b"cpus") && second.starts_with(b"cpu@") && name.eq(b"reg") {
        if f.cpus == MAX_CPUS {
            fail("more CPUs in the device tree than the payload drives");
        }
        f.mpidrs[f.cpus] = val.be(0, val.len.min(8));
        f.cpus += 1;
    }
}

/// The decimal value of `key` (e.g. `payload.cpus=`) among the space-separated bootargs.
pub fn arg_value(args: Bytes, key: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < args.len {
        let word_start = i;
        while i < args.len && args.at(i) != b' ' {
            i += 1;
        }
        let word = args.sub(word_start, i - word_start);
        if word.starts_with(key) {
            let digits = word.sub(key.len(), word.len - key.len());
            if digits.len == 0 {
                return None;
            }
            let mut v = 0u64;
            for j in 0..digits.len {
                let d = digits.at(j);
                if !d.is_ascii_digit() {
                    return None;
                }
                v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            }
            return Some(v);
        }
        i += 1;
    }
    None
}
