//! Snapshot and restore: one directory per snapshot, described by a manifest; every other file
//! listed in the manifest with its length and CRC32.
//!
//! ```text
//! <dir>/manifest.bin   header + postcard Manifest
//! <dir>/vcpus.bin      header + postcard Vec<VcpuState>  (all KVM_GET_REG_LIST registers, MP state)
//! <dir>/gic.bin        header + GICv3 state              (distributor, redistributors, CPU interfaces)
//! <dir>/memory.bin     guest RAM, raw
//! <dir>/mte-tags.bin   mte-memory TagSnapshot            (with --mte; mte-memory's header)
//! <dir>/sdei.bin       sdei-migration snapshot           (with --sdei; sdei-migration's header)
//! <dir>/serial.bin     header + postcard ConsoleState    (console registers and input FIFO)
//! ```
//! Every file but the raw guest RAM starts with the workspace's one snapshot header (magic,
//! major, minor, flags, payload length, payload CRC32, header CRC32) and follows its rules
//! (`docs/snapshot-format.md`), through sdei-migration's implementation of them
//! ([`sdei_migration::header`]); each format has its own magic and version ([`MANIFEST_FORMAT`],
//! [`crate::vcpu::state::FILE`], [`gic_state::FORMAT`], [`crate::devices::serial::STATE_FILE`]).
//! Each part's state is stored next to the part's code ([`crate::persist`]); this module is the
//! directory, its manifest and the checks every file passes. Sizes are capped before any allocation; every
//! component's length and CRC are checked against the manifest before it is used.
//!
//! Manifest format 1.1 is the first whose vCPU, GIC and console files carry the header; in a
//! snapshot of format 1.0 they were bare (postcard, and the GIC state behind a version word),
//! and [`Reader::read`] gives them the header, so the decoders read one format only.

use crate::config::VmConfig;
use crate::gic::state as gic_state;
use crate::persist::Stored;
use sdei_migration::header::{HeaderError, SnapshotFormat, SnapshotHeader, FLAG_OPTIONAL_ONLY};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Manifest magic.
pub const MAGIC: [u8; 8] = *b"REFVMSNP";
/// Format major version of the snapshot directory (its manifest).
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version of the snapshot directory: 1, whose vCPU, GIC and console files carry
/// the shared header (1.0's did not; [`Reader`] reads both).
pub const FORMAT_MINOR: u16 = 1;
/// Header size (the same for every snapshot file).
pub const HEADER_LEN: usize = sdei_migration::header::HEADER_LEN;
/// Largest manifest payload.
pub const MAX_MANIFEST: u64 = 1 << 20;
/// Largest non-memory component.
pub const MAX_COMPONENT: u64 = 256 << 20;

/// The manifest's format.
pub const MANIFEST_FORMAT: SnapshotFormat = SnapshotFormat {
    magic: MAGIC,
    major: FORMAT_MAJOR,
    minor: FORMAT_MINOR,
    flags: FLAG_OPTIONAL_ONLY,
    max_payload_len: MAX_MANIFEST,
};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.bin";

