//! The saved vCPU state (`vcpus.bin`: the shared snapshot header, format
//! [`FILE`], then a postcard `Vec<VcpuState>`): every register
//! `KVM_GET_REG_LIST` names and the MP state, the checks a state must pass before any of it is
//! written to a vCPU, and the counter alignment applied on restore. Nothing here touches KVM,
//! so the decoder and the checks build and are fuzzed on any host; saving and restoring through
//! KVM is `super::persist` (aarch64 only).

use crate::kvm_abi;
use crate::layout;
use crate::persist::Stored;
use crate::snapshot::StateFile;
use sdei_migration::header::{SnapshotFormat, FLAG_OPTIONAL_ONLY};
use serde::{Deserialize, Serialize};

/// Most registers a vCPU state may name (KVM lists a few hundred; SVE adds ~100).
pub const MAX_REGS: usize = 4096;
/// Largest single register (SVE Z registers are 2048 bits at most).
pub const MAX_REG_BYTES: usize = 256;
/// Largest encoded state of one vCPU that [`VcpuState::check`] accepts: the MP state (a
/// varint of at most 5 bytes), the register count (2), and [`MAX_REGS`] registers of an id (at
/// most 10), a length (2) and [`MAX_REG_BYTES`] bytes each.
pub const MAX_ENCODED_VCPU_LEN: u64 = 5 + 2 + MAX_REGS as u64 * (10 + 2 + MAX_REG_BYTES as u64);
/// Largest encoded `vcpus.bin` payload a reader accepts: a state of [`MAX_ENCODED_VCPU_LEN`]
/// for each of refvmm's most vCPUs, and the list's length. (Real ones are a few KiB per vCPU.)
pub const MAX_ENCODED_LEN: u64 = 1 + layout::MAX_VCPUS as u64 * MAX_ENCODED_VCPU_LEN;

/// `vcpus.bin`: a postcard `Vec<`[`VcpuState`]`>`, one per vCPU in index order.
pub const FILE: StateFile = StateFile {
    what: "vCPU state",
    name: "vcpus.bin",
    format: SnapshotFormat {
        magic: *b"REFVMCPU",
        major: 1,
        minor: 0,
        flags: FLAG_OPTIONAL_ONLY,
        max_payload_len: MAX_ENCODED_LEN,
    },
};

/// Every vCPU's state, in index order, is one file.
impl Stored for Vec<VcpuState> {
    const FILE: &'static str = FILE.name;

    fn encode(&self) -> crate::snapshot::Result<Vec<u8>> {
        FILE.encode(self)
    }

    fn decode(bytes: &[u8]) -> crate::snapshot::Result<Self> {
        FILE.decode(bytes)
    }
}

/// The guest's virtual and physical counters (`KVM_REG_ARM_TIMER_CNT`, CNTVCT_EL0, and
/// `KVM_REG_ARM_PTIMER_CNT`, CNTPCT_EL0), which [`unify_counters`] aligns.
pub const COUNTERS: [u64; 2] = [
    kvm_abi::sysreg_id(3, 3, 14, 3, 2),
    kvm_abi::sysreg_id(3, 3, 14, 0, 1),
];

