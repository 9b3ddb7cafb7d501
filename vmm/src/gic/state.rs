//! The saved GICv3 state (`gic.bin`): the plain [`GicState`], its encoding, and the checks that
//! decide whether a state is one `Gic`'s restore may write. Nothing here touches KVM, so the
//! decoder builds and is fuzzed on any host; saving and restoring through KVM's vgic-v3
//! device attributes is `super::persist` (aarch64 only).
//!
//! Encoding: the workspace's snapshot header ([`FORMAT`]: magic `REFVMGIC`, version 1.0; see
//! `docs/snapshot-format.md`), then, all little-endian: `nr_irqs` u32, the distributor list, the
//! SPI line levels, the vCPUs; a list is its u32 length then its items (`(u32 offset, u32
//! value)` pairs, u32 words, vCPUs as MPIDR u64, redistributor list, PPI levels u32, CPU
//! interface list of `(u32 encoding, u64 value)`). Every byte is a field, so the format is
//! canonical: a state decodes from exactly one byte string of the current version. (Before the
//! header, `gic.bin` started with a version word, 1, followed by the same fields; the snapshot
//! reader turns such files into this format.)

pub use super::regs::*;
use crate::layout;
use sdei_migration::header::{HeaderError, SnapshotFormat, FLAG_OPTIONAL_ONLY};

/// Most vCPUs a state may describe (refvmm's own limit).
pub const MAX_CPUS: usize = layout::MAX_VCPUS as usize;
/// Largest encoded state (payload) a reader accepts. The largest state [`GicState::check`]
/// allows (1024 interrupts, [`MAX_CPUS`] vCPUs with 7 priority bits) takes about 66 KiB; the
/// `gic_state_largest_state_fits_the_cap` test computes it.
pub const MAX_PAYLOAD_LEN: u64 = 128 << 10;
/// The header format of `gic.bin`.
pub const FORMAT: SnapshotFormat = SnapshotFormat {
    magic: *b"REFVMGIC",
    major: 1,
    minor: 0,
    flags: FLAG_OPTIONAL_ONLY,
    max_payload_len: MAX_PAYLOAD_LEN,
};

