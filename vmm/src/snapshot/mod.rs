//! Snapshot and restore: one directory per snapshot, described by a manifest with a fixed,
//! self-checking header; every other file listed in the manifest with its length and CRC32.
//!
//! ```text
//! <dir>/manifest.bin   header (32 bytes) + postcard Manifest
//! <dir>/vcpus.bin      postcard Vec<VcpuState>     (all KVM_GET_REG_LIST registers, MP state)
//! <dir>/gic.bin        GICv3 state                  (distributor, redistributors, CPU interfaces)
//! <dir>/memory.bin     guest RAM, raw
//! <dir>/mte-tags.bin   mte-memory TagSnapshot       (with --mte)
//! <dir>/sdei.bin       sdei-migration snapshot      (with --sdei)
//! <dir>/serial.bin     postcard SerialWire          (console registers and input FIFO)
//! ```
//! Header: magic `REFVMSNP`, format major u16, minor u16, flags u32, payload length u64,
//! payload CRC32, header CRC32 (of the 28 bytes before it), all little-endian. A newer major or
//! minor is refused (this format defines no optional data yet); sizes are capped before any
//! allocation; every component's length and CRC are checked before it is used.

#[cfg(target_arch = "aarch64")]
pub mod gic;
#[cfg(target_arch = "aarch64")]
pub mod vcpu;

use crate::config::{CpuFeatures, SeccompMode, VmConfig};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Manifest magic.
pub const MAGIC: [u8; 8] = *b"REFVMSNP";
/// Format major version.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version.
pub const FORMAT_MINOR: u16 = 0;
/// Header size.
pub const HEADER_LEN: usize = 32;
/// Largest manifest payload.
pub const MAX_MANIFEST: u64 = 1 << 20;
/// Largest non-memory component.
pub const MAX_COMPONENT: u64 = 256 << 20;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.bin";

/// Errors of snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("Snapshot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The manifest is shorter than its header says.
    #[error("Snapshot manifest is truncated ({0} bytes)")]
    Truncated(usize),
    /// Not a refvmm snapshot.
    #[error("Not a refvmm snapshot manifest (bad magic)")]
    BadMagic,
    /// Written by a newer refvmm.
    #[error(
        "Snapshot format {major}.{minor} is newer than this refvmm understands ({}.{})",
        FORMAT_MAJOR,
        FORMAT_MINOR
    )]
    Newer {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// Unknown flag bits.
    #[error("Snapshot manifest has unknown flags {0:#x}")]
    Flags(u32),
    /// A size is beyond the caps.
    #[error("Snapshot {what} is too large ({size} bytes)")]
    Oversized {
        /// What.
        what: String,
        /// Its size.
        size: u64,
    },
    /// A checksum does not match.
    #[error("Snapshot {0} is corrupted (checksum mismatch)")]
    Checksum(String),
    /// A component's length differs from the manifest's.
    #[error("Snapshot {name} has {actual} bytes, the manifest says {expected}")]
    Length {
        /// Component.
        name: String,
        /// Expected.
        expected: u64,
        /// Found.
        actual: u64,
    },
    /// A component is missing from the manifest.
    #[error("Snapshot lacks its {0} component")]
    Missing(&'static str),
    /// A payload does not decode.
    #[error("Snapshot {what} cannot be decoded: {reason}")]
    Decode {
        /// What.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The manifest describes an impossible VM.
    #[error("Snapshot describes an invalid VM: {0}")]
    Invalid(String),
}

/// Result of snapshot file operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The VM shape a snapshot was taken of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmShape {
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM bytes.
    pub memory: u64,
    /// MTE.
    pub mte: bool,
    /// SDEI.
    pub sdei: bool,
    /// PMU.
    pub pmu: bool,
    /// SVE.
    pub sve: bool,
    /// Pointer authentication.
    pub pauth: bool,
    /// The original command line (for information).
    pub cmdline: String,
}

/// A listed component file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// File name inside the snapshot directory.
    pub name: String,
    /// Length in bytes.
    pub len: u64,
    /// CRC32 of the contents.
    pub crc: u32,
}

