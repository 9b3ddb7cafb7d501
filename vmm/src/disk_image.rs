//! virtio-blk images: the raw file or block device a validated [`DiskConfig`] names, opened
//! (read-only, or with `O_DIRECT`, as asked), locked and measured before the guest runs, and
//! the [`Disk`] I/O on it: `preadv`/`pwritev` straight between the image and guest memory,
//! `fdatasync` for a flush, `fallocate` for discard and write-zeroes.
//!
//! Locks: a writable image is held under an exclusive `flock`, a read-only one under a
//! shared lock, so that two refvmm processes (or another program that locks, like QEMU with
//! its file locks off, or `flock(1)`) never write one image at once, while read-only users can
//! share it.

use crate::config::disk::DiskConfig;
use crate::devices::virtio::block::{Disk, SECTOR_SIZE};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use vm_memory::VolatileSlice;

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image does not exist.
    #[error("disk {}: no such file", path.display())]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// The image cannot be opened.
    #[error("disk {}: cannot open it{}", path.display(), if *write { " for writing (readonly=on opens it for reading only)" } else { " for reading" })]
    Open {
        /// The path given.
        path: PathBuf,
        /// Whether it was opened for writing.
        write: bool,
        /// The OS error.
        source: io::Error,
    },
    /// `direct=on` on a file system without `O_DIRECT`.
    #[error("disk {}: its file system does not support direct=on (O_DIRECT)", path.display())]
    NoDirect {
        /// The path given.
        path: PathBuf,
    },
    /// Neither a regular file nor a block device.
    #[error("disk {}: not a regular file or block device", path.display())]
    NotAnImage {
        /// The path given.
        path: PathBuf,
    },
    /// Another process holds a conflicting lock.
    #[error("disk {}: the image is in use by another process (it holds a lock on it)", path.display())]
    Locked {
        /// The path given.
        path: PathBuf,
    },
    /// The image's size cannot serve as a disk.
    #[error("disk {}: {len} bytes is not a disk: the size must be a non-zero multiple of 512 bytes", path.display())]
    Size {
        /// The path given.
        path: PathBuf,
        /// The image's length.
        len: u64,
    },
    /// Inspecting or locking failed otherwise.
    #[error("disk {}: cannot {action}", path.display())]
    Io {
        /// The path given.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// An open, locked image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    size: u64,
    path: PathBuf,
    block_device: bool,
}

impl DiskImage {
    /// Opens, checks and locks the image `cfg` names.
    pub fn open(cfg: &DiskConfig) -> Result<Self, Error> {
        let path = cfg.path.clone();
        let mut opts = OpenOptions::new();
        opts.read(true).write(!cfg.readonly);
        if cfg.direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(&cfg.path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => Error::Missing { path: path.clone() },
            _ if cfg.direct && source.raw_os_error() == Some(libc::EINVAL) => {
                Error::NoDirect { path: path.clone() }
            }
            _ => Error::Open {
                path: path.clone(),
                write: !cfg.readonly,
                source,
            },
        })?;
        let io = |action| {
            let path = path.clone();
            move |source| Error::Io {
                path,
                action,
                source,
            }
        };
        let kind = file.metadata().map_err(io("inspect it"))?.file_type();
        let block_device = kind.is_block_device();
        if !kind.is_file() && !block_device {
            return Err(Error::NotAnImage { path });
        }
        let op = if cfg.readonly {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        crate::sys::flock(file.as_fd(), op).map_err(|e| {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Error::Locked { path: path.clone() }
            } else {
                io("lock it")(e)
            }
        })?;
        // Works for block devices too, whose metadata says 0.
        let size = (&file).seek(SeekFrom::End(0)).map_err(io("measure it"))?;
        if size == 0 || size % SECTOR_SIZE != 0 {
            return Err(Error::Size { path, len: size });
        }
        Ok(DiskImage {
            file,
            size,
            path,
            block_device,
        })
    }

    /// What the image is, for the log.
    pub fn describe(&self) -> String {
        format!(
            "{} {} ({} MiB)",
            if self.block_device {
                "block device"
            } else {
                "image"
            },
            self.path.display(),
            self.size >> 20
        )
    }

    /// The open image.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Runs `op` (a vectored transfer of what is left of `bufs` at an offset) until every byte of