/// Errors saving, restoring, encoding or decoding GIC state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM refused a register access.
    #[error("KVM refused to {op} GICv3 register {what} (attribute {attr:#x})")]
    Access {
        /// "read" or "write".
        op: &'static str,
        /// The register.
        what: &'static str,
        /// The `kvm_device_attr.attr` value.
        attr: u64,
        /// The KVM error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// The interrupt count is not one a GICv3 can have.
    #[error("{0} interrupts is not a multiple of 32 between 64 and 1024")]
    BadNrIrqs(u32),
    /// No vCPUs, or more than [`MAX_CPUS`].
    #[error("A GIC state needs between 1 and {MAX_CPUS} vCPUs, not {0}")]
    BadCpuCount(usize),
    /// The device and the caller disagree on the number of interrupts.
    #[error("The GIC has {device} interrupts but the VM was configured with {given}")]
    DeviceNrIrqs {
        /// What `GICD_TYPER` reports.
        device: u32,
        /// What the caller passed.
        given: u32,
    },
    /// The GIC has LPIs (an ITS), whose state is not saved.
    #[error("GIC snapshots do not cover LPIs yet, and this GIC has an ITS")]
    Lpis,
    /// The state was saved from a VM with another number of interrupts.
    #[error("The GIC state has {saved} interrupts but the VM has {vm}")]
    NrIrqsMismatch {
        /// Interrupts in the state.
        saved: u32,
        /// Interrupts in the VM.
        vm: u32,
    },
    /// The state was saved from a VM with another number of vCPUs.
    #[error("The GIC state has {saved} vCPUs but the VM has {vm}")]
    CpuCountMismatch {
        /// vCPUs in the state.
        saved: usize,
        /// vCPUs in the VM.
        vm: usize,
    },
    /// A vCPU's affinity differs between the state and the VM.
    #[error("vCPU {index} has MPIDR {saved:#x} in the GIC state but {vm:#x} in the VM")]
    MpidrMismatch {
        /// vCPU index.
        index: usize,
        /// MPIDR in the state.
        saved: u64,
        /// MPIDR in the VM.
        vm: u64,
    },
    /// A register list is not the one this module saves for the state's shape.
    #[error("The GIC state's {0} registers are not the expected ones")]
    Layout(&'static str),
    /// The encoded state ends early (or a count promises more than the bytes that follow).
    #[error("The encoded GIC state is truncated")]
    Truncated,
    /// The encoded state has bytes after its end (within a payload of a version this build
    /// knows).
    #[error("The encoded GIC state has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// The file was refused by the snapshot-header policy.
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// Result of GIC state operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The whole saved GICv3. Register lists are `(offset or encoding, value)` pairs in restore
/// order; [`GicState::check`] insists they are exactly the lists `snapshot::gic::save`
/// (aarch64) writes for the state's shape, so a state cannot make `snapshot::gic::restore`
/// touch any other register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GicState {
    /// Interrupts (SGIs + PPIs + SPIs) the GIC was configured with.
    pub nr_irqs: u32,
    /// Distributor registers: `(offset, value)`, SPI parts only, `GICD_CTLR` last.
    pub dist: Vec<(u32, u32)>,
    /// Input line levels of the SPIs, one bit each, 32 per word from INTID 32.
    pub spi_levels: Vec<u32>,
    /// Per-vCPU state, in vCPU index order.
    pub cpus: Vec<CpuState>,
}

/// One vCPU's redistributor and CPU interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuState {
    /// The vCPU's MPIDR_EL1 when saved.
    pub mpidr: u64,
    /// Redistributor registers: `(offset from RD_base, value)`; SGI_base is at 0x10000.
    pub redist: Vec<(u32, u32)>,
    /// Input line levels of the PPIs (bit n is INTID n).
    pub ppi_levels: u32,
    /// CPU interface registers: (encoding as from [`sysreg`], value).
    pub icc: Vec<(u32, u64)>,
}

pub(crate) fn check_nr_irqs(nr_irqs: u32) -> Result<()> {
    if (64..=1024).contains(&nr_irqs) && nr_irqs % 32 == 0 {
        Ok(())
    } else {
        Err(Error::BadNrIrqs(nr_irqs))
    }
}

/// Whether `regs` lists exactly the registers of `layout`, in order.
fn same_layout<T>(regs: &[(u32, T)], layout: &[(u32, &str)]) -> bool {
    regs.len() == layout.len() && regs.iter().zip(layout).all(|(r, l)| r.0 == l.0)
}

impl GicState {
    /// Checks the state's own consistency: interrupt and vCPU counts in range, and every
    /// register list exactly what `snapshot::gic::save` writes for that shape.
    pub fn check(&self) -> Result<()> {
        check_nr_irqs(self.nr_irqs)?;
        if self.cpus.is_empty() || self.cpus.len() > MAX_CPUS {
            return Err(Error::BadCpuCount(self.cpus.len()));
        }
        if !same_layout(&self.dist, &dist_layout(self.nr_irqs)) {
            return Err(Error::Layout("distributor"));
        }
        if self.spi_levels.len() as u32 != (self.nr_irqs - 32) / 32 {
            return Err(Error::Layout("SPI line level"));
        }
        for cpu in &self.cpus {
            if !same_layout(&cpu.redist, &REDIST_REGS) {
                return Err(Error::Layout("redistributor"));
            }
            let ctlr = cpu.icc_reg(ICC_CTLR_EL1).unwrap_or_default();
            if !same_layout(&cpu.icc, &icc_layout(ctlr)) {
                return Err(Error::Layout("CPU interface"));
            }
        }
        Ok(())
    }