/// The manifest payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The VM shape.
    pub shape: VmShape,
    /// vCPU MPIDRs at snapshot time.
    pub mpidrs: Vec<u64>,
    /// Component files.
    pub components: Vec<Component>,
}

impl VmShape {
    /// The shape of a configured VM.
    pub fn of(cfg: &VmConfig) -> Self {
        VmShape {
            cpus: cfg.cpus,
            memory: cfg.memory,
            mte: cfg.mte,
            sdei: cfg.sdei,
            pmu: cfg.features.pmu,
            sve: cfg.features.sve,
            pauth: cfg.features.pauth,
            cmdline: cfg.cmdline.clone(),
        }
    }

    /// A VM configuration that recreates this shape (to be restored, not booted).
    pub fn to_config(
        &self,
        dir: &Path,
        seccomp: SeccompMode,
        api_socket: Option<PathBuf>,
    ) -> Result<VmConfig> {
        if self.cpus == 0 || self.cpus > crate::layout::MAX_VCPUS {
            return Err(Error::Invalid(format!("{} vCPUs", self.cpus)));
        }
        if self.memory < crate::config::MIN_MEMORY
            || self.memory > crate::config::MAX_MEMORY
            || self.memory % (2 << 20) != 0
        {
            return Err(Error::Invalid(format!("{} bytes of memory", self.memory)));
        }
        Ok(VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: self.cmdline.clone(),
            cpus: self.cpus,
            memory: self.memory,
            mte: self.mte,
            sdei: self.sdei,
            features: CpuFeatures {
                pmu: self.pmu,
                sve: self.sve,
                pauth: self.pauth,
            },
            its: false,
            pmem: Vec::new(),
            seccomp,
            api_socket,
            restore: Some(dir.to_path_buf()),
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes a manifest with its header.
pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    // Serialising plain structs into a Vec cannot fail.
    let payload = postcard::to_allocvec(m).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let hcrc = crc32fast::hash(&out[..28]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes and checks a manifest.
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::Truncated(bytes.len()));
    }
    if bytes[..8] != MAGIC {
        return Err(Error::BadMagic);
    }
    let (major, minor) = (le16(bytes, 8), le16(bytes, 10));
    if major > FORMAT_MAJOR || (major == FORMAT_MAJOR && minor > FORMAT_MINOR) {
        return Err(Error::Newer { major, minor });
    }
    if le32(bytes, 28) != crc32fast::hash(&bytes[..28]) {
        return Err(Error::Checksum("manifest header".into()));
    }
    let flags = le32(bytes, 12);
    if flags != 0 {
        return Err(Error::Flags(flags));
    }
    let len = le64(bytes, 16);
    if len > MAX_MANIFEST {
        return Err(Error::Oversized {
            what: "manifest".into(),
            size: len,
        });
    }
    let payload = &bytes[HEADER_LEN..];
    if (payload.len() as u64) < len {
        return Err(Error::Truncated(bytes.len()));
    }
    if payload.len() as u64 > len {
        return Err(Error::Length {
            name: MANIFEST.into(),
            expected: HEADER_LEN as u64 + len,
            actual: bytes.len() as u64,
        });
    }
    if le32(bytes, 24) != crc32fast::hash(payload) {
        return Err(Error::Checksum("manifest".into()));
    }
    let m: Manifest = postcard::from_bytes(payload).map_err(|e| Error::Decode {
        what: "manifest",
        reason: e.to_string(),
    })?;
    if m.mpidrs.len() != usize::from(m.shape.cpus) {
        return Err(Error::Invalid(format!(
            "{} MPIDRs for {} vCPUs",
            m.mpidrs.len(),
            m.shape.cpus
        )));
    }
    if m.components.len() > 16 {
        return Err(Error::Invalid(format!("{} components", m.components.len())));
    }
    for c in &m.components {
        let ok_name = !c.name.is_empty()
            && c.name.len() < 64
            && c.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !c.name.starts_with('.');
        if !ok_name {
            return Err(Error::Invalid(format!("component name {:?}", c.name)));
        }
        let cap = if c.name == "memory.bin" {
            m.shape.memory
        } else {
            MAX_COMPONENT
        };
        if c.len > cap {
            return Err(Error::Oversized {
                what: c.name.clone(),
                size: c.len,
            });
        }
    }
    Ok(m)
}

/// Writes a snapshot directory: components first, the manifest last (a directory without a
/// manifest is not a snapshot).
pub struct Writer {
    dir: PathBuf,
    components: Vec<Component>,
}

impl Writer {
    /// Creates `dir`, which must not exist yet.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir(dir).map_err(io(dir))?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            components: Vec::new(),
        })
    }

    /// Writes one component from memory.
    pub fn put(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.put_with(name, |w| w.write_all(data))
    }

    /// Writes one component through a writer (for guest memory: no intermediate copy).
    pub fn put_with(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<()> {
        let path = self.dir.join(name);
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        let mut w = CrcWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            len: 0,
        };
        f(&mut w).map_err(io(&path))?;
        w.inner.flush().map_err(io(&path))?;
        w.inner.get_ref().sync_all().map_err(io(&path))?;
        self.components.push(Component {
            name: name.to_string(),
            len: w.len,
            crc: w.crc.finalize(),
        });
        Ok(())
    }

    /// Writes the manifest; the snapshot is complete once this returns.
    pub fn finish(self, shape: VmShape, mpidrs: Vec<u64>) -> Result<PathBuf> {
        let m = Manifest {
            shape,
            mpidrs,
            components: self.components,
        };
        let path = self.dir.join(MANIFEST);
        let mut f = std::fs::File::create(&path).map_err(io(&path))?;
        f.write_all(&encode_manifest(&m)).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        Ok(self.dir)
    }
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a snapshot directory, checking each component against the manifest when used.
pub struct Reader {
    dir: PathBuf,
    /// The checked manifest.
    pub manifest: Manifest,
}

