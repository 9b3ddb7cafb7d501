//! [`KvmTagStore`]: guest tags through `KVM_ARM_MTE_COPY_TAGS`.

use kvm_bindings::{KVM_ARM_TAGS_FROM_GUEST, KVM_ARM_TAGS_TO_GUEST};
use kvm_ioctls::VmFd;
use vm_memory::GuestAddress;

use super::MteEnabled;
use crate::sys;
use crate::tags::{check_range, check_tag_values, Error, Result, TagStore, GRANULE_SIZE};

/// Reads and writes guest allocation tags with `KVM_ARM_MTE_COPY_TAGS`.
///
/// Made with the [`MteEnabled`] proof of the VM, so the VM is known to have MTE enabled.
/// Ranges must also be aligned to the host page size. KVM may copy less than asked; the store
/// loops until the range is done. Writing while dirty logging is enabled on any slot fails
/// with [`Error::DirtyLogging`].
#[derive(Debug)]
pub struct KvmTagStore<'a> {
    vm: &'a VmFd,
    page_size: u64,
}

impl<'a> KvmTagStore<'a> {
    /// A store for the tags of `vm`, which `mte` proves has MTE enabled
    /// ([`super::Error::OtherVm`] if the proof is another VM's).
    pub fn new(vm: &'a VmFd, mte: MteEnabled) -> super::Result<Self> {
        mte.check(vm)?;
        Ok(Self {
            vm,
            page_size: sys::page_size(),
        })
    }

    fn copy(
        &self,
        addr: GuestAddress,
        len: u64,
        tags: *mut u8,
        flags: u32,
        write: bool,
    ) -> Result<()> {
        if addr.0 % self.page_size != 0 || len % self.page_size != 0 {
            return Err(Error::Unaligned {
                addr: addr.0,
                tags: (len / GRANULE_SIZE) as usize,
            });
        }
        let mut done = 0u64;
        while done < len {
            // `done / 16` is within the buffer: `done < len` and the buffer holds `len / 16`.
            let ptr = tags.wrapping_add((done / GRANULE_SIZE) as usize);
            let covered = sys::copy_tags(self.vm, addr.0 + done, len - done, ptr, flags.into())
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EBUSY) if write => Error::DirtyLogging,
                    Some(libc::ENOENT) | Some(libc::EFAULT) => Error::OutOfRange {
                        addr: addr.0 + done,
                        len: len - done,
                    },
                    _ => Error::Os(e),
                })?;
            if covered == 0 || covered > len - done {
                return Err(Error::Os(std::io::Error::other(format!(
                    "KVM_ARM_MTE_COPY_TAGS covered {covered} of {} bytes",
                    len - done
                ))));
            }
            done += covered;
        }
        Ok(())
    }
}

impl TagStore for KvmTagStore<'_> {
    fn read_tags(&self, addr: GuestAddress, tags: &mut [u8]) -> Result<()> {
        let len = check_range(addr, tags.len())?;
        self.copy(addr, len, tags.as_mut_ptr(), KVM_ARM_TAGS_FROM_GUEST, false)
    }

    fn write_tags(&mut self, addr: GuestAddress, tags: &[u8]) -> Result<()> {
        let len = check_range(addr, tags.len())?;
        check_tag_values(tags)?;
        // KVM only reads the buffer for TAGS_TO_GUEST; the pointer is never written through.
        self.copy(
            addr,
            len,
            tags.as_ptr().cast_mut(),
            KVM_ARM_TAGS_TO_GUEST,
            true,
        )
    }
}
