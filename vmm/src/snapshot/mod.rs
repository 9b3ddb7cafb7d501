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
pub mod gic_state;
pub mod kvm_abi;
#[cfg(target_arch = "aarch64")]
pub mod vcpu;
pub mod vcpu_state;

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
    /// The snapshot's destination already exists; snapshots never overwrite anything.
    #[error(
        "Snapshot destination {0} already exists (snapshots never overwrite; name a new directory)"
    )]
    Exists(PathBuf),
    /// A snapshot file is not a regular file (a FIFO, a device, a directory or a symbolic
    /// link): refused without reading from it.
    #[error("Snapshot file {path} is {kind}, not a regular file")]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
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
        api_socket: Option<crate::api::ApiSocket>,
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
///
/// Nothing that exists is ever overwritten or removed. Everything is written into a new
/// staging directory next to the destination (`.<name>.partial-<pid>`, mode 0700), each file
/// created exclusively and synced; [`Writer::finish`] syncs the staging directory, renames it
/// to the destination with `RENAME_NOREPLACE` (so a destination that appeared meanwhile is not
/// replaced either) and syncs the parent. A `Writer` dropped before `finish` succeeded removes
/// exactly the files it created and its staging directory, by name, and nothing else.
pub struct Writer {
    dir: PathBuf,
    staging: PathBuf,
    components: Vec<Component>,
    /// Files created in `staging`, for the clean-up of a failed snapshot.
    created: Vec<String>,
    finished: bool,
}

impl Writer {
    /// Starts a snapshot into `dir`, which must not exist yet.
    pub fn create(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        if std::fs::symlink_metadata(dir).is_ok() {
            return Err(Error::Exists(dir.to_path_buf()));
        }
        let name = dir
            .file_name()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::Invalid(format!("{} names no directory", dir.display())))?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut staging_name = std::ffi::OsString::from(".");
        staging_name.push(name);
        staging_name.push(format!(".partial-{}", std::process::id()));
        let staging = parent.join(staging_name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(io(&staging))?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            staging,
            components: Vec::new(),
            created: Vec::new(),
            finished: false,
        })
    }

    /// Creates `name` in the staging directory: exclusively, never through a link, 0600.
    fn new_file(&mut self, name: &str) -> Result<(PathBuf, std::fs::File)> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.staging.join(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io(&path))?;
        self.created.push(name.to_string());
        Ok((path, file))
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
        let (path, file) = self.new_file(name)?;
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

    /// Writes the manifest and moves the snapshot into place; it is complete, and durable,
    /// once this returns. Returns the snapshot's size in bytes (every file, manifest
    /// included), counted while writing: the directory is never listed.
    pub fn finish(mut self, shape: VmShape, mpidrs: Vec<u64>) -> Result<u64> {
        let m = Manifest {
            shape,
            mpidrs,
            components: std::mem::take(&mut self.components),
        };
        let components: u64 = m.components.iter().map(|c| c.len).sum();
        let manifest = encode_manifest(&m);
        let (path, mut f) = self.new_file(MANIFEST)?;
        f.write_all(&manifest).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        drop(f);
        sync_dir(&self.staging)?;
        rename_noreplace(&self.staging, &self.dir)?;
        self.finished = true;
        let parent = match self.dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
        Ok(components + manifest.len() as u64)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Only what this writer created, by name: no directory listing, no recursion.
        for name in &self.created {
            let _ = std::fs::remove_file(self.staging.join(name));
        }
        let _ = std::fs::remove_dir(&self.staging);
    }
}

/// `fsync` of a directory, so that the names in it are on the disk.
fn sync_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// `rename(from, to)` that fails with `Exists` instead of replacing an existing `to` (plain
/// `rename` replaces an empty directory).
fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::Invalid(format!("{} contains a NUL byte", p.display())))
    };
    let (cf, ct) = (c(from)?, c(to)?);
    // SAFETY: both pointers are NUL-terminated strings that live across the call; renameat2
    // only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        Err(Error::Exists(to.to_path_buf()))
    } else {
        Err(Error::Io {
            path: to.to_path_buf(),
            source: e,
        })
    }
}