impl Reader {
    /// Opens `dir` and checks its manifest.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let mut f = std::fs::File::open(&path).map_err(io(&path))?;
        let mut bytes = Vec::new();
        Read::by_ref(&mut f)
            .take(MAX_MANIFEST + HEADER_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io(&path))?;
        Ok(Reader {
            dir: dir.to_path_buf(),
            manifest: decode_manifest(&bytes)?,
        })
    }

    fn component(&self, name: &'static str) -> Result<&Component> {
        self.manifest
            .components
            .iter()
            .find(|c| c.name == name)
            .ok_or(Error::Missing(name))
    }

    /// Whether the snapshot has `name`.
    pub fn has(&self, name: &str) -> bool {
        self.manifest.components.iter().any(|c| c.name == name)
    }

    /// Reads component `name` through `f` in chunks, then checks length and CRC. `f` sees
    /// the data before the check completes: callers must treat the result as unusable when
    /// this returns an error.
    pub fn stream(
        &self,
        name: &'static str,
        mut f: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let c = self.component(name)?;
        let path = self.dir.join(name);
        let mut file = std::fs::File::open(&path).map_err(io(&path))?;
        let actual = file.metadata().map_err(io(&path))?.len();
        if actual != c.len {
            return Err(Error::Length {
                name: name.into(),
                expected: c.len,
                actual,
            });
        }
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io(&path))?;
            if n == 0 {
                break;
            }
            crc.update(&buf[..n]);
            f(off, &buf[..n])?;
            off += n as u64;
        }
        if off != c.len {
            return Err(Error::Length {
                name: name.into(),
                expected: c.len,
                actual: off,
            });
        }
        if crc.finalize() != c.crc {
            return Err(Error::Checksum(name.into()));
        }
        Ok(())
    }

    /// Reads a whole (small) component, checked.
    pub fn read(&self, name: &'static str) -> Result<Vec<u8>> {
        let c = self.component(name)?;
        if c.len > MAX_COMPONENT {
            return Err(Error::Oversized {
                what: name.into(),
                size: c.len,
            });
        }
        let mut out = Vec::with_capacity(c.len as usize);
        self.stream(name, |_, chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }
}

