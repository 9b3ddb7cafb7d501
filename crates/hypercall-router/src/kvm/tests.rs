//! The KVM glue over fake hypervisor traits: register IDs, error mapping and exit handling.
//! (That KVM itself behaves so is shown by `tests/kvm_forwarding.rs` in the emulated machine.)

use super::*;
use crate::call::{Call, Outcome, Results};
use crate::function_id::{Convention, Owner};
use crate::registers::RegisterView;
use crate::router::RouterBuilder;
use crate::service::{FunctionRange, ServiceInfo};
use crate::SmcccReturn;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// A vCPU whose registers live in a map, failing the IDs in `broken`.
#[derive(Default)]
struct FakeVcpu {
    regs: RefCell<BTreeMap<u64, u64>>,
    broken: Vec<u64>,
}

impl VcpuAccess for FakeVcpu {
    fn get_one_reg(&self, id: u64) -> io::Result<u64> {
        if self.broken.contains(&id) {
            return Err(io::Error::from_raw_os_error(22));
        }
        Ok(self.regs.borrow().get(&id).copied().unwrap_or(0))
    }

    fn set_one_reg(&self, id: u64, value: u64) -> io::Result<()> {
        if self.broken.contains(&id) {
            return Err(io::Error::from_raw_os_error(22));
        }
        self.regs.borrow_mut().insert(id, value);
        Ok(())
    }
}

/// A VM whose filter ioctl answers `errno` (0: success) and records the ranges.
struct FakeVm {
    errno: i32,
    installed: RefCell<Vec<(u32, u32, FilterAction)>>,
}

impl VmAccess for FakeVm {
    fn set_smccc_filter(&self, base: u32, count: u32, action: FilterAction) -> io::Result<()> {
        if self.errno != 0 {
            return Err(io::Error::from_raw_os_error(self.errno));
        }
        self.installed.borrow_mut().push((base, count, action));
        Ok(())
    }
}

/// SiP SMC64 function 0: returns x1 + 1 and the conduit in x1 (1 = SMC); function 1 jumps:
/// PC = x1, ELR_EL1 = old PC.
struct Jumper;

const RANGES: &[FunctionRange] = &[FunctionRange::fast(Convention::Smc64, Owner::SiP, 0, 1)];

impl Service for Jumper {
    fn info(&self) -> ServiceInfo<'_> {
        ServiceInfo {
            name: "jumper",
            identity: None,
            ranges: RANGES,
        }
    }

    fn call(&self, ctx: &CallContext, call: &Call, regs: &mut RegisterView<'_>) -> Outcome {
        if call.id.number() == 0 {
            let smc = u64::from(ctx.conduit == Conduit::Smc);
            return Outcome::Return(Results::code(SmcccReturn::Success).with(1, smc));
        }
        let moved = regs
            .pc()
            .and_then(|pc| regs.set_elr_el1(pc))
            .and_then(|()| regs.set_pc(call.arg(1)));
        match moved {
            Ok(()) => Outcome::Handled,
            Err(_) => Outcome::from(SmcccReturn::NotSupported),
        }
    }
}

fn router() -> Router<Jumper, 2, 4> {
    let mut b = RouterBuilder::new();
    b.register(Jumper).unwrap();
    b.build()
}

#[test]
fn register_ids_follow_the_core_register_layout() {
    // x0 is the first word of kvm_regs; pc follows x0-x30 and sp; then pstate, sp_el1,
    // elr_el1 and spsr[0].
    assert_eq!(x_reg_id(0), Some(0x6030_0000_0010_0000));
    assert_eq!(x_reg_id(1).map(|id| id & 0xFFFF), Some(2));
    assert_eq!(x_reg_id(31), None);
    assert_eq!(pc_reg_id() & 0xFFFF, 64);
    assert_eq!(control_reg_id(ControlRegister::Pstate) & 0xFFFF, 66);
    assert_eq!(control_reg_id(ControlRegister::ElrEl1) & 0xFFFF, 70);
    assert_eq!(control_reg_id(ControlRegister::SpsrEl1) & 0xFFFF, 72);
}