/// `bufs` has moved; a transfer of 0 bytes is an error (the image shrank under us).
fn transfer_all(
    bufs: &[VolatileSlice<'_>],
    mut offset: u64,
    mut op: impl FnMut(&[VolatileSlice<'_>], u64) -> io::Result<usize>,
) -> io::Result<()> {
    let mut rest: Vec<VolatileSlice<'_>> = bufs.to_vec();
    let mut first = 0;
    while first < rest.len() {
        let n = match op(&rest[first..], offset) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        offset += n as u64;
        let mut left = n;
        while left > 0 && first < rest.len() {
            let len = rest[first].len();
            if left >= len {
                left -= len;
                first += 1;
            } else {
                rest[first] = rest[first]
                    .offset(left)
                    .map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?;
                left = 0;
            }
        }
        // Zero-length buffers are done without any transfer.
        while first < rest.len() && rest[first].is_empty() {
            first += 1;
        }
    }
    Ok(())
}

impl Disk for DiskImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        let fd = self.file.as_fd();
        transfer_all(bufs, offset, |b, o| crate::sys::preadv(fd, b, o))
    }

    fn write_at(&mut self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        let fd = self.file.as_fd();
        transfer_all(bufs, offset, |b, o| crate::sys::pwritev(fd, b, o))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match crate::sys::fallocate(self.file.as_fd(), mode, offset, len) {
            // Discard is a hint: a file system that cannot punch holes keeps the bytes.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            other => other,
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let fd = self.file.as_fd();
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let modes = if unmap {
            [
                keep | libc::FALLOC_FL_PUNCH_HOLE,
                keep | libc::FALLOC_FL_ZERO_RANGE,
            ]
        } else {
            [
                keep | libc::FALLOC_FL_ZERO_RANGE,
                keep | libc::FALLOC_FL_PUNCH_HOLE,
            ]
        };
        for mode in modes {
            match crate::sys::fallocate(fd, mode, offset, len) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => continue,
                other => return other,
            }
        }
        // Neither: write zeros, 64 KiB at a time.
        let zeros = vec![0u8; 64 << 10];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            std::os::unix::fs::FileExt::write_all_at(&self.file, &zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("refvmm-disk-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn cfg(path: &std::path::Path, readonly: bool) -> DiskConfig {
        DiskConfig {
            path: path.to_path_buf(),
            readonly,
            direct: false,
            serial: None,
        }
    }

    #[test]
    fn an_image_is_opened_measured_and_locked() {
        let d = dir("open");
        let img = d.0.join("a.img");
        std::fs::write(&img, vec![7u8; 8192]).unwrap();
        let disk = DiskImage::open(&cfg(&img, false)).unwrap();
        assert_eq!(disk.size(), 8192);
        assert!(disk.describe().contains("a.img"));
        // A second writer, or a reader, is refused while it is open for writing.
        let e = DiskImage::open(&cfg(&img, false)).unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{e:?}");
        assert!(e.to_string().contains("in use by another process"));
        assert!(matches!(
            DiskImage::open(&cfg(&img, true)).unwrap_err(),
            Error::Locked { .. }
        ));
        drop(disk);
        // Readers share.
        let r1 = DiskImage::open(&cfg(&img, true)).unwrap();
        let r2 = DiskImage::open(&cfg(&img, true)).unwrap();
        assert!(matches!(
            DiskImage::open(&cfg(&img, false)).unwrap_err(),
            Error::Locked { .. }
        ));
        drop((r1, r2));
    }

    #[test]
    fn unusable_images_are_refused_with_the_reason() {
        let d = dir("bad");
        let e = DiskImage::open(&cfg(&d.0.join("missing.img"), false)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("disk {}: no such file", d.0.join("missing.img").display())
        );
        let e = DiskImage::open(&cfg(&d.0, true)).unwrap_err();
        assert!(
            matches!(e, Error::NotAnImage { .. } | Error::Open { .. }),
            "{e:?}"
        );
        let odd = d.0.join("odd.img");
        std::fs::write(&odd, vec![0u8; 1000]).unwrap();
        let e = DiskImage::open(&cfg(&odd, false)).unwrap_err();
        assert!(matches!(e, Error::Size { len: 1000, .. }), "{e:?}");
        let empty = d.0.join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            DiskImage::open(&cfg(&empty, false)).unwrap_err(),
            Error::Size { len: 0, .. }
        ));
        if crate::sys::effective_uid() != 0 {
            let ro = d.0.join("ro.img");
            std::fs::write(&ro, vec![0u8; 512]).unwrap();
            let mut p = std::fs::metadata(&ro).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o444);
            std::fs::set_permissions(&ro, p).unwrap();
            let e = DiskImage::open(&cfg(&ro, false)).unwrap_err();
            assert!(e.to_string().contains("for writing (readonly=on"), "{e}");
            assert!(DiskImage::open(&cfg(&ro, true)).is_ok());
        }
    }

    #[test]
    fn vectored_io_moves_guest_memory_to_and_from_the_image() {
        let d = dir("io");
        let img = d.0.join("io.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let mut disk = DiskImage::open(&cfg(&img, false)).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&data, GuestAddress(0x100)).unwrap();
        let bufs = [
            mem.get_slice(GuestAddress(0x100), 1000).unwrap(),
            mem.get_slice(GuestAddress(0x100 + 1000), 0).unwrap(),
            mem.get_slice(GuestAddress(0x100 + 1000), 2000).unwrap(),
        ];
        disk.write_at(&bufs, 4096).unwrap();
        disk.flush().unwrap();
        let on_disk = std::fs::read(&img).unwrap();
        assert_eq!(&on_disk[4096..7096], &data[..]);
        let back = [mem.get_slice(GuestAddress(0x8000), 3000).unwrap()];
        disk.read_at(&back, 4096).unwrap();
        let mut got = vec![0u8; 3000];
        mem.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
        assert_eq!(got, data);
        // Past the end: an error, not a short success.
        assert!(disk.read_at(&back, (1 << 20) - 512).is_err());

        disk.write_zeroes(4096, 1024, false).unwrap();
        disk.discard(5120, 1024).unwrap();
        disk.write_zeroes(6144, 952, true).unwrap();
        let on_disk = std::fs::read(&img).unwrap();
        assert_eq!(on_disk.len(), 1 << 20, "the image keeps its size");
        assert!(on_disk[4096..5120].iter().all(|&b| b == 0));
        assert!(on_disk[6144..7096].iter().all(|&b| b == 0));
    }
}
