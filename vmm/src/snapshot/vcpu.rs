//! vCPU state: every register `KVM_GET_REG_LIST` names (core, system, timer, firmware
//! pseudo-registers, SVE, PMU ...) and the MP state (running or powered off).

use kvm_bindings::{kvm_mp_state, RegList, KVM_REG_SIZE_MASK, KVM_REG_SIZE_SHIFT};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Most registers a vCPU state may name (KVM lists a few hundred; SVE adds ~100).
pub const MAX_REGS: usize = 4096;
/// Largest single register (SVE Z registers are 2048 bits at most).
pub const MAX_REG_BYTES: usize = 256;

/// Errors saving or restoring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_GET_REG_LIST failed.
    #[error("Cannot list the registers of vCPU {0}: {1}")]
    List(usize, #[source] kvm_ioctls::Error),
    /// A register could not be read.
    #[error("Cannot read register {1:#x} of vCPU {0}: {2}")]
    Get(usize, u64, #[source] kvm_ioctls::Error),
    /// A register could not be written.
    #[error("Cannot restore register {1:#x} of vCPU {0}: {2}")]
    Set(usize, u64, #[source] kvm_ioctls::Error),
    /// The MP state could not be read or written.
    #[error("Cannot access the MP state of vCPU {0}: {1}")]
    MpState(usize, #[source] kvm_ioctls::Error),
    /// The saved state does not fit this vCPU.
    #[error("Saved state of vCPU {0} is invalid: {1}")]
    Invalid(usize, String),
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
    for id in [crate::regs::TIMER_CNT, crate::regs::PTIMER_CNT] {
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
    1usize << ((id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT)
}

/// The longest register list kvm-bindings' `RegList` can hold (KVM lists a few hundred
/// registers without SVE; a longer list is reported as an error, never truncated).
const REG_LIST_CAPACITY: usize = 500;

fn reg_list(fd: &VcpuFd, index: usize) -> Result<Vec<u64>> {
    let mut list = RegList::new(REG_LIST_CAPACITY)
        .map_err(|_| Error::Invalid(index, "cannot allocate the register list".into()))?;
    fd.get_reg_list(&mut list)
        .map_err(|e| Error::List(index, e))?;
    Ok(list.as_slice().to_vec())
}

/// Saves vCPU `index` (call with the vCPU out of `KVM_RUN`).
pub fn save(fd: &VcpuFd, index: usize) -> Result<VcpuState> {
    let ids = reg_list(fd, index)?;
    let mut regs = Vec::with_capacity(ids.len());
    for id in ids {
        let mut buf = vec![0u8; reg_size(id)];
        fd.get_one_reg(id, &mut buf)
            .map_err(|e| Error::Get(index, id, e))?;
        regs.push((id, buf));
    }
    let mp_state = fd
        .get_mp_state()
        .map_err(|e| Error::MpState(index, e))?
        .mp_state;
    Ok(VcpuState { mp_state, regs })
}

/// Restores vCPU `index` (initialised with the same features, not yet run). Every saved
/// register must be one this vCPU lists, with the size its id says.
pub fn restore(fd: &VcpuFd, index: usize, state: &VcpuState) -> Result<()> {
    let ids = reg_list(fd, index)?;
    if state.regs.len() > MAX_REGS {
        return Err(Error::Invalid(
            index,
            format!("{} registers", state.regs.len()),
        ));
    }
    for (id, value) in &state.regs {
        if !ids.contains(id) {
            return Err(Error::Invalid(
                index,
                format!(
                    "register {id:#x} does not exist on this vCPU (different features or host?)"
                ),
            ));
        }
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
    if state.mp_state > kvm_bindings::KVM_MP_STATE_SUSPENDED {
        return Err(Error::Invalid(
            index,
            format!("MP state {}", state.mp_state),
        ));
    }
    for (id, value) in &state.regs {
        fd.set_one_reg(*id, value)
            .map_err(|e| Error::Set(index, *id, e))?;
    }
    fd.set_mp_state(kvm_mp_state {
        mp_state: state.mp_state,
    })
    .map_err(|e| Error::MpState(index, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::{PC, PTIMER_CNT, TIMER_CNT};

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
}