    /// Checks that the state fits a VM with vCPUs `mpidrs` (in order) and `nr_irqs`
    /// interrupts, and is consistent in itself.
    pub fn check_fits(&self, mpidrs: &[u64], nr_irqs: u32) -> Result<()> {
        if self.nr_irqs != nr_irqs {
            return Err(Error::NrIrqsMismatch {
                saved: self.nr_irqs,
                vm: nr_irqs,
            });
        }
        if self.cpus.len() != mpidrs.len() {
            return Err(Error::CpuCountMismatch {
                saved: self.cpus.len(),
                vm: mpidrs.len(),
            });
        }
        for (index, (cpu, &vm)) in self.cpus.iter().zip(mpidrs).enumerate() {
            if affinity(cpu.mpidr) != affinity(vm) {
                return Err(Error::MpidrMismatch {
                    index,
                    saved: cpu.mpidr,
                    vm,
                });
            }
        }
        self.check()
    }

    /// The saved value of the distributor register at `offset`, if saved.
    pub fn dist_reg(&self, offset: u32) -> Option<u32> {
        find(&self.dist, offset)
    }
}

impl CpuState {
    /// The saved value of the redistributor register at `offset` (from RD_base), if saved.
    pub fn redist_reg(&self, offset: u32) -> Option<u32> {
        find(&self.redist, offset)
    }

    /// The saved value of the CPU interface register `encoding` (see [`sysreg`]), if saved.
    pub fn icc_reg(&self, encoding: u32) -> Option<u64> {
        find(&self.icc, encoding)
    }
}

fn find<T: Copy>(regs: &[(u32, T)], key: u32) -> Option<T> {
    regs.iter().find(|r| r.0 == key).map(|r| r.1)
}

/// Little-endian reader that never reads past its input.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>().ok_or(Error::Truncated)?;
        self.0 = tail;
        Ok(*head)
    }
    fn u32(&mut self) -> Result<u32> {
        self.bytes().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64> {
        self.bytes().map(u64::from_le_bytes)
    }
    /// A count of `size`-byte items, refused if the rest of the input cannot hold them (so no
    /// allocation exceeds the input's size).
    fn count(&mut self, size: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        match n.checked_mul(size) {
            Some(bytes) if bytes <= self.0.len() => Ok(n),
            _ => Err(Error::Truncated),
        }
    }
    fn list<T>(
        &mut self,
        size: usize,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let n = self.count(size)?;
        (0..n).map(|_| item(self)).collect()
    }
}

fn put_list<T>(out: &mut Vec<u8>, items: &[T], mut item: impl FnMut(&mut Vec<u8>, &T)) {
    // Lists are at most a few thousand entries (checked by `GicState::check` on decode).
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for i in items {
        item(out, i);
    }
}