/// Errors of snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("Snapshot file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A snapshot file refused by the snapshot-header policy.
    #[error("Snapshot {file}: {error}")]
    Header {
        /// The file.
        file: &'static str,
        /// What the header policy refused.
        error: HeaderError,
    },
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
    #[error("Snapshot {what} cannot be decoded")]
    Decode {
        /// What.
        what: &'static str,
        /// Why.
        source: DecodeError,
    },
    /// A part's state in a snapshot file cannot be used: it does not decode, or does not
    /// fit the VM.
    #[error("Snapshot {what} cannot be used")]
    Part {
        /// Which part.
        what: &'static str,
        /// Why not.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A state does not encode.
    #[error("Snapshot {what} cannot be encoded")]
    Encode {
        /// What.
        what: &'static str,
        /// Why.
        source: postcard::Error,
    },
    /// The manifest describes an impossible VM.
    #[error("Snapshot describes an invalid VM")]
    Invalid(#[source] Invalid),
    /// A snapshot path cannot be used.
    #[error("Snapshot path {0} names no directory, or holds a NUL byte")]
    BadPath(PathBuf),
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

/// Why a payload does not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// postcard refused it.
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    /// Bytes follow the value in a file of this build's version.
    #[error("{0} bytes follow it")]
    Trailing(usize),
    /// A format 1.0 `gic.bin` that does not start with its version word, 1.
    #[error("a format 1.0 snapshot's gic.bin must start with version 1")]
    GicVersion,
}

/// What makes a manifest describe an impossible VM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Not one MPIDR per vCPU.
    #[error("{mpidrs} MPIDRs for {cpus} vCPUs")]
    Mpidrs {
        /// MPIDRs listed.
        mpidrs: usize,
        /// vCPUs in the shape.
        cpus: u8,
    },
    /// More components than any snapshot has.
    #[error("{0} components")]
    Components(usize),
    /// A component name that is not a plain file name.
    #[error("component name {0:?}")]
    Name(String),
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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes a manifest with its header.
pub fn encode_manifest(m: &Manifest) -> Result<Vec<u8>> {
    let payload = postcard::to_allocvec(m).map_err(|e| Error::Encode {
        what: "manifest",
        source: e,
    })?;
    MANIFEST_FORMAT
        .seal(&payload)
        .map_err(|error| Error::Header {
            file: MANIFEST,
            error,
        })
}

/// Decodes and checks a manifest.
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest> {
    open_manifest(bytes).map(|(_, m)| m)
}

/// The largest length the manifest may give component `name` of a VM of `shape`: the guest's
/// RAM for `memory.bin`, the header and its format's payload cap for the files whose format
/// refvmm knows (so that no reader allocates more for them), [`MAX_COMPONENT`] otherwise.
pub fn component_cap(name: &str, shape: &VmShape) -> u64 {
    let framed = |cap: u64| (HEADER_LEN as u64 + cap).min(MAX_COMPONENT);
    match name {
        "memory.bin" => shape.memory,
        "vcpus.bin" => framed(VCPUS.format.max_payload_len),
        "gic.bin" => framed(gic_state::FORMAT.max_payload_len),
        "serial.bin" => framed(SERIAL.format.max_payload_len),
        "sdei.bin" => framed(sdei_migration::MAX_PAYLOAD_LEN),
        "mte-tags.bin" => framed(mte_memory::snapshot::header::MAX_PAYLOAD_LEN),
        _ => MAX_COMPONENT,
    }
}

/// Decodes and checks a manifest, returning its header too.
fn open_manifest(bytes: &[u8]) -> Result<(SnapshotHeader, Manifest)> {
    let (header, payload) = MANIFEST_FORMAT.open(bytes).map_err(|error| Error::Header {
        file: MANIFEST,
        error,
    })?;
    let decode_error = |source: DecodeError| Error::Decode {
        what: "manifest",
        source,
    };
    let (m, rest): (Manifest, _) =
        postcard::take_from_bytes(payload).map_err(|e| decode_error(e.into()))?;
    // A newer minor (flagged optional-only) appends what it adds after the manifest.
    if !rest.is_empty() && !MANIFEST_FORMAT.is_newer(&header) {
        return Err(decode_error(DecodeError::Trailing(rest.len())));
    }
    if m.mpidrs.len() != usize::from(m.shape.cpus) {
        return Err(Error::Invalid(Invalid::Mpidrs {
            mpidrs: m.mpidrs.len(),
            cpus: m.shape.cpus,
        }));
    }
    if m.components.len() > 16 {
        return Err(Error::Invalid(Invalid::Components(m.components.len())));
    }
    for c in &m.components {
        let ok_name = !c.name.is_empty()
            && c.name.len() < 64
            && c.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !c.name.starts_with('.');
        if !ok_name {
            return Err(Error::Invalid(Invalid::Name(c.name.clone())));
        }
        if c.len > component_cap(&c.name, &m.shape) {
            return Err(Error::Oversized {
                what: c.name.clone(),
                size: c.len,
            });
        }
    }
    Ok((header, m))
}

/// A component file holding one postcard-encoded value behind the shared header.
#[derive(Debug, Clone, Copy)]
pub struct StateFile {
    /// What it holds, for messages.
    pub what: &'static str,
    /// The file's name in the snapshot directory.
    pub name: &'static str,
    /// Its header format.
    pub format: SnapshotFormat,
}

pub use crate::devices::serial::STATE_FILE as SERIAL;
pub use crate::vcpu::state::FILE as VCPUS;

impl StateFile {
    /// The file's bytes for `value`: header, then its postcard encoding.
    pub fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        let payload = postcard::to_allocvec(value).map_err(|e| Error::Encode {
            what: self.what,
            source: e,
        })?;
        self.format.seal(&payload).map_err(|error| Error::Header {
            file: self.name,
            error,
        })
    }

    /// Checks the header and decodes the value. Bytes after the value are refused, unless
    /// the file is of a newer minor that says all it adds is optional: they are that.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        let (header, payload) = self.format.open(bytes).map_err(|error| Error::Header {
            file: self.name,
            error,
        })?;
        let decode_error = |source: DecodeError| Error::Decode {
            what: self.what,
            source,
        };
        let (value, rest) =
            postcard::take_from_bytes(payload).map_err(|e| decode_error(e.into()))?;
        if !rest.is_empty() && !self.format.is_newer(&header) {
            return Err(decode_error(DecodeError::Trailing(rest.len())));
        }
        Ok(value)
    }
}