#[test]
fn an_smc_exit_reaches_the_service_as_smc_and_x0_to_x1_are_written() {
    let vcpu = FakeVcpu::default();
    let r = router();
    let id = 0xC200_0000u64;

    let outcome = handle_hypercall_exit(&r, &vcpu, id | 0xFFFF_FFFF_0000_0000, 1, 0).unwrap();

    assert!(matches!(outcome, DispatchOutcome::Service { .. }));
    let regs = vcpu.regs.borrow();
    assert_eq!(regs.get(&x_reg_id(0).unwrap()), Some(&0));
    assert_eq!(regs.get(&x_reg_id(1).unwrap()), Some(&1));
    drop(regs);
    handle_hypercall_exit(&r, &vcpu, id, 0, 0).unwrap();
    assert_eq!(vcpu.regs.borrow().get(&x_reg_id(1).unwrap()), Some(&0));
}

#[test]
fn a_service_moves_the_pc_through_the_adapter() {
    let vcpu = FakeVcpu::default();
    vcpu.set_one_reg(pc_reg_id(), 0x4000).unwrap();
    vcpu.set_one_reg(x_reg_id(1).unwrap(), 0x9000).unwrap();

    handle_hypercall_exit(&router(), &vcpu, 0xC200_0001, 0, 0).unwrap();

    assert_eq!(vcpu.get_one_reg(pc_reg_id()).unwrap(), 0x9000);
    assert_eq!(
        vcpu.get_one_reg(control_reg_id(ControlRegister::ElrEl1))
            .unwrap(),
        0x4000
    );
}

#[test]
fn a_failing_register_is_reported_with_its_name() {
    let vcpu = FakeVcpu {
        broken: vec![control_reg_id(ControlRegister::ElrEl1)],
        ..FakeVcpu::default()
    };

    let err = handle_hypercall_exit(&router(), &vcpu, 0xC200_0001, 0, 0).unwrap_err();

    assert!(
        matches!(&err, Error::WriteRegister { reg, .. } if reg.to_string() == "ELR_EL1"),
        "{err:?}"
    );
}

#[test]
fn filter_errnos_map_to_their_meaning() {
    let r = router();
    let ok = FakeVm {
        errno: 0,
        installed: RefCell::default(),
    };
    let ranges = install_smccc_filter(&ok, &r).unwrap();
    let expected: Vec<_> = r
        .forwarded_ranges()
        .iter()
        .map(|range| (range.first, range.count(), FilterAction::ForwardToUser))
        .collect();
    assert_eq!(ranges, r.forwarded_ranges());
    assert_eq!(ok.installed.borrow().as_slice(), expected.as_slice());
    assert!(expected.contains(&(0xC200_0000, 2, FilterAction::ForwardToUser)));

    let fails = |errno| {
        install_smccc_filter(
            &FakeVm {
                errno,
                installed: RefCell::default(),
            },
            &r,
        )
        .unwrap_err()
    };
    assert!(matches!(fails(16), Error::AfterFirstRun));
    let first = r.forwarded_ranges()[0];
    assert!(matches!(
        fails(17),
        Error::RangeExists { first: f, last: l } if (f, l) == (first.first, first.last)
    ));
    assert!(matches!(fails(6), Error::FilterUnsupported(_)));
    assert!(matches!(fails(12), Error::Install { .. }));
}

#[test]
fn register_numbers_past_x17_are_refused_before_any_ioctl() {
    let vcpu = FakeVcpu::default();
    let mut regs = KvmVcpuRegisters::new(&vcpu);
    assert!(matches!(
        regs.read_x(18),
        Err(Error::RegisterOutOfRange(18))
    ));
    assert!(vcpu.regs.borrow().is_empty());
}
