//! Loading the kernel, initrd and device tree per the arm64 boot protocol
//! (Documentation/arch/arm64/booting.rst): the Image at a 2 MiB-aligned base plus its
//! `text_offset`, the device tree 8-byte aligned within RAM, the initrd anywhere in RAM
//! described by `/chosen`, entry with x0 = device tree, MMU off, EL1h, DAIF masked.

use crate::config::VmConfig;
use crate::layout;
use linux_loader::loader::pe::PE;
use linux_loader::loader::KernelLoader;
use std::fs::File;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Errors loading the guest's images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel could not be opened.
    #[error("Cannot open the kernel")]
    OpenKernel(#[source] std::io::Error),
    /// The kernel is not an arm64 `Image` or does not fit.
    #[error("Cannot load the kernel as an arm64 Image")]
    LoadKernel(#[source] linux_loader::loader::Error),
    /// A raw payload does not fit below the device tree.
    #[error("The raw payload ({0} bytes) does not fit in guest RAM; give the guest more memory")]
    RawTooLarge(u64),
    /// The initrd could not be read.
    #[error("Cannot read the initrd")]
    ReadInitrd(#[source] std::io::Error),
    /// The initrd does not fit between the kernel and the device tree.
    #[error("The initrd ({size} bytes) does not fit in guest RAM above the kernel; give the guest more memory")]
    InitrdTooLarge {
        /// Initrd size in bytes.
        size: u64,
    },
    /// Writing to guest memory failed.
    #[error("Cannot write {what} to guest memory")]
    GuestWrite {
        /// What was being written.
        what: &'static str,
        /// The vm-memory error.
        source: vm_memory::GuestMemoryError,
    },
    /// The device tree is larger than the boot protocol allows.
    #[error("The device tree is too large ({0} bytes)")]
    FdtTooLarge(usize),
}

/// Result of loading.
pub type Result<T> = std::result::Result<T, Error>;

/// Where things went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Image or raw binary.
    pub kind: KernelKind,
    /// The kernel's entry point (first byte of the loaded Image).
    pub entry: u64,
    /// End of the kernel image in guest memory.
    pub kernel_end: u64,
    /// The initrd as (start, end), if any.
    pub initrd: Option<(u64, u64)>,
}

/// What `--kernel` points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// An arm64 Linux `Image` (magic "ARM\x64" at offset 56).
    Image,
    /// Anything else: a raw binary entered at its first byte.
    Raw,
}

/// The boot protocol's default load offset for raw binaries (as for an Image with
/// `image_size` 0).
pub const RAW_LOAD_OFFSET: u64 = 0x8_0000;

/// Tells an arm64 Image from a raw binary by its header.
pub fn kernel_kind(f: &mut File) -> std::io::Result<KernelKind> {
    use std::io::{Read, Seek, SeekFrom};
    let mut head = [0u8; 64];
    f.seek(SeekFrom::Start(0))?;
    let n = f.read(&mut head)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(if n == 64 && head[56..60] == *b"ARM\x64" {
        KernelKind::Image
    } else {
        KernelKind::Raw
    })
}

fn load_raw(mem: &GuestMemoryMmap, f: &mut File, memory: u64) -> Result<(u64, u64)> {
    let entry = layout::RAM_BASE + RAW_LOAD_OFFSET;
    let data = {
        use std::io::Read;
        let mut v = Vec::new();
        f.read_to_end(&mut v).map_err(Error::OpenKernel)?;
        v
    };
    let end = entry + data.len() as u64;
    if end > layout::fdt_addr(memory) {
        return Err(Error::RawTooLarge(data.len() as u64));
    }
    mem.write_slice(&data, GuestAddress(entry))
        .map_err(|source| Error::GuestWrite {
            what: "the raw payload",
            source,
        })?;
    Ok((entry, end))
}

/// Loads the kernel and initrd of `cfg` into `mem`.
pub fn load_images(mem: &GuestMemoryMmap, cfg: &VmConfig) -> Result<Loaded> {
    let mut kernel = File::open(&cfg.kernel).map_err(Error::OpenKernel)?;
    let kind = kernel_kind(&mut kernel).map_err(Error::OpenKernel)?;
    let (entry, kernel_end) = match kind {
        KernelKind::Raw => load_raw(mem, &mut kernel, cfg.memory)?,
        KernelKind::Image => load_image(mem, &mut kernel)?,
    };
    load_initrd(mem, cfg, kind, entry, kernel_end)
}