/// Errors saving or restoring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_GET_REG_LIST failed.
    #[error("Cannot list the registers of vCPU {0}")]
    List(usize, #[source] vmm_sys_util::errno::Error),
    /// A register could not be read.
    #[error("Cannot read register {1:#x} of vCPU {0}")]
    Get(usize, u64, #[source] vmm_sys_util::errno::Error),
    /// A register could not be written.
    #[error("Cannot restore register {1:#x} of vCPU {0}")]
    Set(usize, u64, #[source] vmm_sys_util::errno::Error),
    /// The MP state could not be read or written.
    #[error("Cannot access the MP state of vCPU {0}")]
    MpState(usize, #[source] vmm_sys_util::errno::Error),
    /// The saved state does not fit this vCPU.
    #[error("Saved state of vCPU {0} is invalid: {1}")]
    Invalid(usize, String),
    /// The snapshot has states for another number of vCPUs.
    #[error("{states} vCPU states for {vcpus} vCPUs")]
    Count {
        /// States in the snapshot.
        states: usize,
        /// vCPUs in the VM.
        vcpus: usize,
    },
}

/// Result of vCPU state operations.
pub type Result<T> = std::result::Result<T, Error>;

/// One vCPU's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// `KVM_MP_STATE_*`.
    pub mp_state: u32,
    /// Register id and its value, in `KVM_GET_REG_LIST` order.
    pub regs: Vec<(u64, Vec<u8>)>,
}

impl VcpuState {
    /// The saved value of 64-bit register `id`, if the state has it.
    pub fn reg_u64(&self, id: u64) -> Option<u64> {
        self.regs
            .iter()
            .find(|(rid, _)| *rid == id)
            .and_then(|(_, v)| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_le_bytes)
    }

    /// Checks what restoring vCPU `index` requires of the state alone, before anything is
    /// written to KVM: at most [`MAX_REGS`] registers, each value exactly the size its id
    /// says and at most [`MAX_REG_BYTES`], no register twice (`save` writes each register
    /// `KVM_GET_REG_LIST` names once; with two values [`VcpuState::reg_u64`] and
    /// [`unify_counters`] would see one and KVM keep the other), and an MP state KVM defines. (`super::vcpu::restore`
    /// also insists that the vCPU lists every saved register.)
    pub fn check(&self, index: usize) -> Result<()> {
        if self.regs.len() > MAX_REGS {
            return Err(Error::Invalid(
                index,
                format!("{} registers", self.regs.len()),
            ));
        }
        for (id, value) in &self.regs {
            if value.len() != reg_size(*id) || value.len() > MAX_REG_BYTES {
                return Err(Error::Invalid(
                    index,
                    format!(
                        "register {id:#x} holds {} bytes, expected {}",
                        value.len(),
                        reg_size(*id)
                    ),
                ));
            }
        }
        let mut ids: Vec<u64> = self.regs.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Invalid(
                index,
                format!("register {:#x} is saved twice", w[0]),
            ));
        }
        if self.mp_state > kvm_abi::MP_STATE_SUSPENDED {
            return Err(Error::Invalid(index, format!("MP state {}", self.mp_state)));
        }
        Ok(())
    }
}

/// Makes every vCPU's saved virtual and physical counter the latest one saved.
///
/// Each vCPU saves its registers when it parks, so the counters come from slightly different
/// moments, and a vCPU that parked later may have read a later value than another vCPU saved.
/// KVM keeps one counter offset per VM, so on restore the last vCPU written decides the guest's
/// counter for all; if that were not the latest value, the guest would see its counter go
/// backwards, which Linux takes for a huge jump forward (timers, watchdogs and the scheduler
/// clock go wrong). The latest value saved is at least every value the guest read before the
/// pause.
pub fn unify_counters(states: &mut [VcpuState]) {
    for id in COUNTERS {
        let Some(latest) = states.iter().filter_map(|st| st.reg_u64(id)).max() else {
            continue;
        };
        for st in states.iter_mut() {
            for (rid, v) in st.regs.iter_mut() {
                if *rid == id && v.len() == 8 {
                    *v = latest.to_le_bytes().to_vec();
                }
            }
        }
    }
}

