//! KVM glue (feature `kvm`): what a VMM's vCPU loop calls, over hypercall-router's
//! [`VcpuAccess`] (get and set one register by ONE_REG ID; implemented for kvm-ioctls'
//! `VcpuFd` on aarch64, and by a VMM for its own hypervisor types).
//!
//! A vCPU loop with SDEI needs exactly two steps:
//!
//! 1. on `KVM_EXIT_HYPERCALL`: [`handle_hypercall_exit`] with the router holding the
//!    [`SdeiService`] — the call is answered and, for a completion, the vCPU's PC, PSTATE,
//!    `ELR_EL1` and `SPSR_EL1` are rewritten; other vCPUs that now have an event are kicked;
//! 2. before each `KVM_RUN`: [`deliver_pending`] — one atomic load when nothing is pending,
//!    otherwise the handler is entered by rewriting the vCPU's registers. Not while an MMIO
//!    exit is open: KVM completes an MMIO access (the loaded value, the PC past the
//!    instruction) inside the next `KVM_RUN`, so after an MMIO exit run the vCPU once with
//!    `immediate_exit` set (it returns at once, access completed) before delivering.
//!
//! On the vCPU thread these issue `KVM_GET_ONE_REG`/`KVM_SET_ONE_REG` (and `futex` for the
//! service's lock, plus whatever the [`Kick`](crate::Kick) does).

pub use hypercall_router::kvm::{
    handle_hypercall_exit, install_smccc_filter, Error, KvmVcpuRegisters, VcpuAccess, VmAccess,
};

use crate::delivery::DispatchInfo;
use crate::dispatcher::CallError;
use crate::service::SdeiService;

/// Enters the highest-priority deliverable handler on vCPU `index` (which must be out of
/// `KVM_RUN`), if any: saves `x0`–`x17`, PC and PSTATE, and points the vCPU at the handler.
/// Returns at once, without a lock or an ioctl, when nothing is pending there.
pub fn deliver_pending<V: VcpuAccess + ?Sized>(
    service: &SdeiService,
    vcpu: &V,
    index: usize,
) -> Result<Option<DispatchInfo>, CallError<Error>> {
    service.dispatch_pending(index, &mut KvmVcpuRegisters::new(vcpu))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DispatcherConfig, EventDecl, EventKind, Priority};
    use hypercall_router::kvm::{control_reg_id, x_reg_id};
    use hypercall_router::{ControlRegister, RouterBuilder};
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::io;

    const EV: u32 = 0x0100_0000;

    /// A vCPU whose registers live in a map, counting accesses.
    #[derive(Default)]
    struct FakeVcpu {
        regs: RefCell<BTreeMap<u64, u64>>,
        accesses: RefCell<usize>,
    }

    impl FakeVcpu {
        fn x(&self, n: u8) -> u64 {
            self.get_one_reg(x_reg_id(n).unwrap()).unwrap()
        }
        fn control(&self, reg: ControlRegister) -> u64 {
            self.get_one_reg(control_reg_id(reg)).unwrap()
        }
        fn load_call(&self, id: u32, args: &[u64]) {
            self.set_one_reg(x_reg_id(0).unwrap(), id.into()).unwrap();
            for (n, value) in (1u8..).zip(args) {
                self.set_one_reg(x_reg_id(n).unwrap(), *value).unwrap();
            }
        }
    }

    impl VcpuAccess for FakeVcpu {
        fn get_one_reg(&self, id: u64) -> io::Result<u64> {
            *self.accesses.borrow_mut() += 1;
            Ok(self.regs.borrow().get(&id).copied().unwrap_or(0))
        }
        fn set_one_reg(&self, id: u64, value: u64) -> io::Result<()> {
            *self.accesses.borrow_mut() += 1;
            self.regs.borrow_mut().insert(id, value);
            Ok(())
        }
    }

    #[test]
    fn a_handler_runs_and_completes_through_the_two_steps() {
        let mut cfg = DispatcherConfig::new(1);
        cfg.events.push(EventDecl {
            number: EV,
            kind: EventKind::Private,
            priority: Priority::Normal,
        });
        let sdei = SdeiService::new(cfg, |_: usize| {}).unwrap();
        let mut b: RouterBuilder<&SdeiService, 4, 8> = RouterBuilder::new();
        b.register(&sdei).unwrap();
        let router = b.build();
        let vcpu = FakeVcpu::default();
        let exit = |id: u32, args: &[u64]| {
            vcpu.load_call(id, args);
            handle_hypercall_exit(&router, &vcpu, id.into(), 0, 0).unwrap();
            vcpu.x(0)
        };
        assert_eq!(exit(0xC400_0021, &[EV.into(), 0x1000, 7, 0, 0]), 0);
        assert_eq!(exit(0xC400_0022, &[EV.into()]), 0);
        exit(0xC400_002C, &[]);

        *vcpu.accesses.borrow_mut() = 0;
        assert_eq!(deliver_pending(&sdei, &vcpu, 0).unwrap(), None);
        assert_eq!(
            *vcpu.accesses.borrow(),
            0,
            "nothing pending: no register access"
        );

        vcpu.set_one_reg(control_reg_id(ControlRegister::Pc), 0x4000)
            .unwrap();
        vcpu.set_one_reg(control_reg_id(ControlRegister::Pstate), 0x3c5)
            .unwrap();
        sdei.raise(EV, Some(0)).unwrap();
        let info = deliver_pending(&sdei, &vcpu, 0).unwrap().unwrap();
        assert_eq!(info.event, EV);
        assert_eq!(vcpu.control(ControlRegister::Pc), 0x1000);
        assert_eq!((vcpu.x(0), vcpu.x(1), vcpu.x(2)), (EV.into(), 7, 0x4000));

        // EVENT_COMPLETE: the exit handler alone puts the interrupted context back.
        exit(0xC400_0025, &[0]);
        assert_eq!(vcpu.control(ControlRegister::Pc), 0x4000);
        assert_eq!(vcpu.control(ControlRegister::Pstate), 0x3c5);
    }
}