/// The console's saved registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialWire {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub regs: [u8; 9],
    /// Bytes waiting in the receive FIFO.
    pub input: Vec<u8>,
}

/// Decodes a postcard component.
pub fn decode<T: for<'de> Deserialize<'de>>(what: &'static str, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Decode {
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            shape: VmShape {
                cpus: 2,
                memory: 512 << 20,
                mte: true,
                sdei: true,
                pmu: false,
                sve: false,
                pauth: false,
                cmdline: "console=ttyS0".into(),
            },
            mpidrs: vec![0x8000_0000, 0x8000_0001],
            components: vec![Component {
                name: "memory.bin".into(),
                len: 512 << 20,
                crc: 7,
            }],
        }
    }

    #[test]
    fn manifest_round_trips() {
        let m = manifest();
        assert_eq!(decode_manifest(&encode_manifest(&m)).unwrap(), m);
    }

    #[test]
    fn every_kind_of_damage_gets_its_own_error() {
        let good = encode_manifest(&manifest());
        assert!(matches!(
            decode_manifest(&good[..20]),
            Err(Error::Truncated(20))
        ));
        assert!(matches!(
            decode_manifest(&good[..good.len() - 1]),
            Err(Error::Truncated(_))
        ));
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(decode_manifest(&b), Err(Error::BadMagic)));
        let mut b = good.clone();
        b[8] = 2;
        assert!(matches!(
            decode_manifest(&b),
            Err(Error::Newer { major: 2, .. })
        ));
        let mut b = good.clone();
        b[10] = 1;
        assert!(matches!(
            decode_manifest(&b),
            Err(Error::Newer { major: 1, minor: 1 })
        ));
        let mut b = good.clone();
        b[12] = 1;
        assert!(matches!(decode_manifest(&b), Err(Error::Checksum(_))));
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(decode_manifest(&b), Err(Error::Checksum(_))));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(decode_manifest(&b), Err(Error::Length { .. })));
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut b = encode_manifest(&manifest())[..HEADER_LEN].to_vec();
        b[16..24].copy_from_slice(&(MAX_MANIFEST + 1).to_le_bytes());
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode_manifest(&b), Err(Error::Oversized { .. })));
    }

    #[test]
    fn impossible_manifests_are_refused() {
        let mut m = manifest();
        m.mpidrs.pop();
        assert!(matches!(
            decode_manifest(&encode_manifest(&m)),
            Err(Error::Invalid(_))
        ));
        let mut m = manifest();
        m.components[0].name = "../etc/passwd".into();
        assert!(matches!(
            decode_manifest(&encode_manifest(&m)),
            Err(Error::Invalid(_))
        ));
        let mut m = manifest();
        m.components[0].len = (512 << 20) + 1;
        assert!(matches!(
            decode_manifest(&encode_manifest(&m)),
            Err(Error::Oversized { .. })
        ));
    }

    #[test]
    fn components_are_checked_for_length_and_checksum() {
        let dir = std::env::temp_dir().join(format!("refvmm-snap-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = Writer::create(&dir).unwrap();
        w.put("sdei.bin", b"hello").unwrap();
        w.finish(manifest().shape, manifest().mpidrs).unwrap();
        let r = Reader::open(&dir).unwrap();
        assert_eq!(r.read("sdei.bin").unwrap(), b"hello");
        assert!(matches!(r.read("gic.bin"), Err(Error::Missing("gic.bin"))));
        std::fs::write(dir.join("sdei.bin"), b"hellO").unwrap();
        assert!(matches!(r.read("sdei.bin"), Err(Error::Checksum(_))));
        std::fs::write(dir.join("sdei.bin"), b"hell").unwrap();
        assert!(matches!(r.read("sdei.bin"), Err(Error::Length { .. })));
        assert!(
            Writer::create(&dir).is_err(),
            "an existing directory is never overwritten"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
