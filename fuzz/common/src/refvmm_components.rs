//! Target `refvmm_snapshot_components`: `refvmm::snapshot::Reader` (`open`, `has`, `read`,
//! `stream`) over a snapshot directory built from the input in a temporary directory.
//!
//! Input layout:
//!
//! | bytes | meaning |
//! |---|---|
//! | 0 | bit 0: the rest of the input is `manifest.bin` itself (nothing else is built); bits 1–2: the manifest is 0 a regular file, 1 missing, 2 a directory, 3 a symbolic link to the real one |
//! | 1 | guest RAM in the manifest, in 64-byte units (the cap of `memory.bin`) |
//! | 2– | up to [`MAX_COMPONENTS`] components, each 3 bytes and its contents: a name (one of [`NAMES`], by the byte modulo their number), a mode, a length byte; then the contents (as many bytes as the length, zeros past the end of the input) |
//!
//! Mode bits: 0–1 the file is 0 or 3 a regular file, 1 missing, 2 a symbolic link to a
//! regular file with the contents; bits 2–3 the manifest's length is 0 exact, 1 one more, 2
//! one less, 3 the cap (`refvmm::snapshot::component_cap`: `memory.bin`'s guest RAM, the header
//! and its format's payload cap for the files whose format refvmm knows, 256 MiB otherwise)
//! plus bit 6's 0 or 1;
//! bit 4 the manifest's CRC is wrong; bit 5 a directory instead of a file; bit 7 adds 3840 to
//! the length (so 0–255 or 3840–4095 bytes).
//! Only the first component of a name creates its file; later ones only add manifest entries.
//!
//! Checks: `open` succeeds exactly when the manifest file is a regular file that decodes (every
//! name valid, every length within its cap); `has` is whether the manifest lists the name;
//! `read` and `stream` return a component's bytes exactly when it is listed, a regular file
//! (not a link, directory or missing), and its length and CRC32 are the manifest's (for
//! `read` also at most 256 MiB), and then they are the file's bytes, streamed in order;
//! otherwise they fail (`Missing` for names not listed), and nothing panics.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use refvmm::snapshot::{
    component_cap, decode_manifest, encode_manifest, Component, Error, Manifest, Reader, VmShape,
    MANIFEST, MAX_COMPONENT,
};

/// The component names an input can use: the six refvmm writes, one more valid name, and two
/// the manifest decoder must refuse.
pub const NAMES: [&str; 9] = [
    "vcpus.bin",
    "gic.bin",
    "memory.bin",
    "mte-tags.bin",
    "sdei.bin",
    "serial.bin",
    "notes-1.txt",
    "sub/gic.bin",
    ".hidden",
];
/// Most components an input lists.
pub const MAX_COMPONENTS: usize = 20;

/// A scratch directory of its own for every input (the corpus tests run inputs on several
/// threads of one process).
fn scratch() -> PathBuf {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("refvmm-fuzz-components-{}-{n}", std::process::id()))
}

struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let d = scratch();
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("a scratch directory");
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a file is placed in the snapshot directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    File,
    Missing,
    Link,
    Directory,
}

fn place(dir: &Path, name: &str, how: Placement, contents: &[u8]) {
    let path = dir.join(name);
    match how {
        Placement::File => std::fs::write(&path, contents).expect("a component file"),
        Placement::Missing => {}
        Placement::Link => {
            let target = dir.join(format!("{name}.target"));
            std::fs::write(&target, contents).expect("a link target");
            std::os::unix::fs::symlink(&target, &path).expect("a symbolic link");
        }
        Placement::Directory => std::fs::create_dir(&path).expect("a directory"),
    }
}

/// What the harness wrote for one name (its first component).
struct Written {
    name: &'static str,
    placement: Placement,
    contents: Vec<u8>,
}

/// What one input made the reader do (for the seed tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// `Reader::open` succeeded.
    pub opened: bool,
    /// Listed components `read` returned.
    pub read: usize,
    /// Listed components `read` refused.
    pub refused: usize,
}

/// Runs one input; panics when a check fails.
pub fn run_refvmm_snapshot_components(data: &[u8]) {
    run_components(data);
}