/// Opens a snapshot file for reading only if it is a regular file: no symbolic links
/// (`O_NOFOLLOW`), and a FIFO or device is refused at once (`O_NONBLOCK` keeps the open from
/// waiting for a FIFO's writer; the type is checked on the opened descriptor).
fn open_regular(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::NotAFile {
                    path: path.to_path_buf(),
                    kind: "a symbolic link",
                }
            } else {
                Error::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
    let t = file.metadata().map_err(io(path))?.file_type();
    if t.is_file() {
        return Ok(file);
    }
    let kind = if t.is_fifo() {
        "a FIFO"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    };
    Err(Error::NotAFile {
        path: path.to_path_buf(),
        kind,
    })
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
        let mut f = open_regular(&path)?;
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
        let mut file = open_regular(&path)?;
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

    /// Reads a whole (small) component, checked. The buffer is allocated only once the file's
    /// size is known to be the manifest's (at most [`MAX_COMPONENT`]), so a manifest that lies
    /// about a small file costs no large allocation.
    pub fn read(&self, name: &'static str) -> Result<Vec<u8>> {
        let c = self.component(name)?;
        if c.len > MAX_COMPONENT {
            return Err(Error::Oversized {
                what: name.into(),
                size: c.len,
            });
        }
        let mut out = Vec::new();
        // `stream` checks the file's length against the manifest before the first chunk.
        self.stream(name, |off, chunk| {
            if off == 0 {
                out.reserve_exact(c.len as usize);
            }
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

    /// A scratch directory of its own per test, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(what: &str) -> Self {
            let d = std::env::temp_dir().join(format!("refvmm-snap-{what}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
        /// Every path under the directory, sorted, with file contents.
        fn tree(&self) -> Vec<(PathBuf, Option<Vec<u8>>)> {
            fn walk(p: &Path, out: &mut Vec<(PathBuf, Option<Vec<u8>>)>) {
                for e in std::fs::read_dir(p).unwrap().flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        out.push((path.clone(), None));
                        walk(&path, out);
                    } else {
                        out.push((path.clone(), std::fs::read(&path).ok()));
                    }
                }
            }
            let mut v = Vec::new();
            walk(&self.0, &mut v);
            v.sort();
            v
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn an_existing_destination_is_refused_and_left_as_it_was() {
        let s = Scratch::new("exists");
        let empty = s.0.join("empty");
        std::fs::create_dir(&empty).unwrap();
        let full = s.0.join("full");
        std::fs::create_dir_all(full.join("sub")).unwrap();
        std::fs::write(full.join(MANIFEST), b"an earlier good snapshot").unwrap();
        std::fs::write(full.join("sub/memory.bin"), b"guest RAM").unwrap();
        let file = s.0.join("file");
        std::fs::write(&file, b"not a directory").unwrap();
        let dangling = s.0.join("dangling");
        std::os::unix::fs::symlink(s.0.join("nowhere"), &dangling).unwrap();
        let before = s.tree();
        for dest in [&empty, &full, &file, &dangling, &s.0] {
            assert!(
                matches!(Writer::create(dest), Err(Error::Exists(ref p)) if p == dest),
                "{}",
                dest.display()
            );
        }
        assert_eq!(s.tree(), before, "nothing was added or removed");
    }

    #[test]
    fn a_failed_snapshot_removes_only_what_it_created() {
        let s = Scratch::new("fails");
        std::fs::write(s.0.join("neighbour"), b"keep me").unwrap();
        let before = s.tree();
        let dest = s.0.join("snap");
        let mut w = Writer::create(&dest).unwrap();
        w.put("vcpus.bin", b"registers").unwrap();
        let e = w.put_with("memory.bin", |out| {
            out.write_all(b"half of the ")?;
            Err(std::io::Error::other("the disk is full"))
        });
        assert!(matches!(e, Err(Error::Io { .. })), "{e:?}");
        drop(w);
        assert!(!dest.exists());
        assert_eq!(
            s.tree(),
            before,
            "the staging directory and its files are gone"
        );
    }

    #[test]
    fn a_destination_that_appears_during_the_snapshot_is_not_replaced() {
        let s = Scratch::new("race");
        let dest = s.0.join("snap");
        let mut w = Writer::create(&dest).unwrap();
        w.put("sdei.bin", b"state").unwrap();
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("theirs"), b"someone else's").unwrap();
        let before = s.tree();
        let e = w.finish(manifest().shape, manifest().mpidrs);
        assert!(matches!(e, Err(Error::Exists(_))), "{e:?}");
        assert_eq!(
            s.tree().len(),
            before.len() - 2,
            "only the staging directory and its file went"
        );
        assert_eq!(
            std::fs::read(dest.join("theirs")).unwrap(),
            b"someone else's"
        );
    }

    #[test]
    fn a_finished_snapshot_stands_alone_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let s = Scratch::new("done");
        let dest = s.0.join("snap");
        let mut w = Writer::create(&dest).unwrap();
        w.put("sdei.bin", b"state").unwrap();
        let bytes = w.finish(manifest().shape, manifest().mpidrs).unwrap();
        let on_disk = std::fs::metadata(dest.join("sdei.bin")).unwrap().len()
            + std::fs::metadata(dest.join(MANIFEST)).unwrap().len();
        assert_eq!(bytes, on_disk);
        let names: Vec<_> = std::fs::read_dir(&s.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["snap"], "no staging directory is left");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dest), 0o700);
        assert_eq!(mode(&dest.join("sdei.bin")), 0o600);
        assert_eq!(mode(&dest.join(MANIFEST)), 0o600);
        assert_eq!(
            Reader::open(&dest).unwrap().read("sdei.bin").unwrap(),
            b"state"
        );
    }

    #[test]
    fn a_fifo_manifest_is_refused_at_once() {
        let s = Scratch::new("fifo");
        let fifo = s.0.join(MANIFEST);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = std::time::Instant::now();
        let e = Reader::open(&s.0)
            .err()
            .expect("a FIFO manifest is refused");
        assert!(matches!(e, Error::NotAFile { kind: "a FIFO", .. }), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn components_behind_symbolic_links_are_refused() {
        let s = Scratch::new("links");
        let dest = s.0.join("snap");
        let mut w = Writer::create(&dest).unwrap();
        w.put("sdei.bin", b"state").unwrap();
        w.finish(manifest().shape, manifest().mpidrs).unwrap();
        std::fs::write(s.0.join("elsewhere"), b"state").unwrap();
        std::fs::remove_file(dest.join("sdei.bin")).unwrap();
        std::os::unix::fs::symlink(s.0.join("elsewhere"), dest.join("sdei.bin")).unwrap();
        let e = Reader::open(&dest).unwrap().read("sdei.bin").unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotAFile {
                    kind: "a symbolic link",
                    ..
                }
            ),
            "{e}"
        );
        let m = dest.join(MANIFEST);
        std::fs::rename(&m, s.0.join("manifest")).unwrap();
        std::os::unix::fs::symlink(s.0.join("manifest"), &m).unwrap();
        assert!(matches!(
            Reader::open(&dest),
            Err(Error::NotAFile {
                kind: "a symbolic link",
                ..
            })
        ));
    }
}
