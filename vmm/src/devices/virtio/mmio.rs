//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2): the register file at a device's
//! MMIO window, feature negotiation, the device status, queue set-up, notifications and the
//! interrupt status.
//!
//! Registers are 32 bits wide and accessed as such; other accesses to them read as zero and
//! are ignored. The device configuration space starts at [`CONFIG`] and may be read at any
//! width. Queue registers only take effect while the selected queue is not ready; the queue is
//! checked against guest RAM when the driver sets `QueueReady`.

use super::{interrupt, status, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::MmioDevice;
use crate::persist::Persist;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// `MagicValue`: "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version implemented (the virtio 1.x, non-legacy layout).
pub const VERSION: u32 = 2;
/// `VendorID` reported to the guest: "rvmm" in little endian.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"rvmm");
/// Offset of the device configuration space.
pub const CONFIG: u64 = 0x100;

/// Register offsets.
pub mod reg {
    /// Magic value, read-only.
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Transport version, read-only.
    pub const VERSION: u64 = 0x004;
    /// Device ID, read-only.
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor ID, read-only.
    pub const VENDOR_ID: u64 = 0x00c;
    /// 32 device feature bits, chosen by `DEVICE_FEATURES_SEL`.
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Which 32 device feature bits `DEVICE_FEATURES` shows.
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// 32 driver feature bits, chosen by `DRIVER_FEATURES_SEL`.
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Which 32 driver feature bits `DRIVER_FEATURES` sets.
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Selects the queue the queue registers refer to.
    pub const QUEUE_SEL: u64 = 0x030;
    /// Largest size of the selected queue; 0 if there is no such queue.
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue, chosen by the driver.
    pub const QUEUE_NUM: u64 = 0x038;
    /// Whether the selected queue is in use.
    pub const QUEUE_READY: u64 = 0x044;
    /// The driver writes a queue index here when the queue has new buffers.
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Why the interrupt was raised.
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// The driver acknowledges interrupt causes here.
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// The device status.
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low half.
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high half.
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available (driver) ring address, low half.
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Available (driver) ring address, high half.
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Used (device) ring address, low half.
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Used (device) ring address, high half.
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Selects a shared memory region.
    pub const SHM_SEL: u64 = 0x0ac;
    /// Shared memory region length, low half (all ones: no such region).
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    /// Shared memory region length, high half.
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    /// Shared memory region base, low half.
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    /// Shared memory region base, high half.
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    /// Changes whenever the configuration space changes.
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Errors building a transport (a device's own mistake, never the guest's).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device declared a queue size virtio-queue refuses.
    #[error("virtio device {device_id}: queue {index} cannot have {size} entries")]
    QueueSize {
        /// The device ID.
        device_id: u32,
        /// The queue.
        index: usize,
        /// The refused size.
        size: u16,
    },
}

/// A transport's saved state: its registers and each queue's, enough for the driver's
/// session to carry on (the device behind it keeps no state of its own in a snapshot; a
/// device that does would add it here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The device ID the state was saved from.
    pub device_id: u32,
    /// `QueueSel`.
    pub queue_sel: u32,
    /// `DeviceFeaturesSel`.
    pub device_features_sel: u32,
    /// `DriverFeaturesSel`.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// The device status.
    pub status: u32,
    /// The interrupt causes not yet acknowledged.
    pub interrupt_status: u32,
    /// Each queue, in index order.
    pub queues: Vec<QueueState>,
}

/// One queue's saved state: what the driver wrote, and where the device stands in the rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// `QueueNum`.
    pub size: u32,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// `QueueReady`.
    pub ready: bool,
    /// The next available-ring entry the device reads.
    pub next_avail: u16,
    /// The next used-ring entry the device writes.
    pub next_used: u16,
    /// `VIRTIO_F_RING_EVENT_IDX` in effect.
    pub event_idx: bool,
}

