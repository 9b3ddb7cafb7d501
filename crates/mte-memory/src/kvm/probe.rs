//! The MTE capability probe: what this kernel and KVM can actually do, found by trying on a
//! scratch VM.

use std::ffi::CString;
use std::fmt;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Arc;

use kvm_bindings::KVM_CAP_ARM_MTE;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryRegion, MemoryRegionAddress};

use super::slots::set_slot;
use super::{kvm_err, Error, KvmTagStore, MemorySlots, MteEnabled, Result, SlotFlags};
use crate::memory::{BackingKind, SharedGuestMemory, SharedMemoryConfig};
use crate::sys;
use crate::tags::{TagStore, TAGS_PER_PAGE};

/// Size of the scratch memory (a multiple of every arm64 page size).
const SCRATCH_SIZE: u64 = 64 << 10;
/// Guest address of the scratch memory.
const SCRATCH_BASE: u64 = 0x8000_0000;

/// The answer to one probe question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Works.
    Yes,
    /// Does not work; why.
    No(String),
    /// Could not be tried; why.
    Unknown(String),
}

impl Outcome {
    /// Whether the answer is [`Outcome::Yes`].
    pub fn is_yes(&self) -> bool {
        matches!(self, Self::Yes)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Yes => f.write_str("yes"),
            Self::No(why) => write!(f, "no ({why})"),
            Self::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// What the running kernel and KVM can do for an MTE guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MteProbeReport {
    /// `KVM_CAP_ARM_MTE` is offered.
    pub capability: bool,
    /// Enabling MTE on a fresh VM succeeds.
    pub enable: Outcome,
    /// KVM accepts a `MAP_SHARED` memfd mapping as a memory slot of an MTE VM.
    pub shared_memfd: Outcome,
    /// KVM accepts a `MAP_SHARED` ramfs file mapping as a memory slot of an MTE VM (it
    /// should not: ramfs mappings are not `VM_MTE_ALLOWED`).
    pub shared_ramfs: Outcome,
    /// `KVM_ARM_MTE_COPY_TAGS` writes tags that read back identical.
    pub copy_tags: Outcome,
}

impl MteProbeReport {
    /// Whether an MTE guest on shared memfd memory with tag migration can run here.
    pub fn mte_usable(&self) -> bool {
        self.capability
            && self.enable.is_yes()
            && self.shared_memfd.is_yes()
            && self.copy_tags.is_yes()
    }
}

impl fmt::Display for MteProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "KVM_CAP_ARM_MTE: {}",
            if self.capability { "yes" } else { "no" }
        )?;
        writeln!(f, "enable on a scratch VM: {}", self.enable)?;
        writeln!(f, "MAP_SHARED memfd slot: {}", self.shared_memfd)?;
        writeln!(f, "MAP_SHARED ramfs slot: {}", self.shared_ramfs)?;
        write!(f, "KVM_ARM_MTE_COPY_TAGS round trip: {}", self.copy_tags)
    }
}

/// Probes MTE support with scratch VMs. Errors only when the probe itself cannot run
/// (e.g. a VM cannot be created at all); every MTE answer is in the report.
pub fn probe(kvm: &Kvm) -> Result<MteProbeReport> {
    let capability = kvm.check_extension_raw(KVM_CAP_ARM_MTE.into()) > 0;
    let not_enabled = |why: &str| MteProbeReport {
        capability,
        enable: Outcome::No(why.to_string()),
        shared_memfd: Outcome::Unknown("MTE cannot be enabled".into()),
        shared_ramfs: Outcome::Unknown("MTE cannot be enabled".into()),
        copy_tags: Outcome::Unknown("MTE cannot be enabled".into()),
    };
    if !capability {
        // Make sure the failure is about MTE, not about creating VMs.
        drop(kvm.create_vm().map_err(|e| Error::Kvm(kvm_err(e)))?);
        return Ok(not_enabled("KVM_CAP_ARM_MTE is absent"));
    }
    let vm = kvm.create_vm().map_err(|e| Error::Kvm(kvm_err(e)))?;
    let mte = match super::enable(&vm) {
        Ok(mte) => mte,
        Err(e) => return Ok(not_enabled(&format!("{e}: {}", source_text(&e)))),
    };

    let memory = SharedGuestMemory::new(SharedMemoryConfig {
        regions: vec![(GuestAddress(SCRATCH_BASE), SCRATCH_SIZE)],
        ..Default::default()
    })
    .map_err(Error::Memory)?;
    let mut slots = MemorySlots::new(&vm, Some(mte))?;
    let shared_memfd =
        match slots.add_guest_memory(&vm, &[0], &Arc::new(memory), SlotFlags::default()) {
            Ok(()) => Outcome::Yes,
            Err(e) => Outcome::No(source_text(&e)),
        };

    let copy_tags = if shared_memfd.is_yes() {
        let outcome = copy_tags_round_trip(&vm, mte);
        // Release the scratch memory (a slot still registered would be leaked).
        let _ = slots.remove(&vm, 0);
        outcome
    } else {
        Outcome::Unknown("no memory slot to copy tags from".into())
    };

    let shared_ramfs = probe_ramfs(kvm);
    Ok(MteProbeReport {
        capability,
        enable: Outcome::Yes,
        shared_memfd,
        shared_ramfs,
        copy_tags,
    })
}

fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map_or_else(|| e.to_string(), |s| s.to_string())
}

fn copy_tags_round_trip(vm: &VmFd, mte: MteEnabled) -> Outcome {
    let pages = (SCRATCH_SIZE / crate::TAG_PAGE_SIZE) as usize;
    let written: Vec<u8> = (0..pages * TAGS_PER_PAGE)
        .map(|i| (i % 15 + 1) as u8)
        .collect();
    let mut store = match KvmTagStore::new(vm, mte) {
        Ok(store) => store,
        Err(e) => return Outcome::No(e.to_string()),
    };
    if let Err(e) = store.write_tags(GuestAddress(SCRATCH_BASE), &written) {
        return Outcome::No(format!("write: {e}"));
    }
    let mut read = vec![0u8; written.len()];
    if let Err(e) = store.read_tags(GuestAddress(SCRATCH_BASE), &mut read) {
        return Outcome::No(format!("read: {e}"));
    }
    if read != written {
        return Outcome::No("tags read back differ from tags written".into());
    }
    Outcome::Yes
}

/// Tries a `MAP_SHARED` ramfs mapping as a slot of a second MTE VM, mounting a private ramfs
/// if none is mounted and the process may mount one.
fn probe_ramfs(kvm: &Kvm) -> Outcome {
    let dir = std::env::temp_dir().join(format!("mte-probe-ramfs-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Outcome::Unknown(format!("cannot create {}: {e}", dir.display()));
    }
    let Ok(cdir) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return Outcome::Unknown("temporary directory path contains NUL".into());
    };
    let outcome = match sys::mount_ramfs(&cdir) {
        Ok(()) => {
            let outcome = ramfs_slot(kvm, &dir);
            let _ = sys::unmount(&cdir);
            outcome
        }
        Err(e) => Outcome::Unknown(format!("cannot mount ramfs: {e}")),
    };
    let _ = std::fs::remove_dir(&dir);
    outcome
}

fn ramfs_slot(kvm: &Kvm, dir: &std::path::Path) -> Outcome {
    let path: PathBuf = dir.join("guest-mem");
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => return Outcome::Unknown(format!("cannot create ramfs file: {e}")),
    };
    match BackingKind::of_file(&file) {
        Ok(BackingKind::Ramfs) => {}
        Ok(other) => return Outcome::Unknown(format!("mounted file is on {other}, not ramfs")),
        Err(e) => return Outcome::Unknown(format!("fstatfs: {e}")),
    }
    if let Err(e) = file.set_len(SCRATCH_SIZE) {
        return Outcome::Unknown(format!("cannot size ramfs file: {e}"));
    }
    let mapping = match vm_memory::mmap::MmapRegionBuilder::<()>::new(SCRATCH_SIZE as usize)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
    {
        Ok(m) => m,
        Err(e) => return Outcome::Unknown(format!("cannot map ramfs file: {e}")),
    };
    let vm = match kvm.create_vm() {
        Ok(vm) => vm,
        Err(e) => return Outcome::Unknown(format!("second scratch VM: {e}")),
    };
    if let Err(e) = super::enable(&vm) {
        return Outcome::Unknown(format!("second scratch VM: {e}"));
    }
    let region = vm_memory::GuestRegionMmap::new(mapping, GuestAddress(SCRATCH_BASE));
    let Some(region) = region else {
        return Outcome::Unknown("scratch region wraps".into());
    };
    let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
        return Outcome::Unknown("scratch region has no host address".into());
    };
    // Straight to KVM, past `MemorySlots`' own backing check: the question is what KVM does.
    // The slot goes away with `vm` (no vCPU), which is dropped before `region` unmaps.
    let result = set_slot(
        &vm,
        0,
        SCRATCH_BASE,
        region.len(),
        host as u64,
        SlotFlags::default(),
    );
    drop(vm);
    drop(region);
    match result {
        Ok(()) => Outcome::Yes,
        Err(e) => Outcome::No(format!("KVM_SET_USER_MEMORY_REGION: {e}")),
    }
}