impl GicState {
    /// Encodes the state: the header, then every field little-endian, lists prefixed by their
    /// u32 length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.nr_irqs.to_le_bytes());
        let pair32 = |o: &mut Vec<u8>, &(k, v): &(u32, u32)| {
            o.extend_from_slice(&k.to_le_bytes());
            o.extend_from_slice(&v.to_le_bytes());
        };
        put_list(&mut out, &self.dist, pair32);
        put_list(&mut out, &self.spi_levels, |o, v| {
            o.extend_from_slice(&v.to_le_bytes())
        });
        put_list(&mut out, &self.cpus, |o, cpu| {
            o.extend_from_slice(&cpu.mpidr.to_le_bytes());
            put_list(o, &cpu.redist, pair32);
            o.extend_from_slice(&cpu.ppi_levels.to_le_bytes());
            put_list(o, &cpu.icc, |o, &(k, v)| {
                o.extend_from_slice(&k.to_le_bytes());
                o.extend_from_slice(&v.to_le_bytes());
            });
        });
        // A state `save` takes is at most the size of the largest one `check` allows, which
        // fits the cap (`gic_state_largest_state_fits_the_cap`).
        let mut file = FORMAT.header_for(&out).to_bytes().to_vec();
        file.append(&mut out);
        file
    }

    /// Checks the header, then decodes and checks ([`GicState::check`]) the state; never
    /// allocates more than the input's size. Bytes after the state are refused, unless the
    /// header is of a newer minor that adds only optional data (which they then are).
    pub fn decode(bytes: &[u8]) -> Result<GicState> {
        let (header, payload) = FORMAT.open(bytes)?;
        let mut r = Reader(payload);
        let nr_irqs = r.u32()?;
        let pair32 = |r: &mut Reader| Ok((r.u32()?, r.u32()?));
        let dist = r.list(8, pair32)?;
        let spi_levels = r.list(4, Reader::u32)?;
        // The smallest encoded vCPU: MPIDR, two empty lists, PPI levels.
        let cpus = r.list(20, |r| {
            Ok(CpuState {
                mpidr: r.u64()?,
                redist: r.list(8, pair32)?,
                ppi_levels: r.u32()?,
                icc: r.list(12, |r| Ok((r.u32()?, r.u64()?)))?,
            })
        })?;
        if !r.0.is_empty() && !FORMAT.is_newer(&header) {
            return Err(Error::TrailingBytes(r.0.len()));
        }
        let state = GicState {
            nr_irqs,
            dist,
            spi_levels,
            cpus,
        };
        state.check()?;
        Ok(state)
    }
}

impl crate::persist::Stored for GicState {
    const FILE: &'static str = "gic.bin";

    fn encode(&self) -> crate::snapshot::Result<Vec<u8>> {
        Ok(GicState::encode(self))
    }