/// Why a transport state cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// A state of another kind of device.
    #[error("the state is of virtio device {saved}, this is device {ours}")]
    Device {
        /// The saved device ID.
        saved: u32,
        /// This transport's.
        ours: u32,
    },
    /// Another number of queues.
    #[error("the state has {saved} queues, the device {ours}")]
    Queues {
        /// Queues in the state.
        saved: usize,
        /// Queues of the device.
        ours: usize,
    },
    /// Driver features the device does not offer.
    #[error("the driver features {0:#x} include some the device does not offer")]
    Features(u64),
    /// A status value no driver can reach.
    #[error("device status {0:#x} is not one a driver can set")]
    Status(u32),
    /// A ready queue that does not fit this device or guest RAM.
    #[error("queue {index}: {reason}")]
    Queue {
        /// The queue.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// One queue and the addresses the driver wrote, applied when it sets `QueueReady`.
#[derive(Debug)]
struct QueueSlot {
    queue: Queue,
    size: u32,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueSlot {
    fn reset(&mut self) {
        self.queue.reset();
        self.size = u32::from(self.queue.max_size());
        self.desc = 0;
        self.avail = 0;
        self.used = 0;
    }

    /// Applies the driver's configuration; the queue is ready only if it is usable.
    fn activate(&mut self, mem: &GuestMemoryMmap) -> Result<(), String> {
        let q = &mut self.queue;
        let size = u16::try_from(self.size).map_err(|_| format!("size {}", self.size))?;
        q.try_set_size(size)
            .map_err(|_| format!("size {size} (at most {}, a power of two)", q.max_size()))?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(|_| format!("descriptor table at {:#x} (16-byte alignment)", self.desc))?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .map_err(|_| format!("available ring at {:#x} (2-byte alignment)", self.avail))?;
        q.try_set_used_ring_address(GuestAddress(self.used))
            .map_err(|_| format!("used ring at {:#x} (4-byte alignment)", self.used))?;
        q.set_ready(true);
        if !q.is_valid(mem) {
            q.set_ready(false);
            return Err(format!(
                "rings (descriptors {:#x}, available {:#x}, used {:#x}, {size} entries) are not \
                 all in guest RAM",
                self.desc, self.avail, self.used
            ));
        }
        Ok(())
    }
}

impl<D: VirtioDevice> Persist for MmioTransport<D> {
    type State = TransportState;
    type Error = StateError;

    fn save(&self) -> Result<TransportState, StateError> {
        Ok(TransportState {
            device_id: self.device.device_id(),
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            interrupt_status: self.interrupt_status,
            queues: self
                .queues
                .iter()
                .map(|q| QueueState {
                    size: q.size,
                    desc: q.desc,
                    avail: q.avail,
                    used: q.used,
                    ready: q.queue.ready(),
                    next_avail: q.queue.next_avail(),
                    next_used: q.queue.next_used(),
                    event_idx: q.queue.event_idx_enabled(),
                })
                .collect(),
        })
    }

    /// Checks the whole state against this device and guest RAM before any of it is taken:
    /// the device ID, the queue count, the driver features (only offered ones), the status
    /// bits, and every ready queue as `QueueReady` would (size, alignment, rings in RAM).
    fn restore(mut self, state: &TransportState) -> Result<Self, StateError> {
        let ours = self.device.device_id();
        if state.device_id != ours {
            return Err(StateError::Device {
                saved: state.device_id,
                ours,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(StateError::Queues {
                saved: state.queues.len(),
                ours: self.queues.len(),
            });
        }
        let offered = self.device_features();
        if state.driver_features & !offered != 0 {
            return Err(StateError::Features(state.driver_features));
        }
        let known = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::DEVICE_NEEDS_RESET
            | status::FAILED;
        if state.status & !known != 0 {
            return Err(StateError::Status(state.status));
        }
        for (index, (slot, saved)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            slot.reset();
            slot.size = saved.size;
            slot.desc = saved.desc;
            slot.avail = saved.avail;
            slot.used = saved.used;
            if saved.ready {
                slot.activate(&self.mem)
                    .map_err(|reason| StateError::Queue { index, reason })?;
            }
            slot.queue.set_next_avail(saved.next_avail);
            slot.queue.set_next_used(saved.next_used);
            slot.queue.set_event_idx(saved.event_idx);
        }
        self.queue_sel = state.queue_sel;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.status = state.status;
        self.interrupt_status = state.interrupt_status;
        Ok(self)
    }
}

fn set_half(value: &mut u64, high: bool, half: u32) {
    *value = if high {
        (*value & 0xffff_ffff) | (u64::from(half) << 32)
    } else {
        (*value & !0xffff_ffff) | u64::from(half)
    };
}

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport<D> {
    device: D,
    mem: GuestMemoryMmap,
    interrupt: Box<dyn Interrupt>,
    queues: Vec<QueueSlot>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Puts `device` behind a transport whose queues live in `mem` and whose interrupt is
    /// `interrupt`.
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        interrupt: Box<dyn Interrupt>,
    ) -> Result<Self, Error> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                let queue = <Queue as QueueT>::new(size).map_err(|_| Error::QueueSize {
                    device_id: device.device_id(),
                    index,
                    size,
                })?;
                Ok(QueueSlot {
                    queue,
                    size: u32::from(size),
                    desc: 0,
                    avail: 0,
                    used: 0,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, to change.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The interrupt causes not yet acknowledged.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    /// The features the driver has written (accepted once `FEATURES_OK` is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Every feature the device offers: its own and `VIRTIO_F_VERSION_1`.
    pub fn device_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn selected(&mut self) -> Option<&mut QueueSlot> {
        let i = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(i)
    }

    /// The selected queue, if it may still be configured (exists and is not ready).
    fn configurable(&mut self) -> Option<&mut QueueSlot> {
        self.selected().filter(|s| !s.queue.ready())
    }

    fn reset(&mut self) {
        self.device.reset();
        for slot in &mut self.queues {
            slot.reset();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
    }

    fn raise(&mut self, cause: u32) {
        self.interrupt_status |= cause;
        if let Err(e) = self.interrupt.trigger() {
            crate::guest_log!(
                log::Level::Warn,
                "virtio device {}: cannot raise its interrupt: {e}",
                self.device.device_id()
            );
        }
    }

    /// The device cannot go on until the driver resets it.
    fn needs_reset(&mut self, why: &str) {
        if self.status & status::DEVICE_NEEDS_RESET == 0 {
            crate::guest_log!(
                log::Level::Warn,
                "virtio device {}: {why}; the driver must reset the device",
                self.device.device_id()
            );
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        if self.status & status::DRIVER_OK != 0 {
            self.raise(interrupt::CONFIG);
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features() == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let device_bits = self.status & status::DEVICE_NEEDS_RESET;
        let old = self.status & !status::DEVICE_NEEDS_RESET;
        let mut new = value & !status::DEVICE_NEEDS_RESET;
        if new & old != old {
            log::debug!(
                "virtio device {}: status {old:#x} -> {new:#x} clears bits without a reset; ignored",
                self.device.device_id()
            );
            return;
        }
        let added = new & !old;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            crate::guest_log!(
                log::Level::Warn,
                "virtio device {}: refusing driver features {:#x} (offered {:#x}, VERSION_1 required)",
                self.device.device_id(),
                self.driver_features,
                self.device_features()
            );
            new &= !status::FEATURES_OK;
        }
        if added & status::DRIVER_OK != 0 && new & status::FEATURES_OK == 0 {
            crate::guest_log!(
                log::Level::Warn,
                "virtio device {}: DRIVER_OK before FEATURES_OK; ignored",
                self.device.device_id()
            );
            new &= !status::DRIVER_OK;
        }
        self.status = new | device_bits;
    }

    /// The driver's notification of queue `value`, as a write of `QueueNotify` gives it; a
    /// device thread woken by an ioeventfd for that register calls this itself. Ignored unless
    /// the driver has finished set-up and the queue exists and is ready.
    pub fn notify(&mut self, value: u32) {
        let usable = status::DRIVER_OK | status::FEATURES_OK;
        if self.status & usable != usable || self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        let Some(index) = usize::try_from(value)
            .ok()
            .filter(|&i| i < self.queues.len())
        else {
            log::debug!(
                "virtio device {}: notification of missing queue {value}",
                self.device.device_id()
            );
            return;
        };
        let slot = &mut self.queues[index];
        if !slot.queue.ready() {
            return;
        }
        let outcome = self
            .device
            .process_queue(index, &mut slot.queue, &self.mem)
            .map_err(|e| crate::error_chain(&e))
            .and_then(|added| {
                if added == 0 {
                    return Ok(false);
                }
                slot.queue
                    .needs_notification(&self.mem)
                    .map_err(|e| format!("virtio queue {index}: {e}"))
            });
        match outcome {
            Ok(true) => self.raise(interrupt::VRING),
            Ok(false) => {}
            Err(why) => self.needs_reset(&why),
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected().map_or(0, |s| u32::from(s.queue.max_size())),
            reg::QUEUE_READY => self.selected().map_or(0, |s| u32::from(s.queue.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                let negotiating =
                    self.status & (status::DRIVER | status::FEATURES_OK) == status::DRIVER;
                if negotiating && self.driver_features_sel < 2 {
                    set_half(
                        &mut self.driver_features,
                        self.driver_features_sel == 1,
                        value,
                    );
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                if let Some(s) = self.configurable() {
                    s.size = value;
                }
            }
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => {
                if let Some(s) = self.configurable() {
                    set_half(&mut s.desc, offset == reg::QUEUE_DESC_HIGH, value);
                }
            }
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH => {
                if let Some(s) = self.configurable() {
                    set_half(&mut s.avail, offset == reg::QUEUE_DRIVER_HIGH, value);
                }
            }
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH => {
                if let Some(s) = self.configurable() {
                    set_half(&mut s.used, offset == reg::QUEUE_DEVICE_HIGH, value);
                }
            }
            reg::QUEUE_READY => self.set_queue_ready(value),
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => self.set_status(value),
            reg::SHM_SEL => {}
            _ => log::debug!(
                "virtio device {}: write {value:#x} to read-only or unknown register {offset:#x}",
                self.device.device_id()
            ),
        }
    }

    fn set_queue_ready(&mut self, value: u32) {
        let sel = self.queue_sel;
        let Some(slot) = usize::try_from(sel)
            .ok()
            .and_then(|i| self.queues.get_mut(i))
        else {
            return;
        };
        let result = match value {
            0 => {
                slot.queue.set_ready(false);
                Ok(())
            }
            _ if slot.queue.ready() => Ok(()),
            _ => slot.activate(&self.mem),
        };
        if let Err(why) = result {
            self.needs_reset(&format!("queue {sel} cannot be used: {why}"));
        }
    }
}

impl<D: VirtioDevice> MmioDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            log::debug!(
                "virtio device {}: {}-byte read at {offset:#x}; registers are 32-bit",
                self.device.device_id(),
                data.len()
            );
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            log::debug!(
                "virtio device {}: configuration write at {offset:#x} ignored",
                self.device.device_id()
            );
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "virtio device {}: {}-byte write at {offset:#x}; registers are 32-bit",
                self.device.device_id(),
                data.len()
            );
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::QueueError;
    use std::sync::atomic::Ordering;
    use virtio_queue::QueueOwnedT;

    use crate::devices::virtio::testing::CountingInterrupt as Counter;

    /// A device with two queues that returns every chain unchanged.
    struct Echo {
        resets: u32,
        fail: bool,
    }

    impl VirtioDevice for Echo {
        fn device_id(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            0b101
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xa0, 0xa1, 0xa2, 0xa3, 0xa4], offset, data);
        }
        fn process_queue(
            &mut self,
            index: usize,
            queue: &mut Queue,
            mem: &GuestMemoryMmap,
        ) -> Result<usize, QueueError> {
            if self.fail {
                return Err(QueueError::Queue {
                    index,
                    source: virtio_queue::Error::InvalidChain,
                });
            }
            let heads: Vec<u16> = queue
                .iter(mem)
                .map_err(|source| QueueError::Queue { index, source })?
                .map(|c| c.head_index())
                .collect();
            for &h in &heads {
                queue
                    .add_used(mem, h, 0)
                    .map_err(|source| QueueError::Queue { index, source })?;
            }
            Ok(heads.len())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000_0000), 0x10_0000)]).unwrap()
    }

    fn transport() -> (MmioTransport<Echo>, Counter) {
        transport_on(mem())
    }

    /// A transport on `mem` (another transport's, to restore into).
    fn transport_on(mem: GuestMemoryMmap) -> (MmioTransport<Echo>, Counter) {
        let irq = Counter::default();
        let t = MmioTransport::new(
            Echo {
                resets: 0,
                fail: false,
            },
            mem,
            Box::new(irq.clone()),
        )
        .unwrap();
        (t, irq)
    }

    fn rd(t: &mut MmioTransport<Echo>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport<Echo>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Negotiates `features` up to FEATURES_OK; returns the status read back.
    fn negotiate(t: &mut MmioTransport<Echo>, features: u64) -> u32 {
        wr(t, reg::STATUS, status::ACKNOWLEDGE);
        wr(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(t, reg::DRIVER_FEATURES_SEL, 0);
        wr(t, reg::DRIVER_FEATURES, features as u32);
        wr(t, reg::DRIVER_FEATURES_SEL, 1);
        wr(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        wr(
            t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        rd(t, reg::STATUS)
    }

    fn setup_queue(t: &mut MmioTransport<Echo>, q: u32, size: u32, base: u64) {
        wr(t, reg::QUEUE_SEL, q);
        wr(t, reg::QUEUE_NUM, size);
        wr(t, reg::QUEUE_DESC_LOW, base as u32);
        wr(t, reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
        wr(t, reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        wr(t, reg::QUEUE_DRIVER_HIGH, 0);
        wr(t, reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        wr(t, reg::QUEUE_DEVICE_HIGH, 0);
        wr(t, reg::QUEUE_READY, 1);
    }

    const OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport();
        assert_eq!(rd(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut t, reg::VERSION), 2);
        assert_eq!(rd(&mut t, reg::DEVICE_ID), 42);
        assert_eq!(rd(&mut t, reg::VENDOR_ID), VENDOR_ID);
        assert_eq!(rd(&mut t, reg::CONFIG_GENERATION), 0);
        assert_eq!(rd(&mut t, reg::SHM_LEN_LOW), u32::MAX);
        assert_eq!(rd(&mut t, reg::SHM_LEN_HIGH), u32::MAX);
    }

    #[test]
    fn device_features_include_version_1() {
        let (mut t, _) = transport();
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 0b101);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1);
        wr(&mut t, reg::DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 0);
    }

    #[test]
    fn features_ok_needs_version_1_and_only_offered_bits() {
        let (mut t, _) = transport();
        let s = negotiate(&mut t, 0b1);
        assert_eq!(s & status::FEATURES_OK, 0, "no VERSION_1");

        wr(&mut t, reg::STATUS, 0);
        let s = negotiate(&mut t, (1 << 32) | 0b10);
        assert_eq!(s & status::FEATURES_OK, 0, "bit 1 is not offered");

        wr(&mut t, reg::STATUS, 0);
        let s = negotiate(&mut t, (1 << 32) | 0b100);
        assert_ne!(s & status::FEATURES_OK, 0);
        assert_eq!(t.driver_features(), (1 << 32) | 0b100);

        // Once FEATURES_OK is set the features are frozen.
        wr(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        wr(&mut t, reg::DRIVER_FEATURES, 0b1);
        assert_eq!(t.driver_features(), (1 << 32) | 0b100);
    }

    #[test]
    fn driver_features_are_ignored_before_driver_status() {
        let (mut t, _) = transport();
        wr(&mut t, reg::DRIVER_FEATURES, 0b1);
        assert_eq!(t.driver_features(), 0);
    }

    #[test]
    fn driver_ok_without_features_ok_is_refused() {
        let (mut t, _) = transport();
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_eq!(
            rd(&mut t, reg::STATUS),
            status::ACKNOWLEDGE | status::DRIVER
        );
    }

    #[test]
    fn twenty_thousand_bad_status_writes_log_a_bounded_number_of_lines() {
        let (mut t, _) = transport();
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let lines = crate::logger::capture::lines(|| {
            for _ in 0..20_000 {
                // DRIVER_OK before FEATURES_OK, and driver features the device never offered.
                wr(
                    &mut t,
                    reg::STATUS,
                    status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
                );
                wr(&mut t, reg::DRIVER_FEATURES, u32::MAX);
                wr(
                    &mut t,
                    reg::STATUS,
                    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
                );
            }
        });
        let warns = lines.iter().filter(|l| l.starts_with("WARN")).count();
        assert!(warns > 0, "the bad writes are reported");
        assert!(
            warns <= 2 * crate::logger::LINES_PER_WINDOW as usize,
            "{warns} warn lines for 40,000 bad status writes"
        );
    }

    #[test]
    fn status_bits_cannot_be_cleared_without_a_reset() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << 32);
        wr(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        assert_eq!(
            rd(&mut t, reg::STATUS),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
        );
    }

    #[test]
    fn queue_registers_and_ready() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << 32);
        wr(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 16);
        wr(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 8);
        wr(&mut t, reg::QUEUE_SEL, 2);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0, "no third queue");
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
        wr(&mut t, reg::QUEUE_READY, 1);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);

        setup_queue(&mut t, 0, 8, 0x1000_0000);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 1);
        let s = t.queues[0].queue.state();
        assert_eq!(s.size, 8);
        assert_eq!(s.desc_table, 0x1000_0000);
        assert_eq!(s.avail_ring, 0x1000_1000);
        assert_eq!(s.used_ring, 0x1000_2000);
        assert_eq!(rd(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);

        // A ready queue keeps its configuration.
        wr(&mut t, reg::QUEUE_NUM, 4);
        wr(&mut t, reg::QUEUE_DESC_LOW, 0x1000_4000);
        assert_eq!(t.queues[0].queue.state().desc_table, 0x1000_0000);
        assert_eq!(t.queues[0].size, 8);

        // Writing 0 stops it.
        wr(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn bad_queue_configurations_ask_for_a_reset() {
        let cases: [(u32, u64); 5] = [
            (3, 0x1000_0000),  // not a power of two
            (32, 0x1000_0000), // above QueueNumMax
            (0, 0x1000_0000),  // zero
            (8, 0x1000_0008),  // misaligned descriptor table
            (8, 0x2000_0000),  // outside guest RAM
        ];
        for (size, base) in cases {
            let (mut t, irq) = transport();
            negotiate(&mut t, 1 << 32);
            setup_queue(&mut t, 0, size, base);
            assert_eq!(rd(&mut t, reg::QUEUE_READY), 0, "size {size} at {base:#x}");
            assert_ne!(
                rd(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET,
                0,
                "size {size} at {base:#x}"
            );
            // No DRIVER_OK yet: no configuration interrupt.
            assert_eq!(irq.0.load(Ordering::Relaxed), 0);
            // A reset clears it.
            wr(&mut t, reg::STATUS, 0);
            assert_eq!(rd(&mut t, reg::STATUS), 0);
        }
    }

    #[test]
    fn queue_size_above_u16_is_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << 32);
        setup_queue(&mut t, 0, 0x1_0008, 0x1000_0000);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn reset_returns_everything_to_its_initial_state() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << 32);
        setup_queue(&mut t, 1, 4, 0x1000_0000);
        wr(&mut t, reg::STATUS, OK);
        t.interrupt_status = 3;
        wr(&mut t, reg::STATUS, 0);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);
        assert_eq!(t.driver_features(), 0);
        assert_eq!(t.device().resets, 1);
        wr(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, reg::QUEUE_READY), 0);
        assert_eq!(t.queues[1].queue.state().size, 8);
        assert_eq!(t.queues[1].size, 8);
        assert_eq!(t.queues[1].desc, 0);
    }

    #[test]
    fn a_restored_transport_carries_on_where_the_saved_one_stood() {
        use crate::persist::Persist;
        use vm_memory::Bytes;
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << 32);
        setup_queue(&mut t, 0, 8, 0x1000_0000);
        wr(&mut t, reg::STATUS, OK);
        t.mem
            .write_obj(1u16.to_le(), GuestAddress(0x1000_1002))
            .unwrap();
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        let state = t.save().unwrap();
        assert!(state.queues[0].ready && !state.queues[1].ready);
        assert_eq!(
            (state.queues[0].next_avail, state.queues[0].next_used),
            (1, 1)
        );
        assert_eq!(state.interrupt_status, interrupt::VRING);

        // A fresh transport on the same guest RAM takes the state and goes on from entry 1.
        let (fresh, irq) = transport_on(t.mem.clone());
        let mut r = fresh.restore(&state).unwrap();
        assert_eq!(r.save().unwrap(), state);
        assert_eq!(rd(&mut r, reg::STATUS), OK);
        assert_eq!(rd(&mut r, reg::INTERRUPT_STATUS), interrupt::VRING);
        r.mem
            .write_obj(2u16.to_le(), GuestAddress(0x1000_1002))
            .unwrap();
        wr(&mut r, reg::QUEUE_NOTIFY, 0);
        let used_idx: u16 = r.mem.read_obj(GuestAddress(0x1000_2002)).unwrap();
        assert_eq!(used_idx, 2, "only the one new chain was used");
        assert_eq!(irq.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_transport_state_that_does_not_fit_is_refused() {
        use crate::persist::Persist;
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << 32);
        setup_queue(&mut t, 0, 8, 0x1000_0000);
        let good = t.save().unwrap();
        let refused = |change: &dyn Fn(&mut TransportState)| {
            let mut s = good.clone();
            change(&mut s);
            let Err(e) = transport().0.restore(&s) else {
                panic!("restored {s:?}");
            };
            e
        };
        assert_eq!(
            refused(&|s| s.device_id = 7),
            StateError::Device { saved: 7, ours: 42 }
        );
        assert_eq!(
            refused(&|s| {
                s.queues.pop();
            }),
            StateError::Queues { saved: 1, ours: 2 }
        );
        assert_eq!(
            refused(&|s| s.driver_features |= 1 << 1),
            StateError::Features((1 << 32) | 2)
        );
        assert_eq!(
            refused(&|s| s.status |= 1 << 5),
            StateError::Status(good.status | 32)
        );
        let e = refused(&|s| s.queues[0].desc = 0x2000_0000);
        assert!(matches!(e, StateError::Queue { index: 0, .. }), "{e:?}");
        let e = refused(&|s| {
            s.queues[1] = QueueState {
                size: 3,
                ready: true,
                ..s.queues[0]
            }
        });
        assert!(matches!(e, StateError::Queue { index: 1, .. }), "{e:?}");
        assert!(transport().0.restore(&good).is_ok());
    }

    #[test]
    fn notification_runs_the_device_and_raises_the_interrupt() {
        use vm_memory::Bytes;
        let (mut t, irq) = transport();
        negotiate(&mut t, 1 << 32);
        setup_queue(&mut t, 0, 8, 0x1000_0000);
        // Before DRIVER_OK nothing is consumed.
        t.mem
            .write_obj(1u16.to_le(), GuestAddress(0x1000_1002))
            .unwrap();
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(irq.0.load(Ordering::Relaxed), 0);

        wr(&mut t, reg::STATUS, OK);
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(irq.0.load(Ordering::Relaxed), 1);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), interrupt::VRING);
        let used_idx: u16 = t.mem.read_obj(GuestAddress(0x1000_2002)).unwrap();
        assert_eq!(used_idx, 1);
        wr(&mut t, reg::INTERRUPT_ACK, interrupt::VRING);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), 0);

        // Nothing new: no interrupt. Missing queues are ignored.
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        wr(&mut t, reg::QUEUE_NOTIFY, 1);
        wr(&mut t, reg::QUEUE_NOTIFY, 7);
        assert_eq!(irq.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_device_error_sets_needs_reset_and_raises_a_config_interrupt() {
        use vm_memory::Bytes;
        let (mut t, irq) = transport();
        negotiate(&mut t, 1 << 32);
        setup_queue(&mut t, 0, 8, 0x1000_0000);
        wr(&mut t, reg::STATUS, OK);
        t.device.fail = true;
        t.mem
            .write_obj(1u16.to_le(), GuestAddress(0x1000_1002))
            .unwrap();
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(rd(&mut t, reg::STATUS), OK | status::DEVICE_NEEDS_RESET);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), interrupt::CONFIG);
        assert_eq!(irq.0.load(Ordering::Relaxed), 1);
        // Further notifications are ignored until the reset.
        t.device.fail = false;
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(irq.0.load(Ordering::Relaxed), 1);
        // The driver cannot clear the bit itself.
        wr(&mut t, reg::STATUS, OK);
        assert_ne!(rd(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn an_available_index_far_ahead_asks_for_a_reset() {
        use vm_memory::Bytes;
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << 32);
        setup_queue(&mut t, 0, 8, 0x1000_0000);
        wr(&mut t, reg::STATUS, OK);
        t.mem
            .write_obj(100u16.to_le(), GuestAddress(0x1000_1002))
            .unwrap();
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_ne!(rd(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn odd_accesses_read_zero_and_write_nothing() {
        let (mut t, _) = transport();
        let mut two = [0xffu8; 2];
        t.read(reg::MAGIC_VALUE, &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0xffu8; 4];
        t.read(reg::MAGIC_VALUE + 1, &mut four);
        assert_eq!(four, [0; 4]);
        t.write(reg::STATUS, &[1]);
        t.write(reg::STATUS + 2, &1u32.to_le_bytes());
        t.write(reg::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(rd(&mut t, reg::STATUS), 0);
        // Read-only registers ignore writes.
        wr(&mut t, reg::MAGIC_VALUE, 0);
        assert_eq!(rd(&mut t, reg::MAGIC_VALUE), MAGIC);
    }

    #[test]
    fn config_space_is_readable_at_any_width_and_read_only() {
        let (mut t, _) = transport();
        let mut b = [0u8; 1];
        t.read(CONFIG + 4, &mut b);
        assert_eq!(b, [0xa4]);
        let mut q = [0u8; 8];
        t.read(CONFIG, &mut q);
        assert_eq!(q, [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0, 0, 0]);
        t.write(CONFIG, &[0; 4]);
        t.read(CONFIG, &mut b);
        assert_eq!(b, [0xa0]);
    }

    #[test]
    fn a_device_with_a_bad_queue_size_is_refused() {
        struct Bad;
        impl VirtioDevice for Bad {
            fn device_id(&self) -> u32 {
                1
            }
            fn features(&self) -> u64 {
                0
            }
            fn queue_max_sizes(&self) -> &[u16] {
                &[3]
            }
            fn read_config(&self, _: u64, data: &mut [u8]) {
                data.fill(0);
            }
            fn process_queue(
                &mut self,
                _: usize,
                _: &mut Queue,
                _: &GuestMemoryMmap,
            ) -> Result<usize, QueueError> {
                Ok(0)
            }
        }
        let e = MmioTransport::new(Bad, mem(), Box::new(Counter::default()))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "virtio device 1: queue 0 cannot have 3 entries"
        );
    }
}