/// Size in bytes of a register from its id.
pub fn reg_size(id: u64) -> usize {
    1usize << ((id & kvm_abi::REG_SIZE_MASK) >> kvm_abi::REG_SIZE_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program counter's id (`KVM_REG_ARM_CORE`, `user_pt_regs.pc` at byte 256).
    const PC: u64 = kvm_abi::REG_ARM64 | kvm_abi::REG_SIZE_U64 | 0x0010_0000 | (256 / 4);
    const TIMER_CNT: u64 = COUNTERS[0];
    const PTIMER_CNT: u64 = COUNTERS[1];

    fn state(vcnt: u64, pcnt: u64, pc: u64) -> VcpuState {
        VcpuState {
            mp_state: 0,
            regs: vec![
                (PC, pc.to_le_bytes().to_vec()),
                (TIMER_CNT, vcnt.to_le_bytes().to_vec()),
                (PTIMER_CNT, pcnt.to_le_bytes().to_vec()),
            ],
        }
    }

    #[test]
    fn the_largest_state_check_accepts_fits_the_encoded_size_bound() {
        // The widest id varint, 256-byte values (size field 8), MP state at its largest.
        let id = |i: u64| 1 << 63 | 8 << kvm_abi::REG_SIZE_SHIFT | i;
        let widest = VcpuState {
            mp_state: u32::MAX,
            regs: (0..MAX_REGS as u64)
                .map(|i| (id(i), vec![0xff; 256]))
                .collect(),
        };
        let mut checked = widest.clone();
        checked.mp_state = 0;
        assert!(checked.check(0).is_ok());

        let len = postcard::to_allocvec(&widest).unwrap().len() as u64;

        assert!(len <= MAX_ENCODED_VCPU_LEN, "{len}");
        assert!(len > MAX_ENCODED_VCPU_LEN - 16, "the bound is tight: {len}");
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn the_test_pc_id_is_kvms() {
        assert_eq!(PC, crate::regs::PC);
    }

    #[test]
    fn counters_become_the_latest_saved_and_nothing_else_changes() {
        // vCPU 1 parked first (smaller counters); restoring it last must not move time back.
        let mut states = vec![state(500, 9_000, 0x1000), state(420, 8_900, 0x2000)];
        unify_counters(&mut states);
        assert_eq!(states[0], state(500, 9_000, 0x1000));
        assert_eq!(states[1], state(500, 9_000, 0x2000));
    }

    #[test]
    fn states_without_counters_are_left_alone() {
        let mut states = vec![VcpuState {
            mp_state: 1,
            regs: vec![(PC, vec![1; 8])],
        }];
        let before = states.clone();
        unify_counters(&mut states);
        assert_eq!(states, before);
    }

    #[test]
    fn register_sizes_come_from_the_id() {
        assert_eq!(reg_size(PC), 8);
        // A 2048-bit SVE Z register (size field 8) and a 128-bit FP register (size field 4).
        assert_eq!(
            reg_size(kvm_abi::REG_ARM64 | 8 << kvm_abi::REG_SIZE_SHIFT),
            256
        );
        assert_eq!(
            reg_size(kvm_abi::REG_ARM64 | 4 << kvm_abi::REG_SIZE_SHIFT),
            16
        );
        assert_eq!(reg_size(u64::MAX), 1 << 15);
    }

    #[test]
    fn check_refuses_wrong_sizes_too_many_or_repeated_registers_and_unknown_mp_states() {
        let good = state(1, 2, 3);
        assert!(good.check(0).is_ok());
        let mut short = good.clone();
        short.regs[0].1.pop();
        assert!(matches!(short.check(4), Err(Error::Invalid(4, m)) if m.contains("7 bytes")));
        // The size field says 32 KiB: more than any register may hold.
        let huge = VcpuState {
            mp_state: 0,
            regs: vec![(u64::MAX, vec![0; 1 << 15])],
        };
        assert!(huge.check(0).is_err());
        let many = VcpuState {
            mp_state: 0,
            regs: vec![(PC, vec![0; 8]); MAX_REGS + 1],
        };
        assert!(many.check(0).is_err());
        let mut twice = good.clone();
        twice.regs.push((PC, vec![0; 8]));
        assert!(matches!(twice.check(1), Err(Error::Invalid(1, m)) if m.contains("twice")));
        let mut mp = good;
        mp.mp_state = kvm_abi::MP_STATE_SUSPENDED;
        assert!(mp.check(0).is_ok());
        mp.mp_state += 1;
        assert!(mp.check(0).is_err());
    }
}