fn load_image(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<(u64, u64)> {
    let res = PE::load(
        mem,
        Some(GuestAddress(layout::RAM_BASE + layout::KERNEL_OFFSET)),
        kernel,
        None,
    )
    .map_err(Error::LoadKernel)?;
    let entry = res.kernel_load.0;
    // The kernel's footprint is its header's image_size (which covers its BSS), not the file.
    let image_size = image_size(kernel).map_err(Error::OpenKernel)?;
    Ok((entry, res.kernel_end.max(entry.saturating_add(image_size))))
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    kind: KernelKind,
    entry: u64,
    kernel_end: u64,
) -> Result<Loaded> {
    let initrd = match &cfg.initrd {
        None => None,
        Some(p) => {
            let data = std::fs::read(p).map_err(Error::ReadInitrd)?;
            let size = data.len() as u64;
            let start = layout::initrd_addr(cfg.memory, size)
                .filter(|s| *s >= kernel_end)
                .ok_or(Error::InitrdTooLarge { size })?;
            mem.write_slice(&data, GuestAddress(start))
                .map_err(|source| Error::GuestWrite {
                    what: "the initrd",
                    source,
                })?;
            Some((start, start + size))
        }
    };
    Ok(Loaded {
        kind,
        entry,
        kernel_end,
        initrd,
    })
}

/// The `image_size` field of an arm64 Image header (little-endian u64 at offset 16).
fn image_size(f: &mut File) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut b = [0u8; 8];
    f.seek(SeekFrom::Start(16))?;
    f.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Writes the device tree to its place at the top of RAM; returns its address.
pub fn write_fdt(mem: &GuestMemoryMmap, memory_size: u64, blob: &[u8]) -> Result<u64> {
    if blob.len() as u64 > layout::FDT_MAX_SIZE {
        return Err(Error::FdtTooLarge(blob.len()));
    }
    let addr = layout::fdt_addr(memory_size);
    mem.write_slice(blob, GuestAddress(addr))
        .map_err(|source| Error::GuestWrite {
            what: "the device tree",
            source,
        })?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SeccompMode;
    use std::path::PathBuf;

    /// A minimal arm64 Image: header with text_offset 0, image_size, and the magic.
    fn fake_image(body: usize) -> Vec<u8> {
        let mut img = vec![0u8; 64 + body];
        img[8..16].copy_from_slice(&0u64.to_le_bytes());
        img[16..24].copy_from_slice(&((64 + body) as u64).to_le_bytes());
        img[56..60].copy_from_slice(b"ARM\x64");
        img[64] = 0x42;
        img
    }

    fn write_tmp(name: &str, data: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("refvmm-boot-{}-{name}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        p
    }

    fn cfg(kernel: PathBuf, initrd: Option<PathBuf>, memory: u64) -> VmConfig {
        VmConfig {
            kernel,
            initrd,
            cmdline: String::new(),
            cpus: 1,
            memory,
            memory_backing: Default::default(),
            mte: false,
            sdei: false,
            features: Default::default(),
            its: false,
            pmem: Vec::new(),
            disks: Vec::new(),
            rng: false,
            seccomp: SeccompMode::Off,
            api_socket: None,
        }
    }

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(layout::RAM_BASE), size as usize)]).unwrap()
    }

    #[test]
    fn image_and_initrd_are_placed_per_the_boot_protocol() {
        let k = write_tmp("img", &fake_image(4096));
        let i = write_tmp("initrd", &[7u8; 10_000]);
        let size = 64 << 20;
        let m = mem(size);
        let l = load_images(&m, &cfg(k.clone(), Some(i.clone()), size)).unwrap();
        assert_eq!(l.entry, layout::RAM_BASE);
        let (start, end) = l.initrd.unwrap();
        assert_eq!(start % 4096, 0);
        assert_eq!(end - start, 10_000);
        assert!(end <= layout::fdt_addr(size));
        assert_eq!(m.read_obj::<u8>(GuestAddress(start + 9_999)).unwrap(), 7);
        assert_eq!(m.read_obj::<u8>(GuestAddress(l.entry + 64)).unwrap(), 0x42);
        let _ = std::fs::remove_file(k);
        let _ = std::fs::remove_file(i);
    }

    #[test]
    fn a_file_without_the_image_magic_is_loaded_raw_at_the_default_offset() {
        let k = write_tmp("raw", &[0x17, 0, 0, 0x14]);
        let size = 64 << 20;
        let m = mem(size);
        let l = load_images(&m, &cfg(k.clone(), None, size)).unwrap();
        assert_eq!(l.kind, KernelKind::Raw);
        assert_eq!(l.entry, layout::RAM_BASE + RAW_LOAD_OFFSET);
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(l.entry)).unwrap(),
            0x1400_0017
        );
        let _ = std::fs::remove_file(k);
    }

    #[test]
    fn an_initrd_that_does_not_fit_is_a_clear_error() {
        let k = write_tmp("img2", &fake_image(4096));
        let i = write_tmp("big", &vec![0u8; 63 << 20]);
        let size = 64 << 20;
        let e = load_images(&mem(size), &cfg(k.clone(), Some(i.clone()), size)).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let _ = std::fs::remove_file(k);
        let _ = std::fs::remove_file(i);
    }

    #[test]
    fn fdt_is_written_at_the_top_of_ram() {
        let size = 64 << 20;
        let m = mem(size);
        let addr = write_fdt(&m, size, &[0xd0, 0x0d, 0xfe, 0xed]).unwrap();
        assert_eq!(addr, layout::fdt_addr(size));
        assert_eq!(m.read_obj::<u8>(GuestAddress(addr)).unwrap(), 0xd0);
    }
}
