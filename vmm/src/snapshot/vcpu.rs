//! Saving and restoring vCPUs through KVM: every register `KVM_GET_REG_LIST` names (core,
//! system, timer, firmware pseudo-registers, SVE, PMU ...) and the MP state. The state type, its
//! checks and the counter alignment are `super::vcpu_state`, re-exported here.

pub use super::vcpu_state::{
    reg_size, unify_counters, Error, Result, VcpuState, COUNTERS, MAX_REGS, MAX_REG_BYTES,
};

use kvm_bindings::{kvm_mp_state, RegList};
use kvm_ioctls::VcpuFd;

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

/// Restores vCPU `index` (initialised with the same features, not yet run). The state must pass
/// [`VcpuState::check`], and every saved register must be one this vCPU lists.
pub fn restore(fd: &VcpuFd, index: usize, state: &VcpuState) -> Result<()> {
    let ids = reg_list(fd, index)?;
    state.check(index)?;
    for (id, _) in &state.regs {
        if !ids.contains(id) {
            return Err(Error::Invalid(
                index,
                format!(
                    "register {id:#x} does not exist on this vCPU (different features or host?)"
                ),
            ));
        }
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
