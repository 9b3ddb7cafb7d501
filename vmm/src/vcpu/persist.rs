//! Saving and restoring vCPUs through KVM: every register `KVM_GET_REG_LIST` names (core,
//! system, timer, firmware pseudo-registers, SVE, PMU ...) and the MP state: [`Persist`] for
//! [`Vcpu`]. The state type, its checks and the counter alignment are [`super::state`].

use super::state::{reg_size, Error, Result, VcpuState};
use super::Vcpu;
use crate::persist::Persist;
use kvm_bindings::{kvm_mp_state, RegList};
use kvm_ioctls::VcpuFd;

impl Persist for Vcpu {
    type State = VcpuState;
    type Error = Error;

    /// Call with the vCPU out of `KVM_RUN` (on its own thread, or before it has started).
    fn save(&self) -> Result<VcpuState> {
        save(self.fd(), usize::from(self.index()))
    }

    /// The vCPU must be initialised with the same features and not have run yet. The state
    /// must pass [`VcpuState::check`], and every saved register must be one this vCPU lists;
    /// the counters of all vCPUs are aligned first ([`super::state::unify_counters`]).
    fn restore(self, state: &VcpuState) -> Result<Self> {
        restore(self.fd(), usize::from(self.index()), state)?;
        Ok(self)
    }
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

fn save(fd: &VcpuFd, index: usize) -> Result<VcpuState> {
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

fn restore(fd: &VcpuFd, index: usize, state: &VcpuState) -> Result<()> {
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
