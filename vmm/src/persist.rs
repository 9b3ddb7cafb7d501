//! The one way a part of the VM saves and restores its state.
//!
//! Each part implements [`Persist`] next to its own code, and its state type implements
//! [`Stored`] there too (its snapshot file and encoding):
//!
//! | part | `Persist` for | state | file |
//! |---|---|---|---|
//! | a vCPU | `vcpu::Vcpu` | `vcpu::state::VcpuState` (all vCPUs: `Vec<VcpuState>`) | `vcpus.bin` |
//! | the GIC | `gic::Gic` | `gic::state::GicState` | `gic.bin` |
//! | the console | [`crate::devices::serial::Console`] | [`crate::devices::serial::ConsoleState`] | `serial.bin` |
//! | SDEI | `sdei::Sdei` | `sdei::SdeiState` | `sdei.bin` |
//! | MTE tags | `memory::Tags` | `memory::MteTags` | `mte-tags.bin` |
//! | a virtio device | [`crate::devices::virtio::MmioTransport`] | [`crate::devices::virtio::mmio::TransportState`] | none yet |
//!
//! Guest RAM is the one part too large for a value: `memory::save_ram` and
//! `memory::restore_ram` stream it to and from `memory.bin`. A virtio device's state is its
//! transport's (registers, queues and where the device stands in them; virtio-pmem keeps
//! nothing else), but it has no file yet: snapshots of VMs with virtio-pmem are refused,
//! since a memfd backing's contents would have to be saved too.
//!
//! Saving happens with the VM paused; restoring takes the part as boot would have built it
//! (`vm::boot` and `vm::restore` share that step) and gives it back with the state in place,
//! before any vCPU runs. A state is checked against the part before any of it is written.

/// A part of the VM whose state a snapshot holds.
pub trait Persist: Sized {
    /// The saved state.
    type State;
    /// Why saving or restoring failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The part's state now (the VM is paused).
    fn save(&self) -> Result<Self::State, Self::Error>;

    /// The part, freshly built, with `state` put into it.
    fn restore(self, state: &Self::State) -> Result<Self, Self::Error>;
}

/// Where and how a saved state is kept in a snapshot directory.
pub trait Stored: Sized {
    /// Its file in the snapshot directory.
    const FILE: &'static str;

    /// The file's bytes.
    fn encode(&self) -> crate::snapshot::Result<Vec<u8>>;

    /// The state in a file's bytes (already checked against the manifest's length and CRC).
    fn decode(bytes: &[u8]) -> crate::snapshot::Result<Self>;
}