/// Runs one input and reports what happened; panics when a check fails.
pub fn run_components(data: &[u8]) -> Report {
    let mut report = Report::default();
    let Some((&flags, rest)) = data.split_first() else {
        return report;
    };
    let dir = Dir::new();
    if flags & 1 != 0 {
        report.opened = raw_manifest(&dir.0, rest);
        return report;
    }
    let manifest_placement = match (flags >> 1) & 3 {
        0 => Placement::File,
        1 => Placement::Missing,
        2 => Placement::Directory,
        _ => Placement::Link,
    };
    let memory = u64::from(rest.first().copied().unwrap_or(0)) * 64;
    let body = rest.get(1..).unwrap_or_default();
    let mut at = 0;
    let mut written: Vec<Written> = Vec::new();
    let mut components = Vec::new();
    while components.len() < MAX_COMPONENTS {
        let Some(&[name, mode, len_low]) = body.get(at..at + 3) else {
            break;
        };
        at += 3;
        let name = NAMES[usize::from(name) % NAMES.len()];
        let len = usize::from(len_low) + if mode & 0x80 != 0 { 3840 } else { 0 };
        let contents: Vec<u8> = (0..len)
            .map(|i| body.get(at + i).copied().unwrap_or(0))
            .collect();
        at = (at + len).min(body.len());
        let placement = match (mode & 3, mode & 0x20 != 0) {
            (_, true) => Placement::Directory,
            (1, _) => Placement::Missing,
            (2, _) => Placement::Link,
            _ => Placement::File,
        };
        let valid_name = !name.contains('/') && !name.starts_with('.');
        // Only the first component of a name decides its file.
        let index = match written.iter().position(|w| w.name == name) {
            Some(i) => i,
            None => {
                if valid_name {
                    place(&dir.0, name, placement, &contents);
                }
                written.push(Written {
                    name,
                    placement,
                    contents,
                });
                written.len() - 1
            }
        };
        let file = &written[index].contents;
        let actual = file.len() as u64;
        let cap = component_cap(name, &VmShape { memory, ..shape() });
        let listed_len = match (mode >> 2) & 3 {
            0 => actual,
            1 => actual + 1,
            2 => actual.saturating_sub(1),
            _ => cap + u64::from(mode >> 6 & 1),
        };
        let crc = crc32fast::hash(file) ^ u32::from(mode & 0x10 != 0);
        components.push(Component {
            name: name.into(),
            len: listed_len,
            crc,
        });
    }
    let manifest = Manifest {
        shape: VmShape { memory, ..shape() },
        mpidrs: vec![0x8000_0000],
        components,
    };
    let bytes = encode_manifest(&manifest).expect("a manifest of at most 20 components encodes");
    place(&dir.0, MANIFEST, manifest_placement, &bytes);
    let decodes = decode_manifest(&bytes).is_ok();
    let opened = Reader::open(&dir.0);
    assert_eq!(
        opened.is_ok(),
        decodes && manifest_placement == Placement::File,
        "open: {:?}",
        opened.as_ref().err()
    );
    if manifest_placement == Placement::File && !decodes {
        assert!(matches!(
            opened,
            Err(Error::Invalid(_) | Error::Oversized { .. })
        ));
    }
    let Ok(reader) = opened else {
        return report;
    };
    report.opened = true;
    assert_eq!(reader.manifest, manifest);
    for name in NAMES {
        match check_component(&reader, &manifest, &written, name) {
            Some(true) => report.read += 1,
            Some(false) => report.refused += 1,
            None => {}
        }
    }
    report
}

/// The VM shape of every built manifest, but for its guest RAM.
fn shape() -> VmShape {
    VmShape {
        cpus: 1,
        memory: 0,
        mte: false,
        sdei: false,
        pmu: false,
        sve: false,
        pauth: false,
        cmdline: "console=ttyS0".into(),
    }
}

/// Checks one name; `Some(whether read returned it)` if it is listed.
fn check_component(
    reader: &Reader,
    manifest: &Manifest,
    written: &[Written],
    name: &'static str,
) -> Option<bool> {
    let listed = manifest.components.iter().find(|c| c.name == name);
    assert_eq!(reader.has(name), listed.is_some());
    let read = reader.read(name);
    let mut chunks = Vec::new();
    let streamed = reader.stream(name, |off, chunk| {
        assert_eq!(off, chunks.len() as u64, "chunks arrive in order");
        chunks.extend_from_slice(chunk);
        Ok(())
    });
    let Some(c) = listed else {
        assert!(matches!(read, Err(Error::Missing(n)) if n == name));
        assert!(matches!(streamed, Err(Error::Missing(n)) if n == name));
        return None;
    };
    let w = written
        .iter()
        .find(|w| w.name == name)
        .expect("a listed name was written");
    let intact = w.placement == Placement::File
        && c.len == w.contents.len() as u64
        && c.crc == crc32fast::hash(&w.contents);
    assert_eq!(
        streamed.is_ok(),
        intact,
        "stream {name}: {:?}",
        streamed.as_ref().err()
    );
    assert_eq!(
        read.is_ok(),
        intact && c.len <= MAX_COMPONENT,
        "read {name}: {:?}",
        read.as_ref().err()
    );
    if streamed.is_ok() {
        assert_eq!(chunks, w.contents);
    }
    let returned = read.is_ok();
    if let Ok(bytes) = read {
        assert_eq!(bytes, w.contents);
    }
    Some(returned)
}

/// The input is `manifest.bin`: `open` must succeed exactly when it decodes.
fn raw_manifest(dir: &Path, bytes: &[u8]) -> bool {
    std::fs::write(dir.join(MANIFEST), bytes).expect("a manifest file");
    let opened = Reader::open(dir);
    let decoded = decode_manifest(bytes);
    assert_eq!(opened.is_ok(), decoded.is_ok());
    let ok = opened.is_ok();
    if let (Ok(r), Ok(m)) = (opened, decoded) {
        assert_eq!(r.manifest, m);
        for name in NAMES {
            if r.has(name) {
                // Nothing but the manifest is in the directory.
                assert!(r.read(name).is_err());
            }
        }
    }
    ok
}