    fn decode(bytes: &[u8]) -> crate::snapshot::Result<Self> {
        GicState::decode(bytes).map_err(|e| crate::snapshot::Error::Part {
            what: "GIC state",
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state of the shape `save` writes, with distinct values in every register.
    fn state(nr_irqs: u32, mpidrs: &[u64], pri_bits: u64) -> GicState {
        let ctlr = (pri_bits - 1) << 8;
        GicState {
            nr_irqs,
            dist: dist_layout(nr_irqs)
                .iter()
                .enumerate()
                .map(|(i, &(off, _))| (off, i as u32 * 7))
                .collect(),
            spi_levels: (0..(nr_irqs - 32) / 32).map(|i| 1 << i).collect(),
            cpus: mpidrs
                .iter()
                .map(|&mpidr| CpuState {
                    mpidr,
                    redist: REDIST_REGS.iter().map(|&(off, _)| (off, off ^ 5)).collect(),
                    ppi_levels: 0x8000_0001,
                    icc: icc_layout(ctlr)
                        .iter()
                        .map(|&(reg, _)| (reg, if reg == ICC_CTLR_EL1 { ctlr } else { 3 }))
                        .collect(),
                })
                .collect(),
        }
    }
    #[test]
    fn gic_state_sysreg_encodings_match_the_architecture() {
        assert_eq!(sysreg(3, 0, 4, 6, 0), 0xc230); // ICC_PMR_EL1
        assert_eq!(ICC_CTLR_EL1, 0xc664);
    }

    #[test]
    fn gic_state_ap_count_follows_priority_bits() {
        assert_eq!(ap_count(4 << 8), 1);
        assert_eq!(ap_count(5 << 8), 2);
        assert_eq!(ap_count(6 << 8), 4);
    }

    #[test]
    fn gic_state_dist_layout_covers_spis_only_and_ends_with_ctlr() {
        let layout = dist_layout(128);
        // IIDR, STATUSR, 3 words of each 1-bit register (5), 24 priority, 6 config, 192 router
        // halves, CTLR.
        assert_eq!(layout.len(), 2 + 5 * 3 + 24 + 6 + 192 + 1);
        assert_eq!(layout.last(), Some(&(GICD_CTLR, "GICD_CTLR")));
        assert!(layout.iter().any(|&(o, _)| o == 0x6000 + 8 * 32));
        assert!(!layout
            .iter()
            .any(|&(o, _)| o == 0x6000 + 8 * 31 || o == 0x100));
    }

    #[test]
    fn gic_state_encodes_to_bytes_that_decode_to_it() {
        let s = state(128, &[0x8000_0000, 0x8000_0001], 5);
        let bytes = s.encode();
        assert_eq!(GicState::decode(&bytes).unwrap(), s);
        let big = state(1024, &[0x8000_0000], 7);
        assert_eq!(GicState::decode(&big.encode()).unwrap(), big);
        assert_eq!(big.cpus[0].icc.len(), 7 + 2 * 4);
    }

    /// `bytes` (an encoded state) with its payload edited and the header made to match.
    fn repayload(bytes: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut payload = bytes[HEADER_LEN..].to_vec();
        edit(&mut payload);
        FORMAT.seal(&payload).unwrap()
    }

    const HEADER_LEN: usize = sdei_migration::header::HEADER_LEN;

    #[test]
    fn gic_state_damage_is_refused_with_its_own_error() {
        let bytes = state(64, &[0x8000_0000], 5).encode();
        let decode = |b: &[u8]| GicState::decode(b).unwrap_err();
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Error::Header(HeaderError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&repayload(&bytes, |p| p.truncate(p.len() - 1))),
            Error::Truncated
        ));
        assert!(matches!(
            decode(&repayload(&bytes, |p| p.push(0))),
            Error::TrailingBytes(1)
        ));
        let mut magic = bytes.clone();
        magic[3] = b'X';
        assert!(matches!(
            decode(&magic),
            Error::Header(HeaderError::BadMagic { .. })
        ));
        let irqs = repayload(&bytes, |p| p[0] = 65);
        assert!(matches!(decode(&irqs), Error::BadNrIrqs(65)));
        // The first distributor register's offset (after nr_irqs and the list length).
        let off = repayload(&bytes, |p| p[8] ^= 4);
        assert!(matches!(decode(&off), Error::Layout("distributor")));
        // A count far beyond the input is refused before anything is allocated.
        let count = repayload(&bytes, |p| p[4..8].copy_from_slice(&u32::MAX.to_le_bytes()));
        assert!(matches!(decode(&count), Error::Truncated));
    }

    #[test]
    fn gic_state_largest_state_fits_the_cap() {
        let mpidrs: Vec<u64> = (0..MAX_CPUS as u64).map(|i| 0xff_00ff_ff00 | i).collect();
        let largest = state(1024, &mpidrs, 7);
        assert!(largest.check().is_ok());

        let payload = largest.encode().len() - HEADER_LEN;

        println!("largest GIC state: {payload} bytes, cap {MAX_PAYLOAD_LEN}");
        assert!(payload as u64 <= MAX_PAYLOAD_LEN);
        assert!(
            payload as u64 > MAX_PAYLOAD_LEN / 4,
            "the cap is not wildly loose"
        );
        assert_eq!(GicState::decode(&largest.encode()).unwrap(), largest);
    }

    #[test]
    fn gic_state_check_fits_compares_shape_and_affinity_only() {
        let s = state(128, &[0x8000_0000, 0x8000_0101], 5);
        assert!(s.check_fits(&[0x8000_0000, 0x0000_0101], 128).is_ok());
        assert!(matches!(
            s.check_fits(&[0x8000_0000, 0x8000_0102], 128),
            Err(Error::MpidrMismatch { index: 1, .. })
        ));
        assert!(matches!(
            s.check_fits(&[0x8000_0000], 128),
            Err(Error::CpuCountMismatch { saved: 2, vm: 1 })
        ));
        assert!(matches!(
            s.check_fits(&[0x8000_0000, 0x8000_0101], 64),
            Err(Error::NrIrqsMismatch { saved: 128, vm: 64 })
        ));
    }
}