/// A component of a format 1.0 snapshot in the form this build reads: `vcpus.bin`,
/// `serial.bin` and `gic.bin` had no header in 1.0 (the GIC state had a version word, 1, in
/// its place), so the header is put in front of what they held. The manifest's length and
/// CRC have vouched for the bytes already. Other components are returned as they are.
fn upgrade_v1_0(name: &'static str, bytes: Vec<u8>) -> Result<Vec<u8>> {
    let (format, payload) = match name {
        "vcpus.bin" => (VCPUS.format, &bytes[..]),
        "serial.bin" => (SERIAL.format, &bytes[..]),
        "gic.bin" => match bytes.split_first_chunk::<4>() {
            Some((version, body)) if u32::from_le_bytes(*version) == 1 => (gic_state::FORMAT, body),
            _ => {
                return Err(Error::Decode {
                    what: "GIC state",
                    source: DecodeError::GicVersion,
                })
            }
        },
        _ => return Ok(bytes),
    };
    format
        .seal(payload)
        .map_err(|error| Error::Header { file: name, error })
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
            .ok_or_else(|| Error::BadPath(dir.to_path_buf()))?;
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

    /// Adds a part's saved state as its file ([`Stored`]).
    pub fn put_state<S: Stored>(&mut self, state: &S) -> Result<()> {
        self.put(S::FILE, &state.encode()?)
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
        let manifest = encode_manifest(&m)?;
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
    if [from, to]
        .iter()
        .any(|p| p.as_os_str().as_bytes().contains(&0))
    {
        return Err(Error::BadPath(from.to_path_buf()));
    }
    let Err(e) = crate::sys::rename_noreplace(from, to) else {
        return Ok(());
    };
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
    /// The manifest's format minor version: 0 for a snapshot whose state files are bare.
    minor: u16,
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
        let (header, manifest) = open_manifest(&bytes)?;
        Ok(Reader {
            dir: dir.to_path_buf(),
            manifest,
            minor: header.minor,
        })
    }

    fn component(&self, name: &'static str) -> Result<&Component> {
        self.manifest
            .components
            .iter()
            .find(|c| c.name == name)
            .ok_or(Error::Missing(name))
    }

    /// The snapshot's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The length the manifest gives component `name`.
    pub fn len_of(&self, name: &'static str) -> Result<u64> {
        self.component(name).map(|c| c.len)
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

    /// Reads and decodes a part's saved state from its file ([`Stored`]), checked.
    pub fn state<S: Stored>(&self) -> Result<S> {
        S::decode(&self.read(S::FILE)?)
    }

    /// Reads a whole (small) component, checked. The buffer is allocated only once the file's
    /// size is known to be the manifest's (at most [`component_cap`]), so a manifest that lies
    /// about a small file costs no large allocation. In a snapshot of format 1.0 the bare
    /// vCPU, GIC and console files are returned with the header this build expects.
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
        if self.minor == 0 {
            return upgrade_v1_0(name, out);
        }
        Ok(out)
    }
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

    fn encoded(m: &Manifest) -> Vec<u8> {
        encode_manifest(m).unwrap()
    }

    #[test]
    fn manifest_round_trips() {
        let m = manifest();
        assert_eq!(decode_manifest(&encoded(&m)).unwrap(), m);
    }

    #[test]
    fn manifest_is_format_1_1_behind_the_shared_header() {
        let bytes = encoded(&manifest());
        let (header, _) = open_manifest(&bytes).unwrap();
        assert_eq!(&bytes[..8], b"REFVMSNP");
        assert_eq!((header.major, header.minor, header.flags), (1, 1, 0));
    }

    #[test]
    fn header_refusals_name_the_file() {
        let mut b = encoded(&manifest());
        b[0] = b'X';
        let e = decode_manifest(&b).unwrap_err();
        assert!(matches!(
            e,
            Error::Header {
                file: MANIFEST,
                error: HeaderError::BadMagic { .. }
            }
        ));
        // `cargo xtask scenario snapshot` looks for these words.
        assert!(
            e.to_string().contains("manifest.bin: Input has bad magic"),
            "{e}"
        );
    }

    #[test]
    fn bytes_after_the_manifest_are_refused_unless_a_newer_minor_adds_them() {
        let good = encoded(&manifest());
        let mut payload = good[HEADER_LEN..].to_vec();
        payload.extend_from_slice(b"more");
        let reheader = |minor: u16, flags: u32| {
            let header = SnapshotHeader {
                minor,
                flags,
                ..MANIFEST_FORMAT.header_for(&payload)
            };
            let mut out = header.to_bytes().to_vec();
            out.extend_from_slice(&payload);
            out
        };
        assert!(matches!(
            decode_manifest(&reheader(FORMAT_MINOR, 0)),
            Err(Error::Decode {
                what: "manifest",
                ..
            })
        ));
        assert_eq!(
            decode_manifest(&reheader(FORMAT_MINOR + 1, FLAG_OPTIONAL_ONLY)).unwrap(),
            manifest()
        );
    }

    #[test]
    fn impossible_manifests_are_refused() {
        let mut m = manifest();
        m.mpidrs.pop();
        assert!(matches!(
            decode_manifest(&encoded(&m)),
            Err(Error::Invalid(_))
        ));
        let mut m = manifest();
        m.components[0].name = "../etc/passwd".into();
        assert!(matches!(
            decode_manifest(&encoded(&m)),
            Err(Error::Invalid(_))
        ));
        let mut m = manifest();
        m.components[0].len = (512 << 20) + 1;
        assert!(matches!(
            decode_manifest(&encoded(&m)),
            Err(Error::Oversized { .. })
        ));
    }

    #[test]
    fn state_files_are_capped_by_their_format_in_the_manifest() {
        let shape = manifest().shape;
        for (name, format) in [
            ("vcpus.bin", VCPUS.format),
            ("gic.bin", gic_state::FORMAT),
            ("serial.bin", SERIAL.format),
        ] {
            let cap = component_cap(name, &shape);
            assert_eq!(cap, HEADER_LEN as u64 + format.max_payload_len, "{name}");
            let mut m = manifest();
            m.components[0] = Component {
                name: name.into(),
                len: cap,
                crc: 0,
            };
            assert!(decode_manifest(&encoded(&m)).is_ok());
            m.components[0].len = cap + 1;
            assert!(matches!(
                decode_manifest(&encoded(&m)),
                Err(Error::Oversized { .. })
            ));
        }
        assert_eq!(component_cap("notes.txt", &shape), MAX_COMPONENT);
        assert_eq!(component_cap("mte-tags.bin", &shape), MAX_COMPONENT);
    }

    #[test]
    fn state_files_round_trip_and_refuse_each_others_bytes() {
        let wire = crate::devices::serial::ConsoleState {
            regs: [1, 2, 3, 4, 5, 6, 7, 8, 9],
            input: b"abc".to_vec(),
        };
        let bytes = SERIAL.encode(&wire).unwrap();
        assert_eq!(&bytes[..8], b"REFVMCON");
        assert_eq!(
            SERIAL
                .decode::<crate::devices::serial::ConsoleState>(&bytes)
                .unwrap(),
            wire
        );
        let e = VCPUS
            .decode::<Vec<crate::vcpu::state::VcpuState>>(&bytes)
            .unwrap_err();
        assert!(matches!(
            e,
            Error::Header {
                file: "vcpus.bin",
                error: HeaderError::BadMagic { .. }
            }
        ));
    }

    #[test]
    fn a_state_file_over_its_cap_is_not_written() {
        let wire = crate::devices::serial::ConsoleState {
            regs: [0; 9],
            input: vec![0; 2000],
        };
        assert!(matches!(
            SERIAL.encode(&wire),
            Err(Error::Header {
                file: "serial.bin",
                error: HeaderError::Oversized { .. }
            })
        ));
    }

    #[test]
    fn format_1_0_state_files_get_the_header() {
        let bare = postcard::to_allocvec(&crate::devices::serial::ConsoleState {
            regs: [9; 9],
            input: vec![],
        })
        .unwrap();
        let upgraded = upgrade_v1_0("serial.bin", bare.clone()).unwrap();
        assert_eq!(upgraded[HEADER_LEN..], bare);
        assert!(SERIAL
            .decode::<crate::devices::serial::ConsoleState>(&upgraded)
            .is_ok());
        let mut gic = 1u32.to_le_bytes().to_vec();
        gic.extend_from_slice(b"body");
        let upgraded = upgrade_v1_0("gic.bin", gic).unwrap();
        assert_eq!(&upgraded[..8], b"REFVMGIC");
        assert_eq!(&upgraded[HEADER_LEN..], b"body");
        assert!(matches!(
            upgrade_v1_0("gic.bin", 2u32.to_le_bytes().to_vec()),
            Err(Error::Decode { .. })
        ));
        assert_eq!(
            upgrade_v1_0("sdei.bin", b"as is".to_vec()).unwrap(),
            b"as is"
        );
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
        crate::sys::testing::mkfifo(&fifo).unwrap();
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
